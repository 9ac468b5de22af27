"""The tracking stage's commands; the ``stocktrace`` CLI adds them (and BENCHMARKS under ``stocktrace bench``)."""

from __future__ import annotations

import json

import click
import psycopg

from stocktrace import db
from tracking import bench, epcis_cli
from tracking.bench import QueryBench, Timing


@click.command("tracking-queries")
@click.option(
    "--database-url",
    envvar="STOCKTRACE_DATABASE_URL",
    default="postgresql:///stocktrace",
    show_default=True,
    help="Server to use; the benchmark creates and fills a database of its own, <name>_bench_queries.",
)
@click.option("--items", "-n", default=1_000_000, show_default=True, help="Items (one state and sighting each).")
@click.option("--reads", default=10_000_000, show_default=True, help="Raw reads for the baseline (issue: 100000000).")
@click.option("--locations", default=1_000, show_default=True, help="Shelves the items are spread over.")
@click.option("--queries", default=2_000, show_default=True, help="Lookups of each kind against the state.")
@click.option(
    "--raw-location-queries", default=3, show_default=True, help="'What is at L' lookups against the raw reads."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_tracking_queries(
    database_url: str, items: int, reads: int, locations: int, queries: int, raw_location_queries: int, as_json: bool
) -> None:
    """ "Where is item X" and "what is at location L" from item_state, against the raw reads, p50/p99.

    The raw-read baseline answers the same questions with the newest read per EPC and the antenna map, which
    is what a service without a state table has to do.

    \b
    Examples:
      stocktrace bench tracking-queries
      stocktrace bench tracking-queries --items 100000 --reads 1000000 --json
    """
    url = _bench_database(database_url)

    def progress(line: str) -> None:
        click.echo(line, err=as_json)

    result = bench.run_benchmark(url, items, reads, locations, queries, raw_location_queries, progress)
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        click.echo(_table(result))


def _bench_database(server_url: str) -> str:
    name = f"{psycopg.conninfo.conninfo_to_dict(server_url).get('dbname') or 'stocktrace'}_bench_queries"
    admin = psycopg.conninfo.make_conninfo(server_url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
                conn.execute(f'create database "{name}"')
    except psycopg.Error as exc:
        raise click.ClickException(f"cannot create the benchmark database {name}: {exc}") from None
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    db.migrate(url)
    return url


def _table(result: QueryBench) -> str:
    def row(name: str, state: Timing, raw: Timing) -> str:
        ratio = raw.p50_ms / state.p50_ms if state.p50_ms else float("nan")
        return (
            f"{name:<22} p50 {state.p50_ms:8.3f} ms  p99 {state.p99_ms:8.3f} ms   raw reads: p50 {raw.p50_ms:10.1f} ms"
            f"  p99 {raw.p99_ms:10.1f} ms  ({raw.queries} queries)   {ratio:,.0f} x"
        )

    return "\n".join([
        f"\n{result.items:,} items, {result.sightings:,} sightings, {result.reads:,} raw reads over"
        f" {result.locations:,} locations (loaded in {result.load_s:.0f} s)",
        row("where is item X", result.where_is, result.where_is_raw),
        row("what is at location L", result.what_is_at, result.what_is_at_raw),
    ])  # fmt: skip


COMMANDS: list[click.Command] = [*epcis_cli.COMMANDS]
BENCHMARKS: list[click.Command] = [
    bench_tracking_queries,
    *epcis_cli.BENCHMARKS,
]
