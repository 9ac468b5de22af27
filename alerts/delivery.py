"""The delivery worker: sends what the outbox holds, in order per receiver, until it is sent or finally fails.

Any number of workers, in any number of processes, can run against one database. Each of ``concurrency``
slots repeats: in a transaction, lock the due head of some receiver's lane (``FOR UPDATE SKIP LOCKED``, see
0310_outbox.sql), send it, record the attempt and the outcome, commit. The row lock is held while sending, so
no other worker sends that delivery or the ones behind it in its lane; other lanes go on in parallel.

Failures (alerts/sinks/base.py): a retryable one schedules the next attempt after an exponential backoff with
full jitter (a uniform draw between 0 and min(backoff_max, backoff_initial * 2^attempt), as in "Exponential
Backoff And Jitter", AWS Architecture Blog, 2015), and never sooner than the receiver's Retry-After. Once the
delivery has been tried for ``max_age`` (or ``max_attempts`` times) it is marked failed; so is one the receiver
refused (4xx). A failed delivery no longer holds back its lane, shows in GET /deliveries?state=failed, and
POST /deliveries/{id}/retry puts it back at the head of its lane with a fresh budget.

Delivery is at least once. The outcome of a send is committed after the receiver answered; a worker that dies
in between (or loses its database connection) leaves the delivery pending, and it is sent again, with the same
body and the same Idempotency-Key, so receivers that care can drop the repeat. PagerDuty does so by dedup_key.
Outcomes are committed without waiting for the WAL flush (synchronous_commit off on the worker's connections),
which only widens that window to a database crash: what was enqueued is always committed synchronously.

Enqueue sends a NOTIFY on commit; the worker LISTENs, so a delivery usually leaves within milliseconds of its
commit. Polling every ``poll_s`` covers lost notifications and backoffs coming due.

Alert groups that wait (a route's group_wait or group_interval, alerts/groups.py) are flushed here: one task
sleeps until the next group is due (or a NOTIFY says one was scheduled sooner), then turns each due group into
its deliveries in a transaction of its own, with the group locked ``FOR UPDATE SKIP LOCKED``, so two workers
never make the same message twice and a worker that dies mid-flush leaves the group due as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
from prometheus_client import Counter, Histogram
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts import groups, outbox
from alerts.outbox import NOTIFY_CHANNEL
from alerts.routes import DeliveryPolicy, RoutesConfig, load_routes
from alerts.sinks import Message, Receipt, RetryableSinkError, Sink, SinkError, build_sink
from alerts.sinks.base import Clock, JsonObject, SharedClientSink

log = logging.getLogger(__name__)

ATTEMPTS: Final = Counter(
    "stocktrace_alert_delivery_attempts", "Attempts to send an alert delivery", ["receiver", "outcome"]
)
SEND_SECONDS: Final = Histogram(
    "stocktrace_alert_delivery_send_seconds",
    "Time a receiver took to answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_RECONNECT_DELAY_S: Final = 1.0
# Shown in pg_stat_activity: a slot is "idle in transaction" while a receiver takes its time.
APPLICATION_NAME: Final = "stocktrace-delivery"
_CLEANUP_EVERY_S: Final = 600.0
_MAX_EXPONENT: Final = 40  # 2**40 backoff_initial is beyond any backoff_max; keeps the float finite

_CLAIM = """
    with heads as (
        select head.id
        from delivery_lanes lane
        cross join lateral (
            select d.id, d.due_at from deliveries d
            where d.receiver = lane.receiver and d.state = 'pending'
            order by d.seq limit 1
        ) head
        where head.due_at <= %(now)s
    )
    select d.id, d.receiver, d.seq, d.payload::text as body, d.idempotency_key::text as idempotency_key,
           d.fingerprints, d.retry_since, d.budget_attempts, d.attempts,
           (select coalesce(jsonb_object_agg(r.fingerprint, r.reference), '{}') from delivery_references r
            where r.receiver = d.receiver and r.fingerprint = any(d.fingerprints)) as "references"
    from deliveries d
    where d.id in (select id from heads) and d.state = 'pending' and d.due_at <= %(now)s
    order by d.due_at, d.id
    limit 1
    for update of d skip locked
