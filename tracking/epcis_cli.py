"""``stocktrace epcis import FILE`` and ``stocktrace bench epcis``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec
import psycopg

from devices.options import database_option
from tracking import epcis_bench, epcis_capture
from tracking.epcis_capture import Capture, ErrorBehaviour, InvalidDocumentError, Reading

_SHOWN_ERRORS = 20


@click.group("epcis")
def epcis_group() -> None:
    """EPCIS 2.0 documents from other systems (WMS, ERP, trading partners)."""


@epcis_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@database_option
@click.option(
    "--proceed",
    is_flag=True,
    help="Capture the valid events of a document that has invalid ones (default: refuse the whole document).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=epcis_capture.BATCH_EVENTS,
    show_default=True,
    help="Events per transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the capture job as JSON instead of a summary.")
def import_command(file: Path, database_url: str, proceed: bool, batch: int, as_json: bool) -> None:
    """Capture an EPCISDocument (EPCIS 2.0 JSON/JSON-LD) from FILE ('-' for standard input).

    The document is checked against GS1's EPCIS 2.0 JSON schema. AggregationEvents pack (ADD), unpack (DELETE)
    and confirm (OBSERVE) containers as POST /api/v1/epcis/capture does, in eventTime order; each event is
    captured once, by its eventID, so running the same import again changes nothing, and an import stopped half
    way can be run again to capture the rest. Other event types are kept but not applied. Progress goes to
    standard error. Exit code 0 when every event was captured, 1 when the document (or an event) was refused.

    \b
    Examples:
      stocktrace epcis import shipment-4711.jsonld
      stocktrace epcis import --proceed partner-feed.json
      curl -s https://partner.example/epcis/export | stocktrace epcis import -
    """
    behaviour: ErrorBehaviour = "proceed" if proceed else "rollback"
    name = "<stdin>" if str(file) == "-" else str(file)
    reading = _read(file, name)
    try:
        job = asyncio.run(_capture(database_url, reading, name, behaviour, batch))
    except InvalidDocumentError as exc:
        _show_errors(exc)
        raise SystemExit(1) from None
    except psycopg.Error as exc:
        raise click.ClickException(
            f"cannot capture into {database_url}: {str(exc).strip()}\nIs the database migrated (`stocktrace migrate`)?"
        ) from None
    if as_json:
        click.echo(json.dumps(job.to_json()))
    else:
        _summary(job)
    if not job.success:
        raise SystemExit(1)


def _read(file: Path, name: str) -> Reading:
    started = time.perf_counter()
    data = sys.stdin.buffer.read() if name == "<stdin>" else file.read_bytes()
    click.echo(f"reading {name} ({len(data) / 1e6:,.1f} MB) ...", err=True)
    try:
        document: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise click.ClickException(f"{name} is not JSON: {exc}") from None
    try:
        reading = epcis_capture.read(document)
    except InvalidDocumentError as exc:
        _show_errors(exc)
        raise SystemExit(1) from None
    refused = f", {len(reading.errors):,} refused" if reading.errors else ""
    click.echo(
        f"  {reading.total:,} events, checked against GS1's EPCIS 2.0 schema in"
        f" {time.perf_counter() - started:.2f} s{refused}",
        err=True,
    )
    return reading


async def _capture(url: str, reading: Reading, name: str, behaviour: ErrorBehaviour, batch: int) -> Capture:
    started = last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 2.0 or done == total:
            last = now
            rate = done / (now - started) if now > started else 0.0
            click.echo(f"  ... {done:,} of {total:,} events captured ({rate:,.0f}/s)", err=True)

    async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as conn:
        return await epcis_capture.import_events(
            conn, reading, name=name, behaviour=behaviour, batch=batch, progress=progress
        )


def _show_errors(exc: InvalidDocumentError) -> None:
    click.echo(f"refused, nothing captured: {exc.total:,} problem(s) in the document", err=True)
    for error in exc.errors[:_SHOWN_ERRORS]:
        click.echo(f"  {error.pointer}: {error.detail}", err=True)
    if exc.total > _SHOWN_ERRORS:
        click.echo(f"  ... and {exc.total - _SHOWN_ERRORS:,} more", err=True)
    click.echo("Fix the document, or capture the valid events with --proceed.", err=True)


def _summary(job: Capture) -> None:
    counts = job.counts
    click.echo(
        f"capture {job.id}: {job.events:,} events: {counts.applied:,} applied, {counts.duplicates:,} duplicates"
        f" (captured before), {counts.superseded:,} superseded (their children changed later),"
        f" {counts.not_applied:,} kept but not applied (not AggregationEvents), {len(job.errors):,} refused"
    )
    for error in job.errors[:_SHOWN_ERRORS]:
        click.echo(f"  refused {error['pointer']}: {error['detail']}")


@click.command("epcis")
@database_option
@click.option("--events", "-n", default=20_000, show_default=True, help="AggregationEvents in the document.")
@click.option("--children", default=10, show_default=True, help="Children per event.")
@click.option("--batch", default=epcis_capture.BATCH_EVENTS, show_default=True, help="Events per transaction.")
@click.option("--requests", default=300, show_default=True, help="Single-event captures for the latency run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_epcis(database_url: str, events: int, children: int, batch: int, requests: int, as_json: bool) -> None:
    """EPCIS capture of AggregationEvents in events/s, against schema validation alone and plain inserts.

    Runs in a database of its own (<database>_bench_epcis), created and migrated for the run and dropped after.

    \b
    Examples:
      stocktrace bench epcis
      stocktrace bench epcis --events 100000 --json
    """
    config = epcis_bench.BenchConfig(database_url, events, children, batch, requests)
    result = epcis_bench.run_benchmark(config, lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(epcis_bench.table(result))


COMMANDS: list[click.Command] = [epcis_group]
BENCHMARKS: list[click.Command] = [bench_epcis]
