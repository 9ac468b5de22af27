"""The evaluator on the device clock: a backlog replayed in seconds is judged by the time its data describes.

The data goes in as ingest writes it: device times of two hours ago, all received now (the wall clock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts.clock import DeviceClock
from alerts.evaluator import Evaluator, TickReport, all_rules
from alerts.model import State
from alerts.rules_config import parse_rules
from tests.alerts.test_rules import COLD_CHAIN, COLD_ROOM_RULES, Timeline, opened_timeline

# Two hours ago, to the minute: what a replay of the morning's backlog looks like at noon.
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


class Replay:
    """A timeline whose data arrives now, stamped with device times, and an evaluator on the device clock."""

    def __init__(self, line: Timeline, rules: str = "", only: tuple[str, ...] = ()) -> None:
        self.line = line
        self.clock = DeviceClock()
        chosen = [rule for rule in all_rules() if not only or rule.name in only]
        self.evaluator = Evaluator(parse_rules(rules), rules=chosen, clock=self.clock, enqueue=line.enqueue)
        self.reports: list[TickReport] = []

    def temperatures(self, device_id: str, start: datetime, values: list[float]) -> None:
        """One temperature a minute from start, received now; ingest counts the device as seen now."""
        rows = [(start + minutes(i), device_id, "temperature_c", v) for i, v in enumerate(values)]
        with self.line.db.cursor() as cur:
            cur.executemany(
                "insert into telemetry (observed_at, device_id, quantity, value, received_at)"
                " values (%s, %s, %s, %s, now())",
                rows,
            )
        self._arrived(device_id)

    def reads(self, device_id: str, start: datetime, count: int, antenna: int = 1) -> None:
        """One tag read a minute from start, received now."""
        at = [start + minutes(i) for i in range(count)]
        with self.line.db.cursor() as cur:
            cur.executemany(
                "insert into rfid_reads (read_at, device_id, antenna, epc, received_at)"
                " values (%s, %s, %s, 'E1', now())",
                [(t, device_id, antenna) for t in at],
            )
        self.line.db.execute(
            "insert into antenna_activity (device_id, antenna, last_read_at, reads) values (%s, %s, %s, %s)"
            " on conflict (device_id, antenna) do update set"
            " last_read_at = greatest(antenna_activity.last_read_at, excluded.last_read_at),"
            " reads = antenna_activity.reads + excluded.reads",
            (device_id, antenna, at[-1], count),
        )
        self._arrived(device_id)

    def will(self, device_id: str) -> None:
        """The broker's last will: stamped with the moment it arrived, as the decoders stamp it."""
        received = datetime.now(UTC)
        self.line.db.execute(
            "insert into device_events (observed_at, device_id, online, reason, received_at)"
            " values (%s, %s, false, 'last-will', %s)",
            (received, device_id, received),
        )
        self._arrived(device_id, received)

    def _arrived(self, device_id: str, received: datetime | None = None) -> None:
        received = received or datetime.now(UTC)
        self.line.db.execute(
            "insert into device_activity (device_id, first_seen_at, last_seen_at, last_topic, messages)"
            " values (%s, %s, %s, 'test', 1) on conflict (device_id) do update"
            " set last_seen_at = excluded.last_seen_at, messages = device_activity.messages + 1",
            (device_id, received, received),
        )

    def tick(self) -> TickReport:
        async def one() -> TickReport:
            async with await psycopg.AsyncConnection.connect(self.line.dsn, autocommit=True) as conn:
                return await self.evaluator.tick(conn)

        report = asyncio.run(one())
        self.reports.append(report)
        return report

    def told(self, name: str) -> list[tuple[datetime, State]]:
        """(device time of the tick, new state) of every change of ``name`` handed to delivery."""
        return [(r.now, c.alert.state) for r in self.reports for c in r.changes if c.alert.name == name]


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


