"""Ruuvi Gateway MQTT messages: RuuviTag data format 5 (RAWv2) relayed from Bluetooth, and the gateway status.

The gateway publishes each Bluetooth advertisement it hears on ``[ruuvi/][<gw_mac>/]<tag_mac>`` as
``{"gw_mac", "rssi", "aoa", "gwts", "ts", "data", "coords"}`` (Ruuvi docs, "GW Data formats"; ``ts`` and
``gwts`` are Unix seconds, as strings on older firmware), where ``data`` is the raw advertisement in hex.
We decode the Ruuvi manufacturer data (company 0x0499) ourselves, following "Data Format 5 Protocol
Specification (RAWv2)" in ruuvi/ruuvi-sensor-protocols, rather than trusting optional decoded fields:
temperature in 0.005 °C, humidity in 0.0025 %, pressure in Pa above 50 000, battery voltage in the top 11
bits of the power word (mV above 1600), and each field's "not available" sentinel. A field that is not
available yields no Measurement.

Readings: ``temperature_c``, ``humidity_pct``, ``pressure_hpa`` and ``battery_v`` Measurements; acceleration
(mG), movement counter, measurement sequence and TX power go to ``extra`` with the gateway's fields. The
device id is the tag MAC (upper case, colon-separated) from the last topic segment, or from the payload's
MAC field when the topic does not end in one. Advertisements without Ruuvi manufacturer data (the gateway
can relay every Bluetooth device) decode to no readings; Ruuvi formats other than 5 are errors.

``<prefix>/gw_status`` carries ``{"state": "online"}`` or, as the gateway's last will,
``{"state": "offline"}``; it becomes a DeviceStatus of the gateway, named by the MAC segment before
``gw_status``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, Measurement, Quantity, RawMessage, Reading

_MAC: Final = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}$")
_MANUFACTURER_DATA: Final = 0xFF
_RUUVI_COMPANY_ID: Final = b"\x99\x04"  # 0x0499, little-endian as Bluetooth sends it
_DF5: Final = struct.Struct(">hHHhhhHBH")  # offsets 1-17 of the RAWv2 payload, MSB first
_DF5_LENGTH: Final = 24
_ENVELOPE_KEYS: Final = frozenset({"data", "ts"})

BENCH_SAMPLE: Final = (
    "ruuvi/C8:25:2D:8E:9C:2C/CB:B8:33:4C:88:4F",
    b'{"gw_mac":"C8:25:2D:8E:9C:2C","rssi":-62,"aoa":[],"gwts":"1772355601","ts":"1772355600",'
    b'"data":"0201061BFF99040512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F","coords":""}',
)


def decode(message: RawMessage) -> list[Reading]:
    """Decode one Ruuvi Gateway message: a relayed advertisement or the gateway's status."""
    parts = [part for part in message.topic.split("/") if part]
    body = _load(message.payload)
    if parts and parts[-1] == "gw_status":
        return [_gateway_status(parts, body, message.received_at)]
    manufacturer_data = _ruuvi_manufacturer_data(_advertisement(body))
    if manufacturer_data is None:
        return []
    values = _data_format_5(manufacturer_data)
    device_id = _tag_mac(parts, values.pop("mac"))
    observed_at = _observed_at(body, message.received_at)
    extra = {k: v for k, v in body.items() if k not in _ENVELOPE_KEYS}
    extra.update((k, v) for k, v in values.items() if k not in _QUANTITIES)
    return [
        Measurement(device_id, observed_at, quantity, value, extra)
        for key, quantity in _QUANTITIES.items()
        if (value := values[key]) is not None
    ]


def _load(payload: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"payload must be a JSON object, got {type(body).__name__}")
    return body


def _advertisement(body: Mapping[str, Any]) -> bytes:
    data = body.get("data")
    if not isinstance(data, str):
        raise DecodeError(f"'data' must be the advertisement as a hex string, got {str(data)[:40]!r}")
    try:
        return bytes.fromhex(data)
    except ValueError:
        raise DecodeError(f"'data' is not hex: {data[:64]!r}") from None


