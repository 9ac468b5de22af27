"""Benchmark of the evaluation: rules x subjects judged per second over a generated world, against a naive
evaluator that judges each subject with its own queries, measured in the same run.

The world (in a database of its own): one site with ``rooms`` cold rooms (2-8 °C), each with a sensor that has
reported every 5 minutes for the last two hours (one room in twenty above its band); ``shelves`` shelves, each
read by an antenna, holding ``skus`` SKUs each (shelves x SKUs pairs) with four weeks of weekday-seasonal
consumption, items on hand and a book line (one pair in twenty off the book). The evaluator ticks at a fixed
``now`` with every rule but lot exposure (which reads each lot's whole history; see alerts/rules_coldchain.py).

Reported: subjects per second per rule and for a whole tick (first tick, which creates the alerts, and the
median of the following ones, which is the steady state), and the tick latency (``stocktrace_alerts_tick_seconds``
shows the same in production). The naive baseline judges the same excursion, variance and low-stock subjects one
by one, as a per-subject query loop would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, LiteralString

import numpy as np
import psycopg

from alerts import reorder
from alerts.evaluator import Evaluator, TickReport, all_rules
from alerts.model import AlertChange
from alerts.rules_coldchain import ExcursionParams, scan
from alerts.rules_config import parse_rules
from tracking.condition_series import hold

Progress = Callable[[str], None]
GTIN_BASE: Final = 9_506_000_000_000
_RULES: Final = """
rules:
  lot_exposure: {enabled: false}
  low_stock: {refresh_days: 0}
"""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    rooms: int = 1_000
    shelves: int = 100
    skus: int = 100
    ticks: int = 5
    naive_subjects: int = 2_000


@dataclass(frozen=True, slots=True)
class RuleFigure:
    rule: str
    subjects: int
    findings: int
    median_ms: float

    @property
    def subjects_per_s(self) -> float:
        return self.subjects / (self.median_ms / 1000) if self.median_ms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BenchResult:
    rooms: int
    pairs: int
    subjects_per_tick: int
    first_tick_ms: float
    tick_p50_ms: float
    tick_max_ms: float
    subjects_per_s: float
    naive_subjects: int
    naive_subjects_per_s: float
    changes_first_tick: int
    rules: list[RuleFigure] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.subjects_per_s / self.naive_subjects_per_s if self.naive_subjects_per_s else 0.0

    def to_json(self) -> dict[str, Any]:
        found = asdict(self)
        found["speedup"] = round(self.speedup, 1)
        found["rules"] = [{**asdict(r), "subjects_per_s": round(r.subjects_per_s)} for r in self.rules]
        return found


def run_benchmark(config: BenchConfig, progress: Progress) -> BenchResult:
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    progress(f"world: {config.rooms:,} cold rooms with sensors, {config.shelves * config.skus:,} SKU x shelf pairs ...")
    started = time.perf_counter()
    with psycopg.connect(config.database_url, autocommit=True) as conn:
        build_world(conn, config, now)
    progress(f"  built in {time.perf_counter() - started:.1f} s")
    progress(f"evaluator: {config.ticks} ticks ...")
    reports = asyncio.run(_ticks(config, now))
    progress(f"naive: {config.naive_subjects:,} subjects judged one by one ...")
    naive_subjects, naive_s = asyncio.run(_naive(config, now))
    return _result(config, reports, naive_subjects, naive_s)


def _result(config: BenchConfig, reports: Sequence[TickReport], naive_subjects: int, naive_s: float) -> BenchResult:
    steady = reports[1:] or reports
    durations = [r.duration_ms for r in steady]
    p50 = statistics.median(durations)
    names = [r.rule for r in reports[0].runs]
    figures = [
        RuleFigure(
            name,
            reports[-1].runs[i].subjects,
            reports[-1].runs[i].findings,
            statistics.median(r.runs[i].duration_ms for r in steady),
        )
        for i, name in enumerate(names)
    ]
    subjects = reports[-1].subjects
    return BenchResult(
        rooms=config.rooms,
        pairs=config.shelves * config.skus,
        subjects_per_tick=subjects,
        first_tick_ms=reports[0].duration_ms,
        tick_p50_ms=p50,
        tick_max_ms=max(durations),
        subjects_per_s=subjects / (p50 / 1000),
        naive_subjects=naive_subjects,
        naive_subjects_per_s=naive_subjects / naive_s if naive_s else 0.0,
        changes_first_tick=len(reports[0].changes),
        rules=figures,
    )


async def _ticks(config: BenchConfig, now: datetime) -> list[TickReport]:
    async def nowhere(conn: psycopg.AsyncConnection[Any], changes: Sequence[AlertChange]) -> None:
        return None

    evaluator = Evaluator(parse_rules(_RULES), rules=all_rules(), enqueue=nowhere, clock=lambda: now)
    reports = []
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as conn:
        for _ in range(config.ticks):
            reports.append(await evaluator.tick(conn))
    return reports


# ----------------------------------------------------------------------------------------------------
# The world


def _gtin(index: int) -> str:
    from tracking.inventory import gs1_check_digit

    body = f"{GTIN_BASE + index:013d}"
    return body + str(gs1_check_digit(body))


def build_world(conn: psycopg.Connection[Any], config: BenchConfig, now: datetime) -> None:
    """Empty the world's tables and fill them (COPY), as the registry, ingest and the resolver would."""
    conn.execute(
        "truncate alerts, silences, alert_rule_runs, inventory_judgements, inventory_judgement_lines, locations,"
        " devices, antennas, device_activity, antenna_activity, telemetry, items, item_state, skus, lots,"
        " book_imports, book_lines, consumption_daily restart identity cascade"
    )
    with conn.transaction():
        _rooms(conn, config, now)
        _shelves(conn, config, now)


