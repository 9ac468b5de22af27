"""EPCIS 2.0 over HTTP: the event query (GET /epcis/events, the event log as EPCIS JSON-LD, page by page) and
the capture interface (POST /epcis/capture, tracking/epcis_capture.py).

Follows the EPCIS 2.0 REST binding where it applies: a query is answered with an EPCISQueryDocument, pages are
asked for with perPage and nextPageToken, and the next page is linked from a ``Link: <...>; rel="next"`` header.
A capture answers 202 with the capture job's URL in Location (GET /epcis/capture/{id}) and the job itself; an
invalid document is refused with 400 and every problem found. Captures run while the request waits.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tracking import epcis, epcis_capture

router = APIRouter(tags=["epcis"])

MEDIA_TYPE: Final = "application/ld+json"
_PATH: Final = "/epcis/events"
# EPCIS 2.0 REST binding: every response names the standard's versions it follows.
_VERSIONS: Final = {"GS1-EPCIS-Version": "2.0.0", "GS1-CBV-Version": "2.0.0"}


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]


@router.get(
    _PATH,
    summary="Movement, aggregation, condition and inventory events as EPCIS 2.0 JSON-LD",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "An EPCISQueryDocument"}},
)
async def epcis_events(
    request: Request,
    pool: Pool,
    time_from: Annotated[AwareDatetime | None, Query(alias="from", description="eventTime at or after")] = None,
    time_to: Annotated[AwareDatetime | None, Query(alias="to", description="eventTime before")] = None,
    epc: Annotated[str | None, Query(max_length=256, description="EPC as hex or pure identity URI")] = None,
    location: Annotated[
        str | None, Query(max_length=256, description="Location id; a site id takes its locations")
    ] = None,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=1000)] = 100,
    next_page_token: Annotated[str | None, Query(alias="nextPageToken", pattern=r"^\d{1,19}$")] = None,
) -> Response:
    """The event log's entries in the order they were recorded, as EPCIS events (see tracking/epcis.py).

    Identifiers of locations and devices are URIs of this API (…/api/v1/locations/{id}); EPCs are GS1 pure
    identity URIs. Follow the ``Link: rel="next"`` header, or pass nextPageToken, for the next page.
    """
    query = epcis.EventQuery(time_from, time_to, epc, location, int(next_page_token or 0), per_page)
    async with pool.connection() as conn:
        page = await epcis.fetch_page(conn, query, _api_root(request))
    document = epcis.query_document(page.events, epcis.now())
    headers = dict(_VERSIONS)
    if page.last_seq is not None:
        headers["Link"] = f'<{request.url.include_query_params(nextPageToken=str(page.last_seq))}>; rel="next"'
    return Response(json.dumps(document), media_type=MEDIA_TYPE, headers=headers)


def _api_root(request: Request) -> str:
    """Where this API is reached, e.g. https://host/api/v1: the prefix identifiers are minted under.

    A ``public_url`` setting, when the service has one, wins over the Host the request came through, so that
    identifiers stay the same whichever name a client used.
    """
    prefix = request.url.path.removesuffix(_PATH)
    settings = getattr(request.app.state, "settings", None)
    public_url = getattr(settings, "public_url", None)
    base = str(public_url) if public_url else f"{request.url.scheme}://{request.url.netloc}"
    return base.rstrip("/") + prefix


# --- capture --------------------------------------------------------------------------------------------------

CAPTURE_LIMIT: Final = 10_000
"""Events one capture request may carry (EPCIS 2.0 GS1-EPCIS-Capture-Limit); `stocktrace epcis import` has none."""
_CAPTURE_PATH: Final = "/epcis/capture"
_CAPTURE_HEADERS: Final = {**_VERSIONS, "GS1-EPCIS-Capture-Limit": str(CAPTURE_LIMIT)}
_JSON_TYPES: Final = frozenset({"application/json", "application/ld+json"})
_EXAMPLE_DOCUMENT: Final = {
    "@context": [epcis.CONTEXT],
    "type": "EPCISDocument",
    "schemaVersion": "2.0",
    "creationDate": "2026-03-02T08:00:00Z",
    "epcisBody": {
        "eventList": [
            {
                "type": "AggregationEvent",
                "eventID": "urn:uuid:0b6fbd1c-5c54-4c62-9a2f-3e1c2d1f7a01",
                "eventTime": "2026-03-02T07:58:00Z",
                "eventTimeZoneOffset": "+01:00",
                "parentID": "urn:epc:id:sscc:4012345.0000000010",
                "childEPCs": ["urn:epc:id:sgtin:4012345.000011.1", "urn:epc:id:sgtin:4012345.000011.2"],
                "action": "ADD",
                "bizStep": "packing",
                "bizLocation": {"id": "https://stocktrace.example.com/api/v1/locations/cold-1"},
            }
        ]
    },
}
_CAPTURE_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "An EPCISDocument (EPCIS 2.0 JSON/JSON-LD), valid against GS1's EPCIS-JSON-Schema.json",
        "content": {
            media_type: {"schema": {"type": "object"}, "example": _EXAMPLE_DOCUMENT}
            for media_type in ("application/ld+json", "application/json")
        },
    }
}
_INVALID: Final = {
    "description": "The document is not valid EPCIS 2.0 (or, with rollback, an event cannot be captured): nothing"
    " was captured; `errors` lists each problem with a JSON pointer into the document",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ValidationProblem"}}},
}


class CaptureError(BaseModel):
    """An event that was not captured, and why."""

    model_config = ConfigDict(populate_by_name=True)

    event_index: int | None = Field(alias="eventIndex", description="Its position in the eventList")
    pointer: str = Field(description="JSON Pointer of the field at fault, as a URI fragment")
    detail: str


class CaptureJob(BaseModel):
    """A capture job (EPCIS 2.0 capture interface), and what became of the document's events.

    Captures run while the request waits, so a job is finished when it is returned. Events are applied
    (containment changed or confirmed), duplicates (captured before: same eventID), superseded (every child
    changed containers later than the event's time), not applied (kept, not acted on: event types other than
    AggregationEvent), or refused (listed in errors; only with GS1-Capture-Error-Behaviour: proceed).
    """

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [{
                "captureID": "5f0c8a9e-4f0e-4a59-8d51-52e0a3f3c1d7", "createdAt": "2026-03-02T08:00:01.120Z",
                "finishedAt": "2026-03-02T08:00:01.180Z", "running": False, "success": True,
                "captureErrorBehaviour": "rollback", "errors": [], "source": "api", "name": None, "events": 1,
                "applied": 1, "duplicates": 0, "superseded": 0, "notApplied": 0, "refused": 0,
            }]
        },
    )  # fmt: skip

    capture_id: str = Field(alias="captureID")
    created_at: datetime = Field(alias="createdAt")
    finished_at: datetime | None = Field(alias="finishedAt")
    running: bool
    success: bool
    capture_error_behaviour: Literal["rollback", "proceed"] = Field(alias="captureErrorBehaviour")
    errors: list[CaptureError]
    source: Literal["api", "cli"] = Field(description="POST /epcis/capture, or `stocktrace epcis import`")
    name: str | None = Field(description="The file an import read")
    events: int = Field(description="Events in the document")
    applied: int
    duplicates: int
    superseded: int
    not_applied: int = Field(alias="notApplied")
    refused: int


@router.post(
    _CAPTURE_PATH,
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=_CAPTURE_BODY,
    summary="Capture an EPCIS 2.0 document: AggregationEvents pack and unpack containers",
    response_model_by_alias=True,
    responses={
        202: {"description": "Captured; Location names the capture job"},
        400: _INVALID,
        413: {"description": f"More than {CAPTURE_LIMIT} events, or a body larger than the API accepts"},
        415: {"description": "The body is not application/ld+json or application/json"},
    },
)
async def capture(
    request: Request,
    response: Response,
    pool: Pool,
    behaviour: Annotated[
        Literal["rollback", "proceed"],
        Header(
            alias="GS1-Capture-Error-Behaviour",
            description="rollback: one bad event refuses the whole document; proceed: capture the others",
        ),
    ] = "rollback",
) -> CaptureJob:
    """The EPCIS 2.0 capture interface. The document is checked against GS1's JSON schema; then each
    AggregationEvent packs (ADD), unpacks (DELETE) or confirms (OBSERVE) its children in its parent at its
    eventTime, as POST /containers/{sscc}/contents does, and is recorded in the event log.

    Events are applied in eventTime order, and an event older than the latest change of a child's container
    leaves that child as it is. An event captured before (same eventID, or same content without one) is not
    applied again. Objects are EPC URIs (pure identity or GS1 Digital Link); readPoint and bizLocation match
    registry locations by SGLN, by id, or by their URI in this API (as GET /epcis/events writes them).
    """
    document = await _document(request)
    async with pool.connection() as conn:
        try:
            job = await epcis_capture.capture(conn, document, source="api", behaviour=behaviour)
        except epcis_capture.InvalidDocumentError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, _invalid_fields(exc)) from None
    response.headers.update(_CAPTURE_HEADERS)
    response.headers["Location"] = str(request.url_for("read_capture", capture_id=str(job.id)).path)
    return CaptureJob.model_validate(job.to_json())


async def _document(request: Request) -> Any:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send the document as application/ld+json, not {content_type}"
        )
    try:
        document = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:
        detail = f"the body is not JSON: {str(exc)[:200]}" if isinstance(exc, ValueError) else "nested too deeply"
        raise HTTPException(status.HTTP_400_BAD_REQUEST, [{"loc": ["body"], "msg": detail, "type": "json"}]) from None
    events = epcis_capture.event_count(document)
    if events > CAPTURE_LIMIT:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the document has {events} events; capture at most {CAPTURE_LIMIT} per request, or import the file"
            " with `stocktrace epcis import`",
            headers={"GS1-EPCIS-Capture-Limit": str(CAPTURE_LIMIT)},
        )
    return document


def _invalid_fields(exc: epcis_capture.InvalidDocumentError) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = [
        {"loc": ["body", *error.path], "msg": error.detail, "type": "epcis_validation"} for error in exc.errors
    ]
    if exc.total > len(exc.errors):
        fields.append({"loc": ["body"], "msg": f"and {exc.total - len(exc.errors)} more", "type": "epcis_validation"})
    return fields


@router.get(_CAPTURE_PATH + "/{capture_id}", summary="A capture job: what became of a document's events")
async def read_capture(
    capture_id: Annotated[uuid.UUID, Path(examples=["5f0c8a9e-4f0e-4a59-8d51-52e0a3f3c1d7"])], pool: Pool
) -> CaptureJob:
    async with pool.connection() as conn:
        job = await epcis_capture.find(conn, capture_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no capture {capture_id}")
    return CaptureJob.model_validate(job.to_json())


@router.get(_CAPTURE_PATH, summary="The latest capture jobs, newest first")
async def list_captures(pool: Pool, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[CaptureJob]:
    async with pool.connection() as conn:
        jobs = await epcis_capture.recent(conn, limit)
    return [CaptureJob.model_validate(job.to_json()) for job in jobs]