"""
_RECORD = """
    with updated as (
      update deliveries set
        state = %(state)s,
        attempts = attempts + 1,
        budget_attempts = budget_attempts + 1,
        due_at = coalesce(%(retry_at)s, due_at),
        last_status_code = %(status_code)s,
        last_error = %(error)s,
        sent_at = case when %(state)s = 'sent' then %(now)s end,
        failed_at = case when %(state)s = 'failed' then %(now)s end
      where id = %(id)s
      returning id, attempts
    )
    insert into delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, outcome, error, retry_at)
    select id, attempts, %(started_at)s, %(duration_ms)s, %(status_code)s, %(outcome)s, %(error)s, %(retry_at)s
    from updated
"""
_REMEMBER = """
    insert into delivery_references (receiver, fingerprint, reference, updated_at) values (%s, %s, %s, %s)
    on conflict (receiver, fingerprint) do update set reference = excluded.reference, updated_at = excluded.updated_at
"""
_CLEANUP = """
    delete from deliveries where id in (
        select id from deliveries where state = 'sent' and sent_at < %s order by id limit 10000
    )
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery locked for sending, as read from the outbox."""

    id: int
    receiver: str
    seq: int
    body: str
    idempotency_key: str
    fingerprints: list[str]
    retry_since: datetime
    budget_attempts: int
    attempts: int
    references: dict[str, JsonObject]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: sent, pending again (with retry_at), or failed for good."""

    state: str
    status_code: int | None = None
    error: str | None = None
    retry_at: datetime | None = None
    references: Mapping[str, JsonObject] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "retry" if self.state == "pending" else self.state


def backoff_s(policy: DeliveryPolicy, attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(backoff_max, backoff_initial * 2^attempt)]; ``attempt`` counts from 0."""
    ceiling = policy.backoff_initial.total_seconds() * 2 ** min(attempt, _MAX_EXPONENT)
    return rng.uniform(0.0, min(policy.backoff_max.total_seconds(), ceiling))


def decide(claimed: Claimed, error: SinkError, now: datetime, policy: DeliveryPolicy, rng: random.Random) -> Outcome:
    """After a failed attempt: retry (when), or give up."""
    message = str(error) or type(error).__name__
    if not isinstance(error, RetryableSinkError):
        return Outcome("failed", error.status_code, message)
    deadline = claimed.retry_since + policy.max_age
    attempts_used = claimed.budget_attempts + 1
    if now >= deadline or (policy.max_attempts and attempts_used >= policy.max_attempts):
        return Outcome("failed", error.status_code, f"gave up after {attempts_used} attempt(s): {message}")
    delay = max(backoff_s(policy, claimed.budget_attempts, rng), error.retry_after_s or 0.0)
    # The last attempt is made at the deadline rather than skipped because the backoff jumped past it.
    retry_at = min(now + timedelta(seconds=delay), deadline)
    return Outcome("pending", error.status_code, message, retry_at)


class Dispatcher:
    """Sends deliveries through the configured receivers and records what happened."""

    def __init__(self, config: RoutesConfig, client: httpx.AsyncClient, clock: Clock, rng: random.Random) -> None:
        self._policy = config.delivery
        self._clock, self._rng = clock, rng
        self._sinks: dict[str, Sink] = {r.name: build_sink(r, client, clock) for r in config.receivers}
        # A send is bounded by its receiver's timeout per connect, write and read; this bounds the whole, so that
        # no sink, however it misbehaves, holds its lane's lock for long.
        self._limits_s = {r.name: 3 * r.timeout_s + 1 for r in config.receivers}

    async def aclose(self) -> None:
        for sink in self._sinks.values():
            await sink.aclose()

    async def deliver_one(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Send the most overdue lane head no one else is sending; False when there is none."""
        async with conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_CLAIM, {"now": self._clock()})
            row = await cursor.fetchone()
            if row is None:
                return False
            claimed = Claimed(**row)
            started_at = self._clock()
            started = time.perf_counter()
            outcome = await self._attempt(claimed)
            duration_s = time.perf_counter() - started
            await self._record(conn, claimed, outcome, started_at, duration_s)
        SEND_SECONDS.observe(duration_s)
        ATTEMPTS.labels(claimed.receiver, outcome.label).inc()
        return True

    async def _attempt(self, claimed: Claimed) -> Outcome:
        sink = self._sinks.get(claimed.receiver) or _Unconfigured(claimed.receiver)
        message = Message(
            claimed.id, claimed.receiver, claimed.seq, claimed.idempotency_key, claimed.body, claimed.references
        )
        limit_s = self._limits_s.get(claimed.receiver, 1.0)
        try:
            async with asyncio.timeout(limit_s):
                receipt: Receipt = await sink.send(message)
        except TimeoutError:
            return self._failed(claimed, RetryableSinkError(f"no answer within {limit_s:g} s"))
        except SinkError as exc:
            return self._failed(claimed, exc)
        except Exception as exc:  # a fault in a sink must not stop its lane for good, nor the worker
            log.exception("delivery %d to %s: unexpected error in the sink", claimed.id, claimed.receiver)
            return self._failed(claimed, RetryableSinkError(f"{type(exc).__name__}: {exc}"[:300]))
        return Outcome("sent", receipt.status_code, references=receipt.references)

    def _failed(self, claimed: Claimed, error: SinkError) -> Outcome:
        outcome = decide(claimed, error, self._clock(), self._policy, self._rng)
        log.warning(
            "delivery %d to %s, attempt %d: %s (%s)",
            claimed.id, claimed.receiver, claimed.attempts + 1, outcome.error, outcome.label,
        )  # fmt: skip
        return outcome

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], claimed: Claimed, outcome: Outcome, started_at: datetime,
        duration_s: float,
    ) -> None:  # fmt: skip
        now = self._clock()
        values = {
            "id": claimed.id,
            "state": outcome.state,
            "retry_at": outcome.retry_at,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "now": now,
            "started_at": started_at,
            "duration_ms": duration_s * 1000,
            "outcome": outcome.label,
        }
        async with conn.cursor() as cursor:
            await cursor.execute(_RECORD, values)
            for fingerprint, reference in outcome.references.items():
                await cursor.execute(_REMEMBER, (claimed.receiver, fingerprint, Jsonb(reference), now))


