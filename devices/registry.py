"""The device registry: sites, the locations inside them, devices and where each reader's antennas point.

The models here are the one definition of a registry object: the manifest file (devices/manifest.py) and the
REST API (devices/api.py) both validate with them, so the two cannot disagree. Database access is written
once, as *plans*: generators that yield SQL statements and receive their rows (psycopg's own sans-I/O style).
`run` drives a plan on a sync connection (the command line), `arun` on an async one (the API).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal, LiteralString, Self

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from devices import plans
from devices.decoder_options import DeviceDecoding, check_options, check_timezone
from devices.decoders import DECODERS
from devices.plans import Plan as Plan
from devices.plans import Row as Row
from devices.plans import Statement as Statement
from devices.plans import T

# ----------------------------------------------------------------------------------------------------
# Models


class LocationKind(StrEnum):
    """Kinds of place; the same list as the check constraint on locations.kind (0100_registry.sql)."""

    SITE = "site"
    BUILDING = "building"
    ZONE = "zone"
    YARD = "yard"
    DOCK_DOOR = "dock_door"
    AISLE = "aisle"
    SHELF = "shelf"
    BIN = "bin"
    COLD_ROOM = "cold_room"
    FREEZER = "freezer"
    VEHICLE = "vehicle"
    CONTAINER = "container"


class DeviceKind(StrEnum):
    """Kinds of device; each has a default inactivity timeout (default_inactivity_timeout_s in SQL)."""

    RFID_READER = "rfid_reader"
    SENSOR = "sensor"
    GPS_TRACKER = "gps_tracker"
    GATEWAY = "gateway"


# Things a GPS tracker can be fixed to: its position is theirs.
MOVABLE_KINDS: Final = frozenset({LocationKind.VEHICLE, LocationKind.CONTAINER})

_LOCATION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Device ids are what the decoders produce, which may span topic levels (a Sparkplug group/node/device).
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*(/[A-Za-z0-9._:@-]+)*")
# The API nests these under /devices/{id}/..., so an id may not end in one of them.
_RESERVED_LAST_SEGMENTS: Final = frozenset({"health", "antennas"})
# ':' separates user and hash in a Mosquitto password file, and whitespace ends a name in its ACL file.
_MQTT_USERNAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_MQTT_TOPIC_PREFIX: Final = re.compile(r"[^\s#+/$][^\s#+]*")
STORED: Final = {"stored": True}
"""Validation context for rows read back from the database: checks that depend on this release (the decoder
table) are skipped, so that a device whose format was removed can still be read, fixed or deleted."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_point(point: tuple[float, float], what: str) -> None:
    lat, lon = point
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{what} [{lat}, {lon}] is not [latitude, longitude] on Earth")


class Geofence(_Model):
    """A polygon of ``[latitude, longitude]`` points, or a circle: ``center`` ``[lat, lon]`` and ``radius_m``.

    Points are latitude first, as people read coordinates off a map (GeoJSON puts longitude first).
    """

    polygon: list[tuple[float, float]] | None = None
    center: tuple[float, float] | None = None
    radius_m: float | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if self.polygon is not None:
            if self.center is not None or self.radius_m is not None:
                raise ValueError("give either polygon or center and radius_m, not both")
            self._check_polygon(self.polygon)
        elif self.center is None or self.radius_m is None:
            raise ValueError("give polygon: [[lat, lon], ...] or center: [lat, lon] with radius_m")
        else:
            _check_point(self.center, "center")
            if not 0 < self.radius_m <= 1_000_000:
                raise ValueError(f"radius_m must be more than 0 and at most 1000000, got {self.radius_m}")
        return self

    @staticmethod
    def _check_polygon(polygon: list[tuple[float, float]]) -> None:
        if len(set(polygon)) < 3:
            raise ValueError(f"polygon needs at least 3 points, got {len(set(polygon))} distinct")
        if len(polygon) > 10_000:
            raise ValueError(f"polygon has {len(polygon)} points; at most 10000 are accepted")
        for index, point in enumerate(polygon):
            _check_point(point, f"polygon point {index}")


