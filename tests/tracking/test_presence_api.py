"""The presence endpoints through the app's ASGI interface, with a real pool on the test database."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from stocktrace.db import create_pool
from tests.tracking.presence_site import ITEM, OTHER, PALLET, build_site, read, rows, sgtin
from tests.tracking.test_resolver import Line
from tracking.api import router

Db = psycopg.Connection[tuple[Any, ...]]


class Api:
    """Blocking calls into the app through httpx's ASGI transport, on an event loop in a thread of its own."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self._portal, self._client = portal, client

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.request, "GET", url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.request, "POST", url, **kwargs))

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(partial(self._client.request, "PUT", url, **kwargs))


@pytest.fixture
def line(dsn: str, db: Db) -> Line:
    build_site(db)
    return Line(dsn)


@pytest.fixture
def api(dsn: str, db: Db) -> Iterator[Api]:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    with start_blocking_portal() as portal:
        pool = create_pool(dsn, max_size=2)
        portal.call(pool.open)
        app.state.pool = pool
        try:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://presence.test")
            with portal.wrap_async_context_manager(client) as opened:
                yield Api(portal, opened)
        finally:
            portal.call(pool.close)


def test_an_item_by_epc_or_uri_with_its_identity_and_state(line: Line, api: Api) -> None:
    line.feed(rows([read(s, "r700", 1) for s in range(0, 10, 2)]))

    body = api.get(f"/api/v1/items/{ITEM.lower()}").json()
    assert body["epc"] == ITEM
    assert (body["scheme"], body["gtin"], body["serial"]) == ("sgtin", "04012345000115", "1")
    assert body["state"]["location_id"] == "shelf-1"
    assert (body["state"]["status"], body["state"]["site_id"]) == ("present", "berlin")
    assert api.get("/api/v1/items/urn:epc:id:sgtin:4012345.000011.1").json()["epc"] == ITEM


def test_unknown_and_malformed_items_are_404_and_422(line: Line, api: Api) -> None:
    missing = api.get(f"/api/v1/items/{OTHER}")
    assert missing.status_code == 404
    assert OTHER in missing.json()["detail"]
    assert api.get("/api/v1/items/urn:epc:id:sgtin:1.2.3").status_code == 404
    bad = api.get("/api/v1/items/not-an-epc")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["path", "epc"]
    assert api.get("/api/v1/locations/nowhere/items").status_code == 404


def test_history_is_paged_newest_first_without_losing_events(line: Line, api: Api, db: Db) -> None:
    line.feed(rows([read(s, "r700", 1, rssi=-60) for s in range(0, 10, 2)]))
    line.feed(rows([read(s, "r700", 2, rssi=-45) for s in range(100, 110, 2)] + [read(110, "r700", 1, OTHER)]))
    line.feed(rows([read(s, "gw-recv", 1) for s in range(300, 310, 2)] + [read(400, "r700", 1, OTHER)]))

    first = api.get(f"/api/v1/items/{ITEM}/history", params={"limit": 2}).json()
    assert [e["to_location"] for e in first["events"]] == ["receiving", "shelf-2"]
    rest = api.get(f"/api/v1/items/{ITEM}/history", params={"limit": 2, "before": first["next_before"]}).json()
    assert [(e["kind"], e["to_location"]) for e in rest["events"]] == [("arrived", "shelf-1")]
    assert rest["next_before"] is None


def test_what_is_at_a_location_with_counts_per_gtin_and_pages(line: Line, api: Api) -> None:
    items = [sgtin(n) for n in range(1, 6)]
    line.feed(rows([read(s, "r700", 1 + n % 2, epc) for s in (0, 3) for n, epc in enumerate(items)]
                   + [read(s, "r700", 1, OTHER) for s in (0, 3)]))  # fmt: skip

    zone = api.get("/api/v1/locations/zone-a/items", params={"limit": 4}).json()
    assert zone["total"] == 6
    assert zone["by_gtin"] == [{"gtin": "04012345000115", "items": 5}, {"gtin": "04012345000283", "items": 1}]
    assert len(zone["items"]) == 4
    page = api.get("/api/v1/locations/zone-a/items", params={"limit": 4, "after": zone["next_after"]}).json()
    assert len(page["items"]) == 2
    assert page["next_after"] is None

    shelf = api.get("/api/v1/locations/shelf-2/items", params={"include_sublocations": False}).json()
    assert shelf["total"] == 2
    assert {i["location_id"] for i in shelf["items"]} == {"shelf-2"}


