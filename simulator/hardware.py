"""The simulated devices: RFID readers, room sensors, GPS trackers and reefer controllers, in their formats.

A device reports every ``interval_s``; what it reports comes from the world (radio physics for readers, room
temperatures for sensors, the vehicle's route for trackers) and is written in its vendor's format with its
own clock, which runs ``skew_s`` ahead of (or behind) true time.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simulator.delivery import Message
from simulator.formats import (
    Publication,
    TagReport,
    impinj_r700,
    native,
    owntracks,
    sparkplug_b,
    tasmota,
    ttn_v3,
    zebra_fx,
)
from simulator.publisher import Link
from simulator.radio import inventory
from simulator.scenario import LocationKind, Physics, ReaderFormat, ReaderSpec, SensorFormat, SensorSpec
from simulator.world import Antenna, Location, Vehicle, World

BATTERY_EMPTY_PCT = 0.0
# How far from a dock door's centre a pallet passing through it can be (operations.DOCK_APPROACH_M + jitter).
DOCK_REACH_M = 5.0
# The IoT Connector's default heartbeat interval (management events configuration).
ZEBRA_HEARTBEAT_S = 60.0
LHT65_FULL_V, LHT65_EMPTY_V = 3.05, 2.45
HUMIDITY_PCT = {LocationKind.COLD_ROOM: 85.0, LocationKind.FREEZER: 65.0}
AMBIENT_HUMIDITY_PCT = 45.0


def _stable_hex(text: str, digits: int) -> str:
    """Hardware identifiers (EUIs, addresses) derived from a device id so that every run uses the same ones."""
    return hashlib.sha256(text.encode()).hexdigest()[:digits].upper()


@dataclass(eq=False)
class SimDevice(ABC):
    id: str
    format: str
    interval_s: float
    skew_s: float
    rng: np.random.Generator
    online: bool = True
    silent: bool = False
    """A device whose battery died: no will, no messages, just silence."""

    def clock_ms(self, t: float) -> int:
        """The device's own clock at true time ``t``, in epoch milliseconds."""
        return round((t + self.skew_s) * 1000)

    def link(self, t: float) -> Link:
        return Link(self.id, self.will(t), self.subscriptions())

    def will(self, t: float) -> Publication | None:
        return None

    def subscriptions(self) -> tuple[str, ...]:
        return ()

    def birth(self, t: float) -> list[Message]:
        """What the device publishes right after connecting."""
        return []

    def command(self, payload: bytes, t: float) -> list[Message]:
        return []

    @abstractmethod
    def report(self, t: float) -> list[Message]: ...

    def message(self, publication: Publication, reads: tuple[TagReport, ...] = (), buffered: bool = True) -> Message:
        return Message(
            self.id, self.format, publication.topic, publication.payload, publication.retain, reads, buffered
        )