class Range(_Model):
    """An allowed range of a quantity; either bound may be left open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if any(v is not None and not math.isfinite(v) for v in (self.min, self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


def _check_location_id(value: str) -> str:
    if not _LOCATION_ID.fullmatch(value):
        raise ValueError(
            f"{value[:40]!r} is not a valid id: use 1 to 128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


class Place(_Model):
    """What sites and locations have in common."""

    id: str
    name: str | None = Field(default=None, max_length=200)
    geofence: Geofence | None = None
    temperature_c: Range | None = None
    humidity_pct: Range | None = None

    _check_id = field_validator("id")(_check_location_id)


def check_not_site(kind: LocationKind) -> LocationKind:
    if kind is LocationKind.SITE:
        raise ValueError("kind 'site' is for sites: declare it under sites (or POST /sites)")
    return kind


class Site(Place):
    """The root of a location tree: a warehouse, a store, a depot."""

    timezone: str | None = None
    """IANA time zone; devices that report local time without an offset (Tasmota) are read in it."""

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        return value if value is None else check_timezone(value)


class Location(Place):
    """A place inside a site: a zone, dock door, aisle, shelf, bin, cold room, vehicle or container."""

    parent: str
    """The site or location this one is inside."""
    kind: LocationKind

    _check_parent = field_validator("parent")(_check_location_id)

    _check_kind = field_validator("kind")(check_not_site)


class Antenna(_Model):
    """One antenna port of a reader and the location it watches; ``side`` marks a portal's in and out."""

    port: int = Field(ge=0, le=32767)
    location: str
    side: Literal["in", "out"] | None = None

    _check_location = field_validator("location")(_check_location_id)


class MqttIdentity(_Model):
    """How a device connects to the broker: its user name and the topics it publishes under."""

    username: str
    topic_prefix: str | None = None
    """Where the device publishes; the source format's default if not given (see devices/mosquitto.py)."""

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str) -> str:
        if not _MQTT_USERNAME.fullmatch(value):
            raise ValueError(
                f"{value[:40]!r} cannot be an MQTT user name: use 1 to 128 letters, digits, '.', '_', '@' "
                "or '-'; set mqtt.username, or mqtt: null for a device that does not connect itself"
            )
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_topic_prefix(cls, value: str | None) -> str | None:
        if value is not None and (
            not _MQTT_TOPIC_PREFIX.fullmatch(value) or "//" in value or value.endswith("/") or len(value) > 200
        ):
            raise ValueError(
                f"{value[:60]!r} is not a topic prefix: topic levels without wildcards (+ #), spaces, "
                "a leading '/' or '$', or empty levels"
            )
        return value


