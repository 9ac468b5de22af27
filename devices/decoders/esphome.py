"""ESPHome nodes over MQTT: ``<topic_prefix>/sensor/<object_id>/state`` and ``<topic_prefix>/status``.

Per the ESPHome MQTT Client Component docs, a sensor's state topic defaults to
``<TOPIC_PREFIX>/<COMPONENT_TYPE>/<COMPONENT_NAME>/state`` and carries the bare value (``21.5``),
``nan`` (or ``None``) while the sensor has no reading; the node's birth message is ``online`` and its
last will ``offline`` on ``<TOPIC_PREFIX>/status``. The topic prefix defaults to the node name and may
contain slashes (``home/living_room``); it is the device id. A state message carries no time of its own,
so readings are stamped with the time the broker delivered them.

Which quantity a sensor measures is told by its name (``cold_room_temperature``, ``battery_voltage``), or
for names that say nothing, by a per-device map. A value we cannot classify is not thrown away silently:
it raises, so it reaches the dead letters with the instruction to map it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from devices.decoders.errors import DecodeError
from devices.decoders.lorawan import FieldMap
from devices.reading import DeviceStatus, Measurement, Quantity, RawMessage, Reading

_WORD: Final = re.compile(r"[^a-z0-9]+")
_TEMPERATURE: Final = frozenset({"temperature", "temp"})
_FAHRENHEIT: Final = frozenset({"f", "fahrenheit"})
_BATTERY: Final = frozenset({"battery", "batt", "bat", "vbat"})
_VOLTS: Final = frozenset({"voltage", "volt", "volts", "v", "vbat"})
# The internal_temperature platform reads the chip, not the room; it needs an explicit mapping to count.
_CHIP: Final = frozenset({"internal", "cpu", "mcu", "chip", "esp", "esp32", "core"})
# Single-word hints; ESPHome's wifi_signal sensor reports dBm.
_HINTS: Final[Mapping[str, Quantity]] = {
    "humidity": Quantity.HUMIDITY_PCT,
    "rh": Quantity.HUMIDITY_PCT,
    "pressure": Quantity.PRESSURE_HPA,
    "signal": Quantity.SIGNAL_DBM,
    "rssi": Quantity.SIGNAL_DBM,
}


class ESPHome:
    """Decoder for ESPHome nodes; ``devices`` maps a node's sensor names to quantities where names don't tell.

    A device's ``FieldMap`` is consulted first (``quantities`` keyed by the sensor's object id, with its
    ``fahrenheit``, ``millivolts`` and ``pascals`` units); sensors it does not list fall back to the name hints.
    """

    def __init__(self, devices: Mapping[str, FieldMap] | None = None) -> None:
        self._devices = {device_id: _lowered(fields) for device_id, fields in (devices or {}).items()}

    def __call__(self, message: RawMessage) -> list[Reading]:
        parts = message.topic.split("/")
        if len(parts) >= 2 and parts[-1] == "status":
            return [_status(_device("/".join(parts[:-1]), message.topic), message)]
        if len(parts) >= 4 and parts[-3] == "sensor" and parts[-1] == "state":
            device_id = _device("/".join(parts[:-3]), message.topic)
            return [self._measurement(device_id, parts[-2], message)]
        raise DecodeError(
            f"topic {message.topic[:120]!r} is not <node>/sensor/<name>/state or <node>/status; "
            "other ESPHome components (binary_sensor, switch, text_sensor) carry no measurements"
        )

    def _measurement(self, device_id: str, sensor: str, message: RawMessage) -> Measurement:
        value = _value(sensor, message.payload)
        quantity, unit = self._classify(device_id, sensor)
        if unit == "F":
            value = round((value - 32.0) * 5.0 / 9.0, 3)
        elif unit == "mV":
            value = round(value / 1000.0, 6)
        elif unit == "Pa":
            value = round(value / 100.0, 4)
        return Measurement(device_id, message.received_at, quantity, value, {"sensor": sensor})

    def _classify(self, device_id: str, sensor: str) -> tuple[Quantity, str]:
        fields = self._devices.get(device_id)
        name = sensor.lower()
        if fields is not None and name in fields.quantities:
            return fields.quantities[name], _unit(fields, name)
        words = set(_WORD.split(name))
        if words & _TEMPERATURE and words & _CHIP:
            raise DecodeError(
                f"sensor {sensor!r} reads the node's own chip temperature, not the goods; map it under "
                f"decoder_options.sensors of device {device_id!r} if it does measure them"
            )
        hinted = _hint(words)
        if hinted is None:
            raise DecodeError(
                f"sensor {sensor!r} has no quantity mapping; name it with temperature, humidity, pressure, "
                f"battery or signal in ESPHome, or map it under decoder_options.sensors of device {device_id!r}"
            )
        return hinted


def _lowered(fields: FieldMap) -> FieldMap:
    return FieldMap(
        quantities={name.lower(): quantity for name, quantity in fields.quantities.items()},
        fahrenheit=frozenset(name.lower() for name in fields.fahrenheit),
        millivolts=frozenset(name.lower() for name in fields.millivolts),
        pascals=frozenset(name.lower() for name in fields.pascals),
    )


def _unit(fields: FieldMap, name: str) -> str:
    """The unit a mapped sensor reports in, when it is not the quantity's own."""
    if name in fields.fahrenheit:
        return "F"
    if name in fields.millivolts:
        return "mV"
    return "Pa" if name in fields.pascals else ""


def _hint(words: set[str]) -> tuple[Quantity, str] | None:
    if words & _TEMPERATURE:
        return Quantity.TEMPERATURE_C, "F" if words & _FAHRENHEIT else ""
    if words & _BATTERY:
        return (Quantity.BATTERY_V if words & _VOLTS else Quantity.BATTERY_PCT), ""
    for word, quantity in _HINTS.items():
        if word in words:
            return quantity, ""
    return None


def _device(prefix: str, topic: str) -> str:
    if not prefix or not all(prefix.split("/")):
        raise DecodeError(f"topic {topic[:120]!r} has an empty node name")
    return prefix


def _value(sensor: str, payload: bytes) -> float:
    text = payload.strip().decode("ascii", errors="replace")
    # MQTTSensorComponent::publish_state sends "nan" while the sensor has no value, or "None" with
    # publish_nan_as_none.
    if text.lower() in ("nan", "none"):
        raise DecodeError(f"sensor {sensor!r} reported {text!r}: it has no reading (sensor failed or not ready)")
    try:
        value = float(text)
    except ValueError:
        raise DecodeError(f"sensor {sensor!r} state must be a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or abs(value) > 1e12:  # inf, or digits no sensor produces
        raise DecodeError(f"sensor {sensor!r} value {text[:40]!r} is out of range")
    return value


def _status(device_id: str, message: RawMessage) -> DeviceStatus:
    word = message.payload.strip().lower()
    if word not in (b"online", b"offline"):
        raise DecodeError(f"status payload must be online or offline, got {message.payload[:40]!r}")
    online = word == b"online"
    return DeviceStatus(device_id, message.received_at, online, "connected" if online else "last-will")


# A representative message per format, for `stocktrace bench decode` (from the golden cases).
BENCH_SAMPLE: Final = ("livingroom/sensor/living_room_temperature/state", b"21.5")
