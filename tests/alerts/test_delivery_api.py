"""The deliveries API, mounted as the service mounts it, while a worker delivers to a local receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from alerts.deliveries_api import router
from stocktrace.db import create_pool
from tests.alerts.receiver import (
    Answer,
    alert,
    clean_outbox,
    enqueue_changes,
    fired,
    resolved,
    routes,
    running_receiver,
    running_worker,
    wait_for,
)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    yield from clean_outbox(dsn)


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


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_failed_delivery_is_visible_and_retried_from_the_api(dsn: str, db: psycopg.Connection) -> None:
    breach = alert("ColdChainBreach", "cold-room-2")
    with running_receiver() as receiver:
        receiver.script(Answer(400, b"bad request: no such channel"))
        config = routes({"name": "ops", "type": "webhook", "url": receiver.url})

        async def scenario() -> None:
            async with running_worker(dsn, config), api_client(dsn) as api:
                await enqueue_changes(dsn, config, fired(breach))

                async def failed() -> bool:
                    return bool((await api.get("/api/v1/deliveries", params={"state": "failed"})).json())

                await _until(failed)
                (listed,) = (await api.get("/api/v1/deliveries", params={"state": "failed"})).json()
                assert listed["receiver"] == "ops"
                assert listed["fingerprints"] == [breach.fingerprint]
                assert (listed["attempts"], listed["last_status_code"]) == (1, 400)
                assert listed["last_error"] == "HTTP 400: bad request: no such channel"
                detail = (await api.get(f"/api/v1/deliveries/{listed['id']}")).json()
                assert detail["payload"]["version"] == "4"
                (attempt,) = detail["attempt_log"]
                assert (attempt["attempt"], attempt["status_code"], attempt["outcome"]) == (1, 400, "failed")
                assert attempt["duration_ms"] >= 0

                retried = await api.post(f"/api/v1/deliveries/{listed['id']}/retry")
                assert retried.status_code == 200
                assert retried.json()["state"] == "pending"
                await wait_for(receiver, 1)

                async def sent() -> bool:
                    return bool((await api.get(f"/api/v1/deliveries/{listed['id']}")).json()["state"] == "sent")

                await _until(sent)
                detail = (await api.get(f"/api/v1/deliveries/{listed['id']}")).json()
                assert [a["outcome"] for a in detail["attempt_log"]] == ["failed", "sent"]
                again = await api.post(f"/api/v1/deliveries/{listed['id']}/retry")
                assert again.status_code == 409
                assert (await api.post("/api/v1/deliveries/999999/retry")).status_code == 404
                assert (await api.get("/api/v1/deliveries/999999")).status_code == 404

        asyncio.run(scenario())
    assert len(receiver.requests) == 2
    assert receiver.requests[0].body == receiver.requests[1].body


def test_list_filters_and_pages(dsn: str, db: psycopg.Connection) -> None:
    cold, low = alert("ColdChainBreach", "room-1"), alert("LowStock", "gtin-1", severity="warning")
    config = routes(
        {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/never"},
        {"name": "chat", "type": "slack", "url": "http://127.0.0.1:9/never"},
        routes=[{"matchers": ['severity="critical"'], "receivers": ["ops", "chat"]}, {"receivers": ["ops"]}],
    )

    async def scenario() -> None:
        await enqueue_changes(dsn, config, fired(cold))
        await enqueue_changes(dsn, config, fired(low))
        await enqueue_changes(dsn, config, resolved(cold))
        async with api_client(dsn) as api:
            everything = (await api.get("/api/v1/deliveries")).json()
            assert [(d["receiver"], d["seq"], d["status"]) for d in everything] == [
                ("chat", 2, "resolved"), ("ops", 3, "resolved"), ("ops", 2, "firing"),
                ("chat", 1, "firing"), ("ops", 1, "firing"),
            ]  # fmt: skip
            assert all(d["state"] == "pending" for d in everything)
            about_cold = (await api.get("/api/v1/deliveries", params={"fingerprint": cold.fingerprint})).json()
            assert len(about_cold) == 4
            chat = (await api.get("/api/v1/deliveries", params={"receiver": "chat"})).json()
            assert [d["seq"] for d in chat] == [2, 1]
            page = (await api.get("/api/v1/deliveries", params={"limit": 2})).json()
            rest = (await api.get("/api/v1/deliveries", params={"before_id": page[-1]["id"]})).json()
            assert [d["id"] for d in page + rest] == [d["id"] for d in everything]
            assert (await api.get("/api/v1/deliveries", params={"state": "lost"})).status_code == 422

    asyncio.run(scenario())


def test_alert_groups_show_what_waits_and_when_it_goes(dsn: str, db: psycopg.Connection) -> None:
    cold = [alert("ColdChainBreach", f"room-{n}", site="dc-1") for n in (1, 2)]
    config = routes(
        {"name": "chat", "type": "slack", "url": "http://127.0.0.1:9/never"},
        {"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/never"},
        routes=[{"receivers": ["chat"], "group_wait": "30s", "continue": True}, {"receivers": ["ops"]}],
    )

    async def scenario() -> None:
        await enqueue_changes(dsn, config, *[fired(a) for a in cold])
        async with api_client(dsn) as api:
            groups = (await api.get("/api/v1/alert-groups")).json()
            assert [(g["receiver"], g["alerts"], g["waiting"]) for g in groups] == [("chat", 2, 2), ("ops", 2, 0)]
            chat, ops = groups
            assert chat["group_labels"] == {"alertname": "ColdChainBreach"}
            assert chat["flush_at"] is not None
            assert chat["notified_at"] is None
            assert (ops["flush_at"], ops["notified_at"] is not None) == (None, True)  # told at once
            assert [g["receiver"] for g in (await api.get("/api/v1/alert-groups", params={"due": True})).json()] == [
                "chat"
            ]
            assert (await api.get("/api/v1/alert-groups", params={"receiver": "ops"})).json() == [ops]
            # The chat message is not made yet: nothing is owed to chat in the outbox.
            assert (await api.get("/api/v1/deliveries", params={"receiver": "chat"})).json() == []

    asyncio.run(scenario())
