"""The inventory endpoints, mounted as the service mounts them, against the real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from stocktrace.db import create_pool
from tests.tracking.inventory_world import G1, G2, G3, Conn, World
from tracking.inventory_api import router


class Api:
    """Blocking calls into the app through httpx's ASGI transport, on an event loop in a thread of its own."""

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


@pytest.fixture
def api(dsn: str, db: Conn) -> Iterator[Api]:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    with start_blocking_portal() as portal:
        pool = create_pool(dsn, max_size=2)
        portal.call(pool.open)
        app.state.pool = pool
        try:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inventory.test")
            with portal.wrap_async_context_manager(client) as opened:
                yield Api(portal, opened)
        finally:
            portal.call(pool.close)


@pytest.fixture
def world(db: Conn) -> World:
    w = World(db)
    w.site("site")
    w.location("zone", "site", "zone")
    w.location("shelf-a", "zone", "shelf")
    w.location("shelf-b", "zone", "shelf")
    return w


def _errors(response: httpx.Response) -> list[tuple[Any, str]]:
    return [(e["loc"][-1], e["msg"]) for e in response.json()["detail"]]


# ----------------------------------------------------------------------------------------------------
# SKUs and lots


def test_sku_lifecycle(api: Api, world: World) -> None:
    sku = {"gtin": G1[1:], "name": "Vaccine", "temperature_min_c": 2, "temperature_max_c": 8}
    created = api.post("/api/v1/skus", json=sku)
    assert created.status_code == 201
    assert created.json()["gtin"] == G1  # a GTIN-13 is kept as 14 digits
    assert api.post("/api/v1/skus", json=sku).status_code == 409
    replaced = api.put(f"/api/v1/skus/{G1}", json={**sku, "lead_time_days": 3})
    assert replaced.status_code == 200
    assert api.get(f"/api/v1/skus/{G1[1:]}").json()["lead_time_days"] == 3
    assert api.delete(f"/api/v1/skus/{G1}").status_code == 204
    assert api.get(f"/api/v1/skus/{G1}").status_code == 404


def test_sku_refusals(api: Api, world: World) -> None:
    bad_digit = G1[:-1] + str((int(G1[-1]) + 1) % 10)
    response = api.post("/api/v1/skus", json={"gtin": bad_digit, "name": "x"})
    assert response.status_code == 422
    assert "check digit" in response.text
    inverted = {"gtin": G1, "name": "x", "temperature_min_c": 8, "temperature_max_c": 2}
    assert api.post("/api/v1/skus", json=inverted).status_code == 422
    assert api.put(f"/api/v1/skus/{G2}", json={"gtin": G1, "name": "x"}).status_code == 422
    assert api.get("/api/v1/skus/123").status_code == 422


def test_lots_items_and_assignment(api: Api, world: World) -> None:
    epc = world.item(G1)
    other = world.item(G2)
    world.place(epc, "shelf-a")
    assert api.post("/api/v1/lots", json={"lot": "L-88", "gtin": G1, "expires_on": "2027-03-31"}).status_code == 201
    assert api.put(f"/api/v1/items/{epc}/lot", json={"lot": "L-88"}).json() == {"epc": epc, "gtin": G1, "lot": "L-88"}
    mismatch = api.put(f"/api/v1/items/{other}/lot", json={"lot": "L-88"})
    assert mismatch.status_code == 422
    assert _errors(mismatch)[0][0] == "lot"
    assert api.put("/api/v1/items/nope/lot", json={"lot": "L-88"}).status_code == 404
    assert api.put(f"/api/v1/items/{epc}/lot", json={"lot": "L-99"}).status_code == 404
    items = api.get("/api/v1/lots/L-88/items").json()
    assert [(i["epc"], i["location_id"], i["status"]) for i in items] == [(epc, "shelf-a", "present")]
    assert api.delete("/api/v1/lots/L-88").status_code == 409
    assert api.put("/api/v1/lots/L-88", json={"lot": "L-88", "gtin": G2}).status_code == 409
    assert api.get(f"/api/v1/lots?gtin={G1}").json()[0]["expires_on"] == "2027-03-31"
    conditions = api.get("/api/v1/lots/L-88/conditions")
    assert conditions.status_code == 200
    assert conditions.json()["item_count"] == 1
    assert api.get("/api/v1/lots/L-00/conditions").status_code == 404


# ----------------------------------------------------------------------------------------------------
# Book import

