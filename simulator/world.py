"""The simulated world built from a scenario: sites and their locations, antennas, vehicles, items and the books.

Items are kept in columns (numpy arrays for what the radio physics needs, lists for the rest) so that one
reader report over a few thousand tags is a handful of vectorised operations.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from simulator.gs1 import Filter, sgtin96, sscc96
from simulator.scenario import (
    STORAGE_KINDS,
    AntennaSpec,
    LocationKind,
    LocationSpec,
    Scenario,
    ScenarioError,
    SiteSpec,
    SkuSpec,
    StockSpec,
    Storage,
    VehicleSpec,
    load_scenario,
    parse_scenario,
)
from simulator.thermal import REEFER_TAU_S, Thermal, held_at
from simulator.truth import GroundTruth

__all__ = ["ScenarioError", "World", "build_world", "load_scenario", "parse_scenario"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
DAY_S = 86400.0


@dataclass(eq=False)
class Location:
    spec: LocationSpec
    site: Site
    thermal: Thermal
    door_open: bool = False

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> LocationKind:
        return self.spec.kind

    def random_point(self, rng: np.random.Generator) -> tuple[float, float]:
        (cx, cy), (w, d) = self.spec.at, self.spec.size
        return cx + rng.uniform(-w / 2, w / 2), cy + rng.uniform(-d / 2, d / 2)


@dataclass(eq=False)
class Antenna:
    reader_id: str
    spec: AntennaSpec
    location: Location

    @property
    def port(self) -> int:
        return self.spec.port


@dataclass(eq=False)
class Site:
    spec: SiteSpec
    index: int
    zone: ZoneInfo
    locations: dict[str, Location] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.spec.id

    def role(self, role: str) -> Location:
        return next(loc for loc in self.locations.values() if loc.spec.role == role)

    @property
    def docks(self) -> list[Location]:
        return [loc for loc in self.locations.values() if loc.kind == LocationKind.DOCK_DOOR]

    def storage(self, storage: Storage) -> list[Location]:
        """Where goods of a storage class are put away; shelves are preferred over open zones."""
        kinds = STORAGE_KINDS[storage]
        found = [loc for loc in self.locations.values() if loc.kind in kinds and loc.spec.role is None]
        shelves = [loc for loc in found if loc.kind != LocationKind.ZONE]
        return shelves or found


class Leg(StrEnum):
    HOME = "home"
    OUTBOUND = "outbound"
    AWAY = "away"
    RETURNING = "returning"


@dataclass(eq=False)
class Vehicle:
    spec: VehicleSpec
    home: Site
    destination: Site
    thermal: Thermal
    leg: Leg = Leg.HOME
    compressor_ok: bool = True
    lat: float = 0.0
    lon: float = 0.0
    speed_mps: float = 0.0
    heading_deg: float = 0.0
    trip: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def in_transit(self) -> bool:
        return self.leg in (Leg.OUTBOUND, Leg.RETURNING)


@dataclass(eq=False)
class Sku:
    spec: SkuSpec
    index: int
    next_serial: int = 1

    @property
    def gtin(self) -> str:
        return self.spec.gtin


class ItemTable:
    """Every item ever created, by index; positions move linearly from (x0, y0) at t0 to (x1, y1) at t1."""

    def __init__(self, capacity: int = 1024) -> None:
        self.epc: list[str] = []
        self.sku: list[int] = []
        self.lot: list[str] = []
        self.pallet: list[str | None] = []
        self.place: list[str | None] = []
        self.by_epc: dict[str, int] = {}
        self.members: dict[str | None, set[int]] = defaultdict(set)
        self.site = np.full(capacity, -1, np.int64)
        self.coords = np.zeros((capacity, 6))  # x0, y0, x1, y1, t0, t1
        self.attenuation_db = np.zeros(capacity)
        self._site_members: dict[int, IntArray] = {}

    def __len__(self) -> int:
        return len(self.epc)

    def add(self, epc: str, sku: int, lot: str, pallet: str | None) -> int:
        index = len(self.epc)
        if index == len(self.site):
            self._grow()
        self.epc.append(epc)
        self.sku.append(sku)
        self.lot.append(lot)
        self.pallet.append(pallet)
        self.place.append(None)
        self.members[None].add(index)
        self.by_epc[epc] = index
        return index

    def _grow(self) -> None:
        size = len(self.site) * 2
        self.site = np.concatenate([self.site, np.full(size - len(self.site), -1, np.int64)])
        self.coords = np.concatenate([self.coords, np.zeros((size - len(self.coords), 6))])
        self.attenuation_db = np.concatenate([self.attenuation_db, np.zeros(size - len(self.attenuation_db))])

    def set_place(self, index: int, place: str | None, site: int, attenuation_db: float) -> None:
        self.members[self.place[index]].discard(index)
        self.members[place].add(index)
        self.place[index] = place
        if self.site[index] != site:
            self._site_members.pop(int(self.site[index]), None)
            self._site_members.pop(site, None)
        self.site[index] = site
        self.attenuation_db[index] = attenuation_db

    def set_path(self, index: int, start: tuple[float, float], end: tuple[float, float], t0: float, t1: float) -> None:
        self.coords[index] = (start[0], start[1], end[0], end[1], t0, t1)

    def on_site(self, site: int) -> IntArray:
        """Indices of the items on a site's floor (cached until one arrives or leaves)."""
        cached = self._site_members.get(site)
        if cached is None:
            cached = np.flatnonzero(self.site[: len(self.epc)] == site)
            self._site_members[site] = cached
        return cached

    def positions(self, indices: IntArray, t: float) -> tuple[FloatArray, FloatArray]:
        c = self.coords[indices]
        span = np.maximum(c[:, 5] - c[:, 4], 1e-9)
        frac = np.clip((t - c[:, 4]) / span, 0.0, 1.0)
        return c[:, 0] + (c[:, 2] - c[:, 0]) * frac, c[:, 1] + (c[:, 3] - c[:, 1]) * frac


