"""`stocktrace dashboards export|push` and `stocktrace bench queries`; the stocktrace CLI registers COMMANDS
and BENCHMARKS (the latter under `stocktrace bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaException

from dashboards import bench as bench_module
from dashboards import dataset, export, push

_DATABASE_URL = "postgresql:///stocktrace"


@click.group("dashboards")
def dashboards() -> None:
    """The Grafana dashboards: export them for provisioning, or push them to a running Grafana."""


@dashboards.command("export")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=export.DEFAULT_FOLDER, show_default=True,
    help="Folder for the JSON files (the one dashboards/provisioning/dashboards/stocktrace.yaml reads).",
)  # fmt: skip
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the folder differs from the code.")
def export_command(out: Path, check: bool) -> None:
    """Write every board as Grafana dashboard JSON, one file per board, named by its uid.

    \b
    Examples:
      stocktrace dashboards export
      stocktrace dashboards export --out /etc/grafana/dashboards/stocktrace
      stocktrace dashboards export --check
    """
    if check:
        problems = export.differences(out)
        for problem in problems:
            click.echo(problem)
        if problems:
            raise SystemExit(1)
        click.echo(f"{out}: up to date")
        return
    for path in export.write(out):
        click.echo(f"wrote {path}")


@dashboards.command("push")
@click.option("--grafana-url", required=True, help="Grafana's base URL, e.g. http://localhost:3000")
@click.option(
    "--token", envvar="GRAFANA_TOKEN", required=True,
    help="A service account token with the Editor role (or Admin, to write the data source) [env: GRAFANA_TOKEN]",
)  # fmt: skip
@click.option(
    "--datasource-url", envvar="STOCKTRACE_DATABASE_URL", default=_DATABASE_URL, show_default=True,
    help="The database as Grafana reaches it, postgresql://user:password@host:port/db [env: STOCKTRACE_DATABASE_URL]",
)  # fmt: skip
@click.option("--no-datasource", is_flag=True, help="Leave the data source alone (it is provisioned elsewhere).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per API call.")
def push_command(grafana_url: str, token: str, datasource_url: str, no_datasource: bool, timeout: float) -> None:
    """Create or update the stocktrace folder, data source (uid stocktrace) and dashboards in a running Grafana.

    Safe to run again: existing objects are updated in place, found by their uid.

    \b
    Examples:
      stocktrace dashboards push --grafana-url http://localhost:3000 --token glsa_...
      GRAFANA_TOKEN=glsa_... stocktrace dashboards push --grafana-url https://grafana.example --no-datasource
    """
    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=timeout)
    body = None if no_datasource else push.datasource_body(datasource_url)
    try:
        report = push.push(api, export.render_all(), body)
    except GrafanaException as exc:
        raise click.ClickException(f"Grafana at {grafana_url} refused: {exc.message}") from None
    for line in report.lines():
        click.echo(line)


@click.command("queries")
@click.option(
    "--database-url", envvar="STOCKTRACE_DATABASE_URL", default=_DATABASE_URL, show_default=True,
    help="Server to run on; the benchmark uses a database of its own there [env: STOCKTRACE_DATABASE_URL]",
)  # fmt: skip
@click.option("--days", default=30.0, show_default=True, help="Days of history, and the dashboards' range.")
@click.option(
    "--scale", default=1.0, show_default=True,
    help="Volume factor: 1 is 3,000 items and 2 reads a minute on each of 24 antennas (about 2 million reads "
    "over 30 days).",
)  # fmt: skip
@click.option("--repeats", default=5, show_default=True, help="Runs of each query.")
@click.option("--full-range", is_flag=True, help="Ignore panels' own relative time: every query over all the days.")
@click.option("--keep", is_flag=True, help="Keep the benchmark database afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_dashboards(
    database_url: str, days: float, scale: float, repeats: int, full_range: bool, keep: bool, as_json: bool
) -> None:
    """Time every dashboard query (panels, annotations, variables) over generated history; flag any over 1 s.

    Runs in a database of its own (<database>_bench_dashboards), created, filled with COPY and dropped after.
    Each query's baseline is the same query over the last day, in the same run.

    \b
    Examples:
      stocktrace bench queries
      stocktrace bench queries --scale 0.2 --days 7 --json
    """
    result = bench_module.run_benchmark(
        database_url, dataset.Scale.for_factor(scale, days=days), repeats, full_range=full_range, keep=keep,
        progress=lambda line: click.echo(line, err=as_json),
    )  # fmt: skip
    over = [t for t in result.timings if t.over_budget]
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(f"\n{len(result.timings)} queries, {len(over)} over {bench_module.BUDGET_S:.0f} s (p99)")


COMMANDS: list[click.Command] = [dashboards]
BENCHMARKS: list[click.Command] = [bench_dashboards]
