"""LoRaWAN network servers: The Things Stack v3 and ChirpStack v4 application events.

A LoRaWAN sensor's bytes are decoded by the network server's payload formatter (The Things Stack) or codec
(ChirpStack device profile); we read the decoded object it forwards. Which decoded field is a temperature,
a humidity, a battery level or a position differs per device codec, so each decoder holds a ``FieldMap``
per device and a default one that knows the names popular codecs use.

- The Things Stack: MQTT topics ``v3/<app-id>@<tenant>/devices/<device-id>/up`` and ``.../join``, and the
  same bodies from its webhooks. Shapes: TTS docs "Data Formats" (uplink, join-accept, downlink events)
  and "LoRa Cloud" (location_solved). Empty fields are omitted from these bodies, so zero counters may be
  absent.
- ChirpStack v4: MQTT topic ``application/<app-id>/device/<dev-eui>/event/<event>``; bodies per the
  ChirpStack docs "Event types" (up, status, join, location, ack, txack, log, integration).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

import msgspec

from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import parse_time
from devices.reading import DeviceStatus, Measurement, Position, Quantity, RawMessage, Reading

PositionPart: TypeAlias = Literal["latitude", "longitude", "altitude"]
Role: TypeAlias = Quantity | PositionPart

MAX_DEPTH: Final = 4
# CayenneLPP as The Things Stack decodes it names fields "<type>_<channel>" (temperature_1, gps_3):
# lorawan-stack pkg/messageprocessors/cayennelpp/keys.go. A name matches with or without the channel.
_CHANNEL: Final = re.compile(r"_\d+$")
# Values outside these ranges are sensor sentinels, not readings: Dragino LHT65 reports 327.67 °C
# (0x7FFF) for a disconnected probe. They stay in extra rather than becoming a measurement.
_PLAUSIBLE: Final[Mapping[Quantity, tuple[float, float]]] = {
    Quantity.TEMPERATURE_C: (-100.0, 200.0),
    Quantity.HUMIDITY_PCT: (0.0, 100.0),
    Quantity.BATTERY_PCT: (0.0, 100.0),
    Quantity.BATTERY_V: (0.0, 100.0),
    Quantity.PRESSURE_HPA: (0.0, 2000.0),
    Quantity.SIGNAL_DBM: (-200.0, 50.0),
}


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class FieldMap:
    """Which fields of a device's decoded payload are which quantity, and which form its position.

    Names match case-insensitively. A dotted name (``probe.temp``) matches that path in nested objects; a
    plain name matches a field of that name at any depth. A trailing CayenneLPP channel (``_1``) is
    ignored when no name matches the field exactly. A device's own map replaces the default map
    entirely, so list every field it should read (start from ``DEFAULT_FIELD_MAP.quantities`` to extend).
    """

    quantities: Mapping[str, Quantity] = field(default_factory=dict)
    fahrenheit: frozenset[str] = frozenset()
    """Names among ``quantities`` whose values are °F; they are converted to °C."""
    millivolts: frozenset[str] = frozenset()
    """Names among ``quantities`` whose values are mV; they are converted to V."""
    pascals: frozenset[str] = frozenset()
    """Names among ``quantities`` whose values are Pa; they are converted to hPa."""
    latitude: frozenset[str] = frozenset()
    longitude: frozenset[str] = frozenset()
    altitude: frozenset[str] = frozenset()
    """Latitude, longitude and altitude found in the same object form one position."""


_T, _H, _P = Quantity.TEMPERATURE_C, Quantity.HUMIDITY_PCT, Quantity.PRESSURE_HPA
_PCT, _V = Quantity.BATTERY_PCT, Quantity.BATTERY_V

DEFAULT_FIELD_MAP: Final = FieldMap(
    quantities={
        # The Things Stack's own example and CayenneLPP formatter (temperature_<ch>, relative_humidity_<ch>,
        # barometric_pressure_<ch>); Milesight EM300-TH codec (temperature, humidity, battery in %); Elsys
        # codec elsys.js (temperature, humidity, externalTemperature, pressure in hPa, vdd in mV).
        "temperature": _T,
        "temp": _T,
        "temperature_c": _T,
        "externaltemperature": _T,
        "relative_humidity": _H,
        "humidity": _H,
        "barometric_pressure": _P,
        "pressure": _P,
        "battery": _PCT,
        "battery_pct": _PCT,
        "battery_level": _PCT,
        "batterylevel": _PCT,
        "battery_v": _V,
        "battery_voltage": _V,
        "vdd": _V,
        # Dragino LHT65 codec lht65.js: TempC_SHT (internal), TempC_DS (probe), Hum_SHT, BatV.
        "tempc_sht": _T,
        "tempc_ds": _T,
        "hum_sht": _H,
        "batv": _V,
        "temperature_f": _T,
        "temp_f": _T,
        "tempf": _T,
    },
    fahrenheit=_names("temperature_f", "temp_f", "tempf"),
    millivolts=_names("vdd"),
    # CayenneLPP gps_<ch> objects and most GNSS trackers' codecs. Not Elsys "lat"/"long": those are raw
    # 24-bit integers, not degrees, and without a matching longitude name they stay in extra.
    latitude=_names("latitude", "lat"),
    longitude=_names("longitude", "lon", "lng"),
    altitude=_names("altitude", "alt"),
)


class _Roles:
    """A FieldMap compiled for lookups: lower-cased name -> role and unit."""

    def __init__(self, fields: FieldMap) -> None:
        self._roles: dict[str, Role] = {name.lower(): q for name, q in fields.quantities.items()}
        parts: tuple[tuple[PositionPart, frozenset[str]], ...] = (
            ("latitude", fields.latitude),
            ("longitude", fields.longitude),
            ("altitude", fields.altitude),
        )
        for part, names in parts:
            self._roles.update((name.lower(), part) for name in names)
        self._fahrenheit = {name.lower() for name in fields.fahrenheit}
        self._millivolts = {name.lower() for name in fields.millivolts}
        self._pascals = {name.lower() for name in fields.pascals}

    def lookup(self, path: tuple[str, ...]) -> tuple[str, Role] | None:
        """The matched name and the role of a field at ``path``, or None when the map does not know it."""
        for name in _candidates(path):
            role = self._roles.get(name)
            if role is not None:
                return name, role
        return None

    def value(self, name: str, quantity: Quantity, raw: object) -> float | None:
        """A field's value in the quantity's unit, or None when it is not a plausible number."""
        number = _as_number(raw)
        if number is None:
            return None
        if name in self._fahrenheit:
            number = round((number - 32.0) * 5.0 / 9.0, 3)
        elif name in self._millivolts:
            number = round(number / 1000.0, 6)
        elif name in self._pascals:
            number = round(number / 100.0, 4)
        low, high = _PLAUSIBLE[quantity]
        return number if low <= number <= high else None


def _candidates(path: tuple[str, ...]) -> Iterator[str]:
    lowered = [part.lower() for part in path]
    yield ".".join(lowered)
    yield ".".join(_CHANNEL.sub("", part) for part in lowered)
    if len(lowered) > 1:
        yield lowered[-1]
        yield _CHANNEL.sub("", lowered[-1])


def _as_number(raw: object) -> float | None:
    # Some codecs emit numbers as strings (JavaScript toFixed()); accept those, never booleans.
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


@dataclass(frozen=True, slots=True)
class _Uplink:
    """What both network servers tell us about one uplink, in their own words normalised."""

    device_id: str
    observed_at: datetime
    decoded: Mapping[str, Any]
    link: Mapping[str, Any]
    """LoRaWAN metadata kept in every reading's extra: dev_eui, f_port, f_cnt, best gateway, ..."""


