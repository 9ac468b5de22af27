"""The scenario file: a site plan, its devices, vehicles, SKUs, stock and faults, validated with pydantic.

A scenario is YAML. Positions are metres on each site's floor plan (x along the dock wall, y into the
building); geographic positions are WGS 84 degrees. Every identifier a device or location carries is the
one stocktrace's registry will know it by, so they are unique across the whole scenario.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulator.gs1 import gtin_check_digit

DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "warehouse.yaml"

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Point = tuple[float, float]


class ScenarioError(Exception):
    """The scenario file cannot be used; the message names the file, the field and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class LocationKind(StrEnum):
    ZONE = "zone"
    DOCK_DOOR = "dock_door"
    SHELF = "shelf"
    STAGING = "staging"
    COLD_ROOM = "cold_room"
    FREEZER = "freezer"


class Storage(StrEnum):
    """Where a SKU is put away: the storage class decides the kind of location."""

    AMBIENT = "ambient"
    COLD = "cold"
    FROZEN = "frozen"


STORAGE_KINDS: dict[Storage, frozenset[LocationKind]] = {
    Storage.AMBIENT: frozenset({LocationKind.SHELF, LocationKind.ZONE}),
    Storage.COLD: frozenset({LocationKind.COLD_ROOM}),
    Storage.FROZEN: frozenset({LocationKind.FREEZER}),
}


class LocationSpec(_Strict):
    id: Identifier
    name: str | None = None
    kind: LocationKind
    parent: str | None = None
    at: Point
    size: Point = (4.0, 2.0)
    temperature_c: Range | None = None
    setpoint_c: float | None = None
    attenuation_db: float = Field(default=0.0, ge=0, le=40, description="Extra loss for tags inside (metal, ice)")
    role: Literal["receiving", "shipping"] | None = None

    @model_validator(mode="after")
    def _cold_rooms_have_a_setpoint(self) -> Self:
        if self.kind in (LocationKind.COLD_ROOM, LocationKind.FREEZER) and self.setpoint_c is None:
            raise ValueError(f"a {self.kind.value} needs setpoint_c (the temperature its cooling holds)")
        return self


class AntennaSpec(_Strict):
    port: int = Field(ge=1, le=32)
    location: str
    at: Point
    side: Literal["in", "out"] | None = None
    read_rate_hz: float = Field(
        default=8.0, gt=0, le=1000, description="Inventory rounds per second that can singulate a tag"
    )
    range_m: float = Field(
        default=4.0, gt=0, le=30, description="Distance at which half the rounds still power the tag"
    )
    rssi_1m_dbm: float = Field(default=-38.0, ge=-90, le=0)


class ReaderFormat(StrEnum):
    ZEBRA_FX = "zebra-fx"
    IMPINJ_R700 = "impinj-r700"
    NATIVE = "native"


class ReaderSpec(_Strict):
    id: Identifier
    format: ReaderFormat
    model: str | None = None
    antennas: list[AntennaSpec] = Field(min_length=1)
    report_interval_s: float = Field(default=5.0, gt=0, le=3600)
    batch: bool = Field(
        default=False, description="Several tag events per MQTT message (Zebra batching, native batches)"
    )

    @field_validator("antennas")
    @classmethod
    def _unique_ports(cls, antennas: list[AntennaSpec]) -> list[AntennaSpec]:
        ports = [a.port for a in antennas]
        if len(ports) != len(set(ports)):
            raise ValueError(f"antenna ports repeat: {ports}")
        return antennas


class SensorFormat(StrEnum):
    TASMOTA = "tasmota"
    TTN_V3 = "ttn-v3"
    NATIVE = "native"


class SensorSpec(_Strict):
    id: Identifier
    format: SensorFormat
    location: str
    interval_s: float = Field(default=60.0, gt=0, le=86400)
    battery_pct: float | None = Field(default=None, ge=0, le=100, description="Battery-powered sensors only")
    temp_unit: Literal["C", "F"] = "C"
    noise_c: float = Field(default=0.1, ge=0, le=5)
    model: str | None = None


class SiteSpec(_Strict):
    id: Identifier
    name: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(default=250.0, gt=0)
    timezone: str = "UTC"
    ambient_c: float = 18.0
    deliveries_per_day: float = Field(
        default=0.0, ge=0, description="Inbound supplier deliveries on an average weekday"
    )
    locations: list[LocationSpec] = Field(min_length=1)
    readers: list[ReaderSpec] = Field(default_factory=list)
    sensors: list[SensorSpec] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
        return value


class TrackerSpec(_Strict):
    id: Identifier
    format: Literal["owntracks", "native"]
    interval_s: float = Field(default=60.0, gt=0)
    user: str = "fleet"


class ReeferSpec(_Strict):
    id: Identifier
    format: Literal["sparkplug-b", "native"]
    interval_s: float = Field(default=60.0, gt=0)
    group: str = "cold-chain"


