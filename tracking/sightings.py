"""Reads become ``tag_sightings``, per tag and location, in two halves: the ingest step appends, the resolver folds.

The step (``Sightings``, run in each batch's transaction: ``ingest.writer.Writer(dsn, steps=[Sightings()])``) is on
the hot path, so it does no per-read SQL and takes no row lock: the reads are placed and aggregated in dicts, one
row per tag and location, and COPYed into the append-only ``sighting_deltas``. Ingest workers that read the same
tags never wait for each other. The batch's commit notifies the resolver, which folds the deltas into
``tag_sightings`` and ``portal_passes`` at its next tick (``fold``) and deletes them. New EPCs get their ``items``
row (with the GS1 identity decoded) from the resolver too: decoding costs tens of microseconds per EPC.

Placement: an antenna's row in ``antennas`` gives its location (and portal side); an antenna without one
belongs to its reader's ``devices.location_id``. Reads of a reader that is not registered, parked
(``assigned = false``) or has no location are not placed, only counted (``stocktrace_tracking_unplaced_reads``):
the raw reads are kept, and once the reader is mapped its new reads are placed. The map is reloaded from the
registry every ``refresh_s`` seconds.

Folding applies each tag's deltas in the order of their transactions, exactly as if each batch had been merged
on its own when it committed, however many batches one fold takes: first/last seen only widen (``least`` /
``greatest``), so a late read never makes a sighting look newer than it is; the smoothed RSSI and the last
device, antenna and side move only with reads newer than ``last_seen_at``. A read more than ``VISIT_GAP_S`` after
the last one (``PORTAL_PASS_GAP_S`` at a portal) starts a new visit (first seen, reads and RSSI restart). Reads
within one batch are one visit whatever their gaps.

A batch redelivered after a crash gives the step only the reads it had not stored yet (ingest/writer.py), so
nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

import psycopg
from prometheus_client import Counter

from ingest.batch import Row, Rows
from tracking.policy import PORTAL_PASS_GAP_S, RSSI_READ_WEIGHT, VISIT_GAP_S

log = logging.getLogger(__name__)

UNPLACED_READS: Final = Counter(
    "stocktrace_tracking_unplaced_reads",
    "Reads from a reader that is unregistered, parked or has no location for the antenna",
)
SIGHTINGS_WRITTEN: Final = Counter(
    "stocktrace_tracking_sightings", "Sighting deltas appended by ingest (tag x location x batch)"
)
DELTAS_FOLDED: Final = Counter("stocktrace_tracking_deltas_folded", "Sighting deltas folded by the resolver")

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]
# (location_id, side) of a read: side is 'in' / 'out' for the antennas of a portal.
Place: TypeAlias = tuple[str, str | None]

CHANNEL: Final = "sighting_deltas"
"""Notified by every batch that appended deltas (on commit), so the resolver need not wait for its interval."""

_DELTA_COLUMNS: Final = (
    "epc", "location_id", "first_at", "last_at", "reads", "rssi_dbm", "device_id", "antenna", "side",
    "in_first_at", "in_last_at", "out_first_at", "out_last_at",
)  # fmt: skip
_DELTA_TYPES: Final = (
    "text", "text", "timestamptz", "timestamptz", "int4", "float4", "text", "int2", "text",
    "timestamptz", "timestamptz", "timestamptz", "timestamptz",
)  # fmt: skip
_COPY_DELTAS: Final = f"copy sighting_deltas ({', '.join(_DELTA_COLUMNS)}) from stdin (format binary)"
_LAST_XID: Final = "18446744073709551615"

# Folding several deltas of a tag at once gives what folding them one by one would (see the module docstring).
# The tag's current sighting goes first, as the delta that started its visit, then its deltas in transaction order:
# - a delta starts a new visit when its first read is more than the gap after the last read before it (of the
#   sighting or of an earlier delta); the visit is the last one started;
# - device, antenna and side come from the last delta whose last read is the newest so far;
# - the smoothed RSSI restarts at the last delta that restarts it (a new visit, or none yet) and has an RSSI; each
#   later delta with newer reads and an RSSI then pulls it by 1 - (1 - w)^reads. Unrolled, the value restarted
#   from is weighted by (1 - w)^(reads of every pull after it), and each pull's RSSI by its own weight times
#   (1 - w)^(reads of every pull after it).
# Two window passes (looking back, then ahead) and one aggregation, over rows sorted once.
_KEEP: Final = 1 - RSSI_READ_WEIGHT
FOLD_SQL: Final = f"""
with taken as materialized (
    select xid, epc, location_id, first_at, last_at, reads, rssi_dbm, device_id, antenna, side,
           in_first_at, in_last_at, out_first_at, out_last_at
    from sighting_deltas where xid >= %(since)s::xid8 and xid <= %(through)s::xid8
),
tags as (select distinct epc, location_id from taken),
-- The window functions below sort every delta: their rows carry only what they need, and their keys compare
-- byte by byte (collation "C": the order of tags does not matter, only that each one's rows are together).
visits as (
    select '0'::xid8 as xid, k.epc collate "C", k.location_id collate "C", s.first_seen_at as first_at,
           s.last_seen_at as last_at, s.reads, s.rssi_smoothed_dbm as rssi_dbm, false as portal, s.ctid as row_id
    from tags k cross join lateral (
        select ctid, * from tag_sightings s where s.epc = k.epc and s.location_id = k.location_id offset 0
    ) s
    union all
    select xid, epc collate "C", location_id collate "C", first_at, last_at, reads, rssi_dbm, side is not null,
           null
    from taken
),
ordered as (
    select v.*,
        max(v.last_at) over before as prev_last,
        coalesce(bool_and(v.rssi_dbm is null) over before, true) as rssi_unset
    from visits v
    window tag as (partition by v.epc, v.location_id order by v.xid),
           before as (tag rows between unbounded preceding and 1 preceding)
),
flagged as (
    select o.*,
        o.prev_last is null or o.first_at > o.prev_last + case when o.portal
            then interval '{PORTAL_PASS_GAP_S} seconds' else interval '{VISIT_GAP_S} seconds' end as new_visit,
        o.prev_last is null or o.last_at >= o.prev_last as newer
    from ordered o
),
pulls as (
    select f.*,
        (f.new_visit or f.rssi_unset) and f.rssi_dbm is not null as restarts_rssi,
        not (f.new_visit or f.rssi_unset) and f.rssi_dbm is not null and f.last_at > f.prev_last as pulls_rssi
    from flagged f
),
-- Looking ahead in the tag's rows: whether a later one starts a visit or restarts the RSSI, and how many reads pull
-- it after this one. The rows of the visit are those after which no visit starts.
marked as (
    select p.*,
        coalesce(bool_or(p.new_visit) over later, false) as visit_follows,
        coalesce(bool_or(p.restarts_rssi) over later, false) as restart_follows,
        coalesce(sum(case when p.pulls_rssi then p.reads end) over later, 0) as later_pull_reads
    from pulls p
    window later as (partition by p.epc, p.location_id order by p.xid rows between 1 following and unbounded following)
),
folded as (
    select m.epc, m.location_id, max(m.row_id) as row_id, max(m.xid) filter (where m.newer) as newest,
        min(m.first_at) filter (where not m.visit_follows) as first_seen_at,
        max(m.last_at) as last_seen_at,
        sum(m.reads) filter (where not m.visit_follows) as reads,
        sum(m.rssi_dbm * power({_KEEP}::float8, m.later_pull_reads))
            filter (where m.restarts_rssi and not m.restart_follows)
          + coalesce(sum((1 - power({_KEEP}::float8, m.reads)) * m.rssi_dbm
                         * power({_KEEP}::float8, m.later_pull_reads))
                     filter (where m.pulls_rssi and not m.restart_follows), 0) as rssi
    from marked m
    group by m.epc, m.location_id
),
-- Portal passes: the same, over the deltas read at a portal, with the short gap.
passed as (
    select '0'::xid8 as xid, k.epc collate "C", k.location_id collate "C", p.in_first_at, p.in_last_at,
           p.out_first_at, p.out_last_at
    from (select distinct epc, location_id from taken where side is not null) k cross join lateral (
        select * from portal_passes p where p.epc = k.epc and p.location_id = k.location_id offset 0
    ) p
    union all
    select xid, epc collate "C", location_id collate "C", in_first_at, in_last_at, out_first_at, out_last_at
    from taken where side is not null
),
pass_ordered as (
    select q.*,
        max(greatest(q.in_last_at, q.out_last_at)) over (
            partition by q.epc, q.location_id order by q.xid rows between unbounded preceding and 1 preceding
        ) as prev_last
    from passed q
),
pass_marked as (
    select q.*,
        max(case when q.prev_last is null
                   or least(q.in_first_at, q.out_first_at) > q.prev_last + interval '{PORTAL_PASS_GAP_S} seconds'
                 then q.xid end) over (partition by q.epc, q.location_id) as pass_from
    from pass_ordered q
),
passes as (
    insert into portal_passes as p (epc, location_id, in_first_at, in_last_at, out_first_at, out_last_at)
    select epc, location_id,
        min(in_first_at) filter (where xid >= pass_from), max(in_last_at) filter (where xid >= pass_from),
        min(out_first_at) filter (where xid >= pass_from), max(out_last_at) filter (where xid >= pass_from)
    from pass_marked
    group by epc, location_id
    on conflict (epc, location_id) do update set
        in_first_at = excluded.in_first_at, in_last_at = excluded.in_last_at,
        out_first_at = excluded.out_first_at, out_last_at = excluded.out_last_at, updated_at = now()
),
-- Device, antenna and side of the newest delta; none when the sighting itself is still the newest. The resolver is
-- the only writer, so the rows read above are the ones to update.
newest as (
    select f.*, t.device_id, t.antenna, t.side, t.xid is not null as moved
    from folded f left join taken t on t.epc = f.epc and t.location_id = f.location_id and t.xid = f.newest
),
updated as (
    update tag_sightings s set
        first_seen_at = n.first_seen_at, last_seen_at = n.last_seen_at, reads = n.reads, rssi_smoothed_dbm = n.rssi,
        last_device_id = case when n.moved then n.device_id else s.last_device_id end,
        last_antenna = case when n.moved then n.antenna else s.last_antenna end,
        side = case when n.moved then n.side else s.side end,
        updated_at = now()
    from newest n
    where s.ctid = n.row_id
    returning s.epc
),
inserted as (
    insert into tag_sightings (
        epc, location_id, first_seen_at, last_seen_at, reads, rssi_smoothed_dbm, last_device_id, last_antenna, side
    )
    select epc, location_id, first_seen_at, last_seen_at, reads, rssi, device_id, antenna, side
    from newest where row_id is null
    returning epc
),
changed as (select epc from updated union all select epc from inserted)
select (select count(*) from taken),
       (select coalesce(array_agg(distinct xid), '{{}}') from taken),
       (select coalesce(array_agg(distinct epc collate "C"), '{{}}') from changed),
       (select coalesce(array_agg(distinct epc collate "C"), '{{}}') from inserted)
"""
# Where to start: every transaction below the mark is folded. A mark from another cluster's transaction numbers
# (a restore into a new cluster) would skip new deltas, so one beyond the numbers this server has given out is
# not trusted.
_SINCE: Final = """
select case when m.folded_below <= pg_snapshot_xmax(pg_current_snapshot()) then m.folded_below else '0'::xid8 end
from (select coalesce((select folded_below from sighting_fold_marks where name = 'resolver'), '0'::xid8)
      as folded_below) m
"""
_CUT: Final = "select xid from sighting_deltas where xid >= %s::xid8 order by xid offset %s limit 1"
_SAVE_MARK: Final = """
insert into sighting_fold_marks (name, folded_below) values ('resolver', %s::xid8)
on conflict (name) do update set folded_below = excluded.folded_below, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class Fold:
    deltas: int
    """Delta rows folded (and deleted)."""
    epcs: list[str]
    """The EPCs whose sightings changed."""
    new_epcs: list[str]
    """The EPCs among them sighted somewhere new (which may be the first sighting of the tag)."""
    complete: bool
    """Every delta committed before the fold began was folded (False: a backlog, folded up to a transaction)."""


async def backlog(conn: Conn, limit: int) -> Any | None:
    """The transaction to fold through when more than ``limit`` deltas wait (None: fold them all at once).

    A fold holds its deltas in memory, so a backlog (after the resolver was down) is folded over several ticks,
    oldest transactions first."""
    return await _scalar(conn, _CUT, (await _scalar(conn, _SINCE), limit))


async def fold(conn: Conn, through: Any | None = None) -> Fold:
    """Fold the waiting deltas (of transactions up to ``through``, or all) into tag_sightings and portal_passes, in
    the caller's transaction. The resolver must be the only writer of both tables (it holds its lock)."""
    since = await _scalar(conn, _SINCE)
    # Every transaction below this xmin has ended, so the fold below sees its deltas.
    xmin = await _scalar(conn, "select pg_snapshot_xmin(pg_current_snapshot())")
    await conn.execute("set local work_mem = '64MB'")  # the deltas are sorted once, in memory
    cursor = await conn.execute(FOLD_SQL, {"since": since, "through": _LAST_XID if through is None else through})
    row = await cursor.fetchone()
    assert row is not None  # a select without from always has its row
    deltas, xids, epcs, new_epcs = row
    # A transaction's deltas commit together, so deleting by transaction deletes exactly what was folded.
    await conn.execute("delete from sighting_deltas where xid = any(%s::xid8[])", (xids,))
    await conn.execute(_SAVE_MARK, (xmin if through is None else min(xmin, through, key=int),))
    DELTAS_FOLDED.inc(deltas)
    return Fold(deltas, epcs, new_epcs, through is None)


async def _scalar(conn: Conn, query: str, params: tuple[Any, ...] | None = None) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where reads belong: per antenna, and per reader for antennas without a row of their own."""

    antennas: Mapping[tuple[str, int], Place]
    readers: Mapping[str, str]

    def place(self, device_id: str, antenna: int) -> Place | None:
        found = self.antennas.get((device_id, antenna))
        if found is not None:
            return found
        location = self.readers.get(device_id)
        return None if location is None else (location, None)


async def load_placement(conn: Conn) -> Placement:
    """The registry's antenna map; parked devices (``assigned = false``) place nothing."""
    cursor = await conn.execute(
        "select a.device_id, a.antenna, a.location_id, a.side from antennas a"
        " join devices d on d.id = a.device_id where d.assigned"
    )
    antennas = {(row[0], int(row[1])): (row[2], row[3]) for row in await cursor.fetchall()}
    cursor = await conn.execute("select id, location_id from devices where assigned and location_id is not null")
    readers = {row[0]: row[1] for row in await cursor.fetchall()}
    return Placement(antennas, readers)


class Visit:
    """The reads of one tag at one location within a batch, from its first read on."""

    __slots__ = ("antenna", "device_id", "first_at", "in_first_at", "in_last_at", "last_at", "out_first_at",
                 "out_last_at", "reads", "rssi_reads", "rssi_sum", "side")  # fmt: skip

    def __init__(self, read_at: datetime, device_id: str, antenna: int, rssi_dbm: float | None, side: str | None):
        self.first_at = self.last_at = read_at
        self.reads = 1
        self.device_id, self.antenna, self.side = device_id, antenna, side
        self.rssi_sum, self.rssi_reads = (0.0, 0) if rssi_dbm is None else (rssi_dbm, 1)
        self.in_first_at = self.in_last_at = read_at if side == "in" else None
        self.out_first_at = self.out_last_at = read_at if side == "out" else None

    def add(self, read_at: datetime, device_id: str, antenna: int, rssi_dbm: float | None, side: str | None) -> None:
        self.reads += 1
        if rssi_dbm is not None:
            self.rssi_sum += rssi_dbm
            self.rssi_reads += 1
        self.first_at = min(self.first_at, read_at)
        if read_at >= self.last_at:
            self.last_at, self.device_id, self.antenna, self.side = read_at, device_id, antenna, side
        if side == "in":
            self.in_first_at = read_at if self.in_first_at is None else min(self.in_first_at, read_at)
            self.in_last_at = read_at if self.in_last_at is None else max(self.in_last_at, read_at)
        elif side == "out":
            self.out_first_at = read_at if self.out_first_at is None else min(self.out_first_at, read_at)
            self.out_last_at = read_at if self.out_last_at is None else max(self.out_last_at, read_at)


def aggregate(reads: Iterable[Row], placement: Placement) -> tuple[dict[tuple[str, str], Visit], int]:
    """Fold raw read rows per (epc, location); returns the visits and how many reads could not be placed."""
    visits: dict[tuple[str, str], Visit] = {}
    places: dict[tuple[str, int], Place | None] = {}
    unplaced = 0
    for row in reads:
        read_at, device_id, antenna, epc, rssi_dbm = row[0], row[1], row[2], row[3], row[4]
        port = (device_id, antenna)
        if port in places:
            place = places[port]
        else:
            place = places[port] = placement.place(device_id, antenna)
        if place is None:
            unplaced += 1
            continue
        key = (epc, place[0])
        visit = visits.get(key)
        if visit is None:
            visits[key] = Visit(read_at, device_id, antenna, rssi_dbm, place[1])
        else:
            visit.add(read_at, device_id, antenna, rssi_dbm, place[1])
    return visits, unplaced


def delta_rows(visits: Mapping[tuple[str, str], Visit]) -> Iterable[Row]:
    """The ``sighting_deltas`` rows of a batch's visits (the table orders them by transaction, not by row)."""
    for (epc, location_id), v in visits.items():
        portal = v.in_first_at is not None or v.out_first_at is not None
        yield (epc, location_id, v.first_at, v.last_at, v.reads, v.rssi_sum / v.rssi_reads if v.rssi_reads else None,
               v.device_id, v.antenna, v.side if portal else None,
               v.in_first_at, v.in_last_at, v.out_first_at, v.out_last_at)  # fmt: skip


class Sightings:
    """The ingest step (``ingest.writer.Step``); one instance per Writer, holding the cached antenna map."""

    def __init__(self, refresh_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh_s = refresh_s
        self._clock = clock
        self._placement: Placement | None = None
        self._loaded_at = 0.0
        self.unplaced_reads = 0

    async def __call__(self, conn: Conn, rows: Rows) -> None:
        if not rows.rfid_reads:
            return
        placement = await self._current_placement(conn)
        visits, unplaced = aggregate(rows.rfid_reads, placement)
        if unplaced:
            self.unplaced_reads += unplaced
            UNPLACED_READS.inc(unplaced)
        if not visits:
            return
        async with conn.cursor().copy(_COPY_DELTAS) as copy:
            copy.set_types(list(_DELTA_TYPES))
            for row in delta_rows(visits):
                await copy.write_row(row)
        await conn.execute(f"notify {CHANNEL}")
        SIGHTINGS_WRITTEN.inc(len(visits))

    def invalidate(self) -> None:
        """Reload the antenna map before the next batch (after a registry change)."""
        self._placement = None

    async def _current_placement(self, conn: Conn) -> Placement:
        now = self._clock()
        if self._placement is None or now - self._loaded_at >= self._refresh_s:
            self._placement = await load_placement(conn)
            self._loaded_at = now
        return self._placement