def _ruuvi_manufacturer_data(advertisement: bytes) -> bytes | None:
    # An advertisement is a run of AD structures: length (of type + value), type, value (Bluetooth Core
    # Specification, Vol 3, Part C, §11). Manufacturer data (type 0xFF) starts with the company id.
    start = 0
    while start < len(advertisement):
        length = advertisement[start]
        if length == 0:  # padding to the end
            break
        end = start + 1 + length
        if end > len(advertisement):
            raise DecodeError(f"advertisement is truncated: the structure at byte {start} runs past its end")
        if advertisement[start + 1] == _MANUFACTURER_DATA and advertisement[start + 2 : start + 4] == _RUUVI_COMPANY_ID:
            return advertisement[start + 4 : end]
        start = end
    return None


def _data_format_5(data: bytes) -> dict[str, Any]:
    if not data or data[0] != 5:
        fmt = data[0] if data else None
        raise DecodeError(f"Ruuvi data format {fmt} is not supported; only format 5 (RAWv2) is")
    if len(data) < _DF5_LENGTH:
        raise DecodeError(f"Ruuvi data format 5 payload has {len(data)} bytes; it needs {_DF5_LENGTH}")
    temperature, humidity, pressure, x, y, z, power, movement, sequence = _DF5.unpack_from(data, 1)
    battery_mv, tx_steps = power >> 5, power & 0x1F
    mac = data[18:24]
    # "Not available" is the largest value of an unsigned field, the smallest of a signed one, and a MAC
    # of all ones (RAWv2 specification).
    return {
        "temperature_c": None if temperature == -32768 else temperature / 200,
        "humidity_pct": None if humidity == 0xFFFF else humidity / 400,
        "pressure_hpa": None if pressure == 0xFFFF else (pressure + 50_000) / 100,
        "battery_v": None if battery_mv == 0x7FF else (battery_mv + 1600) / 1000,
        "data_format": 5,
        "acceleration_x_mg": None if x == -32768 else x,
        "acceleration_y_mg": None if y == -32768 else y,
        "acceleration_z_mg": None if z == -32768 else z,
        "tx_power_dbm": None if tx_steps == 0x1F else tx_steps * 2 - 40,
        "movement_counter": None if movement == 0xFF else movement,
        "measurement_sequence": None if sequence == 0xFFFF else sequence,
        "mac": None if mac == b"\xff" * 6 else mac.hex(":").upper(),
    }


_QUANTITIES: Final = {
    "temperature_c": Quantity.TEMPERATURE_C,
    "humidity_pct": Quantity.HUMIDITY_PCT,
    "pressure_hpa": Quantity.PRESSURE_HPA,
    "battery_v": Quantity.BATTERY_V,
}


@lru_cache(maxsize=4096)  # a site has a bounded set of tags and gateways; saves a third of the decode time
def _normal_mac(text: str) -> str | None:
    if not _MAC.match(text):
        return None
    digits = re.sub(r"[:-]", "", text).upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _tag_mac(parts: list[str], payload_mac: str | None) -> str:
    topic_mac = _normal_mac(parts[-1]) if parts else None
    mac = topic_mac or payload_mac
    if mac is None:
        raise DecodeError("no tag MAC: the topic does not end in one and the payload's MAC is not available")
    return mac


def _observed_at(body: Mapping[str, Any], received_at: datetime) -> datetime:
    # ts: when the gateway heard the advertisement; gwts: when it relayed it.
    for key in ("ts", "gwts"):
        if body.get(key) not in (None, ""):
            return parse_time(body[key])
    return received_at


def _gateway_status(parts: list[str], body: Mapping[str, Any], received_at: datetime) -> DeviceStatus:
    gateway = _normal_mac(parts[-2]) if len(parts) >= 2 else None
    if gateway is None:
        raise DecodeError("gw_status topic names no gateway; enable 'use gateway MAC in the topic prefix'")
    state = body.get("state")
    if state not in ("online", "offline"):
        raise DecodeError(f"gw_status 'state' must be 'online' or 'offline', got {str(state)[:20]!r}")
    extra = {k: v for k, v in body.items() if k != "state"}
    online = state == "online"
    return DeviceStatus(gateway, received_at, online, "connected" if online else "last-will", None, extra)
