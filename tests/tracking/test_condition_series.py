"""The numbers behind experienced conditions: sample and hold, excursions, mean kinetic temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracking.condition_series import (
    Steps,
    hold,
    join,
    mean_kinetic_temperature_c,
    time_above,
    time_below,
    time_weighted_mean,
)

MINUTE = 60.0


def _held(minutes: list[float], values: list[float], end_min: float, max_hold_min: float = 15) -> Steps:
    times = np.array(minutes) * MINUTE
    return hold(times, np.array(values), times[0], end_min * MINUTE, max_hold_min * MINUTE)


def test_mkt_of_half_the_time_at_20_and_half_at_30_is_26_26() -> None:
    """Worked by hand with USP <1079.2>'s ΔH/R = 83 144 / 8.3144 = 10 000 K:
    20 °C = 293.15 K → -10 000/293.15 = -34.11223;  30 °C = 303.15 K → -10 000/303.15 = -32.98697;
    ln((e^-34.11223 + e^-32.98697) / 2) = -32.98697 + ln((1 + e^-1.12526) / 2) = -32.98697 + ln(0.662284)
                                       = -32.98697 - 0.41206 = -33.39903;
    MKT = 10 000 / 33.39903 = 299.410 K = 26.26 °C, above the arithmetic mean (25 °C), as it must be."""
    assert mean_kinetic_temperature_c([20.0, 30.0]) == pytest.approx(26.260, abs=0.001)
    # Time weighting: 1 h at 20 °C and 1 h at 30 °C is the same, however finely each hour was sampled.
    assert mean_kinetic_temperature_c([20.0, 30.0, 30.0], [60.0, 20.0, 40.0]) == pytest.approx(26.260, abs=0.001)


def test_mkt_of_a_constant_temperature_is_that_temperature() -> None:
    assert mean_kinetic_temperature_c([5.0] * 10) == pytest.approx(5.0, abs=1e-9)


def test_mkt_weighs_heat_more_than_the_arithmetic_mean() -> None:
    # A day in a cold room at 5 °C with one hour at 25 °C: the hour weighs far more than 1/24.
    temperatures = np.array([5.0] * 23 + [25.0])
    mkt = mean_kinetic_temperature_c(temperatures)
    assert mkt > float(temperatures.mean()) + 1.0
    # The same by the textbook formula, term by term.
    kelvin = temperatures + 273.15
    textbook = 10_000.0 / -math.log(sum(math.exp(-10_000.0 / t) for t in kelvin) / len(kelvin)) - 273.15
    assert mkt == pytest.approx(textbook, abs=1e-9)


def test_mkt_refuses_empty_and_unmatched_weights() -> None:
    with pytest.raises(ValueError, match="no temperatures"):
        mean_kinetic_temperature_c([])
    with pytest.raises(ValueError, match="weights"):
        mean_kinetic_temperature_c([5.0, 6.0], [1.0])


def test_a_sample_holds_until_the_next_or_at_most_max_hold() -> None:
    steps = _held([0, 10, 60], [4.0, 5.0, 6.0], end_min=70)
    assert list(steps.start_s / MINUTE) == [0, 10, 60]
    assert list(steps.end_s / MINUTE) == [10, 25, 70]  # 10 → 25: held 15 min, then unknown until 60
    assert steps.total_s() == 35 * MINUTE


def test_the_last_sample_before_a_window_carries_into_it() -> None:
    times = np.array([0.0, 10.0, 20.0]) * MINUTE
    steps = hold(times, np.array([1.0, 2.0, 3.0]), 15 * MINUTE, 25 * MINUTE, 15 * MINUTE)
    assert list(steps.value) == [2.0, 3.0]
    assert list(steps.start_s / MINUTE) == [15, 20]


def test_consecutive_and_cumulative_time_above_differ() -> None:
    # Every 10 minutes: two readings above 8 °C, one back inside, three above, one inside.
    steps = _held([0, 10, 20, 30, 40, 50, 60], [9, 9, 7, 9, 9, 9, 7], end_min=70)
    above = time_above(steps, 8.0)
    assert above.total_s == 50 * MINUTE
    assert above.longest_s == 30 * MINUTE
    assert time_below(steps, 2.0).total_s == 0


def test_a_gap_without_data_breaks_an_excursion() -> None:
    # Above range at 0 and at 40 minutes, nothing in between: two excursions of 15 minutes, not one of 55.
    steps = _held([0, 40], [10.0, 10.0], end_min=55)
    above = time_above(steps, 8.0)
    assert above.total_s == 30 * MINUTE
    assert above.longest_s == 15 * MINUTE


def test_an_excursion_continues_across_joined_windows() -> None:
    # Warm in one room until minute 30, then warm in the next: one excursion of 60 minutes.
    first = hold(np.array([0.0]), np.array([9.0]), 0, 30 * MINUTE, 3600)
    second = hold(np.array([30.0 * MINUTE]), np.array([11.0]), 30 * MINUTE, 60 * MINUTE, 3600)
    above = time_above(join([second, first]), 8.0)
    assert above.longest_s == 60 * MINUTE


def test_a_value_on_the_limit_is_within_range() -> None:
    steps = _held([0, 10], [8.0, 2.0], end_min=20)
    assert time_above(steps, 8.0).total_s == 0
    assert time_below(steps, 2.0).total_s == 0


def test_the_mean_is_time_weighted() -> None:
    steps = _held([0, 50, 55], [4.0, 10.0, 4.0], end_min=60, max_hold_min=60)
    assert time_weighted_mean(steps) == pytest.approx((50 * 4 + 5 * 10 + 5 * 4) / 60)
