"""Battery rule: a device whose battery is low now, or whose drain projects it empty soon.

IoT platforms raise a battery alarm at a fixed level, which tells of a battery drained by a fault (a sensor in
a freezer, a radio retrying without end) only when it is nearly flat. Here the level also fires when a fit of
its recent drain says it will be empty within ``horizon``:

- the levels are the device's ``battery_pct`` telemetry, or its ``battery_v`` mapped linearly from ``empty_v``
  (0 %) to ``full_v`` (100 %) when it reports no percentage (ingest stores what the decoder emits; the
  Dragino LHT65 sends volts);
- the fit covers ``window`` back from the newest level, and restarts after the last rise of ``recharge_pct``
  or more (a battery charged or replaced drains on a new line); the newest ``min_span`` is fitted on its own
  too, and the sooner empty time counts (a drain that just turned steep);
- the slope is Theil-Sen's (the median of the slopes between every two levels), which a few outliers and the
  readings' noise do not move, and it counts only when the drop it describes over the fitted span stands out
  of the residual noise (three times their median absolute deviation);
- too few levels (``min_points``) or too short a span (``min_span``) since the restart: no projection.

A firing alert resolves only when the level is ``hysteresis_pct`` above ``low_pct`` and the drain no longer
projects empty within the horizon, so a level wavering around the threshold does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, Tick, label_set
from alerts.rules_config import BatteryLow

BATTERY_LOW: Final = "BatteryLow"
# More levels than this in the window are thinned evenly: pairwise slopes grow with the square of the count.
_MAX_POINTS: Final = 240
_NOISE_FACTOR: Final = 3.0

# Each assigned device's levels in the window back from its newest: percentages, else volts.
_LEVELS: Final = """
with newest as (
    select t.device_id, t.quantity, max(t.observed_at) as latest
    from telemetry t
    join devices d on d.id = t.device_id and d.assigned
    where t.quantity in ('battery_pct', 'battery_v') and t.observed_at <= %(now)s and t.value is not null
    group by 1, 2
),
chosen as (
    select distinct on (device_id) device_id, quantity, latest from newest
    order by device_id, quantity = 'battery_pct' desc
)
select c.device_id, c.quantity, array_agg(extract(epoch from t.observed_at) order by t.observed_at),
       array_agg(t.value order by t.observed_at)
from chosen c
join telemetry t on t.device_id = c.device_id and t.quantity = c.quantity
where t.observed_at > c.latest - make_interval(secs => %(window_s)s) and t.observed_at <= c.latest
  and t.value is not null
