"""Containers: pallets and cases (usually SSCC-tagged) and what is inside them.

An association comes from the API (POST /api/v1/containers/{sscc}/contents), from an EPCIS AggregationEvent, or
is inferred: an item that arrived at the same location as a container, and then moved from there to the same next
location, each time within ``TRAVEL_TOGETHER_S`` of it, travels with it (two consecutive locations in step; one
is chance, a dock door and a shelf together are not). An inferred association never replaces one that was given.

``container_contents`` holds the current association (one container per item), ``container_changes`` every
association and dissociation, and ``item_state.container_epc`` mirrors the current one. An item inside a
container takes the container's location while it is not read itself (tracking/presence.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

import psycopg

from tracking import identity
from tracking.policy import TRAVEL_TOGETHER_S

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]
Source: TypeAlias = Literal["api", "epcis", "inferred"]

_ASSOCIATE: Final = """
with previous as (
    select item_epc, container_epc from container_contents where item_epc = any(%(items)s) for update
),
upserted as (
    insert into container_contents as c (item_epc, container_epc, source, associated_at)
    select item, %(container)s, %(source)s, %(at)s from unnest(%(items)s::text[]) as item
    order by item
    on conflict (item_epc) do update set container_epc = excluded.container_epc, source = excluded.source,
        associated_at = excluded.associated_at, updated_at = now()
    where c.container_epc <> excluded.container_epc or c.source <> excluded.source
    returning item_epc
),
dropped as (
    insert into container_changes (at, container_epc, item_epc, action, source)
    select %(at)s, p.container_epc, p.item_epc, 'delete', %(source)s from previous p
    join upserted u using (item_epc) where p.container_epc <> %(container)s
    returning container_epc, item_epc
),
added as (
    insert into container_changes (at, container_epc, item_epc, action, source)
    select %(at)s, %(container)s, u.item_epc, 'add', %(source)s from upserted u
    left join previous p using (item_epc) where p.container_epc is distinct from %(container)s
    returning container_epc, item_epc
)
select 'DELETE', container_epc, item_epc from dropped
union all
select 'ADD', container_epc, item_epc from added
"""
_DISSOCIATE: Final = """
with removed as (
    delete from container_contents where container_epc = %(container)s and item_epc = any(%(items)s)
    returning item_epc
),
cleared as (
    update item_state set container_epc = null, updated_at = now()
    where epc in (select item_epc from removed)
)
insert into container_changes (at, container_epc, item_epc, action, source)
select %(at)s, %(container)s, item_epc, 'delete', %(source)s from removed
returning 'DELETE', container_epc, item_epc
"""
_PREVIOUS_ARRIVALS: Final = """
select distinct on (epc) epc, at from location_events
where epc = any(%(epcs)s) and to_location = %(location)s and at <= %(before)s
order by epc, at desc
"""
_MOVERS: Final = """
select epc, at from location_events
where to_location = %(to)s and from_location = %(from)s and at between %(lo)s and %(hi)s
"""


@dataclass(frozen=True, slots=True)
class Move:
    """A 'moved' location event written this tick."""

    epc: str
    at: datetime
    from_location: str
    to_location: str


async def ensure_items(conn: Conn, epcs: Iterable[str], at: datetime) -> None:
    """Create ``items`` rows for EPCs never read yet (an association may name them first)."""
    await identity.register(conn, dict.fromkeys(epcs, at))


async def associate(conn: Conn, container: str, items: Sequence[str], at: datetime, source: Source) -> None:
    """Put items into a container (taking them out of any other); the resolver places them at its next tick."""
    if not items:
        return
    await ensure_items(conn, [container, *items], at)
    params = {"container": container, "items": sorted(set(items)), "at": at, "source": source}
    await conn.execute(_ASSOCIATE, params)
    await conn.execute(
        "update item_state set container_epc = %(container)s, updated_at = now()"
        " where epc = any(%(items)s) and container_epc is distinct from %(container)s",
        params,
    )


async def dissociate(conn: Conn, container: str, items: Sequence[str], at: datetime, source: Source) -> None:
    """Take items out of a container; they stay where they are until their own reads say otherwise."""
    if items:
        await conn.execute(
            _DISSOCIATE, {"container": container, "items": sorted(set(items)), "at": at, "source": source}
        )


async def infer(conn: Conn, moves: Sequence[Move]) -> int:
    """Associate items that moved in step with a container twice in a row; returns how many were associated."""
    window = timedelta(seconds=TRAVEL_TOGETHER_S)
    containers = await _containers_among(conn, {m.epc for m in moves})
    associated = 0
    for move in (m for m in moves if m.epc in containers):
        cursor = await conn.execute(
            _MOVERS,
            {"to": move.to_location, "from": move.from_location, "lo": move.at - window, "hi": move.at + window},
        )
        movers = {epc: at for epc, at in await cursor.fetchall() if epc != move.epc}
        if not movers:
            continue
        together = await _arrived_together(conn, move, movers, window)
        free = await _free_items(conn, together)
        if free:
            await associate(conn, move.epc, sorted(free), move.at, "inferred")
            associated += len(free)
    return associated


async def _containers_among(conn: Conn, epcs: set[str]) -> set[str]:
    if not epcs:
        return set()
    cursor = await conn.execute("select epc from items where epc = any(%s) and scheme = 'sscc'", (list(epcs),))
    return {row[0] for row in await cursor.fetchall()}


async def _arrived_together(conn: Conn, move: Move, movers: dict[str, datetime], window: timedelta) -> set[str]:
    """Those of ``movers`` that arrived at the move's origin within ``window`` of the container."""
    cursor = await conn.execute(
        _PREVIOUS_ARRIVALS, {"epcs": [move.epc, *movers], "location": move.from_location, "before": move.at}
    )
    arrived = {epc: at for epc, at in await cursor.fetchall()}
    mine = arrived.get(move.epc)
    if mine is None:
        return set()
    return {epc for epc in movers if epc in arrived and abs(arrived[epc] - mine) <= window}


async def _free_items(conn: Conn, epcs: set[str]) -> set[str]:
    """Those of ``epcs`` that are neither containers nor already inside one."""
    if not epcs:
        return set()
    cursor = await conn.execute(
        "select i.epc from items i where i.epc = any(%s) and i.scheme <> 'sscc'"
        " and not exists (select 1 from container_contents c where c.item_epc = i.epc)",
        (list(epcs),),
    )
    return {row[0] for row in await cursor.fetchall()}
