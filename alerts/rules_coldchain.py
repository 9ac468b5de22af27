"""Cold-chain rules: a location out of its temperature band, and a lot past its exposure budget or MKT limit.

**Temperature excursion** (subject: a location with sensors of its own and a band). Its sensors' samples are
held between reports (tracking/condition_series.py, at most ``max_hold``) and classified step by step:
above or below the band, *clear* (inside by at least the hysteresis margin) or *edge* (inside, but within the
margin). Then:

- an excursion fires when a run of consecutive out-of-band time reaches the alarm delay (a gap in the data
  breaks a run); it is active from the first reading of that run;
- it resolves only after a clear stretch of ``clear_after`` (edge readings do not count), and then ends when
  that stretch began; an excursion that comes back while the band is wobbling at the edge is the same one;
- an out-of-band run still under the delay, and still receiving data, is pending;
- with no data the state stays as it was: a silent sensor neither starts nor ends an excursion (it raises
  SensorStale / DeviceOffline instead, which hold the excursion back).

The samples read reach back ``lookback`` (late readings within it re-decide the past) and to the start of the
location's stored alert, so that an excursion longer than the lookback keeps its start. The alert names what
is inside: items whose location, or whose container's location, is the breaching location or inside it.

**Lot exposure** (subject: a lot with items in sensed places). What each item of the lot went through over
its history (tracking/condition.py, against its SKU's band): the cumulative time out of band against the
``budget``, and the mean kinetic temperature against ``mkt_limit_c``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, Final

import numpy as np

from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, OpenAlert, Tick, join_names, label_set, plural
from alerts.rules_config import LotExposure, TemperatureExcursion
from tracking.condition import LotConditions, plan_lot_conditions
from tracking.condition_series import FloatArray, Steps, hold
from tracking.inventory_plan import NotFoundError, arun

TEMPERATURE_EXCURSION: Final = "TemperatureExcursion"
BUDGET_EXCEEDED: Final = "TemperatureBudgetExceeded"
MKT_HIGH: Final = "MeanKineticTemperatureHigh"
_CONTIGUOUS_S: Final = 1e-3


class Band(IntEnum):
    CLEAR = 0
    EDGE = 1
    ABOVE = 2
    BELOW = 3


@dataclass(frozen=True, slots=True)
class ExcursionParams:
    low_c: float | None
    high_c: float | None
    delay_above_s: float
    delay_below_s: float
    margin_c: float
    clear_s: float


@dataclass(frozen=True, slots=True)
class Excursion:
    """The state at the end of the samples: firing (fires_s <= end), pending (fires_s later) or resolved."""

    side: Band
    started_s: float
    fires_s: float
    ended_s: float | None
    extreme_c: float


def classify(values: FloatArray, p: ExcursionParams) -> np.ndarray[Any, np.dtype[np.int8]]:
    bands = np.full(values.shape, Band.EDGE, dtype=np.int8)
    clear = np.ones(values.shape, dtype=bool)
    if p.high_c is not None:
        clear &= values <= p.high_c - p.margin_c
    if p.low_c is not None:
        clear &= values >= p.low_c + p.margin_c
    bands[clear] = Band.CLEAR
    if p.high_c is not None:
        bands[values > p.high_c] = Band.ABOVE
    if p.low_c is not None:
        bands[values < p.low_c] = Band.BELOW
    return bands


def segments(steps: Steps, bands: np.ndarray[Any, np.dtype[np.int8]]) -> list[tuple[Band, float, float]]:
    """Runs of steps in one band without a gap in time: (band, start, end)."""
    if len(steps) == 0:
        return []
    breaks = (
        np.flatnonzero((bands[1:] != bands[:-1]) | (np.abs(steps.start_s[1:] - steps.end_s[:-1]) > _CONTIGUOUS_S)) + 1
    )
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(steps)])) - 1
    return [
        (Band(int(bands[s])), float(steps.start_s[s]), float(steps.end_s[e]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def scan(steps: Steps, p: ExcursionParams, now_s: float) -> Excursion | None:
    """The excursion state at now_s from held steps (see the module's description), or None when all is well."""
    bands = classify(steps.value, p)
    if not bands.any():  # every step clear: the common case, decided without walking the runs
        return None
    runs = segments(steps, bands)
    episode: tuple[Band, float, float] | None = None  # side, started, fires
    resolved: Excursion | None = None
    for band, start, end in runs:
        if band in (Band.ABOVE, Band.BELOW) and episode is None:
            delay = p.delay_above_s if band == Band.ABOVE else p.delay_below_s
            if end - start >= delay:
                episode, resolved = (band, start, start + delay), None
        elif band == Band.CLEAR and episode is not None and end - start >= p.clear_s:
            side, started, fires = episode
            resolved = Excursion(side, started, fires, start, _extreme(steps, side, started, start))
            episode = None
    if episode is not None:
        side, started, fires = episode
        return Excursion(side, started, fires, None, _extreme(steps, side, started, now_s))
    if runs and runs[-1][0] in (Band.ABOVE, Band.BELOW) and runs[-1][2] >= now_s - _CONTIGUOUS_S:
        side, start, _ = runs[-1]
        delay = p.delay_above_s if side == Band.ABOVE else p.delay_below_s
        return Excursion(side, start, start + delay, None, _extreme(steps, side, start, now_s))
    return resolved


def _extreme(steps: Steps, side: Band, from_s: float, to_s: float) -> float:
    inside = (steps.start_s >= from_s) & (steps.start_s < to_s)
    values = steps.value[inside] if inside.any() else steps.value
    return float(values.max() if side == Band.ABOVE else values.min())


# ----------------------------------------------------------------------------------------------------
# The excursion rule

_RANGES: Final = """
select location_id, temperature_min_c, temperature_max_c from location_ranges where location_id = any(%(locs)s)
"""
_SAMPLES: Final = """
select w.device_id, extract(epoch from t.observed_at)::float8, t.value
from unnest(%(devices)s::text[], %(since)s::timestamptz[]) as w(device_id, since)
join telemetry t on t.device_id = w.device_id and t.quantity = 'temperature_c' and t.value is not null
                and t.observed_at >= w.since and t.observed_at <= %(now)s
order by t.observed_at, w.device_id
"""
# What is inside each breaching location (its root), through containers too. Two index lookups rather than
# one OR, which would scan every item.
_INSIDE: Final = """
with scope as materialized (
    select * from unnest(%(locs)s::text[], %(roots)s::text[]) as u(location_id, root)
),
placed as (
    select sc.root, s.epc from scope sc join item_state s on s.location_id = sc.location_id
    where s.status <> 'departed'
    union
    select sc.root, coalesce(cc.item_epc, s.epc)
    from scope sc
    join item_state c on c.location_id = sc.location_id and c.status <> 'departed'
    left join container_contents cc on cc.container_epc = c.epc
    left join item_state s on s.container_epc = c.epc and cc.item_epc is null
    where cc.item_epc is not null or s.epc is not null
)
select p.root, i.lot, count(*)::bigint
from placed p join items i on i.epc = p.epc
group by p.root, i.lot
order by p.root, count(*) desc, i.lot nulls last
"""


@dataclass(frozen=True, slots=True)
class _Watched:
    location_id: str
    sensors: tuple[str, ...]
    params: TemperatureExcursion
    excursion: ExcursionParams
    since: datetime


class TemperatureExcursionRule:
    name = "temperature_excursion"
    alertnames: tuple[str, ...] = (TEMPERATURE_EXCURSION,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        watched = await self._watched(conn, tick)
        series = await self._series(conn, tick, watched)
        now_s = tick.now.timestamp()
        found: list[tuple[_Watched, Excursion]] = []
        for w in watched:
            times, values = series.get(w.location_id, (np.empty(0), np.empty(0)))
            steps = hold(times, values, w.since.timestamp(), now_s, w.params.max_hold_s)
            excursion = scan(steps, w.excursion, now_s)
            if excursion is not None:
                found.append((w, excursion))
        inside = await _inside(conn, tick, [w.location_id for w, e in found if e.ended_s is None])
        findings = [self._finding(tick, w, e, inside.get(w.location_id, "")) for w, e in found]
        return Evaluation(findings, len(watched))

    async def _watched(self, conn: Conn, tick: Tick) -> list[_Watched]:
        topology = tick.topology
        sensed = sorted(loc for loc, sensors in topology.own_sensors.items() if sensors and loc in topology.places)
        cursor = await conn.execute(_RANGES, {"locs": sensed})
        ranges = {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}
        starts = _starts(tick.alerts_of(TEMPERATURE_EXCURSION))
        section = tick.config.temperature_excursion
        cache: dict[tuple[object, ...], TemperatureExcursion] = {}
        watched = []
        for loc in sensed:
            params = section.for_subject(topology.attributes(loc), cache)
            low, high = params.band(*ranges.get(loc, (None, None)))
            if params.enabled is False or (low is None and high is None):
                continue
            since = tick.now - timedelta(seconds=params.lookback_s)
            stored = starts.get(loc)
            if stored is not None and (stored.ends_at is None or stored.ends_at >= since):
                since = min(since, stored.starts_at)  # its whole episode, so that late data can re-judge it
            excursion = ExcursionParams(low, high, params.delay_above_s, params.delay_below_s,
                                        params.margin_c, params.clear_s)  # fmt: skip
            watched.append(_Watched(loc, tuple(sorted(topology.own_sensors[loc])), params, excursion, since))
        return watched

    async def _series(
        self, conn: Conn, tick: Tick, watched: Sequence[_Watched]
    ) -> dict[str, tuple[FloatArray, FloatArray]]:
        """Per location: its sensors' samples merged in time order, from its window start (less one hold)."""
        since: dict[str, datetime] = {}
        owner: dict[str, str] = {}
        for w in watched:
            for device in w.sensors:
                since[device] = w.since - timedelta(seconds=w.params.max_hold_s)
                owner[device] = w.location_id
        if not since:
            return {}
        devices = sorted(since)
        cursor = await conn.execute(
            _SAMPLES, {"devices": devices, "since": [since[d] for d in devices], "now": tick.now}
        )
        columns: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
        for device_id, t, value in await cursor.fetchall():
            column_t, column_v = columns[owner[device_id]]
            column_t.append(t)
            column_v.append(value)
        return {
            loc: (np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)) for loc, (t, v) in columns.items()
        }

    def _finding(self, tick: Tick, w: _Watched, found: Excursion, inside: str) -> Finding:
        started = _at(found.started_s)
        direction = "above" if found.side == Band.ABOVE else "below"
        limit = w.excursion.high_c if found.side == Band.ABOVE else w.excursion.low_c
        minutes = int(((found.ended_s or tick.now.timestamp()) - found.started_s) // 60)
        return Finding(
            alertname=TEMPERATURE_EXCURSION,
            subject=w.location_id,
            severity=w.params.severity or Severity.CRITICAL,
            labels=label_set(location=w.location_id, site=tick.topology.site_of(w.location_id)),
            annotations={
                "summary": f"{w.location_id} has been {direction} {limit:g} °C for {minutes} minutes"
                + (f", {inside}" if inside else ""),
                "description": f"Band {_band(w.excursion)}; {'highest' if found.side == Band.ABOVE else 'lowest'} "
                f"reading {found.extreme_c:.1f} °C since {started.isoformat()}. Sensors: {', '.join(w.sensors)}.",
                "direction": direction,
                "items_inside": inside,
            },
            active_at=started,
            fires_at=_at(found.fires_s),
            resolved_at=_at(found.ended_s) if found.ended_s is not None else None,
            depends_on=frozenset(w.sensors),
            needs_all=True,
            repeat_s=tick.config.repeat_s(w.params),
            group_by=tuple(tick.config.group_by(w.params)),
        )


async def _inside(conn: Conn, tick: Tick, roots: Sequence[str]) -> dict[str, str]:
    """Per location: "340 items of lot L-88 inside" (the largest lots first); absent when nothing is inside."""
    if not roots:
        return {}
    scope = [(loc, root) for root in roots for loc in tick.topology.subtree(root)]
    cursor = await conn.execute(_INSIDE, {"locs": [s[0] for s in scope], "roots": [s[1] for s in scope]})
    lots: dict[str, list[str]] = defaultdict(list)
    for root, lot, count in await cursor.fetchall():
        lots[root].append(f"{plural(count, 'item')} of lot {lot}" if lot else f"{plural(count, 'item')} without a lot")
    return {
        root: ", ".join(parts[:3]) + (f" and {len(parts) - 3} more lots" if len(parts) > 3 else "") + " inside"
        for root, parts in lots.items()
    }


def _starts(alerts: Sequence[OpenAlert]) -> dict[str, OpenAlert]:
    return {a.subject: a for a in alerts}


def _band(p: ExcursionParams) -> str:
    low = "-∞" if p.low_c is None else f"{p.low_c:g}"
    high = "+∞" if p.high_c is None else f"{p.high_c:g}"
    return f"{low} to {high} °C"


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# ----------------------------------------------------------------------------------------------------
# The lot exposure rule

_LOTS: Final = """
select distinct i.lot, l.gtin
from item_state s
join items i on i.epc = s.epc
join lots l on l.lot = i.lot
where s.status <> 'departed' and s.location_id = any(%(sensed)s)
union
select l.lot, l.gtin from lots l where l.lot = any(%(open)s)
"""


class LotExposureRule:
    name = "lot_exposure"
    alertnames: tuple[str, ...] = (BUDGET_EXCEEDED, MKT_HIGH)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        topology = tick.topology
        sensed = [loc for loc in topology.places if any(topology.own_sensors.get(a) for a in topology.ancestors(loc))]
        open_lots = sorted({a.subject for a in tick.alerts_of(*self.alertnames)})
        cursor = await conn.execute(_LOTS, {"sensed": sensed, "open": open_lots})
        lots = await cursor.fetchall()
        findings: list[Finding] = []
        for lot, gtin in lots:
            params = tick.config.lot_exposure.for_subject(topology.attributes(None, gtin=gtin, lot=lot))
            if params.enabled is False:
                continue
            try:
                exposure = await arun(conn, plan_lot_conditions(lot, tick.now, max_hold_s=params.max_hold_s))
            except NotFoundError:
                continue
            findings.extend(_exposure_findings(tick, exposure, params))
        return Evaluation(findings, len(lots))


def _exposure_findings(tick: Tick, lot: LotConditions, params: LotExposure) -> list[Finding]:
    temperature = lot.temperature
    if temperature is None:
        return []
    found = []
    common: Mapping[str, Any] = {
        "subject": lot.lot,
        "severity": params.severity or Severity.CRITICAL,
        "labels": label_set(lot=lot.lot, gtin=lot.gtin),
        "active_at": tick.now,
        "fires_at": tick.now,
        "repeat_s": tick.config.repeat_s(params),
        "group_by": tuple(tick.config.group_by(params)),
    }
    out_s = temperature.excursions.above_s + temperature.excursions.below_s
    if out_s > params.budget_s:
        found.append(Finding(
            alertname=BUDGET_EXCEEDED,
            annotations={
                "summary": f"lot {lot.lot} has spent {out_s / 60:.0f} minutes out of its band "
                f"(budget {params.budget_s / 60:.0f} minutes)",
                "description": f"{plural(lot.item_count, 'item')}; worst item {temperature.excursions.above_s / 60:.0f}"
                f" min above and {temperature.excursions.below_s / 60:.0f} min below the band. Items: "
                + join_names(i.epc for i in lot.items),
            },
            **common,
        ))  # fmt: skip
    limit = params.mkt_c(temperature.range_min_c, temperature.range_max_c)
    covered_s = max((i.temperature.covered_s for i in lot.items if i.temperature is not None), default=0.0)
    if limit is not None and covered_s >= params.mkt_min_s and temperature.mean_kinetic_c > limit:
        found.append(Finding(
            alertname=MKT_HIGH,
            annotations={
                "summary": f"lot {lot.lot} has a mean kinetic temperature of {temperature.mean_kinetic_c:.1f} °C "
                f"(limit {limit:g} °C)",
                "description": f"Over {temperature.covered_s / 3600:.1f} h of monitored storage of "
                f"{plural(lot.item_count, 'item')} (USP <1079.2>, ΔH/R = 10 000 K).",
            },
            **common,
        ))  # fmt: skip
    return found
