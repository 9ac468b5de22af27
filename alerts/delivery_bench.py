"""``stocktrace bench delivery``: how fast the outbox delivers, and how long a committed change takes to arrive.

Both measured against a local webhook receiver in a process of its own, and against a baseline in the same
run: a plain synchronous httpx POST loop to the same receiver, with no outbox, no database, no retries. The
difference is what durability (commit before send, record after) and per-receiver order cost.

- throughput: N changes enqueued up front across R receivers (so R lanes run in parallel), then the worker
  started; deliveries/s from start to the last one received.
- latency: changes enqueued one per transaction at a steady rate while the worker runs; for each, the time
  from its commit returning to the receiver reading the request.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

import httpx
import psycopg

from alerts import delivery
from alerts.model import Alert, AlertChange, State
from alerts.outbox import enqueue
from alerts.routes import RoutesConfig
from alerts.sinks import render
from alerts.sinks.base import Notification, json_body

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    deliveries: int
    receivers: int
    concurrency: int
    rate: float
    latency_seconds: float


@dataclass(frozen=True, slots=True)
class BenchResult:
    deliveries: int
    receivers: int
    concurrency: int
    deliveries_per_s: float
    baseline_posts_per_s: float
    enqueue_per_s: float
    offered_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    baseline_p50_ms: float
    baseline_p99_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_benchmark(config: BenchConfig, progress: Progress) -> BenchResult:
    with receiver_process() as url:
        progress(f"baseline: {config.deliveries:,} synchronous httpx POSTs to a local receiver ...")
        posts_per_s, baseline_ms = _baseline(url, config)
        progress(f"  {posts_per_s:,.0f} POST/s, p50 {percentile(baseline_ms, 50):.2f} ms")
        return asyncio.run(_outbox_runs(config, url, posts_per_s, baseline_ms, progress))


async def _outbox_runs(
    config: BenchConfig, url: str, posts_per_s: float, baseline_ms: list[float], progress: Progress
) -> BenchResult:
    async with httpx.AsyncClient(base_url=url, timeout=30) as control:
        return await _outbox_measures(config, ReceiverControl(url, control), posts_per_s, baseline_ms, progress)


async def _outbox_measures(
    config: BenchConfig, receiver: ReceiverControl, posts_per_s: float, baseline_ms: list[float], progress: Progress
) -> BenchResult:
    routes = _routes(receiver.url, config.receivers)
    progress(
        f"outbox: {config.deliveries:,} changes enqueued, one per transaction, across {config.receivers} receivers"
    )
    enqueue_per_s = await _enqueue_all(config, routes)
    progress(f"  {enqueue_per_s:,.0f} enqueues/s; delivering with {config.concurrency} slot(s) ...")
    deliveries_per_s = await _drain(config, routes, receiver)
    progress(f"  {deliveries_per_s:,.0f} deliveries/s")
    progress(f"latency: {config.rate:g} changes/s for {config.latency_seconds:g} s while the worker runs ...")
    latencies = await _latency(config, routes, receiver)
    progress(f"  p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    return BenchResult(
        config.deliveries, config.receivers, config.concurrency, deliveries_per_s, posts_per_s, enqueue_per_s,
        config.rate, percentile(latencies, 50), percentile(latencies, 99), max(latencies), percentile(baseline_ms, 50),
        percentile(baseline_ms, 99),
    )  # fmt: skip


def _routes(url: str, receivers: int) -> RoutesConfig:
    names = [f"bench-{n}" for n in range(receivers)]
    return RoutesConfig.model_validate(
        {
            "receivers": [{"name": name, "type": "webhook", "url": f"{url}/{name}"} for name in names],
            "routes": [{"matchers": [f'lane="{n}"'], "receivers": [name]} for n, name in enumerate(names)],
            "group_by": ["..."],
        }
    )


def _change(n: int, receivers: int) -> AlertChange:
    labels = {"alertname": "BenchAlert", "severity": "info", "subject": f"item-{n}", "lane": str(n % receivers)}
    alert = Alert(labels, {"summary": f"bench alert {n}"}, State.FIRING, datetime.now(UTC), fingerprint=str(n))
    return AlertChange(alert, State.PENDING)


async def _enqueue_all(config: BenchConfig, routes: RoutesConfig) -> float:
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as conn:
        for n in range(config.deliveries):
            await enqueue(conn, [_change(n, config.receivers)], routes=routes)
    return config.deliveries / (time.perf_counter() - started)


async def _drain(config: BenchConfig, routes: RoutesConfig, receiver: ReceiverControl) -> float:
    await receiver.reset()
    stop = asyncio.Event()
    started = time.perf_counter()
    worker = asyncio.create_task(
        delivery.run(config.database_url, stop, routes, concurrency=config.concurrency, poll_s=0.05)
    )
    await receiver.wait_for(config.deliveries)
    elapsed = time.perf_counter() - started
    stop.set()
    await worker
    return config.deliveries / elapsed


async def _latency(config: BenchConfig, routes: RoutesConfig, receiver: ReceiverControl) -> list[float]:
    await receiver.reset()
    committed: dict[str, float] = {}
    stop = asyncio.Event()
    worker = asyncio.create_task(
        delivery.run(config.database_url, stop, routes, concurrency=config.concurrency, poll_s=1.0)
    )
    await asyncio.sleep(0.5)  # connected and listening
    count = max(1, round(config.rate * config.latency_seconds))
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as conn:
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / config.rate - time.perf_counter()))
            change = _change(config.deliveries + n, config.receivers)
            await enqueue(conn, [change], routes=routes)
            committed[change.alert.labels["subject"]] = time.time()
    await receiver.wait_for(count)
    stop.set()
    await worker
    received = await receiver.received()
    return [(at - committed[subject]) * 1000 for subject, at in received.items() if subject in committed]


def _baseline(url: str, config: BenchConfig) -> tuple[float, list[float]]:
    """The same webhook bodies POSTed one after another, straight from memory: no outbox, no database."""
    routes = _routes(url, 1)
    (receiver,) = routes.receivers
    bodies = []
    for n in range(config.deliveries):
        change = _change(n, 1)
        notification = Notification(receiver.name, "{}:{}", {}, (change.alert,), "")
        bodies.append((change.alert.labels["subject"], json_body(render(receiver, notification)).encode()))
    sent_at: dict[str, float] = {}
    with httpx.Client(timeout=10) as client:
        client.delete(f"{url}/_received").raise_for_status()
        started = time.perf_counter()
        for subject, body in bodies:
            sent_at[subject] = time.time()
            client.post(f"{url}/baseline", content=body, headers={"Content-Type": "application/json"})
        elapsed = time.perf_counter() - started
        received = client.get(f"{url}/_received").json()
    return config.deliveries / elapsed, [(received[subject] - at) * 1000 for subject, at in sent_at.items()]


class ReceiverControl:
    """The bench receiver's control endpoints: GET /_received (subject → time.time() it was read), GET /_count,
    DELETE /_received. One client for all calls: making an httpx client costs milliseconds of CPU."""

    def __init__(self, url: str, control: httpx.AsyncClient) -> None:
        self.url, self._control = url, control

    async def reset(self) -> None:
        (await self._control.delete("/_received")).raise_for_status()

    async def received(self) -> dict[str, float]:
        response = await self._control.get("/_received")
        response.raise_for_status()
        received: dict[str, float] = response.json()
        return received

    async def wait_for_subject(self, subject: str, timeout_s: float = 30.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if subject in await self.received():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no delivery about {subject} arrived within {timeout_s:g} s")

    async def wait_for(self, count: int, timeout_s: float = 600.0) -> None:
        for _ in range(int(timeout_s / 0.05)):
            response = await self._control.get("/_count")
            if response.json() >= count:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"fewer than {count} deliveries arrived within {timeout_s:g} s")


def percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1] if percent < 100 else max(values)


@contextmanager
def receiver_process() -> Iterator[str]:
    """A webhook receiver in a process of its own, so it does not share the worker's interpreter."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child,), daemon=True)
    process.start()
    try:
        port = parent.recv()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.join(5)
        parent.close()


def _serve(pipe: Connection) -> None:
    received: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm holds the second
        # until the client's delayed ACK, 40 ms later.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            at = time.time()
            received[json.loads(body)["alerts"][0]["labels"]["subject"]] = at
            self._answer(200, b"ok")

        def do_GET(self) -> None:
            answer = len(received) if self.path == "/_count" else received
            self._answer(200, json.dumps(answer).encode())

        def do_DELETE(self) -> None:
            received.clear()
            self._answer(200, b"{}")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    pipe.send(server.server_address[1])
    server.serve_forever()
