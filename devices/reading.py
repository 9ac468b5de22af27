"""The one vocabulary every stage speaks: what a device said, normalised.

Decoders turn vendor payloads into these; ingest stores them; tracking reads them back from the tables.
Times are UTC-aware, units are in the field names, and vendor fields we do not model go into ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as the broker delivered it; the input of every decoder."""

    topic: str
    payload: bytes
    received_at: datetime


class Quantity(StrEnum):
    """What a measurement measures, with its unit."""

    TEMPERATURE_C = "temperature_c"
    HUMIDITY_PCT = "humidity_pct"
    BATTERY_PCT = "battery_pct"
    BATTERY_V = "battery_v"
    PRESSURE_HPA = "pressure_hpa"
    SIGNAL_DBM = "signal_dbm"


def _no_extra() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class TagRead:
    """One RFID tag seen by one antenna of a reader."""

    device_id: str
    observed_at: datetime
    epc: str
    """The EPC (or TID) as upper-case hex, as the tag reported it."""
    antenna: int = 0
    rssi_dbm: float | None = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One scalar value from a sensor: temperature, humidity, battery, ..."""

    device_id: str
    observed_at: datetime
    quantity: Quantity
    value: float
    extra: Mapping[str, Any] = field(default_factory=_no_extra)


@dataclass(frozen=True, slots=True)
class Position:
    """A GPS (or other) fix of a tracker."""

    device_id: str
    observed_at: datetime
    latitude: float
    longitude: float
    altitude_m: float | None = None
    accuracy_m: float | None = None
    speed_mps: float | None = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device (or one of a reader's antennas) going online or offline, or reporting a health event."""

    device_id: str
    observed_at: datetime
    online: bool
    reason: str
    """Why: ``last-will``, ``connected``, ``heartbeat``, ``antenna-disconnected``, ``death-certificate``, ..."""
    antenna: int | None = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra)


@dataclass(frozen=True, slots=True)
class Reply:
    """A message a decoder asks to be published back to the device side (a Sparkplug rebirth request)."""

    topic: str
    payload: bytes


Reading: TypeAlias = TagRead | Measurement | Position | DeviceStatus | Reply


_KINDS: dict[type, str] = {
    TagRead: "tag_read",
    Measurement: "measurement",
    Position: "position",
    DeviceStatus: "device_status",
    Reply: "reply",
}


def as_json(reading: Reading) -> dict[str, Any]:
    """A reading as a JSON-ready dict: ``type`` first, times as ISO 8601 UTC, bytes as hex."""
    out: dict[str, Any] = {"type": _KINDS[type(reading)]}
    for name in reading.__slots__:
        value = getattr(reading, name)
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        elif isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, StrEnum):
            value = value.value
        elif name == "extra":
            value = dict(value)
        out[name] = value
    return out