class Book:
    """The ERP's book inventory: units per (location or vehicle, GTIN), as the business recorded them."""

    def __init__(self) -> None:
        self.units: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, place: str, gtin: str, quantity: int) -> None:
        self.units[(place, gtin)] += quantity
        if self.units[(place, gtin)] == 0:
            del self.units[(place, gtin)]

    def move(self, source: str, target: str, gtin: str, quantity: int = 1) -> None:
        self.add(source, gtin, -quantity)
        self.add(target, gtin, quantity)

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self.units)


@dataclass(eq=False)
class World:
    scenario: Scenario
    rng: np.random.Generator
    truth: GroundTruth
    sites: list[Site]
    locations: dict[str, Location]
    antennas: dict[str, list[Antenna]]
    skus: list[Sku]
    vehicles: list[Vehicle]
    items: ItemTable = field(default_factory=ItemTable)
    book: Book = field(default_factory=Book)
    next_sscc: int = 1
    next_lot: int = 1

    def sku(self, gtin: str) -> Sku:
        return next(sku for sku in self.skus if sku.gtin == gtin)

    def site(self, site_id: str) -> Site:
        return next(site for site in self.sites if site.id == site_id)

    def new_pallet(self) -> str:
        """A fresh SSCC-96 for a pallet built by the scenario's company."""
        epc = sscc96(self.scenario.company_prefix, self.next_sscc)
        self.next_sscc += 1
        return epc

    def new_lot(self, sku: Sku, t: float) -> tuple[str, float]:
        """A production lot of ``sku`` and its expiry."""
        lot = f"L{self.next_lot:05d}"
        self.next_lot += 1
        return lot, t + sku.spec.shelf_life_days * DAY_S * float(self.rng.uniform(0.6, 1.0))

    def new_item(self, sku: Sku, lot: str, expires_at: float, pallet: str | None) -> int:
        epc = sgtin96(sku.gtin, self.scenario.company_prefix, sku.next_serial, Filter.POS_ITEM)
        sku.next_serial += 1
        index = self.items.add(epc, sku.index, lot, pallet)
        attributes = {"gtin": sku.gtin, "lot": lot, "expires_at": _day(expires_at), "pallet": pallet}
        self.truth.item_created(epc, attributes)
        return index

    def put(self, index: int, location: Location, t: float, reason: str) -> None:
        """The item is now at rest somewhere inside ``location``."""
        point = location.random_point(self.rng)
        self.items.set_path(index, point, point, t, t)
        self._arrive(index, location, t, reason)

    def carry(self, index: int, location: Location, start: tuple[float, float], end: tuple[float, float],
              t0: float, t1: float, reason: str) -> None:  # fmt: skip
        """The item moves through ``location`` (a dock door) from ``start`` to ``end`` over [t0, t1]."""
        self.items.set_path(index, start, end, t0, t1)
        self._arrive(index, location, t0, reason)

    def _arrive(self, index: int, location: Location, t: float, reason: str) -> None:
        self.items.set_place(index, location.id, location.site.index, location.spec.attenuation_db)
        self.truth.move(self.items.epc[index], location.id, location.site.id, t, reason)

    def load(self, index: int, vehicle: Vehicle, t: float, reason: str) -> None:
        self.items.set_place(index, vehicle.id, -1, 0.0)
        self.truth.move(self.items.epc[index], vehicle.id, None, t, reason)

    def remove(self, index: int, t: float, reason: str) -> None:
        """The item leaves everything we track (shipped to a customer, or stolen)."""
        self.items.set_place(index, None, -1, 0.0)
        self.truth.move(self.items.epc[index], None, None, t, reason)

    def stock(self, place: str, sku: int | None = None) -> list[int]:
        """Items at a place, oldest expiry first (FEFO), optionally of one SKU."""
        found = [i for i in self.items.members.get(place, ()) if sku is None or self.items.sku[i] == sku]
        return sorted(found, key=lambda i: (self.items.lot[i], i))

    def site_stock(self, site: Site, sku: int) -> int:
        return sum(len(self.stock(loc.id, sku)) for loc in site.locations.values())


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).date().isoformat()


