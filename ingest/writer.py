"""Writes decoded batches into TimescaleDB: one transaction per batch, COPY for the rows.

QoS 1 is at least once, so a redelivered message must leave no duplicate. Each raw table has a unique natural
key; the fast path COPYs straight into the hypertable inside a savepoint, and only when that hits the key (a
redelivery after a crash or reconnect) is the batch written again through a staging table with
``ON CONFLICT DO NOTHING``. The per-minute read counts (ingest/read_counts.py) add only the reads stored, so a
redelivered read is counted once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import psycopg
from psycopg import sql

from ingest import read_counts
from ingest.batch import Row, Rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]


RFID_READS: Final = Table(
    "rfid_reads",
    ("read_at", "device_id", "antenna", "epc", "rssi_dbm", "received_at", "extra"),
    ("timestamptz", "text", "int2", "text", "float4", "timestamptz", "jsonb"),
)
TELEMETRY: Final = Table(
    "telemetry",
    ("observed_at", "device_id", "quantity", "value", "latitude", "longitude", "altitude_m", "accuracy_m",
     "speed_mps", "received_at", "extra"),
    ("timestamptz", "text", "text", "float8", "float8", "float8", "float4", "float4", "float4", "timestamptz",
     "jsonb"),
)  # fmt: skip
DEVICE_EVENTS: Final = Table(
    "device_events",
    ("observed_at", "device_id", "antenna", "online", "reason", "received_at", "extra"),
    ("timestamptz", "text", "int2", "bool", "text", "timestamptz", "jsonb"),
)
DEAD_LETTERS: Final = Table(
    "dead_letters", ("received_at", "topic", "payload", "error"), ("timestamptz", "text", "bytea", "text")
)

_UPSERT_ACTIVITY: Final = """
insert into device_activity as a (device_id, first_seen_at, last_seen_at, last_topic, messages)
select device_id, %(at)s, %(at)s, topic, messages
from unnest(%(ids)s::text[], %(topics)s::text[], %(counts)s::bigint[]) as t(device_id, topic, messages)
order by device_id
on conflict (device_id) do update
set last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at),
    last_topic = excluded.last_topic,
    messages = a.messages + excluded.messages
"""


# A later stage's work on a batch, done in the batch's own transaction: it commits with the raw rows or not at all.
# A redelivered batch runs it again with only the reads it stored (the others were seen the first time), and
# everything else again, so a step must be idempotent (upserts keyed on what it derives).
Step = Callable[[psycopg.AsyncConnection[tuple[object, ...]], Rows], Awaitable[None]]


_UPSERT_ANTENNAS: Final = """
insert into antenna_activity as a (device_id, antenna, last_read_at, reads)
select * from unnest(%(ids)s::text[], %(antennas)s::int2[], %(ats)s::timestamptz[], %(counts)s::bigint[])
order by 1, 2
on conflict (device_id, antenna) do update
set last_read_at = greatest(a.last_read_at, excluded.last_read_at),
    reads = a.reads + excluded.reads
"""


class Writer:
    """Owns one database connection; `write` commits a batch or raises `psycopg.Error` having written nothing."""

    def __init__(self, dsn: str, steps: Sequence[Step] = ()) -> None:
        self._dsn = dsn
        self._steps = list(steps)
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.redelivered_batches = 0

    async def write(self, rows: Rows) -> None:
        conn = await self._connection()
        try:
            async with conn.transaction():
                counts, stored = await self._copy_reads(conn, rows.rfid_reads)
                await self._copy_idempotent(conn, TELEMETRY, rows.telemetry)
                await self._copy_idempotent(conn, DEVICE_EVENTS, rows.device_events)
                await self._copy(conn, DEAD_LETTERS, rows.dead_letters)
                await read_counts.add(conn, counts)
                await self._record_activity(conn, rows)
                for step in self._steps:
                    await step(conn, rows if stored is None else replace(rows, rfid_reads=stored))
        except psycopg.Error:
            await self.close()  # the next write reconnects; a broken connection is never reused
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except psycopg.Error:
                log.debug("error closing a broken database connection", exc_info=True)

    async def _connection(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            # synchronous_commit stays on: the broker forgets a message once we acknowledge it, so the commit
            # we acknowledge after must be on disk.
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=5)
        return self._conn

    async def _copy(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], table: Table, rows: Sequence[Row], *,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:  # fmt: skip
        """COPY the rows; ``meanwhile`` runs once they are sent, while the server still works through them."""
        if not rows:
            return
        statement = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
        )
        async with conn.cursor().copy(statement) as copy:
            copy.set_types(list(table.types))
            for row in rows:
                await copy.write_row(row)
            if meanwhile is not None:
                meanwhile()

    async def _copy_idempotent(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], table: Table, rows: Sequence[Row], *,
        meanwhile: Callable[[], object] | None = None,
    ) -> Sequence[Row] | None:  # fmt: skip
        """Store the rows not stored yet. Returns None when all of them were new (the fast path, where ``meanwhile``
        runs during the COPY), else the rows this call added, in the table's column order."""
        if not rows:
            return None
        try:
            async with conn.transaction():  # a savepoint: a key violation undoes only this COPY
                await self._copy(conn, table, rows, meanwhile=meanwhile)
        except psycopg.errors.UniqueViolation:
            self.redelivered_batches += 1
        else:
            return None
        stage = Table(f"{table.name}_stage", table.columns, table.types)
        await conn.execute(
            sql.SQL("create temp table if not exists {} (like {}) on commit delete rows").format(
                sql.Identifier(stage.name), sql.Identifier(table.name)
            )
        )
        await self._copy(conn, stage, rows)
        columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
        cursor = await conn.execute(
            sql.SQL("insert into {} ({}) select {} from {} on conflict do nothing returning {}").format(
                sql.Identifier(table.name), columns, columns, sql.Identifier(stage.name), columns
            )
        )
        return await cursor.fetchall()

    async def _copy_reads(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], reads: Sequence[Row]
    ) -> tuple[read_counts.Tally, list[Row] | None]:
        """Store the reads as `_copy_idempotent` does; returns the tally of those stored, and for a redelivered
        batch the reads its insert added. On the fast path the reads are tallied while the server works through the
        COPY (the slower side), so the tally adds no time to the batch; a redelivered batch is tallied again from the
        reads its insert added."""
        tallies: list[read_counts.Tally] = []
        added = await self._copy_idempotent(
            conn, RFID_READS, reads, meanwhile=lambda: tallies.append(read_counts.tally(reads))
        )
        if added is not None:
            return read_counts.tally(added), list(added)
        return (tallies[0] if tallies else {}), None

    async def _record_activity(self, conn: psycopg.AsyncConnection[tuple[object, ...]], rows: Rows) -> None:
        if rows.antennas:
            keys = sorted(rows.antennas)
            await conn.execute(
                _UPSERT_ANTENNAS,
                {
                    "ids": [key[0] for key in keys],
                    "antennas": [key[1] for key in keys],
                    "ats": [rows.antennas[key][0] for key in keys],
                    "counts": [rows.antennas[key][1] for key in keys],
                },
            )
        if not rows.activity:
            return
        ids = sorted(rows.activity)  # one lock order for every worker: no deadlocks between them
        await conn.execute(
            _UPSERT_ACTIVITY,
            {
                "at": rows.received_at,
                "ids": ids,
                "topics": [rows.activity[i][0] for i in ids],
                "counts": [rows.activity[i][1] for i in ids],
            },
        )
