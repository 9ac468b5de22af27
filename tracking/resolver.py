"""The resolver: turns tag sightings into item state and location events, one process at a time.

``run(dsn, stop)`` loops: it takes a PostgreSQL session advisory lock, so that with several stocktrace processes
exactly one resolves; the others retry every interval and take over within one when the leader's connection
dies (the lock goes with it). Each tick is one transaction:

1. new GPS fixes move vehicles (tracking/vehicles.py), and the locations' clocks are read;
2. the sighting deltas that ingest appended are folded into ``tag_sightings`` (tracking/sightings.py), after
   the clocks: every read a clock counts is then folded, so nothing ages out on a clock that has passed reads
   not folded yet. A backlog of more than ``fold_limit`` deltas (after the resolver was down) is folded over
   ticks of their own, oldest first, and its items are resolved (``sightings_to_resolve``) once it is folded;
3. the items to look at: those whose sightings the fold changed (new EPCs get their ``items`` row,
   tracking/identity.py), those whose container association changed since the watermark, and present items
   whose location's clock has passed their age-out;
4. presence (tracking/presence.py) decides each one's state and events, containers first, and the contents of
   a container that moved follow it;
5. item_state is upserted and location_events appended; what is still aboard a vehicle takes its position
   and its site crossings; items that went out through a door just before a vehicle left are put aboard it,
   and items that moved in step with a container are associated with it;
6. the watermarks (of container changes, and of the deltas folded) advance, in the same transaction, so a tick
   is applied entirely or not at all.

Between ticks the resolver waits ``interval_s`` (age-outs follow the locations' clocks), or less when ingest
notifies it that deltas wait: then it rests only ``min_rest_s``, or twice as long as its last tick took if that is
longer (never longer than ``interval_s``). A quiet site's reads are resolved within a fraction of a second, and
under load one tick folds the deltas of many batches: folding costs per tag more than per delta.

The watermark of ``container_contents`` is its ``updated_at``. A transaction still open may commit rows older than
rows already visible, so the watermark stays below the start of the oldest transaction open in the database when
the tick began: rows after it are read again next tick, which is harmless because resolving an unchanged item
changes nothing. This needs the resolver's role to see the other sessions' ``xact_start`` in pg_stat_activity:
connect as the same role as ingest, or grant it pg_read_all_stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

import psycopg
from prometheus_client import Counter, Gauge, Histogram

from tracking import containers, identity, sightings, vehicles
from tracking.containers import Move
from tracking.geofence import Geofence
from tracking.policy import AGE_OUT_READ_INTERVALS
from tracking.premises import load_clocks, load_fences, load_places
from tracking.presence import ItemState, Premises, Resolution, Sighting, portal_direction, resolve

log = logging.getLogger(__name__)

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

# Any 64-bit number unique to stocktrace's resolver (the migrations lock is 0x5E0C_7ACE_0001).
LOCK_KEY: Final = 0x5E0C_7ACE_0200
CONTENTS: Final = "contents"
_RECONNECT_S: Final = 2.0
# After a tick, the resolver rests at least this long, and at least this many times as long as the tick took,
# before ingest's notifications wake it: a busy resolver then takes the deltas of many batches in one tick.
MIN_REST_S: Final = 0.1
REST_PER_TICK: Final = 2.0
_CONTAINER_DEPTH: Final = 3  # a case in a pallet in a truck
# item_state.last_seen_at is rewritten only when it moves by this much (or with anything else): a tag read every
# second would otherwise cost a row update every tick. The age-out scan may then look at an item a few seconds
# early, which changes nothing.
LAST_SEEN_RESOLUTION: Final = timedelta(seconds=5)

TICKS: Final = Counter("stocktrace_tracking_resolver_ticks", "Resolver ticks committed")
RESOLVED: Final = Counter("stocktrace_tracking_items_resolved", "Items whose presence was evaluated")
EVENTS: Final = Counter("stocktrace_tracking_location_events", "Location events written by the resolver")
TICK_SECONDS: Final = Histogram(
    "stocktrace_tracking_tick_seconds",
    "Time of one resolver tick",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEADER: Final = Gauge("stocktrace_tracking_resolver_leader", "1 while this process holds the resolver lock")

# Just below the oldest open transaction's start: its rows carry that start as updated_at.
_HORIZON: Final = """
select coalesce(min(xact_start) - interval '1 microsecond', clock_timestamp()) from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'
  and xact_start is not null
