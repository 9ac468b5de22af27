"""Tasmota telemetry: ``tele/<topic>/SENSOR``, ``tele/<topic>/STATE`` and ``tele/<topic>/LWT``.

Shapes are from the Tasmota docs: the sensor pages (DS18x20, AM2301, BME280) show SENSOR payloads such as
``{"Time":"2019-11-03T19:34:28","BME280":{"Temperature":21.7,"Humidity":66.6,"Pressure":988.6},
"PressureUnit":"hPa","TempUnit":"C"}``; several DS18x20 probes appear as ``DS18B20-1``, ``DS18B20-2``, each
with its ``Id``; STATE is the periodic status (Uptime, Heap, Wifi, ...); LWT is ``Online`` (published on
connect) or ``Offline`` (the broker's last will).

Tasmota writes ``Time`` in the device's local time without an offset unless SetOption52 adds one, so each
decoder instance knows the time zone of each device (UTC when it is not told). TempUnit ``F``
(SetOption8) and PressureUnit ``mmHg``/``inHg`` (SetOption24) are converted to °C and hPa.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, Measurement, Quantity, RawMessage, Reading

# FullTopic is %prefix%/%topic%/ by default; %topic%/%prefix%/ is the documented alternative.
_PREFIX: Final = "tele"
_UNIT_KEYS: Final = frozenset({"Time", "TempUnit", "PressureUnit"})
# "Temperature1", "Temperature2" come from analog NTC inputs (ANALOG block).
_FIELDS: Final = re.compile(r"(Temperature|Humidity|Pressure)\d*")
_QUANTITIES: Final = {
    "Temperature": Quantity.TEMPERATURE_C,
    "Humidity": Quantity.HUMIDITY_PCT,
    "Pressure": Quantity.PRESSURE_HPA,
}
# The ESP32 block is the chip's own temperature, not the room's: it stays in extra.
_CHIP_BLOCKS: Final = frozenset({"ESP32"})
_HPA_PER: Final[Mapping[str, float]] = {"hPa": 1.0, "mmHg": 1.333_223_874, "inHg": 33.863_886_67}
# A Time before 2017 cannot be when a reading was taken: the device's clock is not set (no NTP yet). The
# delivery time is used instead and the device's Time kept in extra.
_CLOCK_SET_AFTER: Final = datetime(2017, 1, 1, tzinfo=UTC)


class Tasmota:
    """Decoder for Tasmota devices, with each device's time zone (``zones`` keyed by the device topic)."""

    def __init__(self, zones: Mapping[str, tzinfo] | None = None, default_zone: tzinfo = UTC) -> None:
        self._zones = dict(zones or {})
        self._default_zone = default_zone

    def __call__(self, message: RawMessage) -> list[Reading]:
        device_id, kind = _split_topic(message.topic)
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise DecodeError(f"topic {message.topic[:120]!r}: Tasmota message {kind!r} is not SENSOR, STATE or LWT")
        return handler(self, device_id, message)

    def _zone(self, device_id: str) -> tzinfo:
        return self._zones.get(device_id, self._default_zone)

    def _observed_at(
        self, device_id: str, body: Mapping[str, Any], message: RawMessage
    ) -> tuple[datetime, dict[str, Any]]:
        """When the device read its sensors, and the device's Time for extra when that cannot be trusted."""
        raw = body.get("Time")
        if raw is None:
            return message.received_at, {}
        # In the hour repeated when DST ends, a local time without offset reads as its first occurrence.
        observed_at = parse_time(raw, self._zone(device_id))
        if observed_at < _CLOCK_SET_AFTER:
            return message.received_at, {"Time": raw}
        return observed_at, {}

    def _sensor(self, device_id: str, message: RawMessage) -> list[Reading]:
        body = _load_object(message.payload)
        observed_at, unset_clock = self._observed_at(device_id, body, message)
        units = _Units(body)
        blocks = {name: value for name, value in body.items() if name not in _UNIT_KEYS}
        found = {name: block for name, block in blocks.items() if _has_reading(name, block)}
        if not found:
            raise DecodeError(
                "SENSOR message has no Temperature, Humidity or Pressure (it has: "
                + ", ".join(sorted(blocks))[:200]
                + ")"
            )
        shared = {name: value for name, value in blocks.items() if name not in found} | unset_clock
        readings: list[Reading] = []
        for name, block in found.items():
            readings.extend(_block_readings(device_id, observed_at, name, block, units, shared))
        return readings

    def _state(self, device_id: str, message: RawMessage) -> list[Reading]:
        body = _load_object(message.payload)
        observed_at, unset_clock = self._observed_at(device_id, body, message)
        extra = {key: value for key, value in body.items() if key != "Time"} | unset_clock
        return [DeviceStatus(device_id, observed_at, True, "heartbeat", extra=extra)]

    def _lwt(self, device_id: str, message: RawMessage) -> list[Reading]:
        word = message.payload.strip().lower()
        if word not in (b"online", b"offline"):
            raise DecodeError(f"LWT payload must be Online or Offline, got {message.payload[:40]!r}")
        online = word == b"online"
        return [DeviceStatus(device_id, message.received_at, online, "connected" if online else "last-will")]


