"""The alert rules as timelines (Alertmanager's acceptance-test style): put data in at virtual time t, tick the
evaluator with a virtual clock, and expect changes handed to delivery between a and b, and none elsewhere.

The data goes in as rows, the way ingest and the resolver write them. ``Timeline`` is shared by the lifecycle,
evaluator and API tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from alerts import outbox
from alerts.evaluator import Evaluator, TickReport, all_rules
from alerts.model import AlertChange, State
from alerts.rules_config import RulesError, parse_rules

Db = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 2026-03-02 is a Monday
GTIN = "09506000134352"
GTIN_2 = "04006381333931"


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Told:
    at: datetime
    change: AlertChange

    @property
    def name(self) -> str:
        return self.change.alert.name

    @property
    def state(self) -> State:
        return self.change.alert.state


class Timeline:
    """A world of rows, an evaluator on a virtual clock, and every change it handed to delivery."""

    def __init__(self, dsn: str, db: Db, rules: str = "", start: datetime = MONDAY) -> None:
        self.dsn = dsn
        self.db = db
        self.clock = Clock(start)
        self.told: list[Told] = []
        self.reports: list[TickReport] = []
        self.evaluator = self.make_evaluator(rules)

    def make_evaluator(self, rules: str = "", only: Sequence[str] = ()) -> Evaluator:
        """An evaluator on this timeline's clock; with ``only``, just those rules run (the tests stay quick)."""
        chosen = [rule for rule in all_rules() if not only or rule.name in only]
        return Evaluator(parse_rules(rules), rules=chosen, clock=self.clock, enqueue=self.enqueue)

    async def enqueue(self, conn: psycopg.AsyncConnection[Any], changes: Sequence[AlertChange]) -> None:
        self.told += [Told(self.clock(), change) for change in changes]
        await outbox.enqueue(conn, changes)

    # ---- time

    def at(self, when: datetime) -> None:
        self.clock.now = when

    def tick(self, when: datetime | None = None) -> TickReport:
        if when is not None:
            self.at(when)
        report = run(self._tick())
        self.reports.append(report)
        return report

    async def _tick(self) -> TickReport:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            return await self.evaluator.tick(conn)

    def run(self, until: datetime, step: timedelta, before_each: Callable[[datetime], None] | None = None) -> None:
        """Tick every step from now (exclusive) to until (inclusive)."""
        run(self._run(until, step, before_each))

    async def _run(self, until: datetime, step: timedelta, before_each: Callable[[datetime], None] | None) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while self.clock.now + step <= until:
                self.clock.now += step
                if before_each is not None:
                    before_each(self.clock.now)
                self.reports.append(await self.evaluator.tick(conn))

    def changes(self, name: str | None = None, since: datetime | None = None) -> list[Told]:
        return [t for t in self.told if (name is None or t.name == name) and (since is None or t.at >= since)]

    def alert(self, name: str) -> tuple[Any, ...]:
        row = self.db.execute(
            "select state, starts_at, ends_at, annotations, inhibited_by, silenced_by, labels, fingerprint"
            " from alerts where alertname = %s",
            (name,),
        ).fetchone()
        assert row is not None, f"no {name} alert stored"
        return row

    # ---- the world

    def site(self, site_id: str = "S1", timezone: str | None = None) -> None:
        self.db.execute(
            "insert into locations (id, site_id, kind, timezone) values (%s, %s, 'site', %s)",
            (site_id, site_id, timezone),
        )

    def location(self, location_id: str, parent: str, kind: str, band: tuple[float, float] | None = None) -> None:
        self.db.execute(
            "insert into locations (id, site_id, parent_id, kind, temperature_min_c, temperature_max_c)"
            " select %s, site_id, id, %s, %s, %s from locations where id = %s",
            (location_id, kind, band[0] if band else None, band[1] if band else None, parent),
        )

    def device(self, device_id: str, kind: str, location_id: str, timeout_s: int | None = None) -> None:
        self.db.execute(
            "insert into devices (id, kind, source, location_id, inactivity_timeout_s)"
            " values (%s, %s, 'native', %s, %s)",
            (device_id, kind, location_id, timeout_s),
        )

    def seen(self, device_id: str, at: datetime) -> None:
        self.db.execute(
            """
            insert into device_activity (device_id, first_seen_at, last_seen_at, last_topic, messages)
            values (%s, %s, %s, 'test', 1)
            on conflict (device_id) do update set last_seen_at = greatest(device_activity.last_seen_at,
                excluded.last_seen_at), messages = device_activity.messages + 1
            """,
            (device_id, at, at),
        )

    def readings(
        self, device_id: str, start: datetime, values: Sequence[float], every: timedelta = timedelta(minutes=1)
    ) -> None:
        """Temperatures from start, one per ``every``; the device counts as seen at the last one."""
        rows = [(start + i * every, device_id, "temperature_c", v, start + i * every) for i, v in enumerate(values)]
        with self.db.cursor() as cur:
            cur.executemany(
                "insert into telemetry (observed_at, device_id, quantity, value, received_at)"
                " values (%s, %s, %s, %s, %s) on conflict do nothing",
                rows,
            )
        if rows:
            self.seen(device_id, rows[-1][0])

    def items(self, count: int, location_id: str, *, lot: str | None = None, gtin: str = GTIN, prefix: str = "E",
              since: datetime = MONDAY - timedelta(days=1), status: str = "present") -> list[str]:  # fmt: skip
        epcs = [f"{prefix}{i:06d}" for i in range(count)]
        self.db.execute(
            "insert into items (epc, scheme, gtin, lot, first_seen_at) select e, 'sgtin-96', %s, %s, %s"
            " from unnest(%s::text[]) e",
            (gtin, lot, since, epcs),
        )
        self.db.execute(
            "insert into item_state (epc, location_id, site_id, status, since, last_seen_at)"
            " select e, %s, (select site_id from locations where id = %s), %s, %s, %s from unnest(%s::text[]) e",
            (location_id if status != "departed" else None, location_id, status, since, since, epcs),
        )
        return epcs

    def lot(self, lot: str, gtin: str = GTIN, expires_on: date | None = None) -> None:
        self.db.execute("insert into lots (lot, gtin, expires_on) values (%s, %s, %s)", (lot, gtin, expires_on))

    def sku(self, gtin: str = GTIN, **columns: Any) -> None:
        names = ["gtin", "name", *columns]
        self.db.execute(
            f"insert into skus ({', '.join(names)}) values ({', '.join(['%s'] * len(names))})",
            (gtin, f"product {gtin}", *columns.values()),
        )


