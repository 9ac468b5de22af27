"""Tasmota sensor firmware: ``tele/<topic>/SENSOR`` telemetry and the retained ``tele/<topic>/LWT``.

A SENSOR message names each sensor by its driver (``AM2301``, ``DS18B20``) with its readings, and carries
``TempUnit`` ("C", or "F" with SetOption8 1) and ``Time`` — the device's *local* time without an offset
(Tasmota documentation, "Commands" → Timezone, and "MQTT" → telemetry). The LWT payload is ``Online`` when the
device connects and ``Offline`` as its last will, both retained.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec

from simulator.formats import Publication

_ENCODER = msgspec.json.Encoder()


def local_time(at_ms: int, zone: ZoneInfo) -> str:
    """2026-03-02T11:00:00: Tasmota writes its local time, whole seconds, no offset."""
    return datetime.fromtimestamp(at_ms // 1000, UTC).astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S")


def sensor(device_topic: str, at_ms: int, zone: ZoneInfo, temperature_c: float, humidity_pct: float | None,
           unit: str, sensor_id: str) -> Publication:  # fmt: skip
    """AM2301 (temperature and humidity) when humidity is known, else a DS18B20 probe."""
    temperature = temperature_c * 9 / 5 + 32 if unit == "F" else temperature_c
    if humidity_pct is None:
        reading: dict[str, object] = {"Id": sensor_id, "Temperature": round(temperature, 1)}
        name = "DS18B20"
    else:
        dew_point = temperature_c - (100 - humidity_pct) / 5  # the Tasmota dew point approximation is close to this
        dew = dew_point * 9 / 5 + 32 if unit == "F" else dew_point
        reading = {"Temperature": round(temperature, 1), "Humidity": round(humidity_pct, 1), "DewPoint": round(dew, 1)}
        name = "AM2301"
    body = {"Time": local_time(at_ms, zone), name: reading, "TempUnit": unit}
    return Publication(f"tele/{device_topic}/SENSOR", _ENCODER.encode(body))


def lwt(device_topic: str, online: bool) -> Publication:
    return Publication(f"tele/{device_topic}/LWT", b"Online" if online else b"Offline", retain=True)