"""
_CUT: Final = "select updated_at from {table} where updated_at > %s order by updated_at offset %s limit 1"
_SIGHTINGS: Final = """
select s.epc, s.location_id, s.first_seen_at, s.last_seen_at, s.rssi_smoothed_dbm, s.reads,
       p.in_first_at, p.in_last_at, p.out_first_at, p.out_last_at
from tag_sightings s left join portal_passes p on p.epc = s.epc and p.location_id = s.location_id
where s.epc = any(%s)
"""
_STATES: Final = """
select epc, location_id, status, since, last_seen_at, site_id, container_epc, latitude, longitude
from item_state where epc = any(%s)
"""
# Present items whose last read where they are is older than the location's clock by more than the age-out (or
# a few of the tag's own read intervals there, if longer: tracking/presence.py applies the same rule). Items
# held where they are without reads of their own there (by a container, or aboard a vehicle) do not age out.
_AGED: Final = """
select s.epc from item_state s
join unnest(%(locations)s::text[], %(clocks)s::timestamptz[], %(age_outs)s::float8[])
  as d(location_id, clock, age_out_s) on s.location_id = d.location_id
join tag_sightings t on t.epc = s.epc and t.location_id = s.location_id
where s.status <> 'departed' and s.container_epc is null
  and s.last_seen_at < d.clock - make_interval(secs => d.age_out_s)
  and t.last_seen_at >= s.since
  and t.last_seen_at < d.clock - greatest(
      make_interval(secs => d.age_out_s),
      case when t.reads > 1
           then (t.last_seen_at - t.first_seen_at + make_interval(secs => d.age_out_s)) / t.reads * %(intervals)s
           else interval '0 s' end)
order by s.last_seen_at
limit %(limit)s
"""
_CREATE_STATES: Final = """
create temp table if not exists resolver_states (
    epc text, location_id text, site_id text, status text, since timestamptz, last_seen_at timestamptz,
    container_epc text, latitude double precision, longitude double precision
) on commit delete rows
"""
_STATE_COLUMNS: Final = (
    "epc",
    "location_id",
    "site_id",
    "status",
    "since",
    "last_seen_at",
    "container_epc",
    "latitude",
    "longitude",
)
_STATE_TYPES: Final = (
    "text", "text", "text", "text", "timestamptz", "timestamptz", "text", "float8", "float8"
)  # fmt: skip
_UPSERT_STATES: Final = """
insert into item_state as s (epc, location_id, site_id, status, since, last_seen_at, container_epc, latitude,
                             longitude)
select epc, location_id, site_id, status, since, last_seen_at, container_epc, latitude, longitude
from resolver_states order by epc
on conflict (epc) do update set
    location_id = excluded.location_id, site_id = excluded.site_id, status = excluded.status,
    since = excluded.since, last_seen_at = excluded.last_seen_at, container_epc = excluded.container_epc,
    latitude = excluded.latitude, longitude = excluded.longitude, updated_at = now()
