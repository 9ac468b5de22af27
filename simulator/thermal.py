"""Temperatures of cold rooms, freezers and reefers: first-order relaxation toward whatever the cooling holds.

Between changes (a door opens, a compressor fails) a room's temperature follows Newton's law of cooling,
T(t) = T_eq + (T0 - T_eq)·e^(-Δt/τ), so it can be read at any time without stepping the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Time constants: a closed cold room recovers in tens of minutes; an open door lets it warm faster; an
# insulated reefer box whose compressor failed warms over hours.
RECOVERY_TAU_S = 1200.0
DOOR_OPEN_TAU_S = 900.0
DOOR_OPEN_SHARE = 0.85
REEFER_FAILED_TAU_S = 5400.0
REEFER_TAU_S = 600.0


@dataclass(slots=True)
class Thermal:
    """The temperature of one enclosed space and the equilibrium it is heading to."""

    temperature_c: float
    updated_at: float
    target_c: float
    tau_s: float

    def at(self, t: float) -> float:
        elapsed = max(0.0, t - self.updated_at)
        return self.target_c + (self.temperature_c - self.target_c) * math.exp(-elapsed / self.tau_s)

    def retarget(self, t: float, target_c: float, tau_s: float) -> None:
        self.temperature_c = self.at(t)
        self.updated_at = t
        self.target_c = target_c
        self.tau_s = tau_s


def held_at(setpoint_c: float, t: float) -> Thermal:
    """A space whose cooling holds it at its setpoint."""
    return Thermal(setpoint_c, t, setpoint_c, RECOVERY_TAU_S)


def door_open_target(setpoint_c: float, ambient_c: float) -> float:
    """Where an open cold room settles: most of the way to the air outside it."""
    return setpoint_c + DOOR_OPEN_SHARE * (ambient_c - setpoint_c)