class VehicleSpec(_Strict):
    id: Identifier
    name: str
    route: list[str] = Field(min_length=2, description="Site ids: the home site first, then the destinations")
    waypoints: list[Point] = Field(default_factory=list, description="(lat, lon) between home and destination")
    speed_kmh: float = Field(default=70.0, gt=0, le=150)
    departures: list[str] = Field(min_length=1, description="Local times (home site) of the daily departures")
    setpoint_c: float = 4.0
    temperature_c: Range | None = None
    outside_c: float = 20.0
    capacity_items: int = Field(default=60, ge=1)
    tracker: TrackerSpec
    reefer: ReeferSpec

    @field_validator("departures")
    @classmethod
    def _clock_times(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_clock(value)
        return values


class SkuSpec(_Strict):
    gtin: str = Field(pattern=r"^\d{14}$")
    name: str
    storage: Storage
    temperature_c: Range | None = None
    shelf_life_days: int = Field(ge=1)
    demand_per_day: dict[str, float] = Field(default_factory=dict, description="Site id → mean units per weekday")
    cover_days: float = Field(default=4.0, gt=0, description="Stock a site aims to hold, in days of demand")
    serialised: bool = Field(
        default=False, description="Each unit counts (a medicine pack with its own serial): one unit is a variance"
    )

    @field_validator("gtin")
    @classmethod
    def _check_digit(cls, value: str) -> str:
        expected = gtin_check_digit(value[:13])
        if int(value[13]) != expected:
            raise ValueError(f"GTIN {value} has check digit {value[13]}; the GS1 check digit is {expected}")
        return value


class StockSpec(_Strict):
    site: str
    location: str
    sku: str
    quantity: int = Field(ge=1, le=100_000)
    lot: str | None = None
    expires: datetime | None = None
    per_pallet: int | None = Field(default=None, ge=1, description="Group the items on pallets (SSCC) of this size")


class Physics(_Strict):
    """What makes tracking hard. ``ideal()`` switches every imperfection off."""

    path_loss_exponent: float = Field(default=2.2, gt=0, le=6)
    rssi_noise_db: float = Field(default=2.5, ge=0, le=20)
    sensitivity_dbm: float = Field(default=-80.0, ge=-120, le=-20)
    miss_rate: float = Field(default=0.03, ge=0, le=1, description="Share of inventory rounds that miss a powered tag")
    range_softness_m: float = Field(default=0.6, gt=0, description="How sharply the read probability falls at range_m")
    duplicate_rate: float = Field(default=0.01, ge=0, le=1)
    late_rate: float = Field(
        default=0.02, ge=0, le=1, description="Share of messages buffered by the device and sent late"
    )
    late_mean_s: float = Field(default=30.0, ge=0)
    jitter_ms: float = Field(default=40.0, ge=0, description="Mean transport delay")
    clock_skew_s: float = Field(default=0.8, ge=0, description="Standard deviation of each device's clock offset")

    def ideal(self) -> Physics:
        return self.model_copy(
            update={
                "rssi_noise_db": 0.0, "miss_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0,
                "jitter_ms": 0.0, "clock_skew_s": 0.0, "range_softness_m": 0.05,
            }
        )  # fmt: skip


class Operations(_Strict):
    working_hours: tuple[str, str] = ("06:00", "22:00")
    weekday_factors: list[float] = Field(
        default_factory=lambda: [1.15, 1.05, 1.0, 1.0, 1.25, 0.55, 0.0],
        min_length=7,
        max_length=7,
        description="Demand multiplier Monday … Sunday",
    )
    shipping_waves: list[str] = Field(default_factory=lambda: ["10:00", "15:00", "20:00"])
    putaway_delay_min: float = Field(default=20.0, ge=0)
    dock_passage_s: float = Field(default=20.0, gt=0, description="How long a pallet takes through a dock door")
    orders_per_day: float = Field(default=40.0, gt=0, description="Customer orders per site on an average weekday")

    @field_validator("working_hours", "shipping_waves")
    @classmethod
    def _clock_times(cls, values: tuple[str, ...] | list[str]) -> tuple[str, ...] | list[str]:
        for value in values:
            parse_clock(value)
        return values


class FaultType(StrEnum):
    SHRINK = "shrink"
    MISPLACED_ITEM = "misplaced_item"
    COLD_ROOM_DOOR_OPEN = "cold_room_door_open"
    REEFER_FAILURE = "reefer_failure"
    READER_OFFLINE = "reader_offline"
    SENSOR_BATTERY_DYING = "sensor_battery_dying"
    WRONG_BOOK_COUNT = "wrong_book_count"


class FaultSpec(_Strict):
    type: FaultType
    at: str = Field(description="'+2h30m' after the start, or an ISO 8601 time")
    duration: str | None = None
    subject: str | None = Field(
        default=None, description="Device, location, vehicle or EPC; chosen at random if absent"
    )

    @field_validator("at")
    @classmethod
    def _when(cls, value: str) -> str:
        if value.startswith("+"):
            parse_duration(value[1:])
        else:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is neither '+<duration>' nor an ISO 8601 time") from None
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: int = 42
    start: datetime | None = Field(
        default=None, description="Virtual start of accelerated runs; default: now - duration"
    )
    company_prefix: str = Field(pattern=r"^\d{6,12}$")
    sites: list[SiteSpec] = Field(min_length=1)
    vehicles: list[VehicleSpec] = Field(default_factory=list)
    skus: list[SkuSpec] = Field(min_length=1)
    stock: list[StockSpec] = Field(default_factory=list)
    physics: Physics = Physics()
    operations: Operations = Operations()
    faults: list[FaultSpec] = Field(default_factory=list)
    random_faults: dict[FaultType, float] = Field(default_factory=dict, description="Fault type → mean per day")

    @model_validator(mode="after")
    def _references(self) -> Self:
        problems = _check_references(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def site(self, site_id: str) -> SiteSpec:
        return next(site for site in self.sites if site.id == site_id)


def _check_references(scenario: Scenario) -> list[str]:
    problems = _check_unique(scenario)
    for site in scenario.sites:
        problems += _check_site(site)
    sites = {site.id for site in scenario.sites}
    gtins = {sku.gtin for sku in scenario.skus}
    for vehicle in scenario.vehicles:
        problems += [f"vehicle {vehicle.id}: route names unknown site {s!r}" for s in vehicle.route if s not in sites]
    for index, line in enumerate(scenario.stock):
        problems += _check_stock(scenario, index, line, gtins)
    for sku in scenario.skus:
        if sku.gtin[1 : 1 + len(scenario.company_prefix)] != scenario.company_prefix:
            problems.append(
                f"sku {sku.gtin}: does not carry company prefix {scenario.company_prefix} after its indicator"
            )
        problems += [
            f"sku {sku.gtin}: demand_per_day names unknown site {s!r}" for s in sku.demand_per_day if s not in sites
        ]
    return problems


def _check_unique(scenario: Scenario) -> list[str]:
    ids: dict[str, str] = {}
    problems = []
    for kind, identifier in _all_ids(scenario):
        if identifier in ids:
            problems.append(f"id {identifier!r} is used by a {ids[identifier]} and a {kind}; ids must be unique")
        ids[identifier] = kind
    return problems


def _all_ids(scenario: Scenario) -> list[tuple[str, str]]:
    found = [("site", site.id) for site in scenario.sites]
    for site in scenario.sites:
        found += [("location", loc.id) for loc in site.locations]
        found += [("reader", reader.id) for reader in site.readers]
        found += [("sensor", sensor.id) for sensor in site.sensors]
    for vehicle in scenario.vehicles:
        found += [("vehicle", vehicle.id), ("tracker", vehicle.tracker.id), ("reefer unit", vehicle.reefer.id)]
    return found


def _check_site(site: SiteSpec) -> list[str]:
    locations = {loc.id: loc for loc in site.locations}
    known = ", ".join(sorted(locations))
    problems = [
        f"site {site.id}: location {loc.id} has unknown parent {loc.parent!r} (known: {known})"
        for loc in site.locations
        if loc.parent is not None and loc.parent not in locations
    ]
    for reader in site.readers:
        problems += [
            f"site {site.id}: reader {reader.id} antenna {antenna.port} covers unknown location {antenna.location!r} "
            f"(known: {known})"
            for antenna in reader.antennas
            if antenna.location not in locations
        ]
    problems += [
        f"site {site.id}: sensor {sensor.id} is in unknown location {sensor.location!r} (known: {known})"
        for sensor in site.sensors
        if sensor.location not in locations
    ]
    for role in ("receiving", "shipping"):
        if not any(loc.role == role for loc in site.locations):
            problems.append(f"site {site.id}: no location has role {role!r}; mark one staging location with it")
    if not any(loc.kind == LocationKind.DOCK_DOOR for loc in site.locations):
        problems.append(f"site {site.id}: has no dock_door location; goods need a way in and out")
    return problems


def _check_stock(scenario: Scenario, index: int, line: StockSpec, gtins: set[str]) -> list[str]:
    where = f"stock[{index}]"
    sites = {site.id: site for site in scenario.sites}
    if line.site not in sites:
        return [f"{where}: unknown site {line.site!r}"]
    problems = []
    if line.location not in {loc.id for loc in sites[line.site].locations}:
        problems.append(f"{where}: location {line.location!r} is not a location of site {line.site}")
    if line.sku not in gtins:
        problems.append(f"{where}: sku {line.sku!r} is not one of the scenario's GTINs")
    return problems


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """'1h30m', '45s', '2d' or a bare number of seconds, in seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"duration {text!r} is not like 90s, 15m, 1h30m or 2d")
    days, hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def parse_clock(text: str) -> tuple[int, int]:
    """'HH:MM' as (hour, minute)."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if match is None:
        raise ValueError(f"time of day {text!r} is not HH:MM")
    return int(match.group(1)), int(match.group(2))


def load_scenario(path: Path | str = DEFAULT_SCENARIO) -> Scenario:
    """Read and validate a scenario file, or raise `ScenarioError` naming the file, field and problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from None
    return parse_scenario(data, source=str(path))


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    """Validate an already-parsed scenario document."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the document must be a mapping with name, company_prefix, sites and skus")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source} is invalid:\n" + "\n".join(_describe(error) for error in exc.errors())) from None


def _describe(error: object) -> str:
    assert isinstance(error, dict)
    where = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"  {where}: {message}"
