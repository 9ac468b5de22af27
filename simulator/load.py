"""Load mode: N native-format readers publishing M reads per second in total, for the benchmarks.

The work is split over several processes, each with its own MQTT v5 connection publishing at QoS 1 and
reading its acknowledgements on the same thread, so that the Python publisher is not what limits a modest
rate. Each process paces itself against the clock; the achieved rate is what the broker acknowledged.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulator.gs1 import gtin_check_digit, sgtin96

COMPANY_PREFIX = "4012345"
EPC_POOL = 10_000
SLICE_S = 0.005
MAX_UNACKED = 20_000
MAX_INFLIGHT = 500


@dataclass(frozen=True)
class LoadResult:
    devices: int
    processes: int
    target_reads_per_s: float
    reads_per_message: int
    messages_sent: int
    messages_acked: int
    reads_acked: int
    elapsed_s: float

    @property
    def msgs_per_s(self) -> float:
        return self.messages_acked / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def reads_per_s(self) -> float:
        return self.reads_acked / self.elapsed_s if self.elapsed_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices, "processes": self.processes, "target_reads_per_s": self.target_reads_per_s,
            "reads_per_message": self.reads_per_message, "messages_sent": self.messages_sent,
            "messages_acked": self.messages_acked, "elapsed_s": round(self.elapsed_s, 3),
            "msgs_per_s": round(self.msgs_per_s, 1), "reads_per_s": round(self.reads_per_s, 1),
            "achieved_pct": round(100.0 * self.reads_per_s / self.target_reads_per_s, 1),
        }  # fmt: skip


@dataclass(frozen=True)
class _Share:
    index: int
    host: str
    port: int
    prefix: str
    devices: list[str]
    reads_per_s: float
    batch: int
    duration_s: float
    seed: int


def epc_pool(size: int, seed: int) -> list[str]:
    """SGTIN-96 EPCs of a handful of GTINs, as a shop floor would show them."""
    rng = np.random.default_rng(seed)
    gtins = [f"0{COMPANY_PREFIX}{n:05d}" for n in range(1, 21)]
    gtins = [g + str(gtin_check_digit(g)) for g in gtins]
    return [sgtin96(gtins[int(rng.integers(len(gtins)))], COMPANY_PREFIX, serial) for serial in range(1, size + 1)]


def _payload(epcs: list[str], antenna: int, rssi: float, at_ms: int) -> bytes:
    if len(epcs) == 1:
        return b'{"epc":"%s","antenna":%d,"rssi_dbm":%.1f,"at":%d}' % (epcs[0].encode(), antenna, rssi, at_ms)
    reads = b",".join(b'{"epc":"%s","antenna":%d,"rssi_dbm":%.1f}' % (e.encode(), antenna, rssi) for e in epcs)
    return b'{"at":%d,"reads":[%s]}' % (at_ms, reads)


def _publisher(share: _Share, stop: Event, out: multiprocessing.Queue[tuple[int, int, int, float]]) -> None:
    acked = [0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-load-{os.getpid()}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    client.connect(share.host, share.port, keepalive=60)
    while not client.is_connected():
        client.loop(0.05)
    epcs = epc_pool(EPC_POOL, share.seed)
    rng = np.random.default_rng(share.seed)
    prefix = f"{share.prefix}/" if share.prefix else ""
    topics = [f"{prefix}stocktrace/{device}/reads" for device in share.devices]
    messages_per_s = share.reads_per_s / share.batch
    sent = 0
    started = time.monotonic()
    while not stop.is_set() and (elapsed := time.monotonic() - started) < share.duration_s:
        due = int(elapsed * messages_per_s) - sent
        for _ in range(max(0, due)):
            first = int(rng.integers(EPC_POOL - share.batch))
            payload = _payload(
                epcs[first : first + share.batch], 1 + sent % 4, -40 - 30 * rng.random(), int(time.time() * 1000)
            )
            client.publish(topics[sent % len(topics)], payload, qos=1)
            sent += 1
            if sent % 64 == 0:
                client.loop(0)
        while sent - acked[0] > MAX_UNACKED:
            client.loop(0.001)
        client.loop(0 if due > 0 else SLICE_S)
    deadline = time.monotonic() + 10
    while acked[0] < sent and time.monotonic() < deadline:
        client.loop(0.01)
    elapsed = time.monotonic() - started  # until the last acknowledgement: the rate the broker took
    client.disconnect()
    out.put((sent, acked[0], acked[0] * share.batch, elapsed))


def run_load(host: str, port: int, devices: int, reads_per_s: float, duration_s: float, *, batch: int = 1,
             processes: int | None = None, topic_prefix: str = "", stop: Event | None = None,
             seed: int = 42) -> LoadResult:  # fmt: skip
    """Publish ``reads_per_s`` native reads from ``devices`` readers for ``duration_s``; what was acknowledged."""
    if devices < 1 or reads_per_s <= 0 or batch < 1:
        raise ValueError("devices, rate and batch must be positive")
    processes = max(1, min(processes or os.cpu_count() or 1, devices))
    context = multiprocessing.get_context("spawn")
    stop = stop or context.Event()
    out: multiprocessing.Queue[tuple[int, int, int, float]] = context.Queue()
    ids = [f"load-{n:05d}" for n in range(devices)]
    shares = [
        _Share(
            i,
            host,
            port,
            topic_prefix.strip("/"),
            ids[i::processes],
            reads_per_s / processes,
            batch,
            duration_s,
            seed + i,
        )
        for i in range(processes)
    ]
    workers = [context.Process(target=_publisher, args=(share, stop, out), daemon=True) for share in shares]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=duration_s + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    return LoadResult(
        devices, processes, reads_per_s, batch,
        sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results), max(r[3] for r in results),
    )  # fmt: skip
