"""Running a consumer and publishing to it, for the ingest tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from ingest.consumer import BatchPolicy, Consumer
from ingest.routes import Route, Router
from ingest.wire import BrokerOptions
from ingest.writer import Step, Writer


def publisher(address: tuple[str, int]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(*address)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, messages: Iterable[tuple[str, bytes]]) -> int:
    """Publish at QoS 1 and wait until the broker has acknowledged every message."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=60)
        assert info.is_published(), "the broker did not acknowledge a publish"
    return len(infos)


@contextlib.asynccontextmanager
async def running_consumer(
    dsn: str,
    address: tuple[str, int],
    topic_filters: list[str],
    *,
    client_id: str | None = None,
    routes: list[Route] | None = None,
    policy: BatchPolicy | None = None,
    steps: Sequence[Step] = (),
) -> AsyncIterator[Consumer]:
    consumer = Consumer(
        BrokerOptions(address[0], address[1], client_id or f"test-{uuid.uuid4().hex[:8]}", session_expiry_s=60),
        topic_filters,
        Router(routes or []),
        Writer(dsn, steps=steps),
        policy or BatchPolicy(max_messages=500, max_wait_s=0.02),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.connected.wait(), 10)
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_for_count(dsn: str, query: str, expected: int, timeout_s: float = 60) -> int:
    """Poll ``query`` (a count) until it reaches ``expected`` or the time is up; returns the last count."""
    deadline = time.monotonic() + timeout_s
    count = -1
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
            count = int(row[0]) if row else 0
            if count >= expected:
                return count
            await asyncio.sleep(0.1)
    return count
