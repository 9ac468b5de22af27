"""Per-device decoder options through real ingest: set with `stocktrace apply -f`, picked up by a running consumer.

Real Mosquitto in, real TimescaleDB out; the consumer reads the registry of the same database, as the service's
workers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from click.testing import CliRunner

from ingest.consumer import BatchPolicy, Consumer
from ingest.routes import Route, Router
from ingest.wire import BrokerOptions
from ingest.writer import Writer
from stocktrace.cli import main
from tests.ingest.helpers import publish_all, publisher, wait_for_count

Conn = psycopg.Connection[Any]


@contextlib.asynccontextmanager
async def consuming(
    dsn: str, address: tuple[str, int], topic_filters: Sequence[str], routes: Sequence[Route], poll_s: float = 0.5
) -> AsyncIterator[Consumer]:
    """A consumer as a service worker runs it: decoders built from the registry and kept in step with it."""
    consumer = Consumer(
        BrokerOptions(address[0], address[1], f"test-{uuid.uuid4().hex[:8]}", clean_start=True, session_expiry_s=0),
        list(topic_filters),
        Router(routes),
        Writer(dsn),
        BatchPolicy(max_messages=500, max_wait_s=0.02),
        registry_url=dsn,
        registry_poll_s=poll_s,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.connected.wait(), 10)
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def apply(dsn: str, manifest: str) -> list[str]:
    """`stocktrace apply -f -` as an operator runs it, beside the running consumer."""
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["apply", "-f", "-", "--database-url", dsn], input=manifest
    )
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def uplink(prefix: str, device_id: str, decoded: dict[str, Any], at: datetime) -> tuple[str, bytes]:
    """A The Things Stack uplink as its MQTT integration publishes it."""
    body = {
        "end_device_ids": {"device_id": device_id, "application_ids": {"application_id": "cold-chain"}},
        "received_at": at.isoformat(),
        "uplink_message": {"f_port": 2, "decoded_payload": decoded, "received_at": at.isoformat()},
    }
    return f"{prefix}/v3/cold-chain@ttn/devices/{device_id}/up", json.dumps(body).encode()


def probe_manifest(device_id: str, fields: str) -> str:
    return f"""\
devices:
  - id: {device_id}
    kind: sensor
    source: ttn-v3
    mqtt: null
    decoder_options:
      fields: {fields}
