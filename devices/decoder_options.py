"""Per-device decoder options: what a device's registry entry may tell its format's decoder, and the decoders
built with them.

A device's ``decoder_options`` is a JSON object whose shape depends on its source format:

- ``ttn-v3``, ``chirpstack-v4``: ``fields`` maps the names in the network server's decoded payload to a
  target (dotted names reach into nested objects; CayenneLPP's ``_<channel>`` suffix may be left off), and
  ``default_fields`` (true unless set) keeps the names the default map knows for fields not listed;
- ``esphome``: ``sensors`` maps a sensor's object id to a target, for names that do not say what they measure;
- ``tasmota``: ``timezone``, the IANA zone of the device's clock (else its site's, else UTC);
- ``sparkplug-b``: ``metrics`` maps a metric name (in full, or its last ``/`` segment) to a target.

Targets are the quantities with their unit (``temperature_c``, ``humidity_pct``, ``battery_pct``,
``battery_v``, ``pressure_hpa``, ``signal_dbm``), the same in another unit that is converted
(``temperature_f``, ``battery_mv``, ``pressure_pa``), and where a format has positions, ``latitude``,
``longitude`` and ``altitude_m``. Other formats take no options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from devices.decoders import DECODERS, Decoder
from devices.decoders.esphome import ESPHome
from devices.decoders.lorawan import DEFAULT_FIELD_MAP, ChirpStack, FieldMap, TheThingsStack
from devices.decoders.sparkplug import BirthBook, SparkplugDecoder
from devices.decoders.tasmota import Tasmota
from devices.reading import Quantity

Unit: TypeAlias = Literal[
    "temperature_c", "temperature_f", "humidity_pct", "battery_pct", "battery_v", "battery_mv",
    "pressure_hpa", "pressure_pa", "signal_dbm",
]  # fmt: skip
"""A quantity in the unit the device reports it in: temperature_f, battery_mv and pressure_pa are converted."""
Target: TypeAlias = Literal[
    "temperature_c", "temperature_f", "humidity_pct", "battery_pct", "battery_v", "battery_mv",
    "pressure_hpa", "pressure_pa", "signal_dbm", "latitude", "longitude", "altitude_m",
]  # fmt: skip
"""Where a field's value goes: a quantity in a unit, or a part of a position."""

_CONVERTED: Final[Mapping[str, tuple[Quantity, str]]] = {
    "temperature_f": (Quantity.TEMPERATURE_C, "fahrenheit"),
    "battery_mv": (Quantity.BATTERY_V, "millivolts"),
    "pressure_pa": (Quantity.PRESSURE_HPA, "pascals"),
}
_POSITION: Final[Mapping[str, str]] = {"latitude": "latitude", "longitude": "longitude", "altitude_m": "altitude"}
_MAX_NAMES: Final = 500


def check_timezone(value: str) -> str:
    """``value`` if it names an IANA time zone; a ValueError that says what to write otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value[:60]!r}; use an IANA name such as Europe/Berlin") from None
    return value


def _check_names(names: Mapping[str, str]) -> Mapping[str, str]:
    if len(names) > _MAX_NAMES:
        raise ValueError(f"{len(names)} names; at most {_MAX_NAMES} are accepted")
    seen: dict[str, str] = {}
    for name, target in names.items():
        if not name.strip() or len(name) > 200:
            raise ValueError(f"{name[:40]!r} is not a name: 1 to 200 characters, not only spaces")
        # The decoders match names case-insensitively, so two spellings of one name must agree.
        other = seen.setdefault(name.lower(), name)
        if other != name and names[other] != target:
            raise ValueError(f"{other!r} and {name!r} are the same name (case does not count) with different targets")
    return names


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoRaWANOptions(_Options):
    """ttn-v3, chirpstack-v4: which decoded payload fields are which quantity or position part."""

    fields: dict[str, Target] = Field(default_factory=dict)
    default_fields: bool = True
    """Also read the names the default map knows (temperature, humidity, BatV, ...) for fields not listed."""

    _check_fields = field_validator("fields")(_check_names)

    def field_map(self) -> FieldMap:
        targets = {**_default_targets(), **{name.lower(): t for name, t in self.fields.items()}}
        return _field_map(targets) if self.default_fields else _field_map(self.fields)


class ESPHomeOptions(_Options):
    """esphome: the quantity of sensors whose object id does not say it."""

    sensors: dict[str, Unit] = Field(default_factory=dict)

    _check_sensors = field_validator("sensors")(_check_names)


class TasmotaOptions(_Options):
    """tasmota: the time zone the device's clock is set to, when it writes Time without an offset."""

    timezone: str

    _check_timezone = field_validator("timezone")(check_timezone)


class SparkplugOptions(_Options):
    """sparkplug-b: metric names to targets, over the default map, for this edge node or device."""

    metrics: dict[str, Target] = Field(default_factory=dict)

    _check_metrics = field_validator("metrics")(_check_names)


OPTIONS: Final[Mapping[str, type[_Options]]] = {
    "ttn-v3": LoRaWANOptions,
    "chirpstack-v4": LoRaWANOptions,
    "esphome": ESPHomeOptions,
    "tasmota": TasmotaOptions,
    "sparkplug-b": SparkplugOptions,
}
"""The source formats that take options, and their shape."""