group by 1, 2
"""


@dataclass(frozen=True, slots=True)
class Drain:
    """What the levels say: the newest level, the drain rate and when it reaches empty (None: not projected)."""

    level_pct: float
    at_s: float
    rate_pct_per_h: float | None = None
    empty_at_s: float | None = None


def judge(times_s: npt.NDArray[np.float64], levels_pct: npt.NDArray[np.float64], params: BatteryLow) -> Drain:
    """The drain of one battery from its levels (oldest first).

    The drain is fitted twice, over the window since the last recharge and over its newest ``min_span``: a
    battery's discharge has a knee, and a fault (a sensor left in the cold, a radio retrying) starts a steep
    drain after a flat one, which the median over a long flat stretch would take hours to follow."""
    start = _since_recharge(levels_pct, params.recharge)
    times_s, levels_pct = times_s[start:], levels_pct[start:]
    newest = Drain(float(levels_pct[-1]), float(times_s[-1]))
    recent = times_s >= times_s[-1] - params.span_s
    fits = [f for f in (_fit(times_s, levels_pct, params), _fit(times_s[recent], levels_pct[recent], params)) if f]
    if not fits:
        return newest
    rate, empty_at = min(fits, key=lambda fit: fit[1])
    return Drain(newest.level_pct, newest.at_s, rate, empty_at)


def _fit(
    times_s: npt.NDArray[np.float64], levels_pct: npt.NDArray[np.float64], params: BatteryLow
) -> tuple[float, float] | None:
    """(drain in %/h, when empty) from a Theil-Sen line, or None: too few levels, too short, not draining."""
    if len(times_s) < params.points or times_s[-1] - times_s[0] < params.span_s:
        return None
    slope = _theil_sen(times_s, levels_pct)
    if slope >= 0:
        return None
    intercept = float(np.median(levels_pct - slope * times_s))
    residuals = levels_pct - (intercept + slope * times_s)
    noise = float(np.median(np.abs(residuals - np.median(residuals))))
    if -slope * (times_s[-1] - times_s[0]) <= _NOISE_FACTOR * noise:
        return None
    fitted_now = intercept + slope * float(times_s[-1])
    return -slope * 3600.0, float(times_s[-1]) + max(fitted_now, 0.0) / -slope


def _since_recharge(levels: npt.NDArray[np.float64], jump: float) -> int:
    """Where the newest battery's levels start: after the last rise of ``jump`` above the median of the (up
    to) three levels before it, so that one low outlier followed by the true level is no new battery."""
    if len(levels) < 2:
        return 0
    before = np.empty(len(levels) - 1)
    before[0] = levels[0]
    before[1:3] = [np.median(levels[: i + 1]) for i in range(1, min(3, len(levels) - 1))]
    if len(levels) > 3:
        before[2:] = np.median(np.lib.stride_tricks.sliding_window_view(levels[:-1], 3), axis=1)
    rises = np.flatnonzero(levels[1:] - before >= jump)
    return int(rises[-1]) + 1 if len(rises) else 0


def _theil_sen(times_s: npt.NDArray[np.float64], levels: npt.NDArray[np.float64]) -> float:
    if len(times_s) > _MAX_POINTS:
        keep = np.linspace(0, len(times_s) - 1, _MAX_POINTS).round().astype(int)
        times_s, levels = times_s[keep], levels[keep]
    i, j = np.triu_indices(len(times_s), k=1)
    dt = times_s[j] - times_s[i]
    useful = dt > 0
    return float(np.median((levels[j] - levels[i])[useful] / dt[useful]))


def holds(drain: Drain, params: BatteryLow, firing: bool, now_s: float) -> bool:
    """Low now, or empty within the horizon; a firing alert keeps firing until clear by the hysteresis."""
    low = params.low + (params.hysteresis if firing else 0.0)
    soon = drain.empty_at_s is not None and drain.empty_at_s - now_s <= params.horizon_s
    return drain.level_pct <= low or soon


def as_pct(quantity: str, values: npt.NDArray[np.float64], params: BatteryLow) -> npt.NDArray[np.float64]:
    if quantity == "battery_pct":
        return values
    empty, full = params.volts
    # Rounded to what millivolts resolve, so that 2.60 V is 20 % and not 20.000000000000018 %.
    return np.round((values - empty) / (full - empty) * 100.0, 3)


class BatteryLowRule:
    name = "battery_low"
    alertnames: tuple[str, ...] = (BATTERY_LOW,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        section = tick.config.battery_low
        # The widest window any override asks for; each device's own is cut from it.
        window_s = max([section.params.window_s, *(float(f.get("window") or 0) for _, f in section.overrides)])
        cursor = await conn.execute(_LEVELS, {"now": tick.now, "window_s": window_s})
        rows = await cursor.fetchall()
        firing = {a.subject for a in tick.alerts_of(BATTERY_LOW) if a.state != "resolved"}
        findings = []
        for row in rows:
            finding = self._judge_row(tick, row, row[0] in firing)
            if finding is not None:
                findings.append(finding)
        return Evaluation(findings, len(rows))

    def _judge_row(self, tick: Tick, row: tuple[Any, ...], firing: bool) -> Finding | None:
        device_id, quantity, times, values = row
        location_id = tick.topology.device_location.get(device_id)
        kind = tick.topology.device_kind.get(device_id)
        params = tick.config.battery_low.for_subject(
            tick.topology.attributes(location_id, device=device_id, device_kind=kind)
        )
        if params.enabled is False:
            return None
        times_s = np.asarray(times, dtype=np.float64)
        keep = times_s > times_s[-1] - params.window_s
        levels = as_pct(quantity, np.asarray(values, dtype=np.float64)[keep], params)
        drain = judge(times_s[keep], levels, params)
        if not holds(drain, params, firing, tick.now.timestamp()):
            return None
        return self._finding(tick, device_id, kind, location_id, drain, params)

    def _finding(
        self, tick: Tick, device_id: str, kind: str | None, location_id: str | None, drain: Drain, params: BatteryLow
    ) -> Finding:
        at = datetime.fromtimestamp(drain.at_s, tick.now.tzinfo)
        level = max(0.0, min(100.0, drain.level_pct))
        rate = "n/a" if drain.rate_pct_per_h is None else f"{drain.rate_pct_per_h:.2f}"
        empty = (
            "" if drain.empty_at_s is None else datetime.fromtimestamp(drain.empty_at_s, tick.now.tzinfo).isoformat()
        )
        why = f"at {level:.0f} %" + (f", draining {rate} %/h, empty about {empty}" if empty else "")
        return Finding(
            alertname=BATTERY_LOW,
            subject=device_id,
            severity=params.severity or Severity.WARNING,
            labels=label_set(
                device=device_id, device_kind=kind, location=location_id, site=tick.topology.site_of(location_id)
            ),
            annotations={
                "summary": f"battery of {device_id} {why}",
                "description": f"Replace or charge the battery of {device_id} before it goes silent; "
                f"its newest level was read at {at.isoformat()}.",
                "level_pct": f"{level:.1f}",
                "drain_pct_per_h": rate,
                "empty_at": empty,
            },
            active_at=at,
            fires_at=at + timedelta(seconds=params.for_s),
            repeat_s=tick.config.repeat_s(params),
            group_by=tuple(tick.config.group_by(params)),
        )
