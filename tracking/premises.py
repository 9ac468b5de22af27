"""What the resolver reads about the locations each tick: their kind, site and policy, vehicles' positions, site
geofences, and each location's clock.

A location's clock is the newest device time its readers have reported: the newest read of any of their antennas
(``antenna_activity``, kept by ingest) or their newest heartbeat (``device_events`` with online = true, antenna
-1). After a reader was lost (an offline event, such as its last will), its heartbeats count again only once it
has delivered a read newer than the loss: a reader coming back says it is online before it sends what it read,
and its birth message must not age out everything it last saw before the outage.

A reader covers the locations of its antennas and, for antennas without a row, its own location. Taking a
reader's clock from all its antennas lets an empty shelf age out the last item taken from it while the reader
reads the shelf next to it; a reader that stops reporting stops its locations' clocks, and what it last saw stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

import psycopg

from tracking.geofence import Geofence
from tracking.policy import policy_for
from tracking.presence import Place

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

_CLOCKS: Final = """
with cover as (
    select a.device_id, a.location_id from antennas a join devices d on d.id = a.device_id where d.assigned
    union
    select id, location_id from devices where kind = 'rfid_reader' and assigned and location_id is not null
),
reader as (
    select c.device_id,
        (select max(x.last_read_at) from antenna_activity x where x.device_id = c.device_id) as read_at,
        (select max(e.observed_at) from device_events e
         where e.device_id = c.device_id and e.antenna = -1 and e.online) as alive_at,
        (select max(e.observed_at) from device_events e
         where e.device_id = c.device_id and e.antenna = -1 and not e.online) as lost_at
    from (select distinct device_id from cover) c
)
select c.location_id,
       max(greatest(r.read_at, case when r.lost_at is null or r.read_at > r.lost_at then r.alive_at end))
from cover c join reader r using (device_id)
where r.read_at is not null or (r.alive_at is not null and r.lost_at is null)
group by c.location_id
"""
_LOCATIONS: Final = """
select l.id, l.kind, l.site_id, p.dwell_s, p.age_out_s, p.hysteresis_db
from locations l left join location_presence_policy p on p.location_id = l.id
"""


@dataclass(frozen=True, slots=True)
class VehicleFix:
    """A vehicle's latest position and the site geofence it is in (None: on the road)."""

    vehicle_id: str
    observed_at: datetime
    latitude: float
    longitude: float
    site_id: str | None


async def load_clocks(conn: Conn) -> dict[str, datetime]:
    cursor = await conn.execute(_CLOCKS)
    return {row[0]: row[1] for row in await cursor.fetchall()}


async def load_places(conn: Conn, vehicles: Mapping[str, VehicleFix]) -> dict[str, Place]:
    """Every location with its policy; a vehicle with a known position carries it and its current site."""
    cursor = await conn.execute(_LOCATIONS)
    places = {}
    for location_id, kind, site_id, dwell_s, age_out_s, hysteresis_db in await cursor.fetchall():
        policy = policy_for(kind, dwell_s, age_out_s, hysteresis_db)
        fix = vehicles.get(location_id)
        if fix is None:
            places[location_id] = Place(location_id, kind, site_id, policy)
        else:
            places[location_id] = Place(
                location_id, kind, fix.site_id, policy, fix.site_id is None, fix.latitude, fix.longitude
            )
    return places


async def load_fences(conn: Conn) -> dict[str, Geofence]:
    cursor = await conn.execute("select id, geofence from locations where kind = 'site' and geofence is not null")
    fences = {}
    for site_id, shape in await cursor.fetchall():
        fence = Geofence.from_json(shape)
        if fence is not None:
            fences[site_id] = fence
    return fences


async def load_vehicle_fixes(conn: Conn) -> dict[str, VehicleFix]:
    cursor = await conn.execute("select vehicle_id, observed_at, latitude, longitude, site_id from vehicle_positions")
    return {row[0]: VehicleFix(*row) for row in await cursor.fetchall()}
