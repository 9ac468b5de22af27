"""PostgreSQL stopped for 10 s under load: the consumer stops acknowledging, waits, and loses nothing.

The test stops a real PostgreSQL server, so it runs one of its own (initdb in a temporary folder, with
TimescaleDB preloaded) rather than the shared one other tests and users depend on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ingest import metrics
from stocktrace.db import migrate
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count

COUNT = 10_000


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.fail("PostgreSQL server binaries not found; run `make test` to install them")
    return versions[-1].parent


class PrivateServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stocktrace-pg-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.bin = _pg_bin()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        shutil.chown(self.folder, "postgres") if os.geteuid() == 0 else None

    def _pg(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True)

    def init(self) -> None:
        self._pg(str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb"
        )
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-o", options, "-w", "-l",
                 str(self.folder / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        self._pg(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/stocktrace"


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    server.init()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", autocommit=True) as conn:
        conn.execute("create database stocktrace")
    migrate(server.dsn)
    yield server
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


def test_stopping_postgresql_for_ten_seconds_under_load_loses_nothing(private_server, mqtt_address, topic_prefix):
    topic = f"stocktrace/{topic_prefix}-r1/reads"
    now = time.time()
    payloads = [(topic, json.dumps({"epc": f"BB{i:010X}", "at": now + i / 1000}).encode()) for i in range(COUNT)]

    def publish_steadily() -> None:
        client = publisher(mqtt_address)
        for start in range(0, COUNT, 500):  # 500 messages every 0.25 s: the outage lands mid-stream
            publish_all(client, payloads[start : start + 500])
            time.sleep(0.25)

    failed_commits_before = metrics.DATABASE_ERRORS._value.get()

    async def scenario() -> None:
        async with running_consumer(private_server.dsn, mqtt_address, [topic]):
            publishing = threading.Thread(target=publish_steadily, daemon=True)
            publishing.start()
            await wait_for_count(private_server.dsn, "select count(*) from rfid_reads", COUNT // 5)
            await asyncio.to_thread(private_server.stop)
            await asyncio.sleep(10)
            await asyncio.to_thread(private_server.start)
            await asyncio.to_thread(publishing.join, 120)
            stored = await wait_for_count(private_server.dsn, "select count(*) from rfid_reads", COUNT, timeout_s=60)
            assert stored == COUNT

    asyncio.run(scenario())
    assert metrics.DATABASE_ERRORS._value.get() > failed_commits_before, "the outage did not hit a commit"
    with psycopg.connect(private_server.dsn) as conn:
        assert conn.execute("select count(distinct epc) from rfid_reads").fetchone() == (COUNT,)