_CSV = "\n".join(
    [
        "gtin;location_id;quantity",  # 1: spreadsheet export with ';'
        f"{G1};shelf-a;5",  # 2
        f"{G1[:-1]}{(int(G1[-1]) + 1) % 10};shelf-a;1",  # 3: wrong check digit
        f"{G2};nowhere;1",  # 4
        f"{G2};shelf-a;-1",  # 5
        "",  # 6
        f"{G2};shelf-a;2.5",  # 7
        f"{G2};shelf-a",  # 8
        f"{G3};shelf-b;4",  # 9
        f"{G3};shelf-b;1",  # 10: the same GTIN and location again (another lot): added up
    ]
)


def _rejected(response: httpx.Response) -> list[tuple[int, str]]:
    return [(r["line"], r["reason"]) for r in response.json()["rejected"]]


def test_csv_import_reports_bad_lines_and_keeps_the_good(api: Api, world: World, db: Conn) -> None:
    response = api.post("/api/v1/inventory/book", content=_CSV, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["accepted"], body["source"]) == (3, "csv")
    rejected = _rejected(response)
    assert [line for line, _ in rejected] == [3, 4, 5, 7, 8]
    reasons = dict(rejected)
    assert "check digit" in reasons[3]
    assert "unknown location 'nowhere'" in reasons[4]
    assert "negative" in reasons[5]
    assert "whole number" in reasons[7]
    assert "fields" in reasons[8]
    book = db.execute("select gtin, location_id, quantity from inventory_book order by gtin").fetchall()
    assert book == [(G3, "shelf-b", 5), (G1, "shelf-a", 5)]  # G3 sorts first; its two lines were added up


def test_csv_upload_as_a_file(api: Api, world: World) -> None:
    content = f"\ufeffGTIN,Location_ID,Quantity,as_of\n{G1},shelf-a,7,2026-01-05T10:00:00+01:00\n".encode()
    response = api.post("/api/v1/inventory/book", files={"file": ("erp-export.csv", content, "text/csv")})
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "csv:erp-export.csv"
    assert api.get("/api/v1/inventory/book", params={"location": "zone"}).json() == [
        {"gtin": G1, "location_id": "shelf-a", "quantity": 7, "as_of": "2026-01-05T09:00:00Z"}
    ]


def test_json_import_and_complete_scope(api: Api, world: World) -> None:
    lines = [
        {"gtin": G1, "location_id": "shelf-a", "quantity": 10},
        {"gtin": G2, "location_id": "shelf-b", "quantity": 3},
    ]
    first = api.post("/api/v1/inventory/book", json=lines, params={"source": "erp"})
    assert first.status_code == 201
    assert (first.json()["accepted"], first.json()["rejected"], first.json()["source"]) == (2, [], "erp")
    full = api.post(
        "/api/v1/inventory/book",
        json=[{"gtin": G1, "location_id": "shelf-a", "quantity": 8}],
        params={"complete_for": "zone"},
    )
    assert full.status_code == 201
    assert [(b["gtin"], b["quantity"]) for b in api.get("/api/v1/inventory/book").json()] == [(G1, 8)]