def test_a_replayed_backlog_is_judged_by_device_time(timeline: Timeline) -> None:
    timeline.location("cold-room-2", "S1", "cold_room", band=(2.0, 8.0))
    timeline.device("probe-1", "sensor", "cold-room-2", timeout_s=600)
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4", timeout_s=180)
    replay = Replay(timeline, COLD_ROOM_RULES, COLD_CHAIN)
    # The door stood open from +60 to +85 min; the reader was unplugged at +30 min. Two hours arrive in 12
    # chunks of ten minutes, each evaluated as it arrives.
    temperatures = [5.0] * 60 + [12.0] * 25 + [5.0] * 35
    for chunk in range(12):
        first = START + minutes(10 * chunk)
        replay.temperatures("probe-1", first, temperatures[10 * chunk : 10 * chunk + 10])
        if chunk < 3:
            replay.reads("reader-1", first, 10)
        report = replay.tick()
        assert report.now == first + minutes(9)  # the newest device time, not the wall clock
    assert replay.told("TemperatureExcursion") == [
        (START + minutes(79), State.FIRING),  # out of band from +60, 15 minutes' delay: seen at +79
        (START + minutes(99), State.RESOLVED),  # back inside from +85, 10 minutes clear: seen at +99
    ]
    assert replay.told("DeviceOffline") == [(START + minutes(39), State.FIRING)]  # last read +29, 3 min timeout
    assert replay.told("SensorStale") == []  # the probe was never silent in its own time
    starts_at = timeline.db.execute("select starts_at from alerts where alertname = 'DeviceOffline'").fetchone()
    assert starts_at == (START + minutes(29),)


def test_a_last_will_takes_the_device_offline_from_its_last_read(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4", timeout_s=180)
    timeline.device("reader-2", "rfid_reader", "aisle-4", timeout_s=180)
    replay = Replay(timeline, only=("device_offline",))
    replay.reads("reader-1", START, 20)
    replay.reads("reader-2", START, 20)
    replay.will("reader-1")  # received now, long after +19 min in device time
    replay.tick()
    assert replay.told("DeviceOffline") == [(START + minutes(19), State.FIRING)]
    row = timeline.db.execute("select subject, starts_at from alerts where alertname = 'DeviceOffline'").fetchone()
    assert row == ("reader-1", START + minutes(19))
    replay.reads("reader-1", START + minutes(20), 5)  # it is back
    replay.reads("reader-2", START + minutes(20), 5)
    replay.tick()
    assert replay.told("DeviceOffline")[-1] == (START + minutes(24), State.RESOLVED)


def test_readings_without_a_device_time_of_their_own_do_not_move_the_clock(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("probe-1", "sensor", "aisle-4")
    replay = Replay(timeline, only=("device_offline",))
    assert replay.tick().skipped is not None  # nothing ingested yet: nothing is judged
    assert timeline.db.execute("select count(*) from alert_rule_runs").fetchone() == (0,)
    replay.temperatures("probe-1", START, [5.0] * 10)
    timeline.db.execute(
        "insert into telemetry (observed_at, device_id, quantity, value, received_at) values"
        " (now(), 'probe-1', 'humidity_pct', 50, now()),"  # stamped on arrival
        " (now() + interval '1 hour', 'probe-1', 'battery_pct', 80, now())"  # a clock set an hour ahead
    )
    assert replay.tick().now == START + minutes(9)


def test_the_clock_never_runs_backwards(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    replay = Replay(timeline, only=("device_offline",))
    replay.reads("reader-1", START, 30)
    assert replay.tick().now == START + minutes(29)
    timeline.db.execute("delete from rfid_reads where read_at > %s", (START + minutes(10),))  # retention, say
    assert replay.tick().now == START + minutes(29)


def test_an_item_is_called_gone_only_once_tracking_has_caught_up_with_it(timeline: Timeline) -> None:
    timeline.location("shelf-1", "S1", "shelf")
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    replay = Replay(timeline, only=("shrink",))
    [gone] = timeline.items(1, "shelf-1", prefix="GONE", since=START + minutes(5), status="departed")
    replay.reads("reader-1", START, 60)  # an hour of reads: 55 minutes after the departure by the device clock
    # Reads from +20 min that the resolver has not folded yet (they may show the item arriving elsewhere).
    timeline.db.execute(
        "insert into sighting_deltas (epc, location_id, first_at, last_at, reads, device_id, antenna)"
        " values (%s, 'aisle-4', %s, %s, 1, 'reader-1', 1)",
        (gone, START + minutes(20), START + minutes(20)),
    )
    replay.tick()
    assert timeline.alert("ItemLeftWithoutShipment")[0] == "pending"
    timeline.db.execute("delete from sighting_deltas")  # folded: the item did not turn up anywhere
    replay.tick()
    assert replay.told("ItemLeftWithoutShipment") == [(START + minutes(59), State.FIRING)]
