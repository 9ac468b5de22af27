"""Impinj R700/R720 readers through the Impinj IoT device interface: tag inventory and status events.

Every delivery carries ReaderEvent objects (Impinj Reader Configuration REST API, definition ``ReaderEvent``):
``{"hostname", "eventType", "timestamp", "<eventType>Event": {...}}``. The same decoder reads all three ways
the reader delivers them:

* MQTT: one event per message;
* HTTP stream (``GET /data/stream``): newline-delimited events, with a bare CR-LF keep-alive every 30 s;
* webhooks: a JSON array of events (an empty array when nothing was queued during the linger time).

``tagInventoryEvent`` becomes a TagRead. The EPC is base64 (``epc``) unless hex output is enabled
(``epcHex``); ``peakRssiCdbm`` is in hundredths of a dBm. The read time is ``lastSeenTime`` when the reader
reports it, else the event ``timestamp`` (when the event was queued). Every other event type
(``antennaConnected``, ``antennaDisconnected``, ``inventoryStatus``, ``diagnostic``, ``overflow``, ...)
becomes a DeviceStatus whose reason is the event type in kebab case; only ``antennaDisconnected`` is
offline.

The device id is ``hostname``. Without it, the topic names the reader as ``<anything>/<reader>/<topic>``
(the segment before the last, or a single-segment topic as a whole), as for the other fixed readers.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, RawMessage, Reading, TagRead

MAX_EVENTS_PER_MESSAGE: Final = 10_000
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_ENVELOPE_KEYS: Final = frozenset({"hostname", "eventType", "timestamp"})
_TAG_KEYS: Final = frozenset({"epc", "epcHex", "antennaPort", "peakRssiCdbm", "lastSeenTime"})
_CAMEL_HUMP: Final = re.compile(r"(?<!^)(?=[A-Z])")

BENCH_SAMPLE: Final = (
    "impinj/dock-door-2/events",
    b'{"timestamp":"2024-05-14T09:30:12.481Z","hostname":"impinj-14-1a-2b","eventType":"tagInventory",'
    b'"tagInventoryEvent":{"epc":"MAgzst3ZAUAAAAAB","antennaPort":1,"antennaName":"Antenna 1",'
    b'"peakRssiCdbm":-5350,"frequency":915250,"transmitPowerCdbm":3000,'
    b'"lastSeenTime":"2024-05-14T09:30:12.476Z"}}',
)


def decode(message: RawMessage) -> list[Reading]:
    """Decode an MQTT message, an HTTP stream chunk or a webhook body of Impinj reader events."""
    events = _events(message.payload)
    if len(events) > MAX_EVENTS_PER_MESSAGE:
        raise DecodeError(f"message carries {len(events)} events; at most {MAX_EVENTS_PER_MESSAGE} are accepted")
    return [_decode_event(message, event, index) for index, event in enumerate(events)]


def _events(payload: bytes) -> list[Any]:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        if b"\n" not in payload.strip():
            raise DecodeError(f"payload is not valid JSON: {exc}") from None
        return _stream_lines(payload)
    if isinstance(body, list):
        return body
    return [body]


def _stream_lines(payload: bytes) -> list[Any]:
    events = []
    for number, line in enumerate(payload.splitlines(), start=1):
        if not line.strip():  # the stream's CR-LF keep-alive
            continue
        try:
            events.append(msgspec.json.decode(line))
        except msgspec.DecodeError as exc:
            raise DecodeError(f"stream line {number} is not valid JSON: {exc}") from None
    return events


def _decode_event(message: RawMessage, event: object, index: int) -> Reading:
    if not isinstance(event, dict):
        raise DecodeError(f"event {index}: expected a JSON object, got {type(event).__name__}")
    kind = event.get("eventType")
    if not isinstance(kind, str) or not kind:
        raise DecodeError(f"event {index}: missing 'eventType' (tagInventory, antennaDisconnected, ...)")
    if "timestamp" not in event:
        raise DecodeError(f"event {index}: missing 'timestamp'")
    device_id = _device_id(event, message.topic, index)
    queued_at = parse_time(event["timestamp"])
    body = event.get(f"{kind}Event", {})
    if not isinstance(body, dict):
        raise DecodeError(f"event {index}: '{kind}Event' must be an object, got {type(body).__name__}")
    extra = {k: v for k, v in event.items() if k not in _ENVELOPE_KEYS and k != f"{kind}Event"}
    if kind != "tagInventory":
        return _status(device_id, queued_at, kind, body, extra, index)
    if "tagInventoryEvent" not in event:
        raise DecodeError(f"event {index}: tagInventory event without 'tagInventoryEvent'")
    return _tag_read(device_id, queued_at, body, extra, index)


def _device_id(event: Mapping[str, Any], topic: str, index: int) -> str:
    hostname = event.get("hostname")
    if isinstance(hostname, str) and hostname:
        return hostname
    parts = [part for part in topic.split("/") if part]
    if not parts:
        raise DecodeError(f"event {index}: no 'hostname' and no topic to name the reader; give the topic")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _tag_read(
    device_id: str, queued_at: datetime, body: Mapping[str, Any], extra: dict[str, Any], index: int
) -> TagRead:
    antenna = body.get("antennaPort", 0)
    if isinstance(antenna, bool) or not isinstance(antenna, int) or not 0 <= antenna <= 32767:
        raise DecodeError(f"event {index}: 'antennaPort' must be an integer from 0 to 32767, got {str(antenna)[:20]!r}")
    rssi = body.get("peakRssiCdbm")
    if rssi is not None and not _is_number(rssi, -20000, 5000):
        raise DecodeError(f"event {index}: 'peakRssiCdbm' must be a number of cdBm, got {str(rssi)[:20]!r}")
    seen = body.get("lastSeenTime")
    extra.update((k, v) for k, v in body.items() if k not in _TAG_KEYS)
    return TagRead(
        device_id=device_id,
        observed_at=queued_at if seen is None else parse_time(seen),
        epc=_epc_hex(body, index),
        antenna=antenna,
        rssi_dbm=None if rssi is None else rssi / 100,
        extra=extra,
    )


def _epc_hex(body: Mapping[str, Any], index: int) -> str:
    epc_hex = body.get("epcHex")
    if epc_hex is not None:
        if not isinstance(epc_hex, str) or not 4 <= len(epc_hex) <= 128 or not _HEX.issuperset(epc_hex):
            raise DecodeError(
                f"event {index}: 'epcHex' must be a hex string of 4 to 128 digits, got {str(epc_hex)[:40]!r}"
            )
        return epc_hex.upper()
    epc = body.get("epc")
    if not isinstance(epc, str):
        raise DecodeError(f"event {index}: tagInventoryEvent has neither 'epc' (base64) nor 'epcHex'")
    try:
        raw = binascii.a2b_base64(epc, strict_mode=True)
    except binascii.Error:
        raise DecodeError(f"event {index}: 'epc' is not base64: {epc[:40]!r}") from None
    if not 2 <= len(raw) <= 64:
        raise DecodeError(f"event {index}: 'epc' decodes to {len(raw)} bytes; expected 2 to 64")
    return raw.hex().upper()


def _is_number(value: object, low: float, high: float) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
    )


def _status(
    device_id: str, queued_at: datetime, kind: str, body: Mapping[str, Any], extra: dict[str, Any], index: int
) -> DeviceStatus:
    antenna = body.get("antennaPort")
    if antenna is not None and (isinstance(antenna, bool) or not isinstance(antenna, int) or not 0 <= antenna <= 32767):
        raise DecodeError(f"event {index}: 'antennaPort' must be an integer from 0 to 32767, got {str(antenna)[:20]!r}")
    extra.update((k, v) for k, v in body.items() if k != "antennaPort")
    reason = _CAMEL_HUMP.sub("-", kind).lower()
    return DeviceStatus(device_id, queued_at, kind != "antennaDisconnected", reason, antenna, extra)
