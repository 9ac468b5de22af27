"""Waking the evaluator when new data is stored, so that a breach is judged within milliseconds of its commit.

The evaluator ticks every ``interval_s`` (a second by default), which alone would put up to a second between a
reading being stored and the rules seeing it. Ingest's commits of telemetry and device status send a NOTIFY
(a statement trigger, 0320_alert_groups.sql: one per batch, folded by PostgreSQL within a transaction); the
evaluator LISTENs on a connection of its own while it leads, and a notification cuts its wait short.

What it costs: one notification per ingest batch that carries telemetry or status, and, while data keeps
arriving, ticks back to back instead of one per interval, but never closer than ``min_gap_s`` apart (a
tick's own duration plus the gap), so evaluation takes at most ``duration / (duration + min_gap_s)`` of a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import psycopg

log = logging.getLogger(__name__)

NEW_DATA_CHANNEL: Final = "stocktrace_new_data"
MIN_GAP_S: Final = 0.05
_RECONNECT_S: Final = 1.0


class NewData:
    """Set by notifications on ``NEW_DATA_CHANNEL``; ``wait`` returns at the first one (or the timeout)."""

    def __init__(self, min_gap_s: float = MIN_GAP_S) -> None:
        self._event = asyncio.Event()
        self._min_gap_s = min_gap_s

    async def listen(self, dsn: str, stop: asyncio.Event) -> None:
        """LISTEN until ``stop`` is set, reconnecting as needed; a (re)connection counts as news, since what
        was stored while nobody listened was never announced."""
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    await conn.execute(f"listen {NEW_DATA_CHANNEL}")
                    self._event.set()
                    while not stop.is_set():
                        async for _ in conn.notifies(timeout=0.5):
                            self._event.set()
            except psycopg.Error as exc:
                log.warning("cannot listen for new data, ticking on time only: %s", str(exc).strip()[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RECONNECT_S)

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> bool:
        """Return when new data was announced since the last return (but no sooner than ``min_gap_s`` after
        this call; True), when ``stop`` is set, or after ``timeout_s`` (False)."""
        called = time.monotonic()
        waiters = [asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        woken = self._event.is_set() and not stop.is_set()
        if woken:
            gap = called + self._min_gap_s - time.monotonic()
            if gap > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), gap)
        self._event.clear()
        return woken


@asynccontextmanager
async def listening(dsn: str, stop: asyncio.Event, min_gap_s: float = MIN_GAP_S) -> AsyncIterator[NewData]:
    """A ``NewData`` listening for as long as the block runs."""
    news = NewData(min_gap_s)
    task = asyncio.create_task(news.listen(dsn, stop))
    try:
        yield news
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
