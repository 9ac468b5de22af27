"""stocktrace's own MQTT format, documented in the README ("The native MQTT format").

Topics are ``stocktrace/<device_id>/reads``, ``.../telemetry`` and ``.../status``. Payloads are JSON; a
status payload may also be the bare word ``online`` or ``offline`` (what most devices put in a last will).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, Measurement, Position, Quantity, RawMessage, Reading, TagRead

TOPIC_ROOT: Final = "stocktrace"
MAX_READS_PER_MESSAGE: Final = 10_000
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_READ_KEYS: Final = frozenset({"epc", "antenna", "rssi_dbm", "at"})
_POSITION_KEYS: Final = frozenset({"lat", "lon", "alt_m", "accuracy_m", "speed_mps"})
_TELEMETRY_QUANTITIES: Final = {q.value: q for q in Quantity}

BENCH_SAMPLE: Final = (
    "stocktrace/dock-1/reads",
    b'{"epc":"3034257BF7194E4000001A85","antenna":2,"rssi_dbm":-61.5,"at":"2026-03-01T09:00:00.250Z"}',
)


def decode(message: RawMessage) -> list[Reading]:
    """Decode one native message; the topic says which device sent it and what it carries."""
    device_id, kind = _split_topic(message.topic)
    handler = _HANDLERS.get(kind)
    if handler is None:
        raise DecodeError(
            f"topic {message.topic!r}: unknown message kind {kind!r}; expected reads, telemetry or status"
        )
    return handler(device_id, message)


def _split_topic(topic: str) -> tuple[str, str]:
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or not parts[1]:
        raise DecodeError(f"topic {topic!r} is not stocktrace/<device_id>/<reads|telemetry|status>")
    return parts[1], parts[2]


def _load(payload: bytes) -> Any:
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[..." thousands deep: hostile, or broken beyond reading
        raise DecodeError("payload is JSON nested too deeply to read") from None


class _Read(msgspec.Struct, forbid_unknown_fields=True):
    """A read with only the documented fields, validated in C: the fast path of the hottest message there is."""

    epc: Annotated[str, msgspec.Meta(pattern="^[0-9A-Fa-f]{4,128}$")]
    antenna: Annotated[int, msgspec.Meta(ge=0, le=32767)] = 0
    rssi_dbm: Annotated[float, msgspec.Meta(ge=-200, le=50)] | None = None
    at: float | str | None = None


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    reads: Annotated[list[_Read], msgspec.Meta(min_length=1, max_length=MAX_READS_PER_MESSAGE)]
    at: float | str | None = None


_FAST_READ: Final = msgspec.json.Decoder(_Read)
_FAST_BATCH: Final = msgspec.json.Decoder(_Batch)


def _decode_reads(device_id: str, message: RawMessage) -> list[Reading]:
    payload = message.payload
    try:
        if b'"reads"' in payload:
            batch = _FAST_BATCH.decode(payload)
            observed_at = message.received_at if batch.at is None else parse_time(batch.at)
            return [
                TagRead(device_id, observed_at if read.at is None else parse_time(read.at), read.epc.upper(),
                        read.antenna, read.rssi_dbm, {})
                for read in batch.reads
            ]  # fmt: skip
        read = _FAST_READ.decode(payload)
    except msgspec.DecodeError:
        # Extra vendor fields and every error take the general path, which keeps the one and explains the other.
        return _decode_reads_generally(device_id, message)
    observed_at = message.received_at if read.at is None else parse_time(read.at)
    return [TagRead(device_id, observed_at, read.epc.upper(), read.antenna, read.rssi_dbm, {})]


def _decode_reads_generally(device_id: str, message: RawMessage) -> list[Reading]:
    body = _load(message.payload)
    observed_at = message.received_at
    if type(body) is dict and "reads" in body:
        if body.get("at") is not None:
            observed_at = parse_time(body["at"])
        body = body["reads"]
    items = body if type(body) is list else [body]
    if not items:
        raise DecodeError("reads message carries no reads")
    if len(items) > MAX_READS_PER_MESSAGE:
        raise DecodeError(f"reads message carries {len(items)} reads; at most {MAX_READS_PER_MESSAGE} are accepted")
    return [_tag_read(device_id, item, observed_at, index) for index, item in enumerate(items)]


# This runs once per read, hundreds of thousands of times a second: exact type checks (a JSON bool is not an
# antenna number) and no work for fields that are absent.
def _tag_read(device_id: str, item: object, observed_at: datetime, index: int) -> TagRead:
    if type(item) is not dict:
        raise DecodeError(f"read {index}: expected an object, got {type(item).__name__}")
    epc = item.get("epc")
    if type(epc) is not str or not 4 <= len(epc) <= 128 or not _HEX.issuperset(epc):
        raise DecodeError(f"read {index}: 'epc' must be a hex string of 4 to 128 digits, got {str(epc)[:40]!r}")
    known = 1
    antenna = item.get("antenna")
    if antenna is None:
        antenna = 0
    else:
        known += 1
        if type(antenna) is not int or not 0 <= antenna <= 32767:
            raise DecodeError(f"read {index}: 'antenna' must be an integer from 0 to 32767, got {str(antenna)[:20]!r}")
    rssi = item.get("rssi_dbm")
    if rssi is not None:
        known += 1
        if type(rssi) not in (float, int) or not -200 <= rssi <= 50:
            raise DecodeError(f"read {index}: 'rssi_dbm' must be a number from -200 to 50, got {str(rssi)[:20]!r}")
        rssi = float(rssi)
    at = item.get("at")
    if at is not None:
        known += 1
        observed_at = parse_time(at)
    extra = {k: v for k, v in item.items() if k not in _READ_KEYS} if len(item) > known else {}
    return TagRead(device_id, observed_at, epc.upper(), antenna, rssi, extra)


def _decode_telemetry(device_id: str, message: RawMessage) -> list[Reading]:
    body = _load(message.payload)
    if not isinstance(body, dict):
        raise DecodeError(f"telemetry must be a JSON object, got {type(body).__name__}")
    at = body.get("at")
    observed_at = message.received_at if at is None else parse_time(at)
    readings: list[Reading] = []
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if key in _TELEMETRY_QUANTITIES:
            readings.append(Measurement(device_id, observed_at, _TELEMETRY_QUANTITIES[key], _number(key, value)))
        elif key == "position":
            readings.append(_position(device_id, observed_at, value))
        elif key != "at":
            extra[key] = value
    if not readings:
        raise DecodeError(
            "telemetry carries no known quantity; expected one of "
            + ", ".join(sorted([*_TELEMETRY_QUANTITIES, "position"]))
        )
    if extra:
        readings = [_with_extra(reading, extra) for reading in readings]
    return readings


def _with_extra(reading: Reading, extra: Mapping[str, Any]) -> Reading:
    if isinstance(reading, Measurement):
        return Measurement(reading.device_id, reading.observed_at, reading.quantity, reading.value, extra)
    assert isinstance(reading, Position)
    return Position(
        reading.device_id, reading.observed_at, reading.latitude, reading.longitude,
        reading.altitude_m, reading.accuracy_m, reading.speed_mps, extra,
    )  # fmt: skip


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError(f"{name!r} must be a finite number, got {str(value)[:20]!r}")
    if abs(value) > 1e12:
        raise DecodeError(f"{name!r} is out of range: {value!r}")
    return float(value)


def _position(device_id: str, observed_at: datetime, value: object) -> Position:
    if not isinstance(value, dict):
        raise DecodeError("'position' must be an object with lat and lon")
    lat, lon = _number("lat", value.get("lat")), _number("lon", value.get("lon"))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise DecodeError(f"position ({lat}, {lon}) is not on Earth")

    def optional(key: str) -> float | None:
        return None if value.get(key) is None else _number(key, value[key])

    return Position(
        device_id, observed_at, lat, lon,
        altitude_m=optional("alt_m"), accuracy_m=optional("accuracy_m"), speed_mps=optional("speed_mps"),
        extra={k: v for k, v in value.items() if k not in _POSITION_KEYS},
    )  # fmt: skip


def _decode_status(device_id: str, message: RawMessage) -> list[Reading]:
    word = message.payload.strip().lower()
    if word in (b"online", b"offline"):
        return [
            DeviceStatus(
                device_id,
                message.received_at,
                word == b"online",
                "last-will" if word == b"offline" else "connected",
            )
        ]
    body = _load(message.payload)
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        raise DecodeError("status must be 'online', 'offline' or an object with a boolean 'online'")
    at = body.get("at")
    antenna = body.get("antenna")
    if antenna is not None and (isinstance(antenna, bool) or not isinstance(antenna, int) or not 0 <= antenna <= 32767):
        raise DecodeError("'antenna' must be an integer from 0 to 32767")
    reason = body.get("reason", "reported")
    if not isinstance(reason, str) or len(reason) > 200:
        raise DecodeError("'reason' must be a string of at most 200 characters")
    return [
        DeviceStatus(
            device_id,
            message.received_at if at is None else parse_time(at),
            body["online"],
            reason,
            antenna,
            {k: v for k, v in body.items() if k not in {"online", "at", "antenna", "reason"}},
        )
    ]


_HANDLERS: Final[Mapping[str, Callable[[str, RawMessage], list[Reading]]]] = {
    "reads": _decode_reads,
    "telemetry": _decode_telemetry,
    "status": _decode_status,
}