class _Unconfigured(SharedClientSink):
    """The sink of a receiver that was removed from the configuration while it still had deliveries pending:
    they wait (and are retried) until it is back or their max_age passes, and then show as failed."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def send(self, message: Message) -> Receipt:
        raise RetryableSinkError(f"receiver {self._name!r} is not in the routes configuration")


def load_worker_routes(path: Path) -> RoutesConfig:
    """The routes file with its ``${VAR}`` secrets filled in from the environment, as the worker needs it."""
    return load_routes(path, environ=os.environ)


async def run(
    dsn: str,
    stop: asyncio.Event,
    config: RoutesConfig,
    *,
    concurrency: int = 4,
    poll_s: float = 1.0,
    clock: Clock = utc_now,
    rng: random.Random | None = None,
) -> None:
    """Deliver until ``stop`` is set; a delivery being sent when it is set is finished and recorded first."""
    wake = Doorbell(concurrency)
    scheduled = asyncio.Event()
    async with httpx.AsyncClient(follow_redirects=False) as client:
        dispatcher = Dispatcher(config, client, clock, rng or random.Random())
        background = [
            asyncio.create_task(_listen(dsn, wake, scheduled, stop)),
            asyncio.create_task(_clean_up(dsn, stop, config.delivery, clock)),
            asyncio.create_task(_flush_groups(dsn, config, wake, scheduled, stop, clock, poll_s)),
        ]
        slots = [asyncio.create_task(_slot(dsn, dispatcher, wake, stop, poll_s)) for _ in range(concurrency)]
        try:
            await stop.wait()
            wake.ring_all()
            await asyncio.gather(*slots)
        finally:
            # Listening and cleaning hold nothing that must be finished; the slots finished their deliveries.
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await dispatcher.aclose()


async def _slot(dsn: str, dispatcher: Dispatcher, wake: Doorbell, stop: asyncio.Event, poll_s: float) -> None:
    while not stop.is_set():
        try:
            async with await _connect(dsn) as conn:
                while not stop.is_set():
                    if not await dispatcher.deliver_one(conn):
                        await wake.wait(poll_s)
        except psycopg.Error as exc:
            # The delivery in hand, if any, stays pending: its transaction did not commit.
            log.warning("delivery worker lost the database: %s; reconnecting", str(exc).strip()[:200])
            await _sleep_unless(stop, _RECONNECT_DELAY_S)


async def _listen(dsn: str, wake: Doorbell, scheduled: asyncio.Event, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with await _connect(dsn) as conn:
                await conn.execute(f"listen {NOTIFY_CHANNEL}")
                wake.ring_all()  # whatever was enqueued while nobody listened
                scheduled.set()
                while not stop.is_set():
                    async for _ in conn.notifies(timeout=0.5):
                        wake.ring()
                        scheduled.set()
        except psycopg.Error as exc:
            log.warning("delivery worker cannot listen for new deliveries: %s", str(exc).strip()[:200])
            await _sleep_unless(stop, _RECONNECT_DELAY_S)


async def _flush_groups(
    dsn: str, config: RoutesConfig, wake: Doorbell, scheduled: asyncio.Event, stop: asyncio.Event, clock: Clock,
    poll_s: float,
) -> None:  # fmt: skip
    """Make the deliveries of alert groups as they come due; sleep until the next one (at most ``poll_s``, which
    also covers a clock that is not the wall's, as in tests)."""
    receivers = [receiver.name for receiver in config.receivers]
    while not stop.is_set():
        try:
            # Committed synchronously, as enqueue's are: a message lost in a database crash after it was sent
            # would be made again under a new idempotency key.
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name=APPLICATION_NAME
            ) as conn:
                while not stop.is_set():
                    scheduled.clear()
                    while (made := await outbox.flush_due(conn, config, clock())) is not None:
                        for _ in range(made):
                            wake.ring()
                    next_at = await groups.next_due(conn, receivers)
                    delay = poll_s if next_at is None else (next_at - clock()).total_seconds()
                    await _wait_for(scheduled, stop, min(poll_s, max(0.0, delay)))
        except psycopg.Error as exc:
            log.warning("delivery worker cannot flush alert groups: %s; reconnecting", str(exc).strip()[:200])
            await _sleep_unless(stop, _RECONNECT_DELAY_S)