def _copy(conn: psycopg.Connection[Any], statement: LiteralString, rows: Sequence[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _rooms(conn: psycopg.Connection[Any], config: BenchConfig, now: datetime) -> None:
    conn.execute("insert into locations (id, site_id, kind) values ('bench', 'bench', 'site')")
    rooms = [f"room-{i:05d}" for i in range(config.rooms)]
    _copy(conn, "copy locations (id, site_id, parent_id, kind, temperature_min_c, temperature_max_c) from stdin",
          [(r, "bench", "bench", "cold_room", 2.0, 8.0) for r in rooms])  # fmt: skip
    _copy(conn, "copy devices (id, kind, source, location_id) from stdin",
          [(f"probe-{r}", "sensor", "native", r) for r in rooms])  # fmt: skip
    _copy(conn, "copy device_activity (device_id, first_seen_at, last_seen_at, last_topic) from stdin",
          [(f"probe-{r}", now - timedelta(days=1), now, "bench") for r in rooms])  # fmt: skip
    samples = []
    for i, room in enumerate(rooms):
        warm = i % 20 == 0
        for k in range(24):
            at = now - timedelta(minutes=5 * (24 - k))
            value = 9.5 if warm and k >= 12 else 5.0 + 0.1 * (k % 3)
            samples.append((at, f"probe-{room}", "temperature_c", value, at))
    _copy(conn, "copy telemetry (observed_at, device_id, quantity, value, received_at) from stdin", samples)


def _shelves(conn: psycopg.Connection[Any], config: BenchConfig, now: datetime) -> None:
    shelves = [f"shelf-{i:04d}" for i in range(config.shelves)]
    gtins = [_gtin(k) for k in range(config.skus)]
    _copy(
        conn,
        "copy locations (id, site_id, parent_id, kind) from stdin",
        [(s, "bench", "bench", "shelf") for s in shelves],
    )
    _copy(conn, "copy skus (gtin, name, lead_time_days, unit_cost, order_cost, holding_cost_rate) from stdin",
          [(g, f"product {g}", 3.0, 10.0, 50.0, 0.25) for g in gtins])  # fmt: skip
    readers = [(f"reader-{s}", "rfid_reader", "native", s) for s in shelves]
    _copy(conn, "copy devices (id, kind, source, location_id) from stdin", readers)
    _copy(conn, "copy device_activity (device_id, first_seen_at, last_seen_at, last_topic) from stdin",
          [(r[0], now - timedelta(days=1), now, "bench") for r in readers])  # fmt: skip
    _copy(conn, "copy antennas (device_id, antenna, location_id) from stdin", [(r[0], 1, r[3]) for r in readers])
    _copy(conn, "copy antenna_activity (device_id, antenna, last_read_at, reads) from stdin",
          [(r[0], 1, now - timedelta(seconds=5), 100) for r in readers])  # fmt: skip
    _stock(conn, shelves, gtins, now)


def _stock(conn: psycopg.Connection[Any], shelves: list[str], gtins: list[str], now: datetime) -> None:
    rng = np.random.default_rng(7)
    today = now.date()
    consumption, items, states, book = [], [], [], []
    serial = 0
    for s, shelf in enumerate(shelves):
        for g, gtin in enumerate(gtins):
            weekday_units = int(rng.integers(2, 12))
            for back in range(1, 29):
                day = today - timedelta(days=back)
                if day.weekday() < 5:
                    consumption.append((day, shelf, gtin, "bench", max(1, weekday_units + int(rng.integers(-1, 2)))))
            on_hand = int(rng.integers(5, 40))
            for _ in range(on_hand):
                serial += 1
                epc = f"B{serial:011d}"
                items.append((epc, "sgtin-96", gtin, now - timedelta(days=10)))
                states.append((epc, shelf, "bench", "present", now - timedelta(days=10), now))
            off = (s * len(gtins) + g) % 20 == 0
            book.append((gtin, shelf, on_hand + (10 if off else 0), now - timedelta(hours=1)))
    _copy(conn, "copy consumption_daily (day, location_id, gtin, site_id, units) from stdin", consumption)
    _copy(conn, "copy items (epc, scheme, gtin, first_seen_at) from stdin", items)
    _copy(conn, "copy item_state (epc, location_id, site_id, status, since, last_seen_at) from stdin", states)
    row = conn.execute(
        "insert into book_imports (source, as_of, complete_for, lines_accepted, lines_rejected)"
        " values ('bench', %s, 'bench', %s, 0) returning id",
        (now - timedelta(hours=1), len(book)),
    ).fetchone()
    assert row is not None
    _copy(conn, "copy book_lines (import_id, gtin, location_id, quantity, as_of) from stdin",
          [(row[0], *line) for line in book])  # fmt: skip
    conn.execute("analyze")


# ----------------------------------------------------------------------------------------------------
# The naive baseline: each subject with its own queries


async def _naive(config: BenchConfig, now: datetime) -> tuple[int, float]:
    """Subjects judged and seconds taken: a third excursions, the rest variance and low stock of the same pairs."""
    share = max(1, config.naive_subjects // 3)
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as conn:
        rooms = await _rows(conn, "select id from locations where kind = 'cold_room' order by id limit %s", share)
        pairs = await _rows(conn, "select location_id, gtin from book_lines order by 1, 2 limit %s", share)
        started = time.perf_counter()
        for (room,) in rooms:
            await _naive_excursion(conn, room, now)
        for shelf, gtin in pairs:
            await _naive_variance(conn, shelf, gtin)
            await _naive_low_stock(conn, shelf, gtin, now)
        elapsed = time.perf_counter() - started
    return len(rooms) + len(pairs) * 2, elapsed


async def _rows(conn: psycopg.AsyncConnection[Any], query: LiteralString, *params: Any) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


_NAIVE_RANGE: Final = "select temperature_min_c, temperature_max_c from location_ranges where location_id = %s"
_NAIVE_SAMPLES: Final = """
select extract(epoch from t.observed_at)::float8, t.value
from telemetry t join devices d on d.id = t.device_id
where d.location_id = %s and d.kind = 'sensor' and t.quantity = 'temperature_c'
  and t.observed_at >= %s and t.observed_at <= %s
order by t.observed_at
"""
_NAIVE_OBSERVED: Final = """
select count(*) from item_state s join items i on i.epc = s.epc
where s.location_id = %s and i.gtin = %s and s.status = 'present'
"""
_NAIVE_BOOK: Final = "select sum(quantity) from book_current(%s) where gtin = %s"
_NAIVE_CONSUMPTION: Final = """
select day, units from consumption_daily where location_id = %s and gtin = %s and day >= %s and day < %s
"""
_NAIVE_ON_HAND: Final = """
select count(*) from item_state s join items i on i.epc = s.epc
where s.location_id = %s and i.gtin = %s and s.status = 'present'
"""


async def _naive_excursion(conn: psycopg.AsyncConnection[Any], room: str, now: datetime) -> None:
    band = await _rows(conn, _NAIVE_RANGE, room)
    samples = await _rows(conn, _NAIVE_SAMPLES, room, now - timedelta(hours=2, minutes=15), now)
    times = np.asarray([s[0] for s in samples], dtype=np.float64)
    values = np.asarray([s[1] for s in samples], dtype=np.float64)
    steps = hold(times, values, (now - timedelta(hours=2)).timestamp(), now.timestamp(), 900.0)
    low, high = band[0] if band else (None, None)
    scan(steps, ExcursionParams(low, high, 900.0, 900.0, 0.5, 600.0), now.timestamp())


async def _naive_variance(conn: psycopg.AsyncConnection[Any], shelf: str, gtin: str) -> None:
    await _rows(conn, _NAIVE_OBSERVED, shelf, gtin)
    await _rows(conn, _NAIVE_BOOK, shelf, gtin)


async def _naive_low_stock(conn: psycopg.AsyncConnection[Any], shelf: str, gtin: str, now: datetime) -> None:
    today = now.date()
    rows = await _rows(conn, _NAIVE_CONSUMPTION, shelf, gtin, today - timedelta(days=28), today)
    await _rows(conn, _NAIVE_ON_HAND, shelf, gtin)
    await _rows(conn, "select lead_time_days from skus where gtin = %s", gtin)
    by_day = dict(rows)
    days = [today - timedelta(days=28 - k) for k in range(28)]
    demand = np.asarray([[by_day.get(d, 0) for d in days]], dtype=np.float64)
    reorder.reorder_points(
        demand, np.asarray([d.weekday() for d in days], dtype=np.int64), np.asarray([3.0]), np.asarray([1.645]),
        np.asarray([today.weekday()], dtype=np.int64), np.asarray([0.5]),
    )  # fmt: skip
