"""``stocktrace bench alert-latency``: from a reading published over MQTT to the webhook it causes.

Everything the service runs for this path runs here, in one process, against the real broker and a database
of its own: the ingest consumer (QoS 1, acknowledged after commit), the alert evaluator (every rule, ticking
every ``interval_s`` and woken by ingest's commits, alerts/wakeup.py) and the delivery worker; a webhook
receiver in a process of its own records when each request arrived.

Each trial takes a cold room (2-8 °C) of its own whose probe has reported in band: the probe reports in band
again, then, after a random pause, a reading of 12 °C with no alarm delay configured. The figure is the time
from that publish to the receiver reading the webhook about the room, split at ingest's commit. Trials are
spaced at random so that they fall anywhere in the evaluator's tick.

Baselines, in the same run: a bare MQTT round trip (publish at QoS 1 to a subscriber on the same broker), and
delivery alone (an alert change committed to the outbox → the webhook received), which together bound what
evaluation adds. ``tick_only`` drops the wake-up trigger, to show the latency the tick alone allows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from alerts import delivery, evaluator, outbox
from alerts.delivery_bench import ReceiverControl, percentile, receiver_process
from alerts.evaluator import TickReport
from alerts.model import Alert, AlertChange, State
from alerts.routes import RoutesConfig
from alerts.rules_config import parse_rules
from ingest.consumer import BatchPolicy, Committed, Consumer
from ingest.routes import Router
from ingest.wire import BrokerOptions
from ingest.writer import Writer

Progress = Callable[[str], None]

_BREACH_C: Final = 12.0
_IN_BAND_C: Final = 5.0
_RULES: Final = "rules: {temperature_excursion: {alarm_delay: 0s}}"
_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    trials: int = 40
    interval_s: float = 1.0
    tick_only: bool = False


@dataclass(frozen=True, slots=True)
class BenchResult:
    trials: int
    interval_s: float
    woken_by_ingest: bool
    p50_ms: float
    p99_ms: float
    max_ms: float
    ingest_p50_ms: float
    ingest_p99_ms: float
    after_commit_p50_ms: float
    after_commit_p99_ms: float
    mqtt_p50_ms: float
    mqtt_p99_ms: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    ticks_per_s: float
    tick_mean_ms: float
    evaluator_busy: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_benchmark(config: BenchConfig, progress: Progress) -> BenchResult:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the receiver is polled: one line per poll otherwise
    with receiver_process() as url:
        return asyncio.run(_run(config, url, progress))


async def _run(config: BenchConfig, url: str, progress: Progress) -> BenchResult:
    run = uuid.uuid4().hex[:8]
    rooms = [f"bench-{run}-room-{n:03d}" for n in range(config.trials)]
    _build_world(config, rooms)
    progress(f"baseline: {config.trials} MQTT round trips (QoS 1, publish → subscriber) ...")
    mqtt_ms = await asyncio.to_thread(_mqtt_round_trips, config, run)
    progress(f"  p50 {percentile(mqtt_ms, 50):.1f} ms, p99 {percentile(mqtt_ms, 99):.1f} ms")
    async with httpx.AsyncClient(base_url=url, timeout=30) as control:
        receiver = ReceiverControl(url, control)
        await receiver.reset()
        return await _with_service(config, run, rooms, receiver, mqtt_ms, progress)


def _build_world(config: BenchConfig, rooms: list[str]) -> None:
    """A site of cold rooms, each with a probe that reported in band every minute for the last ten."""
    now = datetime.now(UTC)
    with psycopg.connect(config.database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "insert into locations (id, site_id, kind) values ('bench', 'bench', 'site') on conflict do nothing"
        )
        for room in rooms:
            conn.execute(
                "insert into locations (id, site_id, parent_id, kind, temperature_min_c, temperature_max_c)"
                " values (%s, 'bench', 'bench', 'cold_room', 2, 8)",
                (room,),
            )
            conn.execute(
                "insert into devices (id, kind, source, location_id) values (%s, 'sensor', 'native', %s)",
                (_probe(room), room),
            )
            conn.execute(
                "insert into device_activity (device_id, first_seen_at, last_seen_at, last_topic)"
                " values (%s, %s, %s, %s)",
                (_probe(room), now - timedelta(minutes=10), now, _topic(room)),
            )
            with (
                conn.cursor() as cursor,
                cursor.copy("copy telemetry (observed_at, device_id, quantity, value, received_at) from stdin") as copy,
            ):
                for minutes in range(10, 0, -1):
                    at = now - timedelta(minutes=minutes)
                    copy.write_row((at, _probe(room), "temperature_c", _IN_BAND_C, at))
        if config.tick_only:
            conn.execute("drop trigger telemetry_wakes_alerts on telemetry")
            conn.execute("drop trigger device_events_wakes_alerts on device_events")


def _probe(room: str) -> str:
    return f"{room}-probe"


def _topic(room: str) -> str:
    return f"stocktrace/{_probe(room)}/telemetry"


def _routes(url: str) -> RoutesConfig:
    return RoutesConfig.model_validate(
        {
            "receivers": [{"name": "latency", "type": "webhook", "url": f"{url}/latency"}],
            "routes": [{"receivers": ["latency"], "group_by": ["..."]}],
        }
    )


class _Ticks:
    def __init__(self) -> None:
        self.count, self.busy_ms, self.started = 0, 0.0, time.perf_counter()

    def __call__(self, report: TickReport) -> None:
        self.count += 1
        self.busy_ms += report.duration_ms


async def _with_service(
    config: BenchConfig, run: str, rooms: list[str], receiver: ReceiverControl, mqtt_ms: list[float],
    progress: Progress,
) -> BenchResult:  # fmt: skip
    committed: dict[str, float] = {}

    def on_commit(done: Committed) -> None:
        for row in done.rows.telemetry:
            if row[3] == _BREACH_C:
                committed.setdefault(str(row[1]), done.committed_at.timestamp())

    stop = asyncio.Event()
    consumer = Consumer(
        BrokerOptions(config.mqtt_host, config.mqtt_port, f"stocktrace-bench-{run}", clean_start=True,
                      session_expiry_s=60),
        [_topic(room) for room in rooms], Router([]), Writer(config.database_url), BatchPolicy(), on_commit,
    )  # fmt: skip
    ticks = _Ticks()
    routes = _routes(receiver.url)
    tasks = [
        asyncio.create_task(consumer.run(stop)),
        asyncio.create_task(
            evaluator.run(
                config.database_url,
                stop,
                parse_rules(_RULES),
                config.interval_s,
                on_tick=ticks,
                enqueue=functools.partial(outbox.enqueue, routes=routes),
            )
        ),
        asyncio.create_task(delivery.run(config.database_url, stop, routes, poll_s=1.0)),
    ]
    try:
        await asyncio.wait_for(consumer.connected.wait(), 10)
        await asyncio.sleep(1.0)  # the evaluator leads and has ticked, the worker listens
        ticks.count, ticks.busy_ms, ticks.started = 0, 0.0, time.perf_counter()
        mode = "on its tick only" if config.tick_only else "woken by ingest"
        progress(f"reading → webhook: {config.trials} trials, evaluator every {config.interval_s:g} s, {mode} ...")
        published = await asyncio.to_thread(_publish_trials, config, run, rooms, receiver)
        elapsed = time.perf_counter() - ticks.started
        progress(f"delivery alone: {config.trials} changes committed to the outbox → webhook ...")
        direct = await _delivery_only(config, run, receiver)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    received = await receiver.received()
    total = [(received[room] - published[room]) * 1000 for room in rooms]
    ingest = [(committed[_probe(room)] - published[room]) * 1000 for room in rooms if _probe(room) in committed]
    after = [(received[room] - committed[_probe(room)]) * 1000 for room in rooms if _probe(room) in committed]
    return BenchResult(
        config.trials, config.interval_s, not config.tick_only, percentile(total, 50), percentile(total, 99),
        max(total), percentile(ingest, 50), percentile(ingest, 99), percentile(after, 50), percentile(after, 99),
        percentile(mqtt_ms, 50), percentile(mqtt_ms, 99), percentile(direct, 50), percentile(direct, 99),
        ticks.count / elapsed, ticks.busy_ms / max(1, ticks.count), ticks.busy_ms / 1000 / elapsed,
    )  # fmt: skip


def _publish_trials(config: BenchConfig, run: str, rooms: list[str], receiver: ReceiverControl) -> dict[str, float]:
    """Each trial: the probe reports in band, then out of band; wait for the webhook. Runs in a thread (paho)."""
    rng = random.Random(7)
    published: dict[str, float] = {}
    client = _client(config, f"stocktrace-bench-{run}-pub")
    loop = asyncio.new_event_loop()
    try:
        for room in rooms:
            _publish(client, _topic(room), _IN_BAND_C)
            time.sleep(rng.uniform(0.2, 0.5))
            published[room] = time.time()
            _publish(client, _topic(room), _BREACH_C)
            loop.run_until_complete(_wait_elsewhere(receiver, room))
            time.sleep(rng.uniform(0.0, config.interval_s))
    finally:
        loop.close()
        client.loop_stop()
        client.disconnect()
    return published


async def _wait_elsewhere(receiver: ReceiverControl, subject: str) -> None:
    # The receiver control's client belongs to the main loop; this thread polls with a client of its own.
    async with httpx.AsyncClient(base_url=receiver.url, timeout=30) as control:
        await ReceiverControl(receiver.url, control).wait_for_subject(subject, _TIMEOUT_S)


def _client(config: BenchConfig, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(config.mqtt_host, config.mqtt_port, clean_start=True)
    client.loop_start()
    return client


def _publish(client: mqtt.Client, topic: str, value: float) -> None:
    payload = json.dumps({"at": round(time.time() * 1000), "temperature_c": value})
    client.publish(topic, payload, qos=1).wait_for_publish(10)


def _mqtt_round_trips(config: BenchConfig, run: str) -> list[float]:
    """Publish at QoS 1 and time each message to a subscriber on the same broker, one at a time."""
    topic = f"stocktrace-bench/{run}/round-trip"
    arrived: dict[int, float] = {}
    ready, got = threading.Event(), threading.Condition()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with got:
            arrived[int(message.payload)] = time.time()
            got.notify_all()

    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stocktrace-bench-{run}-sub",
                             protocol=mqtt.MQTTv5)  # fmt: skip
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_: ready.set()
    subscriber.connect(config.mqtt_host, config.mqtt_port, clean_start=True)
    subscriber.loop_start()
    subscriber.subscribe(topic, qos=1)
    publisher = _client(config, f"stocktrace-bench-{run}-rt")
    sent: dict[int, float] = {}
    try:
        if not ready.wait(10):
            raise RuntimeError("the broker did not confirm the subscription")
        for n in range(config.trials):
            sent[n] = time.time()
            publisher.publish(topic, str(n), qos=1)
            with got:
                got.wait_for(lambda n=n: n in arrived, _TIMEOUT_S)  # type: ignore[misc]
    finally:
        for client in (publisher, subscriber):
            client.loop_stop()
            client.disconnect()
    return [(arrived[n] - sent[n]) * 1000 for n in sent if n in arrived]


async def _delivery_only(config: BenchConfig, run: str, receiver: ReceiverControl) -> list[float]:
    """Alert changes committed straight to the outbox, one at a time, while the same worker runs."""
    routes = _routes(receiver.url)
    committed: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as conn:
        for n in range(config.trials):
            subject = f"bench-{run}-direct-{n:03d}"
            labels = {"alertname": "BenchDirect", "severity": "info", "subject": subject}
            change = AlertChange(Alert(labels, {}, State.FIRING, datetime.now(UTC)), State.PENDING)
            await outbox.enqueue(conn, [change], routes=routes)
            committed[subject] = time.time()
            await receiver.wait_for_subject(subject, _TIMEOUT_S)
    received = await receiver.received()
    return [(received[subject] - at) * 1000 for subject, at in committed.items()]
