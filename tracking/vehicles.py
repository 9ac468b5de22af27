"""Vehicles: a GPS tracker on a vehicle location (``devices.location_id`` of kind 'vehicle') places it; site
geofences say whether it is at a site or on the road. What is aboard (``item_state.location_id`` is the vehicle,
directly or through its container) shares its position, is ``in_transit`` on the road, and gets 'departed'
(from the site, to the vehicle) and 'arrived' (from the vehicle, to the site) events when it leaves or enters a
site's geofence.

Positions are read by the resolver from ``telemetry`` (quantity 'position'), not by the ingest step: fixes come
a few a minute per vehicle, far off the hot path, and the resolver orders them by device time. A fix older than
the newest one already used is ignored, so a late fix never moves a vehicle back.

Loading: a vehicle is loaded at a dock door and then drives off, and nothing reads the tags inside a closed
truck. So items that left a site through a portal, going out (or in an unknown direction), within
``LOADING_WINDOW_S`` before a vehicle left that site's geofence, and have not been seen since, are placed aboard
that vehicle: 'arrived' from the door to the vehicle at the time they went through the door, and 'departed' from
the site to the vehicle when it left. Goods shipped to a customer in that window are taken to be aboard too: the
registry does not say which vehicle is at which door.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

import psycopg

from tracking.geofence import Geofence, site_at
from tracking.policy import LOADING_WINDOW_S
from tracking.premises import VehicleFix, load_vehicle_fixes

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

_MAX_FIXES: Final = 10_000
_NEW_FIXES: Final = """
select t.device_id, t.observed_at, t.latitude, t.longitude
from telemetry t join unnest(%(devices)s::text[], %(after)s::timestamptz[]) as v(device_id, after)
  on t.device_id = v.device_id
where t.quantity = 'position' and t.observed_at > coalesce(v.after, '-infinity')
  and t.latitude is not null and t.longitude is not null
order by t.observed_at
limit %(limit)s
"""
_SAVE_POSITION: Final = """
insert into vehicle_positions as v (vehicle_id, device_id, observed_at, latitude, longitude, site_id, entered_at,
                                    left_site_id, left_at)
values (%(vehicle_id)s, %(device_id)s, %(observed_at)s, %(latitude)s, %(longitude)s, %(site_id)s, %(entered_at)s,
        %(left_site_id)s, %(left_at)s)
on conflict (vehicle_id) do update set
    device_id = excluded.device_id, observed_at = excluded.observed_at, latitude = excluded.latitude,
    longitude = excluded.longitude, site_id = excluded.site_id, entered_at = excluded.entered_at,
    left_site_id = excluded.left_site_id, left_at = excluded.left_at, updated_at = now()
"""
_ABOARD: Final = """
update item_state set status = %(status)s, site_id = %(site_id)s, latitude = %(latitude)s,
    longitude = %(longitude)s, updated_at = now()
where location_id = %(vehicle_id)s and status <> 'departed'
  and (status, site_id, latitude, longitude) is distinct from (%(status)s, %(site_id)s, %(latitude)s, %(longitude)s)
"""
_CROSSING_EVENTS: Final = """
insert into location_events (at, epc, kind, from_location, to_location)
select %(at)s, epc, %(kind)s, %(from)s, %(to)s from item_state
where location_id = %(vehicle_id)s and status <> 'departed' and since <= %(at)s
"""
_LOADED: Final = """
with loaded as (
    select s.epc, s.since, e.from_location from item_state s
    join location_events e on e.epc = s.epc and e.at = s.since and e.kind = 'departed'
    join locations l on l.id = e.from_location and l.kind = 'dock_door'
    where s.status = 'departed' and s.site_id = %(site_id)s
      and s.since between %(left_at)s - make_interval(secs => %(window_s)s) and %(left_at)s
      and coalesce(e.direction, 'out') = 'out'
),
placed as (
    update item_state s set location_id = %(vehicle_id)s, status = %(status)s, site_id = %(current_site)s,
        latitude = %(latitude)s, longitude = %(longitude)s, updated_at = now()
    from loaded where s.epc = loaded.epc
    returning s.epc
)
insert into location_events (at, epc, kind, from_location, to_location)
select loaded.since, loaded.epc, 'arrived', loaded.from_location, %(vehicle_id)s from loaded join placed using (epc)
union all
select %(left_at)s, loaded.epc, 'departed', %(site_id)s, %(vehicle_id)s from loaded join placed using (epc)
"""


@dataclass(frozen=True, slots=True)
class Crossing:
    """A vehicle entering (``to_site``) or leaving (``from_site``) a site geofence at ``at``."""

    at: datetime
    from_site: str | None
    to_site: str | None


@dataclass(frozen=True, slots=True)
class Track:
    """A vehicle's position after this tick's fixes, its geofence crossings, and its latest departure."""

    fix: VehicleFix
    device_id: str
    crossings: tuple[Crossing, ...]
    entered_at: datetime | None
    left_site_id: str | None
    left_at: datetime | None


def follow(
    previous: VehicleFix | None,
    entered_at: datetime | None,
    left: tuple[str | None, datetime | None],
    fixes: Sequence[tuple[datetime, float, float]],
    fences: Mapping[str, Geofence],
    vehicle_id: str,
    device_id: str,
) -> Track | None:
    """Fold fixes (in time order) into a vehicle's track; the first fix of a vehicle crosses nothing."""
    fix, crossings = previous, []
    left_site_id, left_at = left
    for observed_at, latitude, longitude in fixes:
        if fix is not None and observed_at <= fix.observed_at:
            continue  # a late fix never moves the vehicle back
        site_id = site_at(fences, (latitude, longitude))
        if fix is not None and site_id != fix.site_id:
            crossings.append(Crossing(observed_at, fix.site_id, site_id))
            if fix.site_id is not None:
                left_site_id, left_at = fix.site_id, observed_at
            entered_at = observed_at if site_id is not None else None
        elif fix is None:
            entered_at = observed_at if site_id is not None else None
        fix = VehicleFix(vehicle_id, observed_at, latitude, longitude, site_id)
    if fix is None or fix == previous:
        return None
    return Track(fix, device_id, tuple(crossings), entered_at, left_site_id, left_at)


