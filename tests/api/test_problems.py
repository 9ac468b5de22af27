"""Every error is RFC 9457 problem details; bodies over the limit are refused before they are read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import Message

from stocktrace.app import create_app
from stocktrace.problems import MEDIA_TYPE, BodyLimit, ErrorBoundary
from stocktrace.settings import load_settings

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "request_id"}


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_FIELDS
    assert (body["type"], body["status"]) == ("about:blank", status)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_unknown_path_and_method(client, admin) -> None:
    missing = _problem(client.get("/api/v1/nothing-here", headers=admin), 404)
    assert missing["title"] == "Not Found"
    assert missing["instance"] == "/api/v1/nothing-here"
    not_allowed = client.patch("/api/v1/sites", headers=admin)
    assert _problem(not_allowed, 405)["detail"] == "PATCH is not allowed on /api/v1/sites"
    assert "GET" in not_allowed.headers["allow"]


def test_a_refusal_from_a_stage_keeps_its_message(client, admin) -> None:
    body = _problem(client.get("/api/v1/sites/dc-9", headers=admin), 404)
    assert "dc-9" in body["detail"]


def test_invalid_input_lists_every_invalid_field(client, admin) -> None:
    response = client.get("/api/v1/dead-letters", params={"limit": 0, "before_id": "x"}, headers=admin)
    body = _problem(response, 422)
    assert body["title"] == "Unprocessable Content"
    assert sorted(tuple(error["loc"]) for error in body["errors"]) == [("query", "before_id"), ("query", "limit")]
    assert body["detail"].startswith("2 invalid fields: ")
    assert "input" not in body["errors"][0], "the offending input is not echoed back"


def test_an_invalid_body_field_has_a_json_pointer(client, admin) -> None:
    site = {"id": "dc-1", "timezone": "Europe/Berlin", "temperature_min_c": "cold"}
    body = _problem(client.post("/api/v1/sites", json=site, headers=admin), 422)
    [error] = [e for e in body["errors"] if e["loc"][-1] == "temperature_min_c"]
    assert error["pointer"] == "#/temperature_min_c"


def test_a_stage_routers_field_errors_become_the_errors_list(client, admin) -> None:
    site = {"id": "dc-2"}
    body = _problem(client.put("/api/v1/sites/dc-1", json=site, headers=admin), 422)
    assert body["errors"] == [
        {"loc": ["body", "id"], "detail": "the body's id 'dc-2' differs from the path's 'dc-1'", "pointer": "#/id"}
    ]


def test_malformed_json_is_a_validation_problem(client, admin) -> None:
    response = client.post("/api/v1/sites", content=b'{"id": ', headers={**admin, "content-type": "application/json"})
    assert _problem(response, 422)["errors"][0]["type"] == "json_invalid"


@pytest.fixture
def small_client(dsn: str, db) -> Iterator[TestClient]:
    """The API with STOCKTRACE_API_MAX_BODY_BYTES=1024, the least it takes."""
    with TestClient(create_app(load_settings(database_url=dsn, api_max_body_bytes=1024))) as test_client:
        yield test_client


def test_a_declared_oversized_body_is_refused_before_it_is_read(small_client, admin) -> None:

    def never_read() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    response = small_client.post(
        "/api/v1/inventory/book",
        content=never_read(),
        headers={**admin, "content-type": "text/csv", "content-length": "1025"},
    )
    body = _problem(response, 413)
    assert body["detail"] == "the request body is larger than 1024 bytes, the most this API accepts"


def test_a_body_within_the_limit_is_taken(small_client, admin) -> None:
    response = small_client.post("/api/v1/sites", json={"id": "dc-1"}, headers=admin)
    assert response.status_code == 201, response.text


def test_an_undeclared_oversized_body_is_cut_off_as_it_arrives() -> None:
    """A chunked body (no Content-Length) is read only up to the limit, however much more the client sends."""
    read = 0

    async def reader(scope, receive, send) -> None:
        nonlocal read
        await Request(scope, receive).body()
        read = -1  # never reached: reading past the limit raises
        await PlainTextResponse("stored")(scope, receive, send)

    async def drive() -> tuple[list[Message], int]:
        nonlocal read
        sent: list[Message] = []
        offered = 0

        async def receive() -> Message:
            nonlocal offered
            offered += 100
            return {"type": "http.request", "body": b"0" * 100, "more_body": offered < 100_000}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/v1/inventory/book", "headers": []}
        await ErrorBoundary(BodyLimit(reader, max_bytes=1000))(scope, receive, send)
        return sent, offered

    sent, offered = asyncio.run(drive())
    assert sent[0]["status"] == 413
    assert dict(sent[0]["headers"])[b"content-type"] == MEDIA_TYPE.encode()
    assert offered == 1100, "nothing was read after the limit was passed"
    assert read == 0


def test_an_unexpected_error_is_a_500_that_leaks_nothing_and_is_logged_with_the_request_id(
    app, db, admin, logged
) -> None:
    async def boom() -> None:
        raise RuntimeError("connection string postgresql://app:hunter2@db/x went away")

    app.add_api_route("/api/v1/boom", boom)
    with TestClient(app) as client:
        response = client.get("/api/v1/boom", headers=admin)
    body = _problem(response, 500)
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["request_id"] in body["detail"]
    [entry] = [e for e in logged.entries() if e["level"] == "ERROR"]
    assert entry["request_id"] == body["request_id"]
    assert entry["message"] == "unexpected error answering GET /api/v1/boom"
    assert "RuntimeError" in entry["exception"]
    assert "hunter2" not in entry["exception"], "secrets are redacted from tracebacks too"


def test_a_lost_database_connection_is_a_503_to_retry(app, db, admin) -> None:
    async def lose_connection(request: Request) -> None:
        async with request.app.state.pool.connection() as conn:
            await conn.execute("select pg_terminate_backend(pg_backend_pid())")

    app.add_api_route("/api/v1/lose-connection", lose_connection)
    with TestClient(app) as client:
        response = client.get("/api/v1/lose-connection", headers=admin)
        body = _problem(response, 503)
        assert response.headers["retry-after"] == "5"
        assert body["detail"] == "the database is unavailable or overloaded; retry shortly"
        assert client.get("/api/v1/sites", headers=admin).status_code == 200, "the pool replaced the connection"
