"""The resolver against the real database: reads go in through the ingest Writer, item_state and events come out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from ingest.batch import Row, Rows
from ingest.writer import Writer
from tests.ingest.helpers import wait_for_count
from tests.tracking.presence_site import (
    HAMBURG,
    ITEM,
    ON_THE_ROAD,
    OTHER,
    PALLET,
    at,
    build_site,
    heartbeat,
    position,
    read,
    rows,
    sgtin,
)
from tracking import containers
from tracking.resolver import Resolver, TickReport, run
from tracking.sightings import Sightings

Db = psycopg.Connection[tuple[Any, ...]]


class Line:
    """A line of ingest and one resolver, ticked by hand."""

    def __init__(self, dsn: str, resolver: Resolver | None = None) -> None:
        self.dsn = dsn
        self.step = Sightings(refresh_s=0)
        self.resolver = resolver or Resolver()

    def write(self, *batches: Rows) -> None:
        async def go() -> None:
            writer = Writer(self.dsn, steps=[self.step])
            try:
                for batch in batches:
                    await writer.write(batch)
            finally:
                await writer.close()

        asyncio.run(go())

    def tick(self) -> TickReport:
        return asyncio.run(self.tick_async())

    async def tick_async(self) -> TickReport:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            return await self.resolver.tick(conn)

    def feed(self, *batches: Rows) -> TickReport:
        self.write(*batches)
        return self.tick()


@pytest.fixture
def line(dsn: str, db: Db) -> Line:
    build_site(db)
    return Line(dsn)


def state(db: Db, epc: str = ITEM) -> tuple[Any, ...] | None:
    return db.execute(
        "select location_id, status, since, site_id, container_epc from item_state where epc = %s", (epc,)
    ).fetchone()


def events(db: Db, epc: str = ITEM) -> list[tuple[Any, ...]]:
    return db.execute(
        "select at, kind, from_location, to_location, direction from location_events where epc = %s"
        " order by at, recorded_at, kind desc",
        (epc,),
    ).fetchall()


def shelf_reads(start: float, end: float, antenna: int = 1, epc: str = ITEM, rssi: float = -60.0) -> list[Row]:
    return [read(s, "r700", antenna, epc, rssi) for s in range(int(start), int(end) + 1, 2)]


def test_an_item_arrives_stays_while_its_reader_is_silent_and_departs_on_the_reader_clock(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10)))
    assert state(db) == ("shelf-1", "present", at(0), "berlin", None)

    # Nothing more from the reader: its clock stands still, and the item stays.
    line.tick()
    assert state(db) == ("shelf-1", "present", at(0), "berlin", None)

    # The reader reads another tag on its other shelf 100 s later: the item has not been seen for its age-out.
    line.feed(rows(shelf_reads(60, 100, antenna=2, epc=OTHER)))
    assert state(db) == (None, "departed", at(10), "berlin", None)
    assert events(db) == [(at(0), "arrived", None, "shelf-1", None), (at(10), "departed", "shelf-1", None, None)]


def test_new_epcs_are_registered_with_their_identity_before_they_get_a_state(line: Line, db: Db) -> None:
    line.feed(rows([*shelf_reads(4, 10), *shelf_reads(0, 6, antenna=2, epc=OTHER), read(3, "fx-dock", 1, "E2801160")]))

    assert db.execute("select epc, scheme, gtin, serial, uri, first_seen_at from items order by epc").fetchall() == [
        (ITEM, "sgtin", "04012345000115", "1", "urn:epc:id:sgtin:4012345.000011.1", at(4)),
        (OTHER, "sgtin", "04012345000283", "1", "urn:epc:id:sgtin:4012345.000028.1", at(0)),
        ("E2801160", "unknown", None, None, None, at(3)),  # a TID, not an EPC: still a tag that was seen
    ]
    assert db.execute("select count(*) from item_state").fetchone() == (3,)


def test_through_the_dock_door_into_receiving_with_its_direction(line: Line, db: Db) -> None:
    line.feed(rows([read(s / 2, "fx-dock", 1, rssi=-45) for s in range(0, 8)]))
    line.feed(rows([read(4 + s / 2, "fx-dock", 2, rssi=-45) for s in range(0, 8)]))
    assert state(db) == ("dock-1", "present", at(0), "berlin", None)

    # Received: read in the receiving zone; the dock reader's heartbeat moves its clock past the age-out.
    line.feed(rows([read(s, "gw-recv", 1, rssi=-65) for s in range(10, 40, 3)], events=[heartbeat(60, "fx-dock")]))

    assert state(db) == ("receiving", "present", at(10), "berlin", None)
    assert events(db) == [
        (at(0), "arrived", None, "dock-1", None),
        (at(10), "moved", "dock-1", "receiving", "in"),
    ]


def test_a_reader_back_from_an_outage_does_not_age_out_what_it_saw_before(line: Line, db: Db) -> None:
    line.feed(rows([read(s, "gw-recv", 1) for s in range(0, 30, 3)], events=[heartbeat(30, "gw-recv")]))
    last_will = (at(35), "gw-recv", -1, False, "last-will", at(35), None)
    line.feed(rows(events=[last_will]))
    # Fifteen minutes later it is back: it says so first, and sends its reads a report later.
    line.feed(rows(events=[heartbeat(935, "gw-recv")]))
    assert state(db) == ("receiving", "present", at(0), "berlin", None)

    line.feed(rows([read(s, "gw-recv", 1) for s in range(940, 970, 3)], events=[heartbeat(970, "gw-recv")]))
    assert state(db) == ("receiving", "present", at(0), "berlin", None)
    assert [e[1] for e in events(db)] == ["arrived"]


def test_a_late_batch_from_the_previous_shelf_does_not_move_the_item_back(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10, rssi=-60)))
    line.feed(rows([*shelf_reads(100, 110, antenna=2, rssi=-50), read(110, "r700", 1, OTHER)]))
    assert state(db) == ("shelf-2", "present", at(100), "berlin", None)

    # A batch from shelf-1, delayed in delivery, read before the move and strong.
    report = line.feed(rows(shelf_reads(80, 98, rssi=-40)))

    assert report.events == 0
    assert state(db) == ("shelf-2", "present", at(100), "berlin", None)
    assert [e[1:4] for e in events(db)] == [("arrived", None, "shelf-1"), ("moved", "shelf-1", "shelf-2")]


def test_what_was_folded_survives_a_restart_and_nothing_is_resolved_twice(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10)))
    assert db.execute("select count(*) from sighting_deltas").fetchone() == (0,)

    line.resolver = Resolver()  # a new process
    assert line.tick().items == 0
    line.write(rows(shelf_reads(12, 14, epc=OTHER)))
    assert line.tick().items == 1


def test_an_item_inside_a_pallet_follows_it_when_it_is_not_read_itself(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10) + shelf_reads(0, 10, epc=PALLET)))

    async def pack() -> None:
        async with await psycopg.AsyncConnection.connect(line.dsn) as conn:
            await containers.associate(conn, PALLET, [ITEM], at(11), "api")

    asyncio.run(pack())
    line.tick()
    assert state(db) == ("shelf-1", "present", at(0), "berlin", PALLET)

    # The pallet goes through the dock door; the item inside it is shielded and not read.
    line.feed(rows([read(50 + s, "fx-dock", 2, PALLET) for s in range(5)] + shelf_reads(50, 90, 2, OTHER)))

    assert state(db, PALLET)[:2] == ("dock-1", "present")  # type: ignore[index]  # present by then
    assert state(db) == ("dock-1", "present", at(50), "berlin", PALLET)
    assert events(db)[-1] == (at(50), "moved", "shelf-1", "dock-1", None)


def test_items_that_move_in_step_with_a_pallet_twice_are_inferred_to_be_on_it(line: Line, db: Db) -> None:
    together = [ITEM, sgtin(7)]
    batch = [read(s / 2, "fx-dock", 2, epc) for s in range(6) for epc in [PALLET, *together, OTHER]]
    line.feed(rows(batch))
    # The pallet and two items go on to receiving; OTHER stays behind at the door and leaves later.
    later = [read(s, "gw-recv", 1, epc) for s in range(10, 20, 2) for epc in [PALLET, *together]]
    line.feed(rows(later, events=[heartbeat(30, "fx-dock")]))

    contents = db.execute("select item_epc, container_epc, source from container_contents order by 1").fetchall()
    assert contents == [(epc, PALLET, "inferred") for epc in sorted(together)]
    assert state(db)[4] == PALLET  # type: ignore[index]  # the item has a state


def test_loaded_at_the_dock_then_in_transit_with_the_truck_and_arrived_at_the_other_site(line: Line, db: Db) -> None:
    truck_at_berlin = position(0, (52.3907, 13.5126))
    line.feed(rows([read(s, "gw-recv", 1) for s in range(0, 30, 3)], telemetry=[truck_at_berlin]))
    # Out through the door: the inner antenna first, then the outer one.
    line.feed(
        rows([read(100 + s / 2, "fx-dock", 2) for s in range(6)] + [read(104 + s / 2, "fx-dock", 1) for s in range(6)])
    )
    line.feed(rows(events=[heartbeat(160, "fx-dock"), heartbeat(160, "gw-recv")]))
    assert state(db)[:2] == (None, "departed")  # type: ignore[index]  # has a state

    line.feed(rows(telemetry=[position(400, ON_THE_ROAD)]))

    assert db.execute(
        "select location_id, status, site_id, latitude, longitude from item_state where epc = %s", (ITEM,)
    ).fetchone() == ("truck-1", "in_transit", None, *ON_THE_ROAD)
    line.feed(rows(telemetry=[position(9000, HAMBURG)]))
    assert state(db)[:4] == ("truck-1", "present", at(106.5), "hamburg")  # type: ignore[index]  # has a state

    line.feed(rows([read(9100 + s, "fx-hh", 1) for s in range(3)] + [read(9103 + s, "fx-hh", 2) for s in range(3)]))
    assert state(db)[:2] == ("hh-dock", "present")  # type: ignore[index]  # has a state
    assert [e[1:] for e in events(db)] == [
        ("arrived", None, "receiving", None),
        ("moved", "receiving", "dock-1", "out"),
        ("departed", "dock-1", None, "out"),
        ("arrived", "dock-1", "truck-1", None),
        ("departed", "berlin", "truck-1", None),
        ("arrived", "truck-1", "hamburg", None),
        ("moved", "truck-1", "hh-dock", "in"),
    ]


def test_with_two_resolvers_one_leads_and_the_other_takes_over_when_it_stops(dsn: str, db: Db) -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        ticks = {"a": 0, "b": 0}
        ticked = {"a": asyncio.Event(), "b": asyncio.Event()}

        def counter(name: str) -> Callable[[TickReport], None]:
            def count(_: TickReport) -> None:
                ticks[name] += 1
                ticked[name].set()

            return count

        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(run(dsn, stop_a, 0.05, on_tick=counter("a")))
        await asyncio.wait_for(ticked["a"].wait(), 15)
        b = asyncio.create_task(run(dsn, stop_b, 0.05, on_tick=counter("b")))
        await asyncio.sleep(0.5)
        both_running = dict(ticks)
        stop_a.set()
        await a
        await asyncio.wait_for(ticked["b"].wait(), 15)
        stop_b.set()
        await b
        return both_running, dict(ticks)

    while_both, after = asyncio.run(scenario())
    assert while_both["a"] > 0
    assert while_both["b"] == 0
    assert after["b"] > 0


def test_the_leader_lock_is_a_session_lock_another_connection_cannot_take(dsn: str, db: Db) -> None:
    async def scenario() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(run(dsn, stop, 0.05))
        await asyncio.sleep(0.3)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            cursor = await other.execute("select pg_try_advisory_lock(%s)", (0x5E0C_7ACE_0200,))
            row = await cursor.fetchone()
        stop.set()
        await task
        return bool(row and row[0])

    assert asyncio.run(scenario()) is False


def test_a_backlog_is_folded_over_several_ticks_and_ages_nothing_out_on_the_way(dsn: str, db: Db) -> None:
    build_site(db)
    line = Line(dsn, Resolver(fold_limit=5))
    # The resolver was down while the item sat on its shelf, read every two seconds for three minutes.
    line.write(*(rows([read(s, "r700", 1)]) for s in range(0, 181, 2)))

    reports = [line.tick()]
    while reports[-1].more:
        reports.append(line.tick())

    assert len(reports) > 10  # folded in parts: the reader's clock ran far ahead of the first parts
    assert sum(r.folded for r in reports) == 91
    assert state(db) == ("shelf-1", "present", at(0), "berlin", None)
    assert events(db) == [(at(0), "arrived", None, "shelf-1", None)]


def test_the_resolver_wakes_when_ingest_appends_without_waiting_for_its_interval(dsn: str, db: Db) -> None:
    build_site(db)

    async def scenario() -> int:
        stop = asyncio.Event()
        ticked = asyncio.Event()
        task = asyncio.create_task(run(dsn, stop, interval_s=3600, on_tick=lambda _: ticked.set()))
        await asyncio.wait_for(ticked.wait(), 15)  # the first tick; the next one would be an hour later
        writer = Writer(dsn, steps=[Sightings()])
        try:
            await writer.write(rows(shelf_reads(0, 10)))
        finally:
            await writer.close()
        found = await wait_for_count(dsn, "select count(*) from item_state", 1, timeout_s=20)
        stop.set()
        await task
        return found

    assert asyncio.run(scenario()) == 1
    assert state(db) == ("shelf-1", "present", at(0), "berlin", None)


def test_reads_whose_batch_commits_while_a_tick_runs_are_resolved_by_the_next(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10)))

    async def slow_batch() -> None:
        async with await psycopg.AsyncConnection.connect(line.dsn) as conn:
            await line.step(conn, rows(shelf_reads(100, 110, antenna=2, rssi=-40)))  # moved to shelf-2
            await line.tick_async()  # while the batch is still open
            await conn.commit()

    asyncio.run(slow_batch())
    line.tick()
    assert state(db) == ("shelf-2", "present", at(100), "berlin", None)


def test_an_association_that_commits_while_a_tick_runs_is_resolved_by_the_next(line: Line, db: Db) -> None:
    line.feed(rows(shelf_reads(0, 10) + [read(60 + s, "gw-recv", 1, PALLET) for s in range(0, 40, 3)]))
    line.feed(rows(shelf_reads(60, 100, antenna=2, epc=OTHER)))  # the shelf reader's clock: the item has gone
    assert state(db)[:2] == (None, "departed")  # type: ignore[index]  # has a state

    async def slow_association() -> None:
        async with await psycopg.AsyncConnection.connect(line.dsn) as conn:
            await containers.associate(conn, PALLET, [ITEM], at(101), "api")
            await line.tick_async()  # while the association is still open
            await conn.commit()

    asyncio.run(slow_association())
    line.tick()
    assert state(db) == ("receiving", "present", at(60), "berlin", PALLET)  # where and since the pallet is
