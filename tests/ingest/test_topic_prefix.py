"""A site whose devices all publish under a topic prefix (``STOCKTRACE_MQTT_TOPIC_PREFIX``).

Decoders that read the device from the topic (Tasmota, native, ESPHome, Sparkplug) must see the topic as the
device wrote it, without the site's levels in front; dead letters keep the topic as it arrived.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from ingest.batch import Inbox, decode_inbox
from ingest.routes import Route, Router
from stocktrace.service import consumer_for
from stocktrace.settings import load_settings
from tests.ingest.helpers import publish_all, publisher, wait_for_count

Conn = psycopg.Connection[Any]


def test_devices_under_a_site_prefix_decode_as_without_it(
    dsn: str, db: Conn, mqtt_address: tuple[str, int], topic_prefix: str
) -> None:
    prefix = f"{topic_prefix}/site/berlin"
    settings = load_settings(
        database_url=dsn,
        mqtt_url=f"mqtt://{mqtt_address[0]}:{mqtt_address[1]}",
        mqtt_client_id=f"test-{uuid.uuid4().hex[:8]}",
        mqtt_share_group="",
        mqtt_session_expiry_s=0,
        mqtt_topic_prefix=prefix,
        routes=[Route("tele/+/SENSOR", "tasmota")],
    )
    tasmota = {"Time": "2026-01-15T12:00:00", "DS18B20": {"Temperature": 3.5}, "TempUnit": "C"}
    native = {"epc": "3074257BF7194E4000001A85", "antenna": 2, "at": "2026-01-15T12:00:00Z"}
    messages = [
        (f"{prefix}/tele/plug-1/SENSOR", json.dumps(tasmota).encode()),
        (f"{prefix}/stocktrace/dock-1/reads", json.dumps(native).encode()),
        (f"{prefix}/stocktrace/dock-1/oops", b"{}"),
    ]

    async def scenario() -> None:
        consumer = consumer_for(settings, 0)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.wait_for(consumer.connected.wait(), 10)
            publish_all(publisher(mqtt_address), messages)
            await wait_for_count(dsn, "select count(*) from dead_letters", 1)
            await wait_for_count(dsn, "select count(*) from telemetry", 1)
            await wait_for_count(dsn, "select count(*) from rfid_reads", 1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert db.execute("select device_id, quantity, value from telemetry").fetchall() == [
        ("plug-1", "temperature_c", 3.5)
    ]
    assert db.execute("select device_id, antenna, epc from rfid_reads").fetchall() == [
        ("dock-1", 2, "3074257BF7194E4000001A85")
    ]
    (topic, error), *_ = db.execute("select topic, error from dead_letters").fetchall()
    assert topic == f"{prefix}/stocktrace/dock-1/oops"
    assert "oops" in error


def test_a_topic_outside_the_prefix_is_a_dead_letter_that_says_so() -> None:
    router = Router([], prefix="site/berlin/")
    inbox = Inbox(topics=["site/hamburg/stocktrace/dock-1/reads"], payloads=[b'{"epc": "AB"}'], packet_ids=[1])
    rows = decode_inbox(inbox, router, datetime.now(UTC), 65536)
    assert not rows.rfid_reads
    [(_, topic, _, error)] = rows.dead_letters
    assert topic == "site/hamburg/stocktrace/dock-1/reads"
    assert error == "topic is not under the topic prefix 'site/berlin'"


def test_subscriptions_and_replies_carry_the_prefix() -> None:
    router = Router([Route("spBv1.0/#", "sparkplug-b")], prefix="/site/berlin/")
    assert router.subscriptions(["stocktrace/#", *router.topic_filters, "stocktrace/#"]) == [
        "site/berlin/stocktrace/#",
        "site/berlin/spBv1.0/#",
    ]
    assert router.remote("spBv1.0/plant/NCMD/edge-1") == "site/berlin/spBv1.0/plant/NCMD/edge-1"
    assert Router([]).local("stocktrace/dock-1/reads") == "stocktrace/dock-1/reads"
