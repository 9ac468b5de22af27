"""Faults injected on schedule or at random (a Poisson process per type, from the run's seeded generator).

Each fault changes the world the way the real one would, and is recorded in the ground truth with its
subject, start and end:

- ``shrink``: an item vanishes from its shelf (nobody books it out).
- ``misplaced_item``: an item is put on another shelf than the books say.
- ``cold_room_door_open``: a cold room or freezer door stays open; the room warms until it is closed.
- ``reefer_failure``: a truck's refrigeration fails in transit; the load warms until the truck arrives.
- ``reader_offline``: a reader loses power; the broker publishes its last will (if it has one) and it
  stops reporting until it comes back.
- ``sensor_battery_dying``: a battery sensor's level falls to empty, then the sensor goes silent.
- ``wrong_book_count``: the ERP's count of one SKU at one location is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from simulator.engine import Simulation
from simulator.fleet import Fleet
from simulator.hardware import Reader, Sensor, SimDevice
from simulator.operations import is_storage
from simulator.scenario import FaultSpec, FaultType, LocationKind, parse_duration
from simulator.thermal import DOOR_OPEN_TAU_S, RECOVERY_TAU_S, REEFER_FAILED_TAU_S, door_open_target
from simulator.truth import FaultRecord
from simulator.world import Location, Vehicle, World

log = logging.getLogger(__name__)

DAY_S = 86400.0
RETRY_S = 600.0
MAX_RETRIES = 36
DEFAULT_DURATION_S = {
    FaultType.COLD_ROOM_DOOR_OPEN: 1200.0,
    FaultType.READER_OFFLINE: 900.0,
    FaultType.SENSOR_BATTERY_DYING: 7200.0,
}

Injector = Callable[[float, str | None, float | None], FaultRecord | None]


@dataclass(frozen=True, slots=True)
class Planned:
    fault: FaultType
    at: float
    subject: str | None = None
    duration_s: float | None = None


def plan(specs: list[FaultSpec], start: float) -> list[Planned]:
    """Scheduled faults at their virtual times."""
    planned = []
    for spec in specs:
        at = (
            start + parse_duration(spec.at[1:])
            if spec.at.startswith("+")
            else datetime.fromisoformat(spec.at).timestamp()
        )
        duration = parse_duration(spec.duration) if spec.duration else None
        planned.append(Planned(spec.type, at, spec.subject, duration))
    return planned


def random_plan(rates: dict[FaultType, float], start: float, end: float, rng: np.random.Generator) -> list[Planned]:
    """Faults at random: for each type, a Poisson process with the scenario's mean per day."""
    planned = []
    for fault, per_day in sorted(rates.items()):
        count = int(rng.poisson(per_day * (end - start) / DAY_S))
        planned += [Planned(fault, float(at)) for at in rng.uniform(start, end, count)]
    return sorted(planned, key=lambda p: p.at)


