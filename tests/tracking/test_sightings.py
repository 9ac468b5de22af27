"""Reads into tag_sightings: the ingest step appends deltas (through a real Writer and database, and the real broker),
the resolver's fold merges them."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import psycopg
import pytest

from ingest.batch import Row, Rows
from ingest.writer import Writer
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count
from tests.tracking.presence_site import ITEM, OTHER, at, build_site, read, rows, sgtin
from tracking import resolver, sightings
from tracking.sightings import Sightings

Db = psycopg.Connection[tuple[Any, ...]]


def write(dsn: str, *batches: Rows, step: Sightings | None = None, fold_each: bool = False) -> Sightings:
    """Write the batches through ingest, then fold what they appended (after each batch with ``fold_each``)."""
    step = step or Sightings()

    async def run() -> None:
        writer = Writer(dsn, steps=[step])
        try:
            for batch in batches:
                await writer.write(batch)
                if fold_each:
                    await fold(dsn)
        finally:
            await writer.close()
        await fold(dsn)

    asyncio.run(run())
    return step


async def fold(dsn: str, limit: int | None = None) -> None:
    """Fold as the resolver does, in transactions of at most ``limit`` deltas, until none is left."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            async with conn.transaction():
                through = None if limit is None else await sightings.backlog(conn, limit)
                done = await sightings.fold(conn, through)
            if done.complete:
                return


def sighting(db: Db, location: str, epc: str = ITEM) -> tuple[Any, ...] | None:
    return db.execute(
        "select first_seen_at, last_seen_at, reads, rssi_smoothed_dbm, last_device_id, last_antenna, side"
        " from tag_sightings where epc = %s and location_id = %s",
        (epc, location),
    ).fetchone()


@pytest.fixture
def site(db: Db) -> Db:
    build_site(db)
    return db


def test_reads_fold_into_one_row_per_tag_and_location(dsn: str, site: Db) -> None:
    write(dsn, rows([
        read(0, "r700", 1, rssi=-60), read(1, "r700", 1, rssi=-62), read(2, "r700", 1, rssi=-58),
        read(1.5, "r700", 2, rssi=-75),
        read(0, "fx-dock", 1, OTHER), read(1, "fx-dock", 2, OTHER), read(0.5, "fx-dock", 1, OTHER),
    ]))  # fmt: skip

    assert sighting(site, "shelf-1") == (at(0), at(2), 3, -60.0, "r700", 1, None)
    assert sighting(site, "shelf-2") == (at(1.5), at(1.5), 1, -75.0, "r700", 2, None)
    # Both dock antennas are one location; the side is that of the newest read.
    assert sighting(site, "dock-1", OTHER) == (at(0), at(1), 3, -60.0, "fx-dock", 2, "in")
    assert site.execute(
        "select in_first_at, in_last_at, out_first_at, out_last_at from portal_passes where epc = %s", (OTHER,)
    ).fetchone() == (at(1), at(1), at(0), at(0.5))
    # Identity is decoded off the hot path, by the resolver's tick; the deltas are gone once folded.
    assert site.execute("select count(*) from items").fetchone() == (0,)
    assert site.execute("select count(*) from sighting_deltas").fetchone() == (0,)


@pytest.mark.parametrize("fold_each", [True, False], ids=["folded-each", "folded-together"])
def test_a_late_read_moves_neither_last_seen_nor_the_smoothed_rssi(dsn: str, site: Db, fold_each: bool) -> None:
    write(
        dsn,
        rows([read(10, "r700", 1, rssi=-60), read(12, "r700", 1, rssi=-60)]),
        rows([read(5, "r700", 1, rssi=-40)]),
        fold_each=fold_each,
    )

    first, last, reads, rssi, _, _, _ = sighting(site, "shelf-1") or ()
    assert (first, last, reads, rssi) == (at(5), at(12), 3, -60.0)


@pytest.mark.parametrize("fold_each", [True, False], ids=["folded-each", "folded-together"])
def test_newer_reads_pull_the_smoothed_rssi_by_their_number(dsn: str, site: Db, fold_each: bool) -> None:
    write(
        dsn,
        rows([read(0, "r700", 1, rssi=-60)]),
        rows([read(1, "r700", 1, rssi=-40), read(2, "r700", 1, rssi=-40), read(3, "r700", 1, rssi=-40)]),
        fold_each=fold_each,
    )

    _, last, reads, rssi, _, _, _ = sighting(site, "shelf-1") or ()
    # Three reads weigh 1 - 0.7^3 = 0.657 against the average so far.
    assert (last, reads) == (at(3), 4)
    assert rssi == pytest.approx(-60 + 0.657 * 20, abs=0.01)


