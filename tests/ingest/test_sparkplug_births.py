"""Sparkplug B births shared between workers, through real ingest (real Mosquitto, real TimescaleDB).

With a shared subscription a birth reaches one worker and the data after it another. Here each worker
subscribes to its own message types, so that which worker gets what is certain: one gets the births, the other
the data. Every birth is stored with its alias table, and the worker that missed it names the data from there.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from devices.decoders import sparkplug_b_pb2 as pb
from ingest.routes import Route
from tests.ingest.helpers import publish_all, publisher, wait_for_count
from tests.ingest.test_decoder_options import consuming

Conn = psycopg.Connection[Any]
MS = 1_772_355_600_000  # 2026-03-01 09:00 UTC, in ms since 1970
NODE, DEVICE = "gw-1", "probe-1"


class Messages:
    """The messages of one edge node of group ``group`` (a test's own), as it would publish them."""

    def __init__(self, group: str) -> None:
        self.group = group

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"spBv1.0/{self.group}/{kind}/{NODE}" + (f"/{device}" if device else "")

    def nbirth(self, bd_seq: int, name: str, at_s: int = 0) -> tuple[str, bytes]:
        payload = pb.Payload(timestamp=MS + at_s * 1000, seq=0)
        payload.metrics.add(name="bdSeq", alias=0, datatype=pb.Int64, long_value=bd_seq)
        payload.metrics.add(name="Node Control/Rebirth", alias=1, datatype=pb.Boolean, boolean_value=False)
        payload.metrics.add(name=name, alias=2, datatype=pb.Float, float_value=4.5)
        return self.topic("NBIRTH"), payload.SerializeToString()

    def dbirth(self, seq: int) -> tuple[str, bytes]:
        payload = pb.Payload(timestamp=MS, seq=seq)
        payload.metrics.add(name="Humidity", alias=10, datatype=pb.Float, float_value=70.0)
        payload.metrics.add(name="Battery", alias=11, datatype=pb.UInt8, int_value=90)
        return self.topic("DBIRTH", DEVICE), payload.SerializeToString()

    def data(self, seq: int, alias: int, value: float, at_s: int, device: str | None = None) -> tuple[str, bytes]:
        """NDATA (or DDATA) carrying one metric by its alias only, as births allow."""
        payload = pb.Payload(timestamp=MS + at_s * 1000, seq=seq)
        payload.metrics.add(alias=alias, datatype=pb.Float, float_value=value)
        return self.topic("DDATA" if device else "NDATA", device), payload.SerializeToString()


def workers(spb: Messages) -> tuple[list[str], list[str], list[Route]]:
    births = [spb.topic("NBIRTH") + "/#", f"spBv1.0/{spb.group}/DBIRTH/#"]
    data = [spb.topic("NDATA") + "/#", f"spBv1.0/{spb.group}/DDATA/#"]
    return births, data, [Route(f"spBv1.0/{spb.group}/#", "sparkplug-b")]


def test_births_on_one_worker_name_the_data_on_another_without_a_rebirth(dsn, db, mqtt_address, topic_prefix) -> None:
    spb = Messages(topic_prefix)
    births, data, routes = workers(spb)

    async def scenario() -> None:
        async with consuming(dsn, mqtt_address, births, routes), consuming(dsn, mqtt_address, data, routes):
            client = publisher(mqtt_address)
            publish_all(client, [spb.nbirth(1, "Cold Room/Temperature"), spb.dbirth(1)])
            await wait_for_count(dsn, "select count(*) from device_events where reason = 'birth'", 2)
            publish_all(client, [spb.data(2, alias=2, value=5.25, at_s=60), spb.data(3, 10, 71.5, 60, DEVICE)])
            await wait_for_count(dsn, "select count(*) from telemetry where observed_at > '2026-03-01 09:00Z'", 2)

    asyncio.run(scenario())
    named = db.execute(
        "select device_id, quantity, value, extra->>'metric', extra ? 'unknown_aliases' from telemetry"
        " where observed_at > '2026-03-01 09:00Z' order by device_id"
    ).fetchall()
    assert named == [
        (f"{topic_prefix}/{NODE}", "temperature_c", 5.25, "Cold Room/Temperature", False),
        (f"{topic_prefix}/{NODE}/{DEVICE}", "humidity_pct", 71.5, "Humidity", False),
    ]
    assert db.execute("select count(*) from device_events where reason = 'rebirth-requested'").fetchone() == (0,)


def test_data_that_no_stored_birth_names_still_asks_the_node_for_a_rebirth(dsn, db, mqtt_address, topic_prefix) -> None:
    spb = Messages(topic_prefix)
    _, data, routes = workers(spb)
    requests: list[bytes] = []
    requested = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        requests.append(bytes(message.payload))
        requested.set()

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = on_message
    watcher.connect(*mqtt_address)
    watcher.subscribe(spb.topic("NCMD"), qos=1)
    watcher.loop_start()

    async def scenario() -> None:
        async with consuming(dsn, mqtt_address, data, routes):
            publish_all(publisher(mqtt_address), [spb.data(5, alias=2, value=5.25, at_s=60)])
            await wait_for_count(dsn, "select count(*) from device_events where reason = 'rebirth-requested'", 1)

    try:
        asyncio.run(scenario())
        assert requested.wait(30), "no rebirth request reached the edge node"
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    (request,) = requests
    metrics = pb.Payload.FromString(request).metrics
    assert [(m.name, m.boolean_value) for m in metrics] == [("Node Control/Rebirth", True)]
    row = db.execute("select extra from device_events where reason = 'rebirth-requested'").fetchone()
    assert row == ({"cause": "no-birth", "unknown_aliases": {"2": 5.25}},)


def test_a_rebirth_another_worker_received_renames_the_aliases(dsn, db, mqtt_address, topic_prefix) -> None:
    """The edge node answers a worker's rebirth request, its new NBIRTH reaches the other worker, and alias 2
    now means another metric: the worker that asked takes the new table from the database at the next gap."""
    spb = Messages(topic_prefix)
    births, data, routes = workers(spb)
    births_stored = "select count(*) from device_events where reason = 'birth'"

    async def scenario() -> None:
        async with consuming(dsn, mqtt_address, births, routes), consuming(dsn, mqtt_address, data, routes):
            client = publisher(mqtt_address)
            publish_all(client, [spb.nbirth(1, "Cold Room/Temperature")])
            await wait_for_count(dsn, births_stored, 1)
            # Named from the stored birth; then seq jumps from 1 to 5, and the data worker asks for a rebirth.
            publish_all(client, [spb.data(1, alias=2, value=5.0, at_s=60), spb.data(5, alias=2, value=6.0, at_s=61)])
            await wait_for_count(dsn, "select count(*) from device_events where reason = 'rebirth-requested'", 1)
            publish_all(client, [spb.nbirth(2, "Cold Room/Humidity", at_s=62)])
            await wait_for_count(dsn, births_stored, 2)
            publish_all(client, [spb.data(1, alias=2, value=61.0, at_s=63)])
            await wait_for_count(dsn, "select count(*) from telemetry where observed_at = '2026-03-01 09:01:03Z'", 1)

    asyncio.run(scenario())
    assert db.execute(
        "select quantity, value, extra->>'metric' from telemetry"
        " where observed_at in ('2026-03-01 09:01:00Z', '2026-03-01 09:01:01Z', '2026-03-01 09:01:03Z')"
        " order by observed_at"
    ).fetchall() == [
        ("temperature_c", 5.0, "Cold Room/Temperature"),
        ("temperature_c", 6.0, "Cold Room/Temperature"),
        ("humidity_pct", 61.0, "Cold Room/Humidity"),
    ]
    assert db.execute("select extra->>'cause' from device_events where reason = 'rebirth-requested'").fetchall() == [
        ("seq-gap",)
    ]
