"""Alert grouping as timelines: changes enqueued at virtual times, a worker on that clock, a local receiver.

Like Alertmanager's acceptance tests: alerts that fire within group_wait arrive as one message; a change within
group_interval waits for it; a restart in the middle of a wait loses nothing; two workers make each message
once. Whether something is due is asked of the outbox at a given time (``flush_due``), so that "not yet" is
checked without waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.model import Alert, AlertChange, State
from alerts.outbox import enqueue, flush_due
from alerts.routes import RoutesConfig
from tests.alerts.receiver import (
    Request,
    alert,
    clean_outbox,
    fired,
    resolved,
    routes,
    running_receiver,
    running_worker,
    wait_for,
)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    yield from clean_outbox(dsn)


class Clock:
    """Virtual time for the worker and the enqueues, an hour ahead of the wall: a delivery is due from the
    database's now() when it is inserted, which the worker's clock must not lag behind."""

    def __init__(self) -> None:
        self.start = self.at = datetime.now(UTC) + timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.at

    def set(self, seconds: float) -> None:
        self.at = self.start + timedelta(seconds=seconds)


def _webhook(url: str, **grouping: Any) -> RoutesConfig:
    return routes({"name": "ops", "type": "webhook", "url": f"{url}/hook"}, **grouping)


async def _enqueue(dsn: str, config: RoutesConfig, clock: Clock, *changes: AlertChange) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await enqueue(conn, changes, routes=config, now=clock())


async def _due(dsn: str, config: RoutesConfig, at: datetime) -> int | None:
    """What flushing at ``at`` makes (None: no group is due then). Rolled back: it only asks."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("begin")
        try:
            return await flush_due(conn, config, at)
        finally:
            await conn.execute("rollback")


def _subjects(request: Request) -> list[tuple[str, str]]:
    return [(a["labels"]["subject"], a["status"]) for a in request.json()["alerts"]]


def test_alerts_firing_within_group_wait_arrive_as_one_message(dsn: str, db: psycopg.Connection) -> None:
    clock = Clock()
    cold = [alert("ColdChainBreach", f"room-{n}", site="dc-1") for n in (1, 2)]
    with running_receiver() as receiver:
        config = _webhook(receiver.url, group_wait="30s", group_interval="5m")

        async def scenario() -> None:
            clock.set(0)
            await _enqueue(dsn, config, clock, fired(cold[0]))
            clock.set(10)
            await _enqueue(dsn, config, clock, fired(cold[1]))
            assert await _due(dsn, config, clock.start + timedelta(seconds=29.9)) is None
            assert db.execute("select count(*) from deliveries").fetchone() == (0,)
            clock.set(30)
            async with running_worker(dsn, config, clock=clock):
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    (request,) = receiver.requests
    body = request.json()
    assert _subjects(request) == [("room-1", "firing"), ("room-2", "firing")]
    assert body["groupKey"] == '{}/{}:{alertname="ColdChainBreach"}'
    assert body["groupLabels"] == {"alertname": "ColdChainBreach"}
    assert body["commonLabels"] == {"alertname": "ColdChainBreach", "severity": "critical", "site": "dc-1"}
    assert body["truncatedAlerts"] == 0


def test_a_change_within_group_interval_waits_for_it(dsn: str, db: psycopg.Connection) -> None:
    clock = Clock()
    first, second = (alert("ColdChainBreach", f"room-{n}") for n in (1, 2))
    with running_receiver() as receiver:
        config = _webhook(receiver.url, group_wait="0s", group_interval="5m")

        async def scenario() -> None:
            clock.set(0)
            async with running_worker(dsn, config, clock=clock):
                await _enqueue(dsn, config, clock, fired(first))  # a new group, no wait: out at once
                await wait_for(receiver, 1)
            clock.set(60)
            await _enqueue(dsn, config, clock, fired(second))
            clock.set(120)
            await _enqueue(dsn, config, clock, resolved(first, ends_at=clock()))
            # Five minutes after the first message, not before, and with both changes in it.
            assert await _due(dsn, config, clock.start + timedelta(seconds=299)) is None
            clock.set(300)
            async with running_worker(dsn, config, clock=clock):
                await wait_for(receiver, 2)

        asyncio.run(scenario())
    opening, update = receiver.requests
    assert _subjects(opening) == [("room-1", "firing")]
    assert _subjects(update) == [("room-1", "resolved"), ("room-2", "firing")]
    assert update.json()["status"] == "firing"
    # The resolved alert has been told and left the group; the firing one stays for the next message.
    members = db.execute("select fingerprint, firing, changed, told from alert_group_alerts").fetchall()
    assert members == [(second.fingerprint, True, False, True)]