def run(coroutine: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coroutine

    return asyncio.run(wrapped())


# What the rules read and write, children first. Emptied with DELETE rather than the `db` fixture's TRUNCATE:
# on a few rows it takes milliseconds where TRUNCATE of every table takes about a second, and these tests are
# many short timelines.
_TABLES = (
    "alerts", "silences", "alert_rule_runs", "inventory_judgement_lines", "inventory_judgements",
    "delivery_attempts", "delivery_references", "deliveries", "delivery_lanes",
    "cycle_count_results", "cycle_counts", "book_lines", "book_imports", "consumption_daily", "consumption_points",
    "container_contents", "container_changes", "location_events", "portal_passes", "tag_sightings", "item_state",
    "items", "lots", "skus", "telemetry", "rfid_reads", "device_events", "device_activity", "antenna_activity",
    "antennas", "devices", "location_presence_policy", "vehicle_positions", "tracking_watermarks", "locations",
)  # fmt: skip


@contextmanager
def opened_timeline(dsn: str) -> Iterator[Timeline]:
    """A timeline on an autocommit connection to the test database, the rules' tables emptied, with site S1."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for table in _TABLES:
                found = conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()
                if found and found[0]:
                    conn.execute(sql.SQL("delete from {}").format(sql.Identifier(table)))
        line = Timeline(dsn, conn)
        line.site("S1")
        yield line


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


def configure(line: Timeline, rules: str, *only: str) -> None:
    line.evaluator = line.make_evaluator(rules, only)


COLD_CHAIN = ("device_offline", "sensor_stale", "temperature_excursion")


# ----------------------------------------------------------------------------------------------------
# Temperature excursions

COLD_ROOM_RULES = """
rules:
  temperature_excursion:
    alarm_delay: 15m
    hysteresis_c: 0.5
    clear_after: 10m
"""


def cold_room(line: Timeline, items: int = 0) -> None:
    line.location("cold-room-2", "S1", "cold_room", band=(2.0, 8.0))
    line.location("shelf-2a", "cold-room-2", "shelf")
    line.device("probe-1", "sensor", "cold-room-2")
    if items:
        line.lot("L-88")
        line.items(items, "shelf-2a", lot="L-88")


def test_an_excursion_fires_after_its_alarm_delay_and_names_what_is_inside(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline, items=340)
    start = MONDAY
    # 5 °C for an hour, then 9 °C: above the band from 09:00.
    timeline.readings("probe-1", start, [5.0] * 60 + [9.0] * 40)
    timeline.at(start + minutes(50))
    timeline.run(start + minutes(99), minutes(1))

    fired = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in fired] == [(start + minutes(75), State.FIRING)]
    alert = fired[0].change.alert
    assert alert.starts_at == start + minutes(60)
    assert alert.labels["location"] == "cold-room-2"
    assert alert.labels["site"] == "S1"
    summary = alert.annotations["summary"]
    assert summary.startswith("cold-room-2 has been above 8 °C for 15 minutes")
    assert summary.endswith("340 items of lot L-88 inside")
    # Pending from the first reading above the band until the delay passed: stored, not told.
    assert fired[0].change.previous is State.PENDING


def test_a_wobble_on_the_edge_neither_fires_nor_flaps(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline)
    start = MONDAY
    # Alternating 8.2 / 7.9 for two hours: never 15 consecutive minutes above.
    timeline.readings("probe-1", start, [8.2, 7.9] * 60)
    timeline.at(start)
    timeline.run(start + minutes(119), minutes(1))
    assert timeline.changes() == []


def test_hysteresis_keeps_one_excursion_until_readings_are_clear_of_the_edge(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline)
    start = MONDAY
    # 20 min at 9 °C (fires at +15), 30 min wobbling 7.8 / 8.3 (inside by less than the margin, or out), then
    # 6 °C: clear from +50, resolved once clear for 10 minutes, at +60.
    values = [9.0] * 20 + [7.8, 8.3] * 15 + [6.0] * 20
    timeline.readings("probe-1", start, values)
    timeline.at(start)
    timeline.run(start + minutes(69), minutes(1))

    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in told] == [
        (start + minutes(15), State.FIRING),
        (start + minutes(60), State.RESOLVED),
    ]
    resolved = told[1].change.alert
    assert resolved.ends_at == start + minutes(50)
    assert resolved.starts_at == start


def test_late_readings_start_an_excursion_back_in_time(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline)
    start = MONDAY
    timeline.readings("probe-1", start, [5.0] * 30)
    timeline.at(start + minutes(29))
    timeline.run(start + minutes(49), minutes(1))
    assert timeline.changes("TemperatureExcursion") == []
    # The gateway was offline: at +50 twenty minutes of readings arrive at once, above the band since +30.
    timeline.readings("probe-1", start + minutes(30), [9.0] * 21)
    timeline.tick(start + minutes(50))
    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in told] == [(start + minutes(50), State.FIRING)]
    assert told[0].change.alert.starts_at == start + minutes(30)


def test_a_late_reading_extends_an_excursion_that_was_clearing(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline)
    timeline.device("probe-2", "sensor", "cold-room-2")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20 + [6.0] * 30)  # clear from +20
    timeline.at(start)

    def late(now: datetime) -> None:
        if now == start + minutes(27):
            # probe-2's buffered reading from +25 arrives: 9 °C. The clear stretch starts again after it.
            timeline.readings("probe-2", start + minutes(25), [9.0])

    timeline.run(start + minutes(45), minutes(1), before_each=late)
    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in told] == [
        (start + minutes(15), State.FIRING),
        (start + minutes(36), State.RESOLVED),
    ]
    assert told[1].change.alert.ends_at == start + minutes(26)


def test_a_late_reading_reopens_an_excursion_that_had_resolved(timeline: Timeline) -> None:
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    cold_room(timeline)
    timeline.device("probe-2", "sensor", "cold-room-2")
    start = MONDAY
    timeline.readings("probe-1", start, [9.0] * 20 + [6.0] * 15)  # clear from +20, resolved at +30
    timeline.at(start)
    timeline.run(start + minutes(32), minutes(1))
    # At +33, probe-2's reading from +29 arrives: 9 °C. The excursion had not ended after all.
    timeline.readings("probe-2", start + minutes(29), [9.0])
    timeline.tick(start + minutes(33))
    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in told] == [
        (start + minutes(15), State.FIRING),
        (start + minutes(30), State.RESOLVED),
        (start + minutes(33), State.FIRING),
    ]
    assert told[2].change.alert.starts_at == start
    assert "reopened" in told[2].change.reason


def test_a_preset_sets_the_band_and_delays(timeline: Timeline) -> None:
    configure(
        timeline,
        """
        rules:
          temperature_excursion:
            overrides:
              - match: {location_kind: freezer}
                preset: who-30dtr
        """,
        *COLD_CHAIN,
    )
    timeline.location("freezer-1", "S1", "freezer")  # no band of its own
    timeline.device("probe-f", "sensor", "freezer-1")
    start = MONDAY
    # The WHO 30-day recorder's freeze alarm: -0.5 °C or below for 60 minutes.
    timeline.readings("probe-f", start, [-1.0] * 70, every=minutes(1))
    timeline.at(start + minutes(50))
    timeline.run(start + minutes(65), minutes(5))
    told = timeline.changes("TemperatureExcursion")
    assert [(t.at, t.state) for t in told] == [(start + minutes(60), State.FIRING)]
    assert "below -0.5 °C" in told[0].change.alert.annotations["summary"]


# ----------------------------------------------------------------------------------------------------
# Lot exposure


def test_a_lot_past_its_budget_and_mkt_limit_is_raised(timeline: Timeline) -> None:
    configure(
        timeline,
        """
        rules:
          lot_exposure:
            budget: 30m
            mkt_min_covered: 1h
        """,
        "temperature_excursion",
        "lot_exposure",
    )
    cold_room(timeline)
    timeline.sku(temperature_min_c=2.0, temperature_max_c=8.0)
    timeline.lot("L-88")
    start = MONDAY
    epcs = timeline.items(3, "shelf-2a", lot="L-88", since=start)
    with timeline.db.cursor() as cur:
        cur.executemany(
            "insert into location_events (at, epc, kind, to_location) values (%s, %s, 'arrived', 'shelf-2a')",
            [(start, epc) for epc in epcs],
        )
    # Two hours at 25 °C: 120 minutes out of the band (budget 30) and an MKT far above 8 °C.
    timeline.readings("probe-1", start, [25.0] * 121)
    timeline.tick(start + minutes(20))  # 20 minutes out: within the budget, too short a history for MKT
    assert {t.name for t in timeline.changes()} == {"TemperatureExcursion"}
    timeline.tick(start + minutes(120))
    names = {t.name for t in timeline.changes()}
    assert {"TemperatureBudgetExceeded", "MeanKineticTemperatureHigh"} <= names
    budget = next(t for t in timeline.changes("TemperatureBudgetExceeded"))
    assert budget.change.alert.labels["lot"] == "L-88"
    assert "120 minutes out of its band (budget 30 minutes)" in budget.change.alert.annotations["summary"]


# ----------------------------------------------------------------------------------------------------
# Devices


def test_a_silent_device_goes_offline_and_comes_back(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")  # default inactivity timeout: 60 s
    start = MONDAY
    timeline.seen("reader-1", start)
    timeline.at(start)
    timeline.run(start + minutes(3), minutes(0.5))
    timeline.seen("reader-1", start + minutes(3) + timedelta(seconds=10))
    timeline.run(start + minutes(4), minutes(0.5))
    told = timeline.changes("DeviceOffline")
    assert [(t.at, t.state) for t in told] == [
        (start + minutes(1.5), State.FIRING),
        (start + minutes(3.5), State.RESOLVED),
    ]
    assert told[0].change.alert.starts_at == start


def test_a_last_will_takes_a_device_offline_at_once(timeline: Timeline) -> None:
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4", timeout_s=3600)
    start = MONDAY
    timeline.seen("reader-1", start)
    timeline.db.execute(
        "insert into device_events (observed_at, device_id, online, reason, received_at)"
        " values (%s, 'reader-1', false, 'last will', %s)",
        (start + minutes(1), start + minutes(1)),
    )
    timeline.tick(start + minutes(2))
    told = timeline.changes("DeviceOffline")
    assert [t.state for t in told] == [State.FIRING]
    assert "last will" in told[0].change.alert.annotations["description"]


def test_a_sensor_that_stops_measuring_is_stale(timeline: Timeline) -> None:
    configure(timeline, "rules: {sensor_stale: {stale_after: 30m}}", *COLD_CHAIN)
    cold_room(timeline)
    start = MONDAY
    timeline.readings("probe-1", start, [5.0])
    timeline.seen("probe-1", start + minutes(40))  # heartbeats keep it online
    timeline.at(start + minutes(20))
    timeline.run(start + minutes(40), minutes(5))
    told = timeline.changes("SensorStale")
    assert [(t.at, t.state) for t in told] == [(start + minutes(35), State.FIRING)]


# ----------------------------------------------------------------------------------------------------
# Items


def test_an_item_that_leaves_without_a_shipment_is_raised_and_a_shipped_one_is_not(timeline: Timeline) -> None:
    timeline.location("shelf-1", "S1", "shelf")
    timeline.location("door-1", "S1", "dock_door")
    start = MONDAY
    lost = timeline.items(1, "shelf-1", prefix="LOST", since=start - minutes(30), status="departed")
    shipped = timeline.items(1, "shelf-1", prefix="SHIP", since=start - minutes(10), status="departed")
    events = [
        (start - minutes(60), lost[0], "arrived", None, "shelf-1", None),
        (start - minutes(30), lost[0], "departed", "shelf-1", None, None),
        (start - minutes(60), shipped[0], "arrived", None, "shelf-1", None),
        (start - minutes(12), shipped[0], "moved", "shelf-1", "door-1", "out"),
        (start - minutes(10), shipped[0], "departed", "door-1", None, "out"),
    ]
    with timeline.db.cursor() as cur:
        cur.executemany(
            "insert into location_events (at, epc, kind, from_location, to_location, direction)"
            " values (%s, %s, %s, %s, %s, %s)",
            events,
        )
    timeline.tick(start)
    told = timeline.changes("ItemLeftWithoutShipment")
    assert [t.change.alert.labels["subject"] for t in told] == [lost[0]]
    assert told[0].change.alert.starts_at == start - minutes(30)


def test_an_item_dwelling_at_a_dock_door_is_raised_after_the_kinds_limit(timeline: Timeline) -> None:
    timeline.location("door-1", "S1", "dock_door")
    timeline.location("shelf-1", "S1", "shelf")
    start = MONDAY
    timeline.items(1, "door-1", prefix="DOOR", since=start)
    timeline.items(1, "shelf-1", prefix="SHELF", since=start)  # shelves have no limit
    timeline.at(start)
    timeline.run(start + timedelta(hours=3), minutes(30))
    told = timeline.changes("ItemDwellTooLong")
    assert [(t.at, t.change.alert.labels["subject"]) for t in told] == [(start + timedelta(hours=2.5), "DOOR000000")]


def test_a_lot_past_expiry_with_items_left_is_raised(timeline: Timeline) -> None:
    timeline.location("shelf-1", "S1", "shelf")
    timeline.lot("L-OLD", expires_on=date(2026, 3, 1))
    timeline.lot("L-NEW", expires_on=date(2026, 3, 9))
    timeline.items(4, "shelf-1", lot="L-OLD", prefix="OLD")
    timeline.items(4, "shelf-1", lot="L-NEW", prefix="NEW")
    timeline.tick(MONDAY)
    told = timeline.changes("LotExpired")
    assert [t.change.alert.labels["lot"] for t in told] == ["L-OLD"]
    assert told[0].change.alert.annotations["summary"] == "4 items of lot L-OLD past expiry"


# ----------------------------------------------------------------------------------------------------
# Configuration


def test_an_invalid_rules_file_names_each_error_by_path_and_line() -> None:
    text = """\
defaults:
  repeat_interval: 4h
rules:
  temperature_excursion:
    alarm_delay: 15 minutes
    overrides:
      - match: {location_kind: freezer}
        preset: -18C
  low_stock:
    service_level: 1.5
"""
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="rules.yaml")
    message = str(caught.value)
    assert "rules.temperature_excursion.alarm_delay (line 5): " in message
    assert "rules.temperature_excursion.overrides[0].preset (line 8): " in message
    assert "unknown preset '-18C'" in message
    assert "rules.low_stock.service_level (line 10): " in message


def test_the_shipped_rules_file_is_valid() -> None:
    from alerts.rules_config import load_rules

    config = load_rules()
    assert config.temperature_excursion.params.delay_above_s == 900.0
    assert config.interval_s("low_stock") == 300.0


def test_overrides_apply_to_a_location_and_everything_inside_it() -> None:
    from alerts.rules_config import Attributes

    config = parse_rules(
        """
        rules:
          inventory_variance:
            percent: 3
            overrides:
              - match: {location: zone-a}
                percent: 5
              - match: {location: zone-a, gtin: "09506000134352"}
                absolute_units: 10
        """
    )
    section = config.inventory_variance
    inside = section.for_subject(Attributes(ancestors=frozenset({"shelf-1", "zone-a", "S1"}), gtin=GTIN))
    outside = section.for_subject(Attributes(ancestors=frozenset({"zone-b", "S1"}), gtin=GTIN))
    assert (inside.pct, inside.units) == (5.0, 10)
    assert (outside.pct, outside.units) == (3.0, 2)
