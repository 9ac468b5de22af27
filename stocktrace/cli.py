"""The ``stocktrace`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import psycopg

from alerts import cli as alerts_cli
from alerts import delivery_cli
from dashboards import cli as dashboards_cli
from devices import cli as devices_cli
from ingest.consumer import BatchPolicy
from simulator import cli as simulator_cli
from stocktrace import auth, db, service
from stocktrace import bench_ingest as bench_ingest_module
from stocktrace import demo as demo_module
from stocktrace.logs import configure_logging
from stocktrace.settings import Settings, SettingsError, load_settings
from tracking import cli as tracking_cli
from tracking import eventlog_cli

log = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings)  # now it knows which values are secrets
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="stocktrace")
def main() -> None:
    """stocktrace: where every tagged item is, what condition it is in, and what needs attention now.

    \b
    Start here:
      stocktrace demo              run the service with devices publishing to it
      stocktrace migrate           create or upgrade the database schema
      stocktrace run --workers 2   consume MQTT into TimescaleDB and serve the API
      stocktrace bench ingest      measure the ingest path against baselines

    Configuration comes from STOCKTRACE_* environment variables; see the README.
    """
    configure_logging("INFO")


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (safe to run again).

    \b
    Example:
      STOCKTRACE_DATABASE_URL=postgresql://db/stocktrace stocktrace migrate
    """
    settings = _settings()
    try:
        applied = db.migrate(settings.database_url)
    except Exception as exc:
        raise click.ClickException(
            f"cannot migrate {settings.database_url}: {exc}\n"
            "Is PostgreSQL running with TimescaleDB? `make demo` sets both up on Debian."
        ) from None
    if applied:
        click.echo(f"applied {len(applied)} migration(s): " + ", ".join(f"{m.version}_{m.name}" for m in applied))
    else:
        click.echo("schema is up to date")


@main.command()
@click.option(
    "--workers",
    "-w",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Ingest worker processes; they split the MQTT stream through a shared subscription.",
)
def run(workers: int) -> None:
    """Consume MQTT into TimescaleDB and serve the HTTP API until SIGTERM or Ctrl-C.

    \b
    On stop, every worker commits and acknowledges what it holds, then exits.
    Examples:
      stocktrace run
      stocktrace run --workers 2
      STOCKTRACE_ROUTES='zebra/+/data=zebra-fx' stocktrace run
    """
    settings = _settings()
    service.prepare_metrics_directory()
    click.echo(
        f"stocktrace: {workers} worker(s) consuming {settings.mqtt_url}, API on "
        f"http://{settings.api_host}:{settings.api_port} (docs at /docs)"
    )
    asyncio.run(service.serve(settings, workers))


@main.command()
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Scenario file (default: the simulator's warehouse and cold chain).",
)
@click.option("--workers", "-w", default=1, show_default=True, type=click.IntRange(1, 64), help="Ingest workers.")
def demo(scenario_path: Path | None, workers: int) -> None:
    """Run the service with a simulated warehouse publishing to it, and show live counts.

    \b
    Registers the scenario's sites, locations and devices, routes its vendor formats, starts the service and
    the simulated devices in real time, and prints a line of counts every two seconds. Ctrl-C stops.
    Example:
      make demo            (installs and starts everything first)
      stocktrace demo
    """
    _settings()
    try:
        asyncio.run(demo_module.run_demo(scenario_path, workers, click.echo))
    except (RuntimeError, psycopg.Error, demo_module.ScenarioError) as exc:
        raise click.ClickException(
            f"{exc}\nIs the database migrated (`stocktrace migrate`) and the broker up?"
        ) from None


@main.group()
def bench() -> None:
    """Benchmarks of the hot paths, each against a baseline measured in the same run."""


@bench.command("ingest")
@click.option(
    "--messages", "-n", default=300_000, show_default=True, help="Single-read messages in the throughput run."
)
@click.option("--publishers", default=2, show_default=True, help="C publisher processes (mosquitto_pub).")
@click.option("--rate", default=20_000, show_default=True, help="Offered msg/s in the latency run.")
@click.option("--latency-seconds", default=5.0, show_default=True, help="Length of the latency run.")
@click.option("--naive-messages", default=10_000, show_default=True, help="Messages for the one-INSERT-each baseline.")
@click.option("--batched-messages", default=10_000, show_default=True, help="Messages of 50 reads in the batched run.")
@click.option("--workers", default=1, show_default=True, help="stocktrace worker processes (as `run --workers`).")
@click.option(
    "--tags",
    default=10_000,
    show_default=True,
    help="Distinct tags the reads cycle through; 0: every read is of a new tag (tracking's worst case).",
)
@click.option("--no-tracking", is_flag=True, help="Measure ingest alone, without tracking's per-batch step.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_ingest(
    messages: int, publishers: int, rate: int, latency_seconds: float, naive_messages: int, batched_messages: int,
    workers: int, tags: int, no_tracking: bool, as_json: bool,
) -> None:  # fmt: skip
    """Ingest throughput and latency through the real broker and database, against baselines.

    Runs in a database of its own (<database>_bench), which it creates and migrates.

    \b
    Examples:
      stocktrace bench ingest
      stocktrace bench ingest --messages 100000 --json
    """
    settings = _settings()
    server = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    name = f"{server.get('dbname') or 'stocktrace'}_bench"
    url = bench_ingest_module.prepare_database(
        psycopg.conninfo.make_conninfo(settings.database_url, dbname="postgres"), name
    )
    config = bench_ingest_module.BenchConfig(
        url, settings.mqtt_host, settings.mqtt_port, messages, publishers, rate, latency_seconds, naive_messages,
        batched_messages,
        BatchPolicy(settings.batch_max_messages, settings.batch_max_wait_ms / 1000, settings.max_payload_bytes),
        workers, not no_tracking, tags,
    )  # fmt: skip

    def progress(line: str) -> None:
        click.echo(line, err=as_json)

    result = asyncio.run(bench_ingest_module.run_benchmark(config, progress))
    if as_json:
        click.echo(bench_ingest_module.result_json(result))
        return
    click.echo(
        f"\nstocktrace  {result.msgs_per_s:>12,.0f} msg/s   "
        f"({result.vs_bare:.2f} x bare, {result.vs_naive:.1f} x naive)\n"
        f"naive       {result.naive_msgs_per_s:>12,.0f} msg/s   (one INSERT + commit per message)\n"
        f"bare        {result.bare_msgs_per_s:>12,.0f} msg/s   (mosquitto_sub, receive only)\n"
        f"batched     {result.reads_per_s:>12,.0f} reads/s  (50 reads per message)\n"
        f"latency     p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms at {result.offered_rate:,} msg/s offered\n"
        f"(tracking {'on' if result.tracking else 'off'}, reads cycling through {result.tags or 'unbounded'} tags,"
        f" {result.workers} worker process(es))"
    )


_STAGES = (devices_cli, eventlog_cli, tracking_cli, alerts_cli, delivery_cli, dashboards_cli)
for _command in [*(c for stage in _STAGES for c in stage.COMMANDS), *simulator_cli.COMMANDS, *auth.COMMANDS]:
    main.add_command(_command)
for _command in [c for stage in _STAGES if stage is not dashboards_cli for c in stage.BENCHMARKS]:
    bench.add_command(_command)
# `stocktrace bench queries`: every dashboard panel's query over 30 days of data.
for _command in dashboards_cli.BENCHMARKS:
    bench.add_command(_command, "queries")


if __name__ == "__main__":
    sys.exit(main())