def test_worker_restarted_during_group_wait_loses_nothing(dsn: str, db: psycopg.Connection) -> None:
    clock = Clock()
    with running_receiver() as receiver:
        config = _webhook(receiver.url, group_wait="30s")

        async def scenario() -> None:
            clock.set(0)
            await _enqueue(dsn, config, clock, fired(alert(subject="room-1")))
            clock.set(5)
            async with running_worker(dsn, config, clock=clock):
                await _enqueue(dsn, config, clock, fired(alert(subject="room-2")))
                await asyncio.sleep(0.3)  # the worker runs mid-wait, then stops
            assert receiver.requests == []
            (flush_at,) = db.execute("select flush_at from alert_groups").fetchone() or (None,)
            assert flush_at == clock.start + timedelta(seconds=30)
            clock.set(31)
            async with running_worker(dsn, config, clock=clock):
                await wait_for(receiver, 1)
                await asyncio.sleep(0.2)  # a second message, if one were made, would show up now

        asyncio.run(scenario())
    (request,) = receiver.requests
    assert _subjects(request) == [("room-1", "firing"), ("room-2", "firing")]


def test_two_workers_make_each_group_message_once(dsn: str, db: psycopg.Connection) -> None:
    clock = Clock()
    sites = [f"dc-{n:02d}" for n in range(12)]
    with running_receiver() as receiver:
        config = _webhook(receiver.url, group_by=["site"], group_wait="10s")

        async def scenario() -> None:
            clock.set(0)
            for n in range(3):
                await _enqueue(dsn, config, clock, *[fired(alert(subject=f"room-{n}", site=s)) for s in sites])
            clock.set(10)
            async with (
                running_worker(dsn, config, clock=clock, seed=1),
                running_worker(dsn, config, clock=clock, seed=2),
            ):
                await wait_for(receiver, len(sites))
                await asyncio.sleep(0.3)  # anything extra would show up now

        asyncio.run(scenario())
    assert sorted(r.json()["groupLabels"]["site"] for r in receiver.requests) == sites
    assert all(len(r.json()["alerts"]) == 3 for r in receiver.requests)
    assert sorted(int(r.headers["x-stocktrace-sequence"]) for r in receiver.requests) == list(range(1, 13))


def test_pagerduty_keeps_one_event_per_alert_and_drops_what_resolved_unseen(dsn: str, db: psycopg.Connection) -> None:
    clock = Clock()
    breach, blip, other = (alert("ColdChainBreach", f"room-{n}") for n in (1, 2, 3))
    with running_receiver() as receiver:
        config = routes(
            {"name": "pd", "type": "pagerduty", "routing_key": "k", "url": f"{receiver.url}/pd"},
            group_wait="30s",
        )

        async def scenario() -> None:
            clock.set(0)
            await _enqueue(dsn, config, clock, fired(breach), fired(blip))
            clock.set(20)
            # The blip fires and ends before the group is first told: PagerDuty never hears of it.
            await _enqueue(dsn, config, clock, resolved(blip, ends_at=clock()), fired(other))
            clock.set(30)
            async with running_worker(dsn, config, clock=clock):
                await wait_for(receiver, 2)
                clock.set(40)
                await _enqueue(dsn, config, clock, resolved(breach, ends_at=clock()))
                await wait_for(receiver, 3)

        asyncio.run(scenario())
    events = [(r.json()["event_action"], r.json()["dedup_key"]) for r in receiver.requests]
    assert events == [
        ("trigger", breach.fingerprint), ("trigger", other.fingerprint), ("resolve", breach.fingerprint),
    ]  # fmt: skip


def test_an_alert_resolved_before_anyone_was_told_leaves_no_message_and_no_group(
    dsn: str, db: psycopg.Connection
) -> None:
    clock = Clock()
    blip = alert(subject="room-9")
    config = _webhook("http://127.0.0.1:9", group_wait="30s")

    async def scenario() -> int | None:
        clock.set(0)
        await _enqueue(dsn, config, clock, fired(blip))
        clock.set(10)
        await _enqueue(dsn, config, clock, resolved(blip, ends_at=clock()))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await flush_due(conn, config, clock.start + timedelta(seconds=30))

    assert asyncio.run(scenario()) == 0
    assert db.execute("select count(*) from deliveries").fetchone() == (0,)
    assert db.execute("select count(*) from alert_groups").fetchone() == (0,)


