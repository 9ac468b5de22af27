"""Inventory rules: observed stock against the books, and stock at or below its reorder point.

**Inventory variance** (subject: a GTIN at a location the books name). Readers see stock only while they read
it, so a variance is judged only after a *complete read cycle* of the location, defined as either

- every reader antenna mapped to the location or inside it (``antennas``, and a reader's own location for its
  unmapped antennas) has delivered a read (``antenna_activity.last_read_at``, device time) after the later of
  the location's last judgement and the book's ``as_of`` there; a location without antennas is never judged
  this way; or
- a cycle count of exactly that location finished (``cycle_counts.ended_at``) after the last judgement: its
  results (``cycle_count_results``) are the judgement.

A judgement stores observed and book units per GTIN (observed = present items, rolled up the hierarchy as the
``inventory_variance`` view does; book = the current book, rolled up). The alert follows the last judgement
until the next complete cycle, so a reader that stops half-way neither raises nor clears a variance (and the
readers it depends on being offline holds it back). It fires when |observed - book| reaches ``absolute_units``
AND ``percent`` of the book (any difference counts as 100 % when the book says 0).

**Low stock** (subject: a GTIN at the storage location its consumption is booked at, consumption_daily). The
recent days of consumption are rebuilt first (``refresh_consumption``; late location events change them), then
reorder points come from alerts/reorder.py with the SKU's lead time, and the alert fires when the units
present there are at or below it. ``skus.reorder_minimum_units`` or the rule's ``minimum_units`` is a fixed
reorder point that wins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from alerts import reorder
from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, Tick, label_set, tracked_until
from alerts.rules_config import InventoryVariance, LowStock

INVENTORY_VARIANCE: Final = "InventoryVariance"
LOW_STOCK: Final = "LowStock"

# ----------------------------------------------------------------------------------------------------
# Variance

_BOOK_LOCATIONS: Final = "select location_id, max(as_of) from inventory_book group by location_id"
_JUDGED: Final = "select location_id, judged_at from inventory_judgements"
_ANTENNAS: Final = """
select coalesce(m.location_id, d.location_id) as location_id, coalesce(m.device_id, a.device_id),
       coalesce(m.antenna, a.antenna), a.last_read_at
from antennas m
full join antenna_activity a on a.device_id = m.device_id and a.antenna = m.antenna
left join devices d on d.id = coalesce(m.device_id, a.device_id)
where coalesce(m.location_id, d.location_id) is not null and coalesce(d.assigned, true)
"""
_COUNTS: Final = """
select distinct on (c.location_id) c.location_id, c.id, c.ended_at
from cycle_counts c
where c.status = 'finished' and c.ended_at <= %(now)s and c.location_id = any(%(locs)s)
order by c.location_id, c.ended_at desc
"""
_OBSERVED_AND_BOOK: Final = """
with scope as materialized (
    select a.location_id, a.ancestor_id from location_ancestry a where a.ancestor_id = any(%(locs)s)
),
observed as (
    select sc.ancestor_id as location_id, i.gtin, count(*)::bigint as units
    from item_state s join items i on i.epc = s.epc join scope sc on sc.location_id = s.location_id
    where s.status = 'present' and i.gtin is not null
    group by 1, 2
),
book as (
    select sc.ancestor_id as location_id, b.gtin, sum(b.quantity)::bigint as units, max(b.as_of) as as_of
    from inventory_book b join scope sc on sc.location_id = b.location_id
    group by 1, 2
)
select coalesce(o.location_id, b.location_id), coalesce(o.gtin, b.gtin), coalesce(o.units, 0),
       coalesce(b.units, 0), b.as_of