@dataclass(eq=False)
class Reader(SimDevice):
    spec: ReaderSpec = field(kw_only=True)
    antennas: list[Antenna] = field(kw_only=True)
    world: World = field(kw_only=True)
    physics: Physics = field(kw_only=True)
    site_index: int = field(kw_only=True)
    event_num: int = 0
    next_heartbeat: float = 0.0
    tag_reads: int = 0
    cross_reads: int = 0
    places: list[str] = field(default_factory=list)
    """Where a tag can be for this reader to have any chance of reading it; the rest of the site is skipped."""

    def __post_init__(self) -> None:
        site = self.world.sites[self.site_index]
        self.places = sorted(
            loc.id for loc in site.locations.values()
            if any(_reachable(antenna, loc, self.physics) for antenna in self.antennas)
        )  # fmt: skip

    def will(self, t: float) -> Publication | None:
        return native.will(self.id) if self.spec.format == ReaderFormat.NATIVE else None

    def birth(self, t: float) -> list[Message]:
        if self.spec.format != ReaderFormat.NATIVE:
            return []
        return [self.message(native.online(self.id, self.clock_ms(t)), buffered=False)]

    def report(self, t: float) -> list[Message]:
        reports = self.observe(t)
        messages = self.encode(reports) if reports else []
        if self.spec.format == ReaderFormat.NATIVE and not reports:
            messages.append(self.message(native.heartbeat(self.id, self.clock_ms(t)), buffered=False))
        if self.spec.format == ReaderFormat.ZEBRA_FX and t >= self.next_heartbeat:
            self.next_heartbeat = t + ZEBRA_HEARTBEAT_S
            ports = [antenna.port for antenna in self.antennas]
            messages.append(self.message(zebra_fx.heartbeat(self.id, self.clock_ms(t), ports), buffered=False))
        return messages

    def observe(self, t: float) -> list[TagReport]:
        """Every tag each antenna read over the last window, in the order of the reader's clock."""
        items = self.world.items
        indices = np.sort(np.fromiter(itertools.chain.from_iterable(items.members[p] for p in self.places), np.int64))
        window = self.interval_s
        x, y = items.positions(indices, t - window / 2)
        attenuation = items.attenuation_db[indices]
        reports: list[TagReport] = []
        for antenna in self.antennas:
            seen = inventory(antenna.spec, x, y, attenuation, window, self.physics, self.rng)
            offsets = self.rng.uniform(0.0, window, len(seen))
            for tag, rssi, reads, offset in zip(seen.tags, seen.rssi_dbm, seen.reads, offsets, strict=True):
                item = int(indices[tag])
                self.cross_reads += items.place[item] != antenna.location.id
                reports.append(
                    TagReport(items.epc[item], antenna.port, float(rssi), int(reads), self.clock_ms(t - offset))
                )
        self.tag_reads += len(reports)
        reports.sort(key=lambda r: r.at_ms)
        return reports

    def encode(self, reports: list[TagReport]) -> list[Message]:
        if self.spec.format == ReaderFormat.ZEBRA_FX:
            return self._zebra(reports)
        if self.spec.format == ReaderFormat.IMPINJ_R700:
            names = {a.port: a.location.id for a in self.antennas}
            return [self.message(impinj_r700.publication(self.id, r, names[r.antenna]), (r,)) for r in reports]
        if self.spec.batch:
            return [self.message(p, tuple(reports)) for p in native.reads(self.id, reports, batch=True)]
        return [
            self.message(p, (r,)) for p, r in zip(native.reads(self.id, reports, batch=False), reports, strict=True)
        ]

    def _zebra(self, reports: list[TagReport]) -> list[Message]:
        first = self.event_num + 1
        self.event_num += len(reports)
        publications = zebra_fx.publications(self.id, reports, first, self.spec.batch)
        if self.spec.batch:
            return [self.message(publications[0], tuple(reports))]
        return [self.message(p, (r,)) for p, r in zip(publications, reports, strict=True)]


