"""The alerts and silences endpoints, mounted as the service mounts them, over alerts the evaluator made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from alerts.api import router
from alerts.model import State
from stocktrace.db import create_pool
from tests.alerts.test_rules import COLD_CHAIN, COLD_ROOM_RULES, MONDAY, Timeline, configure, minutes, opened_timeline


@pytest.fixture
def timeline(dsn: str) -> Iterator[Timeline]:
    with opened_timeline(dsn) as line:
        yield line


@asynccontextmanager
async def api_client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    pool = create_pool(dsn, max_size=2)
    await pool.open()
    app.state.pool = pool
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
            yield client
    finally:
        await pool.close()


def call(dsn: str, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with api_client(dsn) as client:
            return [await client.request(method, f"/api/v1{url}", **kw) for method, url, kw in requests]

    return asyncio.run(go())


def get(dsn: str, url: str, **kw: Any) -> httpx.Response:
    return call(dsn, ("GET", url, kw))[0]


@pytest.fixture
def two_alerts(timeline: Timeline) -> Timeline:
    """A firing TemperatureExcursion (critical) at cold-room-2 and a firing DeviceOffline (warning) for reader-1."""
    configure(timeline, COLD_ROOM_RULES, *COLD_CHAIN)
    timeline.location("cold-room-2", "S1", "cold_room", band=(2.0, 8.0))
    timeline.device("probe-1", "sensor", "cold-room-2")
    timeline.location("aisle-4", "S1", "aisle")
    timeline.device("reader-1", "rfid_reader", "aisle-4")
    timeline.seen("reader-1", MONDAY - minutes(30))
    timeline.readings("probe-1", MONDAY, [9.0] * 20)
    timeline.tick(MONDAY + minutes(16))
    return timeline


def test_alerts_are_listed_filtered_and_paged(two_alerts: Timeline) -> None:
    dsn = two_alerts.dsn
    every = get(dsn, "/alerts").json()
    assert [a["alertname"] for a in every["alerts"]] == ["TemperatureExcursion", "DeviceOffline"]  # newest first
    assert every["next_cursor"] is None
    excursion = every["alerts"][0]
    assert excursion["state"] == "firing"
    assert excursion["depends_on"] == ["probe-1"]
    assert excursion["annotations"]["summary"].startswith("cold-room-2 has been above 8 °C")

    critical = get(dsn, "/alerts", params={"severity": "critical"}).json()["alerts"]
    assert [a["alertname"] for a in critical] == ["TemperatureExcursion"]
    cold = get(dsn, "/alerts", params={"filter": 'location=~"cold-.*"'}).json()["alerts"]
    assert [a["subject"] for a in cold] == ["cold-room-2"]
    not_cold = get(dsn, "/alerts", params=[("filter", 'location!~"cold-.*"'), ("filter", 'site="S1"')]).json()
    assert [a["subject"] for a in not_cold["alerts"]] == ["reader-1"]
    assert get(dsn, "/alerts", params={"state": "resolved"}).json()["alerts"] == []

    first = get(dsn, "/alerts", params={"limit": 1}).json()
    second = get(dsn, "/alerts", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [a["alertname"] for a in first["alerts"] + second["alerts"]] == ["TemperatureExcursion", "DeviceOffline"]
    assert second["next_cursor"] is None


def test_bad_filters_and_unknown_alerts_are_refused_clearly(two_alerts: Timeline) -> None:
    dsn = two_alerts.dsn
    bad = get(dsn, "/alerts", params={"filter": 'location=~"("'})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "filter", 0]
    assert "bad regular expression" in bad.json()["detail"][0]["msg"]
    assert get(dsn, "/alerts", params={"cursor": "nonsense"}).status_code == 422
    assert get(dsn, "/alerts", params={"state": "sleeping"}).status_code == 422
    missing = get(dsn, "/alerts/0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no alert with fingerprint 0123456789abcdef"
    assert get(dsn, "/alerts/not-a-fingerprint").status_code == 422


def test_one_alert_shows_its_history(two_alerts: Timeline) -> None:
    fingerprint = two_alerts.alert("TemperatureExcursion")[7]
    detail = get(two_alerts.dsn, f"/alerts/{fingerprint}").json()
    assert detail["fingerprint"] == fingerprint
    assert detail["history"][0]["state"] == "firing"
    assert detail["history"][0]["previous"] is None


def test_an_acknowledged_alert_is_not_repeated(two_alerts: Timeline) -> None:
    dsn = two_alerts.dsn
    fingerprint = two_alerts.alert("DeviceOffline")[7]
    configure(two_alerts, "defaults: {repeat_interval: 10m}", "device_offline")
    acked, unknown, empty = call(
        dsn,
        ("POST", f"/alerts/{fingerprint}/ack", {"json": {"by": "j.doe", "comment": "reader being replaced"}}),
        ("POST", "/alerts/0123456789abcdef/ack", {"json": {"by": "j.doe"}}),
        ("POST", f"/alerts/{fingerprint}/ack", {"json": {"by": ""}}),
    )
    assert acked.status_code == 200
    assert acked.json()["acknowledgement"]["by"] == "j.doe"
    assert acked.json()["acknowledgement"]["comment"] == "reader being replaced"
    assert (unknown.status_code, empty.status_code) == (404, 422)
    two_alerts.run(MONDAY + minutes(60), minutes(5))

    def told_since(at: datetime) -> list[str]:
        return [t.change.reason for t in two_alerts.changes(since=at) if t.change.alert.fingerprint == fingerprint]

    assert told_since(MONDAY + minutes(17)) == []

    taken_back = call(dsn, ("DELETE", f"/alerts/{fingerprint}/ack", {}))[0]
    assert taken_back.json()["acknowledgement"] is None
    two_alerts.tick(MONDAY + minutes(65))
    assert told_since(MONDAY + minutes(65)) == ["repeat: still firing"]


def test_resolved_alerts_cannot_be_acknowledged(two_alerts: Timeline) -> None:
    two_alerts.seen("reader-1", MONDAY + minutes(20))
    two_alerts.tick(MONDAY + minutes(20))
    fingerprint = two_alerts.alert("DeviceOffline")[7]
    refused = call(two_alerts.dsn, ("POST", f"/alerts/{fingerprint}/ack", {"json": {"by": "j.doe"}}))[0]
    assert refused.status_code == 409


def test_silences_are_created_listed_and_expired_and_silence_alerts(two_alerts: Timeline) -> None:
    dsn = two_alerts.dsn
    ends_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    created, bad_regex, in_the_past, no_matchers = call(
        dsn,
        ("POST", "/silences", {"json": {
            "matchers": [{"name": "alertname", "op": "=", "value": "DeviceOffline"}, 'site="S1"'],
            "starts_at": (MONDAY - timedelta(hours=1)).isoformat(), "ends_at": ends_at,
            "created_by": "j.doe", "comment": "replacing readers"}}),
        ("POST", "/silences", {"json": {"matchers": ['site=~"("'], "ends_at": ends_at, "created_by": "j.doe"}}),
        ("POST", "/silences", {"json": {"matchers": ['site="S1"'], "ends_at": "2020-01-01T00:00:00Z",
                                        "created_by": "j.doe"}}),
        ("POST", "/silences", {"json": {"matchers": [], "ends_at": ends_at, "created_by": "j.doe"}}),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["status"] == "active"
    assert silence["matchers"] == [
        {"name": "alertname", "op": "=", "value": "DeviceOffline"},
        {"name": "site", "op": "=", "value": "S1"},
    ]
    assert [bad_regex.status_code, in_the_past.status_code, no_matchers.status_code] == [422, 422, 422]
    assert in_the_past.json()["detail"][0]["loc"] == ["body", "ends_at"]

    two_alerts.tick(MONDAY + minutes(17))
    silenced = get(dsn, "/alerts", params={"suppressed": "true"}).json()["alerts"]
    assert [(a["alertname"], a["silenced_by"]) for a in silenced] == [("DeviceOffline", [silence["id"]])]

    listed = get(dsn, "/silences", params={"state": "active"}).json()
    assert [s["id"] for s in listed] == [silence["id"]]
    expired, missing = call(dsn, ("DELETE", f"/silences/{silence['id']}", {}), ("DELETE", "/silences/999999", {}))
    assert expired.json()["status"] == "expired"
    assert missing.status_code == 404
    assert get(dsn, f"/silences/{silence['id']}").json()["status"] == "expired"
    assert get(dsn, "/silences", params={"state": "active"}).json() == []


def test_the_alert_states_are_the_models(two_alerts: Timeline) -> None:
    states = {a["state"] for a in get(two_alerts.dsn, "/alerts").json()["alerts"]}
    assert states <= {s.value for s in State}
