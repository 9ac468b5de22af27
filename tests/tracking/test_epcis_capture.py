"""EPCIS 2.0 capture: AggregationEvents from other systems become containment, once, in eventTime order."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from click.testing import CliRunner
from fastapi import FastAPI

from stocktrace import problems
from stocktrace.cli import main
from stocktrace.db import create_pool
from tracking import containers, epcis, epcis_capture
from tracking.epcis_api import router
from tracking.epcis_capture import Capture, ErrorBehaviour, InvalidDocumentError

Conn = psycopg.Connection[tuple[Any, ...]]
EXAMPLES = Path(__file__).parent / "epcis_examples"
GS1_URN = EXAMPLES / "Example_9.6.3-AggregationEvent.jsonld"
GS1_DIGITAL_LINK = EXAMPLES / "Example_9.6.3-AggregationEventWithDigitalLink.jsonld"
T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
PALLET = "urn:epc:id:sscc:4012345.0000000010"
OTHER_PALLET = "urn:epc:id:sscc:4012345.0000000027"
ITEM = "3074257BF7194E4000001A85"  # read by a reader: urn:epc:id:sgtin:0614141.812345.6789, GTIN 80614141123458
ITEM_URI = "urn:epc:id:sgtin:0614141.812345.6789"
A = "urn:epc:id:sgtin:4012345.000011.1"
B = "urn:epc:id:sgtin:4012345.000011.2"


def _aggregation(action: str, at: datetime, children: list[str] | None, parent: str | None = PALLET, **extra: Any):
    event: dict[str, Any] = {
        "type": "AggregationEvent",
        "eventID": f"urn:uuid:{uuid.uuid4()}",
        "eventTime": at.isoformat(),
        "eventTimeZoneOffset": "+01:00",
        "action": action,
        **extra,
    }
    if parent is not None:
        event["parentID"] = parent
    if children is not None:
        event["childEPCs"] = children
    return event


def _document(*events: dict[str, Any]) -> dict[str, Any]:
    return epcis.capture_document(list(events), T0)


def _capture(dsn: str, document: Any, behaviour: ErrorBehaviour = "rollback") -> Capture:
    async def go() -> Capture:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await epcis_capture.capture(conn, document, source="api", behaviour=behaviour)

    return asyncio.run(go())


def _contents(db: Conn) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for item, container in db.execute("select item_epc, container_epc from container_contents"):
        found.setdefault(container, set()).add(item)
    return found


def _counts(job: Capture) -> tuple[int, int, int, int]:
    return job.counts.applied, job.counts.duplicates, job.counts.superseded, job.counts.not_applied


def _read_by_a_reader(db: Conn, epc: str) -> None:
    db.execute(
        "insert into items (epc, scheme, gtin, serial, sscc, uri, first_seen_at) values (%s, %s, %s, %s, %s, %s, %s)",
        (epc, "sgtin", "80614141123458", "6789", None, ITEM_URI, T0),
    )


# --- GS1's examples ---------------------------------------------------------------------------------------


def test_gs1s_aggregation_example_puts_the_children_into_the_pallet(dsn: str, db: Conn) -> None:
    job = _capture(dsn, json.loads(GS1_URN.read_text()))
    assert (job.success, job.events, _counts(job)) == (True, 1, (1, 0, 0, 0))
    pallet = "urn:epc:id:sscc:0614141.1234567890"
    assert _contents(db) == {pallet: {"urn:epc:id:sgtin:0614141.107346.2017", "urn:epc:id:sgtin:0614141.107346.2018"}}
    # Through the same path as the API: a change with its time, and an aggregation in the hash-chained log.
    changes = db.execute("select at, action, source from container_changes").fetchall()
    assert changes == [(datetime(2013, 6, 8, 14, 58, 56, 591000, tzinfo=UTC), "add", "epcis")] * 2
    entries = db.execute("select kind, subject, payload->>'source' from event_log").fetchall()
    assert entries == [("aggregation", pallet, "epcis")]
    # The pallet is found by its SSCC, as GET /containers/{sscc} looks it up.
    assert db.execute("select epc from items where sscc = '106141412345678908'").fetchone() == (pallet,)


def test_gs1s_digital_link_example_names_items_by_gtin_and_serial(dsn: str, db: Conn) -> None:
    _capture(dsn, json.loads(GS1_DIGITAL_LINK.read_text()))
    child = "https://id.gs1.org/01/70614141123451/21/2017"
    assert child in _contents(db)["urn:epc:id:sscc:0614141.1234567890"]
    row = db.execute("select scheme, gtin, serial from items where epc = %s", (child,)).fetchone()
    assert row == ("sgtin", "70614141123451", "2017")


def test_the_same_document_sent_again_changes_nothing(dsn: str, db: Conn) -> None:
    document = json.loads(GS1_URN.read_text())
    _capture(dsn, document)
    again = _capture(dsn, copy.deepcopy(document))
    assert _counts(again) == (0, 1, 0, 0)
    assert db.execute("select count(*) from container_changes").fetchone() == (2,)
    assert db.execute("select count(*) from event_log").fetchone() == (1,)
    assert db.execute("select count(*) from epcis_captures").fetchone() == (2,)


# --- identities and locations -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [ITEM_URI, "https://id.gs1.org/01/80614141123458/21/6789", f"urn:epc:raw:96.x{ITEM}"])
def test_an_item_readers_know_is_found_by_any_of_its_uris(dsn: str, db: Conn, form: str) -> None:
    _read_by_a_reader(db, ITEM)
    _capture(dsn, _document(_aggregation("ADD", T0, [form])))
    assert _contents(db) == {PALLET: {ITEM}}


def test_two_forms_of_one_unread_identity_are_one_item(dsn: str, db: Conn) -> None:
    _capture(dsn, _document(_aggregation("ADD", T0, [A])))
    # The same pallet by its Digital Link URI, the same item by its GTIN and serial.
    digital_link = _aggregation("DELETE", T0 + timedelta(minutes=1), ["https://id.gs1.org/01/04012345000115/21/1"])
    digital_link["parentID"] = "https://id.gs1.org/00/040123450000000108"
    job = _capture(dsn, _document(digital_link))
    assert _counts(job) == (1, 0, 0, 0)
    assert _contents(db) == {}


def test_locations_are_matched_by_id_and_by_this_apis_uri_from_any_host(dsn: str, db: Conn) -> None:
    db.execute(
        "insert into locations (id, site_id, parent_id, kind) values ('dc-1', 'dc-1', null, 'site'),"
        " ('cold room/3', 'dc-1', 'dc-1', 'cold_room'), ('urn:example:dock:1', 'dc-1', 'dc-1', 'dock_door')"
    )
    exported = epcis.Identifiers("https://other.example/api/v1").location("cold room/3")
    events = [
        _aggregation("ADD", T0, [A], bizLocation={"id": exported}, readPoint={"id": "urn:example:dock:1"}),
        _aggregation("ADD", T0, [B], bizLocation={"id": "urn:epc:id:sgln:0614141.00888.0"}),
    ]
    _capture(dsn, _document(*events))
    rows = set(db.execute("select read_point, biz_location from epcis_events").fetchall())
    assert rows == {("urn:example:dock:1", "cold room/3"), (None, None)}


# --- actions and time ---------------------------------------------------------------------------------------------


def test_delete_takes_out_the_children_listed_or_all(dsn: str, db: Conn) -> None:
    c = "urn:epc:id:sgtin:4012345.000011.3"
    _capture(dsn, _document(_aggregation("ADD", T0, [A, B, c])))
    _capture(dsn, _document(_aggregation("DELETE", T0 + timedelta(minutes=1), [A])))
    assert _contents(db) == {PALLET: {B, c}}
    _capture(dsn, _document(_aggregation("DELETE", T0 + timedelta(minutes=2), None)))
    assert _contents(db) == {}
    log = db.execute("select payload->>'action' from event_log order by seq").fetchall()
    assert log == [("ADD",), ("DELETE",), ("DELETE",)]


def test_observe_confirms_the_children_listed_and_leaves_the_others(dsn: str, db: Conn) -> None:
    _capture(dsn, _document(_aggregation("ADD", T0, [A], parent=OTHER_PALLET), _aggregation("ADD", T0, [B])))
    _capture(dsn, _document(_aggregation("OBSERVE", T0 + timedelta(minutes=1), [A])))
    assert _contents(db) == {PALLET: {A, B}}


def test_events_apply_in_event_time_order_whatever_the_order_sent(dsn: str, db: Conn) -> None:
    later = _aggregation("ADD", T0 + timedelta(hours=1), [A], parent=OTHER_PALLET)
    earlier = _aggregation("ADD", T0, [A])
    _capture(dsn, _document(later, earlier))
    assert _contents(db) == {OTHER_PALLET: {A}}


def test_an_older_event_arriving_late_does_not_override_newer_containment(dsn: str, db: Conn) -> None:
    _capture(dsn, _document(_aggregation("ADD", T0 + timedelta(hours=1), [A, B])))
    late = _capture(dsn, _document(_aggregation("DELETE", T0, [A]), _aggregation("ADD", T0, [B], parent=OTHER_PALLET)))
    assert _counts(late) == (0, 0, 2, 0)
    assert _contents(db) == {PALLET: {A, B}}
    outcomes = db.execute("select outcome, count(*) from epcis_events group by outcome order by 1").fetchall()
    assert outcomes == [("applied", 1), ("superseded", 2)]


def test_a_late_event_applies_to_the_children_that_did_not_change_since(dsn: str, db: Conn) -> None:
    _capture(dsn, _document(_aggregation("ADD", T0, [A, B])))
    _capture(dsn, _document(_aggregation("DELETE", T0 + timedelta(hours=2), [A])))
    _capture(dsn, _document(_aggregation("ADD", T0 + timedelta(hours=1), [A, B], parent=OTHER_PALLET)))
    assert _contents(db) == {OTHER_PALLET: {B}}


def test_a_change_through_the_api_is_newer_than_an_older_event(dsn: str, db: Conn) -> None:
    async def pack() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            await containers.associate(conn, ITEM, [], T0, "api")
            await containers.associate(conn, "3174257BF4499602D2000000", [ITEM], T0 + timedelta(hours=1), "api")

    asyncio.run(pack())
    job = _capture(dsn, _document(_aggregation("ADD", T0, [f"urn:epc:raw:96.x{ITEM}"])))
    assert _counts(job) == (0, 0, 1, 0)
    assert _contents(db) == {"3174257BF4499602D2000000": {ITEM}}


def test_other_event_types_and_error_declarations_are_kept_not_applied(dsn: str, db: Conn) -> None:
    observed = {
        "type": "ObjectEvent", "eventTime": T0.isoformat(), "eventTimeZoneOffset": "+00:00", "epcList": [A],
        "action": "OBSERVE", "bizLocation": {"id": "urn:epc:id:sgln:0614141.00888.0"},
    }  # fmt: skip
    packed = _aggregation("ADD", T0, [B])
    declared = {**packed, "errorDeclaration": {"declarationTime": T0.isoformat(), "reason": "incorrect_data"}}
    job = _capture(dsn, _document(observed, packed, declared))
    assert _counts(job) == (1, 0, 0, 2)
    assert _contents(db) == {PALLET: {B}}
    kept = db.execute("select type, outcome, event->>'action' from epcis_events order by type, outcome").fetchall()
    assert kept == [("AggregationEvent", "applied", "ADD"), ("AggregationEvent", "not_applied", "ADD"),
                    ("ObjectEvent", "not_applied", "OBSERVE")]  # fmt: skip


def test_an_event_without_event_id_is_known_by_its_content(dsn: str, db: Conn) -> None:
    event = _aggregation("ADD", T0, [A])
    del event["eventID"]
    _capture(dsn, _document(event))
    again = _capture(dsn, _document({**event, "recordTime": (T0 + timedelta(days=1)).isoformat()}))
    assert _counts(again) == (0, 1, 0, 0)


# --- refusals -----------------------------------------------------------------------------------------------------


def test_a_document_that_breaks_the_schema_is_refused_whole_with_every_problem(dsn: str, db: Conn) -> None:
    good = _aggregation("ADD", T0, [A])
    bad = _aggregation("ADD", T0, ["not a uri"], eventTimeZoneOffset="2:00")
    with pytest.raises(InvalidDocumentError) as refused:
        _capture(dsn, _document(good, bad))
    pointers = {e.pointer for e in refused.value.errors}
    assert pointers == {"#/epcisBody/eventList/1/childEPCs/0", "#/epcisBody/eventList/1/eventTimeZoneOffset"}
    assert db.execute("select count(*) from epcis_captures").fetchone() == (0,)
    assert _contents(db) == {}


def test_with_proceed_the_valid_events_are_captured_and_the_others_listed(dsn: str, db: Conn) -> None:
    no_parent = _aggregation("ADD", T0, [B], parent=None)
    job = _capture(dsn, _document(_aggregation("ADD", T0, [A]), no_parent), behaviour="proceed")
    assert (job.success, _counts(job)) == (False, (1, 0, 0, 0))
    assert job.errors == [
        {"eventIndex": 1, "pointer": "#/epcisBody/eventList/1/parentID",
         "detail": "an AggregationEvent with action ADD needs a parentID"},
    ]  # fmt: skip
    assert _contents(db) == {PALLET: {A}}


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        ({"type": "EPCISQueryDocument"}, "#"),
        ({"type": "ObjectEvent"}, "#/type"),
        ([], "#/type"),
        ({**_document(), "schemaVersion": 2}, "#/schemaVersion"),
        (_document(_aggregation("ADD", T0, [PALLET])), "#/epcisBody/eventList/0/childEPCs/0"),
    ],
)
def test_what_is_not_a_capturable_document_is_refused(dsn: str, db: Conn, document: Any, pointer: str) -> None:
    with pytest.raises(InvalidDocumentError) as refused:
        _capture(dsn, document)
    assert pointer in {e.pointer for e in refused.value.errors}


# --- round trip -----------------------------------------------------------------------------------------------------


def _empty(db: Conn) -> None:
    tables = [row[0] for row in db.execute("select tablename from pg_tables where schemaname = 'public'")]
    db.execute(f"truncate {', '.join(t for t in tables if t != 'schema_migrations')} restart identity cascade")


def test_export_then_capture_into_an_empty_database_reproduces_the_containment(dsn: str, db: Conn) -> None:
    pallet, case = "3174257BF4499602D2000000", "3174257BF4499602D3000000"
    items = [f"3074257BF7194E40000000{n:02X}" for n in range(1, 6)]

    async def history() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await containers.associate(conn, pallet, items[:3], T0, "api")
            await containers.associate(conn, case, items[3:], T0 + timedelta(minutes=1), "inferred")
            await containers.associate(conn, case, items[:1], T0 + timedelta(minutes=2), "api")  # moved over
            await containers.dissociate(conn, pallet, items[1:2], T0 + timedelta(minutes=3), "api")
            await containers.associate(conn, pallet, [case], T0 + timedelta(minutes=4), "api")

    asyncio.run(history())
    before = db.execute("select item_epc, container_epc from container_contents order by 1").fetchall()
    with _api(dsn) as api:
        exported = api.get("/api/v1/epcis/events").json()
    assert len(exported["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 6

    _empty(db)  # nothing known: every identity comes back as its URI
    _capture(dsn, exported)
    uri = epcis.Identifiers("https://x/api/v1").epc
    assert db.execute("select item_epc, container_epc from container_contents order by 1").fetchall() == sorted(
        (uri(item), uri(container)) for item, container in before
    )

    _empty(db)  # the readers know the tags: the same rows as before
    for epc in [pallet, case, *items]:
        db.execute("insert into items (epc, scheme, uri, first_seen_at) values (%s, 'x', %s, now())", (epc, uri(epc)))
    _capture(dsn, exported)
    assert db.execute("select item_epc, container_epc from container_contents order by 1").fetchall() == before


# --- the HTTP capture interface -------------------------------------------------------------------------------


class Api:
    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self._portal, self._client = portal, client

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.get, url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.post, url, **kwargs))


@contextmanager
def _api(dsn: str) -> Iterator[Api]:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    problems.install(app)
    with start_blocking_portal() as portal:
        pool = create_pool(dsn, max_size=2)
        portal.call(pool.open)
        app.state.pool = pool
        try:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://stock.example.com")
            with portal.wrap_async_context_manager(client) as opened:
                yield Api(portal, opened)
        finally:
            portal.call(pool.close)


LD = {"content-type": "application/ld+json"}


def test_capture_answers_202_with_the_job_at_its_location(dsn: str, db: Conn) -> None:
    with _api(dsn) as api:
        response = api.post("/api/v1/epcis/capture", content=GS1_URN.read_bytes(), headers=LD)
        assert response.status_code == 202, response.text
        assert response.headers["GS1-EPCIS-Capture-Limit"] == "10000"
        job = response.json()
        assert (job["running"], job["success"], job["applied"], job["captureErrorBehaviour"]) == (
            False, True, 1, "rollback"
        )  # fmt: skip
        assert response.headers["Location"] == f"/api/v1/epcis/capture/{job['captureID']}"
        assert api.get(response.headers["Location"]).json() == job
        assert [j["captureID"] for j in api.get("/api/v1/epcis/capture").json()] == [job["captureID"]]
        assert api.get(f"/api/v1/epcis/capture/{uuid.uuid4()}").status_code == 404


def test_an_invalid_document_is_a_problem_listing_what_is_wrong(dsn: str, db: Conn) -> None:
    bad = _document(_aggregation("ADD", T0, ["not a uri"]), _aggregation("DELETE", T0, None, parent=None))
    with _api(dsn) as api:
        response = api.post("/api/v1/epcis/capture", json=bad)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert [e["pointer"] for e in problem["errors"]] == [
            "#/epcisBody/eventList/0/childEPCs/0",
            "#/epcisBody/eventList/1/parentID",
        ]
        assert 'not a "uri"' in problem["errors"][0]["detail"]
        proceed = api.post("/api/v1/epcis/capture", json=bad, headers={"GS1-Capture-Error-Behaviour": "proceed"})
        assert (proceed.status_code, proceed.json()["applied"], proceed.json()["refused"]) == (202, 0, 2)
        one_bad = _document(_aggregation("ADD", T0, [A]), _aggregation("DELETE", T0, None, parent=None))
        proceed = api.post("/api/v1/epcis/capture", json=one_bad, headers={"GS1-Capture-Error-Behaviour": "proceed"})
        assert (proceed.status_code, proceed.json()["applied"], proceed.json()["refused"]) == (202, 1, 1)
        assert api.post("/api/v1/epcis/capture", content=b"{", headers=LD).status_code == 400
        csv = api.post("/api/v1/epcis/capture", content=b"a,b", headers={"content-type": "text/csv"})
        assert csv.status_code == 415


def test_more_events_than_the_capture_limit_are_refused_before_anything_is_read(dsn: str, db: Conn) -> None:
    events = [_aggregation("ADD", T0, [A])] * 10_001
    with _api(dsn) as api:
        response = api.post("/api/v1/epcis/capture", json=_document(*events))
    assert (response.status_code, response.headers["GS1-EPCIS-Capture-Limit"]) == (413, "10000")
    assert db.execute("select count(*) from epcis_captures").fetchone() == (0,)


# --- the command line ---------------------------------------------------------------------------------------------


def test_import_captures_a_file_and_a_second_run_changes_nothing(dsn: str, db: Conn, tmp_path: Path) -> None:
    items = [f"urn:epc:id:sgtin:4012345.000011.{i}" for i in range(25)]
    events = [_aggregation("ADD", T0 + timedelta(seconds=i), [item]) for i, item in enumerate(items)]
    path = tmp_path / "shipment.jsonld"
    path.write_text(json.dumps(_document(*events)))
    runner = CliRunner()
    first = runner.invoke(main, ["epcis", "import", str(path), "--database-url", dsn, "--batch", "10"])
    assert first.exit_code == 0, first.output
    assert "25 events: 25 applied, 0 duplicates" in first.output
    assert "25 of 25 events captured" in first.output
    second = runner.invoke(main, ["epcis", "import", str(path), "--database-url", dsn, "--json"])
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout.splitlines()[-1])["duplicates"] == 25
    assert len(_contents(db)[PALLET]) == 25


def test_import_of_an_invalid_file_says_where_and_stores_nothing(dsn: str, db: Conn, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_document(_aggregation("ADD", T0, [A]), _aggregation("ADD", T0, [B], parent=None))))
    result = CliRunner().invoke(main, ["epcis", "import", str(path), "--database-url", dsn])
    assert result.exit_code == 1
    assert "#/epcisBody/eventList/1/parentID: an AggregationEvent with action ADD needs a parentID" in result.output
    assert db.execute("select count(*) from epcis_captures").fetchone() == (0,)
    proceed = CliRunner().invoke(main, ["epcis", "import", str(path), "--database-url", dsn, "--proceed"])
    assert proceed.exit_code == 1  # captured what it could, and says the rest was refused
    assert "1 applied" in proceed.output
    assert "1 refused" in proceed.output
    assert _contents(db) == {PALLET: {A}}