"""
_EVENT_COLUMNS: Final = ("at", "epc", "kind", "from_location", "to_location", "direction")
_EVENT_TYPES: Final = ("timestamptz", "text", "text", "text", "text", "text")


@dataclass(frozen=True, slots=True)
class TickReport:
    items: int
    events: int
    loaded_into_vehicles: int = 0
    inferred_contents: int = 0
    more: bool = False
    """The tick stopped at its limit: there is more to do at once."""
    folded: int = 0
    """Sighting deltas folded."""


@dataclass(slots=True)
class _Work:
    """The items of one tick: their state before, sightings and container, and what presence decided."""

    states: dict[str, ItemState | None] = field(default_factory=dict)
    sightings: dict[str, list[Sighting]] = field(default_factory=dict)
    container_of: dict[str, str] = field(default_factory=dict)
    decided: dict[str, Resolution] = field(default_factory=dict)

    def state(self, epc: str) -> ItemState | None:
        done = self.decided.get(epc)
        return done.state if done is not None else self.states.get(epc)


class Resolver:
    """One tick at a time on a connection that holds the lock; ``limit`` bounds the items of one tick,
    ``fold_limit`` the sighting deltas it folds when there is a backlog."""

    def __init__(self, limit: int = 50_000, registry_refresh_s: float = 10.0, fold_limit: int = 200_000) -> None:
        self._limit = limit
        self._fold_limit = fold_limit
        self._refresh_s = registry_refresh_s
        self._fences: dict[str, Geofence] = {}
        self._fences_at = float("-inf")
        self._prepared: weakref.WeakSet[Conn] = weakref.WeakSet()  # connections that have the temporary table

    async def tick(self, conn: Conn) -> TickReport:
        started = time.perf_counter()
        async with conn.transaction():
            report = await self._tick(conn)
        TICKS.inc()
        TICK_SECONDS.observe(time.perf_counter() - started)
        RESOLVED.inc(report.items)
        EVENTS.inc(report.events)
        return report

    async def _tick(self, conn: Conn) -> TickReport:
        through = await sightings.backlog(conn, self._fold_limit)
        if through is not None:
            backlog = await sightings.fold(conn, through)
            await _defer(conn, backlog.epcs)  # the new ones among them are registered when they are resolved
            return TickReport(0, 0, more=True, folded=backlog.deltas)
        horizon = await _scalar(conn, _HORIZON)
        fixes, tracks = await vehicles.advance(conn, await self._current_fences(conn))
        premises = Premises(await load_places(conn, fixes), await load_clocks(conn))
        folded = await sightings.fold(conn)  # after the clocks (see the module docstring)
        deferred, more = await _take_deferred(conn, self._limit)
        changed = set(folded.epcs) | deferred
        contents, contents_mark, more_contents = await self._changed(
            conn, "container_contents", CONTENTS, "item_epc", horizon
        )
        aged = await self._aged(conn, premises)
        await identity.register_sighted(conn, set(folded.new_epcs) | deferred)
        work = await _load(conn, changed | contents | aged)
        _decide(work, work.states.keys(), premises)
        await _follow_containers(conn, work, premises)
        events = await self._write(conn, work)
        for track in tracks:  # after the items: one unloaded in this tick is no longer aboard when it arrives
            await vehicles.save(conn, track)
        loaded = await vehicles.place_loaded(conn, fixes)
        inferred = await containers.infer(conn, _moves(work))
        await _save_watermark(conn, CONTENTS, contents_mark)
        more = more or more_contents or len(aged) >= self._limit
        return TickReport(len(work.decided), events, loaded, inferred, more, folded.deltas)

    async def _current_fences(self, conn: Conn) -> dict[str, Geofence]:
        if time.monotonic() - self._fences_at >= self._refresh_s:
            self._fences = await load_fences(conn)
            self._fences_at = time.monotonic()
        return self._fences

    async def _changed(
        self, conn: Conn, table: str, mark: str, key: str, horizon: datetime
    ) -> tuple[set[str], datetime | None, bool]:
        """Keys of rows updated since the watermark, at most about ``limit``, and the watermark after them."""
        after = await _scalar(conn, "select at from tracking_watermarks where name = %s", (mark,))
        after = after if after is not None else datetime.min.replace(tzinfo=UTC)
        cut = await _scalar(conn, _CUT.format(table=table), (after, self._limit - 1))
        upper = horizon if cut is None else min(cut, horizon)
        cursor = await conn.execute(
            f"select distinct {key} from {table}"
            " where updated_at > %s and (%s::timestamptz is null or updated_at <= %s)",
            (after, cut, cut),
        )
        keys = {row[0] for row in await cursor.fetchall()}
        return keys, max(after, upper), cut is not None

    async def _aged(self, conn: Conn, premises: Premises) -> set[str]:
        locations = [place for place in premises.clocks if place in premises.places]
        cursor = await conn.execute(
            _AGED,
            {
                "locations": locations,
                "clocks": [premises.clocks[place] for place in locations],
                "age_outs": [premises.places[place].policy.age_out_s for place in locations],
                "intervals": AGE_OUT_READ_INTERVALS,
                "limit": self._limit,
            },
        )
        return {row[0] for row in await cursor.fetchall()}

    async def _write(self, conn: Conn, work: _Work) -> int:
        changed = [(epc, r) for epc, r in sorted(work.decided.items()) if _worth_writing(work.states.get(epc), r)]
        if not changed:
            return 0
        if conn not in self._prepared:
            await conn.execute(_CREATE_STATES)
            self._prepared.add(conn)
        async with conn.cursor().copy(
            f"copy resolver_states ({', '.join(_STATE_COLUMNS)}) from stdin (format binary)"
        ) as copy:
            copy.set_types(list(_STATE_TYPES))
            for epc, r in changed:
                s = r.state
                if s is not None:
                    await copy.write_row(
                        (epc, s.location_id, s.site_id, s.status, s.since, s.last_seen_at, s.container_epc,
                         s.latitude, s.longitude)
                    )  # fmt: skip
        await conn.execute(_UPSERT_STATES)
        events = [(epc, e) for epc, r in changed for e in r.events]
        if events:
            async with conn.cursor().copy(
                f"copy location_events ({', '.join(_EVENT_COLUMNS)}) from stdin (format binary)"
            ) as copy:
                copy.set_types(list(_EVENT_TYPES))
                for epc, e in events:
                    await copy.write_row((e.at, epc, e.kind, e.from_location, e.to_location, e.direction))
        return len(events)


async def _scalar(conn: Conn, query: str, params: tuple[Any, ...] | None = None) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def _defer(conn: Conn, epcs: list[str]) -> None:
    await conn.execute(
        "insert into sightings_to_resolve (epc) select unnest(%s::text[]) order by 1 on conflict do nothing", (epcs,)
    )


async def _take_deferred(conn: Conn, limit: int) -> tuple[set[str], bool]:
    """Items a backlog fold changed, at most ``limit``; True when more are waiting."""
    cursor = await conn.execute(
        "delete from sightings_to_resolve where epc in (select epc from sightings_to_resolve limit %s) returning epc",
        (limit,),
    )
    epcs = {row[0] for row in await cursor.fetchall()}
    return epcs, len(epcs) >= limit


async def _save_watermark(conn: Conn, name: str, at: datetime | None) -> None:
    if at is None:
        return
    await conn.execute(
        "insert into tracking_watermarks (name, at) values (%s, %s)"
        " on conflict (name) do update set at = greatest(tracking_watermarks.at, excluded.at), updated_at = now()",
        (name, at),
    )


async def _load(conn: Conn, epcs: Iterable[str], work: _Work | None = None) -> _Work:
    """Each item's state, sightings (with portal direction) and container."""
    work = work or _Work()
    wanted = sorted(set(epcs) - work.states.keys())
    if not wanted:
        return work
    cursor = await conn.execute(_STATES, (wanted,))
    for epc, location_id, status, since, last_seen_at, site_id, container_epc, lat, lon in await cursor.fetchall():
        work.states[epc] = ItemState(location_id, status, since, last_seen_at, site_id, container_epc, lat, lon)
    for epc in wanted:
        work.states.setdefault(epc, None)
        work.sightings.setdefault(epc, [])
    cursor = await conn.execute(_SIGHTINGS, (wanted,))
    for epc, location_id, first, last, rssi, reads, in_first, in_last, out_first, out_last in await cursor.fetchall():
        direction = portal_direction(in_first, in_last, out_first, out_last)
        work.sightings[epc].append(Sighting(location_id, first, last, rssi, direction, reads))
    cursor = await conn.execute(
        "select item_epc, container_epc from container_contents where item_epc = any(%s)", (wanted,)
    )
    work.container_of.update({row[0]: row[1] for row in await cursor.fetchall()})
    containers_needed = set(work.container_of.values()) - work.states.keys()
    if containers_needed:
        cursor = await conn.execute(_STATES, (sorted(containers_needed),))
        for epc, location_id, status, since, last_seen_at, site_id, container_epc, lat, lon in await cursor.fetchall():
            work.states.setdefault(
                epc, ItemState(location_id, status, since, last_seen_at, site_id, container_epc, lat, lon)
            )
    return work


