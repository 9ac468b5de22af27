"""A local HTTP receiver for delivery tests: records every request and answers as the test scripts it.

It stands in for Slack, Teams, PagerDuty, Grafana and webhook endpoints, which are out of reach here: the
sinks speak real HTTP to it on 127.0.0.1. A script is a queue of answers used one per request (500 for the next
N requests, a 429 with Retry-After, a reply that comes too late); once it runs out, the default answer is given.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from alerts import delivery
from alerts.model import Alert, AlertChange, State
from alerts.outbox import enqueue
from alerts.routes import RoutesConfig


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    late: bool = False  # the delay is longer than the sender waits: it sees a timeout, not this answer

    @staticmethod
    def json(status: int, payload: Any, **headers: str) -> Answer:
        return Answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_at: float  # time.time()
    status: int  # what it was answered
    late: bool  # answered after the sender had given up

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._script: deque[Answer] = deque()
        self._default = Answer()
        self._answer_by: Callable[[str, str, bytes], Answer | None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order; then the default."""
        with self._lock:
            self._script.extend(answers)

    def fail(self, times: int, status: int = 500) -> None:
        self.script(*[Answer(status, b"unavailable")] * times)

    def set_default(self, answer: Answer) -> None:
        with self._lock:
            self._default = answer

    def answer_by(self, decide: Callable[[str, str, bytes], Answer | None]) -> None:
        """Compute the answer from (method, path, body); None falls back to the script and the default."""
        with self._lock:
            self._answer_by = decide

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def succeeded(self) -> list[Request]:
        """Requests answered 2xx in time: what the sender saw as delivered."""
        return [request for request in self.requests if _succeeded(request)]

    def wait_for(self, count: int, timeout_s: float = 10.0, *, succeeded: bool = True) -> list[Request]:
        """Block until ``count`` requests (by default: answered 2xx) have arrived; fail the test otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                got = [r for r in self._requests if not succeeded or _succeeded(r)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} of {count} requests arrived within {timeout_s} s: {got!r:.2000}")
                self._lock.wait(left)

    def _next_answer(self, method: str, path: str, body: bytes) -> Answer:
        with self._lock:
            computed = self._answer_by(method, path, body) if self._answer_by else None
            if computed is not None:
                return computed
            return self._script.popleft() if self._script else self._default

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm holds the second
            # until the client's delayed ACK, 40 ms later.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = receiver._next_answer(self.command, self.path, body)
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._record(
                    Request(self.command, self.path, headers, body, time.time(), answer.status, answer.late)
                )
                time.sleep(answer.delay_s)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_POST = do_PUT = do_PATCH = do_GET = _handle  # noqa: N815  # http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _succeeded(request: Request) -> bool:
    return 200 <= request.status < 300 and not request.late


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# What the delivery tests build around the receiver: alerts, routes pointing at it, a fast clock, a worker.

T0 = datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def alert(
    name: str = "ColdChainBreach", subject: str = "cold-room-2", state: State = State.FIRING, *,
    severity: str = "critical", starts_at: datetime = T0, ends_at: datetime | None = None, **labels: str,
) -> Alert:  # fmt: skip
    return Alert(
        labels={"alertname": name, "severity": severity, "subject": subject, **labels},
        annotations={"summary": f"{name} on {subject}", "description": "above 8 °C for 15 minutes"},
        state=state,
        starts_at=starts_at,
        ends_at=ends_at,
        generator_url=f"http://stocktrace.test/alerts?subject={subject}",
    )


def fired(item: Alert) -> AlertChange:
    return AlertChange(item, State.PENDING)


def resolved(item: Alert, ends_at: datetime = T0 + timedelta(minutes=20)) -> AlertChange:
    return AlertChange(replace(item, state=State.RESOLVED, ends_at=ends_at), State.FIRING)


def routes(*receivers: dict[str, Any], **settings: Any) -> RoutesConfig:
    """Every receiver takes every alert, unless ``routes`` says otherwise."""
    document: dict[str, Any] = {
        "external_url": "http://stocktrace.test",
        "receivers": list(receivers),
        "routes": [{"receivers": [r["name"] for r in receivers]}],
        **settings,
    }
    return RoutesConfig.model_validate(document)


class FastClock:
    """Wall time running ``speed`` times faster from now: an hour of backoff passes in 3600/speed seconds."""

    def __init__(self, speed: float) -> None:
        self._speed, self._start, self._origin = speed, time.monotonic(), datetime.now(UTC)

    def __call__(self) -> datetime:
        return self._origin + timedelta(seconds=(time.monotonic() - self._start) * self._speed)


async def enqueue_changes(dsn: str, config: RoutesConfig, *changes: AlertChange) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await enqueue(conn, changes, routes=config)


@asynccontextmanager
async def running_worker(
    dsn: str, config: RoutesConfig, *, clock: Callable[[], datetime] | None = None, concurrency: int = 2,
    seed: int = 1,
) -> AsyncIterator[asyncio.Event]:  # fmt: skip
    """A delivery worker polling fast; stopped (gracefully) when the block ends or when the test sets the event."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        delivery.run(
            dsn, stop, config, concurrency=concurrency, poll_s=0.02, clock=clock or delivery.utc_now,
            rng=random.Random(seed),
        )
    )  # fmt: skip
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_for(receiver: Receiver, count: int, timeout_s: float = 10.0) -> list[Request]:
    return await asyncio.to_thread(receiver.wait_for, count, timeout_s)


OUTBOX_TABLES = "deliveries, delivery_attempts, delivery_lanes, delivery_references, alert_groups, alert_group_alerts"


def clean_outbox(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """For a test module's ``db`` fixture: an autocommit connection with only the outbox's tables emptied (the
    delivery tests touch nothing else, and emptying every table takes a second per test)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"truncate {OUTBOX_TABLES} restart identity")
        yield conn
