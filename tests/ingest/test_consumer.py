"""The ingest path end to end: real Mosquitto in, real TimescaleDB out."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg

from ingest.routes import Route
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count


def test_reads_telemetry_and_status_land_in_their_tables(dsn, db, mqtt_address, topic_prefix) -> None:
    device = f"{topic_prefix}-dock"
    messages = [
        (f"stocktrace/{device}/reads", json.dumps({"epc": "3034257BF7194E4000001A85", "antenna": 2, "rssi_dbm": -61.5,
                                                   "at": "2026-03-01T09:00:00Z"}).encode()),
        (f"stocktrace/{device}/reads", json.dumps({"at": 1772355601, "reads": [
            {"epc": f"30342{i:019X}", "antenna": 1} for i in range(50)]}).encode()),
        (f"stocktrace/{device}/telemetry", json.dumps({"at": 1772355602, "temperature_c": 4.5,
                                                       "position": {"lat": 52.5, "lon": 13.4}}).encode()),
        (f"stocktrace/{device}/status", b"offline"),
    ]  # fmt: skip

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [f"stocktrace/{device}/#"]):
            publish_all(publisher(mqtt_address), messages)
            assert await wait_for_count(dsn, "select count(*) from device_events", 1) == 1

    asyncio.run(scenario())
    assert db.execute("select count(*) from rfid_reads").fetchone() == (51,)
    assert db.execute("select epc, antenna, rssi_dbm, read_at from rfid_reads where antenna = 2").fetchone() == (
        "3034257BF7194E4000001A85",
        2,
        -61.5,
        datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
    )
    assert db.execute("select quantity, value, latitude from telemetry order by quantity").fetchall() == [
        ("position", None, 52.5),
        ("temperature_c", 4.5, None),
    ]
    assert db.execute("select online, reason from device_events").fetchone() == (False, "last-will")
    assert db.execute(
        "select messages, last_topic from device_activity where device_id = %s", (device,)
    ).fetchone() == (4, f"stocktrace/{device}/status")
    assert db.execute("select count(*) from dead_letters").fetchone() == (0,)


def test_a_bad_payload_is_dead_lettered_with_topic_and_reason_and_the_rest_is_stored(
    dsn, db, mqtt_address, topic_prefix
) -> None:
    topic = f"stocktrace/{topic_prefix}-r1/reads"

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]):
            publish_all(publisher(mqtt_address), [(topic, b'{"epc": "ABCD'), (topic, b'{"epc": "ABCD1234"}')])
            await wait_for_count(dsn, "select count(*) from rfid_reads", 1)

    asyncio.run(scenario())
    assert db.execute("select topic, payload, error from dead_letters").fetchall() == [
        (topic, b'{"epc": "ABCD', "payload is not valid JSON: Input data was truncated")
    ]
    assert db.execute("select epc from rfid_reads").fetchall() == [("ABCD1234",)]


def test_a_redelivered_message_leaves_no_duplicate(dsn, db, mqtt_address, topic_prefix) -> None:
    topic = f"stocktrace/{topic_prefix}-r1/reads"
    payload = json.dumps({"epc": "ABCD1234", "at": 1772355600.25}).encode()

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]):
            # The same message three times, as a device retrying a QoS 1 publish would send it, and a new one.
            publish_all(publisher(mqtt_address), [(topic, payload)] * 3 + [(topic, b'{"epc": "ABCD9999"}')])
            await wait_for_count(dsn, "select count(*) from device_activity where messages >= 4", 1)

    asyncio.run(scenario())
    assert db.execute("select epc, count(*) from rfid_reads group by epc order by epc").fetchall() == [
        ("ABCD1234", 1),
        ("ABCD9999", 1),
    ]


def test_topics_routed_to_a_vendor_decoder_use_it(dsn, db, mqtt_address, topic_prefix) -> None:
    topic = f"{topic_prefix}/lwt-devices/d1"
    routes = [Route(f"{topic_prefix}/+/+", "native")]

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [f"{topic_prefix}/#"], routes=routes):
            publish_all(publisher(mqtt_address), [(topic, b"offline")])
            await wait_for_count(dsn, "select count(*) from dead_letters", 1)

    asyncio.run(scenario())
    # The native decoder was used (it names its topic layout in the error): routing reached it.
    (error,) = db.execute("select error from dead_letters").fetchone() or ("",)
    assert "is not stocktrace/<device_id>" in error


def test_messages_published_while_the_consumer_is_away_are_delivered_when_it_returns(
    dsn, db, mqtt_address, topic_prefix
) -> None:
    topic = f"stocktrace/{topic_prefix}-r1/reads"
    client_id = f"{topic_prefix}-session"
    payloads = [(topic, json.dumps({"epc": f"AB{i:08X}", "at": 1772355600 + i}).encode()) for i in range(3000)]

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic], client_id=client_id):
            pass  # the persistent session and its subscription now exist on the broker
        publish_all(publisher(mqtt_address), payloads)
        async with running_consumer(dsn, mqtt_address, [topic], client_id=client_id):
            assert await wait_for_count(dsn, "select count(*) from rfid_reads", 3000) == 3000

    asyncio.run(scenario())


def test_metrics_count_what_was_committed(dsn, db, mqtt_address, topic_prefix) -> None:
    from ingest import metrics

    topic = f"stocktrace/{topic_prefix}-r1/reads"
    before_messages = metrics.MESSAGES._value.get()
    before_dead = metrics.DEAD_LETTERS._value.get()

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]):
            publish_all(publisher(mqtt_address), [(topic, b'{"epc": "ABCD1234"}'), (topic, b"nope")])
            await wait_for_count(dsn, "select count(*) from dead_letters", 1)

    asyncio.run(scenario())
    assert metrics.MESSAGES._value.get() - before_messages == 2
    assert metrics.DEAD_LETTERS._value.get() - before_dead == 1


def test_database_rows_are_not_touched_by_a_failing_batch(dsn, db) -> None:
    """A batch is one transaction: rows of a batch that fails are not half written."""
    from ingest.batch import Rows
    from ingest.writer import Writer

    received_at = datetime.now(UTC)
    rows = Rows(received_at)
    rows.rfid_reads.append((received_at, "d1", 1, "ABCD1234", -50.0, received_at, None))
    rows.telemetry.append((received_at, "d1", "temperature_c", 4.0, None, None, None, None, None, received_at, None))
    rows.activity["d1"] = ("t", 1)
    db.execute("alter table telemetry add constraint no_d1 check (device_id <> 'd1')")
    try:

        async def write() -> None:
            writer = Writer(dsn)
            try:
                await writer.write(rows)
            finally:
                await writer.close()

        try:
            asyncio.run(write())
        except psycopg.errors.CheckViolation:
            pass
        else:
            raise AssertionError("the write should have failed")
    finally:
        db.execute("alter table telemetry drop constraint no_d1")
    assert db.execute("select count(*) from rfid_reads").fetchone() == (0,)
    assert db.execute("select count(*) from device_activity").fetchone() == (0,)
