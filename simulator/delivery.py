"""Between device and broker: transport delay, messages a device buffers and sends late, and duplicates.

A message is released to the broker at its creation time plus an exponential transport delay; with
``late_rate`` the device holds it much longer (a store-and-forward reader whose uplink was down, a LoRaWAN
gateway backhaul hiccup), which delivers it after newer messages of the same device: out of order. With
``duplicate_rate`` it is delivered a second time a little later, as a QoS 1 redelivery after a lost PUBACK.
Device clocks (skew) are applied where timestamps are written, not here.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from simulator.formats import TagReport
from simulator.scenario import Physics

REDELIVERY_MEAN_S = 2.0


@dataclass(slots=True)
class Message:
    """One MQTT publication of one simulated device."""

    device_id: str
    format: str
    topic: str
    payload: bytes
    retain: bool = False
    reads: tuple[TagReport, ...] = ()
    buffered: bool = True
    """Whether the device may buffer it and the network duplicate it (not for session state like births)."""
    created_at: float = 0.0


@dataclass
class Delivery:
    physics: Physics
    rng: np.random.Generator
    duplicates: int = 0
    late: int = 0
    _queue: list[tuple[float, int, Message]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def submit(self, message: Message, t: float) -> None:
        message.created_at = t
        release = t + self._delay(message)
        self._push(release, message)
        if message.buffered and self.physics.duplicate_rate and self.rng.random() < self.physics.duplicate_rate:
            self.duplicates += 1
            self._push(release + float(self.rng.exponential(REDELIVERY_MEAN_S)), message)

    def _delay(self, message: Message) -> float:
        delay = float(self.rng.exponential(self.physics.jitter_ms / 1000)) if self.physics.jitter_ms else 0.0
        if message.buffered and self.physics.late_rate and self.rng.random() < self.physics.late_rate:
            self.late += 1
            delay += float(self.rng.exponential(self.physics.late_mean_s))
        return delay

    def _push(self, release: float, message: Message) -> None:
        heapq.heappush(self._queue, (release, next(self._order), message))

    def due(self, t: float) -> list[Message]:
        """Messages whose release time has come, in release order."""
        out = []
        while self._queue and self._queue[0][0] <= t:
            out.append(heapq.heappop(self._queue)[2])
        return out

    def next_release(self) -> float:
        """When the next held message is due (infinity when none is held)."""
        return self._queue[0][0] if self._queue else float("inf")

    def drain(self) -> list[Message]:
        """Everything still held, in release order (the run is ending)."""
        return self.due(float("inf"))

    def __len__(self) -> int:
        return len(self._queue)
