"""Device health: last seen per device and antenna, offline by event or by silence, through the view and the API.

Rows are written to device_activity, device_events and rfid_reads as the ingest path writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devices.health import Status, device_health, list_device_states
from devices.registry import Device, Location, Site, run, upsert_device, upsert_location, upsert_site
from tests.devices.test_registry import Api, api_client

Conn = psycopg.Connection[Any]
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Health is judged against the database's now(): each test's "now" must be taken when it runs, not when
    the module was imported minutes earlier in a long suite (a reader's timeout is 60 s)."""
    global NOW  # the tests read NOW as a module constant
    NOW = datetime.now(UTC)


@pytest.fixture
def api(dsn: str, db: Conn) -> Iterator[Api]:
    with api_client(dsn) as client:
        yield client


@pytest.fixture
def site(db: Conn) -> None:
    run(db, upsert_site(Site(id="dc-1")))
    run(db, upsert_location(Location.model_validate({"id": "dock-1", "parent": "dc-1", "kind": "dock_door"})))


def _device(db: Conn, id: str, kind: str, **fields: Any) -> None:
    run(db, upsert_device(Device.model_validate({"id": id, "kind": kind, "source": "native", **fields})))


def _seen(db: Conn, device_id: str, ago: timedelta) -> datetime:
    at = NOW - ago
    db.execute(
        "insert into device_activity values (%s, %s, %s, %s, 1)"
        " on conflict (device_id) do update set last_seen_at = excluded.last_seen_at",
        (device_id, at - timedelta(hours=1), at, f"stocktrace/{device_id}/reads"),
    )
    return at


def _event(db: Conn, device_id: str, at: datetime, online: bool, reason: str, antenna: int = -1) -> None:
    db.execute(
        "insert into device_events (observed_at, device_id, antenna, online, reason, received_at)"
        " values (%s, %s, %s, %s, %s, %s)",
        (at, device_id, antenna, online, reason, at),
    )


def test_silence_longer_than_the_kinds_timeout_is_offline(db: Conn) -> None:
    _device(db, "reader-1", "rfid_reader")
    _device(db, "sensor-1", "sensor")
    _device(db, "sensor-2", "sensor", inactivity_timeout_s=60)
    for device_id in ("reader-1", "sensor-1", "sensor-2"):
        _seen(db, device_id, timedelta(minutes=2))

    states = {s.id: (s.status, s.reason) for s in run(db, list_device_states())}

    # A reader may be silent 60 s, a sensor 15 min unless its own timeout says otherwise.
    assert states == {
        "reader-1": (Status.OFFLINE, "inactive"),
        "sensor-1": (Status.ONLINE, None),
        "sensor-2": (Status.OFFLINE, "inactive"),
    }
    assert run(db, device_health("sensor-1")).inactivity_timeout_s == 900


def test_a_last_will_is_offline_until_the_device_speaks_again(db: Conn) -> None:
    _device(db, "reader-1", "rfid_reader")
    at = _seen(db, "reader-1", timedelta(seconds=5))
    _event(db, "reader-1", at, False, "last-will")

    health = run(db, device_health("reader-1"))
    assert (health.status, health.reason, health.last_event_reason) == (Status.OFFLINE, "last-will", "last-will")

    _seen(db, "reader-1", timedelta(seconds=1))
    assert run(db, device_health("reader-1")).status is Status.ONLINE


def test_a_heartbeat_counts_as_being_seen(db: Conn) -> None:
    _device(db, "reader-1", "rfid_reader")
    _seen(db, "reader-1", timedelta(minutes=5))
    _event(db, "reader-1", NOW - timedelta(seconds=10), True, "heartbeat")

    health = run(db, device_health("reader-1"))

    assert health.status is Status.ONLINE
    assert health.last_seen_at == NOW - timedelta(seconds=10)


def test_registered_but_silent_is_never_seen(db: Conn) -> None:
    _device(db, "sensor-1", "sensor")
    health = run(db, device_health("sensor-1"))
    assert (health.status, health.last_seen_at, health.registered) == (Status.NEVER_SEEN, None, True)


