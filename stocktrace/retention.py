"""Keeping raw data bounded: Timescale's own policies where the server has them, our own job where it does not.

Compression, retention policies and the job scheduler are features of the Timescale-licensed edition. The
Apache-licensed build (what Debian ships) has ``drop_chunks`` but no policies, so the service runs it itself.
Which one applies is asked of the server at start, never configured, so it cannot drift from the truth.

The read counts that ingest keeps (read_counts, read_counts_5m, read_counts_30m) are kept as long as the reads
they count (a chunk goes once all of it is past the retention), so a panel over the whole retention has all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal

import psycopg

log = logging.getLogger(__name__)

RAW_TABLES: Final = ("rfid_reads", "telemetry")
# Not compressed: a row per antenna-minute is small, and ingest adds to recent rows (and to old ones when a device
# delivers late), which compressed chunks make slow.
ROLLUP_TABLES: Final = ("read_counts", "read_counts_5m", "read_counts_30m")
# Segment compressed chunks by what queries filter on, order by time within a segment.
_SEGMENT_BY: Final = {"rfid_reads": "epc", "telemetry": "device_id, quantity"}
_ORDER_BY: Final = {"rfid_reads": "read_at desc", "telemetry": "observed_at desc"}

Edition = Literal["timescale", "apache"]


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep: timedelta
    compress_after: timedelta


async def server_edition(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> Edition:
    """The TimescaleDB edition of the server, as it reports it (timescaledb.license)."""
    cursor = await conn.execute("select current_setting('timescaledb.license', true)")
    row = await cursor.fetchone()
    return "timescale" if row is not None and row[0] == "timescale" else "apache"


async def install_policies(conn: psycopg.AsyncConnection[tuple[object, ...]], plan: RetentionPlan) -> None:
    """On the Timescale edition, let the server's own scheduler compress and drop chunks."""
    for table in ROLLUP_TABLES:
        await conn.execute("select add_retention_policy(%s, %s::interval, if_not_exists => true)", (table, plan.keep))
    for table in RAW_TABLES:
        await conn.execute(
            f"alter table {table} set (timescaledb.compress, timescaledb.compress_segmentby = '{_SEGMENT_BY[table]}',"
            f" timescaledb.compress_orderby = '{_ORDER_BY[table]}')"
        )
        await conn.execute(
            "select add_compression_policy(%s, %s::interval, if_not_exists => true)",
            (table, plan.compress_after),
        )
        await conn.execute("select add_retention_policy(%s, %s::interval, if_not_exists => true)", (table, plan.keep))


async def drop_expired_chunks(conn: psycopg.AsyncConnection[tuple[object, ...]], keep: timedelta) -> int:
    """What a retention policy would do: drop every raw and rollup chunk entirely older than ``keep``; returns how
    many."""
    dropped = 0
    for table in RAW_TABLES + ROLLUP_TABLES:
        cursor = await conn.execute("select drop_chunks(%s, older_than => now() - %s::interval)", (table, keep))
        dropped += len(await cursor.fetchall())
    return dropped


async def keep_bounded(
    dsn: str, plan: RetentionPlan, stop: asyncio.Event, every: timedelta = timedelta(hours=1)
) -> None:
    """Run for the life of the service: install policies once, or drop expired chunks on a schedule."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                if await server_edition(conn) == "timescale":
                    await install_policies(conn, plan)
                    log.info("retention and compression run as TimescaleDB policies")
                    return
                dropped = await drop_expired_chunks(conn, plan.keep)
                if dropped:
                    log.info("dropped %d raw chunk(s) older than %s", dropped, plan.keep)
        except psycopg.Error as exc:
            log.warning("retention: %s; trying again later", str(exc).strip()[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every.total_seconds())
