"""The alert rules' configuration: one YAML file, validated here, with defaults and per-subject overrides.

The file is ``STOCKTRACE_RULES_FILE`` (or ``--rules`` on the command line); without one, the shipped
``alerts/rules.default.yaml`` applies. Every rule has a section under ``rules:``; a field left out takes the
rule's built-in default (or its preset's). A section's ``overrides`` apply, in order, to the subjects their
``match`` selects, later ones winning::

    rules:
      temperature_excursion:
        alarm_delay: 15m
        overrides:
          - match: {location_kind: freezer}
            preset: -20C
          - match: {location: cold-room-2}     # the location or anything inside it
            alarm_delay: 5m

Durations are written 90s, 15m, 2h, 7d, 1h30m (or a number of seconds). An invalid file is refused with every
error named by its path in the file and its line, e.g. ``rules.low_stock.service_level (line 12): ...``.

Cold-chain presets (``preset: 2-8C``) set a temperature band, alarm delays and an MKT limit; fields written
next to the preset win over it. Sources:

- Bands: WHO Technical Report Series No. 961 (2011), Annex 9, "Model guidance for the storage and transport of
  time- and temperature-sensitive pharmaceutical products", uses +2 to +8 °C (refrigerated) and +15 to +25 °C;
  frozen vaccines are kept between -25 and -15 °C (WHO "Immunization in practice", 2015, Module 2 §1.1).
- MKT limits: USP <659> "Packaging and storage requirements": controlled cold temperature allows excursions
  provided the mean kinetic temperature stays at or below 8 °C, controlled room temperature at or below 25 °C.
- ``who-30dtr`` reproduces the alarms of WHO PQS E006/TR06 30-day electronic temperature recorders (as
  described in WHO "How to monitor temperatures in the vaccine supply chain", WHO/IVB/15.04): freeze alarm at
  -0.5 °C or below for 60 minutes, heat alarm above +8 °C for 10 hours continuously.
- The alarm delays of 2-8C, 15-25C and -20C (15, 60 and 15 minutes) and every hysteresis and budget default
  are stocktrace's chosen defaults, not WHO figures: a remotely monitored store should hear of a breach long
  before a stand-alone recorder's 10-hour heat alarm, yet not for every door opening.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Generic, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from alerts.model import Severity

RULES_FILE_ENV: Final = "STOCKTRACE_RULES_FILE"
DEFAULT_RULES_FILE: Final = "rules.default.yaml"

# ----------------------------------------------------------------------------------------------------
# Durations

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration_s(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"7d"``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as 90s, 15m, 2h, 7d")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 15m, 2h, 7d or 1h30m")
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or text such as 90s, 15m, 2h, 7d")  # noqa: TRY004
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration_s)]

# ----------------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True, slots=True)
class Preset:
    min_c: float
    max_c: float
    alarm_delay_s: float
    alarm_delay_below_s: float
    mkt_limit_c: float | None


PRESETS: Final[Mapping[str, Preset]] = {
    "2-8C": Preset(2.0, 8.0, alarm_delay_s=900.0, alarm_delay_below_s=900.0, mkt_limit_c=8.0),
    "15-25C": Preset(15.0, 25.0, alarm_delay_s=3600.0, alarm_delay_below_s=3600.0, mkt_limit_c=25.0),
    "-20C": Preset(-25.0, -15.0, alarm_delay_s=900.0, alarm_delay_below_s=900.0, mkt_limit_c=None),
    "who-30dtr": Preset(-0.5, 8.0, alarm_delay_s=36000.0, alarm_delay_below_s=3600.0, mkt_limit_c=None),
}


def _known_preset(name: str | None) -> str | None:
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return name


PresetName = Annotated[str | None, BeforeValidator(lambda v: _known_preset(None if v is None else str(v)))]

# ----------------------------------------------------------------------------------------------------
# Matching subjects


class Match(BaseModel):
    """Which subjects an override applies to: every field given must match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: str | None = Field(default=None, description="This location or anything inside it")
    location_kind: str | None = None
    site: str | None = None
    gtin: str | None = None
    lot: str | None = None
    device: str | None = None
    device_kind: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not self.model_fields_set:
            raise ValueError("a match needs at least one of: " + ", ".join(Match.model_fields))
        return self

    def matches(self, subject: Attributes) -> bool:
        for name in self.model_fields_set:
            wanted = getattr(self, name)
            if name == "location":
                if wanted not in subject.ancestors:
                    return False
            elif getattr(subject, name) != wanted:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Attributes:
    """What overrides can match a subject on; ``ancestors`` holds its location and every location above it."""

    location_kind: str | None = None
    site: str | None = None
    gtin: str | None = None
    lot: str | None = None
    device: str | None = None
    device_kind: str | None = None
    ancestors: frozenset[str] = frozenset()

    @property
    def key(self) -> tuple[object, ...]:
        return (self.location_kind, self.site, self.gtin, self.lot, self.device, self.device_kind, self.ancestors)