def test_antennas_report_last_read_and_connection(db: Conn, site: None) -> None:
    antennas = [{"port": 1, "location": "dock-1", "side": "out"}, {"port": 2, "location": "dock-1", "side": "in"}]
    _device(db, "fx-1", "rfid_reader", antennas=antennas)
    _seen(db, "fx-1", timedelta(seconds=1))
    for ago, antenna in ((30, 1), (3, 1), (90, 2)):
        at = NOW - timedelta(seconds=ago)
        db.execute(
            "insert into antenna_activity values ('fx-1', %s, %s, 1) on conflict (device_id, antenna) do update"
            " set last_read_at = greatest(antenna_activity.last_read_at, excluded.last_read_at)",
            (antenna, at),
        )
    _event(db, "fx-1", NOW - timedelta(seconds=20), False, "antenna-disconnected", antenna=2)
    _event(db, "fx-1", NOW - timedelta(seconds=40), False, "antenna-disconnected", antenna=3)
    _event(db, "fx-1", NOW - timedelta(seconds=10), True, "antenna-connected", antenna=3)

    health = run(db, device_health("fx-1"))

    assert health.status is Status.ONLINE
    assert [(a.port, a.location, a.side, a.connected) for a in health.antennas] == [
        (1, "dock-1", "out", None),
        (2, "dock-1", "in", False),
        (3, None, None, True),
    ]
    assert [a.last_read_at for a in health.antennas] == [NOW - timedelta(seconds=3), NOW - timedelta(seconds=90), None]
    assert health.antennas[1].last_event_reason == "antenna-disconnected"


def test_list_filters_by_status(db: Conn) -> None:
    _device(db, "reader-1", "rfid_reader")
    _device(db, "reader-2", "rfid_reader")
    _seen(db, "reader-1", timedelta(seconds=1))

    assert [s.id for s in run(db, list_device_states("online"))] == ["reader-1"]
    assert [s.id for s in run(db, list_device_states("never_seen"))] == ["reader-2"]


def test_health_endpoint_for_a_sparkplug_device_after_its_death_certificate(api: Api, db: Conn) -> None:
    node = {"id": "plant/node-1", "kind": "gateway", "source": "sparkplug-b", "mqtt": {"username": "node-1"}}
    api.post("/api/v1/devices", json=node)
    api.post(
        "/api/v1/devices", json={"id": "plant/node-1/probe", "kind": "sensor", "source": "sparkplug-b", "mqtt": None}
    )
    at = _seen(db, "plant/node-1", timedelta(seconds=2))
    _event(db, "plant/node-1", at, False, "death-certificate")
    _event(db, "plant/node-1/probe", at, False, "death-certificate")

    response = api.get("/api/v1/devices/plant/node-1/probe/health")

    assert response.status_code == 200
    body = response.json()
    assert (body["device_id"], body["status"], body["reason"]) == ("plant/node-1/probe", "offline", "death-certificate")
    listed = {d["id"]: d["status"] for d in api.get("/api/v1/devices", params={"status": "offline"}).json()}
    assert listed == {"plant/node-1": "offline", "plant/node-1/probe": "offline"}


def test_health_of_an_unregistered_device_and_of_nothing(api: Api, db: Conn) -> None:
    _seen(db, "stray-1", timedelta(seconds=1))

    body = api.get("/api/v1/devices/stray-1/health").json()

    assert (body["registered"], body["assigned"], body["status"]) == (False, False, "online")
    missing = api.get("/api/v1/devices/ghost/health")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "device 'ghost' is not registered and has never published"


def test_the_view_is_there_for_dashboards(db: Conn) -> None:
    _device(db, "reader-1", "rfid_reader")
    _seen(db, "stray-1", timedelta(seconds=1))

    rows = db.execute("select device_id, status from device_health order by device_id").fetchall()

    assert rows == [("reader-1", "never_seen"), ("stray-1", "online")]
    assert db.execute("select device_id from unassigned_devices").fetchall() == [("stray-1",)]