_HANDLERS: Final[Mapping[str, Callable[[Tasmota, str, RawMessage], list[Reading]]]] = {
    "SENSOR": Tasmota._sensor,
    "STATE": Tasmota._state,
    "LWT": Tasmota._lwt,
}


class _Units:
    """The message's TempUnit and PressureUnit, as converters to °C and hPa."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        temp_unit = body.get("TempUnit", "C")
        if temp_unit not in ("C", "F"):
            raise DecodeError(f"TempUnit must be C or F, got {str(temp_unit)[:10]!r}")
        pressure_unit = body.get("PressureUnit", "hPa")
        if pressure_unit not in _HPA_PER:
            raise DecodeError(f"PressureUnit must be hPa, mmHg or inHg, got {str(pressure_unit)[:10]!r}")
        self._fahrenheit = temp_unit == "F"
        self._hpa_per = _HPA_PER[pressure_unit]

    def convert(self, quantity: Quantity, value: float) -> float:
        if quantity is Quantity.TEMPERATURE_C and self._fahrenheit:
            return round((value - 32.0) * 5.0 / 9.0, 3)
        if quantity is Quantity.PRESSURE_HPA:
            return round(value * self._hpa_per, 3)
        return value


def _split_topic(topic: str) -> tuple[str, str]:
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == _PREFIX:
        device_parts = parts[1:-1]
    elif len(parts) >= 3 and parts[-2] == _PREFIX:
        device_parts = parts[:-2]
    else:
        raise DecodeError(f"topic {topic[:120]!r} is not tele/<topic>/<SENSOR|STATE|LWT> (or <topic>/tele/...)")
    device_id = "/".join(device_parts)
    if not all(device_parts):
        raise DecodeError(f"topic {topic[:120]!r} has an empty device topic")
    return device_id, parts[-1]


def _load_object(payload: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"payload must be a JSON object, got {type(body).__name__}")
    return body


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _has_reading(name: str, block: object) -> bool:
    if name in _CHIP_BLOCKS or not isinstance(block, dict):
        return False
    return any(_FIELDS.fullmatch(key) and _number(value) is not None for key, value in block.items())


def _block_readings(
    device_id: str,
    observed_at: datetime,
    name: str,
    block: Mapping[str, Any],
    units: _Units,
    shared: Mapping[str, Any],
) -> list[Reading]:
    values = {key: _number(value) for key, value in block.items() if _FIELDS.fullmatch(key)}
    rest = {key: value for key, value in block.items() if values.get(key) is None}
    readings: list[Reading] = []
    for key, value in values.items():
        if value is None:
            continue
        match = _FIELDS.fullmatch(key)
        assert match is not None
        quantity = _QUANTITIES[match.group(1)]
        extra = {**shared, **rest, "sensor": name}
        if key != match.group(1):
            extra["field"] = key
        readings.append(Measurement(device_id, observed_at, quantity, units.convert(quantity, value), extra))
    return readings


# A representative message, for `stocktrace bench decode` (from the golden cases).
BENCH_SAMPLE: Final = (
    "tele/cold-room-1/SENSOR",
    json.dumps(
        {"Time": "2019-01-01T00:00:00", "AM2301": {"Temperature": 24.6, "Humidity": 58.2}, "TempUnit": "C"}
    ).encode(),
)
