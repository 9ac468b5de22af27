"""Errors as RFC 9457 problem details (application/problem+json), whatever raised them.

Every error response of the API has ``type``, ``title``, ``status``, ``detail`` and ``instance`` (RFC 9457 §3.1),
plus ``request_id`` to quote when reporting it. ``type`` is ``about:blank`` (§4.2.1): the HTTP status says what
kind of problem it is, and ``title`` is its reason phrase. Invalid input (422) lists each invalid field in
``errors``, as §3 of the RFC shows: where it is (``loc``, and a JSON ``pointer`` into the body) and what is wrong.

Stage routers raise ``HTTPException`` with a message, or with a list of ``{"loc": [...], "msg": ...}`` for
invalid fields; both become problems here, so the routers need not know this format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stocktrace.logs import REQUEST_ID

log = logging.getLogger(__name__)

MEDIA_TYPE: Final = "application/problem+json"


class InvalidField(BaseModel):
    """One invalid part of the request."""

    loc: list[str | int] = Field(
        description="Where: 'body', 'query', 'path' or 'header', then the field's path", examples=[["body", "gtin"]]
    )
    detail: str = Field(description="What is wrong with it", examples=["the GTIN's check digit is wrong"])
    type: str | None = Field(None, description="A machine-readable kind of error", examples=["value_error"])
    pointer: str | None = Field(
        None, description="A JSON Pointer (RFC 6901) to the field in the body, as a URI fragment", examples=["#/gtin"]
    )


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "location 'cold-room-9' is not in the registry",
                    "instance": "/api/v1/locations/cold-room-9",
                    "request_id": "3f1b0c6a9e2d4d7b8a5e0c1f2a3b4c5d",
                }
            ]
        },
    )

    type: str = Field("about:blank", description="A URI reference naming the kind of problem (RFC 9457 §3.1.1)")
    title: str = Field(description="The HTTP status's reason phrase")
    status: int = Field(ge=100, le=599, description="The HTTP status code, repeated")
    detail: str = Field(description="What went wrong with this request, for a person to read")
    instance: str = Field(description="The path of the request that failed")
    request_id: str | None = Field(None, description="Quote it when reporting the problem; it is in the server's logs")


class ValidationProblem(Problem):
    """Invalid input: every invalid field, each with what is wrong."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "1 invalid field: body.quantity: Input should be greater than or equal to 0",
                    "instance": "/api/v1/inventory/book",
                    "request_id": "3f1b0c6a9e2d4d7b8a5e0c1f2a3b4c5d",
                    "errors": [
                        {
                            "loc": ["body", 0, "quantity"],
                            "detail": "Input should be greater than or equal to 0",
                            "type": "greater_than_equal",
                            "pointer": "#/0/quantity",
                        }
                    ],
                }
            ]
        }
    )

    errors: list[InvalidField] = Field(description="Each invalid field")


# RFC 9110 §15 renamed these; Python before 3.13 still has the RFC 7231 phrases.
_RFC_9110_PHRASES: Final = {413: "Content Too Large", 422: "Unprocessable Content"}


def title_of(status: int) -> str:
    if status in _RFC_9110_PHRASES:
        return _RFC_9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    detail: str,
    instance: str,
    *,
    errors: Sequence[InvalidField] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title_of(status),
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": REQUEST_ID.get(),
    }
    if errors or status == 422:
        # A 422 always lists its invalid fields (ValidationProblem), even when none can be named.
        body["errors"] = [error.model_dump(exclude_none=True) for error in errors]
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE)


def _pointer(loc: Sequence[str | int]) -> str | None:
    if not loc or loc[0] != "body":
        return None
    # RFC 6901 §3: '~' and '/' inside a reference token are escaped as ~0 and ~1.
    tokens = (str(part).replace("~", "~0").replace("/", "~1") for part in loc[1:])
    return "#/" + "/".join(tokens)


def invalid_field(error: Mapping[str, Any]) -> InvalidField:
    """One entry of a pydantic/FastAPI error list (or a stage router's ``{"loc", "msg"}``) as an InvalidField.

    The offending input is not repeated back: it may be large, or something that should not be echoed.
    """
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    message = str(error.get("msg") or error.get("detail") or "invalid")
    kind = error.get("type")
    return InvalidField(loc=loc, detail=message, type=str(kind) if kind else None, pointer=_pointer(loc))


