"""Observed stock against the book, stock accuracy, cycle counts, consumption and its KPIs, on the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.tracking.inventory_world import G1, G2, G3, Conn, World, today_at
from tracking.inventory import location_inventory, refresh_consumption, stock_accuracy, variances
from tracking.inventory_count import CycleCountStart, finish_cycle_count, get_cycle_count, start_cycle_count
from tracking.inventory_plan import ConflictError, NotFoundError, run


@pytest.fixture
def world(db: Conn) -> World:
    """site > zone > shelves a and b, a dock door, a yard and a truck.

    Present: shelf a 8 x G1 + 2 x G2, shelf b 3 x G1 + 1 x G2, the zone itself 1 x G3; one G1 has departed.
    Book:    shelf a G1 10, G2 2; shelf b G1 3; the zone G3 2.
    """
    w = World(db)
    w.site("site")
    w.location("zone", "site", "zone")
    w.location("shelf-a", "zone", "shelf")
    w.location("shelf-b", "zone", "shelf")
    w.location("dock", "site", "dock_door")
    w.location("yard", "site", "yard")
    w.location("truck", "site", "vehicle")
    w.stock(G1, "shelf-a", 8)
    w.stock(G2, "shelf-a", 2)
    w.stock(G1, "shelf-b", 3)
    w.stock(G2, "shelf-b", 1)
    w.stock(G3, "zone", 1)
    w.place(w.item(G1), None, status="departed")
    w.book([(G1, "shelf-a", 10), (G2, "shelf-a", 2), (G1, "shelf-b", 3), (G3, "zone", 2)])
    return w


def _variance(db: Conn, location: str) -> dict[str, tuple[int, int, int, float | None]]:
    rows = db.execute(
        "select gtin, observed_units, book_units, variance_units, variance_pct from inventory_variance"
        " where location_id = %s",
        (location,),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], None if r[4] is None else round(r[4], 2)) for r in rows}


def _accuracy(db: Conn, location: str) -> tuple[Any, ...]:
    row = db.execute(
        "select records, records_exact, absolute_variance_units, book_units, accuracy_pct, record_accuracy_pct"
        " from stock_accuracy where location_id = %s",
        (location,),
    ).fetchone()
    assert row is not None
    return tuple(round(v, 2) if isinstance(v, float) else v for v in row)


def test_variance_per_shelf_against_its_book(world: World, db: Conn) -> None:
    assert _variance(db, "shelf-a") == {G1: (8, 10, -2, -20.0), G2: (2, 2, 0, 0.0)}
    # Found where the book says none: a variance in units, no percentage.
    assert _variance(db, "shelf-b") == {G1: (3, 3, 0, 0.0), G2: (1, 0, 1, None)}


def test_a_zone_rolls_up_its_shelves_on_both_sides(world: World, db: Conn) -> None:
    expected = {G1: (11, 13, -2, -15.38), G2: (3, 2, 1, 50.0), G3: (1, 2, -1, -50.0)}
    assert _variance(db, "zone") == expected
    assert _variance(db, "site") == expected
    on_hand = db.execute(
        "select observed_units, direct_units from inventory_on_hand where location_id = 'zone' and gtin = %s", (G3,)
    ).fetchone()
    assert on_hand == (1, 1)


def test_stock_accuracy_per_location(world: World, db: Conn) -> None:
    # (records, exact, Σ|observed - book|, Σbook, (1 - Σ|v|/Σbook) * 100, exact / records * 100)
    assert _accuracy(db, "shelf-a") == (2, 1, 2, 12, 83.33, 50.0)
    assert _accuracy(db, "shelf-b") == (2, 1, 1, 3, 66.67, 50.0)
    assert _accuracy(db, "zone") == (3, 0, 4, 17, 76.47, 0.0)


def test_the_api_plans_agree_with_the_views(world: World, db: Conn) -> None:
    zone = run(db, location_inventory("zone"))
    assert (zone.observed_units, zone.book_units) == (15, 17)
    assert zone.accuracy_pct == pytest.approx(100 * (1 - 4 / 17))
    assert [(line.gtin, line.variance_units) for line in zone.lines] == sorted([(G1, -2), (G2, 1), (G3, -1)])
    accuracy = {a.location_id: a.accuracy_pct for a in run(db, stock_accuracy("zone"))}
    assert set(accuracy) == {"zone", "shelf-a", "shelf-b"}
    assert accuracy["shelf-a"] == pytest.approx(100 * (1 - 2 / 12))
    with pytest.raises(NotFoundError):
        run(db, location_inventory("nowhere"))


def test_variance_thresholds_must_both_be_met(world: World, db: Conn) -> None:
    found = {(v.location_id, v.gtin) for v in run(db, variances("zone", threshold_pct=20.0))}
    # shelf-a G1 is -20 % (on the threshold); shelf-b G2 has no percentage (book 0); zone G1 is only -15 %.
    assert found == {("shelf-a", G1), ("shelf-b", G2), ("zone", G2), ("zone", G3)}
    assert {(v.location_id, v.gtin) for v in run(db, variances("zone", threshold_units=2))} == {
        ("shelf-a", G1),
        ("zone", G1),
    }


def test_the_latest_book_line_wins_and_a_complete_import_replaces_its_scope(world: World, db: Conn) -> None:
    world.book([(G1, "shelf-a", 9)])
    assert _variance(db, "shelf-a")[G1] == (8, 9, -1, -11.11)
    # An older figure arriving late does not override a newer one.
    world.book([(G1, "shelf-a", 50)], as_of=datetime.now(UTC) - timedelta(days=1))
    assert _variance(db, "shelf-a")[G1][1] == 9
    # The whole book of the zone, now: what it does not repeat is gone from the book.
    import_id = db.execute(
        "insert into book_imports (source, as_of, complete_for, lines_accepted, lines_rejected)"
        " values ('erp', now(), 'zone', 1, 0) returning id"
    ).fetchone()
    assert import_id is not None
    db.execute(
        "insert into book_lines (import_id, gtin, location_id, quantity, as_of) values (%s, %s, 'shelf-a', 7, now())",
        (import_id[0], G1),
    )
    book = db.execute("select gtin, location_id, quantity from inventory_book order by location_id, gtin").fetchall()
    assert book == [(G1, "shelf-a", 7)]


def test_a_cycle_count_keeps_its_result(world: World, db: Conn) -> None:
    now = datetime.now(UTC)
    # Two of shelf a's G1 items were last read an hour before the count started: not confirmed by it.
    stale = db.execute(
        "select s.epc from item_state s join items i using (epc) where s.location_id = 'shelf-a' and i.gtin = %s"
        " order by s.epc limit 2",
        (G1,),
    ).fetchall()
    for (epc,) in stale:
        world.place(epc, "shelf-a", since=now - timedelta(days=1), last_seen_at=now - timedelta(hours=1))
    start = CycleCountStart(name="weekly", location_id="shelf-a", started_at=now - timedelta(minutes=10))
    count = run(db, start_cycle_count(start, now=now))
    finished = run(db, finish_cycle_count(count.id))
    assert finished.status == "finished"
    assert finished.ended_at is not None
    lines = {line.gtin: (line.observed_units, line.book_units, line.unread_units) for line in finished.results}
    assert lines == {G1: (6, 10, 2), G2: (2, 2, 0)}
    assert finished.accuracy_pct == pytest.approx(100 * (1 - 4 / 12))
    # Kept: later movements do not change a finished count, and it finishes once.
    db.execute("delete from item_state where location_id = 'shelf-a'")
    assert run(db, get_cycle_count(count.id)).results == finished.results
    with pytest.raises(ConflictError):
        run(db, finish_cycle_count(count.id))


# ----------------------------------------------------------------------------------------------------
# Consumption and KPIs


@pytest.fixture
def shipped(db: Conn) -> World:
    """Shelf a holds 4 x G1 now; over the last days items left it as follows (see each line)."""
    w = World(db)
    w.site("site")
    w.site("other")
    w.location("shelf-a", "site", "shelf")
    w.location("dock", "site", "dock_door")
    w.location("yard", "site", "yard")
    w.location("truck", "site", "vehicle")
    w.location("line-1", "site", "zone")
    w.location("other-shelf", "other", "shelf")
    db.execute("insert into consumption_points (location_id, note) values ('line-1', 'filling line')")
    w.stock(G1, "shelf-a", 4, since=today_at(20))

    # Shipped through the dock two days ago, then loaded on the truck: counted once, at the shelf.
    e1 = w.item(G1)
    w.event(today_at(3), e1, "arrived", to="shelf-a")
    w.event(today_at(2), e1, "moved", origin="shelf-a", to="dock", direction="out")
    w.event(today_at(2) + timedelta(minutes=5), e1, "moved", origin="dock", to="truck")
    # Staged in the yard yesterday, then out through the dock: counted at the shelf, not the yard.
    e2 = w.item(G1)
    w.event(today_at(5), e2, "arrived", to="shelf-a")
    w.event(today_at(1, hour=9), e2, "moved", origin="shelf-a", to="yard")
    w.event(today_at(1, hour=9) + timedelta(minutes=30), e2, "moved", origin="yard", to="dock", direction="out")
    # Came in through the dock (direction in): not consumption.
    e3 = w.item(G1)
    w.event(today_at(4), e3, "arrived", to="shelf-a")
    w.event(today_at(1), e3, "moved", origin="shelf-a", to="dock", direction="in")
    # Went to the filling line yesterday: consumed.
    e4 = w.item(G2)
    w.event(today_at(6), e4, "arrived", to="shelf-a")
    w.event(today_at(1), e4, "moved", origin="shelf-a", to="line-1")
    # Moved straight to another site two days ago: transferred.
    e5 = w.item(G1)
    w.event(today_at(6), e5, "arrived", to="shelf-a")
    w.event(today_at(2), e5, "moved", origin="shelf-a", to="other-shelf")
    return w


def test_consumption_follows_the_rule(shipped: World, db: Conn) -> None:
    written = run(db, refresh_consumption(today_at(10).date(), today_at(0).date()))
    assert written == 3
    daily = db.execute("select day, location_id, gtin, units from consumption_daily order by day, gtin").fetchall()
    assert daily == [
        (today_at(2).date(), "shelf-a", G1, 2),
        (today_at(1).date(), "shelf-a", G2, 1),
        (today_at(1).date(), "shelf-a", G1, 1),
    ]
    reasons = db.execute("select reason, count(*) from consumption_events group by reason order by reason").fetchall()
    assert reasons == [("consumed", 1), ("shipped", 2), ("transferred", 1)]
    # Refreshing again replaces, never adds.
    run(db, refresh_consumption(today_at(10).date(), today_at(0).date()))
    assert db.execute("select sum(units) from consumption_daily").fetchone() == (4,)


def test_days_of_inventory_is_on_hand_over_average_daily_consumption(shipped: World, db: Conn) -> None:
    run(db, refresh_consumption(today_at(30).date(), today_at(0).date()))
    row = db.execute(
        "select on_hand_units, consumed_units, average_daily_units, days_of_inventory"
        " from inventory_days_of_inventory where location_id = 'shelf-a' and gtin = %s",
        (G1,),
    ).fetchone()
    # 4 on hand; 3 consumed in 28 days → 3/28 a day → 4 / (3/28) = 37.33 days.
    assert row == (4, 3, pytest.approx(3 / 28), pytest.approx(4 * 28 / 3))
    site = db.execute(
        "select days_of_inventory from days_of_inventory(7) where location_id = 'site' and gtin = %s", (G1,)
    ).fetchone()
    assert site == (pytest.approx(4 * 7 / 3),)


def test_turnover_divides_consumption_by_the_average_on_hand(db: Conn) -> None:
    w = World(db)
    w.site("site")
    w.location("shelf-a", "site", "shelf")
    w.location("dock", "site", "dock_door")
    # On the shelf for the whole window: one unit on average.
    stayer = w.item(G1)
    w.event(today_at(40, hour=0), stayer, "arrived", to="shelf-a")
    # Five days on the shelf, then shipped: 5/28 of a unit on average, one unit consumed.
    leaver = w.item(G1)
    w.event(today_at(10, hour=0), leaver, "arrived", to="shelf-a")
    w.event(today_at(5, hour=0), leaver, "moved", origin="shelf-a", to="dock", direction="out")
    run(db, refresh_consumption(today_at(30).date(), today_at(0).date()))
    row = db.execute(
        "select consumed_units, average_on_hand_units, turnover_per_year from inventory_turnover(28)"
        " where location_id = 'shelf-a' and gtin = %s",
        (G1,),
    ).fetchone()
    average = 1 + 5 / 28
    assert row == (1, pytest.approx(average), pytest.approx(1 / average * 365 / 28))


def test_dead_stock_and_aging(db: Conn) -> None:
    w = World(db)
    w.site("site")
    w.location("shelf-a", "site", "shelf")
    w.location("dock", "site", "dock_door")
    old = w.stock(G1, "shelf-a", 2, since=datetime.now(UTC) - timedelta(days=120))
    w.stock(G2, "shelf-a", 1, since=datetime.now(UTC) - timedelta(days=10))
    dead = db.execute("select gtin, units, round(idle_days) from dead_stock('90 days')").fetchall()
    assert dead == [(G1, 2, 120)]
    # An item that left the site and came back is aged from its return.
    w.event(today_at(200), old[0], "arrived", to="shelf-a")
    w.event(today_at(150), old[0], "moved", origin="shelf-a", to="dock", direction="out")
    w.event(today_at(120), old[0], "arrived", to="shelf-a")
    row = db.execute(
        "select on_site_since, extract(day from age_in_location) from inventory_aging where epc = %s", (old[0],)
    ).fetchone()
    assert row is not None
    assert row[0] == today_at(120)
    assert row[1] == 120
