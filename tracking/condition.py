"""What each item went through: the temperature and humidity of the places it was in, over time.

An item's stays come from its location events (item_location_intervals: arrived or moved in, until its next
event). Each stay is joined to the sensors that speak for that location (location_sensors: the location's own
sensors, else those of its nearest ancestor; a vehicle or container location has its own). Samples are held
between reports for at most `max_hold_s` (15 minutes by default, the sensors' default inactivity timeout in
0100_registry.sql); time beyond that, or in a place without sensors, is not covered and counts in no figure.
The figures (tracking/condition_series.py) are time-weighted over the held samples.

Ranges come from the item's SKU (skus, by GTIN). A side without a limit has no excursion. These are the
inputs of the cold-chain rules of the alert stage: excursion lengths (consecutive and cumulative) and MKT.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import numpy as np
import psycopg

from tracking.condition_series import (
    FloatArray,
    Steps,
    hold,
    join,
    mean_kinetic_temperature_c,
    time_above,
    time_below,
    time_weighted_mean,
)
from tracking.inventory_plan import NotFoundError, Plan, Row, Statement, run

DEFAULT_MAX_HOLD_S: Final = 900.0
_TEMPERATURE: Final = "temperature_c"
_HUMIDITY: Final = "humidity_pct"
_FAR_PAST: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Excursions:
    """Seconds beyond the range: cumulative and longest consecutive, above the maximum and below the minimum."""

    above_s: float
    longest_above_s: float
    below_s: float
    longest_below_s: float


@dataclass(frozen=True, slots=True)
class TemperatureExposure:
    covered_s: float
    samples: int
    minimum_c: float
    maximum_c: float
    mean_c: float
    mean_kinetic_c: float
    range_min_c: float | None
    range_max_c: float | None
    excursions: Excursions


@dataclass(frozen=True, slots=True)
class HumidityExposure:
    covered_s: float
    samples: int
    minimum_pct: float
    maximum_pct: float
    mean_pct: float
    range_min_pct: float | None
    range_max_pct: float | None
    excursions: Excursions


@dataclass(frozen=True, slots=True)
class Stay:
    """Where the item was, clipped to the period asked for, and the sensors that spoke for it there."""

    location_id: str
    from_at: datetime
    until_at: datetime
    sensor_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ItemConditions:
    epc: str
    gtin: str | None
    lot: str | None
    since: datetime | None
    until: datetime
    stays: tuple[Stay, ...]
    temperature: TemperatureExposure | None
    humidity: HumidityExposure | None


@dataclass(frozen=True, slots=True)
class LotConditions:
    """A lot's worst case: every figure is the worst over its items (lowest minimum, highest maximum, mean and
    MKT, longest excursions); covered_s and samples are sums over the items."""

    lot: str
    gtin: str
    expires_on: date | None
    item_count: int
    temperature: TemperatureExposure | None
    humidity: HumidityExposure | None
    items: tuple[ItemConditions, ...]


@dataclass(frozen=True, slots=True)
class _Ranges:
    temperature: tuple[float | None, float | None]
    humidity: tuple[float | None, float | None]


# ----------------------------------------------------------------------------------------------------
# Entry points


def experienced_conditions(
    conn: psycopg.Connection[Any],
    epc: str,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    max_hold_s: float = DEFAULT_MAX_HOLD_S,
) -> ItemConditions:
    """What item `epc` went through between since (its first stay by default) and until (now by default)."""
    return run(conn, plan_item_conditions(epc, since, until, max_hold_s=max_hold_s))


def lot_conditions(
    conn: psycopg.Connection[Any], lot: str, until: datetime | None = None, *, max_hold_s: float = DEFAULT_MAX_HOLD_S
) -> LotConditions:
    """What the items of `lot` went through, each over its whole history up to until (now by default)."""
    return run(conn, plan_lot_conditions(lot, until, max_hold_s=max_hold_s))


def plan_item_conditions(
    epc: str, since: datetime | None, until: datetime | None, *, max_hold_s: float = DEFAULT_MAX_HOLD_S
) -> Plan[ItemConditions]:
    found = yield from _conditions([epc], since, until or datetime.now(UTC), max_hold_s)
    if not found:
        raise NotFoundError(f"no item with EPC {epc!r}")
    return found[0]


def plan_lot_conditions(
    lot: str, until: datetime | None, *, max_hold_s: float = DEFAULT_MAX_HOLD_S
) -> Plan[LotConditions]:
    rows = yield Statement("select lot, gtin, expires_on from lots where lot = %(lot)s", {"lot": lot})
    if not rows:
        raise NotFoundError(f"no lot {lot!r}")
    epcs = yield Statement("select epc from items where lot = %(lot)s order by epc", {"lot": lot})
    items = yield from _conditions([row["epc"] for row in epcs], None, until or datetime.now(UTC), max_hold_s)
    return LotConditions(
        lot=lot,
        gtin=rows[0]["gtin"],
        expires_on=rows[0]["expires_on"],
        item_count=len(items),
        temperature=_worst_temperature([i.temperature for i in items if i.temperature is not None]),
        humidity=_worst_humidity([i.humidity for i in items if i.humidity is not None]),
        items=tuple(items),
    )


# ----------------------------------------------------------------------------------------------------
# Reading the stays, sensors and samples


def _conditions(
    epcs: Sequence[str], since: datetime | None, until: datetime, max_hold_s: float
) -> Plan[list[ItemConditions]]:
    items = yield Statement(
        """
        select i.epc, i.gtin, i.lot, k.temperature_min_c, k.temperature_max_c, k.humidity_min_pct, k.humidity_max_pct
        from items i left join skus k on k.gtin = i.gtin
        where i.epc = any(%(epcs)s) order by i.epc
        """,
        {"epcs": list(epcs)},
    )
    stays = yield Statement(
        """
        select epc, location_id, greatest(from_at, %(since)s) as from_at,
               least(coalesce(until_at, %(until)s), %(until)s) as until_at
        from item_location_intervals
        where epc = any(%(epcs)s) and from_at < %(until)s and coalesce(until_at, 'infinity') > %(since)s
        order by epc, from_at
        """,
        {"epcs": list(epcs), "since": since or _FAR_PAST, "until": until},
    )
    sensors = yield from _sensors(sorted({row["location_id"] for row in stays}))
    series = yield from _series(stays, sensors, max_hold_s)
    by_item: dict[str, list[Row]] = defaultdict(list)
    for stay in stays:
        by_item[stay["epc"]].append(stay)
    return [_item(item, by_item[item["epc"]], sensors, series, since, until, max_hold_s) for item in items]


def _sensors(locations: list[str]) -> Plan[dict[str, tuple[str, ...]]]:
    rows = yield Statement(
        "select location_id, device_id from location_sensors where location_id = any(%(locs)s)"
        " order by location_id, device_id",
        {"locs": locations},
    )
    found: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        found[row["location_id"]].append(row["device_id"])
    return {location: tuple(devices) for location, devices in found.items()}


_Series = dict[tuple[tuple[str, ...], str], tuple[FloatArray, FloatArray]]


def _series(stays: list[Row], sensors: dict[str, tuple[str, ...]], max_hold_s: float) -> Plan[_Series]:
    """Per (sensor set, quantity): the merged samples of those sensors, as (times, values) sorted by time."""
    devices = sorted({device for group in sensors.values() for device in group})
    if not devices or not stays:
        return {}
    rows = yield Statement(
        """
        select device_id, quantity, extract(epoch from observed_at)::float8 as t, value
        from telemetry
        where device_id = any(%(devices)s) and quantity = any(%(quantities)s) and value is not null
          and observed_at >= %(since)s - make_interval(secs => %(hold)s) and observed_at < %(until)s
        order by observed_at, device_id
        """,
        {
            "devices": devices,
            "quantities": [_TEMPERATURE, _HUMIDITY],
            "since": min(stay["from_at"] for stay in stays),
            "until": max(stay["until_at"] for stay in stays),
            "hold": max_hold_s,
        },
    )
    columns: dict[tuple[str, str], list[list[float]]] = defaultdict(lambda: [[], []])
    for row in rows:
        column_t, column_v = columns[(row["device_id"], row["quantity"])]
        column_t.append(row["t"])
        column_v.append(row["value"])
    merged: _Series = {}
    for group in set(sensors.values()):
        for quantity in (_TEMPERATURE, _HUMIDITY):
            parts = [columns[(device, quantity)] for device in group if (device, quantity) in columns]
            if parts:
                merged_t = np.concatenate([np.asarray(p[0], dtype=np.float64) for p in parts])
                merged_v = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts])
                order = np.argsort(merged_t, kind="stable")
                merged[(group, quantity)] = (merged_t[order], merged_v[order])
    return merged


# ----------------------------------------------------------------------------------------------------
# Figures


def _item(
    item: Row,
    stays: list[Row],
    sensors: dict[str, tuple[str, ...]],
    series: _Series,
    since: datetime | None,
    until: datetime,
    max_hold_s: float,
) -> ItemConditions:
    ranges = _Ranges(
        (item["temperature_min_c"], item["temperature_max_c"]), (item["humidity_min_pct"], item["humidity_max_pct"])
    )
    kept = [s for s in stays if s["until_at"] > s["from_at"]]
    steps = {
        quantity: join([_held(series, sensors.get(s["location_id"], ()), quantity, s, max_hold_s) for s in kept])
        for quantity in (_TEMPERATURE, _HUMIDITY)
    }
    return ItemConditions(
        epc=item["epc"],
        gtin=item["gtin"],
        lot=item["lot"],
        since=since or (kept[0]["from_at"] if kept else None),
        until=until,
        stays=tuple(
            Stay(s["location_id"], s["from_at"], s["until_at"], sensors.get(s["location_id"], ())) for s in kept
        ),
        temperature=temperature_exposure(steps[_TEMPERATURE], *ranges.temperature),
        humidity=humidity_exposure(steps[_HUMIDITY], *ranges.humidity),
    )


def _held(series: _Series, group: tuple[str, ...], quantity: str, stay: Row, max_hold_s: float) -> Steps:
    found = series.get((group, quantity))
    if found is None:
        return Steps.empty()
    times, values = found
    return hold(times, values, stay["from_at"].timestamp(), stay["until_at"].timestamp(), max_hold_s)


def excursions(steps: Steps, low: float | None, high: float | None) -> Excursions:
    above, below = time_above(steps, high), time_below(steps, low)
    return Excursions(above.total_s, above.longest_s, below.total_s, below.longest_s)


def temperature_exposure(steps: Steps, low: float | None, high: float | None) -> TemperatureExposure | None:
    """The temperature figures of held steps; None when no time is covered."""
    if steps.total_s() <= 0:
        return None
    return TemperatureExposure(
        covered_s=steps.total_s(),
        samples=len(steps),
        minimum_c=float(steps.value.min()),
        maximum_c=float(steps.value.max()),
        mean_c=time_weighted_mean(steps),
        mean_kinetic_c=mean_kinetic_temperature_c(steps.value, steps.durations_s),
        range_min_c=low,
        range_max_c=high,
        excursions=excursions(steps, low, high),
    )


def humidity_exposure(steps: Steps, low: float | None, high: float | None) -> HumidityExposure | None:
    """The humidity figures of held steps; None when no time is covered."""
    if steps.total_s() <= 0:
        return None
    return HumidityExposure(
        covered_s=steps.total_s(),
        samples=len(steps),
        minimum_pct=float(steps.value.min()),
        maximum_pct=float(steps.value.max()),
        mean_pct=time_weighted_mean(steps),
        range_min_pct=low,
        range_max_pct=high,
        excursions=excursions(steps, low, high),
    )


def _worst_excursions(all_: Sequence[Excursions]) -> Excursions:
    return Excursions(
        above_s=max(e.above_s for e in all_),
        longest_above_s=max(e.longest_above_s for e in all_),
        below_s=max(e.below_s for e in all_),
        longest_below_s=max(e.longest_below_s for e in all_),
    )


def _worst_temperature(all_: Sequence[TemperatureExposure]) -> TemperatureExposure | None:
    if not all_:
        return None
    return TemperatureExposure(
        covered_s=sum(t.covered_s for t in all_),
        samples=sum(t.samples for t in all_),
        minimum_c=min(t.minimum_c for t in all_),
        maximum_c=max(t.maximum_c for t in all_),
        mean_c=max(t.mean_c for t in all_),
        mean_kinetic_c=max(t.mean_kinetic_c for t in all_),
        range_min_c=all_[0].range_min_c,
        range_max_c=all_[0].range_max_c,
        excursions=_worst_excursions([t.excursions for t in all_]),
    )


def _worst_humidity(all_: Sequence[HumidityExposure]) -> HumidityExposure | None:
    if not all_:
        return None
    return HumidityExposure(
        covered_s=sum(h.covered_s for h in all_),
        samples=sum(h.samples for h in all_),
        minimum_pct=min(h.minimum_pct for h in all_),
        maximum_pct=max(h.maximum_pct for h in all_),
        mean_pct=max(h.mean_pct for h in all_),
        range_min_pct=all_[0].range_min_pct,
        range_max_pct=all_[0].range_max_pct,
        excursions=_worst_excursions([h.excursions for h in all_]),
    )
