"""UHF RFID physics of one antenna over one report window: which tags it reads, how often, and how loud.

- Forward link: a tag must be powered to answer. The chance that a tag is read at all during a report window
  falls off around the antenna's ``range_m`` (half the windows there) as a logistic curve whose width is
  ``range_softness_m``, so tags just beyond the range — on the neighbouring shelf, in the next zone — are
  still read now and then: cross-reads. A tag that is read is read in 1 + Binomial(rounds - 1, p) of the
  window's inventory rounds (``read_rate_hz`` times the window), so read counts fall with distance too.
- Return link: the peak RSSI follows log-distance path loss, RSSI(d) = RSSI(1 m) - 10·n·log10(d) - losses,
  plus Gaussian noise (multipath, tag orientation); reads below the receiver's sensitivity are lost.
- Missed reads: a tag in range is missed for a whole window with probability ``miss_rate`` (shadowed by
  metal or liquid, or lost in collisions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulator.scenario import AntennaSpec, Physics

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MIN_DISTANCE_M = 0.3


@dataclass(frozen=True, slots=True)
class Sightings:
    """What one antenna reported for one window: tag indices (into the caller's arrays), peak RSSI, read counts."""

    tags: IntArray
    rssi_dbm: FloatArray
    reads: IntArray

    def __len__(self) -> int:
        return len(self.tags)


def mean_rssi(antenna: AntennaSpec, distance_m: FloatArray, physics: Physics) -> FloatArray:
    """Log-distance path loss: the RSSI expected at a distance, before noise and extra losses."""
    distance = np.maximum(distance_m, MIN_DISTANCE_M)
    result: FloatArray = antenna.rssi_1m_dbm - 10.0 * physics.path_loss_exponent * np.log10(distance)
    return result


def detection_probability(antenna: AntennaSpec, distance_m: FloatArray, physics: Physics) -> FloatArray:
    """The chance that a tag at this distance is read in a report window (and in each of its rounds)."""
    z = np.clip((distance_m - antenna.range_m) / physics.range_softness_m, -60.0, 60.0)
    result: FloatArray = 1.0 / (1.0 + np.exp(z))
    return result


def inventory(
    antenna: AntennaSpec,
    x: FloatArray,
    y: FloatArray,
    attenuation_db: FloatArray,
    window_s: float,
    physics: Physics,
    rng: np.random.Generator,
) -> Sightings:
    """The tags at (x, y) that this antenna reads during one report window."""
    if len(x) == 0:
        return Sightings(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    distance = np.hypot(x - antenna.at[0], y - antenna.at[1])
    rounds = max(1, round(antenna.read_rate_hz * window_s))
    p = detection_probability(antenna, distance, physics)
    reads = 1 + rng.binomial(rounds - 1, p)
    rssi = mean_rssi(antenna, distance, physics) - attenuation_db
    if physics.rssi_noise_db > 0:
        rssi = rssi + rng.normal(0.0, physics.rssi_noise_db, len(x))
    seen = (rng.random(len(x)) < p) & (rssi >= physics.sensitivity_dbm)
    if physics.miss_rate > 0:
        seen &= rng.random(len(x)) >= physics.miss_rate
    tags = np.flatnonzero(seen)
    return Sightings(tags, np.round(rssi[tags], 1), reads[tags].astype(np.int64))
