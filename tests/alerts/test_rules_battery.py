"""The battery rule as timelines: battery levels go in as ingest writes them, the evaluator ticks a virtual clock."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

import numpy as np
import pytest

from alerts.model import State
from alerts.rules_battery import judge
from alerts.rules_config import BatteryLow, RulesError, parse_rules
from tests.alerts.test_rules import MONDAY, Timeline, configure, minutes, opened_timeline

ONLY = ("battery_low",)


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


def levels(line: Timeline, device_id: str, start_min: float, values: Sequence[float], every_min: float = 10,
           quantity: str = "battery_pct") -> None:  # fmt: skip
    """Battery levels from MONDAY + start_min, one per every_min."""
    at = [MONDAY + minutes(start_min + i * every_min) for i in range(len(values))]
    rows = [(t, device_id, quantity, v, t) for t, v in zip(at, values, strict=True)]
    with line.db.cursor() as cur:
        cur.executemany(
            "insert into telemetry (observed_at, device_id, quantity, value, received_at) values (%s, %s, %s, %s, %s)",
            rows,
        )


def sensor(line: Timeline, device_id: str = "T1") -> None:
    line.location("freezer-1", "S1", "freezer")
    line.device(device_id, "sensor", "freezer-1")


def firing(line: Timeline) -> list[State]:
    """The alert's transitions (repeats of a firing alert left out)."""
    return [t.state for t in line.changes("BatteryLow") if t.change.previous != t.state]