class Faults:
    def __init__(self, sim: Simulation, fleet: Fleet, rng: np.random.Generator) -> None:
        self.sim = sim
        self.world: World = sim.world
        self.fleet = fleet
        self.rng = rng
        self.skipped: list[Planned] = []
        self._reefer_faults: dict[str, FaultRecord] = {}
        self._injectors: dict[FaultType, Injector] = {
            FaultType.SHRINK: self.shrink,
            FaultType.MISPLACED_ITEM: self.misplace,
            FaultType.COLD_ROOM_DOOR_OPEN: self.open_door,
            FaultType.REEFER_FAILURE: self.fail_reefer,
            FaultType.READER_OFFLINE: self.reader_offline,
            FaultType.SENSOR_BATTERY_DYING: self.drain_battery,
            FaultType.WRONG_BOOK_COUNT: self.miscount,
        }
        fleet.arrival_hooks.append(self._repair_on_arrival)

    def schedule(self, planned: list[Planned]) -> None:
        for item in planned:
            self.sim.at(item.at, self._attempt(item, MAX_RETRIES))

    def _attempt(self, planned: Planned, retries: int) -> Callable[[float], None]:
        def inject(t: float) -> None:
            if self._injectors[planned.fault](t, planned.subject, planned.duration_s) is not None:
                return
            if retries > 0 and planned.fault == FaultType.REEFER_FAILURE:
                self.sim.at(t + RETRY_S, self._attempt(planned, retries - 1))  # wait for a truck on the road
            else:
                self.skipped.append(planned)
                log.debug("fault %s at %s had no subject and was skipped", planned.fault, t)

        return inject

    def _pick(self, choices: list[str], subject: str | None) -> str | None:
        if subject is not None:
            return subject if subject in choices else None
        return choices[int(self.rng.integers(len(choices)))] if choices else None

    def _stored_items(self) -> list[str]:
        items = self.world.items
        return [items.epc[i] for loc in self.world.locations.values() if is_storage(loc) for i in items.members[loc.id]]

    def shrink(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        epc = self._pick(self._stored_items(), subject)
        if epc is None:
            return None
        index = self.world.items.by_epc[epc]
        location = self.world.locations[self.world.items.place[index] or ""]
        self.world.remove(index, t, "shrink")
        return self.world.truth.fault_started(
            FaultType.SHRINK, epc, t, site_id=location.site.id, location_id=location.id
        )

    def misplace(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        epc = self._pick(self._stored_items(), subject)
        if epc is None:
            return None
        index = self.world.items.by_epc[epc]
        source = self.world.locations[self.world.items.place[index] or ""]
        others = [loc for loc in source.site.locations.values() if is_storage(loc) and loc is not source]
        if not others:
            return None
        target = others[int(self.rng.integers(len(others)))]
        self.world.put(index, target, t, "misplaced")
        gtin = self.world.skus[self.world.items.sku[index]].gtin
        return self.world.truth.fault_started(FaultType.MISPLACED_ITEM, epc, t, site_id=source.site.id,
                                              location_id=target.id, booked_at=source.id, gtin=gtin)  # fmt: skip

    def open_door(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        rooms = [loc.id for loc in self.world.locations.values()
                 if loc.kind in (LocationKind.COLD_ROOM, LocationKind.FREEZER) and not loc.door_open]  # fmt: skip
        room_id = self._pick(rooms, subject)
        if room_id is None:
            return None
        room = self.world.locations[room_id]
        room.door_open = True
        setpoint = room.spec.setpoint_c if room.spec.setpoint_c is not None else room.site.spec.ambient_c
        room.thermal.retarget(t, door_open_target(setpoint, room.site.spec.ambient_c), DOOR_OPEN_TAU_S)
        record = self.world.truth.fault_started(FaultType.COLD_ROOM_DOOR_OPEN, room.id, t, site_id=room.site.id,
                                                location_id=room.id)  # fmt: skip
        self.sim.at(t + (duration or DEFAULT_DURATION_S[FaultType.COLD_ROOM_DOOR_OPEN]),
                    lambda t: self._close_door(room, setpoint, record, t))  # fmt: skip
        return record

    def _close_door(self, room: Location, setpoint: float, record: FaultRecord, t: float) -> None:
        room.door_open = False
        room.thermal.retarget(t, setpoint, RECOVERY_TAU_S)
        self.world.truth.fault_ended(record, t)

    def fail_reefer(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        moving = [v.id for v in self.world.vehicles if v.in_transit and v.compressor_ok]
        vehicle_id = self._pick(moving, subject)
        if vehicle_id is None:
            return None
        vehicle = next(v for v in self.world.vehicles if v.id == vehicle_id)
        vehicle.compressor_ok = False
        vehicle.thermal.retarget(t, vehicle.spec.outside_c, REEFER_FAILED_TAU_S)
        record = self.world.truth.fault_started(FaultType.REEFER_FAILURE, vehicle.id, t, location_id=vehicle.id,
                                                device_id=vehicle.spec.reefer.id)  # fmt: skip
        self._reefer_faults[vehicle.id] = record
        return record

    def _repair_on_arrival(self, vehicle: Vehicle, t: float) -> None:
        record = self._reefer_faults.pop(vehicle.id, None)
        if record is not None:
            vehicle.compressor_ok = True
            vehicle.thermal.retarget(t, vehicle.spec.setpoint_c, RECOVERY_TAU_S)
            self.world.truth.fault_ended(record, t)

    def _devices(self, kind: type[SimDevice]) -> list[SimDevice]:
        return [d for d in self.sim.devices.values() if isinstance(d, kind) and d.online and not d.silent]

    def reader_offline(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        readers = {d.id: d for d in self._devices(Reader)}
        reader_id = self._pick(sorted(readers), subject)
        if reader_id is None:
            return None
        reader = readers[reader_id]
        has_will = reader.will(t) is not None
        self.sim.take_offline(reader, with_will=True)
        record = self.world.truth.fault_started(FaultType.READER_OFFLINE, reader.id, t, device_id=reader.id,
                                                last_will=has_will)  # fmt: skip

        def back(t: float) -> None:
            self.sim.bring_online(reader)
            self.world.truth.fault_ended(record, t)

        self.sim.at(t + (duration or DEFAULT_DURATION_S[FaultType.READER_OFFLINE]), back)
        return record

    def drain_battery(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        sensors = {d.id: d for d in self._devices(Sensor) if isinstance(d, Sensor) and d.spec.battery_pct is not None}
        sensor_id = self._pick(sorted(sensors), subject)
        if sensor_id is None:
            return None
        sensor = sensors[sensor_id]
        if not isinstance(sensor, Sensor):
            return None
        span = duration or DEFAULT_DURATION_S[FaultType.SENSOR_BATTERY_DYING]
        sensor.drain = (t, t + span, sensor.battery_at(t))
        return self.world.truth.fault_started(FaultType.SENSOR_BATTERY_DYING, sensor.id, t, device_id=sensor.id,
                                              location_id=sensor.location.id, empty_at=t + span)  # fmt: skip

    def miscount(self, t: float, subject: str | None, duration: float | None) -> FaultRecord | None:
        entries = sorted(
            key for key, units in self.world.book.units.items() if units > 0 and key[0] in self.world.locations
        )
        choice = self._pick([f"{loc}/{gtin}" for loc, gtin in entries], subject)
        if choice is None:
            return None
        location_id, gtin = choice.split("/")
        booked = self.world.book.units[(location_id, gtin)]
        delta = int(self.rng.choice([-1, 1])) * max(1, round(booked * float(self.rng.uniform(0.05, 0.2))))
        delta = max(delta, -booked)
        self.world.book.add(location_id, gtin, delta)
        return self.world.truth.fault_started(FaultType.WRONG_BOOK_COUNT, f"{location_id}/{gtin}", t,
                                              site_id=self.world.locations[location_id].site.id,
                                              location_id=location_id, gtin=gtin, delta=delta)  # fmt: skip
