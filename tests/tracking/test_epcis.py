"""EPCIS 2.0 export: each kind of log entry as its event, and every document valid against GS1's JSON schema."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import jsonschema
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from stocktrace.db import create_pool
from tracking import epcis, epcis_schema, eventlog
from tracking.epcis import Identifiers, LogEntry, NotExportableError, Place
from tracking.epcis_api import router

Conn = psycopg.Connection[Any]
SCHEMA = epcis_schema.SCHEMA_PATH  # GS1's schema, shipped beside tracking/epcis_schema.py
API = "https://stock.example.com/api/v1"
AT = datetime(2025, 7, 1, 6, 30, tzinfo=UTC)  # summer: Europe/Berlin is +02:00
ITEM = "3074257BF7194E4000001A85"  # TDS Appendix E example: urn:epc:id:sgtin:0614141.812345.6789
ITEM_URI = "urn:epc:id:sgtin:0614141.812345.6789"
PALLET = "3174257BF4499602D2000000"  # urn:epc:id:sscc:0614141.1234567890
PALLET_URI = "urn:epc:id:sscc:0614141.1234567890"
PLACES = {"dc-1": Place(timezone="Europe/Berlin"), "dock-1": Place(timezone="Europe/Berlin")}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    # Without a URI checker installed, "format": "uri" would pass anything and the schema check half its worth.
    assert not checker.conforms("not a uri", "uri")
    assert not checker.conforms("2025-13-01T00:00:00Z", "date-time")
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def _valid(validator: jsonschema.Draft7Validator, document: Mapping[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []


def _entry(kind: str, subject: str, payload: Mapping[str, Any], seq: int = 1, at: datetime = AT) -> LogEntry:
    return LogEntry(seq, at + timedelta(seconds=1), at, kind, subject, payload, bytes([seq]) * 32)


def _event(entry: LogEntry) -> dict[str, Any]:
    return epcis.to_event(entry, Identifiers(API, PLACES))


def test_the_schema_refuses_what_it_should(validator: jsonschema.Draft7Validator) -> None:
    event = _event(_entry("movement", ITEM, {"event": "arrived", "to_location": "dock-1"}))
    good = epcis.capture_document([event], AT)
    _valid(validator, good)
    for broken in (
        {**event, "eventTimeZoneOffset": "+2:00"},
        {**event, "bizStep": "wandering"},
        {**event, "epcList": ["not a uri"]},
        {**event, "stocktraceSeq": 1},  # an extension must be a URI-named property
        {key: value for key, value in event.items() if key != "eventTime"},
    ):
        assert not validator.is_valid(epcis.capture_document([broken], AT)), broken
        assert not validator.is_valid(epcis.query_document([broken], AT)), broken


def test_an_arrival_through_a_dock_door_is_receiving_there() -> None:
    event = _event(_entry("movement", ITEM, {"event": "arrived", "to_location": "dock-1", "direction": "in"}))
    assert event == {
        "type": "ObjectEvent",
        "eventTime": "2025-07-01T06:30:00.000000Z",
        "eventTimeZoneOffset": "+02:00",
        "recordTime": "2025-07-01T06:30:01.000000Z",
        "eventID": epcis.event_id(bytes([1]) * 32),
        "epcList": [ITEM_URI],
        "action": "OBSERVE",
        "bizStep": "receiving",
        "disposition": "in_progress",
        "readPoint": {"id": f"{API}/locations/dock-1"},
        "bizLocation": {"id": f"{API}/locations/dock-1"},
    }


@pytest.mark.parametrize(
    ("payload", "step", "disposition", "biz_location"),
    [
        ({"event": "arrived", "to_location": "dock-1"}, "arriving", "in_progress", True),
        ({"event": "departed", "from_location": "dock-1", "direction": "out"}, "shipping", "in_transit", False),
        ({"event": "departed", "from_location": "dock-1"}, "departing", "in_transit", False),
        (
            {"event": "moved", "from_location": "a", "to_location": "dock-1", "from_site": "dc-1", "to_site": "dc-1"},
            "storing",
            "in_progress",
            True,
        ),
        (
            {"event": "moved", "from_location": "a", "to_location": "dock-1", "from_site": "dc-2", "to_site": "dc-1"},
            "arriving",
            "in_progress",
            True,
        ),
    ],
)
def test_movements_take_their_business_step_from_what_happened(
    payload: dict[str, Any], step: str, disposition: str, biz_location: bool
) -> None:
    event = _event(_entry("movement", ITEM, payload))
    assert (event["bizStep"], event["disposition"], "bizLocation" in event) == (step, disposition, biz_location)
    assert event["readPoint"] == {"id": f"{API}/locations/dock-1"}


def test_a_container_association_is_an_aggregation_event() -> None:
    children = [ITEM, "urn:epc:id:sgtin:0614141.812345.1"]
    event = _event(_entry("aggregation", PALLET, {"action": "ADD", "children": children, "location": "dock-1"}))
    assert (event["type"], event["parentID"], event["action"], event["bizStep"]) == (
        "AggregationEvent",
        PALLET_URI,
        "ADD",
        "packing",
    )
    assert event["childEPCs"] == [ITEM_URI, "urn:epc:id:sgtin:0614141.812345.1"]
    unpacked = _event(_entry("aggregation", "106141412345678908", {"action": "DELETE"}))
    assert (unpacked["parentID"], unpacked["bizStep"]) == ("https://id.gs1.org/00/106141412345678908", "unpacking")
    assert "childEPCs" not in unpacked


def test_condition_readings_are_sensor_reports_per_device() -> None:
    readings = [
        {"at": "2025-07-01T06:00:00+00:00", "temperature_c": 4.5, "humidity_pct": 81.0, "device_id": "probe-1"},
        {"at": "2025-07-01T06:05:00+00:00", "temperature_c": 9.25, "device_id": "probe-2"},
        {"at": "2025-07-01T06:10:00", "temperature_c": 5, "device_id": "probe-1"},
    ]
    event = _event(_entry("condition", ITEM, {"location": "dock-1", "readings": readings}))
    assert (event["bizStep"], event["epcList"], event["readPoint"]) == (
        "sensor_reporting",
        [ITEM_URI],
        {"id": f"{API}/locations/dock-1"},
    )
    assert event["sensorElementList"] == [
        {
            "sensorMetadata": {"deviceID": f"{API}/devices/probe-1"},
            "sensorReport": [
                {"type": "gs1:Temperature", "value": 4.5, "uom": "CEL", "time": "2025-07-01T06:00:00.000000Z"},
                {"type": "gs1:RelativeHumidity", "value": 81.0, "uom": "P1", "time": "2025-07-01T06:00:00.000000Z"},
                {"type": "gs1:Temperature", "value": 5, "uom": "CEL", "time": "2025-07-01T06:10:00.000000Z"},
            ],
        },
        {
            "sensorMetadata": {"deviceID": f"{API}/devices/probe-2"},
            "sensorReport": [
                {"type": "gs1:Temperature", "value": 9.25, "uom": "CEL", "time": "2025-07-01T06:05:00.000000Z"}
            ],
        },
    ]


def test_a_count_is_an_object_event_with_epcs_and_quantities() -> None:
    payload = {"location": "dc-1", "epcs": [ITEM], "quantities": [{"gtin": "614141123452", "quantity": 12}]}
    event = _event(_entry("inventory", "cc-1", payload))
    assert (event["bizStep"], event["epcList"]) == ("cycle_counting", [ITEM_URI])
    assert event["quantityList"] == [{"epcClass": "https://id.gs1.org/01/00614141123452", "quantity": 12}]


def test_identifiers() -> None:
    ids = Identifiers(
        API + "/", {"dc-1": Place(sgln="urn:epc:id:sgln:0614141.00777.0"), "x": Place(timezone="Nope/Zone")}
    )
    assert ids.location("dc-1") == "urn:epc:id:sgln:0614141.00777.0"
    assert ids.location("cold room/3") == f"{API}/locations/cold%20room%2F3"
    assert ids.epc("E2801160600002054E2C4E4B") == "urn:epc:raw:96.xE2801160600002054E2C4E4B"  # a TID, not an EPC
    assert ids.epc("pallet 7") == f"{API}/items/pallet%207"
    assert ids.offset("x", AT) == "+00:00"
    assert Identifiers(API, {"ny": Place(timezone="America/St_Johns")}).offset("ny", AT) == "-02:30"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("movement", {"event": "teleported"}),
        ("movement", {}),
        ("aggregation", {"action": "ADD", "children": []}),
        ("aggregation", {"action": "OBSERVE", "children": [ITEM]}),
        ("condition", {"location": "dock-1", "readings": [{"at": "2025-07-01T06:00:00Z", "battery_pct": 80}]}),
        ("condition", {"epcs": [], "readings": [{"temperature_c": 4.0}]}),
        ("inventory", {"location": "dc-1"}),
        ("inventory", {"quantities": [{"gtin": "1"}]}),
        ("recall", {}),
    ],
)
def test_entries_without_an_epcis_form_are_refused(kind: str, payload: dict[str, Any]) -> None:
    with pytest.raises(NotExportableError):
        _event(_entry(kind, ITEM, payload))


MIXES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "movements": [
        ("movement", ITEM, {"event": "arrived", "to_location": "dock-1", "direction": "in"}),
        ("movement", ITEM, {"event": "moved", "from_location": "dock-1", "to_location": "shelf-1"}),
        ("movement", "E2801160600002054E2C4E4B", {"event": "departed", "from_location": "shelf-1"}),
    ],
    "packing and unpacking": [
        ("aggregation", PALLET, {"action": "ADD", "children": [ITEM], "location": "dock-1"}),
        ("movement", PALLET, {"event": "departed", "from_location": "dock-1", "direction": "out"}),
        ("aggregation", "106141412345678908", {"action": "DELETE", "children": [ITEM]}),
        ("aggregation", PALLET_URI, {"action": "DELETE"}),
    ],
    "cold chain": [
        ("condition", ITEM, {"location": "dock-1", "readings": [{"at": "2025-07-01T06:00:00Z", "temperature_c": 9.5}]}),
        ("condition", "dock-1", {"location": "dock-1", "epcs": [], "readings": [{"humidity_pct": 93.5}]}),
        ("condition", ITEM, {"readings": [{"temperature_c": -21.0, "device_id": "truck 7/probe"}]}),
    ],
    "counts": [
        ("inventory", "cc-1", {"location": "dc-1", "epcs": [ITEM, PALLET]}),
        ("inventory", "cc-2", {"location": "dc-1", "quantities": [{"gtin": "80614141123458", "quantity": 3.5}]}),
    ],
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_every_mix_of_events_makes_valid_documents(validator: jsonschema.Draft7Validator, mix: str) -> None:
    events = [_event(_entry(kind, subject, payload, seq)) for seq, (kind, subject, payload) in enumerate(MIXES[mix], 1)]
    _valid(validator, epcis.query_document(events, AT))
    _valid(validator, epcis.capture_document(events, AT))


def test_an_empty_answer_is_a_valid_document(validator: jsonschema.Draft7Validator) -> None:
    _valid(validator, epcis.query_document([], AT))


# --- through the API, from the real log ---------------------------------------------------------------------


class Api:
    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self._portal, self._client = portal, client

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.get, url, **kwargs))


@contextmanager
def _api(dsn: str) -> Iterator[Api]:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
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


@pytest.fixture
def api(dsn: str, db: Conn) -> Iterator[Api]:
    with _api(dsn) as client:
        yield client


@pytest.fixture
def log(db: Conn) -> Conn:
    """A site with a dock door and a cold room, an item that moves through it, is packed on a pallet there and
    gets warm, and a count at another site."""
    db.execute(
        "insert into locations (id, site_id, parent_id, kind, timezone) values"
        " ('dc-1', 'dc-1', null, 'site', 'Europe/Berlin'), ('dock-1', 'dc-1', 'dc-1', 'dock_door', null),"
        " ('cold-1', 'dc-1', 'dc-1', 'cold_room', null), ('dc-2', 'dc-2', null, 'site', null)"
    )
    db.execute("insert into items (epc, scheme, uri, first_seen_at) values (%s, 'sgtin', %s, %s)", (ITEM, ITEM_URI, AT))
    moves = [
        (AT, "arrived", None, "dock-1", "in"),
        (AT + timedelta(minutes=5), "moved", "dock-1", "cold-1", None),
        (AT + timedelta(hours=2), "departed", "cold-1", None, "out"),
        (AT + timedelta(hours=9), "arrived", None, "dc-2", None),
    ]
    with db.transaction():
        for at, kind, source, target, direction in moves:
            db.execute(
                "insert into location_events (at, epc, kind, from_location, to_location, direction)"
                " values (%s, %s, %s, %s, %s, %s)",
                (at, ITEM, kind, source, target, direction),
            )
    db.execute(
        "insert into items (epc, scheme, uri, first_seen_at) values (%s, 'sscc', %s, %s)", (PALLET, PALLET_URI, AT)
    )
    db.execute(
        "insert into item_state (epc, location_id, site_id, status, since, last_seen_at)"
        " values (%s, 'cold-1', 'dc-1', 'present', %s, %s)",
        (PALLET, AT, AT),
    )
    db.execute(
        "insert into container_changes (at, container_epc, item_epc, action, source) values (%s, %s, %s, 'add', 'api')",
        (AT + timedelta(hours=1), PALLET, ITEM),
    )
    with db.transaction():
        reading = {"at": (AT + timedelta(minutes=30)).isoformat(), "temperature_c": 11.5, "device_id": "probe-1"}
        eventlog.append(
            db, "condition", ITEM, AT + timedelta(minutes=30), {"location": "cold-1", "readings": [reading]}
        )
        eventlog.append(db, "inventory", "cc-1", AT + timedelta(hours=3), {"location": "dc-2", "epcs": ["AB"]})
        eventlog.append(db, "audit", "someone", AT, {})  # kept in the log, not an EPCIS event
    return db


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = response.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    return events


def _pages(api: Api, url: str) -> Iterator[httpx.Response]:
    next_url: str | None = url
    while next_url is not None:
        response = api.get(next_url)
        assert response.status_code == 200, response.text
        yield response
        next_url = response.links.get("next", {}).get("url")


def test_the_api_answers_with_a_valid_epcis_query_document(
    api: Api, log: Conn, validator: jsonschema.Draft7Validator
) -> None:
    response = api.get("/api/v1/epcis/events")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/ld+json"
    assert response.headers["GS1-EPCIS-Version"] == "2.0.0"
    _valid(validator, response.json())
    events = _events(response)
    assert [(e["type"], e.get("bizStep")) for e in events] == [
        ("ObjectEvent", "receiving"),
        ("ObjectEvent", "storing"),
        ("ObjectEvent", "shipping"),
        ("ObjectEvent", "arriving"),
        ("AggregationEvent", "packing"),
        ("ObjectEvent", "sensor_reporting"),
        ("ObjectEvent", "cycle_counting"),
    ]
    assert events[0]["readPoint"] == {"id": "https://stock.example.com/api/v1/locations/dock-1"}
    assert events[0]["eventTimeZoneOffset"] == "+02:00"  # the site's zone, in summer
    assert events[3]["eventTimeZoneOffset"] == "+00:00"  # dc-2 has none
    packed = events[4]  # from container_changes, where the pallet was at the time
    assert (packed["parentID"], packed["childEPCs"], packed["action"]) == (PALLET_URI, [ITEM_URI], "ADD")
    assert packed["bizLocation"] == {"id": "https://stock.example.com/api/v1/locations/cold-1"}
    assert "Link" not in response.headers


def test_pages_follow_the_next_link_without_loss_or_repeat(
    api: Api, log: Conn, validator: jsonschema.Draft7Validator
) -> None:
    pages = list(_pages(api, "/api/v1/epcis/events?perPage=2"))
    for page in pages:
        _valid(validator, page.json())
    ids = [e["eventID"] for page in pages for e in _events(page)]
    assert len(pages) == 4
    assert ids == [e["eventID"] for e in _events(api.get("/api/v1/epcis/events"))]


@pytest.mark.parametrize(
    ("query", "steps"),
    [
        (f"epc={ITEM}", ["receiving", "storing", "shipping", "arriving", "packing", "sensor_reporting"]),
        (f"epc={ITEM_URI}", ["receiving", "storing", "shipping", "arriving", "packing", "sensor_reporting"]),
        (f"epc={PALLET}", ["packing"]),
        ("location=cold-1", ["storing", "shipping", "packing", "sensor_reporting"]),
        ("location=dc-1", ["receiving", "storing", "shipping", "packing", "sensor_reporting"]),
        ("location=dc-2", ["arriving", "cycle_counting"]),
        ("from=2025-07-01T07:10:00Z&to=2025-07-01T11:00:00%2B02:00", ["packing", "shipping"]),
    ],
)
def test_filters(api: Api, log: Conn, query: str, steps: list[str]) -> None:
    response = api.get(f"/api/v1/epcis/events?{query}")
    assert response.status_code == 200, response.text
    assert sorted(e["bizStep"] for e in _events(response)) == sorted(steps)


def test_bad_queries_are_refused(api: Api, log: Conn) -> None:
    for query in ("from=2025-07-01T07:00:00", "perPage=0", "nextPageToken=abc"):
        assert api.get(f"/api/v1/epcis/events?{query}").status_code == 422, query