def build_world(scenario: Scenario, rng: np.random.Generator, truth: GroundTruth, t: float) -> World:
    """The world at virtual time ``t``: every location, antenna and vehicle, and the initial stock in place."""
    sites = [_site(spec, index, t) for index, spec in enumerate(scenario.sites)]
    locations = {loc.id: loc for site in sites for loc in site.locations.values()}
    antennas = {
        reader.id: [Antenna(reader.id, a, locations[a.location]) for a in reader.antennas]
        for spec in scenario.sites
        for reader in spec.readers
    }
    skus = [Sku(spec, index) for index, spec in enumerate(scenario.skus)]
    by_id = {site.id: site for site in sites}
    vehicles = [_vehicle(spec, by_id, t) for spec in scenario.vehicles]
    world = World(scenario, rng, truth, sites, locations, antennas, skus, vehicles)
    for line in scenario.stock:
        _place_stock(world, line, t)
    return world


def _site(spec: SiteSpec, index: int, t: float) -> Site:
    site = Site(spec, index, ZoneInfo(spec.timezone))
    for loc in spec.locations:
        thermal = held_at(loc.setpoint_c if loc.setpoint_c is not None else spec.ambient_c, t)
        site.locations[loc.id] = Location(loc, site, thermal)
    return site


def _vehicle(spec: VehicleSpec, sites: dict[str, Site], t: float) -> Vehicle:
    home = sites[spec.route[0]]
    thermal = Thermal(spec.setpoint_c, t, spec.setpoint_c, REEFER_TAU_S)
    return Vehicle(spec, home, sites[spec.route[1]], thermal, lat=home.spec.lat, lon=home.spec.lon)


def _place_stock(world: World, line: StockSpec, t: float) -> None:
    sku = world.sku(line.sku)
    lot, expires_at = world.new_lot(sku, t)
    if line.expires is not None:
        expires_at = line.expires.timestamp()
    location = world.locations[line.location]
    pallet = None
    for n in range(line.quantity):
        if line.per_pallet and n % line.per_pallet == 0:
            pallet = world.new_pallet()
        index = world.new_item(sku, line.lot or lot, expires_at, pallet)
        world.put(index, location, t, "initial stock")
        world.book.add(location.id, sku.gtin, 1)