@dataclass(eq=False)
class Sensor(SimDevice):
    spec: SensorSpec = field(kw_only=True)
    location: Location = field(kw_only=True)
    battery: float = 100.0
    drain: tuple[float, float, float] | None = None
    """(start, end, level at start) of a battery running flat."""
    f_cnt: int = 0

    def will(self, t: float) -> Publication | None:
        if self.spec.format == SensorFormat.TASMOTA:
            return tasmota.lwt(self.id, online=False)
        return native.will(self.id) if self.spec.format == SensorFormat.NATIVE else None

    def birth(self, t: float) -> list[Message]:
        if self.spec.format == SensorFormat.TASMOTA:
            return [self.message(tasmota.lwt(self.id, online=True), buffered=False)]
        if self.spec.format == SensorFormat.NATIVE:
            return [self.message(native.online(self.id, self.clock_ms(t)), buffered=False)]
        return []

    def battery_at(self, t: float) -> float:
        """Battery level in percent; a dying battery falls linearly to empty."""
        if self.drain is None:
            return self.battery
        start, end, level = self.drain
        share = min(1.0, max(0.0, (t - start) / max(end - start, 1.0)))
        return level * (1.0 - share)

    def report(self, t: float) -> list[Message]:
        battery = self.battery_at(t)
        if self.spec.battery_pct is not None and battery <= BATTERY_EMPTY_PCT:
            self.silent = True
        if self.silent:
            return []
        temperature = self.location.thermal.at(t) + float(self.rng.normal(0.0, self.spec.noise_c))
        humidity = HUMIDITY_PCT.get(self.location.kind, AMBIENT_HUMIDITY_PCT) + float(self.rng.normal(0.0, 1.5))
        return [self.message(self._publication(t, temperature, min(99.0, humidity), battery))]

    def _publication(self, t: float, temperature: float, humidity: float, battery: float) -> Publication:
        if self.spec.format == SensorFormat.TASMOTA:
            zone = self.location.site.zone
            wet = humidity if self.location.kind != LocationKind.FREEZER else None
            return tasmota.sensor(
                self.id, self.clock_ms(t), zone, temperature, wet, self.spec.temp_unit, _stable_hex(self.id, 12)
            )
        if self.spec.format == SensorFormat.TTN_V3:
            return self._uplink(t, temperature, humidity, battery)
        values: dict[str, object] = {"temperature_c": round(temperature, 2), "humidity_pct": round(humidity, 1)}
        if self.spec.battery_pct is not None:
            values["battery_pct"] = round(battery, 1)
        return native.telemetry(self.id, self.clock_ms(t), values)

    def _uplink(self, t: float, temperature: float, humidity: float, battery: float) -> Publication:
        self.f_cnt += 1
        volts = LHT65_EMPTY_V + (LHT65_FULL_V - LHT65_EMPTY_V) * battery / 100
        probe = temperature + float(self.rng.normal(0.0, 0.05))
        frame = ttn_v3.lht65_frame(volts, temperature, humidity, probe)
        identity = ttn_v3.Identity(
            self.id, "stocktrace-sensors", "ttn", _stable_hex(self.id, 16), _stable_hex("addr" + self.id, 8),
            f"gw-{self.location.site.id}", _stable_hex("gw" + self.location.site.id, 16),
        )  # fmt: skip
        radio = {"rssi": -70 - 25 * self.rng.random(), "snr": 9 * self.rng.random() - 2, "timestamp": (t * 1e6) % 2**32}
        ids = [
            f"as:up:{_stable_hex(f'{self.id}{self.f_cnt}', 26)}",
            f"rpc:/ttn.lorawan.v3.GsNs/HandleUplink:{self.f_cnt}",
        ]
        return ttn_v3.uplink(identity, frame, self.f_cnt, round((t + self.skew_s) * 1e9), radio, ids)


def _reachable(antenna: Antenna, location: Location, physics: Physics) -> bool:
    """Whether a tag anywhere in ``location`` (or on its way through a dock door) could be read at all.

    Beyond range + softness·ln(10⁶) a tag is read in fewer than one window in a million.
    """
    cutoff = antenna.spec.range_m + physics.range_softness_m * math.log(1e6)
    expand = DOCK_REACH_M if location.kind == LocationKind.DOCK_DOOR else 0.0
    (cx, cy), (w, d) = location.spec.at, location.spec.size
    dx = max(abs(antenna.spec.at[0] - cx) - w / 2 - expand, 0.0)
    dy = max(abs(antenna.spec.at[1] - cy) - d / 2 - expand, 0.0)
    return math.hypot(dx, dy) <= cutoff


PositionFn = Callable[[Vehicle, float], dict[str, float]]


