"""The RFID read counts that ingest keeps (migration 0002), as panels read them instead of the raw reads.

A month of raw reads is every read of the month. Ingest keeps a row per reader antenna and minute (read_counts),
five minutes (read_counts_5m) and half hour (read_counts_30m). A panel reads the coarsest of them whose grain
divides its bucket ($__interval), so that each row falls into one bucket: Grafana's intervals from 30 minutes up
(a range of a few weeks and more) are whole half hours, from 5 minutes up whole five minutes. The conditions are
constants once Grafana has put the interval in, so PostgreSQL plans only the table they pick.
"""

from __future__ import annotations

from typing import Final

# The smallest $__interval of a panel on read counts (Grafana's "Min interval"): in a finer bucket each minute's
# count would land in one bucket of several and the rate would jump between zero and a multiple.
READ_COUNTS_INTERVAL: Final = "1m"

# Coarsest first: (table, its grain in milliseconds). The finest takes whatever the others leave.
_GRAINS: Final = (("read_counts_30m", 1_800_000), ("read_counts_5m", 300_000), ("read_counts", 60_000))


def read_counts(columns: str) -> str:
    """A FROM item named ``counts``: these columns of the read counts in the panel's range ($__timeFilter on
    ``minute``), from the coarsest table whose grain divides $__interval."""
    branches: list[str] = []
    coarser: list[str] = []
    for number, (table, grain_ms) in enumerate(_GRAINS, start=1):
        divides = [] if number == len(_GRAINS) else [f"$__interval_ms % {grain_ms} = 0"]
        picked = " and ".join([*coarser, *divides, "$__timeFilter(minute)"])
        branches.append(f"    select {columns} from {table}\n    where {picked}")
        coarser.append(f"$__interval_ms % {grain_ms} <> 0")
    return "(\n" + "\n    union all\n".join(branches) + "\n) counts"
