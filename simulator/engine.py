"""The discrete-event core: an agenda of actions on the virtual clock, devices reporting, messages released.

Nothing steps through idle time: the loop jumps from one scheduled action (a reader's report, a delivery,
a fault) or held message to the next, waiting on the clock only when the run is paced (real time, or an
accelerated run with a speed).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from simulator.delivery import Delivery, Message
from simulator.hardware import SimDevice
from simulator.publisher import Sink
from simulator.world import World

Action = Callable[[float], None]
PROGRESS_EVERY_S = 1.0
MAX_WAIT_S = 0.25


class Clock:
    """Virtual time, optionally paced against the wall clock: ``speed`` virtual seconds per real second."""

    def __init__(self, start: float, speed: float | None) -> None:
        self.start = start
        self.speed = speed
        self.real_start = time.monotonic()

    def wait_until(self, t: float, stop: threading.Event, pump: Callable[[float], None]) -> bool:
        """Wait until virtual time ``t`` is due, pumping the network meanwhile; False if the run was stopped."""
        if self.speed is not None:
            deadline = self.real_start + (t - self.start) / self.speed
            while (delay := deadline - time.monotonic()) > 0 and not stop.is_set():
                pump(min(delay, MAX_WAIT_S))
        return not stop.is_set()


@dataclass
class RunStats:
    """Counts of a run so far; what the progress callback receives."""

    virtual_time: float = 0.0
    messages: Counter[str] = field(default_factory=Counter)
    """Messages published, by format (duplicates included)."""
    reads: int = 0
    """Tag reads published (a duplicated message counts its reads twice)."""
    wills: int = 0
    births: int = 0
    events: int = 0
    real_elapsed_s: float = 0.0


class Simulation:
    def __init__(self, world: World, delivery: Delivery, sink: Sink, clock: Clock, end: float,
                 stop: threading.Event, progress: Callable[[RunStats], None] | None = None) -> None:  # fmt: skip
        self.world = world
        self.devices: dict[str, SimDevice] = {}
        self.delivery = delivery
        self.sink = sink
        self.clock = clock
        self.end = end
        self.stop = stop
        self.progress = progress
        self.now = clock.start
        self.stats = RunStats(virtual_time=clock.start)
        self._agenda: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._held: dict[str, list[Message]] = defaultdict(list)
        self._last_progress = time.monotonic()

    def at(self, t: float, action: Action) -> None:
        heapq.heappush(self._agenda, (t, next(self._order), action))

    def emit(self, messages: Iterable[Message], t: float) -> None:
        for message in messages:
            self.delivery.submit(message, t)

    def add_devices(self, devices: Iterable[SimDevice]) -> None:
        self.devices.update((device.id, device) for device in devices)

    def connect_all(self) -> None:
        self.sink.open([device.link(self.now) for device in self.devices.values()])
        for device in self.devices.values():
            self._publish_now(device.birth(self.now))
            self.at(self.now + float(device.rng.uniform(0.0, device.interval_s)), self._reporter(device))

    def _reporter(self, device: SimDevice) -> Action:
        def tick(t: float) -> None:
            if device.online and not device.silent:
                self.emit(device.report(t), t)
            self.at(t + device.interval_s, tick)

        return tick

    def take_offline(self, device: SimDevice, with_will: bool) -> None:
        device.online = False
        self.sink.disconnect(device.id, with_will)
        self.stats.wills += with_will and device.will(self.now) is not None

    def bring_online(self, device: SimDevice) -> None:
        self.sink.reconnect(device.link(self.now))
        device.online = True
        self._publish_now(device.birth(self.now))
        for message in self._held.pop(device.id, []):
            self._publish(message)

    def _publish_now(self, messages: list[Message]) -> None:
        for message in messages:
            self.stats.births += 1
            self._publish(message)

    def _publish(self, message: Message) -> None:
        device = self.devices.get(message.device_id)
        if device is not None and not device.online:
            self._held[message.device_id].append(message)  # the device keeps it until it is back
            return
        self.sink.publish(message)
        self.stats.messages[message.format] += 1
        self.stats.reads += len(message.reads)
        log = self.world.truth.reads
        for read in message.reads:
            log.add(read.epc, read.at_ms, read.antenna, message.device_id, message.format)

    def run(self) -> None:
        while not self.stop.is_set():
            next_action = self._agenda[0][0] if self._agenda else math.inf
            t = min(next_action, self.delivery.next_release())
            if t > self.end or t == math.inf or not self.clock.wait_until(t, self.stop, self.sink.pump):
                break
            self.now = t
            if self.delivery.next_release() <= next_action:
                for message in self.delivery.due(t):
                    self._publish(message)
            else:
                heapq.heappop(self._agenda)[2](t)
                self.stats.events += 1
                self._answer_commands(t)
            self._report_progress()
        self.now = min(max(self.now, self.clock.start), self.end)

    def finish(self) -> None:
        """Deliver what devices still hold; what offline devices hold is lost with them."""
        for message in self.delivery.drain():
            self._publish(message)
        self._report_progress(force=True)

    def _answer_commands(self, t: float) -> None:
        for device_id, payload in self.sink.commands():
            device = self.devices.get(device_id)
            if device is not None and device.online:
                self._publish_now(device.command(payload, t))

    def _report_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.stats.virtual_time = self.now
            self.stats.real_elapsed_s = now - self.clock.real_start
            self.progress(self.stats)