async def _wait_for(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    """Until ``event`` or ``stop`` is set, or ``seconds`` have passed."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _clean_up(dsn: str, stop: asyncio.Event, policy: DeliveryPolicy, clock: Clock) -> None:
    """Delete sent deliveries (and their attempts) past the retention; failed ones stay until dealt with."""
    while not stop.is_set():
        try:
            async with await _connect(dsn) as conn:
                while (await conn.execute(_CLEANUP, (clock() - policy.retention,))).rowcount:
                    pass
        except psycopg.Error as exc:
            log.warning("cannot delete old deliveries: %s", str(exc).strip()[:200])
        await _sleep_unless(stop, _CLEANUP_EVERY_S)


async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    # synchronous_commit off: an outcome need not wait for its WAL flush. If the database loses it in a crash,
    # the delivery is pending again and is resent with its idempotency key, which at-least-once allows anyway.
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name=APPLICATION_NAME, options="-c synchronous_commit=off"
    )


class Doorbell:
    """Wakes idle slots when deliveries are enqueued: one slot per notification, since a slot that has just
    delivered looks for more work anyway. Waking every slot for each delivery to one busy receiver would have
    them all query for a head that one of them holds."""

    def __init__(self, slots: int) -> None:
        self._rings: asyncio.Queue[None] = asyncio.Queue(maxsize=slots)

    def ring(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._rings.put_nowait(None)

    def ring_all(self) -> None:
        for _ in range(self._rings.maxsize):
            self.ring()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rings.get(), timeout_s)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
