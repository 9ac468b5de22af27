"""Reads per reader antenna and minute, with their ingest lag: the rollup the rate and lag panels read.

The writer tallies the reads a batch stored per minute and adds them to ``read_counts`` and, summed to five
minutes and half hours, to ``read_counts_5m`` and ``read_counts_30m`` (migration 0002), in the batch's
transaction: the counts commit with the reads or not at all. The tally costs about half a microsecond of Python a
read, spent while the server works through the batch's COPY; sending the reads again as arrays for SQL to group
cost over ten times that in parameter encoding when measured.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import psycopg

from ingest.batch import Row

# (device_id, antenna, minute as Unix seconds // 60) -> [reads, sum of lag seconds, largest lag seconds]
Tally = dict[tuple[str, int, float], list[float]]

# The three grains in one statement. Rows go in key order, so that workers adding to the same antennas' minutes
# lock them in one order (and every worker runs this same statement, so the tables come in one order too).
_UPSERT: Final = """
with counted (device_id, antenna, minute, reads, lag_sum_s, lag_max_s) as (
    select * from unnest(%(ids)s::text[], %(antennas)s::int2[], %(minutes)s::timestamptz[], %(reads)s::int8[],
                         %(lag_sums)s::float8[], %(lag_maxes)s::float8[])
), per_minute as (
    insert into read_counts as c
    select minute, device_id, antenna, reads, lag_sum_s, lag_max_s from counted
    order by device_id, antenna, minute
    on conflict (device_id, antenna, minute) do update
    set reads = c.reads + excluded.reads,
        lag_sum_s = c.lag_sum_s + excluded.lag_sum_s,
        lag_max_s = greatest(c.lag_max_s, excluded.lag_max_s)
), per_5m as (
    insert into read_counts_5m as c
    select time_bucket('5 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
    from counted
    group by 1, 2, 3
    order by 2, 3, 1
    on conflict (device_id, antenna, minute) do update
    set reads = c.reads + excluded.reads,
        lag_sum_s = c.lag_sum_s + excluded.lag_sum_s,
        lag_max_s = greatest(c.lag_max_s, excluded.lag_max_s)
)
insert into read_counts_30m as c
select time_bucket('30 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
from counted
group by 1, 2, 3
order by 2, 3, 1
on conflict (device_id, antenna, minute) do update
set reads = c.reads + excluded.reads,
    lag_sum_s = c.lag_sum_s + excluded.lag_sum_s,
    lag_max_s = greatest(c.lag_max_s, excluded.lag_max_s)
"""


def tally(reads: Iterable[Row]) -> Tally:
    """Count rfid_reads rows (read_at, device_id, antenna, epc, rssi_dbm, received_at, extra) per antenna-minute.

    Minutes are those of time_bucket('1 minute', read_at); the lag is received_at - read_at, in seconds.
    """
    groups: Tally = {}
    for at, device_id, antenna, _, _, received_at, _ in reads:
        lag_s = (received_at - at).total_seconds()  # to the microsecond; a difference of epoch seconds is not
        key = (device_id, antenna, at.timestamp() // 60)
        group = groups.get(key)
        if group is None:
            groups[key] = [1, lag_s, lag_s]
        else:
            group[0] += 1
            group[1] += lag_s
            if lag_s > group[2]:
                group[2] = lag_s
    return groups


async def add(conn: psycopg.AsyncConnection[tuple[object, ...]], counts: Tally) -> None:
    """Add a batch's tally to read_counts, read_counts_5m and read_counts_30m, in one statement."""
    if not counts:
        return
    keys = list(counts)
    await conn.execute(
        _UPSERT,
        {
            "ids": [key[0] for key in keys],
            "antennas": [key[1] for key in keys],
            "minutes": [datetime.fromtimestamp(key[2] * 60, UTC) for key in keys],
            "reads": [int(counts[key][0]) for key in keys],
            "lag_sums": [counts[key][1] for key in keys],
            "lag_maxes": [counts[key][2] for key in keys],
        },
    )