from observed o full join book b on b.location_id = o.location_id and b.gtin = o.gtin
"""
_STORE_JUDGEMENT: Final = """
insert into inventory_judgements (location_id, judged_at, basis, count_id)
select * from unnest(%(locs)s::text[], %(ats)s::timestamptz[], %(bases)s::text[], %(counts)s::bigint[])
on conflict (location_id) do update
set judged_at = excluded.judged_at, basis = excluded.basis, count_id = excluded.count_id
"""
_STORE_LINES: Final = """
insert into inventory_judgement_lines (location_id, gtin, observed_units, book_units, book_as_of)
select * from unnest(%(locs)s::text[], %(gtins)s::text[], %(observed)s::bigint[], %(book)s::bigint[],
                     %(as_of)s::timestamptz[])
"""
_COUNT_LINES: Final = """
select c.location_id, r.gtin, r.observed_units::bigint, r.book_units::bigint, c.ended_at
from cycle_count_results r join cycle_counts c on c.id = r.count_id
where r.count_id = any(%(ids)s)
"""
_LINES: Final = """
select l.location_id, l.gtin, l.observed_units, l.book_units, j.judged_at, j.basis
from inventory_judgement_lines l join inventory_judgements j on j.location_id = l.location_id
"""


@dataclass(frozen=True, slots=True)
class Judgement:
    location_id: str
    at: datetime
    basis: str
    count_id: int | None = None


class InventoryVarianceRule:
    name = "inventory_variance"
    alertnames: tuple[str, ...] = (INVENTORY_VARIANCE,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        due = await self._due(conn, tick)
        if due:
            await self._judge(conn, due)
        cursor = await conn.execute(_LINES)
        lines = await cursor.fetchall()
        section = tick.config.inventory_variance
        cache: dict[tuple[object, ...], InventoryVariance] = {}
        findings = []
        for location_id, gtin, observed, book, judged_at, basis in lines:
            params = section.for_subject(tick.topology.attributes(location_id, gtin=gtin), cache)
            if params.enabled is not False and _beyond(observed, book, params):
                findings.append(_variance(tick, location_id, gtin, observed, book, judged_at, basis, params))
        return Evaluation(findings, len(lines))

    async def _due(self, conn: Conn, tick: Tick) -> list[Judgement]:
        """The book locations whose read cycle completed (or whose cycle count finished) since last judged."""
        books = {row[0]: row[1] for row in await (await conn.execute(_BOOK_LOCATIONS)).fetchall()}
        judged = {row[0]: row[1] for row in await (await conn.execute(_JUDGED)).fetchall()}
        reads: dict[str, list[datetime | None]] = defaultdict(list)
        for location_id, _, _, last_read_at in await (await conn.execute(_ANTENNAS)).fetchall():
            reads[location_id].append(last_read_at)
        cursor = await conn.execute(_COUNTS, {"now": tick.now, "locs": sorted(books)})
        counts = {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}
        # A read cycle counts once tracking has folded it in: judged earlier, the items it read are not there yet.
        tracked = await tracked_until(conn, tick.now)
        due = []
        for location_id, book_as_of in books.items():
            last = judged.get(location_id)
            count = counts.get(location_id)
            if count is not None and (last is None or count[1] > last):
                due.append(Judgement(location_id, count[1], "cycle_count", count[0]))
                continue
            basis = max(t for t in (last, book_as_of) if t is not None)
            antennas = [r for loc in tick.topology.subtree(location_id) for r in reads.get(loc, ())]
            if antennas and all(r is not None and basis < r <= tracked for r in antennas):
                due.append(Judgement(location_id, tick.now, "read_cycle"))
        return due

    async def _judge(self, conn: Conn, due: Sequence[Judgement]) -> None:
        by_reads = [j.location_id for j in due if j.basis == "read_cycle"]
        rows: list[tuple[Any, ...]] = []
        if by_reads:
            rows += await (await conn.execute(_OBSERVED_AND_BOOK, {"locs": by_reads})).fetchall()
        counted = [j.count_id for j in due if j.count_id is not None]
        if counted:
            rows += await (await conn.execute(_COUNT_LINES, {"ids": counted})).fetchall()
        locations = [j.location_id for j in due]
        await conn.execute("delete from inventory_judgement_lines where location_id = any(%s)", (locations,))
        await conn.execute(
            _STORE_JUDGEMENT,
            {"locs": locations, "ats": [j.at for j in due], "bases": [j.basis for j in due],
             "counts": [j.count_id for j in due]},
        )  # fmt: skip
        if rows:
            columns = list(zip(*rows, strict=True))
            await conn.execute(
                _STORE_LINES,
                {"locs": list(columns[0]), "gtins": list(columns[1]), "observed": list(columns[2]),
                 "book": list(columns[3]), "as_of": list(columns[4])},
            )  # fmt: skip


def _beyond(observed: int, book: int, params: InventoryVariance) -> bool:
    difference = abs(observed - book)
    if difference == 0 or difference < params.units:
        return False
    return book == 0 or 100.0 * difference / book >= params.pct


def _variance(
    tick: Tick, location_id: str, gtin: str, observed: int, book: int, judged_at: datetime, basis: str,
    params: InventoryVariance,
) -> Finding:  # fmt: skip
    difference = observed - book
    if book > 0:
        share = f"{abs(difference) / book * 100:.0f} % {'fewer' if difference < 0 else 'more'}"
    else:
        share = f"{difference} unbooked"
    how = "a cycle count" if basis == "cycle_count" else "a complete read cycle"
    return Finding(
        alertname=INVENTORY_VARIANCE,
        subject=f"{gtin}@{location_id}",
        severity=params.severity or Severity.WARNING,
        labels=label_set(gtin=gtin, location=location_id, site=tick.topology.site_of(location_id)),
        annotations={
            "summary": f"{location_id} shows {share} units of GTIN {gtin} than the books "
            f"({observed} observed, {book} booked)",
            "description": f"Judged after {how} at {judged_at.isoformat()}; thresholds {params.units} units "
            f"and {params.pct:g} %.",
            "variance_units": str(difference),
        },
        active_at=judged_at,
        fires_at=judged_at,
        depends_on=tick.topology.readers_for(location_id),
        repeat_s=tick.config.repeat_s(params),
        group_by=tuple(tick.config.group_by(params)),
    )


# ----------------------------------------------------------------------------------------------------
# Low stock

_SITES: Final = "select id, timezone from locations where kind = 'site'"
# One row per pair with its days (as offsets from since) and units: ten thousand pairs of four weeks are 10,000
# rows of two arrays rather than 200,000 rows.
_CONSUMPTION: Final = """
select location_id, gtin, array_agg(day - %(since)s::date), array_agg(units)
from consumption_daily
where day >= %(since)s and day < %(until)s
group by location_id, gtin
"""
_FIXED: Final = """
select distinct s.location_id, i.gtin
from item_state s join items i on i.epc = s.epc join skus k on k.gtin = i.gtin
where k.reorder_minimum_units is not null and s.status = 'present' and s.location_id is not null
"""
_ON_HAND: Final = """
select a.ancestor_id, i.gtin, count(*)::bigint
from item_state s
join items i on i.epc = s.epc
join location_ancestry a on a.location_id = s.location_id
where s.status = 'present' and a.ancestor_id = any(%(locs)s) and i.gtin = any(%(gtins)s)
group by 1, 2
"""
_SKUS: Final = """
select gtin, lead_time_days, unit_cost, order_cost, holding_cost_rate, reorder_minimum_units
from skus where gtin = any(%(gtins)s)
"""


@dataclass(frozen=True, slots=True)
class _Local:
    today: date
    weekday: int
    left: float


class LowStockRule:
    name = "low_stock"
    alertnames: tuple[str, ...] = (LOW_STOCK,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        base = tick.config.low_stock.params
        locals_ = await _local_days(conn, tick.now)
        today = tick.now.date()
        if base.refresh > 0:
            since = today - timedelta(days=base.refresh + 1)
            await conn.execute("select refresh_consumption(%s, %s)", (since, today + timedelta(days=1)))
        since = today - timedelta(days=base.window + 1)
        cursor = await conn.execute(_CONSUMPTION, {"since": since, "until": today + timedelta(days=1)})
        history = History(since)
        for location_id, gtin, offsets, units in await cursor.fetchall():
            history.pairs[(location_id, gtin)] = (np.asarray(offsets, dtype=np.int64), reorder.as_float(units))
        for location_id, gtin in await (await conn.execute(_FIXED)).fetchall():
            history.add((location_id, gtin))
        for alert in tick.alerts_of(LOW_STOCK):
            history.add((alert.labels.get("location", ""), alert.labels.get("gtin", "")))
        pairs = sorted(history.pairs)
        if not pairs:
            return Evaluation([], 0)
        return Evaluation(await self._judge(conn, tick, pairs, history, locals_), len(pairs))

    async def _judge(
        self, conn: Conn, tick: Tick, pairs: list[tuple[str, str]], history: History, locals_: dict[str, _Local],
    ) -> list[Finding]:  # fmt: skip
        gtins = sorted({g for _, g in pairs})
        cursor = await conn.execute(_ON_HAND, {"locs": sorted({loc for loc, _ in pairs}), "gtins": gtins})
        on_hand = {(row[0], row[1]): row[2] for row in await cursor.fetchall()}
        skus = {row[0]: row for row in await (await conn.execute(_SKUS, {"gtins": gtins})).fetchall()}
        section = tick.config.low_stock
        cache: dict[tuple[object, ...], LowStock] = {}
        params = [section.for_subject(tick.topology.attributes(loc, gtin=g), cache) for loc, g in pairs]
        local = [locals_.get(tick.topology.site_of(loc), _utc(tick.now)) for loc, _ in pairs]
        lead = reorder.as_float([_lead_days(skus.get(g), p) for (_, g), p in zip(pairs, params, strict=True)])
        points = _points(pairs, history, local, lead, params, section.params.window)
        findings = []
        for i, (location_id, gtin) in enumerate(pairs):
            found = _low(tick, location_id, gtin, on_hand.get((location_id, gtin), 0), skus.get(gtin), params[i],
                         points, i, lead[i])  # fmt: skip
            if found is not None:
                findings.append(found)
        return findings


@dataclass(slots=True)
class History:
    """Per pair: the days with consumption (offsets from ``since``) and the units consumed on them."""

    since: date
    pairs: dict[tuple[str, str], tuple[npt.NDArray[np.int64], reorder.FloatArray]] = field(default_factory=dict)

    def add(self, pair: tuple[str, str]) -> None:
        self.pairs.setdefault(pair, (np.empty(0, dtype=np.int64), np.empty(0)))

    def demand(self, pairs: Sequence[tuple[str, str]], first: date, days: int) -> reorder.FloatArray:
        """Units per day from ``first`` for ``days`` days (zero where nothing was consumed), one row per pair."""
        matrix = np.zeros((len(pairs), days))
        start = (first - self.since).days
        for row, pair in enumerate(pairs):
            offsets, units = self.pairs[pair]
            inside = (offsets >= start) & (offsets < start + days)
            matrix[row, offsets[inside] - start] = units[inside]
        return matrix


def _points(
    pairs: list[tuple[str, str]], history: History, local: list[_Local], lead: reorder.FloatArray,
    params: list[LowStock], window: int,
) -> reorder.ReorderPoints:  # fmt: skip
    """Reorder points for all pairs; computed per local date, since each site's window ends on its yesterday."""
    n = len(pairs)
    columns = {name: np.zeros(n) for name in ("mean", "std", "lead", "safety", "rop")}
    aware = np.zeros(n, dtype=bool)
    z = reorder.as_float([reorder.z_score(p.level) for p in params])
    for today in sorted({x.today for x in local}):
        rows = np.asarray([i for i, x in enumerate(local) if x.today == today], dtype=np.int64)
        days = [today - timedelta(days=window - k) for k in range(window)]
        demand = history.demand([pairs[i] for i in rows.tolist()], days[0], window)
        found = reorder.reorder_points(
            demand, np.asarray([d.weekday() for d in days], dtype=np.int64), lead[rows], z[rows],
            np.asarray([local[i].weekday for i in rows.tolist()], dtype=np.int64),
            reorder.as_float([local[i].left for i in rows.tolist()]),
        )  # fmt: skip
        for name, values in zip(columns, (found.mean_daily, found.std_daily, found.lead_demand,
                                          found.safety_stock, found.reorder_point), strict=True):  # fmt: skip
            columns[name][rows] = values
        aware[rows] = found.weekday_aware
    return reorder.ReorderPoints(columns["mean"], columns["std"], columns["lead"], columns["safety"],
                                 columns["rop"], aware)  # fmt: skip


