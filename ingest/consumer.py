"""The ingest loop: receive from MQTT, decode, commit in batches, and only then acknowledge.

Back-pressure is the broker's receive maximum: while a commit is failing nothing is acknowledged, so the
broker stops sending once that many messages are in flight, and memory stays bounded. When the connection
drops, what was received but not committed is forgotten; the persistent session redelivers it.

Given the registry's database, the consumer decodes each device's messages with that device's decoder
options and follows registry changes while it runs (ingest/decoder_config.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from ingest import metrics
from ingest.batch import Decoding, Inbox, Rows
from ingest.decoder_config import DEFAULT_POLL_S, DecoderConfig
from ingest.routes import Router
from ingest.wire import BrokerOptions, Connection, MqttError
from ingest.writer import Writer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_messages: int = 5000
    max_wait_s: float = 0.02
    max_payload_bytes: int = 262144


@dataclass(frozen=True, slots=True)
class Committed:
    """What one commit stored; handed to `on_commit` listeners (metrics, benchmarks)."""

    messages: int
    rows: Rows
    committed_at: datetime


@dataclass(frozen=True, slots=True)
class _Write:
    task: asyncio.Task[bool]
    packet_ids: list[int]
    rows: Rows


def shared(topic_filters: Sequence[str], group: str | None) -> list[str]:
    """The filters as shared subscriptions (MQTT v5 §4.8.2), so that several workers split one stream."""
    return [f"$share/{group}/{f}" for f in topic_filters] if group else list(topic_filters)


def _backoff(attempt: int, cap_s: float = 10.0) -> float:
    # Full jitter: workers that lost the same database do not come back in lockstep.
    return random.uniform(0, min(cap_s, 0.1 * 2**attempt))  # not for security


class Consumer:
    def __init__(
        self,
        broker: BrokerOptions,
        topic_filters: Sequence[str],
        router: Router,
        writer: Writer,
        policy: BatchPolicy = BatchPolicy(),
        on_commit: Callable[[Committed], None] | None = None,
        *,
        registry_url: str | None = None,
        registry_poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        """``registry_url``: the database whose registry holds the devices' decoder options (and the stored
        Sparkplug births); without it, every device is decoded with its format's defaults."""
        self._broker = broker
        self._filters = list(topic_filters)
        self._router = router
        self._writer = writer
        self._policy = policy
        self._on_commit = on_commit
        self._config = None if registry_url is None else DecoderConfig(registry_url, router, registry_poll_s)
        self._inbox = Inbox()
        self._has_messages = asyncio.Event()
        self._full = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()

    def _receive(self, topic: str, payload: bytes, packet_id: int) -> None:
        inbox = self._inbox
        inbox.topics.append(topic)
        inbox.payloads.append(payload)
        inbox.packet_ids.append(packet_id)
        size = len(inbox.topics)
        if size == 1:
            inbox.first_at = self._loop.time()
            self._has_messages.set()
        elif size >= self._policy.max_messages:
            self._full.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; then commit and acknowledge what was received, and disconnect."""
        polling = None if self._config is None else asyncio.create_task(self._config.run(stop))
        try:
            await self._consume(stop)
        finally:
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
            if self._config is not None:
                await self._config.close()  # the last batch may have read births after polling stopped
        await self._writer.close()

    async def _consume(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                connection = await Connection.open(self._broker, self._receive)
            except MqttError as exc:
                attempt = await self._retry_later(stop, attempt, str(exc))
                continue
            metrics.BROKER_RECONNECTS.inc()
            try:
                await connection.subscribe(self._filters)
                log.info("consuming %s (session present: %s)", ", ".join(self._filters), connection.session_present)
                attempt = 0
                self.connected.set()
                metrics.SUBSCRIBED.set(1)
                await self._pump(connection, stop)
            except MqttError as exc:
                attempt = await self._retry_later(stop, attempt, f"broker connection: {exc}")
            finally:
                self.connected.clear()
                metrics.SUBSCRIBED.set(0)
                self._inbox = Inbox()  # not committed, not acknowledged: the broker redelivers these
                self._has_messages.clear()
                self._full.clear()
                await connection.close()

    async def _retry_later(self, stop: asyncio.Event, attempt: int, reason: str) -> int:
        delay = _backoff(attempt)
        log.warning("%s; retrying in %.1f s", reason, delay)
        await _sleep_unless(stop, delay)
        return attempt + 1

    async def _pump(self, connection: Connection, stop: asyncio.Event) -> None:
        """Batches flow through two steps that overlap: while batch k is being written (the database's time),
        batch k+1 is decoded (ours). Only one write is in flight, so acknowledgements keep arrival order."""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        writing: _Write | None = None
        try:
            while True:
                await self._wait_for_batch(connection, stopping)
                if connection.closed.done():
                    connection.closed.result()  # raises MqttError
                inbox, self._inbox = self._inbox, Inbox()
                self._has_messages.clear()
                self._full.clear()
                rows = await self._decode(inbox, stop) if inbox.topics else None
                if writing is not None:
                    await self._finish(writing, connection)
                    writing = None
                if rows is not None:
                    writing = _Write(asyncio.create_task(self._store(inbox, rows, stop)), inbox.packet_ids, rows)
                if stop.is_set():
                    return
        finally:
            stopping.cancel()
            if writing is not None:
                await self._finish(writing, connection)

    async def _finish(self, writing: _Write, connection: Connection) -> None:
        """Wait for a write; if it committed, acknowledge its messages and send the replies it carries."""
        if not await writing.task or connection.closed.done():
            return  # not committed (stopping), or nobody to tell: the broker will redeliver
        connection.ack([packet_id for packet_id in writing.packet_ids if packet_id])
        for reply in writing.rows.replies:
            connection.publish(self._router.remote(reply.topic), reply.payload)

    async def _wait_for_batch(self, connection: Connection, stopping: asyncio.Future[Any]) -> None:
        """Return when the inbox is full, its first message has waited long enough, or we must stop."""
        has_messages: asyncio.Future[Any] = asyncio.ensure_future(self._has_messages.wait())
        waiting: set[asyncio.Future[Any]] = {has_messages, stopping, connection.closed}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        has_messages.cancel()
        if stopping.done() or connection.closed.done():
            return
        remaining = self._inbox.first_at + self._policy.max_wait_s - self._loop.time()
        if remaining > 0 and not self._full.is_set():
            full: asyncio.Future[Any] = asyncio.ensure_future(self._full.wait())
            waiting = {full, stopping, connection.closed}
            await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            full.cancel()

    async def _decode(self, inbox: Inbox, stop: asyncio.Event) -> Rows | None:
        """The batch's rows; None if stopped before the registry could be read (nothing is acknowledged)."""
        if self._config is not None and not await self._config.ready(stop):
            return None
        decoding = Decoding(inbox, self._router, datetime.now(UTC), self._policy.max_payload_bytes)
        while (need := decoding.run()) is not None:
            # A Sparkplug decoder met data it cannot name: births another worker stored may name it.
            if self._config is not None:
                await self._config.load_births(need, decoding.rows.received_at)
            else:
                for device_id in need.device_ids:
                    need.book.record(device_id, None, decoding.rows.received_at)
        return decoding.rows

    async def _store(self, inbox: Inbox, rows: Rows, stop: asyncio.Event) -> bool:
        """Store the rows, retrying while the database is down; False if we were stopped first."""
        attempt = 0
        while True:
            started = self._loop.time()
            try:
                await self._writer.write(rows)
                break
            except psycopg.Error as exc:
                metrics.DATABASE_ERRORS.inc()
                delay = _backoff(attempt)
                attempt += 1
                log.warning(
                    "cannot commit %d messages (%s); retrying in %.1f s", len(inbox), str(exc).strip()[:200], delay
                )
                if await _sleep_unless(stop, delay):
                    return False
        self._record(len(inbox), rows, started, datetime.now(UTC))
        return True

    def _record(self, messages: int, rows: Rows, started: float, committed_at: datetime) -> None:
        metrics.COMMIT_SECONDS.observe(self._loop.time() - started)
        metrics.BATCH_MESSAGES.observe(messages)
        metrics.MESSAGES.inc(messages)
        metrics.DEAD_LETTERS.inc(len(rows.dead_letters))
        for table, written in (
            ("rfid_reads", rows.rfid_reads),
            ("telemetry", rows.telemetry),
            ("device_events", rows.device_events),
        ):
            if written:
                metrics.ROWS.labels(table).inc(len(written))
        if rows.oldest_observed_at is not None:
            metrics.LAG_SECONDS.observe(max(0.0, (committed_at - rows.oldest_observed_at).total_seconds()))
        if self._on_commit is not None:
            self._on_commit(Committed(messages, rows, committed_at))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early if `stop` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