def test_import_refusals(api: Api, world: World) -> None:
    nothing = api.post(
        "/api/v1/inventory/book",
        content=f"gtin,location_id,quantity\n{G1},nowhere,1\n",
        headers={"content-type": "text/csv"},
    )
    assert nothing.status_code == 422
    assert _errors(nothing) == [(2, "unknown location 'nowhere'")]
    no_header = api.post("/api/v1/inventory/book", content=f"{G1},shelf-a,1\n", headers={"content-type": "text/csv"})
    assert no_header.status_code == 422
    assert "header" in no_header.text
    bad_json = api.post("/api/v1/inventory/book", json=[{"gtin": G1, "location_id": "shelf-a", "quantity": -1}])
    assert bad_json.status_code == 422
    assert bad_json.json()["detail"][0]["loc"] == ["body", 0, "quantity"]
    wrong_scope = api.post(
        "/api/v1/inventory/book",
        json=[{"gtin": G1, "location_id": "shelf-a", "quantity": 1}],
        params={"complete_for": "atlantis"},
    )
    assert wrong_scope.status_code == 422
    assert wrong_scope.json()["detail"][0]["loc"] == ["query", "complete_for"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert api.post("/api/v1/inventory/book", json=[], params={"as_of": future}).status_code == 422
    xml = api.post("/api/v1/inventory/book", content="<book/>", headers={"content-type": "application/xml"})
    assert xml.status_code == 415


# ----------------------------------------------------------------------------------------------------
# Observed against book, variance, cycle counts, conditions


def test_location_inventory_and_variance(api: Api, world: World) -> None:
    world.stock(G1, "shelf-a", 8)
    world.stock(G1, "shelf-b", 3)
    world.book([(G1, "shelf-a", 10), (G1, "shelf-b", 3)])
    zone = api.get("/api/v1/locations/zone/inventory").json()
    assert (zone["observed_units"], zone["book_units"]) == (11, 13)
    assert zone["lines"][0]["variance_pct"] == pytest.approx(-200 / 13)
    assert api.get("/api/v1/locations/nowhere/inventory").status_code == 404
    variance = api.get("/api/v1/inventory/variance", params={"location": "zone", "threshold_pct": 16}).json()
    assert [(v["location_id"], v["variance_units"]) for v in variance] == [("shelf-a", -2)]
    assert api.get("/api/v1/inventory/variance", params={"location": "nowhere"}).status_code == 404
    accuracy = {a["location_id"]: a["accuracy_pct"] for a in api.get("/api/v1/inventory/accuracy").json()}
    assert accuracy["shelf-b"] == 100.0
    assert accuracy["shelf-a"] == pytest.approx(80.0)


def test_cycle_count_through_the_api(api: Api, world: World) -> None:
    world.stock(G1, "shelf-a", 4)
    world.book([(G1, "shelf-a", 5)])
    started = api.post("/api/v1/inventory/cycle-counts", json={"name": "weekly", "location_id": "shelf-a"})
    assert started.status_code == 201
    count_id = started.json()["id"]
    assert started.json()["status"] == "open"
    world.db.execute("update item_state set last_seen_at = now()")
    finished = api.post(f"/api/v1/inventory/cycle-counts/{count_id}/finish").json()
    assert finished["status"] == "finished"
    assert [(r["gtin"], r["observed_units"], r["book_units"]) for r in finished["results"]] == [(G1, 4, 5)]
    assert api.post(f"/api/v1/inventory/cycle-counts/{count_id}/finish").status_code == 409
    assert api.get(f"/api/v1/inventory/cycle-counts/{count_id}").json()["results"] == finished["results"]
    listed = api.get("/api/v1/inventory/cycle-counts", params={"location": "shelf-a", "status": "finished"}).json()
    assert [c["id"] for c in listed] == [count_id]
    assert api.get("/api/v1/inventory/cycle-counts/999999").status_code == 404
    unknown = api.post("/api/v1/inventory/cycle-counts", json={"name": "x", "location_id": "atlantis"})
    assert unknown.status_code == 422


def test_item_conditions_through_the_api(api: Api, world: World) -> None:
    world.sensor("probe", "zone")
    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    world.samples("probe", t0, timedelta(minutes=10), [4.0, 9.0, 4.0])
    epc = world.item(G1)
    world.event(t0, epc, "arrived", to="shelf-a")
    response = api.get(f"/api/v1/items/{epc}/conditions", params={"until": (t0 + timedelta(minutes=30)).isoformat()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stays"][0]["sensor_ids"] == ["probe"]
    assert body["temperature"]["maximum_c"] == 9.0
    assert api.get("/api/v1/items/nope/conditions").status_code == 404
    backwards = {"since": t0.isoformat(), "until": (t0 - timedelta(hours=1)).isoformat()}
    assert api.get(f"/api/v1/items/{epc}/conditions", params=backwards).status_code == 422


def test_consumption_points_and_refresh(api: Api, world: World) -> None:
    assert api.put("/api/v1/inventory/consumption-points/zone", json={"note": "line 1"}).status_code == 204
    assert api.put("/api/v1/inventory/consumption-points/atlantis", json={}).status_code == 404
    assert api.delete("/api/v1/inventory/consumption-points/zone").status_code == 204
    assert api.delete("/api/v1/inventory/consumption-points/zone").status_code == 404
    refreshed = api.post(
        "/api/v1/inventory/consumption/refresh", params={"from_day": "2026-01-01", "to_day": "2026-01-31"}
    )
    assert refreshed.json() == {"from_day": "2026-01-01", "to_day": "2026-01-31", "rows_written": 0}
    backwards = api.post(
        "/api/v1/inventory/consumption/refresh", params={"from_day": "2026-02-01", "to_day": "2026-01-01"}
    )
    assert backwards.status_code == 422


def test_openapi_documents_the_three_book_formats(api: Api) -> None:
    app = FastAPI()
    app.include_router(router, prefix="/api/v1")
    body = app.openapi()["paths"]["/api/v1/inventory/book"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "text/csv", "multipart/form-data"}