def test_a_level_at_the_threshold_fires_and_names_the_device(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    levels(timeline, "T1", 0, [22, 21, 20])
    timeline.tick(MONDAY + minutes(21))

    assert firing(timeline) == [State.FIRING]
    _, starts_at, _, annotations, _, _, labels, _ = timeline.alert("BatteryLow")
    assert starts_at == MONDAY + minutes(20)
    assert (labels["device"], labels["location"], labels["site"]) == ("T1", "freezer-1", "S1")
    assert annotations["level_pct"] == "20.0"


def test_a_healthy_battery_with_noise_raises_nothing(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    noise = np.random.default_rng(7).normal(0, 1.0, 36)
    levels(timeline, "T1", 0, list(60 + noise))  # six hours, flat at 60 % with ±1 % noise
    timeline.tick(MONDAY + minutes(360))

    assert firing(timeline) == []


def test_a_fast_drain_fires_long_before_the_threshold_with_rate_and_empty_time(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    # 88 % falling 10 % an hour (empty 8.8 h after the start); the first hour and a half.
    levels(timeline, "T1", 0, [88 - 10 * (i / 6) for i in range(10)])
    timeline.tick(MONDAY + minutes(91))

    assert firing(timeline) == [State.FIRING]
    annotations = timeline.alert("BatteryLow")[3]
    assert float(annotations["level_pct"]) == pytest.approx(73, abs=0.5)
    assert float(annotations["drain_pct_per_h"]) == pytest.approx(10, abs=0.1)
    assert annotations["empty_at"].startswith((MONDAY + minutes(8.8 * 60)).isoformat()[:15])  # 16:48 on Monday


def test_no_projection_from_too_few_levels_or_too_short_a_span(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    sensor_2 = "T2"
    timeline.device(sensor_2, "sensor", "freezer-1")
    levels(timeline, "T1", 0, [90, 80, 70, 60], every_min=30)  # steep but only four levels
    levels(timeline, sensor_2, 0, [90, 88, 86, 84, 82, 80, 78, 76], every_min=5)  # steep but 35 minutes
    timeline.tick(MONDAY + minutes(95))

    assert firing(timeline) == []


def test_a_slow_drain_projecting_empty_after_the_horizon_raises_nothing(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    levels(timeline, "T1", 0, [80 - 0.5 * i / 6 for i in range(37)])  # 0.5 %/h: empty in six days
    timeline.tick(MONDAY + minutes(361))

    assert firing(timeline) == []


def test_a_replaced_battery_resolves_and_restarts_the_fit(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    levels(timeline, "T1", 0, [60 - 10 * i / 6 for i in range(13)])  # 10 %/h for two hours
    timeline.tick(MONDAY + minutes(121))
    assert firing(timeline) == [State.FIRING]

    # New battery at 100 %: the steep line before it must not project the new one empty.
    levels(timeline, "T1", 130, [100, 100, 99.9, 100, 100])
    timeline.tick(MONDAY + minutes(171))

    assert firing(timeline) == [State.FIRING, State.RESOLVED]


def test_a_level_wavering_around_the_threshold_does_not_flap(timeline: Timeline) -> None:
    configure(timeline, "rules: {battery_low: {horizon: 1h}}", *ONLY)
    sensor(timeline)
    wavering = [20, 22, 19, 23, 21, 24, 20, 22]
    for i, value in enumerate(wavering):
        levels(timeline, "T1", 60 * i, [value])
        timeline.tick(MONDAY + minutes(60 * i + 1))
    assert firing(timeline) == [State.FIRING]

    levels(timeline, "T1", 60 * len(wavering), [26])  # above 20 % plus the 5 % hysteresis
    timeline.tick(MONDAY + minutes(60 * len(wavering) + 1))
    assert firing(timeline) == [State.FIRING, State.RESOLVED]


def test_volts_count_when_no_percentage_is_reported(timeline: Timeline) -> None:
    configure(timeline, "rules: {battery_low: {overrides: [{match: {device: T2}, empty_v: 3.0, full_v: 3.6}]}}", *ONLY)
    sensor(timeline)
    timeline.device("T2", "sensor", "freezer-1")
    levels(timeline, "T1", 0, [2.62, 2.61, 2.60], quantity="battery_v")  # 20 % of 2.5 .. 3.0 V
    levels(timeline, "T2", 0, [3.31, 3.30, 3.30], quantity="battery_v")  # 50 % of 3.0 .. 3.6 V
    timeline.tick(MONDAY + minutes(21))

    assert [t.change.alert.labels["device"] for t in timeline.changes("BatteryLow")] == ["T1"]


def test_an_unassigned_device_or_a_disabled_kind_is_not_judged(timeline: Timeline) -> None:
    configure(timeline, "rules: {battery_low: {overrides: [{match: {device_kind: gps_tracker}, enabled: false}]}}",
              *ONLY)  # fmt: skip
    sensor(timeline)
    timeline.device("G1", "gps_tracker", "freezer-1")
    timeline.db.execute("update devices set assigned = false where id = 'T1'")
    levels(timeline, "T1", 0, [5])
    levels(timeline, "G1", 0, [5])
    timeline.tick(MONDAY + minutes(1))

    assert firing(timeline) == []


def test_judge_ignores_an_outlier_in_the_drain() -> None:
    times = np.arange(12, dtype=np.float64) * 600
    values = 80 - times / 3600 * 5  # 5 %/h
    values[6] = 20  # one bad reading
    drain = judge(times, values, BatteryLow())

    assert drain.rate_pct_per_h == pytest.approx(5, abs=0.01)
    assert drain.empty_at_s is not None
    assert drain.empty_at_s - times[-1] == pytest.approx((80 - 5 * times[-1] / 3600) / 5 * 3600, rel=0.01)


def test_full_v_below_empty_v_is_refused() -> None:
    with pytest.raises(RulesError, match="full_v must be above empty_v"):
        parse_rules("rules: {battery_low: {empty_v: 3.0, full_v: 2.5}}")


def test_the_shipped_defaults_state_the_battery_rule() -> None:
    from alerts.rules_config import load_rules

    params = load_rules().battery_low.params
    assert (params.low, params.horizon_s, params.window_s) == (20.0, 86400.0, 6 * 3600.0)
    assert params.volts == (2.5, 3.0)
    assert timedelta(seconds=params.span_s) == timedelta(hours=1)


def test_a_drain_that_turns_steep_after_a_flat_stretch_fires_within_the_hour(timeline: Timeline) -> None:
    configure(timeline, "", *ONLY)
    sensor(timeline)
    flat = [88.0] * 36  # five hours at 88 %, one level every ten minutes
    steep = [88 - 30 * (i + 1) / 6 for i in range(6)]  # then 30 %/h, as a failing cell in a freezer
    levels(timeline, "T1", 0, flat + steep)
    timeline.tick(MONDAY + minutes(10 * 41 + 1))

    assert firing(timeline) == [State.FIRING]
    assert float(timeline.alert("BatteryLow")[3]["drain_pct_per_h"]) == pytest.approx(30, abs=0.5)
