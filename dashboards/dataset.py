"""A generated warehouse history, written with COPY, for proving and timing the dashboards' queries.

Two sites with dock portals, shelves, a cold room and a freezer, a production line, two reefer trucks between the
sites; readers, sensors and GPS trackers; SKUs and lots; items that arrive, get stored, and leave by the dock, the
line or a truck; RFID reads, sensor values and fixes at a steady cadence; book imports, consumption, dead letters
and alerts. Everything lies in the `days` before `now`, so the boards' relative time ranges ("now-24h") see it and
device health is current.

The tables are those the ingest path and the presence resolver write (read_counts included: the reads per antenna
and minute that ingest keeps); rows are generated rather than passed through them so that 30 days load in seconds
(`stocktrace bench queries`). Loading runs with
session_replication_role = replica: the event-log trigger on location_events (0220) is not what dashboards read,
and the generated rows are consistent by construction.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

_COLD_GTINS: Final = 6  # of every 20 SKUs, these need the cold room (2-8 °C) or the freezer


@dataclass(frozen=True, slots=True)
class Scale:
    """How much history to generate; `for_factor` scales the volumes, not the layout."""

    days: float = 30.0
    items: int = 3000
    skus: int = 20
    shelves_per_site: int = 8
    reads_per_antenna_per_minute: float = 2.0
    sensor_interval_s: float = 300.0
    gps_interval_s: float = 120.0
    read_days: float | None = None  # RFID reads over the last read_days only (one-hour chunks add up); None: days

    @classmethod
    def for_factor(cls, factor: float, days: float = 30.0) -> Scale:
        return cls(
            days=days,
            items=max(50, int(3000 * factor)),
            reads_per_antenna_per_minute=2.0 * factor,
        )


@dataclass
class Counts:
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, count: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True, slots=True)
class _Site:
    id: str
    lat: float
    lon: float
    shelves: tuple[str, ...]

    @property
    def dock(self) -> str:
        return f"{self.id}-dock-1"

    @property
    def cold(self) -> str:
        return f"{self.id}-cold"

    @property
    def freezer(self) -> str:
        return f"{self.id}-freezer"

    @property
    def line(self) -> str:
        return f"{self.id}-line"


@dataclass
class _World:
    now: datetime
    start: datetime
    scale: Scale
    rng: random.Random
    sites: list[_Site] = field(default_factory=list)
    antennas: list[tuple[str, int, str, str | None]] = field(default_factory=list)  # device, port, location, side
    sensors: list[tuple[str, str, float, float]] = field(default_factory=list)  # device, location, setpoint, sd
    trackers: list[tuple[str, str]] = field(default_factory=list)  # device, vehicle
    gtins: list[str] = field(default_factory=list)
    epcs: list[str] = field(default_factory=list)


def _copy(conn: psycopg.Connection[Any], table: str, names: str, rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with conn.cursor().copy(f"copy {table} ({names}) from stdin".encode()) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def load(conn: psycopg.Connection[Any], scale: Scale, *, now: datetime | None = None, seed: int = 7) -> Counts:
    """Fill an empty, migrated database; returns the rows written per table."""
    now = now or datetime.now(UTC)
    world = _World(now, now - timedelta(days=scale.days), scale, random.Random(seed))
    counts = Counts()
    conn.execute("set session_replication_role = replica")
    try:
        steps: list[Callable[[psycopg.Connection[Any], _World, Counts], None]] = [
            _registry, _catalogue, _items, _reads, _read_counts, _telemetry, _activity, _books, _dead_letters,
            _alerts,
        ]  # fmt: skip
        for step in steps:
            step(conn, world, counts)
    finally:
        conn.execute("set session_replication_role = origin")
    day = world.start.date()
    conn.execute("select refresh_consumption(%s, %s)", (day, now.date()))
    counts.add("consumption_daily", _scalar(conn, "select count(*) from consumption_daily"))
    conn.execute("analyze")
    return counts


def _scalar(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


# ----------------------------------------------------------------------------------------------------


def _registry(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    locations: list[tuple[Any, ...]] = []
    devices: list[tuple[Any, ...]] = []
    for number, (lat, lon) in enumerate([(52.40, 13.50), (52.52, 13.00)], start=1):
        site = _Site(
            f"site-{number}", lat, lon, tuple(f"site-{number}-s-{k:02d}" for k in range(world.scale.shelves_per_site))
        )
        world.sites.append(site)
        fence = {"type": "Polygon", "coordinates": [[[lon - 0.01, lat - 0.01], [lon + 0.01, lat - 0.01],
                                                      [lon + 0.01, lat + 0.01], [lon - 0.01, lat + 0.01],
                                                      [lon - 0.01, lat - 0.01]]]}  # fmt: skip
        locations += [
            (site.id, site.id, None, "site", f"Site {number}", "Europe/Berlin", _json(fence), None, None),
            (f"{site.id}-zone", site.id, site.id, "zone", "Ambient", None, None, 15.0, 25.0),
            (site.dock, site.id, site.id, "dock_door", "Dock 1", None, None, None, None),
            (site.cold, site.id, site.id, "cold_room", "Cold room", None, None, 2.0, 8.0),
            (site.freezer, site.id, site.id, "freezer", "Freezer", None, None, -25.0, -18.0),
            (site.line, site.id, site.id, "zone", "Production line", None, None, None, None),
        ]
        locations += [
            (shelf, site.id, f"{site.id}-zone", "shelf", None, None, None, None, None) for shelf in site.shelves
        ]
        devices.append((f"{site.id}-portal", "rfid_reader", "zebra-fx", site.dock))
        world.antennas += [(f"{site.id}-portal", 1, site.dock, "out"), (f"{site.id}-portal", 2, site.dock, "in")]
        for k in range(0, len(site.shelves), 4):
            reader = f"{site.id}-shelves-{k // 4 + 1}"
            devices.append((reader, "rfid_reader", "impinj-r700", f"{site.id}-zone"))
            world.antennas += [(reader, port + 1, shelf, None) for port, shelf in enumerate(site.shelves[k : k + 4])]
        devices.append((f"{site.id}-cold-gw", "rfid_reader", "native", site.cold))
        world.antennas += [(f"{site.id}-cold-gw", 1, site.cold, None), (f"{site.id}-cold-gw", 2, site.freezer, None)]
        for device, location, setpoint, spread in [
            (f"{site.id}-cold-t", site.cold, 4.5, 1.2), (f"{site.id}-freezer-t", site.freezer, -21.0, 1.5),
            (f"{site.id}-env", f"{site.id}-zone", 20.0, 2.0),
        ]:  # fmt: skip
            devices.append((device, "sensor", "tasmota", location))
            world.sensors.append((device, location, setpoint, spread))
    for number in (1, 2):
        truck = f"truck-{number}"
        locations.append((truck, "site-1", "site-1", "vehicle", f"Reefer {number}", None, None, 2.0, 8.0))
        devices += [(f"{truck}-gps", "gps_tracker", "owntracks", truck), (f"{truck}-reefer", "sensor", "ttn-v3", truck)]
        world.trackers.append((f"{truck}-gps", truck))
        world.sensors.append((f"{truck}-reefer", truck, 5.0, 1.0))
    counts.add("locations", _copy(
        conn, "locations",
        "id, site_id, parent_id, kind, name, timezone, geofence, temperature_min_c, temperature_max_c", locations,
    ))  # fmt: skip
    counts.add("devices", _copy(conn, "devices", "id, kind, source, location_id", devices))
    counts.add("antennas", _copy(conn, "antennas", "device_id, antenna, location_id, side", world.antennas))
    counts.add("consumption_points", _copy(
        conn, "consumption_points", "location_id, note", [(s.line, "production line") for s in world.sites]
    ))  # fmt: skip


def _json(value: object) -> str:
    return json.dumps(value)


def _catalogue(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    skus, lots = [], []
    for n in range(world.scale.skus):
        gtin = f"0401234500{n:03d}{(n * 7) % 10}"
        world.gtins.append(gtin)
        cold = n < _COLD_GTINS
        band = (2.0, 8.0) if cold and n % 2 == 0 else (-25.0, -18.0) if cold else (None, None)
        skus.append((gtin, f"Product {n:02d}", band[0], band[1], 2.0 + n % 5, 4.0 + n, 50.0, 0.25,
                     10 if n % 4 == 0 else None))  # fmt: skip
        lots += [(f"L{n:02d}-{k}", gtin, (world.now + timedelta(days=30 * (k + 1))).date(), world.start)
                 for k in range(3)]  # fmt: skip
    counts.add("skus", _copy(
        conn, "skus",
        "gtin, name, temperature_min_c, temperature_max_c, lead_time_days, unit_cost, order_cost, "
        "holding_cost_rate, reorder_minimum_units", skus,
    ))  # fmt: skip
    counts.add("lots", _copy(conn, "lots", "lot, gtin, expires_on, produced_at", lots))


def _storage(world: _World, site: _Site, gtin_index: int) -> str:
    if gtin_index < _COLD_GTINS:
        return site.cold if gtin_index % 2 == 0 else site.freezer
    return site.shelves[world.rng.randrange(len(site.shelves))]


def _items(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    rng, span = world.rng, (world.now - world.start).total_seconds()
    items: list[tuple[Any, ...]] = []
    states: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for n in range(world.scale.items):
        gtin_index = n % len(world.gtins)
        epc = f"3074257BF7194E4{n:09X}"
        world.epcs.append(epc)
        site = world.sites[n % len(world.sites)]
        arrived = world.start + timedelta(seconds=rng.uniform(0, span * 0.9))
        items.append((epc, "sgtin-96", world.gtins[gtin_index], str(n), None, f"L{gtin_index:02d}-{n % 3}", arrived))
        stored, place = arrived + timedelta(minutes=10), _storage(world, site, gtin_index)
        events += [(arrived, epc, "arrived", None, site.dock, "in"), (stored, epc, "moved", site.dock, place, None)]
        state = (epc, place, site.id, "present", stored, world.now - timedelta(minutes=rng.uniform(1, 60)),
                 None, None, None)  # fmt: skip
        leaves = arrived + timedelta(seconds=rng.uniform(3600, span))
        if leaves < world.now and n % 5 < 2:
            state, more = _departure(world, site, epc, place, leaves, n)
            events += more
        states.append(state)
    counts.add("items", _copy(conn, "items", "epc, scheme, gtin, serial, sscc, lot, first_seen_at", items))
    counts.add("item_state", _copy(
        conn, "item_state",
        "epc, location_id, site_id, status, since, last_seen_at, container_epc, latitude, longitude", states,
    ))  # fmt: skip
    counts.add("location_events", _copy(
        conn, "location_events", "at, epc, kind, from_location, to_location, direction", events
    ))  # fmt: skip


def _departure(
    world: _World, site: _Site, epc: str, place: str, leaves: datetime, n: int
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """Out by the dock (and, for some, aboard a truck still on the road), or into the production line."""
    if n % 10 == 1:
        return (
            (epc, site.line, site.id, "present", leaves, leaves, None, None, None),
            [(leaves, epc, "moved", place, site.line, None)],
        )
    events: list[tuple[Any, ...]] = [(leaves, epc, "moved", place, site.dock, "out")]
    if n % 20 == 0:
        truck = world.trackers[n % len(world.trackers)][1]
        aboard = min(leaves + timedelta(minutes=5), world.now)
        events.append((aboard, epc, "moved", site.dock, truck, None))
        lat, lon = _truck_position(world, n % len(world.trackers), world.now)
        return (epc, truck, None, "in_transit", aboard, world.now, None, lat, lon), events
    return (epc, None, None, "departed", leaves, leaves, None, None, None), events


def _truck_position(world: _World, truck: int, at: datetime) -> tuple[float, float]:
    """Trucks shuttle between the two sites, one leg every four hours."""
    a, b = world.sites[0], world.sites[1]
    phase = ((at - world.start).total_seconds() / 14_400 + truck * 0.5) % 2
    f = phase if phase < 1 else 2 - phase
    return a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f


def _reads(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    """Steady reads on every antenna; written as COPY text in blocks, the bulk of the data set."""
    step = timedelta(seconds=60.0 / world.scale.reads_per_antenna_per_minute)
    start = world.now - timedelta(days=world.scale.read_days or world.scale.days)
    steps = int((world.now - start) / step)
    rng, epcs = world.rng, world.epcs
    written = 0
    with conn.cursor().copy(
        b"copy rfid_reads (read_at, device_id, antenna, epc, rssi_dbm, received_at) from stdin"
    ) as copy:
        for index, (device, port, _, _) in enumerate(world.antennas):
            # Each antenna reads on its own offset, so (read_at, device, antenna) never repeats.
            first = start + timedelta(microseconds=index * 997)
            for block in range(0, steps, 50_000):
                lines = []
                for k in range(block, min(block + 50_000, steps)):
                    at = first + k * step
                    lag = timedelta(milliseconds=80 + (k * 37 + index) % 400)
                    epc = epcs[rng.randrange(len(epcs))]
                    lines.append(
                        f"{at.isoformat()}\t{device}\t{port}\t{epc}\t{-55 - k % 20}\t{(at + lag).isoformat()}\n"
                    )
                copy.write("".join(lines).encode())
                written += len(lines)
    counts.add("rfid_reads", written)


# What migration 0002 does for a database's existing reads.
_COUNT_READS: Final = {
    "read_counts": """
        insert into read_counts (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
        select time_bucket('1 minute', read_at), device_id, antenna, count(*),
               sum(date_part('epoch', received_at - read_at)), max(date_part('epoch', received_at - read_at))
        from rfid_reads
        group by 1, 2, 3""",
    "read_counts_5m": """
        insert into read_counts_5m (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
        select time_bucket('5 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
        from read_counts
        group by 1, 2, 3""",
    "read_counts_30m": """
        insert into read_counts_30m (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
        select time_bucket('30 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
        from read_counts_5m
        group by 1, 2, 3""",
}


def _read_counts(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    """What ingest keeps beside the reads (ingest/read_counts.py): reads per antenna and minute, five minutes and
    half hour, with their lag; counted from the generated reads."""
    for table, statement in _COUNT_READS.items():
        counts.add(table, conn.execute(statement.encode()).rowcount)


def _temperature(world: _World, setpoint: float, spread: float, at: datetime, index: int) -> float:
    hours = (at - world.start).total_seconds() / 3600
    value = setpoint + spread * math.sin(hours / 24 * 2 * math.pi + index) + world.rng.gauss(0, spread / 4)
    # A door left open: twice a week each sensor reads well above its band for about an hour.
    if int(hours) % 84 == index % 84:
        value += 6 + spread
    return value


def _telemetry(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    def rows() -> Iterator[tuple[Any, ...]]:
        steps = int((world.now - world.start).total_seconds() / world.scale.sensor_interval_s)
        for index, (device, _, setpoint, spread) in enumerate(world.sensors):
            for k in range(steps):
                at = world.start + timedelta(seconds=k * world.scale.sensor_interval_s + index)
                yield (
                    at,
                    device,
                    "temperature_c",
                    _temperature(world, setpoint, spread, at, index),
                    None,
                    None,
                    None,
                    at,
                )
                if device.endswith("-env"):
                    yield at, device, "humidity_pct", 45 + 10 * math.sin(k / 50), None, None, None, at
                if k % 288 == 0:
                    battery = 100 - 60 * k / steps - index
                    yield at, device, "battery_pct", battery, None, None, None, at
                    yield at, device, "battery_v", 2.6 + battery / 250, None, None, None, at
        steps = int((world.now - world.start).total_seconds() / world.scale.gps_interval_s)
        for truck, (device, _) in enumerate(world.trackers):
            for k in range(steps):
                at = world.start + timedelta(seconds=k * world.scale.gps_interval_s + truck)
                lat, lon = _truck_position(world, truck, at)
                yield at, device, "position", None, lat, lon, 22.0, at + timedelta(seconds=2)

    counts.add("telemetry", _copy(
        conn, "telemetry", "observed_at, device_id, quantity, value, latitude, longitude, speed_mps, received_at",
        rows(),
    ))  # fmt: skip


def _activity(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    now = world.now
    devices = sorted({a[0] for a in world.antennas} | {s[0] for s in world.sensors} | {t[0] for t in world.trackers})
    # One sensor fell silent two hours ago; one reader announced itself offline by its last will.
    silent, down = "site-2-env", "site-2-cold-gw"
    last_seen = {silent: now - timedelta(hours=2), down: now - timedelta(minutes=2)}
    activity = [(d, world.start, last_seen.get(d, now - timedelta(seconds=5)), f"{d}/data", 1000) for d in devices]
    counts.add("device_activity", _copy(
        conn, "device_activity", "device_id, first_seen_at, last_seen_at, last_topic, messages", activity
    ))  # fmt: skip
    antennas = [(d, port, now - timedelta(seconds=5), 1000) for d, port, _, _ in world.antennas]
    counts.add("antenna_activity", _copy(conn, "antenna_activity", "device_id, antenna, last_read_at, reads", antennas))
    events = [
        (now - timedelta(minutes=1), down, -1, False, "last_will", now - timedelta(minutes=1)),
        (now - timedelta(hours=3), "site-1-portal", 2, False, "antenna_disconnected", now - timedelta(hours=3)),
    ]
    counts.add("device_events", _copy(
        conn, "device_events", "observed_at, device_id, antenna, online, reason, received_at", events
    ))  # fmt: skip


def _books(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    """The ERP's book per storage location and GTIN: what is there, off by a unit here and there."""
    held: dict[tuple[str, str], int] = {}
    for row in conn.execute(
        "select s.location_id, i.gtin, count(*) from item_state s join items i on i.epc = s.epc"
        " where s.status = 'present' group by 1, 2"
    ):
        held[(str(row[0]), str(row[1]))] = int(row[2])
    as_of = world.now - timedelta(hours=1)
    for site in world.sites:
        imported = conn.execute(
            "insert into book_imports (source, as_of, complete_for, lines_accepted, lines_rejected)"
            " values ('erp', %s, %s, 0, 0) returning id",
            (as_of, site.id),
        ).fetchone()
        assert imported is not None
        lines = [
            (imported[0], gtin, location, max(0, units + world.rng.choice((0, 0, 0, 1, -1, 3))), as_of)
            for (location, gtin), units in sorted(held.items())
            if location.startswith(site.id)
        ]
        counts.add("book_lines", _copy(conn, "book_lines", "import_id, gtin, location_id, quantity, as_of", lines))


def _dead_letters(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    steps = int((world.now - world.start).total_seconds() / 1200)
    rows = (
        (world.start + timedelta(seconds=k * 1200), "zebra/site-1-portal/data", b'{"truncated', "invalid JSON")
        for k in range(steps)
    )
    counts.add("dead_letters", _copy(conn, "dead_letters", "received_at, topic, payload, error", rows))


def _alerts(conn: psycopg.Connection[Any], world: _World, counts: Counts) -> None:
    """Two alerts a day, each resolved after two hours, the last six still firing; names as alerts/rules_*.py."""
    rows = []
    total = int(world.scale.days * 2)
    for k in range(total):
        site = world.sites[k % len(world.sites)]
        starts = world.start + timedelta(hours=12 * k)
        resolved = k < total - 6
        name, severity, subject, labels, annotations = _alert(world, k, site)
        rows.append((
            f"{k:016x}", name, subject, severity, _json({"alertname": name, "severity": severity, "subject": subject,
                                                        **labels}),
            _json({"summary": f"{name} at {subject}", **annotations}), name,
            "resolved" if resolved else "firing", starts, starts + timedelta(minutes=5),
            starts + timedelta(hours=2) if resolved else None, world.now,
        ))  # fmt: skip
    counts.add("alerts", _copy(
        conn, "alerts",
        "fingerprint, alertname, subject, severity, labels, annotations, group_key, state, starts_at, fires_at, "
        "ends_at, evaluated_at",
        rows,
    ))  # fmt: skip


def _alert(world: _World, k: int, site: _Site) -> tuple[str, str, str, dict[str, str], dict[str, str]]:
    if k % 3 == 0:
        return "TemperatureExcursion", "critical", site.cold, {"location": site.cold, "site": site.id}, {}
    if k % 3 == 1:
        device = f"{site.id}-env"
        return "DeviceOffline", "warning", device, {"device": device, "site": site.id}, {}
    gtin = world.gtins[k % len(world.gtins)]
    place = site.shelves[k % len(site.shelves)]
    labels = {"gtin": gtin, "location": place, "site": site.id}
    return "LowStock", "warning", f"{gtin}@{place}", labels, {"reorder_point": "12", "suggested_order_units": "40"}
