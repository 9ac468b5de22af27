"""The registry's models, its data access on the real database, and its REST endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from click.testing import CliRunner
from fastapi import FastAPI
from pydantic import ValidationError

from devices.api import router
from devices.registry import (
    Action,
    ConflictError,
    Device,
    Geofence,
    InvalidError,
    Location,
    Range,
    Site,
    delete_device,
    delete_place,
    device_timezones,
    get_device,
    list_locations,
    run,
    upsert_device,
    upsert_location,
    upsert_site,
)
from stocktrace.cli import main
from stocktrace.db import create_pool

Conn = psycopg.Connection[Any]


class Api:
    """Blocking calls into the app through httpx's ASGI transport, on an event loop in a thread of its own.

    (Starlette's TestClient does the same, but warns that it is moving to another HTTP client.)
    """

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self._portal, self._client = portal, client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


@contextmanager
def api_client(dsn: str) -> Iterator[Api]:
    """The registry router mounted under /api/v1 as the service mounts it, with a real pool in app.state."""
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    with start_blocking_portal() as portal:
        pool = create_pool(dsn, max_size=2)
        portal.call(pool.open)
        app.state.pool = pool
        transport = httpx.ASGITransport(app=app)
        try:
            with portal.wrap_async_context_manager(
                httpx.AsyncClient(transport=transport, base_url="http://registry.test")
            ) as client:
                yield Api(portal, client)
        finally:
            portal.call(pool.close)


@pytest.fixture
def api(dsn: str, db: Conn) -> Iterator[Api]:
    with api_client(dsn) as client:
        yield client


def _site(**fields: Any) -> Site:
    return Site.model_validate({"id": "dc-1", "name": "DC 1", **fields})


def _location(id: str, parent: str = "dc-1", kind: str = "zone", **fields: Any) -> Location:
    return Location.model_validate({"id": id, "parent": parent, "kind": kind, **fields})


def _reader(id: str = "reader-1", **fields: Any) -> Device:
    return Device.model_validate({"id": id, "kind": "rfid_reader", "source": "native", **fields})


# --- models -------------------------------------------------------------------------------------------------


def _message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


@pytest.mark.parametrize(
    ("geofence", "message"),
    [
        ({"polygon": [[52.5, 13.4], [52.6, 13.4]]}, "polygon needs at least 3 points"),
        ({"polygon": [[52.5, 13.4], [52.5, 13.4], [52.5, 13.4], [52.6, 13.5]]}, "polygon needs at least 3 points"),
        ({"polygon": [[95, 13.4], [52.6, 13.4], [52.6, 13.5]]}, "polygon point 0 [95.0, 13.4] is not"),
        ({"center": [52.5, 13.4]}, "give polygon"),
        ({"center": [52.5, 13.4], "radius_m": 0}, "radius_m must be more than 0"),
        ({"polygon": [[1, 1], [1, 2], [2, 2]], "radius_m": 5}, "not both"),
    ],
)
def test_geofence_refuses_shapes_that_are_not_areas(geofence: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Geofence.model_validate(geofence)
    assert message in _message(exc)


def test_range_needs_a_bound_in_order() -> None:
    assert Range(max=-18).min is None
    with pytest.raises(ValidationError, match=r"min 8\.0 is above max 2\.0"):
        Range(min=8, max=2)
    with pytest.raises(ValidationError, match="give min, max or both"):
        Range()


def test_site_time_zone_must_exist() -> None:
    assert _site(timezone="Europe/Berlin").timezone == "Europe/Berlin"
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        _site(timezone="Mars/Olympus")


def test_device_defaults_its_mqtt_user_to_its_id_and_sorts_antennas() -> None:
    device = _reader(antennas=[{"port": 2, "location": "a"}, {"port": 1, "location": "b", "side": "in"}])

    assert device.mqtt is not None
    assert device.mqtt.username == "reader-1"
    assert [antenna.port for antenna in device.antennas] == [1, 2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source": "no-such-format"}, "unknown source format 'no-such-format'; known: "),
        ({"antennas": [{"port": 1, "location": "a"}, {"port": 1, "location": "b"}]}, "port 1 is mapped more"),
        ({"kind": "sensor", "antennas": [{"port": 1, "location": "a"}]}, "only an rfid_reader has antennas"),
        ({"id": "jane:phone"}, "cannot be an MQTT user name"),
        ({"mqtt": {"topic_prefix": "stocktrace/#"}}, "is not a topic prefix"),
        ({"id": "group/node/health"}, "cannot end in /health"),
        ({"id": "a//b"}, "is not a valid device id"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_device_validation_says_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _reader(**fields)
    assert message in _message(exc)


def test_device_that_does_not_connect_has_no_mqtt_identity() -> None:
    sensor = Device.model_validate({"id": "E4:1F:3B:6C:88:10", "kind": "sensor", "source": "native", "mqtt": None})
    assert sensor.mqtt is None


def test_a_location_cannot_be_a_site() -> None:
    with pytest.raises(ValidationError, match="kind 'site' is for sites"):
        _location("z", kind="site")


# --- data access ----------------------------------------------------------------------------------------------


def test_upsert_reports_created_updated_fields_and_unchanged(db: Conn) -> None:
    assert run(db, upsert_site(_site())).action is Action.CREATED
    assert run(db, upsert_site(_site())).action is Action.UNCHANGED

    change = run(db, upsert_site(_site(name="North DC", humidity_pct={"max": 60})))

    assert (change.action, change.fields) == (Action.UPDATED, ("name", "humidity_pct"))
    assert str(change) == "site/dc-1 updated (name, humidity_pct)"


def test_locations_carry_their_site_and_follow_a_move(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_site(_site(id="dc-2")))
    run(db, upsert_location(_location("zone-a")))
    run(db, upsert_location(_location("aisle-1", parent="zone-a", kind="aisle")))
    run(db, upsert_location(_location("bin-1", parent="aisle-1", kind="bin")))

    run(db, upsert_location(_location("zone-a", parent="dc-2")))

    sites = dict(db.execute("select id, site_id from locations where kind <> 'site'").fetchall())
    assert sites == {"zone-a": "dc-2", "aisle-1": "dc-2", "bin-1": "dc-2"}
    assert [loc.id for loc in run(db, list_locations(site="dc-2"))] == ["zone-a", "aisle-1", "bin-1"]


def test_a_location_cannot_end_up_inside_itself(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_location(_location("zone-a")))
    run(db, upsert_location(_location("zone-b", parent="zone-a")))

    with pytest.raises(InvalidError, match="cannot be inside itself"):
        run(db, upsert_location(_location("zone-a", parent="zone-b")))
    with pytest.raises(InvalidError, match="parent 'nowhere' does not exist"):
        run(db, upsert_location(_location("zone-c", parent="nowhere")))


def test_sites_and_locations_share_ids_but_not_roles(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_location(_location("zone-a")))

    with pytest.raises(ConflictError, match="'zone-a' is a location of kind zone, not a site"):
        run(db, upsert_site(_site(id="zone-a")))
    with pytest.raises(ConflictError, match="'dc-1' is a site"):
        run(db, upsert_location(_location("dc-1", parent="zone-a")))


def test_delete_refuses_a_location_in_use_and_names_the_user(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_location(_location("dock-1", kind="dock_door")))
    run(db, upsert_device(_reader(antennas=[{"port": 1, "location": "dock-1", "side": "out"}])))

    with pytest.raises(ConflictError, match=r"location 'dock-1' is still in use by antenna reader-1#1"):
        run(db, delete_place("dock-1", "location"))
    with pytest.raises(ConflictError, match="site 'dc-1' is still in use by location dock-1"):
        run(db, delete_place("dc-1", "site"))

    run(db, delete_device("reader-1"))
    assert run(db, delete_place("dock-1", "location")).action is Action.DELETED


def test_device_references_are_checked_with_the_field_named(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_location(_location("dock-1", kind="dock_door")))

    with pytest.raises(InvalidError) as exc:
        run(db, upsert_device(_reader(antennas=[{"port": 4, "location": "dock-9"}])))
    assert (exc.value.field, exc.value.message) == ("antennas[0].location", "location 'dock-9' does not exist")

    tracker = Device.model_validate({"id": "t-1", "kind": "gps_tracker", "source": "native", "location": "dock-1"})
    with pytest.raises(InvalidError, match="a gps_tracker is fixed to a vehicle or container; 'dock-1' is a dock"):
        run(db, upsert_device(tracker))


def test_mqtt_user_names_are_unique(db: Conn) -> None:
    run(db, upsert_device(_reader("reader-1")))
    with pytest.raises(ConflictError, match="MQTT user name 'reader-1' is already device 'reader-1'"):
        run(db, upsert_device(_reader("reader-2", mqtt={"username": "reader-1"})))


def test_antenna_map_changes_are_reported_and_stored(db: Conn) -> None:
    run(db, upsert_site(_site()))
    run(db, upsert_location(_location("dock-1", kind="dock_door")))
    run(db, upsert_device(_reader(antennas=[{"port": 1, "location": "dock-1"}, {"port": 2, "location": "dock-1"}])))

    change = run(db, upsert_device(_reader(antennas=[{"port": 2, "location": "dock-1", "side": "in"}])))

    assert change.fields == ("antennas",)
    assert db.execute("select antenna, side from antennas").fetchall() == [(2, "in")]
    assert run(db, get_device("reader-1")).antennas[0].side == "in"


def test_adopting_a_device_that_published_keeps_its_data(db: Conn) -> None:
    seen = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    db.execute("insert into device_activity values ('stray-1', %s, %s, 'stocktrace/stray-1/reads', 3)", (seen, seen))
    db.execute("insert into rfid_reads values (%s, 'stray-1', 1, 'E200', -60, %s, null)", (seen, seen))

    change = run(db, upsert_device(_reader("stray-1")))

    assert change.action is Action.CREATED
    assert change.note == "adopted: it has published since 2026-03-01 09:00:00+0000"
    assert db.execute("select count(*) from rfid_reads where device_id = 'stray-1'").fetchone() == (1,)
    run(db, delete_device("stray-1"))
    assert db.execute("select count(*) from rfid_reads where device_id = 'stray-1'").fetchone() == (1,)


def test_devices_take_their_sites_time_zone(db: Conn) -> None:
    run(db, upsert_site(_site(timezone="Europe/Berlin")))
    run(db, upsert_location(_location("cold-1", kind="cold_room")))
    sensor = {"kind": "sensor", "source": "tasmota", "location": "cold-1"}
    run(db, upsert_device(Device.model_validate({"id": "plug-1", **sensor})))
    run(db, upsert_device(Device.model_validate({"id": "loose-1", "kind": "sensor", "source": "tasmota"})))

    assert run(db, device_timezones()) == {"plug-1": "Europe/Berlin"}


# --- REST -----------------------------------------------------------------------------------------------------

SITE = {"id": "dc-1", "name": "DC 1", "timezone": None, "geofence": None, "temperature_c": None, "humidity_pct": None}


def test_sites_crud(api: Api) -> None:
    assert api.post("/api/v1/sites", json={"id": "dc-1", "name": "DC 1"}).status_code == 201
    assert api.get("/api/v1/sites").json() == [SITE]
    assert api.post("/api/v1/sites", json={"id": "dc-1"}).status_code == 409

    replaced = api.put("/api/v1/sites/dc-1", json={**SITE, "geofence": {"center": [52.5, 13.4], "radius_m": 300}})
    assert replaced.status_code == 200
    assert api.get("/api/v1/sites/dc-1").json()["geofence"] == {
        "polygon": None,
        "center": [52.5, 13.4],
        "radius_m": 300,
    }

    assert api.delete("/api/v1/sites/dc-1").status_code == 204
    assert api.get("/api/v1/sites/dc-1").status_code == 404


def test_put_creates_with_201_and_checks_the_id(api: Api) -> None:
    assert api.put("/api/v1/sites/dc-2", json={"id": "dc-2"}).status_code == 201
    mismatch = api.put("/api/v1/sites/dc-3", json={"id": "dc-2"})
    assert mismatch.status_code == 422
    assert "differs from the path's 'dc-3'" in mismatch.json()["detail"][0]["msg"]


def test_validation_errors_name_the_field(api: Api) -> None:
    response = api.post("/api/v1/sites", json={"id": "dc-1", "geofence": {"polygon": [[1, 2], [3, 4]]}})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "geofence"]
    assert "polygon needs at least 3 points" in error["msg"]


def test_reference_errors_are_422_with_the_field(api: Api) -> None:
    response = api.post("/api/v1/locations", json={"id": "z", "kind": "zone", "parent": "nowhere"})

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", "parent"], "msg": "parent 'nowhere' does not exist", "type": "registry"}
    ]


def test_delete_of_a_location_in_use_is_409(api: Api) -> None:
    api.post("/api/v1/sites", json={"id": "dc-1"})
    api.post("/api/v1/locations", json={"id": "zone-a", "kind": "zone", "parent": "dc-1"})

    response = api.delete("/api/v1/sites/dc-1")

    assert response.status_code == 409
    assert response.json()["detail"] == "site 'dc-1' is still in use by location zone-a; move or delete those first"


def test_locations_filter_by_site_and_kind(api: Api) -> None:
    api.post("/api/v1/sites", json={"id": "dc-1"})
    api.post("/api/v1/sites", json={"id": "dc-2"})
    api.post("/api/v1/locations", json={"id": "cold-1", "kind": "cold_room", "parent": "dc-1"})
    api.post("/api/v1/locations", json={"id": "zone-1", "kind": "zone", "parent": "dc-1"})
    api.post("/api/v1/locations", json={"id": "cold-2", "kind": "cold_room", "parent": "dc-2"})

    listed = api.get("/api/v1/locations", params={"site": "dc-1", "kind": "cold_room"}).json()

    assert [location["id"] for location in listed] == ["cold-1"]


def test_device_ids_with_slashes_and_antenna_maps(api: Api) -> None:
    api.post("/api/v1/sites", json={"id": "dc-1"})
    api.post("/api/v1/locations", json={"id": "dock-1", "kind": "dock_door", "parent": "dc-1"})
    node = {
        "id": "plant/node-1",
        "kind": "gateway",
        "source": "sparkplug-b",
        "location": "dock-1",
        "mqtt": {"username": "node-1", "topic_prefix": None},
    }
    reader = {"id": "fx-1", "kind": "rfid_reader", "source": "zebra-fx", "mqtt": {"topic_prefix": "zebra/fx-1"}}
    assert api.put("/api/v1/devices/plant/node-1", json=node).status_code == 201
    assert api.post("/api/v1/devices", json=reader).status_code == 201

    assert api.get("/api/v1/devices/plant/node-1").json() == {
        **node,
        "name": None,
        "inactivity_timeout_s": None,
        "assigned": True,
        "antennas": [],
        "decoder_options": None,
    }
    put = api.put("/api/v1/devices/fx-1/antennas/1", json={"port": 1, "location": "dock-1", "side": "out"})
    assert put.status_code == 200
    api.put("/api/v1/devices/fx-1/antennas/2", json={"port": 2, "location": "dock-1", "side": "in"})
    assert [a["side"] for a in api.get("/api/v1/devices/fx-1/antennas").json()] == ["out", "in"]
    assert api.delete("/api/v1/devices/fx-1/antennas/1").status_code == 204
    assert api.delete("/api/v1/devices/fx-1/antennas/1").status_code == 404
    refused = api.put("/api/v1/devices/plant/node-1/antennas", json=[{"port": 1, "location": "dock-1"}])
    assert refused.status_code == 422
    assert "only an rfid_reader has antennas" in refused.json()["detail"][0]["msg"]
    assert api.delete("/api/v1/devices/plant/node-1").status_code == 204
    assert api.get("/api/v1/devices/plant/node-1").status_code == 404


def test_unassigned_devices_are_listed_and_adopted_by_put(api: Api, db: Conn) -> None:
    now = datetime.now(UTC)
    db.execute("insert into device_activity values ('stray-1', %s, %s, 'stocktrace/stray-1/reads', 7)", (now, now))
    api.post("/api/v1/devices", json={"id": "parked-1", "kind": "sensor", "source": "native", "assigned": False})
    api.post("/api/v1/devices", json={"id": "placed-1", "kind": "sensor", "source": "native"})

    unassigned = api.get("/api/v1/devices", params={"status": "unassigned"}).json()

    assert [(d["id"], d["registered"], d["status"]) for d in unassigned] == [
        ("parked-1", True, "never_seen"),
        ("stray-1", False, "online"),
    ]
    assert unassigned[1]["last_topic"] == "stocktrace/stray-1/reads"
    assert api.get("/api/v1/devices/stray-1").status_code == 404

    adopted = api.put("/api/v1/devices/stray-1", json={"id": "stray-1", "kind": "rfid_reader", "source": "native"})

    assert adopted.status_code == 201
    assert [d["id"] for d in api.get("/api/v1/devices", params={"status": "unassigned"}).json()] == ["parked-1"]
    assert api.get("/api/v1/devices", params={"kind": "rfid_reader"}).json()[0]["registered"] is True


def test_device_list_refuses_an_unknown_status(api: Api) -> None:
    assert api.get("/api/v1/devices", params={"status": "sleepy"}).status_code == 422


def test_not_found_is_404_with_a_message(api: Api) -> None:
    response = api.get("/api/v1/locations/nowhere")
    assert (response.status_code, response.json()) == (404, {"detail": "no location 'nowhere'"})


def test_devices_list_command_shows_what_to_adopt(dsn: str, db: Conn) -> None:
    now = datetime.now(UTC)
    db.execute("insert into device_activity values ('stray-1', %s, %s, 'stocktrace/stray-1/reads', 7)", (now, now))
    run(db, upsert_device(_reader("reader-1")))

    result = CliRunner().invoke(main, ["devices", "list", "--status", "unassigned", "--database-url", dsn])

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "KIND", "SOURCE", "LOCATION", "LAST", "SEEN", "LAST", "TOPIC"]
    assert [row.split()[:3] for row in rows] == [["stray-1", "online", "(unassigned)"]]
    assert rows[0].endswith("stocktrace/stray-1/reads")
