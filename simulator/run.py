"""Run a scenario: the Python entry point the CLI and the demo call. It prints nothing.

    from simulator.world import load_scenario
    from simulator.run import run

    result = run(load_scenario(), mode="accelerated", mqtt=("127.0.0.1", 1883), duration_s=3600)
    result.truth.location("3034...")        # where an item really is
    result.messages                          # what was published, by format

``mode="realtime"`` runs on the wall clock until ``duration_s`` passes or ``stop`` is set;
``mode="accelerated"`` runs on a virtual clock, as fast as it can (``speed=None``) or ``speed`` virtual
seconds per real second, and device timestamps come from that clock. The load benchmark is
`simulator.load.run_load`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from simulator.delivery import Delivery
from simulator.engine import Clock, RunStats, Simulation
from simulator.erp import DEFAULT_EVERY_S as DEFAULT_BOOK_EVERY_S
from simulator.erp import BookExport
from simulator.faults import Faults, plan, random_plan
from simulator.fleet import Fleet
from simulator.hardware import Reader, ReeferUnit, Sensor, SimDevice, Tracker
from simulator.operations import Warehouse
from simulator.publisher import MemorySink, MqttSink, Sink
from simulator.scenario import Physics, Scenario
from simulator.truth import FaultRecord, GroundTruth, iso
from simulator.world import World, build_world

Mode = Literal["realtime", "accelerated"]
DEFAULT_ACCELERATED_S = 8 * 3600.0
RANDOM_FAULT_HORIZON_S = 30 * 86400.0


@dataclass
class RunResult:
    """What a run did; ``truth`` holds where everything really was."""

    scenario: str
    mode: str
    seed: int
    started_at: float
    ended_at: float
    real_elapsed_s: float
    messages: dict[str, int]
    reads_published: int
    duplicates: int
    late: int
    wills: int
    cross_reads: int
    tag_reads: int
    operations: dict[str, int]
    truth: GroundTruth
    topic_prefix: str = ""
    real_started_at: float = 0.0
    """Wall-clock time (epoch seconds) the run began: stocktrace stamps what it receives with this clock."""
    faults_skipped: int = 0
    formats: dict[str, list[str]] = field(default_factory=dict)
    """Format → device ids publishing in it."""

    @property
    def faults(self) -> list[FaultRecord]:
        return self.truth.faults

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "mode": self.mode, "seed": self.seed,
            "virtual_start": iso(self.started_at), "virtual_end": iso(self.ended_at),
            "virtual_s": round(self.ended_at - self.started_at, 3), "real_s": round(self.real_elapsed_s, 3),
            "messages": dict(sorted(self.messages.items())), "messages_total": sum(self.messages.values()),
            "reads_published": self.reads_published, "reads_distinct": sum(1 for _ in self.truth.reads.distinct()),
            "duplicates": self.duplicates, "late": self.late, "wills": self.wills,
            "cross_read_share": round(self.cross_reads / self.tag_reads, 4) if self.tag_reads else 0.0,
            "operations": self.operations, "items": len(self.truth.items),
            "faults": [{k: v for k, v in f.as_json().items() if k != "type"} for f in self.truth.faults],
            "faults_skipped": self.faults_skipped, "topic_prefix": self.topic_prefix,
        }  # fmt: skip


def run(
    scenario: Scenario,
    *,
    mode: Mode = "accelerated",
    mqtt: tuple[str, int] | None = ("127.0.0.1", 1883),
    sink: Sink | None = None,
    speed: float | None = None,
    duration_s: float | None = None,
    start: float | None = None,
    seed: int | None = None,
    truth_path: Path | None = None,
    topic_prefix: str = "",
    credentials: tuple[str, str] | None = None,
    ideal: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[RunStats], None] | None = None,
    book: BookExport | None = None,
    book_every_s: float = DEFAULT_BOOK_EVERY_S,
) -> RunResult:
    """Run ``scenario`` and return what happened. ``mqtt=None`` without a ``sink`` keeps messages in memory.

    ``book`` receives the ERP's book at the start and every ``book_every_s`` of virtual time (simulator/erp.py
    imports it into stocktrace). Raises `simulator.publisher.PublishError` when the broker
    cannot be reached.
    """
    seed = scenario.seed if seed is None else seed
    first, end = _window(scenario, mode, duration_s, start)
    pace = 1.0 if mode == "realtime" else speed
    stop = stop or threading.Event()
    if sink is None:
        sink = MemorySink() if mqtt is None else MqttSink(*mqtt, topic_prefix, *(credentials or (None, None)))
    with ExitStack() as files:
        out: IO[bytes] | None = files.enter_context(truth_path.open("wb")) if truth_path else None
        truth = GroundTruth(out)
        world_rng, device_rng, ops_rng, fault_rng, net_rng = np.random.default_rng(seed).spawn(5)
        truth.begin(first, {"scenario": scenario.name, "seed": seed, "mode": mode, "topic_prefix": topic_prefix})
        world = build_world(scenario, world_rng, truth, first)
        truth.book(world.book.snapshot(), first, at_start=True)
        physics = scenario.physics.ideal() if ideal else scenario.physics
        sim = Simulation(world, Delivery(physics, net_rng), sink, Clock(first, pace), end, stop, progress)
        if book is not None:
            _export_book(sim, book, book_every_s)
        return _simulate(sim, scenario, physics, (device_rng, ops_rng, fault_rng), mode, seed, topic_prefix)


def _export_book(sim: Simulation, book: BookExport, every_s: float) -> None:
    """Schedule the ERP's exports. None at the run's end: a book is judged against reads made after it, and
    after the end there are none."""

    def export(t: float) -> None:
        book(sim.world.book.snapshot(), t)
        if every_s > 0 and t + every_s < sim.end:
            sim.at(t + every_s, export)

    sim.at(sim.now, export)


def _window(scenario: Scenario, mode: Mode, duration_s: float | None, start: float | None) -> tuple[float, float]:
    if mode == "realtime":
        first = time.time() if start is None else start
        return first, first + duration_s if duration_s is not None else math.inf
    duration = DEFAULT_ACCELERATED_S if duration_s is None else duration_s
    if start is None:
        start = scenario.start.timestamp() if scenario.start is not None else float(int(time.time() - duration))
    return start, start + duration


def _simulate(sim: Simulation, scenario: Scenario, physics: Physics, rngs: tuple[np.random.Generator, ...],
              mode: str, seed: int, prefix: str) -> RunResult:  # fmt: skip
    device_rng, ops_rng, fault_rng = rngs
    real_start, wall_start = time.monotonic(), time.time()
    warehouse = Warehouse(sim, scenario.operations, ops_rng)
    fleet = Fleet(sim, warehouse, ops_rng)
    sim.add_devices(build_devices(sim.world, physics, fleet, device_rng))
    faults = Faults(sim, fleet, fault_rng)
    first = sim.now
    try:
        sim.connect_all()
        warehouse.start(first)
        fleet.start(first)
        horizon = sim.end if sim.end != math.inf else first + RANDOM_FAULT_HORIZON_S
        faults.schedule(
            plan(scenario.faults, first) + random_plan(dict(scenario.random_faults), first, horizon, fault_rng)
        )
        sim.run()
        sim.finish()
    finally:
        sim.sink.close()
    result = _result(sim, scenario, mode, seed, prefix, warehouse, faults, time.monotonic() - real_start)
    result.real_started_at = wall_start
    return result


def _result(sim: Simulation, scenario: Scenario, mode: str, seed: int, prefix: str, warehouse: Warehouse,
            faults: Faults, real_s: float) -> RunResult:  # fmt: skip
    truth = sim.world.truth
    end = sim.now
    truth.book(sim.world.book.snapshot(), end, at_start=False)
    readers = [d for d in sim.devices.values() if isinstance(d, Reader)]
    operations = {"received": warehouse.received, "shipped": warehouse.shipped, "stockouts": warehouse.stockouts}
    formats: dict[str, list[str]] = {}
    for device in sim.devices.values():
        formats.setdefault(device.format, []).append(device.id)
    result = RunResult(
        scenario=scenario.name,
        mode=mode,
        seed=seed,
        started_at=truth.started_at or sim.clock.start,
        ended_at=end,
        real_elapsed_s=real_s,
        messages=dict(sim.stats.messages),
        reads_published=sim.stats.reads,
        duplicates=sim.delivery.duplicates,
        late=sim.delivery.late,
        wills=sim.stats.wills,
        cross_reads=sum(r.cross_reads for r in readers),
        tag_reads=sum(r.tag_reads for r in readers),
        operations=operations,
        truth=truth,
        topic_prefix=prefix,
        faults_skipped=len(faults.skipped),
        formats=formats,
    )
    truth.finish(end, {k: v for k, v in result.as_json().items() if k not in ("faults",)})
    return result


def build_devices(world: World, physics: Physics, fleet: Fleet, rng: np.random.Generator) -> list[SimDevice]:
    """Every device of the scenario, each with its own clock offset."""

    def skew() -> float:
        return float(rng.normal(0.0, physics.clock_skew_s)) if physics.clock_skew_s else 0.0

    devices: list[SimDevice] = []
    for site in world.sites:
        for reader in site.spec.readers:
            devices.append(Reader(reader.id, reader.format.value, reader.report_interval_s, skew(), rng, spec=reader,
                                  antennas=world.antennas[reader.id], world=world, physics=physics,
                                  site_index=site.index))  # fmt: skip
        for sensor in site.spec.sensors:
            battery = sensor.battery_pct if sensor.battery_pct is not None else 100.0
            devices.append(Sensor(sensor.id, sensor.format.value, sensor.interval_s, skew(), rng, spec=sensor,
                                  location=world.locations[sensor.location], battery=battery))  # fmt: skip
    for vehicle in world.vehicles:
        tracker, reefer = vehicle.spec.tracker, vehicle.spec.reefer
        devices.append(Tracker(tracker.id, tracker.format, tracker.interval_s, skew(), rng, vehicle=vehicle,
                               position=fleet.position, user=tracker.user))  # fmt: skip
        devices.append(ReeferUnit(reefer.id, reefer.format, reefer.interval_s, skew(), rng, vehicle=vehicle,
                                  group=reefer.group))  # fmt: skip
    return devices


async def run_async(scenario: Scenario, **options: Any) -> RunResult:
    """`run` in a worker thread, for an asyncio application; set ``stop`` (a threading.Event) to end it."""
    return await asyncio.to_thread(run, scenario, **options)