def _worth_writing(before: ItemState | None, after: Resolution) -> bool:
    """Whether the decision changes the row; a last_seen_at that moved by less than a few seconds does not."""
    if after.events or after.state is None or before is None:
        return after.state is not None
    if after.state == before:
        return False
    if _but_last_seen(after.state) != _but_last_seen(before):
        return True
    return after.state.last_seen_at - before.last_seen_at >= LAST_SEEN_RESOLUTION


def _but_last_seen(state: ItemState) -> tuple[Any, ...]:
    # Field by field: dataclasses.replace costs more than the rest of a tick's decision for an item.
    return (state.location_id, state.status, state.since, state.site_id, state.container_epc, state.latitude,
            state.longitude)  # fmt: skip


def _placement(state: ItemState | None) -> tuple[Any, ...]:
    if state is None:
        return ()
    return (state.location_id, state.status, state.site_id, state.latitude, state.longitude)


def _decide(work: _Work, epcs: Iterable[str], premises: Premises) -> None:
    """Resolve items, containers before what they contain."""
    holders = set(work.container_of.values())
    todo = sorted(epcs, key=lambda epc: (epc not in holders, epc))
    for epc in todo:
        if epc not in work.sightings:
            continue  # a container loaded only for its state
        container_epc = work.container_of.get(epc)
        state = work.states.get(epc)
        if state is not None and state.container_epc != container_epc:
            state = _with_container(state, container_epc)
        container = work.state(container_epc) if container_epc is not None else None
        resolution = resolve(state, work.sightings[epc], premises, container)
        if resolution.state is not None and resolution.state.container_epc != container_epc:
            resolution = Resolution(_with_container(resolution.state, container_epc), resolution.events)
        work.decided[epc] = resolution