def test_packing_a_pallet_places_its_unread_contents_with_it(line: Line, api: Api, db: Db) -> None:
    line.feed(rows([read(s, "r700", 1, epc) for s in (0, 3) for epc in (ITEM, PALLET)]))

    url = f"/api/v1/containers/{PALLET}/contents"
    packed = api.post(url, json={"add": [ITEM, OTHER], "at": "2026-03-02T08:00:05Z"})
    assert packed.status_code == 200, packed.text
    assert [c["epc"] for c in packed.json()["contents"]] == sorted([ITEM, OTHER])
    assert api.get("/api/v1/containers/040123450000000108").json()["epc"] == PALLET

    # OTHER was never read: packed, it takes the pallet's place; the pallet then goes through the dock door.
    line.tick()
    assert api.get(f"/api/v1/items/{OTHER}").json()["state"]["location_id"] == "shelf-1"
    line.feed(
        rows(
            [read(60 + s, "fx-dock", 2, PALLET) for s in range(3)]
            + [read(s, "r700", 2, sgtin(9)) for s in range(60, 150, 2)]
        )
    )
    assert api.get(f"/api/v1/items/{OTHER}").json()["state"]["location_id"] == "dock-1"
    assert api.get(f"/api/v1/items/{ITEM}").json()["state"]["container_epc"] == PALLET

    unpacked = api.post(url, json={"remove": [ITEM]})
    assert [c["epc"] for c in unpacked.json()["contents"]] == [OTHER]
    assert api.get(f"/api/v1/items/{ITEM}").json()["state"]["container_epc"] is None
    assert db.execute("select action, item_epc from container_changes order by recorded_at, action").fetchall() == [
        ("add", ITEM), ("add", OTHER), ("delete", ITEM),
    ]  # fmt: skip


def test_bad_container_requests_are_422_or_404(line: Line, api: Api) -> None:
    assert api.get(f"/api/v1/containers/{PALLET}").status_code == 404
    itself = api.post(f"/api/v1/containers/{PALLET}/contents", json={"add": [PALLET]})
    assert itself.status_code == 422
    both = api.post(f"/api/v1/containers/{PALLET}/contents", json={"add": [ITEM], "remove": [ITEM]})
    assert both.status_code == 422
    assert api.post("/api/v1/containers/zz/contents", json={"add": [ITEM]}).status_code == 422
    assert (
        api.post(f"/api/v1/containers/{PALLET}/contents", json={"add": ["urn:epc:id:sgtin:9.9.9"]}).status_code == 404
    )


def test_a_location_policy_override_is_shown_and_used_by_the_resolver(line: Line, api: Api, db: Db) -> None:
    assert api.get("/api/v1/locations/shelf-1/presence-policy").json() == {
        "location_id": "shelf-1", "kind": "shelf", "dwell_s": 2.0, "age_out_s": 60.0, "hysteresis_db": 6.0,
        "overrides": {"dwell_s": None, "age_out_s": None, "hysteresis_db": None},
    }  # fmt: skip
    put = api.put("/api/v1/locations/shelf-1/presence-policy", json={"age_out_s": 600})
    assert put.json()["age_out_s"] == 600.0
    assert api.put("/api/v1/locations/shelf-1/presence-policy", json={"age_out_s": 0}).status_code == 422
    assert api.put("/api/v1/locations/nowhere/presence-policy", json={}).status_code == 404

    line.feed(rows([read(s, "r700", 1) for s in range(0, 10, 2)]))
    line.feed(rows([read(s, "r700", 2, OTHER) for s in range(100, 300, 20)]))  # 290 s on the reader's clock
    assert db.execute("select status from item_state where epc = %s", (ITEM,)).fetchone() == ("present",)

    api.put("/api/v1/locations/shelf-1/presence-policy", json={})
    assert api.get("/api/v1/locations/shelf-1/presence-policy").json()["overrides"]["age_out_s"] is None
    line.tick()
    assert db.execute("select status from item_state where epc = %s", (ITEM,)).fetchone() == ("departed",)
