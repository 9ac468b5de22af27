"""The read counts ingest keeps (read_counts, read_counts_5m, read_counts_30m): per antenna and minute, each read
counted once, whatever the broker redelivers and however many workers write; a database upgraded from a version
without them starts with its reads counted; they expire with the raw reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest.batch import Row, Rows
from ingest.writer import Writer
from stocktrace.db import migrate
from stocktrace.retention import drop_expired_chunks
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
GRAINS = {"read_counts": "1 minute", "read_counts_5m": "5 minutes", "read_counts_30m": "30 minutes"}


def counts(db: psycopg.Connection[Any], table: str = "read_counts") -> list[tuple[Any, ...]]:
    return db.execute(
        f"select minute, device_id, antenna, reads, lag_sum_s, lag_max_s from {table}"
        " order by device_id, antenna, minute"
    ).fetchall()


def counted_from_raw(db: psycopg.Connection[Any], grain: str) -> list[tuple[Any, ...]]:
    """What the counts must be: every stored read, grouped as the panels used to group the raw reads."""
    return db.execute(
        "select time_bucket(%s::interval, read_at), device_id, antenna, count(*),"
        " sum(date_part('epoch', received_at - read_at)), max(date_part('epoch', received_at - read_at))"
        " from rfid_reads group by 1, 2, 3 order by 2, 3, 1",
        (grain,),
    ).fetchall()


def assert_counts_match_raw_reads(db: psycopg.Connection[Any]) -> None:
    for table, grain in GRAINS.items():
        found, expected = counts(db, table), counted_from_raw(db, grain)
        assert [row[:4] for row in found] == [row[:4] for row in expected], table
        for got, want in zip(found, expected, strict=True):
            assert got[4:] == pytest.approx(want[4:], rel=1e-12, abs=1e-6), (table, got, want)


def read(at: datetime, device: str, antenna: int, epc: str, received_at: datetime) -> Row:
    return (at, device, antenna, epc, -60.0, received_at, None)


def batch(reads: Sequence[Row]) -> Rows:
    rows = Rows(reads[0][5])
    rows.rfid_reads.extend(reads)
    return rows


async def write_all(dsn: str, batches: Sequence[Rows]) -> Writer:
    writer = Writer(dsn)
    try:
        for rows in batches:
            await writer.write(rows)
    finally:
        await writer.close()
    return writer


def test_ingest_counts_each_antennas_reads_per_minute_with_their_lag(dsn, db, mqtt_address, topic_prefix) -> None:
    device = f"{topic_prefix}-dock"
    topic = f"stocktrace/{device}/reads"
    # 09:00:00 to 09:06:35, a read every 5 s alternating between antennas 1 and 2; sent in messages of 10 reads.
    ats = [T0 + timedelta(seconds=5 * k) for k in range(80)]
    messages = [
        (topic, json.dumps({"reads": [{"epc": f"30{k:022X}", "antenna": 1 + k % 2, "at": ats[k].isoformat()}
                                      for k in range(start, start + 10)]}).encode())
        for start in range(0, 80, 10)
    ]  # fmt: skip

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]):
            publish_all(publisher(mqtt_address), messages)
            await wait_for_count(dsn, "select coalesce(sum(reads), 0) from read_counts", 80)

    asyncio.run(scenario())

    per_minute = [(row[0], row[2], row[3]) for row in counts(db)]
    # Six reads a minute on each antenna, and four in 09:06:00-09:06:35.
    expected = [(T0 + timedelta(minutes=m), antenna, 6 if m < 6 else 4) for antenna in (1, 2) for m in range(7)]
    assert per_minute == expected
    assert_counts_match_raw_reads(db)
    assert [row[1:4] for row in counts(db, "read_counts_5m")] == [
        (device, 1, 30), (device, 1, 10), (device, 2, 30), (device, 2, 10)
    ]  # fmt: skip


def test_a_redelivered_message_is_counted_once(dsn, db, mqtt_address, topic_prefix) -> None:
    topic = f"stocktrace/{topic_prefix}-r1/reads"
    payload = json.dumps({"epc": "ABCD1234", "antenna": 3, "at": T0.timestamp()}).encode()
    other = json.dumps({"epc": "ABCD9999", "antenna": 3, "at": T0.timestamp() + 1}).encode()

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]):
            # The same message three times, as a device retrying a QoS 1 publish sends it, and a new one.
            publish_all(publisher(mqtt_address), [(topic, payload)] * 3 + [(topic, other)])
            await wait_for_count(dsn, "select count(*) from device_activity where messages >= 4", 1)

    asyncio.run(scenario())
    assert [row[:4] for row in counts(db)] == [(T0, f"{topic_prefix}-r1", 3, 2)]
    assert_counts_match_raw_reads(db)


def test_a_batch_written_again_counts_only_the_reads_it_adds(dsn, db) -> None:
    received_at = T0 + timedelta(seconds=30)
    first = [read(T0 + timedelta(seconds=k), "r1", 1, f"E{k:04d}", received_at) for k in range(40)]
    later = received_at + timedelta(minutes=5)
    # Redelivered after a reconnect, together with reads not stored yet (one of them twice) and one of another antenna.
    again = [
        *((*row[:5], later, None) for row in first),
        read(T0 + timedelta(seconds=50), "r1", 1, "NEW1", later),
        read(T0 + timedelta(seconds=50), "r1", 1, "NEW1", later),
        read(T0 + timedelta(seconds=61), "r1", 1, "NEW2", later),
        read(T0 + timedelta(seconds=10), "r1", 2, "NEW3", later),
    ]

    writer = asyncio.run(write_all(dsn, [batch(first), batch(again), batch(again)]))

    assert writer.redelivered_batches == 2  # both went through the staging path
    assert [row[:4] for row in counts(db)] == [(T0, "r1", 1, 41), (T0 + timedelta(minutes=1), "r1", 1, 1),
                                                (T0, "r1", 2, 1)]  # fmt: skip
    # The lag is each stored read's own: the first 40 from their first delivery, NEW1 from the second.
    new_lag = (later - T0 - timedelta(seconds=50)).total_seconds()
    assert counts(db)[0][4:] == pytest.approx((sum(30.0 - k for k in range(40)) + new_lag, new_lag))
    assert_counts_match_raw_reads(db)


def test_two_workers_adding_to_the_same_minutes_count_every_read_once(dsn, db) -> None:
    received_at = T0 + timedelta(hours=3)
    devices, antennas, minutes, batches_each = 4, 4, 60, 8

    def batches(worker: int) -> list[Rows]:
        # Every batch adds to the same 4 readers x 4 antennas x 60 minutes, one worker in the reverse order of the
        # other: upserts that locked rows in the order the reads came would deadlock.
        found = []
        for number in range(batches_each):
            reads = [
                read(T0 + timedelta(minutes=m, seconds=worker), f"r{d}", a, f"{worker}-{number}-{m}", received_at)
                for d in range(devices) for a in range(antennas) for m in range(minutes)
            ]  # fmt: skip
            found.append(batch(reads if worker == 0 else reads[::-1]))
        return found

    async def both() -> None:
        await asyncio.gather(write_all(dsn, batches(0)), write_all(dsn, batches(1)))

    asyncio.run(both())

    assert len(counts(db)) == devices * antennas * minutes
    assert {row[3] for row in counts(db)} == {2 * batches_each}  # a read per batch of each worker, every minute
    assert_counts_match_raw_reads(db)


def test_an_upgraded_database_starts_with_its_reads_counted(dsn) -> None:
    name = f"{psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}_upgrade"
    admin_url = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}"'.encode())
        admin.execute(f'create database "{name}"'.encode())
    url = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # The schema as a version before the read counts left it, with reads stored by that version.
            for table in GRAINS:
                conn.execute(f"drop table {table}".encode())
            conn.execute("delete from schema_migrations where version = '0002'")
            with conn.cursor().copy(
                "copy rfid_reads (read_at, device_id, antenna, epc, received_at) from stdin"
            ) as copy:
                for k in range(500):
                    at = T0 + timedelta(seconds=7 * k)
                    copy.write_row((at, f"r{k % 3}", k % 4, f"E{k:05d}", at + timedelta(milliseconds=k)))

            migrate(url)

            assert conn.execute("select sum(reads) from read_counts_30m").fetchone() == (500,)
            assert_counts_match_raw_reads(conn)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)'.encode())


def test_read_counts_expire_with_the_raw_reads(dsn, db) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=45), now - timedelta(hours=1)
    for table in GRAINS:
        db.execute(
            f"insert into {table} (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)"
            " values (%s, 'r1', 1, 1, 0, 0), (%s, 'r1', 1, 1, 0, 0)",
            (old, recent),
        )

    async def expire() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await drop_expired_chunks(conn, timedelta(days=30))

    assert asyncio.run(expire()) == len(GRAINS)
    for table in GRAINS:
        assert db.execute(f"select count(*) from {table}").fetchone() == (1,), table
