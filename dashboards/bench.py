"""`stocktrace bench queries`: every panel's query over a month of generated history, timed.

A database of its own (<database>_bench_dashboards) is created, migrated and filled with dashboards/dataset.py
(COPY), vacuumed and analysed as autovacuum would leave it, then each query of each board runs `repeats` times
over the last `days` (the dashboard's range; a panel with its own relative time uses that, as Grafana does),
with its variables resolved as on load. The baseline, in the same run, is the same query over the last day.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from dashboards import catalogue, dataset
from dashboards.boards import BOARDS
from dashboards.macros import TimeRange
from stocktrace import db

BUDGET_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    range_days: float
    rows: int
    p50_ms: float
    p99_ms: float
    baseline_ms: float

    @property
    def over_budget(self) -> bool:
        return self.p99_ms > BUDGET_S * 1000


@dataclass(frozen=True, slots=True)
class BenchResult:
    rows_loaded: dict[str, int]
    load_s: float
    timings: list[Timing]

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_loaded": self.rows_loaded,
            "load_s": round(self.load_s, 1),
            "panels": [
                {"name": t.name, "range_days": t.range_days, "rows": t.rows, "p50_ms": round(t.p50_ms, 1),
                 "p99_ms": round(t.p99_ms, 1), "baseline_1d_ms": round(t.baseline_ms, 1),
                 "over_budget": t.over_budget}
                for t in self.timings
            ],
        }  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: with few samples p99 is the slowest run, never an interpolation below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _time(conn: psycopg.Connection[Any], query: catalogue.BoardQuery, span: TimeRange,
          values: dict[str, Any], repeats: int) -> tuple[list[float], int]:  # fmt: skip
    elapsed, rows = [], 0
    for _ in range(repeats):
        result = catalogue.run(conn, query, span, values)
        elapsed.append(result.elapsed_s * 1000)
        rows = len(result.rows)
    return elapsed, rows


def time_queries(
    url: str, days: float, repeats: int, *, full_range: bool = False, progress: Callable[[str], None] = print
) -> list[Timing]:
    now = datetime.now(UTC)
    dashboard_range = TimeRange(now - timedelta(days=days), now)
    timings = []
    with psycopg.connect(url, autocommit=True) as conn:
        for build in BOARDS:
            model = build().build()
            values = catalogue.resolve_variables(conn, model, dashboard_range)
            for query in catalogue.queries(model):
                span = dashboard_range if full_range else query.time_range(dashboard_range)
                day = TimeRange(span.to_at - min(timedelta(days=1), span.to_at - span.from_at), span.to_at)
                catalogue.run(conn, query, span, values)  # warm the cache and the plan's statistics
                elapsed, rows = _time(conn, query, span, values, repeats)
                baseline, _ = _time(conn, query, day, values, repeats)
                timing = Timing(
                    query.name,
                    (span.to_at - span.from_at) / timedelta(days=1),
                    rows,
                    statistics.median(elapsed),
                    percentile(elapsed, 0.99),
                    statistics.median(baseline),
                )
                progress(format_timing(timing))
                timings.append(timing)
    return timings


def format_timing(timing: Timing) -> str:
    flag = "  OVER 1 s" if timing.over_budget else ""
    return (
        f"{timing.p50_ms:9.1f} {timing.p99_ms:9.1f} {timing.baseline_ms:9.1f} {timing.rows:7d} "
        f"{timing.range_days:5.1f}d  {timing.name}{flag}"
    )


HEADER: Final = f"{'p50 ms':>9} {'p99 ms':>9} {'1 day ms':>9} {'rows':>7} {'range':>6}  panel / query"


def run_benchmark(
    database_url: str, scale: dataset.Scale, repeats: int, *, full_range: bool = False, keep: bool = False,
    progress: Callable[[str], None] = print,
) -> BenchResult:  # fmt: skip
    """Fill ``<database>_bench_dashboards`` at ``scale`` and time every query in it."""
    with db.scratch_database(database_url, "bench_dashboards", keep=keep) as url:
        started = datetime.now(UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            counts = dataset.load(conn, scale)
            conn.execute("vacuum analyze")
        load_s = (datetime.now(UTC) - started).total_seconds()
        progress(f"loaded {counts.total:,} rows in {load_s:.0f} s: " + ", ".join(
            f"{table} {rows:,}" for table, rows in counts.rows.items()
        ))  # fmt: skip
        progress(HEADER)
        timings = time_queries(url, scale.days, repeats, full_range=full_range, progress=progress)
    return BenchResult(counts.rows, load_s, timings)