def _with_container(state: ItemState, container_epc: str | None) -> ItemState:
    return ItemState(
        state.location_id, state.status, state.since, state.last_seen_at, state.site_id, container_epc,
        state.latitude, state.longitude,
    )  # fmt: skip


async def _follow_containers(conn: Conn, work: _Work, premises: Premises) -> None:
    """The contents of containers that moved this tick follow them (nested containers, a few levels deep)."""
    moved = {epc for epc, r in work.decided.items() if _placement(r.state) != _placement(work.states.get(epc))}
    for _ in range(_CONTAINER_DEPTH):
        if not moved:
            return
        cursor = await conn.execute(
            "select item_epc from container_contents where container_epc = any(%s)", (sorted(moved),)
        )
        contents = {row[0] for row in await cursor.fetchall()} - work.decided.keys()
        if not contents:
            return
        await _load(conn, contents, work)
        _decide(work, contents, premises)
        moved = {epc for epc in contents if _placement(work.decided[epc].state) != _placement(work.states.get(epc))}


def _moves(work: _Work) -> list[Move]:
    return [
        Move(epc, e.at, e.from_location, e.to_location)
        for epc, r in work.decided.items()
        for e in r.events
        if e.kind == "moved" and e.from_location is not None and e.to_location is not None
    ]


async def run(
    dsn: str,
    stop: asyncio.Event,
    interval_s: float = 1.0,
    resolver: Resolver | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
    min_rest_s: float = MIN_REST_S,
) -> None:
    """Resolve while this process holds the lock; wait for it otherwise. Returns when ``stop`` is set."""
    resolver = resolver or Resolver()
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                if await _lead(conn, stop, interval_s):
                    await conn.execute(f"listen {sightings.CHANNEL}")
                    await _resolve(conn, resolver, stop, (interval_s, min_rest_s), on_tick)
        except psycopg.Error as exc:
            LEADER.set(0)
            log.warning("resolver lost its database connection (%s); retrying", str(exc).strip()[:200])
            await _wait(stop, _RECONNECT_S)
        except Exception:
            # A tick that fails rolled back; the resolver must outlive one bad row, so it starts over.
            LEADER.set(0)
            log.exception("resolver tick failed; starting over")
            await _wait(stop, _RECONNECT_S)
    LEADER.set(0)


async def _lead(conn: Conn, stop: asyncio.Event, interval_s: float) -> bool:
    """Wait until this connection holds the resolver lock (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        if await _scalar(conn, "select pg_try_advisory_lock(%s)", (LOCK_KEY,)):
            LEADER.set(1)
            log.info("resolving item presence (this process holds the resolver lock)")
            return True
        await _wait(stop, interval_s)
    return False


async def _resolve(
    conn: Conn,
    resolver: Resolver,
    stop: asyncio.Event,
    pace: tuple[float, float],
    on_tick: Callable[[TickReport], None] | None,
) -> None:
    interval_s, min_rest_s = pace
    while not stop.is_set():
        started = time.monotonic()
        report = await resolver.tick(conn)
        if on_tick is not None:
            on_tick(report)
        if not report.more:
            ended = time.monotonic()
            rest_s = min(interval_s, max(min_rest_s, REST_PER_TICK * (ended - started)))
            await _wait_for_deltas(conn, stop, ended + rest_s, ended + interval_s)


async def _wait_for_deltas(conn: Conn, stop: asyncio.Event, earliest: float, latest: float) -> None:
    """Until ingest notifies new deltas (but not before ``earliest``), until ``latest``, or until ``stop``."""
    await _wait(stop, earliest - time.monotonic())
    if stop.is_set():
        return
    notified = asyncio.ensure_future(_notified(conn, latest - time.monotonic()))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({notified, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (notified, stopped):
            task.cancel()
        await asyncio.gather(notified, stopped, return_exceptions=True)


async def _notified(conn: Conn, timeout_s: float) -> None:
    # Notifications that came during the tick were kept by psycopg and end this at once.
    async with contextlib.aclosing(conn.notifies(timeout=max(0.0, timeout_s), stop_after=1)) as notifies:
        async for _ in notifies:
            pass


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