class _Fields:
    """Readings from one decoded payload, given the device's roles."""

    def __init__(self, roles: _Roles, uplink: _Uplink) -> None:
        self._roles = roles
        self._uplink = uplink
        self.measurements: list[tuple[tuple[str, ...], Quantity, float]] = []
        self.positions: dict[tuple[str, ...], dict[PositionPart, tuple[tuple[str, ...], float]]] = {}
        self.rejected: list[str] = []
        for path, raw in _leaves(uplink.decoded, ()):
            self._classify(path, raw)

    def _classify(self, path: tuple[str, ...], raw: object) -> None:
        found = self._roles.lookup(path)
        if found is None:
            return
        name, role = found
        if isinstance(role, Quantity):
            value = self._roles.value(name, role, raw)
            if value is None:
                self.rejected.append(f"{'.'.join(path)}={str(raw)[:20]}")
            else:
                self.measurements.append((path, role, value))
            return
        number = _as_number(raw)
        if number is None:
            self.rejected.append(f"{'.'.join(path)}={str(raw)[:20]}")
        else:
            self.positions.setdefault(path[:-1], {})[role] = (path, number)

    def fixes(self) -> dict[tuple[str, ...], dict[PositionPart, tuple[tuple[str, ...], float]]]:
        """Objects holding a plausible latitude and longitude. Trackers without a GNSS fix commonly report
        0, 0; that is no position, so it stays in extra."""
        fixes = {}
        for parent, parts in self.positions.items():
            if "latitude" not in parts or "longitude" not in parts:
                continue
            latitude, longitude = parts["latitude"][1], parts["longitude"][1]
            if -90 <= latitude <= 90 and -180 <= longitude <= 180 and (latitude, longitude) != (0, 0):
                fixes[parent] = parts
            else:
                self.rejected.append(f"{'.'.join(parent) or 'position'}=({latitude}, {longitude})")
        return fixes

    def readings(self) -> list[Reading]:
        fixes = self.fixes()
        if not self.measurements and not fixes:
            raise DecodeError(self._nothing_found())
        used = {path for path, _, _ in self.measurements}
        used.update(path for parts in fixes.values() for path, _ in parts.values())
        extra: dict[str, Any] = dict(self._uplink.link)
        unmapped = _without(self._uplink.decoded, used, ())
        if unmapped:
            extra["decoded"] = unmapped
        device_id, observed_at = self._uplink.device_id, self._uplink.observed_at
        readings: list[Reading] = [
            Measurement(device_id, observed_at, quantity, value, {"field": ".".join(path), **extra})
            for path, quantity, value in self.measurements
        ]
        for parent, parts in fixes.items():
            altitude = parts.get("altitude")
            position_extra = {"field": ".".join(parent), **extra} if parent else extra
            latitude, longitude = parts["latitude"][1], parts["longitude"][1]
            altitude_m = None if altitude is None else altitude[1]
            readings.append(Position(device_id, observed_at, latitude, longitude, altitude_m, extra=position_extra))
        return readings

    def _nothing_found(self) -> str:
        if self.rejected:
            return "decoded payload has no plausible reading: " + ", ".join(self.rejected)[:300]
        fields = ", ".join(sorted(".".join(path) for path, _ in _leaves(self._uplink.decoded, ())))
        return (
            f"decoded payload has no field mapped to a quantity or a position (fields: {fields[:300]}); "
            "map the device's field names under decoder_options.fields of its registry entry"
        )


