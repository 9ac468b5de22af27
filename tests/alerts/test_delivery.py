"""The delivery worker against a local receiver that goes down, refuses, stalls; workers that stop and race.

Backoff is in the worker's clock; the long outages run on a clock 1,200 times faster than the wall, so an hour
down takes three seconds here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.delivery import APPLICATION_NAME, Claimed, backoff_s, decide
from alerts.routes import DeliveryPolicy, RoutesConfig
from alerts.sinks import RetryableSinkError, SinkError
from tests.alerts.receiver import (
    Answer,
    FastClock,
    Request,
    alert,
    clean_outbox,
    enqueue_changes,
    fired,
    running_receiver,
    running_worker,
    wait_for,
)
from tests.alerts.receiver import routes as one_route


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    yield from clean_outbox(dsn)


NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
POLICY = DeliveryPolicy.model_validate({"backoff_initial": "1s", "backoff_max": "5m", "max_age": "24h"})


def _claimed(budget_attempts: int = 0, retry_since: datetime = NOW) -> Claimed:
    return Claimed(1, "ops", 1, "{}", "key", ["f"], retry_since, budget_attempts, budget_attempts, {})


def routes(*receivers: dict[str, Any], **settings: Any) -> RoutesConfig:
    """Every alert a group of its own: these tests are about lanes, one message per alert."""
    return one_route(*receivers, group_by=["..."], **settings)


def _webhook(url: str) -> dict[str, str]:
    return {"name": "ops", "type": "webhook", "url": url}


def _subjects(requests: list[Request]) -> list[str]:
    return [request.json()["alerts"][0]["labels"]["subject"] for request in requests]


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (8, 256), (9, 300), (500, 300)]:
        draws = [backoff_s(POLICY, attempt, rng) for _ in range(400)]
        assert 0 <= min(draws) < ceiling * 0.1
        assert ceiling * 0.9 < max(draws) <= ceiling


def test_decide_honours_retry_after_and_gives_up_at_max_age_or_attempts() -> None:
    rng = random.Random(1)
    later = decide(_claimed(), RetryableSinkError("throttled", status_code=429, retry_after_s=120), NOW, POLICY, rng)
    assert later.state == "pending"
    assert later.retry_at is not None
    assert later.retry_at >= NOW + timedelta(seconds=120)
    refused = decide(_claimed(), SinkError("HTTP 400", status_code=400), NOW, POLICY, rng)
    assert (refused.state, refused.status_code) == ("failed", 400)
    old = decide(_claimed(retry_since=NOW - timedelta(hours=25)), RetryableSinkError("HTTP 503"), NOW, POLICY, rng)
    assert old.state == "failed"
    assert old.error is not None
    assert old.error.startswith("gave up after 1 attempt(s)")
    almost_a_day = _claimed(9, NOW - timedelta(hours=24) + timedelta(seconds=1))
    near = decide(almost_a_day, RetryableSinkError("x"), NOW, POLICY, rng)
    assert near.retry_at == NOW + timedelta(seconds=1)  # one last attempt at the deadline
    capped = POLICY.model_copy(update={"max_attempts": 3})
    assert decide(_claimed(1), RetryableSinkError("x"), NOW, capped, rng).state == "pending"
    assert decide(_claimed(2), RetryableSinkError("x"), NOW, capped, rng).state == "failed"


def test_receiver_down_for_an_hour_then_gets_everything_in_order(dsn: str, db: psycopg.Connection) -> None:
    clock = FastClock(1200)
    with running_receiver() as receiver:
        receiver.set_default(Answer(503, b"maintenance"))
        config = routes(_webhook(receiver.url))

        async def scenario() -> None:
            async with running_worker(dsn, config, clock=clock):
                for n in range(6):
                    await enqueue_changes(dsn, config, fired(alert(subject=f"room-{n}")))
                await asyncio.sleep(3600 / 1200)  # an hour on the worker's clock
                receiver.set_default(Answer(200, b"ok"))
                await wait_for(receiver, 6, timeout_s=10)

        asyncio.run(scenario())
    delivered = receiver.succeeded()
    assert _subjects(delivered) == [f"room-{n}" for n in range(6)]
    assert [request.headers["x-stocktrace-sequence"] for request in delivered] == ["1", "2", "3", "4", "5", "6"]
    # While the first delivery was refused, nothing behind it was tried: order is kept by holding the lane.
    failed_subjects = {s for s in _subjects([r for r in receiver.requests if r.status == 503])}
    assert failed_subjects == {"room-0"}
    first_attempts = db.execute(
        "select count(*), count(*) filter (where outcome = 'retry' and status_code = 503 and retry_at is not null)"
        " from delivery_attempts where delivery_id = (select id from deliveries where seq = 1)"
    ).fetchone()
    assert first_attempts is not None
    tries, retries = first_attempts
    assert tries >= 10
    assert retries == tries - 1
    assert db.execute("select state, count(*) from deliveries group by state").fetchall() == [("sent", 6)]


def test_refused_delivery_fails_without_blocking_its_lane(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.script(Answer(400, b"unknown field"))
        config = routes(_webhook(receiver.url))

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(alert(subject="first")))
                await enqueue_changes(dsn, config, fired(alert(subject="second")))
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    assert _subjects(receiver.succeeded()) == ["second"]
    rows = db.execute("select seq, state, last_status_code, last_error from deliveries order by seq").fetchall()
    assert rows == [(1, "failed", 400, "HTTP 400: unknown field"), (2, "sent", 200, None)]


def test_timeout_is_retried_with_the_same_idempotency_key(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.script(Answer(200, b"late", delay_s=0.6, late=True))
        config = routes({**_webhook(receiver.url), "timeout": "200ms"}, delivery={"backoff_initial": "10ms"})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(alert()))
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    late, delivered = receiver.requests
    # The receiver got it twice (it answered after the sender had given up): at least once, with one key.
    assert late.body == delivered.body
    assert late.headers["idempotency-key"] == delivered.headers["idempotency-key"]
    attempts = db.execute("select attempt, status_code, outcome, error from delivery_attempts order by attempt")
    assert attempts.fetchall() == [(1, None, "retry", "no response within 0.2 s"), (2, 200, "sent", None)]


def test_worker_restarted_midway_loses_nothing_and_repeats_nothing(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.set_default(Answer(200, b"ok", delay_s=0.03))
        config = routes(_webhook(receiver.url))
        changes = [fired(alert(subject=f"room-{n:02d}")) for n in range(30)]

        async def scenario() -> None:
            for change in changes:
                await enqueue_changes(dsn, config, change)
            async with running_worker(dsn, config):
                await wait_for(receiver, 5)
            stopped_at = len(receiver.requests)
            assert stopped_at < 30, "the first worker should have been stopped part-way"
            async with running_worker(dsn, config):
                await wait_for(receiver, 30)

        asyncio.run(scenario())
    assert _subjects(receiver.requests) == [f"room-{n:02d}" for n in range(30)]


def test_crash_between_send_and_record_resends_with_the_same_key(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        # The first answer is slow enough for the worker's database connection to be killed while it waits.
        receiver.script(Answer(200, b"ok", delay_s=0.5))
        config = routes(_webhook(receiver.url))

        async def scenario() -> None:
            async with running_worker(dsn, config, concurrency=1):
                await enqueue_changes(dsn, config, fired(alert()))
                await asyncio.to_thread(receiver.wait_for, 1, 5, succeeded=False)
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
                    await admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity"
                        " where application_name = %s and state = 'idle in transaction'",
                        (APPLICATION_NAME,),
                    )
                await wait_for(receiver, 2)  # the resend, answered at once

        asyncio.run(scenario())
    first, again = receiver.requests
    assert first.headers["idempotency-key"] == again.headers["idempotency-key"]
    assert db.execute("select state, attempts from deliveries").fetchall() == [("sent", 1)]


def test_two_workers_deliver_each_once_and_in_order(dsn: str, db: psycopg.Connection) -> None:
    per_receiver = 25
    with running_receiver() as receiver:
        config = routes(
            *[_webhook(f"{receiver.url}/{name}") | {"name": name} for name in ("a", "b", "c")],
            delivery={"backoff_initial": "50ms"},
        )
        # A few 503s along the way, so that lanes stall and workers interleave.
        receiver.script(*[Answer(503, b"busy")] * 4)

        async def scenario() -> None:
            async with (
                running_worker(dsn, config, concurrency=3, seed=1),
                running_worker(dsn, config, concurrency=3, seed=2),
            ):
                for n in range(per_receiver):
                    await enqueue_changes(dsn, config, fired(alert(subject=f"s{n:02d}")))
                await wait_for(receiver, 3 * per_receiver, timeout_s=20)
                await asyncio.sleep(0.3)  # anything extra would show up now

        asyncio.run(scenario())
    delivered = receiver.succeeded()
    assert len(delivered) == 3 * per_receiver
    for name in ("a", "b", "c"):
        lane = [request for request in delivered if request.path == f"/{name}"]
        assert _subjects(lane) == [f"s{n:02d}" for n in range(per_receiver)]
        assert [int(request.headers["x-stocktrace-sequence"]) for request in lane] == list(range(1, per_receiver + 1))


def test_unconfigured_receiver_waits_and_then_fails(dsn: str, db: psycopg.Connection) -> None:
    clock = FastClock(3600)
    with running_receiver() as receiver:
        enqueued_with = routes(_webhook(receiver.url))
        renamed = routes(_webhook(receiver.url) | {"name": "ops-2"}, delivery={"max_age": "1h"})

        async def scenario() -> None:
            await enqueue_changes(dsn, enqueued_with, fired(alert()))
            async with running_worker(dsn, renamed, clock=clock, concurrency=1):
                for _ in range(100):
                    row = db.execute("select state from deliveries").fetchone()
                    if row == ("failed",):
                        break
                    await asyncio.sleep(0.05)

        asyncio.run(scenario())
    state, error = db.execute("select state, last_error from deliveries").fetchone() or (None, None)
    assert state == "failed"
    assert "'ops' is not in the routes configuration" in error
    assert receiver.requests == []