@pytest.mark.parametrize("fold_each", [True, False], ids=["folded-each", "folded-together"])
def test_a_tag_unread_for_longer_than_the_visit_gap_starts_a_new_visit(dsn: str, site: Db, fold_each: bool) -> None:
    write(
        dsn,
        rows([read(0, "r700", 1, rssi=-50), read(2, "r700", 1, rssi=-50)]),
        rows([read(100, "r700", 1, rssi=-50)]),  # a shelf reader reporting seldom: the same visit
        rows([read(500, "r700", 1)]),
        fold_each=fold_each,
    )

    assert sighting(site, "shelf-1") == (at(500), at(500), 1, -60.0, "r700", 1, None)


@pytest.mark.parametrize("fold_each", [True, False], ids=["folded-each", "folded-together"])
def test_a_portal_pass_ends_after_the_short_gap(dsn: str, site: Db, fold_each: bool) -> None:
    write(
        dsn,
        rows([read(0, "fx-dock", 2), read(1, "fx-dock", 1)]),  # in, then out
        rows([read(30, "fx-dock", 1), read(31, "fx-dock", 2)]),  # back through: out, then in
        fold_each=fold_each,
    )

    assert site.execute(
        "select in_first_at, in_last_at, out_first_at, out_last_at from portal_passes where epc = %s", (ITEM,)
    ).fetchone() == (at(31), at(31), at(30), at(30))
    assert sighting(site, "dock-1") == (at(30), at(31), 2, -60.0, "fx-dock", 2, "in")


def test_reads_of_unmapped_or_parked_readers_are_counted_not_placed(dsn: str, site: Db) -> None:
    step = write(dsn, rows([
        read(0, "parked", 1), read(0, "nowhere", 1), read(0, "never-registered", 1),
        read(0, "r700", 7),  # an antenna without a row belongs to the reader's own location
    ]))  # fmt: skip

    assert step.unplaced_reads == 3
    assert site.execute("select epc, location_id from tag_sightings").fetchall() == [(ITEM, "zone-a")]
    assert site.execute("select count(*) from rfid_reads").fetchone() == (4,)


def test_a_redelivered_batch_counts_only_the_reads_it_had_not_stored(dsn: str, site: Db) -> None:
    batch = rows([read(0, "r700", 1, rssi=-50), read(3, "r700", 1, rssi=-70)])
    step = write(dsn, batch)
    once = sighting(site, "shelf-1")
    write(dsn, batch, step=step)
    assert sighting(site, "shelf-1") == once

    # Redelivered with a read it did not have (the broker batches redeliveries its own way).
    write(dsn, rows([read(0, "r700", 1, rssi=-50), read(3, "r700", 1, rssi=-70), read(4, "r700", 1)]), step=step)
    again = sighting(site, "shelf-1")
    assert once is not None
    assert again is not None
    assert (once[2], again[2]) == (2, 3)
    assert again[1] == at(4)


def test_a_registry_change_is_picked_up_after_the_refresh(dsn: str, site: Db) -> None:
    step = Sightings(refresh_s=3600)
    write(dsn, rows([read(0, "nowhere", 1)]), step=step)
    site.execute("update devices set location_id = 'receiving' where id = 'nowhere'")
    write(dsn, rows([read(1, "nowhere", 1)]), step=step)
    assert site.execute("select count(*) from tag_sightings").fetchone() == (0,)

    step.invalidate()
    write(dsn, rows([read(2, "nowhere", 1)]), step=step)
    assert site.execute("select location_id, reads from tag_sightings").fetchall() == [("receiving", 1)]


def test_sightings_follow_reads_through_the_broker(
    dsn: str, site: Db, mqtt_address: tuple[str, int], topic_prefix: str
) -> None:
    device = f"{topic_prefix}-gate"
    site.execute(
        "insert into devices (id, kind, source, location_id) values (%s, 'rfid_reader', 'native', 'receiving')",
        (device,),
    )
    topic = f"stocktrace/{device}/reads"
    messages = [
        (topic, json.dumps({"at": 1772442000 + i, "reads": [
            {"epc": f"3034F4E4E40002C0{n:08X}", "antenna": 1, "rssi_dbm": -55.0} for n in range(40)]}).encode())
        for i in range(5)
    ]  # fmt: skip

    async def scenario() -> None:
        stop = asyncio.Event()
        resolving = asyncio.create_task(resolver.run(dsn, stop))
        async with running_consumer(dsn, mqtt_address, [topic], steps=[Sightings()]):
            publish_all(publisher(mqtt_address), messages)
            await wait_for_count(dsn, "select count(*) from tag_sightings where reads = 5", 40, timeout_s=20)
        stop.set()
        await resolving

    asyncio.run(scenario())
    assert site.execute(
        "select count(*), min(reads), max(reads), min(last_seen_at - first_seen_at) from tag_sightings"
        " where location_id = 'receiving'"
    ).fetchone() == (40, 5, 5, at(4) - at(0))