"""


def test_a_lorawan_field_map_applied_from_a_manifest_names_the_readings(dsn, db, mqtt_address, topic_prefix) -> None:
    probe, plain = f"{topic_prefix}-probe", f"{topic_prefix}-plain"
    routes = [Route(f"{topic_prefix}/v3/#", "ttn-v3")]
    at = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    decoded = {"T_probe": 4.25, "Vbat": 3012, "Door": 1}

    async def scenario() -> None:
        await apply(dsn, probe_manifest(probe, "{T_probe: temperature_c, Vbat: battery_mv}"))
        async with consuming(dsn, mqtt_address, [f"{topic_prefix}/#"], routes):
            publish_all(publisher(mqtt_address), [uplink(topic_prefix, probe, decoded, at),
                                                  uplink(topic_prefix, plain, decoded, at)])  # fmt: skip
            await wait_for_count(dsn, "select count(*) from dead_letters", 1)
            await wait_for_count(dsn, "select count(*) from telemetry", 2)

    asyncio.run(scenario())
    rows = db.execute(
        "select device_id, quantity, value, extra->>'field', extra->'decoded' from telemetry order by quantity"
    ).fetchall()
    assert rows == [
        (probe, "battery_v", 3.012, "Vbat", {"Door": 1}),
        (probe, "temperature_c", 4.25, "T_probe", {"Door": 1}),
    ]
    # The device without options decodes with the default map, which does not know these names.
    (error,) = db.execute("select error from dead_letters").fetchone() or ("",)
    assert "no field mapped to a quantity or a position (fields: Door, T_probe, Vbat)" in error


def test_a_field_map_changed_while_the_consumer_runs_takes_effect(dsn, db, mqtt_address, topic_prefix) -> None:
    probe = f"{topic_prefix}-probe"
    routes = [Route(f"{topic_prefix}/v3/#", "ttn-v3")]
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    client = publisher(mqtt_address)

    async def stored_value(at: datetime) -> float:
        """Publish a 41-degree reading stamped ``at`` and return the temperature it was stored as."""
        publish_all(client, [uplink(topic_prefix, probe, {"T_probe": 41.0}, at)])
        query = f"select count(*) from telemetry where observed_at = '{at.isoformat()}'"
        assert await wait_for_count(dsn, query, 1) == 1
        row = db.execute("select value from telemetry where observed_at = %s", (at,)).fetchone()
        assert row is not None
        return float(row[0])

    async def scenario() -> list[float]:
        await apply(dsn, probe_manifest(probe, "{T_probe: temperature_c}"))
        async with consuming(dsn, mqtt_address, [f"{topic_prefix}/#"], routes):
            before = await stored_value(start)
            lines = await apply(dsn, probe_manifest(probe, "{T_probe: temperature_f}"))
            assert lines[0] == f"device/{probe} updated (decoder_options); decoder_options: fields.T_probe changed"
            # The running consumer is not told; it notices the registry changed within seconds.
            after, deadline, n = before, time.monotonic() + 30, 0
            while after == before and time.monotonic() < deadline:
                n += 1
                after = await stored_value(start + timedelta(seconds=n))
                await asyncio.sleep(0.2)
            return [before, after]

    assert asyncio.run(scenario()) == [41.0, 5.0]  # then in °F, converted to °C


def sensor(prefix: str, plug: str, time: str) -> tuple[str, bytes]:
    """A Tasmota SENSOR message; Tasmota writes Time in the device's local time without an offset."""
    body = {"Time": time, "DS18B20": {"Id": "01144B7E2AAA", "Temperature": -18.4}, "TempUnit": "C"}
    return f"tele/{prefix}/{plug}/SENSOR", json.dumps(body).encode()


def test_tasmota_times_are_read_in_the_devices_time_zone(dsn, db, mqtt_address, topic_prefix) -> None:
    site, plugs = f"{topic_prefix}-dc", ["plug-ny", "plug-berlin", "plug-unregistered"]
    manifest = f"""\
sites:
  - id: {site}
    timezone: Europe/Berlin
    locations: [{{id: {site}-freezer, kind: freezer}}]
devices:
  - id: {topic_prefix}/plug-ny          # its own clock runs on New York time
    kind: sensor
    source: tasmota
    location: {site}-freezer
    mqtt: {{username: {topic_prefix}-plug-ny}}
    decoder_options: {{timezone: America/New_York}}
  - id: {topic_prefix}/plug-berlin      # no zone of its own: its site's
    kind: sensor
    source: tasmota
    location: {site}-freezer
    mqtt: {{username: {topic_prefix}-plug-berlin}}
"""
    routes = [Route(f"tele/{topic_prefix}/#", "tasmota")]
    messages = [
        sensor(topic_prefix, plug, local) for local in ("2026-01-15T12:00:00", "2026-07-15T12:00:00") for plug in plugs
    ]

    async def scenario() -> None:
        await apply(dsn, manifest)
        async with consuming(dsn, mqtt_address, [f"tele/{topic_prefix}/#"], routes):
            publish_all(publisher(mqtt_address), messages)
            await wait_for_count(dsn, "select count(*) from telemetry", len(messages))

    asyncio.run(scenario())
    observed = db.execute(
        "select split_part(device_id, '/', 2), to_char(observed_at at time zone 'UTC', 'MM-DD HH24:MI')"
        " from telemetry order by 1, 2"
    ).fetchall()
    assert observed == [
        ("plug-berlin", "01-15 11:00"),  # CET, +01:00
        ("plug-berlin", "07-15 10:00"),  # CEST, +02:00
        ("plug-ny", "01-15 17:00"),  # EST, -05:00
        ("plug-ny", "07-15 16:00"),  # EDT, -04:00
        ("plug-unregistered", "01-15 12:00"),  # UTC
        ("plug-unregistered", "07-15 12:00"),
    ]
