"""Commands over the event log: ``stocktrace verify`` and ``stocktrace bench eventlog``."""

from __future__ import annotations

import json
import time

import click
import psycopg

from devices.options import database_option
from stocktrace import db
from tracking import eventlog, eventlog_bench
from tracking.eventlog import Anchor, Engine, Report

# Exit codes: 0 the chain is intact, 1 it is not, 2 it could not be checked.
_CANNOT_CHECK = 2


class _CannotCheck(click.ClickException):
    exit_code = _CANNOT_CHECK


def _anchor(ctx: click.Context, param: click.Parameter, value: str | None) -> Anchor | None:
    try:
        return Anchor.parse(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("verify")
@database_option
@click.option(
    "--from", "from_seq", type=click.IntRange(min=1), default=1, show_default=True, help="First seq to check."
)
@click.option(
    "--expect-head",
    metavar="SEQ:HASH",
    callback=_anchor,
    help="A head printed by an earlier run and kept elsewhere; the chain must still contain it.",
)
@click.option(
    "--engine",
    type=click.Choice([e.value for e in Engine]),
    default=Engine.PYTHON.value,
    show_default=True,
    help="Recompute the hashes here or in the database.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
def verify(database_url: str, from_seq: int, expect_head: Anchor | None, engine: str, as_json: bool) -> None:
    """Check that the event log is intact: no entry edited, deleted or reordered since it was appended.

    Walks the hash chain in one snapshot and lists every problem with its seq. Exit code 0 when the chain is
    intact, 1 when it is not, 2 when it could not be checked.

    A chain cut at its end together with its head row, or re-hashed from some entry on, cannot be told from an
    intact one from inside the database. Keep the head this command prints somewhere else (a ticket, another
    system) and pass it back later with --expect-head.

    \b
    Examples:
      stocktrace verify
      stocktrace verify --from 1000000 --json
      stocktrace verify --expect-head 48211:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    """
    progress = None if as_json else _progress_printer()
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
            report = eventlog.verify(
                conn, from_seq=from_seq, anchor=expect_head, engine=Engine(engine), progress=progress
            )
    except psycopg.errors.UndefinedTable:
        raise _CannotCheck("the event log tables are missing: run `stocktrace migrate` first") from None
    except psycopg.Error as exc:
        raise _CannotCheck(f"cannot read the event log at {database_url}: {str(exc).strip()}") from None
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_report(report)
    if not report.intact:
        raise SystemExit(1)


def _progress_printer(every_s: float = 2.0) -> eventlog.Progress:
    last = time.monotonic()

    def show(entries: int, seq: int) -> None:
        nonlocal last
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            click.echo(f"  ... {entries:,} entries checked, at seq {seq:,}", err=True)

    return show


def _print_report(report: Report) -> None:
    span = f"seq {report.first_seq}..{report.last_seq}" if report.entries else "none"
    click.echo(
        f"event log: {report.entries:,} entries checked ({span}) in {report.elapsed_s:.2f} s, "
        f"{report.entries_per_s:,.0f} entries/s"
    )
    if report.head_seq is not None and report.head_hash is not None:
        click.echo(f"head: {report.head_seq}:{report.head_hash.hex()}")
    if report.intact:
        click.echo("intact")
        if report.head_seq and report.head_hash is not None:
            anchor = f"{report.head_seq}:{report.head_hash.hex()}"
            click.echo(f"Keep the head elsewhere; `stocktrace verify --expect-head {anchor}` later shows a rewrite.")
        return
    click.echo(f"NOT INTACT: {report.problems_total:,} problem(s), the first at seq {report.first_problem_seq}")
    for problem in report.problems:
        click.echo(f"  seq {problem.seq:<10} {problem.kind:<13} {problem.detail}")
    if report.problems_total > len(report.problems):
        click.echo(f"  ... and {report.problems_total - len(report.problems):,} more")


@click.command("eventlog")
@database_option
@click.option("--events", default=4_000, show_default=True, help="Events per append run.")
@click.option("--clients", default=4, show_default=True, help="Concurrent appending connections.")
@click.option("--batch", default=500, show_default=True, help="Events per transaction in the batched runs.")
@click.option("--verify-entries", default=200_000, show_default=True, help="Length of the chain verify walks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_eventlog(
    database_url: str, events: int, clients: int, batch: int, verify_entries: int, as_json: bool
) -> None:
    """Event log appends against plain inserts, and verify's speed in entries/s.

    Runs in a database of its own (<database>_bench_eventlog), created and migrated for the run and dropped
    after it; the real event log is never touched.

    \b
    Examples:
      stocktrace bench eventlog
      stocktrace bench eventlog --clients 8 --verify-entries 1000000 --json
    """
    with db.scratch_database(database_url, "bench_eventlog") as url:
        config = eventlog_bench.BenchConfig(url, events, clients, batch, verify_entries)
        result = eventlog_bench.run_benchmark(config, lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(
        f"\nappends, {result.clients} clients          plain insert     event log\n"
        f"  1 event per transaction   {result.plain_single_per_s:>10,.0f}/s  {result.chain_single_per_s:>10,.0f}/s\n"
        f"  {result.batch} per transaction      {result.plain_batched_per_s:>10,.0f}/s  "
        f"{result.chain_batched_per_s:>10,.0f}/s\n"
        f"verify, {result.verify_entries:,} entries: {result.verify_python_per_s:,.0f} entries/s hashing in Python, "
        f"{result.verify_sql_per_s:,.0f} entries/s hashing in SQL"
    )


COMMANDS: list[click.Command] = [verify]
BENCHMARKS: list[click.Command] = [bench_eventlog]
