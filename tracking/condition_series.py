"""Numbers over sampled sensor series, with numpy: what an item went through, in seconds and degrees.

A sensor reports a value now and then; between two reports the value is taken to hold (sample and hold), but
no longer than `max_hold_s`: after that the time is unknown rather than guessed. The held series is a list of
*steps* (start, end, value), and every figure here is time-weighted over them, so irregular or bursty
reporting does not bias it: a value that held for an hour weighs sixty times one that held for a minute.
With samples at a fixed interval the figures equal the textbook per-sample ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]

KELVIN_OFFSET: Final = 273.15
# USP <1079.2> "Mean Kinetic Temperature in the Evaluation of Temperature Excursions during Storage and
# Transportation of Drug Products" and ICH Q1A(R2) (glossary, "mean kinetic temperature"): ΔH = 83.144 kJ/mol
# and R = 8.3144 J/(mol·K) by default, so that ΔH/R = 10 000 K.
ACTIVATION_ENERGY_J_PER_MOL: Final = 83_144.0
GAS_CONSTANT_J_PER_MOL_K: Final = 8.3144
# Two steps closer than this in time are contiguous (timestamps come from the database in microseconds).
_CONTIGUOUS_S: Final = 1e-3


@dataclass(frozen=True, slots=True)
class Steps:
    """A piecewise-constant series: value[i] held from start_s[i] to end_s[i] (seconds since the epoch),
    sorted by start, not overlapping."""

    start_s: FloatArray
    end_s: FloatArray
    value: FloatArray

    @classmethod
    def empty(cls) -> Steps:
        return cls(np.empty(0), np.empty(0), np.empty(0))

    @property
    def durations_s(self) -> FloatArray:
        return self.end_s - self.start_s

    def __len__(self) -> int:
        return len(self.value)

    def total_s(self) -> float:
        return float(self.durations_s.sum())


@dataclass(frozen=True, slots=True)
class Excursion:
    """Time beyond one limit: in all (cumulative) and the longest unbroken stretch (consecutive)."""

    total_s: float
    longest_s: float


def hold(sample_s: FloatArray, values: FloatArray, start_s: float, end_s: float, max_hold_s: float) -> Steps:
    """The steps of samples (sorted by time) held over [start_s, end_s).

    Each sample holds until the next one, or for max_hold_s, or until end_s, whichever comes first; the last
    sample before start_s carries into the window if it is recent enough. Samples taken at the same instant
    (two sensors of one room) leave the later one in the list holding.
    """
    if len(sample_s) == 0 or end_s <= start_s:
        return Steps.empty()
    following = np.append(sample_s[1:], np.inf)
    begin = np.maximum(sample_s, start_s)
    end = np.minimum(np.minimum(following, sample_s + max_hold_s), end_s)
    keep = end > begin
    return Steps(begin[keep], end[keep], values[keep])


def join(parts: Sequence[Steps]) -> Steps:
    """One series from the steps of several windows (an item's stays), in time order."""
    if not parts:
        return Steps.empty()
    start = np.concatenate([p.start_s for p in parts])
    order = np.argsort(start, kind="stable")
    return Steps(
        start[order],
        np.concatenate([p.end_s for p in parts])[order],
        np.concatenate([p.value for p in parts])[order],
    )


def longest_run_s(steps: Steps, mask: npt.NDArray[np.bool_]) -> float:
    """The longest stretch of contiguous steps where mask holds; a gap in time (no data) breaks a stretch."""
    if not mask.any():
        return 0.0
    contiguous = np.abs(steps.start_s[1:] - steps.end_s[:-1]) <= _CONTIGUOUS_S
    starts_run = np.ones(len(steps), dtype=bool)
    starts_run[1:] = ~(mask[:-1] & contiguous)
    run = np.cumsum(starts_run) - 1
    return float(np.bincount(run[mask], weights=steps.durations_s[mask]).max())


def time_above(steps: Steps, limit: float | None) -> Excursion:
    """Time with the value strictly above limit (a value on the limit is within range)."""
    if limit is None or len(steps) == 0:
        return Excursion(0.0, 0.0)
    mask = steps.value > limit
    return Excursion(float(steps.durations_s[mask].sum()), longest_run_s(steps, mask))


def time_below(steps: Steps, limit: float | None) -> Excursion:
    """Time with the value strictly below limit."""
    if limit is None or len(steps) == 0:
        return Excursion(0.0, 0.0)
    mask = steps.value < limit
    return Excursion(float(steps.durations_s[mask].sum()), longest_run_s(steps, mask))


def time_weighted_mean(steps: Steps) -> float:
    weights = steps.durations_s
    if len(steps) == 0 or weights.sum() <= 0:
        raise ValueError("no time covered: a mean needs at least one step of positive duration")
    return float(np.average(steps.value, weights=weights))


def mean_kinetic_temperature_c(
    temperatures_c: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    activation_energy_j_per_mol: float = ACTIVATION_ENERGY_J_PER_MOL,
) -> float:
    """Mean kinetic temperature, °C (USP <1079.2>):

        MKT = (ΔH/R) / -ln( Σ wᵢ·exp(-ΔH / (R·Tᵢ)) / Σ wᵢ ),   Tᵢ in kelvin

    With equal weights this is the formula over n evenly spaced readings; with weights = the time each
    reading held it is the time-weighted form for irregular samples. The sum is taken in log space (the
    exponentials are about e^-34 at room temperature), which loses no precision.
    """
    kelvin = np.asarray(temperatures_c, dtype=np.float64) + KELVIN_OFFSET
    if kelvin.size == 0:
        raise ValueError("no temperatures")
    if np.any(kelvin <= 0):
        raise ValueError("a temperature is at or below absolute zero")
    w = np.ones_like(kelvin) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != kelvin.shape or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must match the temperatures, be non-negative and not all zero")
    ratio = activation_energy_j_per_mol / GAS_CONSTANT_J_PER_MOL_K
    exponent = -ratio / kelvin
    top = exponent.max()
    log_mean = top + np.log(np.sum(w * np.exp(exponent - top)) / w.sum())
    return float(ratio / -log_mean - KELVIN_OFFSET)