# ----------------------------------------------------------------------------------------------------
# Rule parameters. Every field is optional so that an override can set one alone; the effective value (with
# the built-in default or the preset's) is a property.


class Common(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool | None = None
    severity: Severity | None = None
    repeat_interval: Seconds | None = Field(default=None, description="Notify a still-firing alert again after")
    group_by: list[str] | None = Field(default=None, description="Labels that group alerts into one notification")


class TemperatureExcursion(Common):
    preset: PresetName = None
    min_c: float | None = Field(default=None, description="Band minimum; default the preset's, else the location's own")
    max_c: float | None = None
    alarm_delay: Seconds | None = Field(default=None, description="Consecutive time above the band before firing")
    alarm_delay_below: Seconds | None = Field(default=None, description="Consecutive time below the band before firing")
    hysteresis_c: float | None = Field(default=None, ge=0, description="How far inside the band readings must return")
    clear_after: Seconds | None = Field(default=None, description="How long readings must stay inside by the margin")
    lookback: Seconds | None = Field(default=None, description="How far back late readings are taken into account")
    max_hold: Seconds | None = Field(default=None, description="How long one reading stands for when none follows")

    def band(self, location_min_c: float | None, location_max_c: float | None) -> tuple[float | None, float | None]:
        preset = PRESETS.get(self.preset or "")
        low = self.min_c if self.min_c is not None else (preset.min_c if preset else location_min_c)
        high = self.max_c if self.max_c is not None else (preset.max_c if preset else location_max_c)
        return low, high

    @property
    def delay_above_s(self) -> float:
        preset = PRESETS.get(self.preset or "")
        return _first(self.alarm_delay, preset.alarm_delay_s if preset else None, 900.0)

    @property
    def delay_below_s(self) -> float:
        preset = PRESETS.get(self.preset or "")
        return _first(self.alarm_delay_below, self.alarm_delay, preset.alarm_delay_below_s if preset else None, 900.0)

    @property
    def margin_c(self) -> float:
        return _first(self.hysteresis_c, 0.5)

    @property
    def clear_s(self) -> float:
        return _first(self.clear_after, 600.0)

    @property
    def lookback_s(self) -> float:
        return _first(self.lookback, 7200.0)

    @property
    def max_hold_s(self) -> float:
        return _first(self.max_hold, 900.0)


class LotExposure(Common):
    preset: PresetName = None
    budget: Seconds | None = Field(default=None, description="Cumulative time out of the SKU's band a lot may have")
    mkt_limit_c: float | None = Field(default=None, description="Highest mean kinetic temperature allowed")
    mkt_min_covered: Seconds | None = Field(default=None, description="Monitored time before MKT is judged")
    max_hold: Seconds | None = None

    @property
    def mkt_min_s(self) -> float:
        # MKT summarises storage over a period (USP <1079.2> uses 30 days and more); over a few minutes it is
        # just the temperature, which the excursion rule already judges. One day is a chosen default.
        return _first(self.mkt_min_covered, 86400.0)

    @property
    def budget_s(self) -> float:
        return _first(self.budget, 3600.0)

    def mkt_c(self, band_min_c: float | None, band_max_c: float | None) -> float | None:
        """The MKT limit: set, else the preset's, else that of the preset whose band is the SKU's band."""
        if self.mkt_limit_c is not None:
            return self.mkt_limit_c
        preset = PRESETS.get(self.preset or "") or next(
            (p for p in PRESETS.values() if (p.min_c, p.max_c) == (band_min_c, band_max_c)), None
        )
        return preset.mkt_limit_c if preset else None

    @property
    def max_hold_s(self) -> float:
        return _first(self.max_hold, 900.0)


class InventoryVariance(Common):
    absolute_units: int | None = Field(default=None, ge=0, description="Variance must reach this many units, and")
    percent: float | None = Field(default=None, ge=0, description="this percentage of the book (either direction)")

    @property
    def units(self) -> int:
        return int(_first(self.absolute_units, 2))

    @property
    def pct(self) -> float:
        return _first(self.percent, 3.0)


class LowStock(Common):
    window_days: int | None = Field(default=None, ge=7, le=365, description="Days of consumption history")
    service_level: float | None = Field(default=None, gt=0.5, lt=1, description="Chance of no stock-out in a lead time")
    lead_time_days: float | None = Field(default=None, ge=0, description="Default when the SKU has none")
    minimum_units: int | None = Field(default=None, ge=0, description="A fixed reorder point that wins")
    refresh_days: int | None = Field(default=None, ge=0, le=31, description="Recent days of consumption rebuilt")

    @property
    def window(self) -> int:
        return int(_first(self.window_days, 28))

    @property
    def level(self) -> float:
        return _first(self.service_level, 0.95)

    @property
    def lead_days(self) -> float:
        return _first(self.lead_time_days, 2.0)

    @property
    def refresh(self) -> int:
        return int(_first(self.refresh_days, 3))


class DeviceOffline(Common):
    pending_for: Seconds | None = Field(default=None, description="How long offline before the alert fires")

    @property
    def for_s(self) -> float:
        return _first(self.pending_for, 0.0)


class SensorStale(Common):
    stale_after: Seconds | None = Field(default=None, description="No temperature reading for this long")

    @property
    def stale_s(self) -> float:
        return _first(self.stale_after, 1800.0)


class BatteryLow(Common):
    low_pct: float | None = Field(default=None, ge=0, le=100, description="Newest level at or below this fires")
    horizon: Seconds | None = Field(default=None, description="Fires when the fitted drain projects empty within")
    window: Seconds | None = Field(default=None, description="How far back from the newest level the drain is fitted")
    min_points: int | None = Field(default=None, ge=3, description="Fewer levels since a recharge: no projection")
    min_span: Seconds | None = Field(default=None, description="Shorter span since a recharge: no projection")
    recharge_pct: float | None = Field(default=None, gt=0, description="A rise this large is a new battery")
    hysteresis_pct: float | None = Field(default=None, ge=0, description="A firing alert resolves this far above low")
    empty_v: float | None = Field(default=None, gt=0, description="Voltage of an empty battery (0 %)")
    full_v: float | None = Field(default=None, gt=0, description="Voltage of a full battery (100 %)")
    pending_for: Seconds | None = Field(default=None, description="How long the condition holds before firing")

    @model_validator(mode="after")
    def _volts_ordered(self) -> BatteryLow:
        if self.empty_v is not None and self.full_v is not None and self.full_v <= self.empty_v:
            raise ValueError("full_v must be above empty_v")
        return self

    @property
    def low(self) -> float:
        return _first(self.low_pct, 20.0)

    @property
    def horizon_s(self) -> float:
        return _first(self.horizon, 86400.0)

    @property
    def window_s(self) -> float:
        return _first(self.window, 6 * 3600.0)

    @property
    def points(self) -> int:
        return int(_first(self.min_points, 6))

    @property
    def span_s(self) -> float:
        return _first(self.min_span, 3600.0)

    @property
    def recharge(self) -> float:
        return _first(self.recharge_pct, 5.0)

    @property
    def hysteresis(self) -> float:
        return _first(self.hysteresis_pct, 5.0)

    @property
    def volts(self) -> tuple[float, float]:
        """(empty, full): by default a 3 V lithium cell's useful range (Dragino LHT65, coin cells)."""
        return _first(self.empty_v, 2.5), _first(self.full_v, 3.0)

    @property
    def for_s(self) -> float:
        return _first(self.pending_for, 0.0)


class Shrink(Common):
    shipment_window: Seconds | None = Field(default=None, description="An exit this long before the departure ships it")
    lookback: Seconds | None = Field(default=None, description="Departures older than this are not raised any more")
    pending_for: Seconds | None = Field(default=None, description="How long an item must stay gone before it fires")

    @property
    def for_s(self) -> float:
        # A tag at the edge of its antenna's range can go unread for a quarter of an hour and then be read
        # again where it was (the resolver takes the departure back): only an item that stays gone is shrink.
        return _first(self.pending_for, 1800.0)

    @property
    def window_s(self) -> float:
        return _first(self.shipment_window, 3600.0)

    @property
    def lookback_s(self) -> float:
        return _first(self.lookback, 7 * 86400.0)


class Dwell(Common):
    max_dwell: Seconds | None = Field(default=None, description="Longest stay; by default per location kind")

    def limit_s(self, kind: str) -> float | None:
        return self.max_dwell if self.max_dwell is not None else DWELL_BY_KIND_S.get(kind)


# Where an item should not stay long: a dock door or staging yard is a place to pass through (chosen defaults).
DWELL_BY_KIND_S: Final[Mapping[str, float]] = {"dock_door": 2 * 3600.0, "yard": 24 * 3600.0}


class Expiry(Common):
    warn_before: Seconds | None = Field(default=None, description="Raise this long before the expiry date")

    @property
    def warn_s(self) -> float:
        return _first(self.warn_before, 0.0)


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return value
    raise ValueError("no value")  # the last argument is always a literal


# ----------------------------------------------------------------------------------------------------
# Sections: parameters, then overrides.

P = TypeVar("P", bound=Common)


@dataclass(frozen=True, slots=True)
class Section(Generic[P]):
    """A rule's section: its parameters and the overrides; ``for_subject`` merges them for one subject."""

    params: P
    overrides: tuple[tuple[Match, Mapping[str, Any]], ...] = ()

    def for_subject(self, subject: Attributes, cache: dict[tuple[object, ...], P] | None = None) -> P:
        if not self.overrides:
            return self.params
        if cache is not None and subject.key in cache:
            return cache[subject.key]
        update: dict[str, Any] = {}
        for match, fields in self.overrides:
            if match.matches(subject):
                update.update(fields)
        found = self.params.model_copy(update=update) if update else self.params
        if cache is not None:
            cache[subject.key] = found
        return found

    @property
    def enabled(self) -> bool:
        return self.params.enabled is not False


# The YAML shape of each section: the parameters plus ``overrides: [{match: {...}, <parameters>}]``.


class TemperatureExcursionOverride(TemperatureExcursion):
    match: Match


class TemperatureExcursionSection(TemperatureExcursion):
    overrides: list[TemperatureExcursionOverride] = Field(default_factory=list)


class LotExposureOverride(LotExposure):
    match: Match


class LotExposureSection(LotExposure):
    overrides: list[LotExposureOverride] = Field(default_factory=list)


class InventoryVarianceOverride(InventoryVariance):
    match: Match


class InventoryVarianceSection(InventoryVariance):
    overrides: list[InventoryVarianceOverride] = Field(default_factory=list)


class LowStockOverride(LowStock):
    match: Match


class LowStockSection(LowStock):
    overrides: list[LowStockOverride] = Field(default_factory=list)


class DeviceOfflineOverride(DeviceOffline):
    match: Match


class DeviceOfflineSection(DeviceOffline):
    overrides: list[DeviceOfflineOverride] = Field(default_factory=list)


class SensorStaleOverride(SensorStale):
    match: Match


class SensorStaleSection(SensorStale):
    overrides: list[SensorStaleOverride] = Field(default_factory=list)


class BatteryLowOverride(BatteryLow):
    match: Match


class BatteryLowSection(BatteryLow):
    overrides: list[BatteryLowOverride] = Field(default_factory=list)


class ShrinkOverride(Shrink):
    match: Match


class ShrinkSection(Shrink):
    overrides: list[ShrinkOverride] = Field(default_factory=list)


class DwellOverride(Dwell):
    match: Match


class DwellSection(Dwell):
    overrides: list[DwellOverride] = Field(default_factory=list)


class ExpiryOverride(Expiry):
    match: Match


class ExpirySection(Expiry):
    overrides: list[ExpiryOverride] = Field(default_factory=list)


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature_excursion: TemperatureExcursionSection = TemperatureExcursionSection()
    lot_exposure: LotExposureSection = LotExposureSection()
    inventory_variance: InventoryVarianceSection = InventoryVarianceSection()
    low_stock: LowStockSection = LowStockSection()
    device_offline: DeviceOfflineSection = DeviceOfflineSection()
    sensor_stale: SensorStaleSection = SensorStaleSection()
    battery_low: BatteryLowSection = BatteryLowSection()
    shrink: ShrinkSection = ShrinkSection()
    dwell: DwellSection = DwellSection()
    expiry: ExpirySection = ExpirySection()


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    repeat_interval: Seconds = Field(default=4 * 3600.0, description="Alertmanager's default: 4h")
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "site"])
    interval: Seconds = Field(default=0.0, description="Rules run at most this often (0: every tick)")
    external_url: str = Field(default="", description="Base URL of the API, for each alert's generator URL")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Defaults()
    rules: _Rules = Field(default_factory=_Rules)
    intervals: dict[str, Seconds] = Field(default_factory=dict, description="Per rule: run at most this often")


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The validated configuration: the defaults and each rule's section."""

    defaults: Defaults
    temperature_excursion: Section[TemperatureExcursion]
    lot_exposure: Section[LotExposure]
    inventory_variance: Section[InventoryVariance]
    low_stock: Section[LowStock]
    device_offline: Section[DeviceOffline]
    sensor_stale: Section[SensorStale]
    battery_low: Section[BatteryLow]
    shrink: Section[Shrink]
    dwell: Section[Dwell]
    expiry: Section[Expiry]
    intervals: Mapping[str, float]
    source: str = "<defaults>"

    def interval_s(self, name: str) -> float:
        return self.intervals.get(name, self.defaults.interval)

    def repeat_s(self, params: Common) -> float:
        return params.repeat_interval if params.repeat_interval is not None else self.defaults.repeat_interval

    def group_by(self, params: Common) -> list[str]:
        return params.group_by if params.group_by is not None else self.defaults.group_by