def _leaves(value: Mapping[str, Any], prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, item in value.items():
        path = (*prefix, str(key))
        if isinstance(item, dict) and len(path) < MAX_DEPTH:
            yield from _leaves(item, path)
        else:
            yield path, item


def _without(value: Mapping[str, Any], used: set[tuple[str, ...]], prefix: tuple[str, ...]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, item in value.items():
        path = (*prefix, str(key))
        if path in used:
            continue
        if isinstance(item, dict) and len(path) < MAX_DEPTH:
            pruned = _without(item, used, path)
            if item and not pruned:
                continue
            item = pruned
        kept[key] = item
    return kept


class _NetworkServer:
    """A decoder holding the field maps: one per device (keyed case-insensitively) and the default."""

    def __init__(self, devices: Mapping[str, FieldMap] | None = None, default: FieldMap = DEFAULT_FIELD_MAP) -> None:
        self._default = _Roles(default)
        self._devices = {device_id.lower(): _Roles(fields) for device_id, fields in (devices or {}).items()}

    def _readings(self, uplink: _Uplink, *aliases: object) -> list[Reading]:
        roles = self._default
        for name in (uplink.device_id, *aliases):
            if isinstance(name, str) and name.lower() in self._devices:
                roles = self._devices[name.lower()]
                break
        return _Fields(roles, uplink).readings()


class TheThingsStack(_NetworkServer):
    """The Things Stack v3 application messages (MQTT integration or webhook bodies)."""

    def __call__(self, message: RawMessage) -> list[Reading]:
        # The body names the device and the event, so webhook bodies decode the same as MQTT messages.
        body = _load_object(message.payload)
        ids = _object(body, "end_device_ids")
        device_id = ids.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise DecodeError("message has no end_device_ids.device_id")
        observed_at = _time(body.get("received_at"), message.received_at)
        if "uplink_message" in body:
            return self._uplink(device_id, ids, _object(body, "uplink_message"), observed_at)
        if "join_accept" in body:
            extra = {key: ids[key] for key in ("dev_eui", "dev_addr") if key in ids}
            return [DeviceStatus(device_id, observed_at, True, "joined", extra=extra)]
        if "location_solved" in body:
            solved = _object(body, "location_solved")
            extra = {"service": solved["service"]} if "service" in solved else {}
            return [_located(device_id, observed_at, _object(solved, "location"), extra)]
        if any(key.startswith("downlink_") for key in body) or "service_data" in body:
            return []  # downlink bookkeeping and application package data carry no readings
        raise DecodeError(
            "not a The Things Stack application message: expected uplink_message, join_accept, "
            "location_solved or a downlink event"
        )

    def _uplink(
        self, device_id: str, ids: Mapping[str, Any], up: Mapping[str, Any], default_at: datetime
    ) -> list[Reading]:
        decoded = up.get("decoded_payload")
        if decoded is None:
            port = f" on f_port {up['f_port']}" if "f_port" in up else ""
            raise DecodeError(
                f"uplink{port} has no decoded payload; add an uplink payload formatter for the device "
                "(or its application) in The Things Stack so it forwards decoded_payload"
            )
        if not isinstance(decoded, dict):
            raise DecodeError(f"decoded_payload must be a JSON object, got {type(decoded).__name__}")
        link: dict[str, Any] = {"dev_eui": ids["dev_eui"]} if "dev_eui" in ids else {}
        link.update({key: up[key] for key in ("f_port", "f_cnt") if key in up})
        link.update(_best_gateway(up.get("rx_metadata"), "gateway_ids"))
        if up.get("simulated") is True:
            link["simulated"] = True
        uplink = _Uplink(device_id, _time(up.get("received_at"), default_at), decoded, link)
        return self._readings(uplink)


class ChirpStack(_NetworkServer):
    """ChirpStack v4 integration events (MQTT integration, JSON encoding)."""

    def __call__(self, message: RawMessage) -> list[Reading]:
        event = _chirpstack_event(message.topic)
        body = _load_object(message.payload)
        info = _object(body, "deviceInfo")
        device_id = info.get("devEui")
        if not isinstance(device_id, str) or not device_id:
            raise DecodeError("event has no deviceInfo.devEui")
        observed_at = _time(body.get("time"), message.received_at)
        handler = _CHIRPSTACK_EVENTS.get(event)
        if handler is None:
            return []  # ack, txack, log and integration events carry no readings
        return handler(self, device_id, info, body, observed_at)

    def _up(
        self, device_id: str, info: Mapping[str, Any], body: Mapping[str, Any], observed_at: datetime
    ) -> list[Reading]:
        decoded = body.get("object")
        if decoded is None:
            port = f" on fPort {body['fPort']}" if "fPort" in body else ""
            raise DecodeError(
                f"uplink{port} has no decoded object; add a codec to the device profile in ChirpStack "
                "(Device profiles > Codec) so the event carries 'object'"
            )
        if not isinstance(decoded, dict):
            raise DecodeError(f"'object' must be a JSON object, got {type(decoded).__name__}")
        link: dict[str, Any] = {"device_name": info["deviceName"]} if "deviceName" in info else {}
        link.update({new: body[old] for old, new in (("fPort", "f_port"), ("fCnt", "f_cnt")) if old in body})
        link.update(_best_gateway(body.get("rxInfo"), None))
        return self._readings(_Uplink(device_id, observed_at, decoded, link), info.get("deviceName"))

    def _status(
        self, device_id: str, info: Mapping[str, Any], body: Mapping[str, Any], observed_at: datetime
    ) -> list[Reading]:
        # StatusEvent answers the LoRaWAN DevStatusReq: battery in %, unless the device is mains powered
        # (externalPowerSource) or cannot measure it (batteryLevelUnavailable).
        extra = {key: body[key] for key in ("margin", "externalPowerSource", "batteryLevelUnavailable") if key in body}
        level = _as_number(body.get("batteryLevel"))
        if level is not None and not body.get("batteryLevelUnavailable") and 0 <= level <= 100:
            return [Measurement(device_id, observed_at, Quantity.BATTERY_PCT, level, extra)]
        return [DeviceStatus(device_id, observed_at, True, "heartbeat", extra=extra)]

    def _join(
        self, device_id: str, info: Mapping[str, Any], body: Mapping[str, Any], observed_at: datetime
    ) -> list[Reading]:
        extra = {"dev_addr": body["devAddr"]} if "devAddr" in body else {}
        return [DeviceStatus(device_id, observed_at, True, "joined", extra=extra)]

    def _location(
        self, device_id: str, info: Mapping[str, Any], body: Mapping[str, Any], observed_at: datetime
    ) -> list[Reading]:
        return [_located(device_id, observed_at, _object(body, "location"), {})]


_ChirpStackHandler: TypeAlias = Callable[
    [ChirpStack, str, Mapping[str, Any], Mapping[str, Any], datetime], list[Reading]
]
_CHIRPSTACK_EVENTS: Final[Mapping[str, _ChirpStackHandler]] = {
    "up": ChirpStack._up,
    "status": ChirpStack._status,
    "join": ChirpStack._join,
    "location": ChirpStack._location,
}
_CHIRPSTACK_QUIET: Final = frozenset({"ack", "txack", "log", "integration"})


def _chirpstack_event(topic: str) -> str:
    parts = topic.split("/")
    event = parts[-1] if len(parts) >= 2 and parts[-2] == "event" else ""
    if event not in _CHIRPSTACK_EVENTS and event not in _CHIRPSTACK_QUIET:
        raise DecodeError(
            f"topic {topic[:120]!r} is not application/<app-id>/device/<dev-eui>/event/<event> with a "
            "known event (up, status, join, location, ack, txack, log, integration)"
        )
    return event


def _load_object(payload: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"payload must be a JSON object, got {type(body).__name__}")
    return body


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise DecodeError(f"'{key}' must be a JSON object")
    return value


def _time(value: object, default: datetime) -> datetime:
    return default if value is None else parse_time(value)


def _best_gateway(rx_metadata: object, ids_key: str | None) -> dict[str, Any]:
    """The strongest gateway's identity and signal: per-gateway metadata is a list, one entry per antenna."""
    if not isinstance(rx_metadata, list):
        return {}
    received = [rx for rx in rx_metadata if isinstance(rx, dict) and _as_number(rx.get("rssi")) is not None]
    if not received:
        return {}
    best = max(received, key=lambda rx: float(rx["rssi"]))
    ids = best.get(ids_key) if ids_key else best
    gateway_id = ids.get("gateway_id" if ids_key else "gatewayId") if isinstance(ids, dict) else None
    link: dict[str, Any] = {"gateways": len(rx_metadata), "rssi_dbm": float(best["rssi"])}
    if gateway_id is not None:
        link["gateway_id"] = gateway_id
    if _as_number(best.get("snr")) is not None:
        link["snr_db"] = float(best["snr"])
    return link


def _located(device_id: str, observed_at: datetime, location: Mapping[str, Any], extra: dict[str, Any]) -> Position:
    latitude, longitude = _as_number(location.get("latitude")), _as_number(location.get("longitude"))
    if latitude is None or longitude is None or not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise DecodeError("location must have a latitude and longitude on Earth")
    return Position(
        device_id, observed_at, latitude, longitude,
        altitude_m=_as_number(location.get("altitude")),
        accuracy_m=_as_number(location.get("accuracy")),
        extra={**extra, **{k: v for k, v in location.items() if k not in _LOCATION_KEYS}},
    )  # fmt: skip


_LOCATION_KEYS: Final = frozenset({"latitude", "longitude", "altitude", "accuracy"})


# A representative message per format, for `stocktrace bench decode` (from the golden cases).
BENCH_SAMPLE: Final = {
    "ttn-v3": (
        "v3/app1@ttn/devices/dev1/up",
        json.dumps(
            {
                "end_device_ids": {
                    "device_id": "dev1",
                    "application_ids": {"application_id": "app1"},
                    "dev_eui": "0004A30B001C0530",
                    "join_eui": "800000000000000C",
                    "dev_addr": "00BCB929",
                },
                "correlation_ids": [
                    "as:up:01E0WZGT6Y7657CPFPE5WEYDSQ",
                    "gs:conn:01E0WDEC6T5T4XXBAX7S1VMFKE",
                    "gs:uplink:01E0WZGSZWT07NE5TS2APTV1Z9",
                    "ns:uplink:01E0WZGSZXZXZS8RFAWZX0F2FY",
                    "rpc:/ttn.lorawan.v3.GsNs/HandleUplink:01E0WZGSZXGE1KS577PFBWRJEE",
                ],
                "received_at": "2020-02-12T15:15:46.014773143Z",
                "uplink_message": {
                    "session_key_id": "AXA50tHUGUucuzS/bCGMNw==",
                    "f_cnt": 1,
                    "frm_payload": "y/YLDQN2AQrdf/8=",
                    "decoded_payload": {
                        "BatV": 3.062,
                        "Bat_status": 3,
                        "Ext_sensor": "Temperature Sensor",
                        "Hum_SHT": 88.6,
                        "TempC_DS": 27.81,
                        "TempC_SHT": 28.29,
                    },
                    "rx_metadata": [
                        {
                            "gateway_ids": {"gateway_id": "gtw1", "eui": "9C5C8E00001A05C4"},
                            "time": "2020-02-12T15:15:45.787Z",
                            "timestamp": 2463457000,
                            "rssi": -35,
                            "channel_rssi": -35,
                            "snr": 5,
                            "uplink_token": "ChIKEAoEZ3R3MRIInFyOAAAaBcQQ6L3Vlgk=",
                            "channel_index": 2,
                        }
                    ],
                    "settings": {
                        "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}},
                        "data_rate_index": 5,
                        "coding_rate": "4/6",
                        "frequency": "868300000",
                        "timestamp": 2463457000,
                        "time": "2020-02-12T15:15:45.787Z",
                    },
                    "consumed_airtime": "0.056576s",
                    "locations": {
                        "user": {
                            "latitude": 37.97155556731436,
                            "longitude": 23.72678801175413,
                            "altitude": 10,
                            "source": "SOURCE_REGISTRY",
                        }
                    },
                    "received_at": "2020-02-12T15:15:45.789585559Z",
                    "f_port": 2,
                },
            }
        ).encode(),
    ),
    "chirpstack-v4": (
        "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up",
        json.dumps(
            {
                "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
                "time": "2022-07-18T09:34:15.775023242+00:00",
                "deviceInfo": {
                    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                    "tenantName": "ChirpStack",
                    "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
                    "applicationName": "Test application",
                    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
                    "deviceProfileName": "Milesight EM300-TH",
                    "deviceName": "EM300-TH cold room",
                    "devEui": "0101010101010101",
                    "tags": {"key": "value"},
                },
                "devAddr": "00189440",
                "dr": 1,
                "fPort": 1,
                "data": "AXUyA2fIAARoPA==",
                "rxInfo": [
                    {
                        "gatewayId": "0016c001f153a14c",
                        "uplinkId": 4217106255,
                        "rssi": -36,
                        "snr": 10.5,
                        "context": "E3OWOQ==",
                        "metadata": {"region_name": "eu868", "region_common_name": "EU868"},
                    }
                ],
                "txInfo": {
                    "frequency": 867100000,
                    "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}},
                },
                "fCnt": 42,
                "object": {"battery": 50, "temperature": 20.0, "humidity": 30.0},
            }
        ).encode(),
    ),
}