def _store(db: psycopg.Connection, item: Alert, *, silenced: bool = False, acknowledged: bool = False) -> None:
    """The alerts row of an alert, as the evaluator keeps it (flushes read silences and acknowledgements)."""
    db.execute(
        """
        insert into alerts (fingerprint, alertname, subject, severity, labels, annotations, group_key, state,
                            starts_at, fires_at, silenced_by, acknowledged_at, acknowledged_by, evaluated_at)
        values (%s, %s, %s, 'critical', '{}', '{}', '{}', 'firing', %s, %s, %s, %s, %s, now())
        """,
        (
            item.fingerprint, item.name, item.labels["subject"], item.starts_at, item.starts_at,
            [1] if silenced else [], datetime.now(UTC) if acknowledged else None, "alice" if acknowledged else None,
        ),
    )  # fmt: skip


def test_route_repeat_interval_repeats_the_group_but_not_acknowledged_or_silenced_alerts(
    dsn: str, db: psycopg.Connection
) -> None:
    clock = Clock()
    loud, acked, hushed = (alert("ColdChainBreach", f"room-{n}") for n in (1, 2, 3))
    with running_receiver() as receiver:
        config = routes(
            {"name": "ops", "type": "webhook", "url": f"{receiver.url}/hook"},
            routes=[{"receivers": ["ops"], "repeat_interval": "1h"}],
        )

        async def scenario() -> None:
            clock.set(0)
            for item in (loud, acked, hushed):
                _store(db, item)
            async with running_worker(dsn, config, clock=clock):
                await _enqueue(dsn, config, clock, fired(loud), fired(acked), fired(hushed))
                await wait_for(receiver, 1)
            db.execute("update alerts set acknowledged_at = now(), acknowledged_by = 'alice' where fingerprint = %s",
                       (acked.fingerprint,))  # fmt: skip
            db.execute("update alerts set silenced_by = '{1}' where fingerprint = %s", (hushed.fingerprint,))
            # The rules' own repeat of one alert is not a change for a route that repeats on its own.
            clock.set(600)
            await _enqueue(dsn, config, clock, AlertChange(loud, State.FIRING, "repeat: still firing"))
            assert await _due(dsn, config, clock.start + timedelta(seconds=3599)) is None
            clock.set(3600)
            async with running_worker(dsn, config, clock=clock):
                await wait_for(receiver, 2)

        asyncio.run(scenario())
    first, repeat = receiver.requests
    assert _subjects(first) == [("room-1", "firing"), ("room-2", "firing"), ("room-3", "firing")]
    # The repeat tells the group as it stands: the silenced alert is left out, the acknowledged one is still
    # part of the group (it is not what made the repeat).
    assert _subjects(repeat) == [("room-1", "firing"), ("room-2", "firing")]


def test_defaults_send_at_once_with_the_whole_group(dsn: str, db: psycopg.Connection) -> None:
    """No group_wait nor group_interval: every evaluation that changes a group tells it in the same
    transaction, as before groups waited."""
    first, second = (alert("ColdChainBreach", f"room-{n}") for n in (1, 2))
    config = _webhook("http://127.0.0.1:9")
    clock = Clock()

    async def scenario() -> None:
        clock.set(0)
        await _enqueue(dsn, config, clock, fired(first))
        clock.set(1)
        await _enqueue(dsn, config, clock, fired(second))
        clock.set(2)
        await _enqueue(dsn, config, clock, resolved(replace(first, state=State.FIRING), ends_at=clock()))

    asyncio.run(scenario())
    rows = db.execute(
        "select seq, status, array(select a ->> 'status' from json_array_elements(payload -> 'alerts') a)"
        " from deliveries order by seq"
    ).fetchall()
    assert rows == [
        (1, "firing", ["firing"]),
        (2, "firing", ["firing", "firing"]),
        (3, "firing", ["resolved", "firing"]),
    ]
    assert db.execute("select count(*) from alert_groups where flush_at is not null").fetchone() == (0,)
