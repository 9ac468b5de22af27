"""Ingest's commits of telemetry and device status wake the evaluator (alerts/wakeup.py, 0320's triggers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
import pytest

from alerts import wakeup


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate telemetry, device_events, rfid_reads")
        yield conn


async def _woken_by(dsn: str, statement: LiteralString, row: tuple[object, ...]) -> bool:
    """Whether a COPY of ``row`` in a transaction of its own (as ingest writes) wakes a listener."""
    stop = asyncio.Event()
    async with wakeup.listening(dsn, stop, min_gap_s=0) as news:
        assert await news.wait(stop, 5), "a new connection counts as news: data may have come while none listened"
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.cursor() as cursor, cursor.copy(statement) as copy:
                await copy.write_row(row)
            await conn.commit()
        return await news.wait(stop, 2)


def test_stored_telemetry_and_device_status_wake_the_evaluator(dsn: str, db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    telemetry = "copy telemetry (observed_at, device_id, quantity, value, received_at) from stdin"
    status = "copy device_events (observed_at, device_id, online, reason, received_at) from stdin"
    assert asyncio.run(_woken_by(dsn, telemetry, (now, "probe-1", "temperature_c", 12.0, now)))
    assert asyncio.run(_woken_by(dsn, status, (now, "probe-1", False, "offline", now)))


def test_rfid_reads_do_not_wake_it(dsn: str, db: psycopg.Connection) -> None:
    # Reads reach the rules through the tracking resolver, which has its own pace.
    now = datetime.now(UTC)
    reads = "copy rfid_reads (read_at, device_id, antenna, epc, received_at) from stdin"
    assert not asyncio.run(_woken_by(dsn, reads, (now, "reader-1", 1, "3074257BF7194E4000001A85", now)))


def test_a_stop_ends_the_wait_without_news(dsn: str) -> None:
    async def scenario() -> bool:
        stop = asyncio.Event()
        news = wakeup.NewData()
        stop.set()
        return await news.wait(stop, 30)

    assert asyncio.run(scenario()) is False
