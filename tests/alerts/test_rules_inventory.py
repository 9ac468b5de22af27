"""Inventory variance (judged only after a complete read cycle) and low stock (weekday-aware reorder points)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta

import numpy as np
import pytest

from alerts import reorder
from alerts.model import State
from tests.alerts.test_rules import GTIN, MONDAY, Timeline, configure, minutes, opened_timeline

VARIANCE = ("inventory_variance",)


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


def zone(line: Timeline) -> None:
    """zone-a with two shelves, each read by one antenna of reader-1."""
    line.location("zone-a", "S1", "zone")
    line.location("shelf-1", "zone-a", "shelf")
    line.location("shelf-2", "zone-a", "shelf")
    line.device("reader-1", "rfid_reader", "zone-a")
    line.db.execute(
        "insert into antennas (device_id, antenna, location_id)"
        " values ('reader-1', 1, 'shelf-1'), ('reader-1', 2, 'shelf-2')"
    )


def book(line: Timeline, location_id: str, quantity: int, as_of: datetime) -> None:
    row = line.db.execute(
        "insert into book_imports (source, as_of, complete_for, lines_accepted, lines_rejected)"
        " values ('erp', %s, %s, 1, 0) returning id",
        (as_of, location_id),
    ).fetchone()
    assert row is not None
    line.db.execute(
        "insert into book_lines (import_id, gtin, location_id, quantity, as_of) values (%s, %s, %s, %s, %s)",
        (row[0], GTIN, location_id, quantity, as_of),
    )


def antenna_read(line: Timeline, antenna: int, at: datetime) -> None:
    line.db.execute(
        """
        insert into antenna_activity (device_id, antenna, last_read_at, reads) values ('reader-1', %s, %s, 1)
        on conflict (device_id, antenna) do update set last_read_at = excluded.last_read_at
        """,
        (antenna, at),
    )


def test_a_variance_is_judged_only_after_every_antenna_of_the_zone_has_read(timeline: Timeline) -> None:
    configure(timeline, "rules: {inventory_variance: {absolute_units: 2, percent: 3}}", *VARIANCE)
    zone(timeline)
    start = MONDAY
    book(timeline, "zone-a", 100, as_of=start)
    timeline.items(44, "shelf-1", prefix="A")
    timeline.items(44, "shelf-2", prefix="B")  # 88 observed: 12 % fewer than the book

    antenna_read(timeline, 1, start + minutes(1))
    timeline.tick(start + minutes(2))  # shelf-2 not read since the book: no judgement
    assert timeline.changes() == []

    antenna_read(timeline, 2, start + minutes(3))
    timeline.tick(start + minutes(4))
    told = timeline.changes("InventoryVariance")
    assert [(t.at, t.state) for t in told] == [(start + minutes(4), State.FIRING)]
    alert = told[0].change.alert
    assert alert.labels["subject"] == f"{GTIN}@zone-a"
    assert (
        alert.annotations["summary"]
        == f"zone-a shows 12 % fewer units of GTIN {GTIN} than the books (88 observed, 100 booked)"
    )

    # The missing stock turns up, but only shelf-1 is read again: the judgement stands.
    timeline.items(12, "shelf-2", prefix="C")
    antenna_read(timeline, 1, start + minutes(5))
    timeline.tick(start + minutes(6))
    assert len(timeline.changes()) == 1
    antenna_read(timeline, 2, start + minutes(7))
    timeline.tick(start + minutes(8))
    told = timeline.changes("InventoryVariance")
    assert [(t.at, t.state) for t in told][1:] == [(start + minutes(8), State.RESOLVED)]


def test_a_variance_within_either_threshold_is_not_raised(timeline: Timeline) -> None:
    configure(timeline, "rules: {inventory_variance: {absolute_units: 2, percent: 3}}", *VARIANCE)
    zone(timeline)
    timeline.location("zone-b", "S1", "zone")
    timeline.device("reader-2", "rfid_reader", "zone-b")
    start = MONDAY
    book(timeline, "zone-a", 100, as_of=start)  # 98 observed: 2 units but 2 %
    book(timeline, "zone-b", 20, as_of=start)  # 19 observed: 5 % but 1 unit
    timeline.items(98, "shelf-1", prefix="A")
    timeline.items(19, "zone-b", prefix="B")
    antenna_read(timeline, 1, start + minutes(1))
    antenna_read(timeline, 2, start + minutes(1))
    timeline.db.execute(
        "insert into antenna_activity (device_id, antenna, last_read_at, reads) values ('reader-2', 0, %s, 1)",
        (start + minutes(1),),
    )
    timeline.tick(start + minutes(2))
    assert timeline.changes() == []
    judged = timeline.db.execute("select location_id from inventory_judgements order by 1").fetchall()
    assert judged == [("zone-a",), ("zone-b",)]


def test_a_finished_cycle_count_is_a_judgement(timeline: Timeline) -> None:
    configure(timeline, "", *VARIANCE)
    timeline.location("cage-1", "S1", "zone")  # no antennas: only a count can judge it
    start = MONDAY
    book(timeline, "cage-1", 50, as_of=start - timedelta(days=1))
    count = timeline.db.execute(
        "insert into cycle_counts (name, location_id, started_at, ended_at, status)"
        " values ('weekly', 'cage-1', %s, %s, 'finished') returning id",
        (start - minutes(30), start - minutes(10)),
    ).fetchone()
    assert count is not None
    timeline.db.execute(
        "insert into cycle_count_results (count_id, gtin, observed_units, book_units, unread_units)"
        " values (%s, %s, 40, 50, 10)",
        (count[0], GTIN),
    )
    timeline.tick(start)
    told = timeline.changes("InventoryVariance")
    assert [t.state for t in told] == [State.FIRING]
    assert told[0].change.alert.starts_at == start - minutes(10)
    assert "a cycle count" in told[0].change.alert.annotations["description"]


# ----------------------------------------------------------------------------------------------------
# Low stock

LOW_STOCK_RULES = """
rules:
  low_stock:
    refresh_days: 0        # the consumption below is written directly, not derived from location events
    window_days: 28
    service_level: 0.95
