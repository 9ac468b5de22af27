"""Reorder points, safety stock and order quantities from observed daily demand, with numpy, for many
SKU-location pairs at once.

The textbook reorder point (e.g. Silver, Pyke and Thomas, "Inventory and Production Management in Supply
Chains", 4th ed., ch. 6) for a known lead time L (days) and daily demand with mean μ and deviation s is

    ROP = μ·L + z·s·√L,    z = Φ⁻¹(service level)    (the cycle service level: no stock-out in a lead time)

That rule assumes every day alike. Stock that sells on weekdays and rests at weekends breaks it: on a Friday
evening with a two-day lead time, μ·L counts two average days of demand where a Saturday and a Sunday will
come, and the rule calls for an order that nothing needs (the false alarm of a quiet day). Here demand over the
lead time is summed from the weekdays it will actually cover, starting now:

    D_L = Σ aₖ·μ(wₖ),   Var_L = Σ aₖ²·s²(wₖ),   ROP = D_L + z·√Var_L

where day k of the lead time falls on weekday wₖ and aₖ is the part of that day inside the lead time (the rest
of today first). μ(w) and s(w) are the mean and sample deviation of the demand on that weekday over the window
(28 days: four of each). With fewer than two of each weekday in the window, the plain rule applies.

z comes from the standard library (statistics.NormalDist.inv_cdf) rather than a table. The suggested order is
the economic order quantity (Harris, 1913): EOQ = √(2·D·S/H), D annual demand, S the cost of one order, H the
yearly holding cost of a unit (unit cost x holding rate); without costs, enough to cover the lead time again
above the reorder point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
DAYS_PER_YEAR: Final = 365.0
_MIN_PER_WEEKDAY: Final = 2


def z_score(service_level: float) -> float:
    """Φ⁻¹(service level): 0.95 → 1.645."""
    if not 0.0 < service_level < 1.0:
        raise ValueError("a service level is a probability strictly between 0 and 1")
    return NormalDist().inv_cdf(service_level)


@dataclass(frozen=True, slots=True)
class ReorderPoints:
    """Per pair (arrays of one length): the figures behind each reorder point."""

    mean_daily: FloatArray
    std_daily: FloatArray
    lead_demand: FloatArray
    safety_stock: FloatArray
    reorder_point: FloatArray
    weekday_aware: npt.NDArray[np.bool_]


def reorder_points(
    demand: FloatArray,
    weekdays: IntArray,
    lead_days: FloatArray,
    z: FloatArray,
    today_weekday: IntArray,
    today_left: FloatArray,
) -> ReorderPoints:
    """Reorder points for n pairs from demand (n x days, units per day, oldest first).

    weekdays: the weekday (0 = Monday) of each column; lead_days, z: per pair; today_weekday and today_left
    (0..1, the part of today still to come): per pair, in the site's local time.
    """
    mean = demand.mean(axis=1)
    std = demand.std(axis=1, ddof=1) if demand.shape[1] > 1 else np.zeros(len(demand))
    by_day_mean, by_day_var, enough = _by_weekday(demand, weekdays)
    first, second = _lead_weights(lead_days, today_weekday, today_left)
    aware = np.full(len(demand), enough)
    lead_demand = np.where(aware, (first * by_day_mean).sum(axis=1), mean * lead_days)
    lead_var = np.where(aware, (second * by_day_var).sum(axis=1), std**2 * lead_days)
    safety = z * np.sqrt(np.maximum(lead_var, 0.0))
    return ReorderPoints(mean, std, lead_demand, safety, lead_demand + safety, aware)


def naive_reorder_points(demand: FloatArray, lead_days: FloatArray, z: FloatArray) -> FloatArray:
    """The plain rule, μ·L + z·s·√L, every day alike (what the weekday-aware rule improves on)."""
    std = demand.std(axis=1, ddof=1) if demand.shape[1] > 1 else np.zeros(len(demand))
    result: FloatArray = demand.mean(axis=1) * lead_days + z * std * np.sqrt(lead_days)
    return result


def _by_weekday(demand: FloatArray, weekdays: IntArray) -> tuple[FloatArray, FloatArray, bool]:
    """Per pair and weekday: mean and sample variance; False when some weekday has fewer than two days."""
    n = len(demand)
    means, variances = np.zeros((n, 7)), np.zeros((n, 7))
    counts = np.bincount(weekdays, minlength=7)
    if counts.min() < _MIN_PER_WEEKDAY:
        return means, variances, False
    for day in range(7):
        columns = demand[:, weekdays == day]
        means[:, day] = columns.mean(axis=1)
        variances[:, day] = columns.var(axis=1, ddof=1)
    return means, variances, True


def _lead_weights(
    lead_days: FloatArray, today_weekday: IntArray, today_left: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per pair and weekday: Σ aₖ and Σ aₖ² over the days of the lead time (see the module's description)."""
    n = len(lead_days)
    first, second = np.zeros((n, 7)), np.zeros((n, 7))
    rows = np.arange(n)
    covered = np.minimum(today_left, lead_days)
    np.add.at(first, (rows, today_weekday % 7), covered)
    np.add.at(second, (rows, today_weekday % 7), covered**2)
    remaining = lead_days - covered
    horizon = math.ceil(float(remaining.max())) if n else 0
    for k in range(1, horizon + 1):
        part = np.clip(remaining - (k - 1), 0.0, 1.0)
        day = (today_weekday + k) % 7
        np.add.at(first, (rows, day), part)
        np.add.at(second, (rows, day), part**2)
    return first, second


def economic_order_quantity(
    mean_daily: float, order_cost: float | None, unit_cost: float | None, holding_rate: float | None
) -> float | None:
    """√(2·D·S/H) with D = yearly demand, S = cost per order, H = unit cost x yearly holding rate; None when a
    cost is missing or zero."""
    if not order_cost or not unit_cost or not holding_rate or mean_daily <= 0:
        return None
    return math.sqrt(2.0 * mean_daily * DAYS_PER_YEAR * order_cost / (unit_cost * holding_rate))


def suggested_order(on_hand: float, reorder_point: float, lead_demand: float, eoq: float | None) -> int:
    """EOQ when the costs are known; otherwise enough to stand a lead time's demand above the reorder point."""
    if eoq is not None:
        return max(1, math.ceil(eoq))
    return max(1, math.ceil(reorder_point + lead_demand - on_hand))


def as_float(values: Any) -> FloatArray:
    return np.asarray(values, dtype=np.float64)