@dataclass(eq=False)
class Tracker(SimDevice):
    vehicle: Vehicle = field(kw_only=True)
    position: PositionFn = field(kw_only=True)
    user: str = "fleet"
    parked_every: int = 5
    calls: int = 0

    def will(self, t: float) -> Publication | None:
        if self.format == "owntracks":
            # The will is registered when connecting, so it carries the time of connecting (booklet, "lwt").
            return owntracks.will(self.user, self.id, self.clock_ms(t) // 1000)
        return native.will(self.id)

    def birth(self, t: float) -> list[Message]:
        return (
            []
            if self.format == "owntracks"
            else [self.message(native.online(self.id, self.clock_ms(t)), buffered=False)]
        )

    def report(self, t: float) -> list[Message]:
        self.calls += 1
        moving = self.vehicle.in_transit
        if not moving and self.calls % self.parked_every:
            return []  # parked: trackers report far less often when nothing moves
        fix = self.position(self.vehicle, t)
        battery = 100 - (self.calls // 50) % 30
        if self.format == "owntracks":
            return [
                self.message(owntracks.location(self.user, self.id, fix, self.clock_ms(t) // 1000, battery, moving))
            ]
        position = {"lat": round(fix["lat"], 6), "lon": round(fix["lon"], 6), "accuracy_m": round(fix["accuracy_m"], 1),
                    "speed_mps": round(fix["speed_mps"], 2), "alt_m": round(fix["alt_m"], 1)}  # fmt: skip
        return [
            self.message(native.telemetry(self.id, self.clock_ms(t), {"position": position, "battery_pct": battery}))
        ]


# The box temperature the unit controls (supply air) is "Temperature"; return air is reported beside it.
REEFER_METRICS = (
    sparkplug_b.MetricDef("Reefer/Temperature", 1, sparkplug_b.FLOAT),
    sparkplug_b.MetricDef("Reefer/Return Air Temperature", 2, sparkplug_b.FLOAT),
    sparkplug_b.MetricDef("Reefer/Setpoint", 3, sparkplug_b.FLOAT),
    sparkplug_b.MetricDef("Reefer/Compressor Running", 4, sparkplug_b.BOOLEAN),
    sparkplug_b.MetricDef("Reefer/Vehicle", 5, sparkplug_b.STRING),
)


@dataclass(eq=False)
class ReeferUnit(SimDevice):
    vehicle: Vehicle = field(kw_only=True)
    group: str = "cold-chain"
    bd_seq: int = -1
    seq: int = 0

    def will(self, t: float) -> Publication | None:
        if self.format == "sparkplug-b":
            # bdSeq counts connections (spec §6.4.5); the will registered now carries the coming session's.
            return sparkplug_b.death(self.group, self.id, (self.bd_seq + 1) % 256, self.clock_ms(t))
        return native.will(self.id)

    def subscriptions(self) -> tuple[str, ...]:
        return (sparkplug_b.topic(self.group, "NCMD", self.id),) if self.format == "sparkplug-b" else ()

    def values(self, t: float) -> dict[str, float | bool | str]:
        supply = self.vehicle.thermal.at(t) + float(self.rng.normal(0.0, 0.15))
        return {
            "Reefer/Temperature": round(supply, 2),
            "Reefer/Return Air Temperature": round(supply + 1.2 + float(self.rng.normal(0.0, 0.2)), 2),
            "Reefer/Setpoint": self.vehicle.spec.setpoint_c,
            "Reefer/Compressor Running": self.vehicle.compressor_ok,
            "Reefer/Vehicle": self.vehicle.id,
        }

    def birth(self, t: float) -> list[Message]:
        if self.format != "sparkplug-b":
            return [self.message(native.online(self.id, self.clock_ms(t)), buffered=False)]
        self.bd_seq = (self.bd_seq + 1) % 256
        self.seq = 0
        publication = sparkplug_b.birth(
            self.group, self.id, REEFER_METRICS, self.values(t), self.bd_seq, self.clock_ms(t)
        )
        return [self.message(publication, buffered=False)]

    def command(self, payload: bytes, t: float) -> list[Message]:
        if not sparkplug_b.wants_rebirth(payload):
            return []
        self.seq = 0
        publication = sparkplug_b.birth(
            self.group, self.id, REEFER_METRICS, self.values(t), self.bd_seq, self.clock_ms(t)
        )
        return [self.message(publication, buffered=False)]

    def report(self, t: float) -> list[Message]:
        values = self.values(t)
        if self.format != "sparkplug-b":
            body = {"temperature_c": values["Reefer/Temperature"], "setpoint_c": values["Reefer/Setpoint"],
                    "compressor_running": values["Reefer/Compressor Running"], "vehicle": self.vehicle.id}  # fmt: skip
            return [self.message(native.telemetry(self.id, self.clock_ms(t), body))]
        self.seq = (self.seq + 1) % 256
        publication = sparkplug_b.data(self.group, self.id, REEFER_METRICS[:4], values, self.seq, self.clock_ms(t))
        # Sparkplug relies on in-order delivery of one session (spec §6.4.19): never buffered or duplicated.
        return [self.message(publication, buffered=False)]
