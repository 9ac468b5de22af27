"""The evaluator loop: one leader among processes, failover, and a failing rule that spoils nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from alerts import evaluator
from alerts.evaluator import Evaluator, TickReport
from alerts.model import AlertChange, State
from alerts.rules import Evaluation, Tick
from alerts.rules_config import parse_rules
from alerts.rules_devices import DeviceOfflineRule
from tests.alerts.test_rules import MONDAY, Timeline, minutes, opened_timeline


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


class Recorder:
    def __init__(self) -> None:
        self.told: list[AlertChange] = []
        self.ticks: list[TickReport] = []
        self.ticked = asyncio.Event()
        self.changed = asyncio.Event()

    async def enqueue(self, conn: psycopg.AsyncConnection[Any], changes: Sequence[AlertChange]) -> None:
        self.told += changes
        self.changed.set()

    def on_tick(self, report: TickReport) -> None:
        self.ticks.append(report)
        self.ticked.set()


async def _wait_for(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout_s)


def test_exactly_one_of_two_evaluators_evaluates_and_the_other_takes_over(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    timeline.seen("reader-1", MONDAY - minutes(5))  # offline
    config = parse_rules("")
    first, second = Recorder(), Recorder()

    def make(recorder: Recorder) -> Evaluator:
        return Evaluator(config, rules=[DeviceOfflineRule()], enqueue=recorder.enqueue, clock=timeline.clock)

    async def scenario() -> None:
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(
                evaluator.run(timeline.dsn, stop_first, config, 0.05, evaluator=make(first), on_tick=first.on_tick)
            )
        ]
        await _wait_for(first.ticked)  # the first one leads
        tasks.append(
            asyncio.create_task(
                evaluator.run(timeline.dsn, stop_second, config, 0.05, evaluator=make(second), on_tick=second.on_tick)
            )
        )
        await asyncio.sleep(0.5)
        assert len(first.ticks) > 3
        assert second.ticks == []  # waits for the lock
        stop_first.set()
        await tasks[0]
        await _wait_for(second.ticked)  # takes over
        timeline.seen("reader-1", MONDAY)  # the reader is back
        await _wait_for(second.changed)
        stop_second.set()
        await tasks[1]

    asyncio.run(scenario())
    assert [(c.alert.name, c.alert.state) for c in first.told] == [("DeviceOffline", State.FIRING)]
    assert [(c.alert.name, c.alert.state) for c in second.told] == [("DeviceOffline", State.RESOLVED)]
    assert timeline.db.execute("select count(*) from alerts").fetchone() == (1,)


class BrokenRule:
    name = "shrink"
    alertnames: tuple[str, ...] = ("ItemLeftWithoutShipment",)

    async def evaluate(self, conn: psycopg.AsyncConnection[Any], tick: Tick) -> Evaluation:
        await conn.execute("insert into alert_rule_runs (rule, evaluated_at, duration_ms, subjects, findings)"
                           " values ('written-by-a-broken-rule', now(), 0, 0, 0)")  # fmt: skip
        raise ValueError("a bad row")


def test_a_failing_rule_is_skipped_and_its_alerts_stay_as_they_were(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    timeline.seen("reader-1", MONDAY - minutes(5))
    labels = {"alertname": "ItemLeftWithoutShipment", "severity": "warning", "subject": "E1"}
    timeline.db.execute(
        "insert into alerts (fingerprint, alertname, subject, severity, labels, annotations, group_key, state,"
        " starts_at, fires_at, evaluated_at, notified_at)"
        " values ('f1', 'ItemLeftWithoutShipment', 'E1', 'warning', %s, '{}', '{}', 'firing', %s, %s, %s, %s)",
        (json.dumps(labels), MONDAY, MONDAY, MONDAY, MONDAY),
    )
    recorder = Recorder()
    evaluator_ = Evaluator(
        parse_rules(""), rules=[BrokenRule(), DeviceOfflineRule()], enqueue=recorder.enqueue, clock=timeline.clock
    )

    async def tick() -> TickReport:
        async with await psycopg.AsyncConnection.connect(timeline.dsn, autocommit=True) as conn:
            return await evaluator_.tick(conn)

    report = asyncio.run(tick())
    assert [(r.rule, r.error) for r in report.runs] == [("shrink", "ValueError: a bad row"), ("device_offline", None)]
    assert [c.alert.name for c in recorder.told] == ["DeviceOffline"]
    assert timeline.db.execute("select state from alerts where fingerprint = 'f1'").fetchone() == ("firing",)
    runs = timeline.db.execute("select rule from alert_rule_runs order by rule").fetchall()
    assert runs == [("device_offline",)]  # the broken rule's own writes were rolled back


def test_a_rule_with_an_interval_runs_only_when_due(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    timeline.seen("reader-1", MONDAY)
    timeline.evaluator = Evaluator(
        parse_rules("intervals: {device_offline: 10m}"), rules=[DeviceOfflineRule()], enqueue=timeline.enqueue,
        clock=timeline.clock,
    )  # fmt: skip
    timeline.at(MONDAY)
    timeline.run(MONDAY + minutes(12), minutes(1))
    ran = [r.now - MONDAY for r in timeline.reports if r.runs]
    assert ran == [minutes(1), minutes(11)]
    assert [(t.at - MONDAY, t.state) for t in timeline.changes("DeviceOffline")] == [(minutes(11), State.FIRING)]


def test_disabling_a_rule_resolves_its_alerts(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    timeline.seen("reader-1", MONDAY - minutes(5))
    timeline.evaluator = timeline.make_evaluator("", only=("device_offline",))
    timeline.tick(MONDAY)
    timeline.evaluator = timeline.make_evaluator("rules: {device_offline: {enabled: false}}", only=("device_offline",))
    timeline.tick(MONDAY + minutes(1))
    assert [(t.at - MONDAY, t.state) for t in timeline.changes("DeviceOffline")] == [
        (minutes(0), State.FIRING),
        (minutes(1), State.RESOLVED),
    ]