RULE_NAMES: Final = tuple(_Rules.model_fields)
_PARAMS: Final[Mapping[str, type[Common]]] = {
    "temperature_excursion": TemperatureExcursion,
    "lot_exposure": LotExposure,
    "inventory_variance": InventoryVariance,
    "low_stock": LowStock,
    "device_offline": DeviceOffline,
    "sensor_stale": SensorStale,
    "battery_low": BatteryLow,
    "shrink": Shrink,
    "dwell": Dwell,
    "expiry": Expiry,
}


class RulesError(ValueError):
    """The rules file is unreadable or invalid; the message names each error's path and line."""


# ----------------------------------------------------------------------------------------------------
# Loading


def load_rules(path: str | Path | None = None) -> RulesConfig:
    """The rules in ``path`` (the shipped defaults when None)."""
    if path is None:
        text = (resources.files("alerts") / DEFAULT_RULES_FILE).read_text()
        return parse_rules(text, source=f"alerts/{DEFAULT_RULES_FILE}")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<text>") -> RulesConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with 'defaults' and 'rules' at the top")
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise RulesError(_describe(exc, node, source)) from None
    unknown = set(parsed.intervals) - set(RULE_NAMES)
    if unknown:
        raise RulesError(f"{source}: intervals: unknown rule(s) {', '.join(sorted(unknown))}")
    return _config(parsed, source)