async def advance(conn: Conn, fences: Mapping[str, Geofence]) -> tuple[dict[str, VehicleFix], list[Track]]:
    """Read new fixes of every vehicle's tracker; returns every vehicle's position and those that moved."""
    fixes = await load_vehicle_fixes(conn)
    cursor = await conn.execute(
        "select d.id, d.location_id from devices d join locations l on l.id = d.location_id"
        " where l.kind = 'vehicle' and d.assigned order by d.id"
    )
    trackers = {row[0]: row[1] for row in await cursor.fetchall()}
    if not trackers:
        return fixes, []
    known = await _departures(conn)
    after = [fixes[v].observed_at if v in fixes else None for v in trackers.values()]
    cursor = await conn.execute(_NEW_FIXES, {"devices": list(trackers), "after": after, "limit": _MAX_FIXES})
    per_device: dict[str, list[tuple[datetime, float, float]]] = {}
    for device_id, observed_at, latitude, longitude in await cursor.fetchall():
        if math.isfinite(latitude) and math.isfinite(longitude):
            per_device.setdefault(device_id, []).append((observed_at, latitude, longitude))
    tracks = []
    for device_id, points in per_device.items():
        vehicle_id = trackers[device_id]
        entered_at, left = known.get(vehicle_id, (None, (None, None)))
        track = follow(fixes.get(vehicle_id), entered_at, left, points, fences, vehicle_id, device_id)
        if track is not None:
            tracks.append(track)
            fixes[vehicle_id] = track.fix
    return fixes, tracks


async def _departures(conn: Conn) -> dict[str, tuple[datetime | None, tuple[str | None, datetime | None]]]:
    cursor = await conn.execute("select vehicle_id, entered_at, left_site_id, left_at from vehicle_positions")
    return {row[0]: (row[1], (row[2], row[3])) for row in await cursor.fetchall()}


async def save(conn: Conn, track: Track) -> None:
    """Store the vehicle's position and update what is aboard: position, status, and site crossings."""
    fix = track.fix
    await conn.execute(
        _SAVE_POSITION,
        {"vehicle_id": fix.vehicle_id, "device_id": track.device_id, "observed_at": fix.observed_at,
         "latitude": fix.latitude, "longitude": fix.longitude, "site_id": fix.site_id,
         "entered_at": track.entered_at, "left_site_id": track.left_site_id, "left_at": track.left_at},
    )  # fmt: skip
    for crossing in track.crossings:
        if crossing.from_site is not None:
            await _crossing_events(conn, fix.vehicle_id, crossing.at, "departed", crossing.from_site, fix.vehicle_id)
        if crossing.to_site is not None:
            await _crossing_events(conn, fix.vehicle_id, crossing.at, "arrived", fix.vehicle_id, crossing.to_site)
    await conn.execute(_ABOARD, _aboard(fix))


async def _crossing_events(conn: Conn, vehicle_id: str, at: datetime, kind: str, origin: str, to: str) -> None:
    await conn.execute(_CROSSING_EVENTS, {"at": at, "kind": kind, "from": origin, "to": to, "vehicle_id": vehicle_id})


def _aboard(fix: VehicleFix) -> dict[str, Any]:
    return {
        "vehicle_id": fix.vehicle_id,
        "status": "in_transit" if fix.site_id is None else "present",
        "site_id": fix.site_id,
        "latitude": fix.latitude,
        "longitude": fix.longitude,
    }


async def place_loaded(conn: Conn, fixes: Mapping[str, VehicleFix]) -> int:
    """Put items that went out through a door just before a vehicle left that site aboard it; returns how many."""
    cursor = await conn.execute(
        "select vehicle_id, left_site_id, left_at from vehicle_positions where left_at is not null"
    )
    placed = 0
    for vehicle_id, left_site_id, left_at in await cursor.fetchall():
        fix = fixes.get(vehicle_id)
        if fix is None:
            continue
        params = {**_aboard(fix), "current_site": fix.site_id, "site_id": left_site_id, "left_at": left_at,
                  "window_s": LOADING_WINDOW_S}  # fmt: skip
        result = await conn.execute(_LOADED, params)
        placed += max(result.rowcount, 0)
    return placed
