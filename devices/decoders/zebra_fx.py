"""Zebra FX7500/FX9600/ATR7000 readers through the IoT Connector: tag data events and management events.

The IoT Connector (https://zebradevs.github.io/rfid-ziotc-docs/) publishes JSON envelopes
``{"data": {...}, "timestamp": "...", "type": "..."}`` on two user-chosen MQTT topics:

* tag data events, where ``type`` is the operating mode (``SIMPLE``, ``INVENTORY``, ``CUSTOM``, ...) and
  ``data`` carries ``idHex`` plus the metadata the mode enables (``antenna``, ``peakRssi`` in dBm,
  ``reads``, ``channel``, ``phase``, ``PC``, ``CRC``, ...). With batching on, one message is a JSON array
  of such envelopes.
* management events, where ``type`` names the event: ``heartbeat`` (sections ``radio_control``,
  ``reader_gateway``, ``system``, ``userapps``), ``gpi``, errors and warnings.

Neither carries the reader's name, so the device id comes from the topic. Zebra's MQTT samples name
topics ``<anything>/<reader>/<event topic>`` (``zebra/dock-door-1/data``, ``zebra/dock-door-1/events``):
the device id is the segment before the last one, or the whole topic when it has a single segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, RawMessage, Reading, TagRead

MAX_EVENTS_PER_MESSAGE: Final = 10_000
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_TAG_KEYS: Final = frozenset({"idHex", "antenna", "peakRssi"})
_ENVELOPE_KEYS: Final = frozenset({"data", "timestamp"})

BENCH_SAMPLE: Final = (
    "zebra/dock-door-1/data",
    b'[{"data":{"CRC":"518e","PC":"3000","antenna":1,"channel":927.25,"eventNum":194,"format":"epc",'
    b'"idHex":"ad99160040aac99525000025","peakRssi":-54,"phase":0.0,"reads":9},'
    b'"timestamp":"2023-02-24T10:14:42.851+0000","type":"INVENTORY"}]',
)


def decode(message: RawMessage) -> list[Reading]:
    """Decode one IoT Connector message: a single event or a batched array of events."""
    device_id = _reader_from_topic(message.topic)
    body = _load(message.payload)
    events = body if isinstance(body, list) else [body]
    if len(events) > MAX_EVENTS_PER_MESSAGE:
        raise DecodeError(f"message carries {len(events)} events; at most {MAX_EVENTS_PER_MESSAGE} are accepted")
    readings: list[Reading] = []
    for index, event in enumerate(events):
        readings.extend(_decode_event(device_id, event, message.received_at, index))
    return readings


def _reader_from_topic(topic: str) -> str:
    parts = [part for part in topic.split("/") if part]
    if not parts:
        raise DecodeError(f"topic {topic!r} names no reader; expected <anything>/<reader>/<event topic>")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _load(payload: bytes) -> Any:
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None


def _decode_event(device_id: str, event: object, received_at: datetime, index: int) -> list[Reading]:
    if not isinstance(event, dict):
        raise DecodeError(f"event {index}: expected a JSON object, got {type(event).__name__}")
    data = event.get("data")
    if not isinstance(data, dict):
        raise DecodeError(f"event {index}: 'data' must be an object, got {type(data).__name__}")
    at = event.get("timestamp")
    observed_at = received_at if at is None else parse_time(at)
    # Tag data events always carry the tag's id format ("epc" or "tid") next to idHex; management
    # events carry neither, their kind is in "type".
    if "idHex" in data or "format" in data:
        return [_tag_read(device_id, event, data, observed_at, index)]
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise DecodeError(f"event {index}: neither a tag data event (data.idHex) nor a management event (type)")
    return _management_event(device_id, event, data, observed_at, kind)


def _tag_read(
    device_id: str, event: Mapping[str, Any], data: Mapping[str, Any], observed_at: datetime, index: int
) -> TagRead:
    epc = data.get("idHex")
    if not isinstance(epc, str) or not 4 <= len(epc) <= 128 or not _HEX.issuperset(epc):
        raise DecodeError(f"event {index}: 'data.idHex' must be a hex string of 4 to 128 digits, got {str(epc)[:40]!r}")
    antenna = data.get("antenna", 0)
    if isinstance(antenna, bool) or not isinstance(antenna, int) or not 0 <= antenna <= 32767:
        raise DecodeError(
            f"event {index}: 'data.antenna' must be an integer from 0 to 32767, got {str(antenna)[:20]!r}"
        )
    rssi = data.get("peakRssi")
    if rssi is not None and not _is_number(rssi, -200, 50):
        raise DecodeError(f"event {index}: 'data.peakRssi' must be a number of dBm, got {str(rssi)[:20]!r}")
    extra = {k: v for k, v in event.items() if k not in _ENVELOPE_KEYS}
    extra.update((k, v) for k, v in data.items() if k not in _TAG_KEYS)
    return TagRead(
        device_id=device_id,
        observed_at=observed_at,
        epc=epc.upper(),
        antenna=antenna,
        rssi_dbm=None if rssi is None else float(rssi),
        extra=extra,
    )


def _is_number(value: object, low: float, high: float) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
    )


def _management_event(
    device_id: str, event: Mapping[str, Any], data: Mapping[str, Any], observed_at: datetime, kind: str
) -> list[Reading]:
    extra = {k: v for k, v in event.items() if k not in _ENVELOPE_KEYS and k != "type"}
    extra.update(data)
    # A reader that sends any management event is up; the event kind says what it reports.
    readings: list[Reading] = [DeviceStatus(device_id, observed_at, True, kind, None, extra)]
    if kind == "heartbeat":
        readings.extend(_antenna_states(device_id, data, observed_at))
    return readings


def _antenna_states(device_id: str, data: Mapping[str, Any], observed_at: datetime) -> list[Reading]:
    # Heartbeat radio_control.antennas maps port numbers to "connected"/"disconnected" (ZIOTC docs,
    # "Configuration of Management Events", ANTENNAS); Zebra has no separate antenna event.
    radio = data.get("radio_control")
    antennas = radio.get("antennas") if isinstance(radio, dict) else None
    if not isinstance(antennas, dict):
        return []
    # Ports in other states stay visible in the heartbeat's extra; they must not cost us the heartbeat.
    return [
        DeviceStatus(device_id, observed_at, state == "connected", f"antenna-{state}", int(port))
        for port, state in antennas.items()
        if isinstance(port, str) and port.isdigit() and state in ("connected", "disconnected")
    ]