# Reads of a few tags over shelves, the receiving zone and both dock doors: late, out of order, with gaps longer
# than a visit and a portal pass, with and without RSSI.
_PORTS = [("fx-dock", 1), ("fx-dock", 2), ("r700", 1), ("r700", 2), ("gw-recv", 1), ("fx-hh", 2)]


def _random_batches(seed: int) -> list[Rows]:
    rng = random.Random(seed)
    now = 0.0
    batches = []
    for _ in range(rng.randrange(5, 30)):
        now += rng.choice([0.5, 2, 5, 12, 30, 400])
        reads: dict[tuple[Any, ...], Row] = {}
        for _ in range(rng.randrange(1, 8)):
            device, antenna = rng.choice(_PORTS)
            seconds = max(0.0, now + rng.choice([0, 0.3, 1, 3, 11, 15, -20, -500]))
            row = read(seconds, device, antenna, sgtin(rng.randrange(5)), rng.choice([None, -40.0, -55.5, -70.0]))
            reads[row[:4]] = row  # a batch holds each read once (rfid_reads' natural key)
        batches.append(rows(list(reads.values())))
    return batches


def _folded(db: Db) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    found = db.execute(
        "select epc, location_id, first_seen_at, last_seen_at, reads, round(rssi_smoothed_dbm::numeric, 2),"
        " last_device_id, last_antenna, side from tag_sightings order by 1, 2"
    ).fetchall()
    passes = db.execute(
        "select epc, location_id, in_first_at, in_last_at, out_first_at, out_last_at from portal_passes order by 1, 2"
    ).fetchall()
    db.execute("truncate tag_sightings, portal_passes, sighting_deltas, sighting_fold_marks, rfid_reads")
    return found, passes


@pytest.mark.parametrize("seed", range(12))
def test_folding_many_batches_at_once_or_in_parts_gives_what_folding_each_gives(dsn: str, site: Db, seed: int) -> None:
    batches = _random_batches(seed)

    write(dsn, *batches, fold_each=True)
    each = _folded(site)
    write(dsn, *batches)
    together = _folded(site)

    async def in_parts() -> None:
        writer = Writer(dsn, steps=[Sightings()])
        try:
            for batch in batches:
                await writer.write(batch)
        finally:
            await writer.close()
        await fold(dsn, limit=random.Random(seed).randrange(1, 6))

    asyncio.run(in_parts())
    parts = _folded(site)

    assert each[0]  # the scenario reads something
    assert together == each
    assert parts == each


def test_workers_appending_the_same_tags_never_wait_for_each_other(dsn: str, site: Db) -> None:
    batch = rows(
        [read(0, "r700", 1, sgtin(n)) for n in range(50)] + [read(1, "fx-dock", 2, sgtin(n)) for n in range(50)]
    )

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as first:
            await Sightings()(first, batch)  # the first worker's batch, not committed yet
            # A second worker with the same tags: a lock wait would fail its write at once.
            second = Writer(f"{dsn}?options=-c%20lock_timeout%3D500", steps=[Sightings()])
            try:
                await second.write(rows([read(2, "r700", 1, sgtin(n)) for n in range(50)]))
            finally:
                await second.close()
            await first.commit()
        await fold(dsn)

    asyncio.run(scenario())
    assert site.execute("select count(*), sum(reads) from tag_sightings where location_id = 'shelf-1'").fetchone() == (
        50,
        100,
    )
    assert site.execute("select count(*) from portal_passes").fetchone() == (50,)


def test_a_batch_that_commits_while_the_resolver_folds_is_folded_next_time(dsn: str, site: Db) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as slow:
            await Sightings()(slow, rows([read(0, "r700", 1)]))  # begun before the fold, committed after it
            writer = Writer(dsn, steps=[Sightings()])
            try:
                await writer.write(rows([read(1, "r700", 1, OTHER)]))
            finally:
                await writer.close()
            await fold(dsn)
            await slow.commit()
        await fold(dsn)

    asyncio.run(scenario())
    assert site.execute("select epc, reads from tag_sightings order by epc").fetchall() == [(ITEM, 1), (OTHER, 1)]
    assert site.execute("select count(*) from sighting_deltas").fetchone() == (0,)


def test_a_fold_mark_from_another_cluster_skips_nothing(dsn: str, site: Db) -> None:
    # A database restored into a new cluster: transaction numbers start again below the mark it kept.
    site.execute("insert into sighting_fold_marks (name, folded_below) values ('resolver', '4000000000000')")
    write(dsn, rows([read(0, "r700", 1)]))

    assert site.execute("select epc, reads from tag_sightings").fetchall() == [(ITEM, 1)]
