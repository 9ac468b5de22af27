"""Presence: from an item's sightings to where it is now and the events that got it there. Pure functions, no I/O.

The input per item is its state (where the resolver last put it), its sightings (``tag_sightings``: one row per
location, first/last seen of the current visit, smoothed RSSI) and, for the locations, their policy
(tracking/policy.py) and their clock: the newest device time their readers have reported (a read or a
heartbeat). Every decision is taken in device time, so a backlog, a slow reader or a replay decides the same.

- Fresh: a sighting is fresh while its location's clock, and the item's newest read anywhere, are within the
  age-out of its last read there (or within three of the tag's usual read intervals there, for a reader that
  reports seldom).
- Current: the item stays where it is while the sighting there is fresh. Another fresh location takes it only
  if its smoothed RSSI is stronger by the hysteresis margin (the current location wins ties): a tag read
  through a wall does not flap between two zones.
- Arrived: a location is a candidate once the tag has been seen there for its dwell (first to last read).
- Departed: when the current sighting is no longer fresh, the item moves to the strongest fresh candidate, or,
  if there is none, departs, at the time it was last seen there.
- Late reads: only sightings seen after the item arrived where it is (or after it departed) are candidates,
  so a late read of where it was before never takes it back there.
- Portals: a stale portal (dock door) visit between where the item was and where it is now is kept as a pass
  through it, with its direction (from the order in which the door's two sides saw the tag).
- Containers: an item without reads of its own follows its container.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, TypeAlias

from tracking.policy import AGE_OUT_READ_INTERVALS, PORTAL_KINDS, PresencePolicy

Status: TypeAlias = Literal["present", "departed", "in_transit"]
EventKind: TypeAlias = Literal["arrived", "departed", "moved"]
Direction: TypeAlias = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Place:
    """A location as presence sees it."""

    id: str
    kind: str
    site_id: str | None
    policy: PresencePolicy
    in_transit: bool = False
    """A vehicle outside every site geofence: what is aboard is in transit."""
    latitude: float | None = None
    """A vehicle's latest GPS fix; what is aboard shares it."""
    longitude: float | None = None

    @property
    def portal(self) -> bool:
        return self.kind in PORTAL_KINDS


@dataclass(frozen=True, slots=True)
class Sighting:
    """One ``tag_sightings`` row of the item: its current visit at one location."""

    location_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    rssi_dbm: float | None = None
    direction: Direction | None = None
    """At a portal: which way the tag crossed it (None while only one side has seen it)."""
    reads: int = 1

    def age_out(self, policy: PresencePolicy) -> timedelta:
        """The policy's age-out, or a few of the tag's own read intervals here if that is longer.

        The interval is estimated as if one more gap of the age-out's length came before the visit, so that a
        young visit with two reads seconds apart does not claim a cadence its reader does not have."""
        if self.reads < 2:
            return policy.age_out
        interval = (self.last_seen_at - self.first_seen_at + policy.age_out) / self.reads
        return max(policy.age_out, AGE_OUT_READ_INTERVALS * interval)


@dataclass(frozen=True, slots=True)
class ItemState:
    """An ``item_state`` row. ``last_seen_at`` is when the item was last seen where it is (or departed from)."""

    location_id: str | None
    status: Status
    since: datetime
    last_seen_at: datetime
    site_id: str | None = None
    container_epc: str | None = None
    latitude: float | None = None
    longitude: float | None = None

    def seen_at(self, last_seen_at: datetime) -> ItemState:
        """The same state, last seen later (what most ticks decide for most items: built directly, it costs a
        fraction of ``dataclasses.replace``)."""
        return ItemState(self.location_id, self.status, self.since, last_seen_at, self.site_id, self.container_epc,
                         self.latitude, self.longitude)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """A ``location_events`` row."""

    at: datetime
    kind: EventKind
    from_location: str | None
    to_location: str | None
    direction: Direction | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    state: ItemState | None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Premises:
    """The locations presence knows and their clocks at this moment."""

    places: Mapping[str, Place]
    clocks: Mapping[str, datetime] = field(default_factory=dict)
    item_seen_at: datetime | None = None
    """The newest read of the item being resolved, anywhere: time has passed at least that far everywhere."""

    def fresh(self, sighting: Sighting) -> bool:
        """Neither the location's clock nor the item's own newest read elsewhere has passed the sighting's last read
        by more than the age-out, or by more than a few of the tag's own read intervals there if that is longer.

        The item's reads elsewhere move the clock for a location whose reader reports nothing while it is empty
        (and sends no heartbeats): an item seen on a shelf for minutes has left the staging area it came from."""
        clock = self.clocks.get(sighting.location_id, sighting.last_seen_at)
        if self.item_seen_at is not None and self.item_seen_at > clock:
            clock = self.item_seen_at
        return clock - sighting.last_seen_at <= sighting.age_out(self.places[sighting.location_id].policy)

    def dwelled(self, sighting: Sighting) -> bool:
        return sighting.last_seen_at - sighting.first_seen_at >= self.places[sighting.location_id].policy.dwell


