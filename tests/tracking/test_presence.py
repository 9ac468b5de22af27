"""Presence decisions as timelines: sightings and location clocks at time t, and the state and events expected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracking.policy import policy_for
from tracking.presence import (
    Direction,
    Event,
    ItemState,
    Place,
    Premises,
    Resolution,
    Sighting,
    portal_direction,
    resolve,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
PLACES = {
    "shelf-1": Place("shelf-1", "shelf", "berlin", policy_for("shelf")),
    "shelf-2": Place("shelf-2", "shelf", "berlin", policy_for("shelf")),
    "receiving": Place("receiving", "zone", "berlin", policy_for("zone")),
    "dock-1": Place("dock-1", "dock_door", "berlin", policy_for("dock_door")),
    "truck-1": Place("truck-1", "vehicle", None, policy_for("vehicle"), in_transit=True, latitude=52.7, longitude=12.6),
}


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seen(
    location: str, first: float, last: float, rssi: float | None = -60.0, direction: Direction | None = None
) -> Sighting:
    return Sighting(location, t(first), t(last), rssi, direction)


def at(**clocks: float) -> Premises:
    """The premises with each location's clock, in seconds after T0 (keyword: location with '_' for '-')."""
    return Premises(PLACES, {name.replace("_", "-"): t(s) for name, s in clocks.items()})


def present(location: str, since: float, last_seen: float) -> ItemState:
    return ItemState(location, "present", t(since), t(last_seen), site_id="berlin")


def located(resolution: Resolution) -> tuple[str | None, str | None]:
    assert resolution.state is not None
    return resolution.state.location_id, resolution.state.status


def test_a_tag_read_through_the_wall_by_the_next_shelf_does_not_flap() -> None:
    state = resolve(None, [seen("shelf-1", 0, 4, -55)], at(shelf_1=4)).state
    assert state == present("shelf-1", 0, 4)
    # The neighbouring antenna hears it too, within a few dB of the home antenna, on and off for ten minutes.
    for minute, (home, neighbour) in enumerate([(-55, -58), (-57, -54), (-56, -52), (-58, -53), (-54, -59)]):
        now = 60 * (minute + 1)
        sightings = [seen("shelf-1", 0, now, home), seen("shelf-2", 30, now - 1, neighbour)]
        resolution = resolve(state, sightings, at(shelf_1=now, shelf_2=now))
        assert resolution.events == ()
        state = resolution.state
    assert state is not None
    assert state.location_id == "shelf-1"


def test_a_tag_heard_clearly_stronger_elsewhere_moves_there() -> None:
    state = present("shelf-1", 0, 100)
    sightings = [seen("shelf-1", 0, 130, -70), seen("shelf-2", 110, 130, -50)]

    resolution = resolve(state, sightings, at(shelf_1=130, shelf_2=130))

    assert resolution.events == (Event(t(110), "moved", "shelf-1", "shelf-2"),)
    assert resolution.state == present("shelf-2", 110, 130)


def test_ties_and_small_margins_keep_the_current_location() -> None:
    state = present("shelf-1", 0, 100)
    resolution = resolve(state, [seen("shelf-1", 0, 130, -60), seen("shelf-2", 110, 130, -54)], at(shelf_1=130))
    assert located(resolution) == ("shelf-1", "present")
    assert resolution.events == ()


def test_arrival_waits_for_the_dwell_but_a_dock_door_does_not() -> None:
    assert resolve(None, [seen("shelf-1", 0, 1)], at(shelf_1=1)) == Resolution(None)

    arrived = resolve(None, [seen("shelf-1", 0, 2.5)], at(shelf_1=3))
    assert arrived.events == (Event(t(0), "arrived", None, "shelf-1"),)

    at_dock = resolve(None, [seen("dock-1", 5, 5)], at(dock_1=5))
    assert at_dock.events == (Event(t(5), "arrived", None, "dock-1"),)


def test_departure_waits_for_the_age_out_on_the_location_clock() -> None:
    state = present("shelf-1", 0, 10)
    sightings = [seen("shelf-1", 0, 10)]

    assert resolve(state, sightings, at(shelf_1=70)).state == state
    # The reader stopped reporting: its clock stands still, and so does the item.
    assert resolve(state, sightings, at(shelf_1=10)).state == state

    gone = resolve(state, sightings, at(shelf_1=70.5))
    assert gone.events == (Event(t(10), "departed", "shelf-1", None),)
    assert gone.state is not None
    assert (gone.state.location_id, gone.state.status, gone.state.since, gone.state.site_id) == (
        None, "departed", t(10), "berlin",
    )  # fmt: skip


def test_reads_elsewhere_age_out_a_location_whose_reader_went_quiet() -> None:
    # The receiving area's reader reports nothing once the area is empty, so its clock stops at the last read;
    # the item's own reads on the shelf show that time went on.
    state = present("receiving", 0, 30)
    sightings = [seen("receiving", 0, 30, -50), seen("shelf-1", 60, 400, -65)]

    resolution = resolve(state, sightings, at(receiving=30, shelf_1=400))

    assert resolution.events == (Event(t(60), "moved", "receiving", "shelf-1"),)


