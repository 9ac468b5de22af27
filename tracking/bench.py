"""`stocktrace bench tracking-queries`: "where is item X" and "what is at location L" against the state the
resolver keeps, and the same questions asked of the raw reads (latest read per EPC) in the same run.

The data is generated inside PostgreSQL (``insert ... select`` over ``generate_series``, no round trip per row):
N items spread evenly over L shelves (four per reader, one per antenna), one sighting and one state row each, and
R raw reads spread over a day (so over 24 one-hour chunks of rfid_reads), each item read at its shelf's antenna.
Each question is asked many times for random keys on one connection (prepared after the first few), and the
client-side time of each answer is recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, LiteralString

import numpy as np
import psycopg

EPC_PREFIX: Final = "3034F4E4E40002C0"  # SGTIN-96 of GTIN 04012345000115; the serial takes the last 8 digits

_SETUP: Final[Sequence[LiteralString]] = (
    "insert into locations (id, site_id, kind) values ('bench-site', 'bench-site', 'site')",
    "insert into locations (id, site_id, parent_id, kind)"
    " select 'bench-shelf-' || l, 'bench-site', 'bench-site', 'shelf' from generate_series(0, %(locations)s - 1) l",
    "insert into devices (id, kind, source)"
    " select 'bench-reader-' || r, 'rfid_reader', 'native' from generate_series(0, (%(locations)s - 1) / 4) r",
    "insert into antennas (device_id, antenna, location_id)"
    " select 'bench-reader-' || (l / 4), l %% 4 + 1, 'bench-shelf-' || l from generate_series(0, %(locations)s - 1) l",
)
_ITEMS: Final[Sequence[LiteralString]] = (
    "insert into items (epc, scheme, gtin, serial, first_seen_at)"
    " select %(prefix)s || lpad(to_hex(i), 8, '0'), 'sgtin', '04012345000115', i::text, %(start)s::timestamptz"
    " from generate_series(0, %(items)s - 1) i",
    "insert into tag_sightings (epc, location_id, first_seen_at, last_seen_at, reads, rssi_smoothed_dbm,"
    " last_device_id, last_antenna)"
    " select %(prefix)s || lpad(to_hex(i %% %(items)s), 8, '0'),"
    " 'bench-shelf-' || ((i + i / %(items)s) %% %(locations)s),"
    " %(start)s::timestamptz, %(start)s::timestamptz + interval '1 day', 100, -60,"
    " 'bench-reader-' || (i %% %(locations)s / 4), 1"
    " from generate_series(0, %(sightings)s - 1) i",
    "insert into item_state (epc, location_id, site_id, status, since, last_seen_at)"
    " select %(prefix)s || lpad(to_hex(i), 8, '0'), 'bench-shelf-' || (i %% %(locations)s), 'bench-site', 'present',"
    " %(start)s::timestamptz, %(start)s::timestamptz + interval '1 day' from generate_series(0, %(items)s - 1) i",
)
_READS: Final[LiteralString] = (
    "insert into rfid_reads (read_at, device_id, antenna, epc, rssi_dbm, received_at)"
    " select %(start)s::timestamptz + (i::float8 / %(reads)s) * interval '1 day',"
    " 'bench-reader-' || (i %% %(items)s %% %(locations)s / 4), (i %% %(items)s %% %(locations)s) %% 4 + 1,"
    " %(prefix)s || lpad(to_hex(i %% %(items)s), 8, '0'), -60, %(start)s::timestamptz"
    " from generate_series(%(first)s, %(last)s) i"
)

WHERE_IS: Final[LiteralString] = "select location_id, status, since from item_state where epc = %s"
WHAT_IS_AT: Final[LiteralString] = "select epc from item_state where location_id = %s"
# Without a state table: the newest read of the EPC, and its antenna's location.
WHERE_IS_RAW: Final[LiteralString] = (
    "select a.location_id, r.read_at from (select device_id, antenna, read_at from rfid_reads where epc = %s"
    " order by read_at desc limit 1) r join antennas a on a.device_id = r.device_id and a.antenna = r.antenna"
)
# ... and every EPC whose newest read was at one of the location's antennas.
WHAT_IS_AT_RAW: Final[LiteralString] = (
    "select r.epc from (select distinct on (epc) epc, device_id, antenna from rfid_reads"
    " order by epc, read_at desc) r join antennas a on a.device_id = r.device_id and a.antenna = r.antenna"
    " where a.location_id = %s"
)


@dataclass(frozen=True, slots=True)
class Timing:
    queries: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class QueryBench:
    items: int
    sightings: int
    reads: int
    locations: int
    load_s: float
    where_is: Timing
    what_is_at: Timing
    where_is_raw: Timing
    what_is_at_raw: Timing

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def load(dsn: str, items: int, sightings: int, reads: int, locations: int, progress: Callable[[str], None]) -> float:
    """Empty the tracking and raw tables and fill them; returns the seconds it took."""
    started = time.perf_counter()
    params = {"items": items, "sightings": max(sightings, items), "locations": locations, "prefix": EPC_PREFIX,
              "start": "2026-03-01T00:00:00Z", "reads": max(reads, 1)}  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "truncate item_state, location_events, tag_sightings, portal_passes, container_contents, items,"
            " rfid_reads, antennas, devices, location_presence_policy, vehicle_positions, locations cascade"
        )
        for statement in _SETUP:
            conn.execute(statement, params)
        progress(f"  {items:,} items, their sightings and state ...")
        for statement in _ITEMS:
            conn.execute(statement, params)
        step = 5_000_000
        for first in range(0, reads, step):
            progress(f"  raw reads {first:,} .. {min(first + step, reads):,} of {reads:,} ...")
            conn.execute(_READS, {**params, "first": first, "last": min(first + step, reads) - 1})
        conn.execute("vacuum analyze items, item_state, tag_sightings, antennas")
        conn.execute("analyze rfid_reads")
    return time.perf_counter() - started


def time_queries(
    conn: psycopg.Connection[Any], query: LiteralString, keys: Sequence[str], budget_s: float = 60.0
) -> Timing:
    """Client-side milliseconds of each answer (all rows fetched), over ``keys`` or until ``budget_s`` is spent."""
    times = []
    deadline = time.perf_counter() + budget_s
    for key in keys:
        started = time.perf_counter()
        conn.execute(query, (key,)).fetchall()
        times.append((time.perf_counter() - started) * 1000)
        if time.perf_counter() > deadline:
            break
    values = np.asarray(times)
    return Timing(len(times), float(np.percentile(values, 50)), float(np.percentile(values, 99)))


def run_benchmark(
    dsn: str,
    items: int,
    reads: int,
    locations: int,
    queries: int,
    raw_location_queries: int,
    progress: Callable[[str], None],
    sightings: int | None = None,
) -> QueryBench:
    rng = random.Random(20260301)  # the same keys in every run; not for security
    sightings = sightings or items
    progress(f"loading {items:,} items over {locations:,} shelves and {reads:,} raw reads ...")
    load_s = load(dsn, items, sightings, reads, locations, progress)
    epcs = [f"{EPC_PREFIX}{rng.randrange(items):08X}" for _ in range(queries)]
    shelves = [f"bench-shelf-{rng.randrange(locations)}" for _ in range(queries)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        progress("where is item X / what is at location L (item_state) ...")
        where_is = time_queries(conn, WHERE_IS, epcs)
        what_is_at = time_queries(conn, WHAT_IS_AT, shelves)
        progress("the same from rfid_reads ...")
        where_is_raw = time_queries(conn, WHERE_IS_RAW, epcs)
        what_is_at_raw = time_queries(conn, WHAT_IS_AT_RAW, shelves[:raw_location_queries], budget_s=120.0)
    return QueryBench(items, sightings, reads, locations, load_s, where_is, what_is_at, where_is_raw, what_is_at_raw)