def portal_direction(
    in_first_at: datetime | None,
    in_last_at: datetime | None,
    out_first_at: datetime | None,
    out_last_at: datetime | None,
) -> Direction | None:
    """Which way a tag crossed a portal: the side that saw it later (by the middle of each side's reads) is where
    it went; seen on 'out' then on 'in' is 'in'. None until both sides have seen it."""
    if in_first_at is None or in_last_at is None or out_first_at is None or out_last_at is None:
        return None
    in_middle = in_first_at + (in_last_at - in_first_at) / 2
    out_middle = out_first_at + (out_last_at - out_first_at) / 2
    if in_middle == out_middle:
        return None
    return "in" if in_middle > out_middle else "out"


def resolve(
    state: ItemState | None, sightings: Sequence[Sighting], premises: Premises, container: ItemState | None = None
) -> Resolution:
    """Where the item is now, and the events since ``state``; the state is returned unchanged when nothing is new.

    ``container`` is the state of the container the item is in, if it is in one.
    """
    seen = [s for s in sightings if s.location_id in premises.places]
    if seen:
        premises = Premises(premises.places, premises.clocks, max(s.last_seen_at for s in seen))
    if state is not None and state.location_id is not None:
        current = next((s for s in seen if s.location_id == state.location_id), None)
        if current is not None and current.last_seen_at >= state.since:
            if premises.fresh(current):
                return _hold_or_switch(state, current, seen, premises)
            return _journey(state, current, seen, premises, container)
        # Placed here without reads of its own (by its container, or loaded into a vehicle).
        return _journey(state, None, seen, premises, container)
    return _journey(state, None, seen, premises, container)


def _hold_or_switch(state: ItemState, current: Sighting, seen: list[Sighting], premises: Premises) -> Resolution:
    margin = premises.places[current.location_id].policy.hysteresis_db
    rivals = [
        s
        for s in seen
        if s is not current
        and s.last_seen_at > state.since
        and s.rssi_dbm is not None
        and current.rssi_dbm is not None
        and s.rssi_dbm > current.rssi_dbm + margin
        and premises.fresh(s)
        and premises.dwelled(s)
    ]
    if not rivals:
        if current.last_seen_at > state.last_seen_at:
            return Resolution(state.seen_at(current.last_seen_at))
        return Resolution(state)
    best = max(rivals, key=_strength)
    # A visit that began after the item came here dates the move; otherwise the move is as recent as the reads.
    at = best.first_seen_at if best.first_seen_at > state.since else min(best.last_seen_at, current.last_seen_at)
    trip = _Trip(state, premises)
    trip.go(best, at, leaving=current)
    return trip.resolution()


def _journey(
    state: ItemState | None,
    current: Sighting | None,
    seen: list[Sighting],
    premises: Premises,
    container: ItemState | None,
) -> Resolution:
    """The item is not (or no longer) held where it is by fresh reads: follow what was seen after."""
    if current is not None:
        after = current.last_seen_at  # the current visit aged out
    elif state is None:
        after = None
    else:
        after = state.since if state.location_id is not None else state.last_seen_at
    later = [
        s
        for s in seen
        if (current is None or s.location_id != current.location_id)
        and (after is None or s.last_seen_at > after)
        and premises.dwelled(s)
    ]
    fresh = [s for s in later if premises.fresh(s)]
    passes = sorted((s for s in later if premises.places[s.location_id].portal and s not in fresh), key=_start)
    if not fresh and not passes and (state is None or state.location_id is None) and container is None and later:
        passes = [max(later, key=lambda s: s.last_seen_at)]  # seen only in the past: it came and went
    trip = _Trip(state, premises)
    leaving = current
    for visit in passes:
        trip.go(visit, _entered(visit, leaving), leaving)
        leaving = visit
    if fresh:
        best = max(fresh, key=_strength)
        trip.go(best, _entered(best, leaving), leaving)
    elif container is not None and not passes:
        trip.follow(container)
    elif passes or current is not None:
        trip.depart(leaving)
    return trip.resolution()


