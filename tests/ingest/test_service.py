"""`stocktrace run` as a user runs it: worker processes killed, stopped and restarted mid-stream lose nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ingest.helpers import publish_all, publisher, wait_for_count

COUNT = 20_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """A `stocktrace run` process with settings of its own."""

    def __init__(
        self, dsn: str, mqtt_address: tuple[str, int], prefix: str, workers: int, client_id: str | None = None
    ) -> None:
        self.port = _free_port()
        self.workers = workers
        self.env = {
            **os.environ,
            "STOCKTRACE_DATABASE_URL": dsn,
            "STOCKTRACE_MQTT_URL": f"mqtt://{mqtt_address[0]}:{mqtt_address[1]}",
            "STOCKTRACE_MQTT_CLIENT_ID": client_id or prefix,
            "STOCKTRACE_MQTT_SHARE_GROUP": prefix,
            "STOCKTRACE_MQTT_TOPICS": f"stocktrace/{prefix}-dev/reads",
            "STOCKTRACE_API_PORT": str(self.port),
            "STOCKTRACE_BATCH_MAX_MESSAGES": "500",
            # Long enough to survive the restarts under test, short enough not to linger on the broker after.
            "STOCKTRACE_MQTT_SESSION_EXPIRY_S": "300",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = Path(sys.executable).parent / "stocktrace"
        self.process = subprocess.Popen([binary, "run", "--workers", str(self.workers)], env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                # Ready means the database and broker answer and every worker is subscribed.
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("stocktrace run did not become ready")

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        # Worker processes, not multiprocessing's resource tracker.
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid), "-f", "spawn_main"], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=40)


@pytest.fixture
def service(dsn, mqtt_address, topic_prefix) -> Iterator[Service]:
    svc = Service(dsn, mqtt_address, topic_prefix, workers=2)
    yield svc
    if svc.process is not None and svc.process.poll() is None:
        svc.stop()


class Publishing(threading.Thread):
    """Publishes COUNT messages in blocks; `published` says how many the broker acknowledged."""

    def __init__(self, mqtt_address: tuple[str, int], payloads: list[tuple[str, bytes]]) -> None:
        super().__init__(daemon=True)
        self.mqtt_address = mqtt_address
        self.payloads = payloads
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = publisher(self.mqtt_address)
            for start in range(0, COUNT, 1000):
                self.published += publish_all(client, self.payloads[start : start + 1000])
                time.sleep(0.05)  # a steady stream, so that the faults land mid-stream
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(120)
        assert self.error is None, f"publishing failed: {self.error!r}"
        assert self.published == COUNT


def _publish_in_background(mqtt_address: tuple[str, int], topic: str) -> Publishing:
    # Recent times: the service drops raw chunks older than its retention when it starts.
    now = time.time()
    payloads = [(topic, json.dumps({"epc": f"AA{i:010X}", "at": now + i / 1000}).encode()) for i in range(COUNT)]

    thread = Publishing(mqtt_address, payloads)
    thread.start()
    return thread


def _assert_exactly_once(db) -> None:
    assert db.execute("select count(*), count(distinct epc) from rfid_reads").fetchone() == (COUNT, COUNT)


def test_killing_a_worker_mid_stream_loses_and_duplicates_nothing(service, dsn, db, mqtt_address, topic_prefix) -> None:
    service.start()
    publishing = _publish_in_background(mqtt_address, f"stocktrace/{topic_prefix}-dev/reads")
    asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT // 3))
    victims = service.worker_pids()
    assert len(victims) == 2
    os.kill(victims[0], signal.SIGKILL)  # the supervisor restarts it; its session resumes
    publishing.finish()
    assert asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT, timeout_s=90)) == COUNT
    service.stop()
    _assert_exactly_once(db)
    # device_activity counts deliveries, so redelivered messages count again there (rows are stored once).
    (deliveries,) = db.execute("select sum(messages) from device_activity").fetchone() or (0,)
    assert deliveries >= COUNT


def test_killing_the_whole_service_and_starting_it_again_loses_nothing(
    service, dsn, db, mqtt_address, topic_prefix
) -> None:
    service.start()
    publishing = _publish_in_background(mqtt_address, f"stocktrace/{topic_prefix}-dev/reads")
    asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT // 3))
    pids = service.worker_pids()
    service.stop(signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    service.start()
    publishing.finish()
    assert asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT, timeout_s=90)) == COUNT
    service.stop()
    _assert_exactly_once(db)


def test_a_graceful_stop_commits_and_acknowledges_what_it_holds(service, dsn, db, mqtt_address, topic_prefix) -> None:
    service.start()
    publishing = _publish_in_background(mqtt_address, f"stocktrace/{topic_prefix}-dev/reads")
    asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT // 2))
    service.stop(signal.SIGTERM)
    assert service.process is not None
    assert service.process.returncode == 0
    assert service.worker_pids() == []
    service.start()
    publishing.finish()
    assert asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT, timeout_s=90)) == COUNT
    service.stop()
    _assert_exactly_once(db)


def test_three_processes_share_the_stream_and_one_killed_loses_nothing(dsn, db, mqtt_address, topic_prefix) -> None:
    """The scale-out shape: several `stocktrace run` processes (on one host here, on several in production) in
    one shared-subscription group, against one broker and one database."""
    services = [
        Service(dsn, mqtt_address, topic_prefix, workers=1, client_id=f"{topic_prefix}-host{n}") for n in range(3)
    ]
    try:
        for svc in services:
            svc.start()
        publishing = _publish_in_background(mqtt_address, f"stocktrace/{topic_prefix}-dev/reads")
        asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT // 3))
        victim = services[1]
        pids = victim.worker_pids()
        victim.stop(signal.SIGKILL)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        victim.start()  # the host comes back; its session (and what it held) resumes
        publishing.finish()
        assert asyncio.run(wait_for_count(dsn, "select count(*) from rfid_reads", COUNT, timeout_s=90)) == COUNT
    finally:
        for svc in services:
            if svc.process is not None and svc.process.poll() is None:
                svc.stop()
    _assert_exactly_once(db)
