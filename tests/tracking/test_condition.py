"""Experienced conditions on the real database: stays joined to the sensors of the places an item was in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.tracking.inventory_world import G1, Conn, World
from tracking.condition import experienced_conditions, lot_conditions
from tracking.inventory_plan import NotFoundError

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def at(minutes: float) -> datetime:
    return T0 + minutes * MINUTE


@pytest.fixture
def cold_chain(db: Conn) -> World:
    """A cold room with its own probe, and a zone with a probe whose shelf has none (it inherits the zone's).

    Cold room: 5 °C every 5 minutes, but 12 °C at minute 70 (after the item left: must not count).
    Zone:      9 °C every 5 minutes from minute 60 to 85, then 7 °C.
    """
    w = World(db)
    w.site("site")
    w.location("cold-room", "site", "cold_room")
    w.location("zone", "site", "zone")
    w.location("shelf", "zone", "shelf")
    w.sensor("probe-cold", "cold-room")
    w.sensor("probe-zone", "zone")
    w.sku(G1, "Vaccine", min_c=2.0, max_c=8.0)
    cold = [5.0] * 40
    cold[16] = 12.0  # minute -10 + 16 * 5 = 70
    w.samples("probe-cold", at(-10), 5 * MINUTE, cold)
    w.samples("probe-zone", at(60), 5 * MINUTE, [9.0] * 6 + [7.0] * 6)
    w.samples("probe-zone", at(60), 5 * MINUTE, [70.0] * 12, quantity="humidity_pct")
    return w


def _through_both(w: World, lot: str | None = None) -> str:
    epc = w.item(G1, lot=lot)
    w.event(at(0), epc, "arrived", to="cold-room")
    w.event(at(60), epc, "moved", origin="cold-room", to="shelf")
    w.event(at(120), epc, "departed", origin="shelf")
    return epc


def test_experienced_temperature_through_two_locations_with_different_sensors(cold_chain: World, db: Conn) -> None:
    epc = _through_both(cold_chain)
    seen = experienced_conditions(db, epc)
    assert [(s.location_id, s.from_at, s.until_at, s.sensor_ids) for s in seen.stays] == [
        ("cold-room", at(0), at(60), ("probe-cold",)),
        ("shelf", at(60), at(120), ("probe-zone",)),  # the shelf speaks through its zone's probe
    ]
    t = seen.temperature
    assert t is not None
    assert t.covered_s == 120 * 60
    assert (t.minimum_c, t.maximum_c) == (5.0, 9.0)  # the cold room's 12 °C came after the item left
    assert t.mean_c == pytest.approx((60 * 5 + 30 * 9 + 30 * 7) / 120)
    assert t.excursions.above_s == 30 * 60
    assert t.excursions.longest_above_s == 30 * 60
    assert t.excursions.below_s == 0
    assert (t.range_min_c, t.range_max_c) == (2.0, 8.0)
    h = seen.humidity
    assert h is not None
    assert h.covered_s == 60 * 60  # only the zone measures humidity
    assert h.excursions.above_s == 0  # the SKU sets no humidity range


def test_a_period_narrows_the_stays(cold_chain: World, db: Conn) -> None:
    epc = _through_both(cold_chain)
    seen = experienced_conditions(db, epc, since=at(30), until=at(75))
    assert [(s.location_id, s.from_at, s.until_at) for s in seen.stays] == [
        ("cold-room", at(30), at(60)),
        ("shelf", at(60), at(75)),
    ]
    assert seen.temperature is not None
    assert seen.temperature.excursions.above_s == 15 * 60


def test_consecutive_and_cumulative_time_above_range(db: Conn) -> None:
    w = World(db)
    w.site("site")
    w.location("room", "site", "cold_room")
    w.sensor("probe", "room")
    w.sku(G1, "Vaccine", min_c=2.0, max_c=8.0)
    # Every 10 minutes: 9, 9, 7, 9, 9, 9, 7, 1 → 20 + 30 minutes above (longest 30), 10 minutes below.
    w.samples("probe", at(0), 10 * MINUTE, [9, 9, 7, 9, 9, 9, 7, 1])
    epc = w.item(G1)
    w.event(at(0), epc, "arrived", to="room")
    seen = experienced_conditions(db, epc, until=at(80))
    assert seen.temperature is not None
    e = seen.temperature.excursions
    assert (e.above_s, e.longest_above_s) == (50 * 60, 30 * 60)
    assert (e.below_s, e.longest_below_s) == (10 * 60, 10 * 60)


def test_mean_kinetic_temperature_of_an_item(db: Conn) -> None:
    """An hour at 20 °C then an hour at 30 °C, sampled every 10 minutes: MKT 26.26 °C (worked by hand in
    tests/tracking/test_condition_series.py)."""
    w = World(db)
    w.site("site")
    w.location("room", "site", "zone")
    w.sensor("probe", "room")
    w.samples("probe", at(0), 10 * MINUTE, [20.0] * 6 + [30.0] * 6)
    epc = w.item(G1)
    w.event(at(0), epc, "arrived", to="room")
    seen = experienced_conditions(db, epc, until=at(120))
    assert seen.temperature is not None
    assert seen.temperature.mean_kinetic_c == pytest.approx(26.26, abs=0.005)
    assert seen.temperature.excursions.above_s == 0  # no SKU, no range


def test_time_without_a_sensor_or_fresh_data_is_not_covered(db: Conn) -> None:
    w = World(db)
    w.site("site")
    w.location("room", "site", "zone")
    w.location("corridor", "site", "zone")
    w.sensor("probe", "room")
    w.samples("probe", at(0), 10 * MINUTE, [4.0, 4.0])  # then silent
    epc = w.item(G1)
    w.event(at(0), epc, "arrived", to="room")
    w.event(at(60), epc, "moved", origin="room", to="corridor")
    seen = experienced_conditions(db, epc, until=at(90))
    assert seen.stays[1].sensor_ids == ()
    assert seen.temperature is not None
    assert seen.temperature.covered_s == 25 * 60  # 10 minutes, then the last sample held for 15


def test_lot_conditions_take_the_worst_item(cold_chain: World, db: Conn) -> None:
    cold_chain.db.execute("insert into lots (lot, gtin) values ('L-88', %s)", (G1,))
    warm = _through_both(cold_chain, lot="L-88")
    cold = cold_chain.item(G1, lot="L-88")
    cold_chain.event(at(0), cold, "arrived", to="cold-room")
    cold_chain.event(at(60), cold, "departed", origin="cold-room")
    lot = lot_conditions(db, "L-88", until=at(200))
    assert lot.item_count == 2
    assert lot.temperature is not None
    assert lot.temperature.excursions.longest_above_s == 30 * 60
    assert lot.temperature.maximum_c == 9.0
    by_epc = {item.epc: item.temperature for item in lot.items}
    cold_t, warm_t = by_epc[cold], by_epc[warm]
    assert cold_t is not None
    assert warm_t is not None
    assert cold_t.excursions.above_s == 0
    assert lot.temperature.mean_kinetic_c == warm_t.mean_kinetic_c > cold_t.mean_kinetic_c


def test_unknown_item_and_lot(db: Conn) -> None:
    with pytest.raises(NotFoundError):
        experienced_conditions(db, "nope")
    with pytest.raises(NotFoundError):
        lot_conditions(db, "nope")


def test_location_temperature_view_gives_the_band(cold_chain: World, db: Conn) -> None:
    db.execute("update locations set temperature_min_c = 2, temperature_max_c = 8 where id = 'zone'")
    rows = db.execute(
        "select temperature_c, temperature_min_c, temperature_max_c, band from location_temperature"
        " where location_id = 'shelf' and observed_at between %s and %s order by observed_at",
        (at(80), at(90)),
    ).fetchall()
    assert rows == [(9.0, 2.0, 8.0, "above"), (9.0, 2.0, 8.0, "above"), (7.0, 2.0, 8.0, "within")]