def check_options(source: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The options in their stored form (defaults left out; ``None`` for none), or a pydantic error.

    The error is a ``PydanticCustomError`` of type ``decoder_options`` whose message names the part at fault;
    its context's ``loc`` is that part's path inside the options, so that a file can point at its line.
    """
    if not options:
        return None
    shape = OPTIONS.get(source)
    if shape is None:
        raise _options_error(f"source format {source!r} takes no options; {', '.join(OPTIONS)} do", ())
    try:
        parsed = shape.model_validate(options)
    except ValidationError as exc:
        # A misspelt option is also a missing one: saying it is unknown points at the spelling.
        error = min(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise _options_error(_reason(error, source), tuple(error["loc"])) from None
    return parsed.model_dump(mode="json", exclude_defaults=True) or None


def _options_error(reason: str, loc: tuple[str | int, ...]) -> PydanticCustomError:
    message = f"{'.'.join(map(str, loc))}: {reason}" if loc else reason
    return PydanticCustomError("decoder_options", "{message}", {"message": message, "reason": reason, "loc": loc})


def _reason(error: Any, source: str) -> str:
    if error["type"] == "extra_forbidden":
        known = ", ".join(OPTIONS[source].model_fields)
        return f"unknown option for {source} (it takes {known})"
    if error["type"] == "missing":
        return "required option is missing"
    if error["type"] == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
        return f"{str(error['input'])[:40]!r} is not a target; use one of {expected}"
    return str(error["msg"]).removeprefix("Value error, ")


# ----------------------------------------------------------------------------------------------------
# Decoders built with every device's options


@dataclass(frozen=True, slots=True)
class DeviceDecoding:
    """What the registry tells the decoder of one device."""

    device_id: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    site_timezone: str | None = None
    """The time zone of the device's site, for a Tasmota device whose options name none."""


@dataclass(frozen=True, slots=True)
class Built:
    """Decoders by source format, and the devices whose stored options could not be used (they get defaults)."""

    decoders: dict[str, Decoder]
    problems: list[str]


def build_decoders(
    devices: Iterable[DeviceDecoding],
    *,
    births: BirthBook | None = None,
    previous: Mapping[str, Decoder] | None = None,
) -> Built:
    """A fresh decoder per source format, holding each device's options; devices without options get defaults.

    Decoders that keep state across messages (Sparkplug) carry on from ``previous``, so that rebuilding after
    a registry change forgets no edge node.
    """
    field_maps: dict[str, dict[str, FieldMap]] = {"ttn-v3": {}, "chirpstack-v4": {}, "esphome": {}}
    zones: dict[str, ZoneInfo] = {}
    metrics: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for device in devices:
        try:
            parsed = _parse(device)
            zone = parsed.timezone if isinstance(parsed, TasmotaOptions) else device.site_timezone
            if device.source == "tasmota" and zone is not None:
                zones[device.device_id] = ZoneInfo(zone)
        except (PydanticCustomError, ZoneInfoNotFoundError, ValueError) as exc:
            reason = exc.message() if isinstance(exc, PydanticCustomError) else str(exc)
            problems.append(f"device {device.device_id!r}: its stored {device.source} options are not usable: {reason}")
            continue
        if isinstance(parsed, LoRaWANOptions):
            field_maps[device.source][device.device_id] = parsed.field_map()
        elif isinstance(parsed, ESPHomeOptions):
            field_maps["esphome"][device.device_id] = _field_map(parsed.sensors)
        elif isinstance(parsed, SparkplugOptions):
            metrics[device.device_id] = dict(parsed.metrics)
    decoders = dict(DECODERS)
    decoders["ttn-v3"] = TheThingsStack(field_maps["ttn-v3"])
    decoders["chirpstack-v4"] = ChirpStack(field_maps["chirpstack-v4"])
    decoders["esphome"] = ESPHome(field_maps["esphome"])
    decoders["tasmota"] = Tasmota(zones)
    old = (previous or {}).get("sparkplug-b")
    if isinstance(old, SparkplugDecoder):
        decoders["sparkplug-b"] = old.reconfigured(metrics)
    else:
        decoders["sparkplug-b"] = SparkplugDecoder(devices=metrics, births=births)
    return Built(decoders, problems)


def _parse(device: DeviceDecoding) -> _Options | None:
    """The device's options, checked again: they were checked when stored, but by the release that stored them."""
    shape = OPTIONS.get(device.source)
    if shape is None or not device.options:
        return None
    check_options(device.source, device.options)
    return shape.model_validate(device.options)


def _field_map(targets: Mapping[str, str]) -> FieldMap:
    quantities: dict[str, Quantity] = {}
    units: dict[str, set[str]] = {"fahrenheit": set(), "millivolts": set(), "pascals": set()}
    parts: dict[str, set[str]] = {"latitude": set(), "longitude": set(), "altitude": set()}
    for name, target in targets.items():
        if target in _POSITION:
            parts[_POSITION[target]].add(name)
        elif target in _CONVERTED:
            quantity, unit = _CONVERTED[target]
            quantities[name] = quantity
            units[unit].add(name)
        else:
            quantities[name] = Quantity(target)
    return FieldMap(
        quantities=quantities,
        fahrenheit=frozenset(units["fahrenheit"]),
        millivolts=frozenset(units["millivolts"]),
        pascals=frozenset(units["pascals"]),
        latitude=frozenset(parts["latitude"]),
        longitude=frozenset(parts["longitude"]),
        altitude=frozenset(parts["altitude"]),
    )


def _default_targets() -> dict[str, str]:
    """The default LoRaWAN field map as targets, so that a device's own names can be laid over it."""
    default = DEFAULT_FIELD_MAP
    targets: dict[str, str] = {}
    for name, quantity in default.quantities.items():
        target = quantity.value
        for unit, names in (
            ("temperature_f", default.fahrenheit),
            ("battery_mv", default.millivolts),
            ("pressure_pa", default.pascals),
        ):
            if name in names:
                target = unit
        targets[name.lower()] = target
    for target, part in _POSITION.items():
        targets.update((name.lower(), target) for name in getattr(default, part))
    return targets