def _lead_days(sku: tuple[Any, ...] | None, params: LowStock) -> float:
    if params.lead_time_days is not None:
        return params.lead_time_days
    return float(sku[1]) if sku is not None and sku[1] is not None else params.lead_days


def _low(
    tick: Tick, location_id: str, gtin: str, on_hand: int, sku: tuple[Any, ...] | None, params: LowStock,
    points: reorder.ReorderPoints, i: int, lead_days: float,
) -> Finding | None:  # fmt: skip
    if params.enabled is False:
        return None
    fixed = params.minimum_units if params.minimum_units is not None else (sku[5] if sku is not None else None)
    rop = float(fixed) if fixed is not None else float(points.reorder_point[i])
    if rop <= 0 or on_hand > rop:
        return None
    lead_demand = float(points.lead_demand[i])
    eoq = reorder.economic_order_quantity(
        float(points.mean_daily[i]), *(sku[3], sku[2], sku[4]) if sku is not None else (None, None, None)
    )
    order = reorder.suggested_order(on_hand, rop, lead_demand, eoq)
    how = (
        f"fixed reorder point {rop:g}"
        if fixed is not None
        else f"reorder point {rop:.0f} = {lead_demand:.1f} expected over the {lead_days:g}-day lead time + "
        f"{float(points.safety_stock[i]):.1f} safety stock at {params.level:.0%} service"
    )
    return Finding(
        alertname=LOW_STOCK,
        subject=f"{gtin}@{location_id}",
        severity=params.severity or Severity.WARNING,
        labels=label_set(gtin=gtin, location=location_id, site=tick.topology.site_of(location_id)),
        annotations={
            "summary": f"GTIN {gtin} at {location_id} will run out before the next delivery: {on_hand} on hand, {how}",
            "description": f"Suggested order: {order} units ({'EOQ' if eoq is not None else 'cover one lead time'}); "
            f"demand {float(points.mean_daily[i]):.1f} ± {float(points.std_daily[i]):.1f} a day"
            f"{', by weekday' if bool(points.weekday_aware[i]) else ''}.",
            "reorder_point": f"{rop:.0f}",
            "suggested_order_units": str(order),
        },
        active_at=tick.now,
        fires_at=tick.now,
        repeat_s=tick.config.repeat_s(params),
        group_by=tuple(tick.config.group_by(params)),
    )


async def _local_days(conn: Conn, now: datetime) -> dict[str, _Local]:
    """Per site: its local date, weekday and the part of its day still to come (consumption days are local)."""
    found = {}
    for site_id, timezone in await (await conn.execute(_SITES)).fetchall():
        try:
            zone = ZoneInfo(timezone) if timezone else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        found[site_id] = _utc(now) if zone is None else _in(now.astimezone(zone))
    return found


def _utc(now: datetime) -> _Local:
    return _in(now)


def _in(local: datetime) -> _Local:
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (local - midnight).total_seconds() / 86400.0
    return _Local(local.date(), local.weekday(), max(0.0, 1.0 - elapsed))
