"""enqueue: deliveries commit (or roll back) with the caller's transaction, numbered per receiver in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from alerts.model import AlertChange, State
from alerts.outbox import NOTIFY_CHANNEL, enqueue, label_set
from tests.alerts.receiver import alert, clean_outbox, enqueue_changes, fired, resolved, routes


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    yield from clean_outbox(dsn)


CONFIG = routes(
    {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/ops"},
    {"name": "pd", "type": "pagerduty", "routing_key": "k", "url": "http://127.0.0.1:9/pd"},
    routes=[
        {"matchers": ['severity="critical"'], "receivers": ["pd"], "continue": True},
        {"receivers": ["ops"]},
    ],
)


def _rows(db: psycopg.Connection) -> list[tuple[object, ...]]:
    return db.execute("select receiver, seq, kind, status, fingerprints from deliveries order by id").fetchall()


def test_deliveries_commit_and_roll_back_with_the_callers_transaction(dsn: str, db: psycopg.Connection) -> None:
    breach = alert("ColdChainBreach", "room-1")

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.transaction(force_rollback=True):
                await conn.execute("create temporary table alert_state (x int)")  # the caller's own writes
                await enqueue(conn, [fired(breach)], routes=CONFIG)
            # Without a transaction block: enqueue joins the transaction its statements open, which the caller
            # ends; it must not commit on its own.
            await enqueue(conn, [fired(breach)], routes=CONFIG)
            await conn.rollback()
            async with conn.transaction():
                await enqueue(conn, [fired(breach)], routes=CONFIG)

    asyncio.run(scenario())
    # The rolled-back enqueue left no delivery and no gap in the numbering.
    assert _rows(db) == [
        ("pd", 1, "pagerduty", "firing", [breach.fingerprint]),
        ("ops", 1, "webhook", "firing", [breach.fingerprint]),
    ]


def test_numbering_is_per_receiver_and_in_commit_order(dsn: str, db: psycopg.Connection) -> None:
    async def scenario() -> None:
        for n in range(3):
            await enqueue_changes(dsn, CONFIG, fired(alert("LowStock", f"gtin-{n}", severity="warning")))
        await enqueue_changes(dsn, CONFIG, fired(alert("ColdChainBreach", "room-1")))

    asyncio.run(scenario())
    assert [(r[0], r[1]) for r in _rows(db)] == [("ops", 1), ("ops", 2), ("ops", 3), ("pd", 1), ("ops", 4)]


def test_concurrent_enqueuers_take_turns_per_receiver(dsn: str, db: psycopg.Connection) -> None:
    """The second transaction waits for the first's lane lock, so its seq follows the first's commit."""

    async def scenario() -> None:
        async with (
            await psycopg.AsyncConnection.connect(dsn) as first,
            await psycopg.AsyncConnection.connect(dsn) as second,
        ):
            await enqueue(first, [fired(alert("LowStock", "first", severity="warning"))], routes=CONFIG)
            second_change = fired(alert("LowStock", "second", severity="warning"))
            late = asyncio.create_task(enqueue(second, [second_change], routes=CONFIG))
            await asyncio.sleep(0.3)
            assert not late.done(), "the second enqueuer should wait for the first transaction"
            await first.commit()
            await late
            await second.commit()

    asyncio.run(scenario())
    # Both alerts are in one group: the second message tells the whole group, the newcomer last.
    rows = db.execute("select seq, payload::jsonb -> 'alerts' -> -1 -> 'labels' ->> 'subject' from deliveries")
    assert sorted(rows.fetchall()) == [(1, "first"), (2, "second")]


def test_only_changes_someone_was_told_about_are_delivered(dsn: str, db: psycopg.Connection) -> None:
    pending = alert("LowStock", "gtin-1", state=State.PENDING, severity="warning")
    never_fired = AlertChange(alert("LowStock", "gtin-2", state=State.RESOLVED, severity="warning"), State.PENDING)
    repeat = AlertChange(alert("LowStock", "gtin-3", severity="warning"), State.FIRING, reason="repeat")
    asyncio.run(enqueue_changes(dsn, CONFIG, AlertChange(pending, None), never_fired, repeat))
    assert [r[4] for r in _rows(db)] == [[repeat.alert.fingerprint]]


def test_grouping_per_receiver_kind(dsn: str, db: psycopg.Connection) -> None:
    cold = [alert("ColdChainBreach", f"room-{n}") for n in range(3)]
    asyncio.run(enqueue_changes(dsn, CONFIG, *[fired(a) for a in cold], resolved(cold[0])))
    # PagerDuty takes one event per alert; the webhook one message per group. The resolve supersedes the
    # firing of the same alert within one batch.
    assert [(r[0], r[4]) for r in _rows(db)] == [
        ("pd", [cold[0].fingerprint]), ("pd", [cold[1].fingerprint]), ("pd", [cold[2].fingerprint]),
        ("ops", [a.fingerprint for a in cold]),
    ]  # fmt: skip
    group_key, payload = db.execute("select group_key, payload from deliveries where receiver = 'ops'").fetchone() or (
        None, None,
    )  # fmt: skip
    assert group_key == '{}/{}:{alertname="ColdChainBreach"}'
    assert [a["status"] for a in payload["alerts"]] == ["resolved", "firing", "firing"]
    assert payload["status"] == "firing"
    first_event = db.execute("select payload from deliveries where receiver = 'pd' order by seq limit 1").fetchone()
    assert first_event is not None
    assert first_event[0]["event_action"] == "resolve"


def test_label_set_is_prometheus_string_form() -> None:
    assert label_set({"site": "dc-1", "alertname": 'say "hi"'}) == '{alertname="say \\"hi\\"", site="dc-1"}'
    assert label_set({}) == "{}"


def test_commit_notifies_the_workers(dsn: str, db: psycopg.Connection) -> None:
    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
            await listener.execute(f"listen {NOTIFY_CHANNEL}")
            await enqueue_changes(dsn, CONFIG, fired(alert()))
            return [n.channel async for n in listener.notifies(timeout=2, stop_after=1)]

    assert asyncio.run(scenario()) == [NOTIFY_CHANNEL]


def test_without_routes_nothing_is_owed(dsn: str, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKTRACE_ALERT_ROUTES_FILE", raising=False)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            await enqueue(conn, [fired(alert())])

    asyncio.run(scenario())
    assert _rows(db) == []
