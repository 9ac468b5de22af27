"""Benchmark of the event log: appends against plain inserts, and how fast ``verify`` walks the chain.

Appends are measured as the writers make them: one event per transaction (an API call) and many per
transaction (a resolver batch), from several clients at once. The baseline inserts the same rows into a plain
table of the same shape and indexes without the chain, so the difference is the cost of the chain: the queue, the
hash and, with several clients, the head lock that makes appending transactions commit one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from tracking import eventlog

_PLAIN_TABLE: Final = """
create table if not exists bench_plain_events (
    seq          bigint      generated always as identity primary key,
    recorded_at  timestamptz not null default clock_timestamp(),
    event_time   timestamptz not null,
    kind         text        not null,
    subject      text        not null,
    payload      jsonb       not null
);
create index if not exists bench_plain_events_subject on bench_plain_events (subject, seq);
create index if not exists bench_plain_events_event_time on bench_plain_events (event_time)"""
_PLAIN_INSERT: Final = "insert into bench_plain_events (kind, subject, event_time, payload) values (%s, %s, %s, %s)"
_CHAIN_INSERT: Final = "select event_log_append(%s, %s, %s, %s)"
# Fills the log for the verify runs in one transaction, the database making the events.
_FILL: Final = """
select count(event_log_append('movement', upper(md5(i::text)), now(),
    jsonb_build_object('event', 'arrived', 'to_location', 'shelf-' || i %% 500, 'to_site', 'dc-1')))
from generate_series(1, %s) i"""

Progress = Callable[[str], None]
_Event = tuple[str, str, datetime, Jsonb]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    events: int = 4_000
    clients: int = 4
    batch: int = 500
    verify_entries: int = 200_000


@dataclass(frozen=True, slots=True)
class BenchResult:
    clients: int
    batch: int
    plain_single_per_s: float
    chain_single_per_s: float
    plain_batched_per_s: float
    chain_batched_per_s: float
    verify_entries: int
    verify_python_per_s: float
    verify_sql_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {key: round(value) if isinstance(value, float) else value for key, value in asdict(self).items()}


def run_benchmark(config: BenchConfig, progress: Progress) -> BenchResult:
    """Run every measurement in ``config.database_url``, a migrated database whose event log it may fill."""
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        conn.execute(_PLAIN_TABLE)
    events = _events(config.events)
    rates = {}
    for name, statement, batch in (
        ("plain_single", _PLAIN_INSERT, 1),
        ("chain_single", _CHAIN_INSERT, 1),
        ("plain_batched", _PLAIN_INSERT, config.batch),
        ("chain_batched", _CHAIN_INSERT, config.batch),
    ):
        progress(f"{name}: {len(events):,} events, {batch} per transaction, {config.clients} clients ...")
        rates[name] = _append_rate(config, statement, events, batch)
        progress(f"  {rates[name]:,.0f} events/s")
    entries = _fill(config, progress)
    verify_rates = {engine: _verify_rate(config, engine, progress) for engine in eventlog.Engine}
    return BenchResult(
        clients=config.clients,
        batch=config.batch,
        plain_single_per_s=rates["plain_single"],
        chain_single_per_s=rates["chain_single"],
        plain_batched_per_s=rates["plain_batched"],
        chain_batched_per_s=rates["chain_batched"],
        verify_entries=entries,
        verify_python_per_s=verify_rates[eventlog.Engine.PYTHON],
        verify_sql_per_s=verify_rates[eventlog.Engine.SQL],
    )


def _events(count: int) -> list[_Event]:
    at = datetime.now(UTC)
    return [
        ("movement", f"{i:024X}", at, Jsonb({"event": "arrived", "to_location": f"shelf-{i % 500}", "to_site": "dc-1"}))
        for i in range(count)
    ]


def _append_rate(config: BenchConfig, statement: str, events: Sequence[_Event], batch: int) -> float:
    """Events per second with ``config.clients`` connections, each committing ``batch`` events at a time."""
    shares = [events[i :: config.clients] for i in range(config.clients)]
    connections = [psycopg.connect(config.database_url, autocommit=True) for _ in shares]
    start = threading.Barrier(len(shares) + 1)
    try:
        with ThreadPoolExecutor(len(shares)) as pool:
            pairs = zip(connections, shares, strict=True)
            futures = [pool.submit(_client, conn, statement, share, batch, start) for conn, share in pairs]
            start.wait()
            began = time.perf_counter()
            for future in futures:
                future.result()
            elapsed = time.perf_counter() - began
    finally:
        for conn in connections:
            conn.close()
    return len(events) / elapsed


def _client(
    conn: psycopg.Connection[Any], statement: str, events: Sequence[_Event], batch: int, start: threading.Barrier
) -> None:
    start.wait()
    with conn.cursor() as cursor:
        for i in range(0, len(events), batch):
            if batch == 1:
                cursor.execute(statement, events[i])  # autocommit: one transaction each
                continue
            with conn.transaction():
                cursor.executemany(statement, events[i : i + batch])


def _fill(config: BenchConfig, progress: Progress) -> int:
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from event_log").fetchone()
        missing = config.verify_entries - (row[0] if row else 0)
        if missing > 0:
            progress(f"filling the log to {config.verify_entries:,} entries in one transaction ...")
            began = time.perf_counter()
            conn.execute(_FILL, (missing,))
            progress(f"  {missing / (time.perf_counter() - began):,.0f} events/s (appended inside the database)")
        row = conn.execute("select count(*) from event_log").fetchone()
    return row[0] if row else 0


def _verify_rate(config: BenchConfig, engine: eventlog.Engine, progress: Progress) -> float:
    progress(f"verify, hashes recomputed in {engine} ...")
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        report = eventlog.verify(conn, engine=engine)
    if not report.intact:
        raise RuntimeError(f"the benchmark's own chain does not verify: {report.problems[:3]}")
    progress(f"  {report.entries_per_s:,.0f} entries/s ({report.entries:,} entries in {report.elapsed_s:.2f} s)")
    return report.entries_per_s
