"""The ingest step that folds each committed batch of reads into ``tag_sightings``, per tag and location.

It runs inside the batch's transaction (``ingest.writer.Writer(dsn, steps=[Sightings()])``), on the hot path, so
it does no per-read SQL: the reads are placed and aggregated in dicts, COPYed into a temporary table and merged
by one statement, which also writes ``portal_passes``. New EPCs get their ``items`` row (with the GS1 identity
decoded) from the resolver at its next tick: decoding costs tens of microseconds per EPC, which the hot path
cannot pay for every new tag.

Placement: an antenna's row in ``antennas`` gives its location (and portal side); an antenna without one
belongs to its reader's ``devices.location_id``. Reads of a reader that is not registered, parked
(``assigned = false``) or has no location are not placed, only counted (``stocktrace_tracking_unplaced_reads``):
the raw reads are kept, and once the reader is mapped its new reads are placed. The map is reloaded from the
registry every ``refresh_s`` seconds.

Merging: first/last seen only widen (``least``/``greatest``), so a late read never makes a sighting look newer
than it is; the smoothed RSSI and the last device, antenna and side move only with reads newer than
``last_seen_at``. A read more than ``VISIT_GAP_S`` after the last one (``PORTAL_PASS_GAP_S`` at a portal) starts
a new visit (first seen, reads and RSSI restart). Reads within one batch are one visit whatever their gaps.

Redelivery after a crash re-applies the same minima and maxima, which changes nothing, but adds its reads to
``reads`` again: that counter may over-count redelivered batches (which only shortens a tag's read interval, and
so its age-out, a little).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
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
SIGHTINGS_WRITTEN: Final = Counter("stocktrace_tracking_sightings", "Tag sightings upserted (tag x location x batch)")

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]
# (location_id, side) of a read: side is 'in' / 'out' for the antennas of a portal.
Place: TypeAlias = tuple[str, str | None]


_CREATE_BATCH: Final = """
create temp table if not exists tracking_sightings_batch (
    epc text, location_id text, first_at timestamptz, last_at timestamptz, reads bigint, rssi_dbm real,
    device_id text, antenna smallint, side text,
    in_first_at timestamptz, in_last_at timestamptz, out_first_at timestamptz, out_last_at timestamptz
) on commit delete rows
"""
_BATCH_COLUMNS: Final = (
    "epc", "location_id", "first_at", "last_at", "reads", "rssi_dbm", "device_id", "antenna", "side",
    "in_first_at", "in_last_at", "out_first_at", "out_last_at",
)  # fmt: skip
_BATCH_TYPES: Final = (
    "text", "text", "timestamptz", "timestamptz", "int8", "float4", "text", "int2", "text",
    "timestamptz", "timestamptz", "timestamptz", "timestamptz",
)  # fmt: skip

# A tag unread for longer than the gap before this batch's first read of it: a new visit (or portal pass). A
# portal's reads carry their side, and a pass ends after the short gap.
_NEW_VISIT: Final = (
    "excluded.first_seen_at > s.last_seen_at + case when excluded.side is null"
    f" then interval '{VISIT_GAP_S} seconds' else interval '{PORTAL_PASS_GAP_S} seconds' end"
)
_NEW_PASS: Final = (
    "least(excluded.in_first_at, excluded.out_first_at)"
    f" > greatest(p.in_last_at, p.out_last_at) + interval '{PORTAL_PASS_GAP_S} seconds'"
)
_NEWER: Final = "excluded.last_seen_at >= s.last_seen_at"

# One statement for both tables. Rows go in (epc, location_id) order in every worker, so two workers
# writing the same tags lock them in the same order and cannot deadlock.
MERGE_SQL: Final = f"""
with passes as (
    insert into portal_passes as p (epc, location_id, in_first_at, in_last_at, out_first_at, out_last_at)
    select epc, location_id, in_first_at, in_last_at, out_first_at, out_last_at
    from tracking_sightings_batch where side is not null
    order by epc, location_id
    on conflict (epc, location_id) do update set
        in_first_at = case when {_NEW_PASS} then excluded.in_first_at
                           else least(p.in_first_at, excluded.in_first_at) end,
        in_last_at = case when {_NEW_PASS} then excluded.in_last_at
                          else greatest(p.in_last_at, excluded.in_last_at) end,
        out_first_at = case when {_NEW_PASS} then excluded.out_first_at
                            else least(p.out_first_at, excluded.out_first_at) end,
        out_last_at = case when {_NEW_PASS} then excluded.out_last_at
                           else greatest(p.out_last_at, excluded.out_last_at) end,
        updated_at = now()
)
insert into tag_sightings as s (
    epc, location_id, first_seen_at, last_seen_at, reads, rssi_smoothed_dbm, last_device_id, last_antenna, side
)
select epc, location_id, first_at, last_at, reads, rssi_dbm, device_id, antenna, side
from tracking_sightings_batch
order by epc, location_id
on conflict (epc, location_id) do update set
    first_seen_at = case when {_NEW_VISIT} then excluded.first_seen_at
                         else least(s.first_seen_at, excluded.first_seen_at) end,
    last_seen_at = greatest(s.last_seen_at, excluded.last_seen_at),
    reads = case when {_NEW_VISIT} then excluded.reads else s.reads + excluded.reads end,
    rssi_smoothed_dbm = case
        when {_NEW_VISIT} or s.rssi_smoothed_dbm is null
            then coalesce(excluded.rssi_smoothed_dbm, s.rssi_smoothed_dbm)
        when excluded.last_seen_at <= s.last_seen_at or excluded.rssi_smoothed_dbm is null
            then s.rssi_smoothed_dbm
        else s.rssi_smoothed_dbm + (1 - power(1 - {RSSI_READ_WEIGHT}, excluded.reads))
                                   * (excluded.rssi_smoothed_dbm - s.rssi_smoothed_dbm)
    end,
    last_device_id = case when {_NEWER} then excluded.last_device_id else s.last_device_id end,
    last_antenna = case when {_NEWER} then excluded.last_antenna else s.last_antenna end,
    side = case when {_NEWER} then excluded.side else s.side end,
    updated_at = now()
