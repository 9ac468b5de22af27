"""Warehouse operations: receiving, put-away, picking, shipping, and the demand that drives them.

Demand per SKU and site follows the scenario's mean per weekday times a weekly profile (Monday … Sunday), drawn
as Poisson counts from the run's seeded generator, so a quiet Saturday and a closed Sunday look like they do
in a real distribution centre. Every movement updates the ground truth, and the ERP's book inventory the way
the business records it: goods receipt at the receiving area, transfers on put-away and picking, goods
issue when the truck leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulator.engine import Simulation
from simulator.scenario import LocationKind, Operations, Storage, parse_clock
from simulator.world import Location, Site, Sku, Vehicle, World

PALLET_SIZE = 24
PALLET_GAP_S = 10.0
MAX_DELIVERY_ITEMS = 240
DOCK_APPROACH_M = 4.0
PRIMARY_SLOT_SHARE = 0.85


def next_local_time(t: float, zone: ZoneInfo, hour: int, minute: int) -> float:
    """The first moment at or after ``t`` when the local clock of ``zone`` reads hour:minute."""
    today = datetime.fromtimestamp(t, zone).date()
    for day in (today, today + timedelta(days=1), today + timedelta(days=2)):
        candidate = datetime.combine(day, time(hour, minute), tzinfo=zone).timestamp()
        if candidate >= t:
            return candidate
    raise AssertionError("a local time recurs within two days")


def local_midnight_after(t: float, zone: ZoneInfo) -> float:
    tomorrow = datetime.fromtimestamp(t, zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0, 0), tzinfo=zone).timestamp()


class Warehouse:
    def __init__(self, sim: Simulation, spec: Operations, rng: np.random.Generator) -> None:
        self.sim = sim
        self.world: World = sim.world
        self.spec = spec
        self.rng = rng
        self.reserved: set[int] = set()
        self.stockouts = 0
        self.shipped = 0
        self.received = 0

    # -- the daily plan -------------------------------------------------------------------------------------

    def start(self, t: float) -> None:
        for site in self.world.sites:
            self._plan_day(site, t, t)
            for wave in self.spec.shipping_waves:
                hour, minute = parse_clock(wave)
                self.sim.at(next_local_time(t, site.zone, hour, minute), self._wave(site, hour, minute))

    def _plan_day(self, site: Site, day_t: float, not_before: float) -> None:
        """Draw the day's orders and deliveries for ``site`` and schedule those still ahead."""
        day = datetime.fromtimestamp(day_t, site.zone).date()
        factor = self.spec.weekday_factors[day.weekday()]
        for at, lines in self._orders(site, day, factor):
            if at >= not_before:
                self.sim.at(at, self._order_action(site, lines))
        for at in self._times(site, day, int(self.rng.poisson(site.spec.deliveries_per_day * factor))):
            if at >= not_before:
                self.sim.at(at, lambda t: self.delivery(site, t))
        midnight = local_midnight_after(day_t, site.zone)
        self.sim.at(midnight, lambda t: self._plan_day(site, t, t))

    def _order_action(self, site: Site, lines: dict[int, int]) -> Callable[[float], None]:
        return lambda t: self.order(site, lines, t)

    def _times(self, site: Site, day: date, count: int) -> list[float]:
        opens, closes = (parse_clock(text) for text in self.spec.working_hours)
        start = datetime.combine(day, time(*opens), tzinfo=site.zone).timestamp()
        end = datetime.combine(day, time(*closes), tzinfo=site.zone).timestamp()
        return sorted(float(x) for x in self.rng.uniform(start, end, count))

    def _orders(self, site: Site, day: date, factor: float) -> list[tuple[float, dict[int, int]]]:
        times = self._times(site, day, int(self.rng.poisson(self.spec.orders_per_day * factor)))
        orders: list[dict[int, int]] = [{} for _ in times]
        for sku in self.world.skus:
            units = int(self.rng.poisson(sku.spec.demand_per_day.get(site.id, 0.0) * factor))
            if units and orders:
                for slot, count in enumerate(self.rng.multinomial(units, [1 / len(orders)] * len(orders))):
                    if count:
                        orders[slot][sku.index] = int(count)
        return [(at, lines) for at, lines in zip(times, orders, strict=True) if lines]

    def _wave(self, site: Site, hour: int, minute: int) -> Callable[[float], None]:
        def ship(t: float) -> None:
            self.sim.at(next_local_time(t + 60, site.zone, hour, minute), ship)
            staged = [i for i in self.world.stock(site.role("shipping").id) if i not in self.reserved]
            if staged:
                self.dispatch(site, staged, t)

        return ship

    # -- movements --------------------------------------------------------------------------------------

    def storage_of(self, site: Site, sku: Sku) -> list[Location]:
        # A site without the right kind of room stores the SKU on its ambient shelves (a cold-chain risk).
        return site.storage(sku.spec.storage) or site.storage(Storage.AMBIENT)

    def pick(self, site: Site, sku: Sku, quantity: int, t: float) -> list[int]:
        """Move up to ``quantity`` units, oldest lot first, from storage to the shipping area."""
        shipping = site.role("shipping")
        candidates = sorted(
            (i for loc in self.storage_of(site, sku) for i in self.world.stock(loc.id, sku.index)),
            key=lambda i: (self.world.items.lot[i], i),
        )
        picked = candidates[:quantity]
        self.stockouts += quantity - len(picked)
        for index in picked:
            self.world.book.move(self.world.items.place[index] or "", shipping.id, sku.gtin)
            self.world.put(index, shipping, t, "picked")
        return picked

    def order(self, site: Site, lines: dict[int, int], t: float) -> None:
        for sku_index, quantity in lines.items():
            self.pick(site, self.world.skus[sku_index], quantity, t)

    def pick_transfer(self, home: Site, destination: Site, capacity: int, t: float) -> list[int]:
        """What a truck takes to ``destination``: each SKU's shortfall there, as far as home has it."""
        picked: list[int] = []
        for sku in self.world.skus:
            target = sku.spec.demand_per_day.get(destination.id, 0.0) * sku.spec.cover_days
            shortfall = round(target) - self.world.site_stock(destination, sku.index)
            if shortfall > 0 and len(picked) < capacity:
                picked += self.pick(home, sku, min(shortfall, capacity - len(picked)), t)
        self.reserved.update(picked)
        return picked

    def _dock_path(self, dock: Location, inbound: bool) -> tuple[tuple[float, float], tuple[float, float]]:
        x, y = dock.spec.at
        outside, inside = (x, y - DOCK_APPROACH_M), (x, y + DOCK_APPROACH_M)
        return (outside, inside) if inbound else (inside, outside)

    def _through_dock(self, site: Site, items: list[int], t: float, inbound: bool,
                      then: Callable[[int, float], None]) -> float:  # fmt: skip
        """Carry items pallet by pallet through one dock door; ``then`` runs for each item as it is through."""
        dock = site.docks[int(self.rng.integers(len(site.docks)))]
        at = t
        for first in range(0, len(items), PALLET_SIZE):
            pallet = items[first : first + PALLET_SIZE]
            # Until its turn a pallet stays where it is: on the truck, or in the staging area.
            self.sim.at(at, self._pallet_through(dock, pallet, inbound, then))
            at += self.spec.dock_passage_s + PALLET_GAP_S
        return at

    def _pallet_through(self, dock: Location, pallet: list[int], inbound: bool,
                        then: Callable[[int, float], None]) -> Callable[[float], None]:  # fmt: skip
        start, end = self._dock_path(dock, inbound)
        passage = self.spec.dock_passage_s

        def move(t: float) -> None:
            for index in pallet:
                jitter = self.rng.uniform(-0.6, 0.6, 2)
                a, b = (start[0] + jitter[0], start[1]), (end[0] + jitter[0], end[1] + jitter[1])
                self.world.carry(index, dock, a, b, t, t + passage, "receiving" if inbound else "shipping")
                self.sim.at(t + passage, _bound(then, index))

        return move

    def dispatch(self, site: Site, items: list[int], t: float, vehicle: Vehicle | None = None) -> float:
        """Items leave through a dock door: into ``vehicle``, or to a customer (goods issue)."""
        shipping = site.role("shipping").id

        def gone(index: int, t: float) -> None:
            gtin = self.world.skus[self.world.items.sku[index]].gtin
            self.reserved.discard(index)
            if vehicle is None:
                self.world.book.add(shipping, gtin, -1)
                self.world.remove(index, t, "shipped")
                self.shipped += 1
            else:
                self.world.book.move(shipping, vehicle.id, gtin)
                self.world.load(index, vehicle, t, "loaded")

        return self._through_dock(site, items, t, inbound=False, then=gone)

    def receive(self, site: Site, items: list[int], t: float, vehicle: Vehicle | None = None) -> float:
        """Items come in through a dock door to the receiving area (goods receipt), then are put away."""
        receiving = site.role("receiving")

        def arrived(index: int, t: float) -> None:
            gtin = self.world.skus[self.world.items.sku[index]].gtin
            if vehicle is None:
                self.world.book.add(receiving.id, gtin, 1)
            else:
                self.world.book.move(vehicle.id, receiving.id, gtin)
            self.world.put(index, receiving, t, "received")
            self.received += 1

        done = self._through_dock(site, items, t, inbound=True, then=arrived)
        delay = self.spec.putaway_delay_min * 60 * float(self.rng.uniform(0.5, 1.5))
        self.sim.at(done + delay, lambda t: self.put_away(site, items, t))
        return done

    def put_away(self, site: Site, items: list[int], t: float) -> None:
        """Received items go to their SKU's usual slot (now and then to another slot of the same kind)."""
        receiving = site.role("receiving").id
        for index in items:
            if self.world.items.place[index] != receiving:
                continue  # already moved on (picked straight from receiving, or lost)
            sku = self.world.skus[self.world.items.sku[index]]
            slots = self.storage_of(site, sku)
            primary = slots[sku.index % len(slots)]
            slot = primary if self.rng.random() < PRIMARY_SLOT_SHARE else slots[int(self.rng.integers(len(slots)))]
            self.world.book.move(receiving, slot.id, sku.gtin)
            self.world.put(index, slot, t, "put away")

    def delivery(self, site: Site, t: float) -> None:
        """A supplier truck with what the site is short of, on pallets with SSCC labels."""
        items: list[int] = []
        for sku in self.world.skus:
            target = sku.spec.demand_per_day.get(site.id, 0.0) * sku.spec.cover_days
            shortfall = round(target) - self.world.site_stock(site, sku.index)
            if shortfall <= 0 or len(items) >= MAX_DELIVERY_ITEMS:
                continue
            lot, expires_at = self.world.new_lot(sku, t)
            quantity = min(shortfall, MAX_DELIVERY_ITEMS - len(items))
            pallet = None
            for n in range(quantity):
                pallet = self.world.new_pallet() if n % PALLET_SIZE == 0 else pallet
                items.append(self.world.new_item(sku, lot, expires_at, pallet))
        if items:
            self.receive(site, items, t)


def _bound(action: Callable[[int, float], None], index: int) -> Callable[[float], None]:
    return lambda t: action(index, t)


def is_storage(location: Location) -> bool:
    return location.spec.role is None and location.kind != LocationKind.DOCK_DOOR