def _summary(errors: Sequence[InvalidField]) -> str:
    shown = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.detail}" for e in errors[:3])
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    noun = "field" if len(errors) == 1 else "fields"
    return f"{len(errors)} invalid {noun}: {shown}{more}"


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [invalid_field(error) for error in exc.errors()]
    return problem(422, _summary(errors), request.url.path, errors=errors)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if isinstance(detail, list) and detail and all(isinstance(item, Mapping) for item in detail):
        errors = [invalid_field(item) for item in detail]
        return problem(exc.status_code, _summary(errors), request.url.path, errors=errors, headers=exc.headers)
    if not isinstance(detail, str) or detail == title_of(exc.status_code):
        detail = _generic_detail(exc.status_code, request)
    return problem(exc.status_code, detail, request.url.path, headers=exc.headers)


def _generic_detail(status: int, request: Request) -> str:
    if status == 404:
        return f"nothing at {request.url.path}; the API's paths are listed at /docs"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return title_of(status)


async def on_data_error(request: Request, exc: Exception) -> Response:
    """A value the database cannot store (SQLSTATE class 22: out of range, a NUL in text): the input is wrong.

    The value passed the request's schema, so the route could check it better: logged for that reason.
    """
    assert isinstance(exc, psycopg.DataError)
    log.warning("a value of %s %s could not be stored: %s", request.method, request.url.path, exc)
    reason = (exc.diag.message_primary or str(exc)).strip()
    return problem(422, f"a value in the request cannot be stored: {reason[:200]}", request.url.path)


async def on_integrity_error(request: Request, exc: Exception) -> Response:
    """A constraint refused the change (SQLSTATE class 23): it conflicts with what is stored.

    The database's message names tables and constraints, so the client gets a plain sentence and the log the
    rest.
    """
    assert isinstance(exc, psycopg.IntegrityError)
    log.warning("%s %s conflicts with stored data: %s", request.method, request.url.path, exc)
    detail = "the change conflicts with what is stored: it refers to something missing, or repeats a unique value"
    return problem(409, detail, request.url.path)


async def on_database_unavailable(request: Request, exc: Exception) -> Response:
    """No connection in time, a lost connection, a cancelled statement: the client may retry (503)."""
    assert isinstance(exc, psycopg.OperationalError)
    log.error("the database failed %s %s: %s", request.method, request.url.path, exc)
    detail = "the database is unavailable or overloaded; retry shortly"
    return problem(503, detail, request.url.path, headers={"Retry-After": "5"})


def install(app: FastAPI) -> None:
    """Answer HTTP errors, invalid requests and values the database refuses with problem details."""
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(psycopg.DataError, on_data_error)
    app.add_exception_handler(psycopg.IntegrityError, on_integrity_error)
    app.add_exception_handler(psycopg.OperationalError, on_database_unavailable)


class ErrorBoundary:
    """ASGI middleware: an unexpected exception becomes a 500 problem, logged here once with its request id.

    The response says nothing about the cause (no exception text, no traceback): those are in the log, found
    by the request id the client is given.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except HTTPException as exc:
            # Raised outside the router (by a middleware reading the body): answered as the router would.
            if started:
                raise
            response = problem(exc.status_code, str(exc.detail), scope["path"], headers=exc.headers)
            await response(scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if started:
                raise
            detail = f"an unexpected error occurred; the server's log has it under request id {REQUEST_ID.get()}"
            await problem(500, detail, scope["path"])(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with 413, before reading them.

    A declared Content-Length over the limit is refused at once; a body without one (chunked) is counted as it
    is read, and refused as soon as it passes the limit, so at most ``max_bytes`` are ever held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await problem(400, "the Content-Length header is not a number", scope["path"])(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes, the most this API accepts"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, so the server need not read the rest of a body it will never use.
        await problem(413, self._detail(), scope["path"], headers={"Connection": "close"})(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length, None without one, -1 if it is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None
