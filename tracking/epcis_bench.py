"""Benchmark of EPCIS capture: AggregationEvents applied to containers, against what the capture cannot avoid.

One generated document of N AggregationEvents (pallets packed with K items each, a tenth of them unpacked
later), all in EPC pure identity URIs of items no reader has seen, so that capture also registers every item:
its worst case. Measured in one run, in a database of its own:

- schema: checking the document against GS1's JSON schema alone (tracking/epcis_schema.py);
- read: schema check and reading the events (what ``epcis import`` does before it touches the database);
- plain insert: each event's JSON inserted into a table with a primary key, in the same batches: the floor of
  any capture that stores events;
- capture: ``import_events`` (record, look up and register identities, change containment, chain the log);
- again: the same document a second time: every event a duplicate;
- latency: one-event documents captured one after another, as a partner's system posting event by event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from stocktrace import db
from tracking import epcis, epcis_capture, epcis_schema

Progress = Callable[[str], None]
_PLAIN_TABLE: Final = (
    "create table if not exists bench_plain_epcis (event_key text primary key, event_time timestamptz not null,"
    " event jsonb not null)"
)
_PLAIN_INSERT: Final = (
    "insert into bench_plain_epcis (event_key, event_time, event)"
    " select * from unnest(%s::text[], %s::timestamptz[], %s::jsonb[]) on conflict do nothing"
)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    events: int = 20_000
    children: int = 10
    batch: int = epcis_capture.BATCH_EVENTS
    requests: int = 300


@dataclass(frozen=True, slots=True)
class BenchResult:
    events: int
    children: int
    batch: int
    schema_per_s: float
    read_per_s: float
    plain_insert_per_s: float
    capture_per_s: float
    again_per_s: float
    single_p50_ms: float
    single_p99_ms: float
    applied: int
    duplicates: int

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3 if k.endswith("_ms") else None) if isinstance(v, float) else v
                for k, v in asdict(self).items()}  # fmt: skip


def document(events: int, children: int, start: datetime, first: int = 0) -> dict[str, Any]:
    """An EPCISDocument of ``events`` AggregationEvents, numbered from ``first``: each packs ``children`` new
    items into a new pallet, and every tenth unpacks the pallet packed five events before."""
    body = []
    for i in range(first, first + events):
        event: dict[str, Any] = {
            "type": "AggregationEvent",
            "eventID": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
            "eventTime": (start + timedelta(seconds=i - first)).isoformat().replace("+00:00", "Z"),
            "eventTimeZoneOffset": "+01:00",
        }
        if i % 10 == 9 and i - 5 >= first:
            event.update(parentID=_pallet(i - 5), action="DELETE", bizStep="unpacking")
        else:
            items = [f"urn:epc:id:sgtin:4012345.000011.{i * children + c}" for c in range(children)]
            event.update(parentID=_pallet(i), childEPCs=items, action="ADD", bizStep="packing")
        body.append(event)
    return epcis.capture_document(body, start)


def _pallet(i: int) -> str:
    return f"urn:epc:id:sscc:4012345.{i:010d}"


def run_benchmark(config: BenchConfig, progress: Progress) -> BenchResult:
    """Every measurement in a fresh database of its own, dropped afterwards."""
    with db.scratch_database(config.database_url, "bench_epcis") as url:
        return asyncio.run(_measure(config, url, progress))


async def _measure(config: BenchConfig, url: str, progress: Progress) -> BenchResult:
    start = datetime(2026, 3, 2, 8, tzinfo=UTC)
    doc = document(config.events, config.children, start)
    n = config.events
    progress(f"document: {n:,} AggregationEvents, {config.children} children each")
    began = time.perf_counter()
    errors, _ = epcis_schema.check(doc)
    schema_s = time.perf_counter() - began
    assert not errors, errors[:3]
    progress(f"  schema check alone: {n / schema_s:,.0f} events/s")
    began = time.perf_counter()
    reading = epcis_capture.read(doc)
    read_s = time.perf_counter() - began
    progress(f"  schema check and read: {n / read_s:,.0f} events/s")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        plain_s = await _plain(conn, reading.events, config.batch)
        progress(f"  plain insert of the events: {n / plain_s:,.0f} events/s")
        began = time.perf_counter()
        job = await epcis_capture.import_events(conn, reading, name="bench", batch=config.batch)
        capture_s = time.perf_counter() - began
        progress(f"  capture: {n / capture_s:,.0f} events/s ({job.counts.applied:,} applied)")
        began = time.perf_counter()
        again = await epcis_capture.import_events(conn, reading, name="bench again", batch=config.batch)
        again_s = time.perf_counter() - began
        progress(f"  the same document again: {n / again_s:,.0f} events/s ({again.counts.duplicates:,} duplicates)")
        latencies = await _single(conn, config.requests, start + timedelta(days=1), n)
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (0.0, 0.0)
    progress(f"  one-event captures: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return BenchResult(
        events=n, children=config.children, batch=config.batch, schema_per_s=n / schema_s, read_per_s=n / read_s,
        plain_insert_per_s=n / plain_s, capture_per_s=n / capture_s, again_per_s=n / again_s,
        single_p50_ms=float(p50), single_p99_ms=float(p99), applied=job.counts.applied,
        duplicates=again.counts.duplicates,
    )  # fmt: skip


async def _plain(conn: epcis_capture.Conn, events: Sequence[epcis_capture.Event], batch: int) -> float:
    await conn.execute(_PLAIN_TABLE)
    await conn.commit()
    began = time.perf_counter()
    for first in range(0, len(events), batch):
        chunk = events[first : first + batch]
        async with conn.transaction():
            await conn.execute(
                _PLAIN_INSERT,
                ([e.key for e in chunk], [e.event_time for e in chunk], [Jsonb(dict(e.body)) for e in chunk]),
            )
    return time.perf_counter() - began


async def _single(conn: epcis_capture.Conn, requests: int, start: datetime, first: int) -> list[float]:
    """Milliseconds per one-event document, as ``POST /epcis/capture`` captures it (one transaction each)."""
    latencies = []
    for i in range(requests):
        doc = document(1, 10, start + timedelta(minutes=i), first=first + i)
        began = time.perf_counter()
        await epcis_capture.capture(conn, doc, source="api")
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def table(result: BenchResult) -> str:
    def ratio(rate: float) -> str:
        return f"{rate / result.capture_per_s:,.1f} x capture" if result.capture_per_s else ""

    return "\n".join([
        f"\n{result.events:,} AggregationEvents of {result.children} children, {result.batch} per transaction",
        f"capture                 {result.capture_per_s:>10,.0f} events/s   ({result.applied:,} applied)",
        f"same document again     {result.again_per_s:>10,.0f} events/s   ({result.duplicates:,} duplicates)",
        f"plain insert (baseline) {result.plain_insert_per_s:>10,.0f} events/s   {ratio(result.plain_insert_per_s)}",
        f"schema check (baseline) {result.schema_per_s:>10,.0f} events/s   {ratio(result.schema_per_s)}",
        f"schema check and read   {result.read_per_s:>10,.0f} events/s",
        f"one-event capture       p50 {result.single_p50_ms:.2f} ms, p99 {result.single_p99_ms:.2f} ms",
    ])  # fmt: skip