def _config(parsed: _File, source: str) -> RulesConfig:
    sections: dict[str, Section[Any]] = {}
    for name in RULE_NAMES:
        raw: Common = getattr(parsed.rules, name)
        fields = raw.model_dump(exclude_unset=True, exclude={"overrides"})
        params = _PARAMS[name].model_validate(fields)
        found: Sequence[Any] = raw.overrides  # type: ignore[attr-defined]  # every section class has overrides
        overrides = tuple((o.match, o.model_dump(exclude_unset=True, exclude={"match"})) for o in found)
        sections[name] = Section(params=params, overrides=overrides)
    return RulesConfig(defaults=parsed.defaults, intervals=dict(parsed.intervals), source=source, **sections)


def _describe(exc: ValidationError, node: yaml.Node | None, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} error(s) in the rules"]
    for error in exc.errors():
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        where = _path(loc)
        line = _line(node, loc)
        lines.append(f"  {where}{f' (line {line})' if line else ''}: {error['msg']}")
    return "\n".join(lines)


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _line(node: yaml.Node | None, loc: Iterable[int | str]) -> int | None:
    """The line (1-based) of the deepest YAML node along ``loc`` that exists in the file."""
    found = node
    for part in loc:
        child = _child(found, part)
        if child is None:
            break
        found = child
    return None if found is None else found.start_mark.line + 1


def _child(node: yaml.Node | None, part: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value  # type: ignore[no-any-return]  # yaml's node tree is untyped
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]  # yaml's node tree is untyped
    return None