class Device(_Model):
    """A reader, sensor, tracker or gateway; ``id`` is the device_id its decoder puts in every reading."""

    id: str
    kind: DeviceKind
    source: str
    """The decoder that reads its payloads: a name in devices.decoders.DECODERS."""
    name: str | None = Field(default=None, max_length=200)
    location: str | None = None
    """Where it is: a location, or the vehicle or container it is fixed to."""
    mqtt: MqttIdentity | None
    """``null`` for a device that does not connect itself (a LoRaWAN sensor behind its network server)."""
    inactivity_timeout_s: int | None = Field(default=None, ge=1, le=7 * 86400)
    """Silence after which it counts as offline; the kind's default if not given."""
    assigned: bool = True
    """False parks the device: its data is kept but it is listed with the unassigned devices."""
    antennas: list[Antenna] = Field(default_factory=list)
    decoder_options: dict[str, Any] | None = Field(
        default=None,
        description="What the source format's decoder needs to know about this device (devices/decoder_options.py):"
        " ttn-v3, chirpstack-v4 {fields: {name: target}, default_fields: true}; esphome {sensors: {name: target}};"
        " tasmota {timezone: IANA name}; sparkplug-b {metrics: {name: target}}. Targets: temperature_c,"
        " temperature_f, humidity_pct, battery_pct, battery_v, battery_mv, pressure_hpa, pressure_pa, signal_dbm,"
        " and latitude, longitude, altitude_m (LoRaWAN, Sparkplug). null: the format's defaults.",
        examples=[{"fields": {"T_probe": "temperature_c", "Vbat": "battery_mv"}}, {"timezone": "Europe/Berlin"}],
    )

    @model_validator(mode="before")
    @classmethod
    def _default_mqtt_username(cls, data: Any) -> Any:
        # The device id is the user name unless the file or request says otherwise.
        if isinstance(data, Mapping) and "id" in data:
            mqtt = data.get("mqtt", {})
            if isinstance(mqtt, Mapping) and "username" not in mqtt:
                return {**data, "mqtt": {**mqtt, "username": data["id"]}}
        return data

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _DEVICE_ID.fullmatch(value) or len(value) > 200:
            raise ValueError(
                f"{value[:40]!r} is not a valid device id: letters, digits, '.', '_', ':', '@', '-', "
                "and '/' between non-empty parts, at most 200 characters"
            )
        if "/" in value and value.rsplit("/", 1)[1] in _RESERVED_LAST_SEGMENTS:
            raise ValueError(f"a device id cannot end in /{value.rsplit('/', 1)[1]}")
        return value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str, info: ValidationInfo) -> str:
        if value not in DECODERS and not (info.context or {}).get("stored"):
            raise ValueError(f"unknown source format {value[:40]!r}; known: {', '.join(sorted(DECODERS))}")
        return value

    @field_validator("location")
    @classmethod
    def _check_location(cls, value: str | None) -> str | None:
        return value if value is None else _check_location_id(value)

    @field_validator("decoder_options")
    @classmethod
    def _check_decoder_options(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        source = info.data.get("source")
        if not value or source is None or (info.context or {}).get("stored"):
            return value or None  # no source: its own error says why; stored: checked when it was written
        return check_options(source, value)

    @field_validator("antennas")
    @classmethod
    def _sort_antennas(cls, value: list[Antenna]) -> list[Antenna]:
        ports = [antenna.port for antenna in value]
        duplicates = sorted({port for port in ports if ports.count(port) > 1})
        if duplicates:
            raise ValueError(f"antenna port {duplicates[0]} is mapped more than once")
        # Order does not matter in the file; keep one order so that comparisons and responses are stable.
        return sorted(value, key=lambda antenna: antenna.port)

    @model_validator(mode="after")
    def _check_antennas_kind(self) -> Self:
        if self.antennas and self.kind is not DeviceKind.RFID_READER:
            raise ValueError(f"only an rfid_reader has antennas; this device is a {self.kind.value}")
        return self


# ----------------------------------------------------------------------------------------------------
# Errors and change reports


class RegistryError(Exception):
    """A request the registry refuses; ``field`` names the part of the object at fault, if one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFoundError(RegistryError):
    """No object with that id."""


class ConflictError(RegistryError):
    """The object clashes with what is stored: an id of another type, a user name taken, a location in use."""


class InvalidError(RegistryError):
    """The object names something that does not exist or does not fit (a missing parent, a loop)."""


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Change:
    """What one write did to one object, as ``stocktrace apply`` reports it."""

    kind: Literal["site", "location", "device"]
    id: str
    action: Action
    fields: tuple[str, ...] = ()
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.kind}/{self.id} {self.action.value}"
        if self.fields:
            text += f" ({', '.join(self.fields)})"
        return f"{text}; {self.note}" if self.note else text


def changed_fields(old: BaseModel | None, new: BaseModel) -> tuple[str, ...]:
    """The top-level fields whose values differ, in the model's order."""
    if old is None:
        return ()
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return tuple(name for name in after if before.get(name) != after[name])


# ----------------------------------------------------------------------------------------------------
# Plans and their drivers


def run(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Carry out a plan on a sync connection; the caller owns the transaction."""
    return plans.run(conn, plan, _integrity_error)


async def arun(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Carry out a plan on an async connection; the caller owns the transaction."""
    return await plans.arun(conn, plan, _integrity_error)


def _integrity_error(exc: psycopg.errors.IntegrityError) -> RegistryError:
    # The plans check references first and say which field is wrong; this is the net for a concurrent writer.
    message = exc.diag.message_primary or str(exc)
    if isinstance(exc, psycopg.errors.CheckViolation):
        return InvalidError(message)
    return ConflictError(message + (f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""))


# ----------------------------------------------------------------------------------------------------
# Sites and locations: one table, sites are its roots

_SELECT_PLACE: Final = (
    "select id, site_id, parent_id, kind, name, timezone, geofence, temperature_min_c, temperature_max_c,"
    " humidity_min_pct, humidity_max_pct from locations where id = %(id)s"
)
# A write locks the row it compares against, so that the fields it reports as changed are the ones it changed.
_LOCK_PLACE: Final = _SELECT_PLACE + " for update"
_UPSERT_PLACE: Final = (
    "insert into locations (id, site_id, parent_id, kind, name, timezone, geofence,"
    " temperature_min_c, temperature_max_c, humidity_min_pct, humidity_max_pct)"
    " values (%(id)s, %(site_id)s, %(parent_id)s, %(kind)s, %(name)s, %(timezone)s, %(geofence)s,"
    " %(temperature_min_c)s, %(temperature_max_c)s, %(humidity_min_pct)s, %(humidity_max_pct)s)"
    " on conflict (id) do update set site_id = excluded.site_id, parent_id = excluded.parent_id,"
    " kind = excluded.kind, name = excluded.name, timezone = excluded.timezone, geofence = excluded.geofence,"
    " temperature_min_c = excluded.temperature_min_c, temperature_max_c = excluded.temperature_max_c,"
    " humidity_min_pct = excluded.humidity_min_pct, humidity_max_pct = excluded.humidity_max_pct,"
    " updated_at = now()"
)


def _range_from(row: Row, low: str, high: str) -> dict[str, Any] | None:
    return None if row[low] is None and row[high] is None else {"min": row[low], "max": row[high]}


def _place_fields(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "geofence": row["geofence"],
        "temperature_c": _range_from(row, "temperature_min_c", "temperature_max_c"),
        "humidity_pct": _range_from(row, "humidity_min_pct", "humidity_max_pct"),
    }


def site_from_row(row: Row) -> Site:
    return Site.model_validate({**_place_fields(row), "timezone": row["timezone"]}, context=STORED)


def location_from_row(row: Row) -> Location:
    fields = {**_place_fields(row), "parent": row["parent_id"], "kind": row["kind"]}
    return Location.model_validate(fields, context=STORED)


def _place_params(place: Site | Location, site_id: str) -> dict[str, Any]:
    return {
        "id": place.id,
        "site_id": site_id,
        "parent_id": place.parent if isinstance(place, Location) else None,
        "kind": place.kind.value if isinstance(place, Location) else LocationKind.SITE.value,
        "name": place.name,
        "timezone": place.timezone if isinstance(place, Site) else None,
        "geofence": None
        if place.geofence is None
        else Jsonb(place.geofence.model_dump(mode="json", exclude_none=True)),
        **_range_params(place.temperature_c, "temperature_min_c", "temperature_max_c"),
        **_range_params(place.humidity_pct, "humidity_min_pct", "humidity_max_pct"),
    }


def _range_params(bounds: Range | None, low: str, high: str) -> dict[str, float | None]:
    return {low: None, high: None} if bounds is None else {low: bounds.min, high: bounds.max}


def get_site(site_id: str) -> Plan[Site]:
    rows = yield Statement(_SELECT_PLACE, {"id": site_id})
    if not rows or rows[0]["kind"] != LocationKind.SITE:
        raise NotFoundError(f"no site {site_id!r}")
    return site_from_row(rows[0])


def get_location(location_id: str) -> Plan[Location]:
    rows = yield Statement(_SELECT_PLACE, {"id": location_id})
    if not rows or rows[0]["kind"] == LocationKind.SITE:
        raise NotFoundError(f"no location {location_id!r}" + (f"; {location_id!r} is a site" if rows else ""))
    return location_from_row(rows[0])


def list_sites() -> Plan[list[Site]]:
    rows = yield Statement(
        "select id, site_id, parent_id, kind, name, timezone, geofence, temperature_min_c, temperature_max_c,"
        " humidity_min_pct, humidity_max_pct from locations where kind = 'site' order by id"
    )
    return [site_from_row(row) for row in rows]


def list_locations(site: str | None = None, kind: LocationKind | None = None) -> Plan[list[Location]]:
    """Locations (not sites), parents before children, optionally of one site or one kind."""
    rows = yield Statement(
        "with recursive tree as ("
        "  select l.*, 0 as depth from locations l where parent_id is null"
        "  union all"
        "  select l.*, t.depth + 1 from locations l join tree t on l.parent_id = t.id"
        ") select * from tree where kind <> 'site'"
        " and (%(site)s::text is null or site_id = %(site)s) and (%(kind)s::text is null or kind = %(kind)s)"
        " order by depth, id",
        {"site": site, "kind": kind and kind.value},
    )
    return [location_from_row(row) for row in rows]


def upsert_site(site: Site) -> Plan[Change]:
    """Create the site or make it equal to ``site``."""
    rows = yield Statement(_LOCK_PLACE, {"id": site.id})
    current = rows[0] if rows else None
    if current is not None and current["kind"] != LocationKind.SITE:
        raise ConflictError(f"{site.id!r} is a location of kind {current['kind']}, not a site", "id")
    return (yield from _write_place(site, site.id, None if current is None else site_from_row(current)))


def upsert_location(location: Location) -> Plan[Change]:
    """Create the location or make it equal to ``location``; its site is its parent's."""
    rows = yield Statement(_LOCK_PLACE, {"id": location.id})
    current = rows[0] if rows else None
    if current is not None and current["kind"] == LocationKind.SITE:
        raise ConflictError(f"{location.id!r} is a site, not a location", "id")
    if location.parent == location.id:
        raise InvalidError(f"location {location.id!r} cannot be its own parent", "parent")
    parents = yield Statement("select site_id from locations where id = %(id)s", {"id": location.parent})
    if not parents:
        raise InvalidError(f"parent {location.parent!r} does not exist", "parent")
    stored = None if current is None else location_from_row(current)
    return (yield from _write_place(location, parents[0]["site_id"], stored))


def _write_place(place: Site | Location, site_id: str, stored: Site | Location | None) -> Plan[Change]:
    kind: Literal["site", "location"] = "site" if isinstance(place, Site) else "location"
    if stored == place:
        return Change(kind, place.id, Action.UNCHANGED)
    yield Statement(_UPSERT_PLACE, _place_params(place, site_id))
    if stored is None:
        return Change(kind, place.id, Action.CREATED)
    return Change(kind, place.id, Action.UPDATED, changed_fields(stored, place))


def delete_place(place_id: str, kind: Literal["site", "location"]) -> Plan[Change]:
    """Delete a site or location that nothing is inside of or attached to; their readings are untouched."""
    yield from get_site(place_id) if kind == "site" else get_location(place_id)
    users = yield Statement(
        "select 'location ' || id as what from locations where parent_id = %(id)s"
        " union all select 'device ' || id from devices where location_id = %(id)s"
        " union all select 'antenna ' || device_id || '#' || antenna from antennas where location_id = %(id)s"
        " order by 1 limit 6",
        {"id": place_id},
    )
    if users:
        names = ", ".join(row["what"] for row in users[:5]) + (", ..." if len(users) > 5 else "")
        raise ConflictError(f"{kind} {place_id!r} is still in use by {names}; move or delete those first")
    yield Statement("delete from locations where id = %(id)s", {"id": place_id})
    return Change(kind, place_id, Action.DELETED)


# ----------------------------------------------------------------------------------------------------
# Devices and antennas

_UPSERT_DEVICE: Final = (
    "insert into devices (id, kind, source, name, location_id, mqtt_username, topic_prefix,"
    " inactivity_timeout_s, assigned, decoder_options)"
    " values (%(id)s, %(kind)s, %(source)s, %(name)s, %(location)s, %(username)s, %(topic_prefix)s,"
    " %(inactivity_timeout_s)s, %(assigned)s, %(decoder_options)s)"
    " on conflict (id) do update set kind = excluded.kind, source = excluded.source, name = excluded.name,"
    " location_id = excluded.location_id, mqtt_username = excluded.mqtt_username,"
    " topic_prefix = excluded.topic_prefix, inactivity_timeout_s = excluded.inactivity_timeout_s,"
    " assigned = excluded.assigned, decoder_options = excluded.decoder_options, updated_at = now()"
)
_DEVICE_COLUMNS: Final = (
    "id, kind, source, name, location_id, mqtt_username, topic_prefix, inactivity_timeout_s, assigned, decoder_options"
)


def device_from_row(row: Row, antennas: Iterable[Row]) -> Device:
    mqtt = (
        None
        if row["mqtt_username"] is None
        else {"username": row["mqtt_username"], "topic_prefix": row["topic_prefix"]}
    )
    fields = {
        "id": row["id"],
        "kind": row["kind"],
        "source": row["source"],
        "name": row["name"],
        "location": row["location_id"],
        "mqtt": mqtt,
        "inactivity_timeout_s": row["inactivity_timeout_s"],
        "assigned": row["assigned"],
        "antennas": [{"port": a["antenna"], "location": a["location_id"], "side": a["side"]} for a in antennas],
        "decoder_options": row["decoder_options"],
    }
    return Device.model_validate(fields, context=STORED)


def _fetch_device(device_id: str, *, lock: bool = False) -> Plan[Device | None]:
    query: LiteralString = "select " + _DEVICE_COLUMNS + " from devices where id = %(id)s"
    rows = yield Statement(query + " for update" if lock else query, {"id": device_id})
    if not rows:
        return None
    antennas = yield Statement(
        "select antenna, location_id, side from antennas where device_id = %(id)s order by antenna",
        {"id": device_id},
    )
    return device_from_row(rows[0], antennas)


def get_device(device_id: str) -> Plan[Device]:
    device = yield from _fetch_device(device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r} in the registry")
    return device


def list_devices(kind: DeviceKind | None = None) -> Plan[list[Device]]:
    rows = yield Statement(
        "select " + _DEVICE_COLUMNS + " from devices where %(kind)s::text is null or kind = %(kind)s order by id",
        {"kind": kind and kind.value},
    )
    antennas = yield Statement(
        "select device_id, antenna, location_id, side from antennas a"
        " where %(kind)s::text is null"
        " or exists (select 1 from devices d where d.id = a.device_id and d.kind = %(kind)s)"
        " order by device_id, antenna",
        {"kind": kind and kind.value},
    )
    by_device: dict[str, list[Row]] = {}
    for antenna in antennas:
        by_device.setdefault(antenna["device_id"], []).append(antenna)
    return [device_from_row(row, by_device.get(row["id"], [])) for row in rows]


def _check_attachments(device: Device) -> Plan[None]:
    wanted = {device.location} if device.location else set()
    wanted |= {antenna.location for antenna in device.antennas}
    if not wanted:
        return
    rows = yield Statement("select id, kind from locations where id = any(%(ids)s)", {"ids": sorted(wanted)})
    kinds = {row["id"]: row["kind"] for row in rows}
    if device.location is not None and device.location not in kinds:
        raise InvalidError(f"location {device.location!r} does not exist", "location")
    for index, antenna in enumerate(device.antennas):
        if antenna.location not in kinds:
            raise InvalidError(f"location {antenna.location!r} does not exist", f"antennas[{index}].location")
    if device.kind is DeviceKind.GPS_TRACKER and device.location and kinds[device.location] not in MOVABLE_KINDS:
        raise InvalidError(
            f"a gps_tracker is fixed to a vehicle or container; {device.location!r} is a {kinds[device.location]}",
            "location",
        )


def _check_username(device: Device) -> Plan[None]:
    if device.mqtt is None:
        return
    rows = yield Statement(
        "select id from devices where mqtt_username = %(username)s and id <> %(id)s",
        {"username": device.mqtt.username, "id": device.id},
    )
    if rows:
        raise ConflictError(
            f"MQTT user name {device.mqtt.username!r} is already device {rows[0]['id']!r}'s", "mqtt.username"
        )


def upsert_device(device: Device) -> Plan[Change]:
    """Create the device (adopting it if it has already published) or make it equal to ``device``."""
    stored = yield from _fetch_device(device.id, lock=True)
    yield from _check_attachments(device)
    yield from _check_username(device)
    if stored == device:
        return Change("device", device.id, Action.UNCHANGED)
    yield Statement(
        _UPSERT_DEVICE,
        {
            **device.model_dump(
                mode="json",
                include={"id", "kind", "source", "name", "location", "inactivity_timeout_s", "assigned"},
            ),
            "username": device.mqtt and device.mqtt.username,
            "topic_prefix": device.mqtt and device.mqtt.topic_prefix,
            "decoder_options": None if device.decoder_options is None else Jsonb(device.decoder_options),
        },
    )
    if stored is None or stored.antennas != device.antennas:
        yield from _write_antennas(device)
    if stored is not None:
        note = options_changes(stored.decoder_options, device.decoder_options)
        return Change("device", device.id, Action.UPDATED, changed_fields(stored, device), note)
    seen = yield Statement("select first_seen_at from device_activity where device_id = %(id)s", {"id": device.id})
    note = f"adopted: it has published since {seen[0]['first_seen_at']:%Y-%m-%d %H:%M:%S%z}" if seen else ""
    return Change("device", device.id, Action.CREATED, note=note)


def _write_antennas(device: Device) -> Plan[None]:
    yield Statement(
        "delete from antennas where device_id = %(id)s and antenna <> all(%(ports)s)",
        {"id": device.id, "ports": [antenna.port for antenna in device.antennas]},
    )
    for antenna in device.antennas:
        yield Statement(
            "insert into antennas (device_id, antenna, location_id, side) values (%s, %s, %s, %s)"
            " on conflict (device_id, antenna)"
            " do update set location_id = excluded.location_id, side = excluded.side",
            (device.id, antenna.port, antenna.location, antenna.side),
        )


def delete_device(device_id: str) -> Plan[Change]:
    """Remove a device from the registry; its readings stay, and if it publishes again it is unassigned."""
    rows = yield Statement("delete from devices where id = %(id)s returning id", {"id": device_id})
    if not rows:
        raise NotFoundError(f"no device {device_id!r} in the registry")
    return Change("device", device_id, Action.DELETED)


def existing_places() -> Plan[dict[str, LocationKind]]:
    """Every site and location id with its kind: what a manifest may refer to without declaring."""
    rows = yield Statement("select id, kind from locations")
    return {row["id"]: LocationKind(row["kind"]) for row in rows}


def device_timezones() -> Plan[dict[str, str]]:
    """Device id → its site's time zone, for decoders of devices that report local time without an offset."""
    rows = yield Statement(
        "select d.id, s.timezone from devices d"
        " join locations l on l.id = d.location_id join locations s on s.id = l.site_id"
        " where s.timezone is not null order by d.id"
    )
    return {row["id"]: row["timezone"] for row in rows}


def options_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """What changed inside decoder_options, as ``decoder_options: fields.T1 added, timezone changed``."""
    before, after = _flatten(old or {}), _flatten(new or {})
    words = [
        f"{path} {'added' if path not in before else 'removed' if path not in after else 'changed'}"
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]
    return f"decoder_options: {', '.join(words)}" if words else ""


def _flatten(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def decoder_settings() -> Plan[list[DeviceDecoding]]:
    """What every device's decoder needs from the registry: its options, and its site's time zone."""
    zones = yield from device_timezones()
    rows = yield Statement(
        "select id, source, decoder_options from devices"
        " where decoder_options is not null or id = any(%(zoned)s) order by id",
        {"zoned": sorted(zones)},
    )
    return [
        DeviceDecoding(row["id"], row["source"], row["decoder_options"] or {}, zones.get(row["id"])) for row in rows
    ]


def registry_version() -> Plan[int | None]:
    """A number that changes with every committed change to devices or locations (0101_decoder_options.sql)."""
    rows = yield Statement("select version from registry_version")
    return rows[0]["version"] if rows else None
