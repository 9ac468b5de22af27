"""Reefer trucks on their route: loading at home, driving to the destination site, unloading, driving back.

A trip takes the route's great-circle length (through its waypoints) at the vehicle's speed. Items go out
through a dock door of the home site into the truck, ride along (their location is the truck), and come in
through a dock door of the destination, where they are put away like any delivery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulator.engine import Action, Simulation
from simulator.operations import Warehouse, next_local_time
from simulator.scenario import parse_clock
from simulator.world import Leg, Vehicle, World

EARTH_RADIUS_M = 6_371_000.0
TURNAROUND_S = 1800.0
GPS_ACCURACY_M = 8.0


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def bearing_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return math.degrees(math.atan2(y, x)) % 360


@dataclass(frozen=True)
class Route:
    points: list[tuple[float, float]]

    @property
    def legs_m(self) -> list[float]:
        return [haversine_m(a, b) for a, b in zip(self.points, self.points[1:], strict=False)]

    @property
    def length_m(self) -> float:
        return sum(self.legs_m)

    def at(self, share: float) -> tuple[float, float, float]:
        """(lat, lon, heading) a share of the way along; straight lines between points are close enough."""
        remaining = min(max(share, 0.0), 1.0) * self.length_m
        for (a, b), leg in zip(zip(self.points, self.points[1:], strict=False), self.legs_m, strict=True):
            if remaining <= leg or b == self.points[-1]:
                f = remaining / leg if leg else 1.0
                return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, bearing_deg(a, b)
            remaining -= leg
        return (*self.points[-1], 0.0)


@dataclass
class Trip:
    route: Route
    departs_at: float
    arrives_at: float


class Fleet:
    def __init__(self, sim: Simulation, warehouse: Warehouse, rng: np.random.Generator) -> None:
        self.sim = sim
        self.world: World = sim.world
        self.warehouse = warehouse
        self.rng = rng
        self.trips: dict[str, Trip] = {}
        self.arrival_hooks: list[Callable[[Vehicle, float], None]] = []

    def start(self, t: float) -> None:
        for vehicle in self.world.vehicles:
            self._schedule_departures(vehicle, t)

    def _schedule_departures(self, vehicle: Vehicle, t: float) -> None:
        for text in vehicle.spec.departures:
            hour, minute = parse_clock(text)
            self.sim.at(next_local_time(t, vehicle.home.zone, hour, minute), self._departure(vehicle, hour, minute))

    def _departure(self, vehicle: Vehicle, hour: int, minute: int) -> Action:
        def depart(t: float) -> None:
            self.sim.at(next_local_time(t + 60, vehicle.home.zone, hour, minute), depart)
            if vehicle.leg == Leg.HOME:
                self.load(vehicle, t)

        return depart

    def route(self, vehicle: Vehicle, outbound: bool) -> Route:
        home, away = vehicle.home.spec, vehicle.destination.spec
        points = [(home.lat, home.lon), *vehicle.spec.waypoints, (away.lat, away.lon)]
        return Route(points if outbound else points[::-1])

    def load(self, vehicle: Vehicle, t: float) -> None:
        """Pick what the destination lacks, carry it out through a dock door, and leave when it is aboard."""
        picked = self.warehouse.pick_transfer(vehicle.home, vehicle.destination, vehicle.spec.capacity_items, t)
        done = self.warehouse.dispatch(vehicle.home, picked, t, vehicle=vehicle)
        vehicle.trip += 1
        self.sim.at(done + 60, lambda t: self._drive(vehicle, t, outbound=True))

    def _drive(self, vehicle: Vehicle, t: float, outbound: bool) -> None:
        route = self.route(vehicle, outbound)
        duration = route.length_m / (vehicle.spec.speed_kmh / 3.6)
        self.trips[vehicle.id] = Trip(route, t, t + duration)
        vehicle.leg = Leg.OUTBOUND if outbound else Leg.RETURNING
        vehicle.speed_mps = vehicle.spec.speed_kmh / 3.6
        self.sim.at(t + duration, lambda t: self._arrive(vehicle, t, outbound))

    def _arrive(self, vehicle: Vehicle, t: float, outbound: bool) -> None:
        vehicle.speed_mps = 0.0
        self.trips.pop(vehicle.id, None)
        for hook in self.arrival_hooks:
            hook(vehicle, t)
        if not outbound:
            vehicle.leg = Leg.HOME
            return
        vehicle.leg = Leg.AWAY
        aboard = self.world.stock(vehicle.id)
        done = self.warehouse.receive(vehicle.destination, aboard, t, vehicle=vehicle)
        self.sim.at(max(done, t) + TURNAROUND_S, lambda t: self._drive(vehicle, t, outbound=False))

    def position(self, vehicle: Vehicle, t: float) -> dict[str, float]:
        """The GPS fix a tracker on the vehicle takes at ``t``."""
        trip = self.trips.get(vehicle.id)
        if trip is None:
            site = vehicle.home if vehicle.leg == Leg.HOME else vehicle.destination
            lat, lon, heading, speed = site.spec.lat, site.spec.lon, vehicle.heading_deg, 0.0
        else:
            share = (t - trip.departs_at) / max(trip.arrives_at - trip.departs_at, 1.0)
            lat, lon, heading = trip.route.at(share)
            speed = vehicle.speed_mps * float(self.rng.uniform(0.85, 1.1))
        noise = self.rng.normal(0.0, GPS_ACCURACY_M / 111_000, 2)
        vehicle.lat, vehicle.lon, vehicle.heading_deg = lat + float(noise[0]), lon + float(noise[1]), heading
        return {"lat": vehicle.lat, "lon": vehicle.lon, "heading_deg": heading, "speed_mps": speed,
                "accuracy_m": GPS_ACCURACY_M * float(self.rng.uniform(0.6, 1.8)), "alt_m": 40.0}  # fmt: skip
