"""The lifecycle as timelines: inhibition by offline devices, silences, acknowledgement and repeats, restarts,
the event log and the outbox."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest

from alerts import outbox
from alerts.model import State
from alerts.routes import RoutesConfig
from tests.alerts.test_rules import COLD_CHAIN, COLD_ROOM_RULES, MONDAY, Timeline, configure, minutes, opened_timeline


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


def cold_room(line: Timeline, *sensors: str) -> None:
    line.location("cold-room-2", "S1", "cold_room", band=(2.0, 8.0))
    for sensor in sensors:
        line.device(sensor, "sensor", "cold-room-2")


def silence(line: Timeline, matchers: str, starts_at: datetime, ends_at: datetime) -> int:
    row = line.db.execute(
        "insert into silences (matchers, starts_at, ends_at, created_by, comment)"
        " values (%s::jsonb, %s, %s, 'test', 'maintenance') returning id",
        (matchers, starts_at, ends_at),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_door_reader_offline_holds_back_the_shrink_it_causes_and_raises_one_device_alert(timeline: Timeline) -> None:
    configure(timeline, "rules: {shrink: {pending_for: 0s}}", "device_offline", "shrink")
    timeline.location("shelf-1", "S1", "shelf")
    timeline.location("door-1", "S1", "dock_door")
    timeline.device("reader-door", "rfid_reader", "door-1")  # 60 s inactivity timeout
    start = MONDAY
    timeline.seen("reader-door", start - minutes(20))  # silent since: offline
    gone = timeline.items(3, "shelf-1", prefix="GONE", since=start - minutes(5), status="departed")
    with timeline.db.cursor() as cur:
        cur.executemany(
            "insert into location_events (at, epc, kind, from_location) values (%s, %s, 'departed', 'shelf-1')",
            [(start - minutes(5), epc) for epc in gone],
        )
    timeline.tick(start)
    assert [(t.name, t.state) for t in timeline.changes()] == [("DeviceOffline", State.FIRING)]
    device_alert = timeline.alert("DeviceOffline")
    held = timeline.db.execute(
        "select state, inhibited_by from alerts where alertname = 'ItemLeftWithoutShipment'"
    ).fetchall()
    assert held == [("firing", [device_alert[7]])] * 3


def test_one_offline_sensor_of_two_does_not_hold_back_the_rooms_excursion(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1", "probe-2")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20)
    timeline.readings("probe-2", start - minutes(30), [5.0])  # silent for 15 minutes by +0: offline
    timeline.tick(start + minutes(16))
    assert {(t.name, t.state) for t in timeline.changes()} == {
        ("DeviceOffline", State.FIRING),
        ("TemperatureExcursion", State.FIRING),
    }
    assert timeline.alert("TemperatureExcursion")[4] == []


def test_an_excursion_whose_only_sensor_goes_offline_is_held_back_and_told_again_when_it_returns(
    timeline: Timeline,
) -> None:
    configure(timeline, COLD_ROOM_RULES + "defaults: {repeat_interval: 20m}", *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20)
    timeline.at(start + minutes(14))
    timeline.run(start + minutes(20), minutes(1))
    # A last will at +21: the probe is offline, the excursion still firing (nothing says it ended), held back.
    timeline.db.execute(
        "insert into device_events (observed_at, device_id, online, reason, received_at)"
        " values (%s, 'probe-1', false, 'last will', %s)",
        (start + minutes(21), start + minutes(21)),
    )
    timeline.run(start + minutes(60), minutes(5))
    state, _, _, _, inhibited_by, _, _, _ = timeline.alert("TemperatureExcursion")
    assert state == "firing"
    assert inhibited_by == [timeline.alert("DeviceOffline")[7]]
    told = [(t.at, t.name, t.state) for t in timeline.changes()]
    assert told == [
        (start + minutes(15), "TemperatureExcursion", State.FIRING),
        (start + minutes(25), "DeviceOffline", State.FIRING),
        (start + minutes(45), "DeviceOffline", State.FIRING),  # its repeat; the held excursion is not repeated
    ]


def test_a_silenced_alert_is_told_when_its_silence_ends_if_it_still_fires(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    silence_id = silence(
        timeline, '[{"name": "location", "op": "=~", "value": "cold-room-.*"}]', start, start + minutes(30)
    )
    timeline.readings("probe-1", start, [9.0] * 40)
    timeline.at(start)
    timeline.run(start + minutes(35), minutes(1))
    told = [(t.at, t.state, t.change.reason) for t in timeline.changes("TemperatureExcursion")]
    assert told == [(start + minutes(30), State.FIRING, "no longer silenced or inhibited")]
    assert timeline.alert("TemperatureExcursion")[5] == []
    rows = timeline.db.execute("select evaluated_at from alerts where %s = any(silenced_by)", (silence_id,)).fetchall()
    assert rows == []  # it was marked while silenced, and unmarked when the silence ended


def test_a_silence_with_a_non_matching_matcher_lets_alerts_through(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    silence(timeline, '[{"name": "location", "op": "!=", "value": "cold-room-2"}]', start, start + minutes(30))
    timeline.readings("probe-1", start, [9.0] * 20)
    timeline.tick(start + minutes(16))
    assert [t.state for t in timeline.changes("TemperatureExcursion")] == [State.FIRING]


def test_acknowledged_alerts_are_not_repeated_until_they_fire_again(timeline: Timeline) -> None:
    configure(timeline, "defaults: {repeat_interval: 30m}", "device_offline")
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    start = MONDAY
    timeline.seen("reader-1", start - minutes(5))
    timeline.at(start)
    timeline.run(start + minutes(65), minutes(5))  # told at 0, repeated at 30 and 60
    fingerprint = timeline.alert("DeviceOffline")[7]
    timeline.db.execute(
        "update alerts set acknowledged_at = %s, acknowledged_by = 'j.doe', ack_comment = 'on it'"
        " where fingerprint = %s",
        (start + minutes(66), fingerprint),
    )
    timeline.run(start + minutes(150), minutes(5))  # no repeat while acknowledged
    timeline.seen("reader-1", start + minutes(155))
    timeline.tick(start + minutes(155))  # back: resolved
    timeline.run(start + minutes(200), minutes(5))  # silent again from 156: a new episode at 160
    told = [(t.at - start, t.state, t.change.previous) for t in timeline.changes("DeviceOffline")]
    assert told == [
        (minutes(5), State.FIRING, None),
        (minutes(35), State.FIRING, State.FIRING),
        (minutes(65), State.FIRING, State.FIRING),
        (minutes(155), State.RESOLVED, State.FIRING),
        (minutes(160), State.FIRING, State.RESOLVED),
        (minutes(190), State.FIRING, State.FIRING),  # the new episode is not acknowledged
    ]
    acknowledged = timeline.db.execute(
        "select acknowledged_at, acknowledged_by from alerts where fingerprint = %s", (fingerprint,)
    ).fetchone()
    assert acknowledged == (None, None)


def test_state_survives_a_restart(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 30)
    timeline.tick(start + minutes(10))  # pending: the delay runs to +15
    assert timeline.alert("TemperatureExcursion")[0] == "pending"
    # The process stops; another one starts at +16 with a new evaluator and a new connection.
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    timeline.tick(start + minutes(16))
    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state, t.change.previous) for t in told] == [(start + minutes(16), State.FIRING, State.PENDING)]
    assert told[0].change.alert.starts_at == start
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    timeline.tick(start + minutes(17))
    assert len(timeline.changes("TemperatureExcursion")) == 1  # told once, not again after the restart


def test_firing_and_resolving_are_in_the_event_log(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20 + [5.0] * 12)
    before = timeline.db.execute("select coalesce(max(seq), 0) from event_log").fetchone()
    assert before is not None  # the log is append-only: earlier tests' entries stay
    for at in (5, 16, 31):
        timeline.tick(start + minutes(at))
    fingerprint = timeline.alert("TemperatureExcursion")[7]
    entries = timeline.db.execute(
        "select event_time, payload->>'state', payload->>'previous' from event_log"
        " where kind = 'alert' and subject = %s and seq > %s order by seq",
        (fingerprint, before[0]),
    ).fetchall()
    assert entries == [(start, "firing", "pending"), (start + minutes(20), "resolved", "firing")]


def test_changes_become_deliveries_in_the_same_transaction(timeline: Timeline) -> None:
    routes = RoutesConfig.model_validate(
        {
            "receivers": [{"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/hook"}],
            "default_receivers": ["ops"],
        }
    )
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    timeline.evaluator.enqueue = functools.partial(outbox.enqueue, routes=routes)
    cold_room(timeline, "probe-1")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20)
    timeline.tick(start + minutes(16))
    fingerprint = timeline.alert("TemperatureExcursion")[7]
    deliveries = timeline.db.execute("select receiver, status, fingerprints from deliveries").fetchall()
    assert deliveries == [("ops", "firing", [fingerprint])]


def test_a_failed_evaluation_leaves_neither_alerts_nor_deliveries(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, "probe-1")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20)

    async def broken(conn: psycopg.AsyncConnection[tuple[object, ...]], changes: object) -> None:
        raise RuntimeError("outbox unavailable")

    timeline.evaluator.enqueue = broken
    with pytest.raises(RuntimeError):
        timeline.tick(start + minutes(16))
    assert timeline.db.execute("select count(*) from alerts").fetchone() == (0,)
    timeline.evaluator.enqueue = timeline.enqueue
    timeline.tick(start + minutes(17))
    assert [(t.at, t.state) for t in timeline.changes("TemperatureExcursion")] == [(start + minutes(17), State.FIRING)]