"""


def weekly_demand(line: Timeline, until: date, weekday_units: int = 100, days: int = 42) -> None:
    """Consumption at shelf-1: weekday_units every weekday, nothing at weekends, for `days` days before until."""
    rows = []
    for back in range(1, days + 1):
        day = until - timedelta(days=back)
        if day.weekday() < 5:
            rows.append((day, "shelf-1", GTIN, "S1", weekday_units))
    with line.db.cursor() as cur:
        cur.executemany(
            "insert into consumption_daily (day, location_id, gtin, site_id, units) values (%s, %s, %s, %s, %s)", rows
        )


def test_weekly_seasonality_raises_no_alarm_on_a_quiet_weekend(timeline: Timeline) -> None:
    configure(timeline, LOW_STOCK_RULES, "low_stock")
    timeline.location("shelf-1", "S1", "shelf")
    timeline.sku(lead_time_days=2.0, unit_cost=10.0, order_cost=50.0, holding_cost_rate=0.25)
    friday_evening = datetime(2026, 3, 6, 18, 0, tzinfo=MONDAY.tzinfo)
    sunday_evening = friday_evening + timedelta(days=2)
    weekly_demand(timeline, sunday_evening.date())
    timeline.items(150, "shelf-1", prefix="S")

    # A plain mean-based rule would call for an order on Friday evening: two average days (2 x 71) plus safety.
    series = np.asarray([[100.0 if (friday_evening.date() - timedelta(days=k)).weekday() < 5 else 0.0
                          for k in range(28, 0, -1)]])  # fmt: skip
    naive = reorder.naive_reorder_points(series, np.asarray([2.0]), np.asarray([reorder.z_score(0.95)]))
    assert naive[0] > 150

    # The lead time from Friday 18:00 covers the rest of Friday, Saturday and most of Sunday: 25 units.
    timeline.tick(friday_evening)
    assert timeline.changes() == []
    # From Sunday 18:00 it covers Monday and most of Tuesday: 175 units, more than the 150 on hand.
    timeline.tick(sunday_evening)
    told = timeline.changes("LowStock")
    assert [t.state for t in told] == [State.FIRING]
    annotations = told[0].change.alert.annotations
    assert annotations["summary"].startswith(
        f"GTIN {GTIN} at shelf-1 will run out before the next delivery: 150 on hand"
    )
    assert annotations["reorder_point"] == "175"
    # EOQ = sqrt(2 x (500/7 x 365) x 50 / (10 x 0.25)) = 1021 units.
    assert annotations["suggested_order_units"] == "1022"


def test_a_fixed_minimum_wins_over_the_computed_reorder_point(timeline: Timeline) -> None:
    configure(timeline, LOW_STOCK_RULES, "low_stock")
    timeline.location("shelf-1", "S1", "shelf")
    timeline.sku(lead_time_days=2.0, reorder_minimum_units=200)
    timeline.items(150, "shelf-1", prefix="S")  # no consumption at all: the computed point would be 0
    timeline.tick(MONDAY)
    told = timeline.changes("LowStock")
    assert [t.state for t in told] == [State.FIRING]
    assert "fixed reorder point 200" in told[0].change.alert.annotations["summary"]


def test_weekday_aware_lead_demand_sums_the_days_the_lead_time_covers() -> None:
    weekdays = np.asarray([d % 7 for d in range(28)], dtype=np.int64)  # column 0 is a Monday
    demand = np.where(weekdays < 5, 100.0, 0.0)[None, :]
    points = reorder.reorder_points(
        demand, weekdays, np.asarray([2.0]), np.asarray([1.645]), np.asarray([4], dtype=np.int64), np.asarray([0.25])
    )
    assert points.weekday_aware[0]
    assert points.lead_demand[0] == 25.0  # a quarter of Friday, Saturday, three quarters of Sunday
    assert points.safety_stock[0] == 0.0  # every weekday alike week to week: nothing to buffer
    noisy = demand + np.where(np.arange(28) % 14 == 0, 20.0, 0.0)  # Mondays vary
    points = reorder.reorder_points(
        noisy, weekdays, np.asarray([1.0]), np.asarray([1.645]), np.asarray([0], dtype=np.int64), np.asarray([1.0])
    )
    monday_std = np.std([120.0, 100.0, 120.0, 100.0], ddof=1)
    assert abs(points.safety_stock[0] - 1.645 * monday_std) < 1e-9
    assert reorder.z_score(0.95) == pytest.approx(1.6449, abs=1e-4)
