"""The ingest step that folds reads into tag_sightings: through a real Writer and database, and the real broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from ingest.batch import Rows
from ingest.writer import Writer
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count
from tests.tracking.presence_site import ITEM, OTHER, at, build_site, read, rows
from tracking.sightings import Sightings

Db = psycopg.Connection[tuple[Any, ...]]


def write(dsn: str, *batches: Rows, step: Sightings | None = None) -> Sightings:
    step = step or Sightings()

    async def run() -> None:
        writer = Writer(dsn, steps=[step])
        try:
            for batch in batches:
                await writer.write(batch)
        finally:
            await writer.close()

    asyncio.run(run())
    return step


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


def test_reads_fold_into_one_row_per_tag_and_location_with_the_item_identified(dsn: str, site: Db) -> None:
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
    # Identity is decoded off the hot path, by the resolver.
    assert site.execute("select count(*) from items").fetchone() == (0,)


def test_a_late_read_moves_neither_last_seen_nor_the_smoothed_rssi(dsn: str, site: Db) -> None:
    write(
        dsn,
        rows([read(10, "r700", 1, rssi=-60), read(12, "r700", 1, rssi=-60)]),
        rows([read(5, "r700", 1, rssi=-40)]),
    )

    first, last, reads, rssi, _, _, _ = sighting(site, "shelf-1") or ()
    assert (first, last, reads, rssi) == (at(5), at(12), 3, -60.0)


def test_newer_reads_pull_the_smoothed_rssi_by_their_number(dsn: str, site: Db) -> None:
    write(
        dsn,
        rows([read(0, "r700", 1, rssi=-60)]),
        rows([read(1, "r700", 1, rssi=-40), read(2, "r700", 1, rssi=-40), read(3, "r700", 1, rssi=-40)]),
    )

    _, last, reads, rssi, _, _, _ = sighting(site, "shelf-1") or ()
    # Three reads weigh 1 - 0.7^3 = 0.657 against the average so far.
    assert (last, reads) == (at(3), 4)
    assert rssi == pytest.approx(-60 + 0.657 * 20, abs=0.01)


def test_a_tag_unread_for_longer_than_the_visit_gap_starts_a_new_visit(dsn: str, site: Db) -> None:
    write(
        dsn,
        rows([read(0, "r700", 1, rssi=-50), read(2, "r700", 1, rssi=-50)]),
        rows([read(100, "r700", 1, rssi=-50)]),  # a shelf reader reporting seldom: the same visit
        rows([read(500, "r700", 1)]),
    )

    assert sighting(site, "shelf-1") == (at(500), at(500), 1, -60.0, "r700", 1, None)


def test_a_portal_pass_ends_after_the_short_gap(dsn: str, site: Db) -> None:
    write(
        dsn,
        rows([read(0, "fx-dock", 2), read(1, "fx-dock", 1)]),  # in, then out
        rows([read(30, "fx-dock", 1), read(31, "fx-dock", 2)]),  # back through: out, then in
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


def test_a_redelivered_batch_changes_nothing_but_the_read_counter(dsn: str, site: Db) -> None:
    batch = rows([read(0, "r700", 1, rssi=-50), read(3, "r700", 1, rssi=-70)])
    step = write(dsn, batch)
    once = sighting(site, "shelf-1")
    write(dsn, batch, step=step)

    again = sighting(site, "shelf-1")
    assert once is not None
    assert again is not None
    assert again[:2] + again[3:] == once[:2] + once[3:]
    assert (once[2], again[2]) == (2, 4)  # documented: a redelivered batch's reads count again


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
        async with running_consumer(dsn, mqtt_address, [topic], steps=[Sightings()]):
            publish_all(publisher(mqtt_address), messages)
            await wait_for_count(dsn, "select count(*) from tag_sightings where reads = 5", 40, timeout_s=20)

    asyncio.run(scenario())
    assert site.execute(
        "select count(*), min(reads), max(reads), min(last_seen_at - first_seen_at) from tag_sightings"
        " where location_id = 'receiving'"
    ).fetchone() == (40, 5, 5, at(4) - at(0))
