"""OwnTracks phone and tracker messages: locations, region transitions and the last will.

Message types follow the OwnTracks booklet, "JSON" (https://owntracks.org/booklet/tech/json/):

* ``_type: location`` becomes a Position (``lat``, ``lon``, ``alt`` m, ``acc`` m, ``vel`` km/h converted to
  m/s, ``tst`` epoch seconds of the fix) and, when ``batt`` is present, a ``battery_pct`` Measurement.
* ``_type: transition`` (entering or leaving a region) becomes a Position at the coordinates where the event
  fired, with ``event`` (``enter``/``leave``) and ``desc`` (the region's name) kept in ``extra``.
* ``_type: lwt`` is the will the broker publishes when it loses the app: an offline DeviceStatus with reason
  ``last-will``. Its ``tst`` is when the app *connected*, so the status is stamped with the time of receipt.
* ``_type: encrypted`` cannot be read without the app's key and is an error, so it reaches the dead letters.
* The other documented types (card, cmd, configuration, waypoint, waypoints, beacon, steps, request, status)
  describe settings and people, not observations: they decode to no readings.

The apps publish on ``owntracks/<user>/<device>`` (transitions on ``.../event``); the base is configurable,
so the user and device are the last two segments after dropping a known sub-topic. In HTTP mode the payload's
``topic`` field carries the same name. The device id is ``<user>:<device>``: a ``/`` would clash with topic
levels, and ``-`` can occur in both names, so ``jane-doe/phone`` and ``jane/doe-phone`` would collide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, Measurement, Position, Quantity, RawMessage, Reading

_SUBTOPICS: Final = frozenset({"event", "cmd", "step", "beacon", "dump", "status", "waypoint", "waypoints", "info"})
_NOT_READINGS: Final = frozenset(
    {"beacon", "card", "cmd", "configuration", "request", "status", "steps", "waypoint", "waypoints"}
)
_LOCATION_KEYS: Final = frozenset({"_type", "lat", "lon", "alt", "acc", "vel", "tst", "batt"})
_TRANSITION_KEYS: Final = frozenset({"_type", "lat", "lon", "acc", "tst"})
_KMH_PER_MPS: Final = 3.6

BENCH_SAMPLE: Final = (
    "owntracks/jane/phone",
    b'{"_type":"location","acc":12,"alt":48,"batt":81,"bs":1,"conn":"m","created_at":1772355605,'
    b'"lat":52.5206,"lon":13.4094,"t":"u","tid":"ph","tst":1772355600,"vac":3,"vel":36}',
)


def decode(message: RawMessage) -> list[Reading]:
    """Decode one OwnTracks JSON message (MQTT or HTTP mode)."""
    body = _load(message.payload)
    kind = body.get("_type")
    if not isinstance(kind, str):
        raise DecodeError(f"'_type' must be a string such as 'location', got {str(kind)[:20]!r}")
    if kind in _NOT_READINGS:
        return []
    if kind == "encrypted":
        raise DecodeError("payload is encrypted; turn encryption off in the app, stocktrace holds no key")
    device_id = _device_id(message.topic, body)
    if kind == "location":
        return _location(device_id, body)
    if kind == "transition":
        return [_transition(device_id, body)]
    if kind == "lwt":
        extra = {k: v for k, v in body.items() if k != "_type"}
        return [DeviceStatus(device_id, message.received_at, False, "last-will", None, extra)]
    raise DecodeError(f"unknown _type {kind[:40]!r}; expected location, transition, lwt or a non-reading type")


def _load(payload: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"payload must be a JSON object, got {type(body).__name__}")
    return body


def _device_id(topic: str, body: Mapping[str, Any]) -> str:
    parts = _user_device(topic)
    if parts is None and isinstance(body.get("topic"), str):
        parts = _user_device(body["topic"])
    if parts is None:
        raise DecodeError(f"topic {topic!r} does not name a user and device; expected owntracks/<user>/<device>")
    return f"{parts[0]}:{parts[1]}"


def _user_device(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) >= 4 and parts[-1] in _SUBTOPICS:
        parts = parts[:-1]
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        return None
    return parts[-2], parts[-1]


def _location(device_id: str, body: Mapping[str, Any]) -> list[Reading]:
    lat, lon = _coordinates(body)
    observed_at = parse_time(_required(body, "tst"))
    vel = _optional(body, "vel")
    position = Position(
        device_id,
        observed_at,
        lat,
        lon,
        altitude_m=_optional(body, "alt"),
        accuracy_m=_optional(body, "acc"),
        speed_mps=None if vel is None else vel / _KMH_PER_MPS,
        extra={k: v for k, v in body.items() if k not in _LOCATION_KEYS},
    )
    batt = _optional(body, "batt")
    if batt is None:
        return [position]
    if not 0 <= batt <= 100:
        raise DecodeError(f"'batt' must be a percentage from 0 to 100, got {batt!r}")
    return [position, Measurement(device_id, observed_at, Quantity.BATTERY_PCT, batt)]


def _transition(device_id: str, body: Mapping[str, Any]) -> Position:
    event = body.get("event")
    if event not in ("enter", "leave"):
        raise DecodeError(f"transition 'event' must be 'enter' or 'leave', got {str(event)[:20]!r}")
    lat, lon = _coordinates(body)
    return Position(
        device_id,
        parse_time(_required(body, "tst")),
        lat,
        lon,
        accuracy_m=_optional(body, "acc"),
        extra={k: v for k, v in body.items() if k not in _TRANSITION_KEYS},
    )


def _coordinates(body: Mapping[str, Any]) -> tuple[float, float]:
    lat, lon = _number("lat", _required(body, "lat")), _number("lon", _required(body, "lon"))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise DecodeError(f"position ({lat}, {lon}) is not on Earth")
    return lat, lon


def _required(body: Mapping[str, Any], key: str) -> Any:
    if key not in body:
        raise DecodeError(f"{body.get('_type')} message is missing required {key!r}")
    return body[key]


def _optional(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    return None if value is None else _number(key, value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError(f"{name!r} must be a finite number, got {str(value)[:20]!r}")
    if abs(value) > 1e9:
        raise DecodeError(f"{name!r} is out of range: {value!r}")
    return float(value)