def test_a_reader_reporting_once_a_minute_ages_out_after_three_missed_reports() -> None:
    state = present("shelf-1", 0, 600)
    sightings = [seen("shelf-1", 0, 600, -60)]
    read_every_minute = [Sighting("shelf-1", t(0), t(600), -60.0, reads=11)]

    assert resolve(state, read_every_minute, at(shelf_1=770)).state == state
    assert resolve(state, sightings, at(shelf_1=770)).events == (Event(t(600), "departed", "shelf-1", None),)
    assert resolve(state, read_every_minute, at(shelf_1=790)).events == (Event(t(600), "departed", "shelf-1", None),)


def test_coming_in_through_the_dock_door_records_the_direction() -> None:
    # Seen by the outer antenna first, then the inner one: direction in; then received.
    door = seen("dock-1", 0, 20, -45, direction="in")
    state = resolve(None, [door], at(dock_1=20)).state
    assert state == ItemState("dock-1", "present", t(0), t(20), site_id="berlin")

    resolution = resolve(state, [door, seen("receiving", 22, 60, -62)], at(dock_1=60, receiving=60))

    assert resolution.events == (Event(t(22), "moved", "dock-1", "receiving", "in"),)
    assert located(resolution) == ("receiving", "present")


def test_going_out_through_the_dock_door_is_a_pass_then_a_departure() -> None:
    state = present("receiving", 0, 100)
    sightings = [seen("receiving", 0, 100), seen("dock-1", 105, 125, -40, direction="out")]

    resolution = resolve(state, sightings, at(receiving=200, dock_1=200))

    assert resolution.events == (
        Event(t(105), "moved", "receiving", "dock-1", "out"),
        Event(t(125), "departed", "dock-1", None, "out"),
    )
    assert located(resolution) == (None, "departed")


def test_a_late_read_of_the_previous_location_does_not_take_the_item_back() -> None:
    state = present("shelf-2", 100, 130)
    # A read of shelf-1 from before the move arrives now, strong, and shelf-1's clock says it is fresh.
    sightings = [seen("shelf-1", 0, 95, -40), seen("shelf-2", 100, 130, -60)]
    assert resolve(state, sightings, at(shelf_1=120, shelf_2=130)) == Resolution(state)

    departed = ItemState(None, "departed", t(200), t(200), site_id="berlin")
    assert resolve(departed, [seen("shelf-1", 0, 190, -40)], at(shelf_1=195)) == Resolution(departed)


def test_reads_after_a_departure_bring_the_item_back() -> None:
    departed = ItemState(None, "departed", t(200), t(200), site_id="berlin")
    resolution = resolve(departed, [seen("shelf-1", 300, 305)], at(shelf_1=305))
    assert resolution.events == (Event(t(300), "arrived", None, "shelf-1"),)


def test_an_item_seen_only_in_the_past_came_and_went() -> None:
    resolution = resolve(None, [seen("shelf-1", 0, 30)], at(shelf_1=3600))
    assert resolution.events == (
        Event(t(0), "arrived", None, "shelf-1"),
        Event(t(30), "departed", "shelf-1", None),
    )


def test_an_unread_item_follows_its_container_and_its_own_reads_win() -> None:
    pallet = present("dock-1", 50, 50)
    inside = ItemState("shelf-1", "present", t(0), t(10), site_id="berlin", container_epc="PALLET")
    # Shielded inside the pallet: its own shelf sighting has aged out, the pallet was read at the dock.
    resolution = resolve(inside, [seen("shelf-1", 0, 10)], at(shelf_1=200), container=pallet)
    assert resolution.events == (Event(t(50), "moved", "shelf-1", "dock-1"),)
    assert resolution.state is not None
    assert resolution.state.container_epc == "PALLET"

    truck = ItemState("truck-1", "in_transit", t(90), t(90), latitude=52.7, longitude=12.6)
    aboard = resolve(resolution.state, [seen("shelf-1", 0, 10)], at(shelf_1=200), container=truck)
    assert aboard.state is not None
    assert (aboard.state.location_id, aboard.state.status, aboard.state.latitude) == ("truck-1", "in_transit", 52.7)

    # Read by itself on a shelf while the pallet is elsewhere: it is where its own reads say.
    own = resolve(aboard.state, [seen("shelf-2", 300, 310)], at(shelf_2=310), container=truck)
    assert located(own) == ("shelf-2", "present")


def test_an_item_placed_aboard_a_vehicle_stays_there_until_read_elsewhere() -> None:
    aboard = ItemState("truck-1", "in_transit", t(100), t(90), latitude=52.7, longitude=12.6)
    assert resolve(aboard, [seen("dock-1", 80, 90, direction="out")], at(dock_1=4000)) == Resolution(aboard)

    unloaded = resolve(aboard, [seen("dock-1", 5000, 5010, direction="in")], at(dock_1=5010))
    assert unloaded.events == (Event(t(5000), "moved", "truck-1", "dock-1", "in"),)


@pytest.mark.parametrize(
    ("sides", "expected"),
    [
        ((10, 20, 0, 12), "in"),  # out first, in last
        ((0, 8, 6, 20), "out"),
        ((None, None, 0, 20), None),  # one side only: not crossed (yet)
        ((0, 10, 0, 10), None),
    ],
)
def test_portal_direction_is_the_side_seen_later(sides: tuple[float | None, ...], expected: str | None) -> None:
    in_first, in_last, out_first, out_last = (None if s is None else t(s) for s in sides)
    assert portal_direction(in_first, in_last, out_first, out_last) == expected