def _entered(visit: Sighting, leaving: Sighting | None) -> datetime:
    """When the item got to ``visit``: its first read there, or if the visits overlap, its last read before."""
    if leaving is None:
        return visit.first_seen_at
    return max(visit.first_seen_at, min(leaving.last_seen_at, visit.last_seen_at))


def _strength(s: Sighting) -> tuple[float, datetime]:
    return (s.rssi_dbm if s.rssi_dbm is not None else float("-inf"), s.last_seen_at)


def _start(s: Sighting) -> datetime:
    return s.first_seen_at


class _Trip:
    """Events in order, each no earlier than the one before it (nor than the state's ``since``)."""

    def __init__(self, state: ItemState | None, premises: Premises) -> None:
        self._start = state
        self._state = state
        self._premises = premises
        self._events: list[Event] = []

    @property
    def location_id(self) -> str | None:
        return None if self._state is None else self._state.location_id

    def _not_before(self, at: datetime) -> datetime:
        return at if self._state is None else max(at, self._state.since)

    def go(self, visit: Sighting, at: datetime, leaving: Sighting | None) -> None:
        """Arrive at (or move to) the visit's location; ``leaving`` is the visit it leaves, if it had one."""
        at = self._not_before(at)
        place = self._premises.places[visit.location_id]
        origin = self.location_id
        direction = visit.direction if place.portal else None
        if direction is None and leaving is not None and self._premises.places[leaving.location_id].portal:
            direction = leaving.direction
        kind: EventKind = "arrived" if origin is None else "moved"
        self._events.append(Event(at, kind, origin, visit.location_id, direction))
        self._state = ItemState(
            location_id=visit.location_id,
            status="in_transit" if place.in_transit else "present",
            since=at,
            last_seen_at=visit.last_seen_at,
            site_id=place.site_id,
            container_epc=None if self._start is None else self._start.container_epc,
            latitude=place.latitude,
            longitude=place.longitude,
        )

    def depart(self, leaving: Sighting | None) -> None:
        """Leave the current location, at the time the item was last seen there."""
        if self._state is None or self._state.location_id is None:
            return
        last = leaving.last_seen_at if leaving is not None else self._state.last_seen_at
        at = self._not_before(last)
        portal = self._premises.places.get(self._state.location_id)
        direction = leaving.direction if leaving is not None and portal is not None and portal.portal else None
        self._events.append(Event(at, "departed", self._state.location_id, None, direction))
        self._state = replace(self._state, location_id=None, status="departed", since=at, last_seen_at=last,
                              latitude=None, longitude=None)  # fmt: skip

    def follow(self, container: ItemState) -> None:
        """Take the container's location: the item is inside it and not read itself."""
        if container.location_id is None:
            self.depart(None)
            return
        if self._state is not None and self._state.location_id == container.location_id:
            if (self._state.status, self._state.latitude, self._state.longitude) != (
                container.status, container.latitude, container.longitude
            ):  # fmt: skip
                self._state = replace(self._state, status=container.status, site_id=container.site_id,
                                      latitude=container.latitude, longitude=container.longitude)  # fmt: skip
            return
        at = self._not_before(container.since)
        origin = self.location_id
        kind: EventKind = "arrived" if origin is None else "moved"
        self._events.append(Event(at, kind, origin, container.location_id))
        last_seen = at if self._state is None else self._state.last_seen_at
        self._state = ItemState(
            location_id=container.location_id,
            status=container.status,
            since=at,
            last_seen_at=last_seen,
            site_id=container.site_id,
            container_epc=None if self._start is None else self._start.container_epc,
            latitude=container.latitude,
            longitude=container.longitude,
        )

    def resolution(self) -> Resolution:
        return Resolution(self._state, tuple(self._events))