"""


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
    """The reads of one tag at one location within a batch."""

    __slots__ = ("antenna", "device_id", "first_at", "in_first_at", "in_last_at", "last_at", "out_first_at",
                 "out_last_at", "reads", "rssi_reads", "rssi_sum", "side")  # fmt: skip

    def __init__(self, read_at: datetime) -> None:
        self.first_at = self.last_at = read_at
        self.reads = self.rssi_reads = 0
        self.rssi_sum = 0.0
        self.device_id = ""
        self.antenna = 0
        self.side: str | None = None
        self.in_first_at: datetime | None = None
        self.in_last_at: datetime | None = None
        self.out_first_at: datetime | None = None
        self.out_last_at: datetime | None = None

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

    @property
    def rssi_dbm(self) -> float | None:
        return self.rssi_sum / self.rssi_reads if self.rssi_reads else None

    @property
    def portal(self) -> bool:
        return self.in_first_at is not None or self.out_first_at is not None


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
            visit = visits[key] = Visit(read_at)
        visit.add(read_at, device_id, antenna, rssi_dbm, place[1])
    return visits, unplaced


def batch_rows(visits: Mapping[tuple[str, str], Visit]) -> list[Row]:
    """The rows of the temporary table, in (epc, location_id) order."""
    rows: list[Row] = []
    for (epc, location_id), v in sorted(visits.items()):
        side = v.side if v.portal else None
        rows.append(
            (epc, location_id, v.first_at, v.last_at, v.reads, v.rssi_dbm, v.device_id, v.antenna, side,
             v.in_first_at, v.in_last_at, v.out_first_at, v.out_last_at)
        )  # fmt: skip
    return rows


class Sightings:
    """The ingest step (``ingest.writer.Step``); one instance per Writer, holding the cached antenna map."""

    def __init__(self, refresh_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh_s = refresh_s
        self._clock = clock
        self._placement: Placement | None = None
        self._loaded_at = 0.0
        # Connections that have the temporary table (the Writer opens a new one after an error).
        self._prepared: weakref.WeakSet[Conn] = weakref.WeakSet()
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
        await self._write(conn, batch_rows(visits))
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

    async def _write(self, conn: Conn, rows: Sequence[Row]) -> None:
        if conn not in self._prepared:
            await conn.execute(_CREATE_BATCH)
            self._prepared.add(conn)
        async with conn.cursor().copy(
            f"copy tracking_sightings_batch ({', '.join(_BATCH_COLUMNS)}) from stdin (format binary)"
        ) as copy:
            copy.set_types(list(_BATCH_TYPES))
            for row in rows:
                await copy.write_row(row)
        await conn.execute(MERGE_SQL)
