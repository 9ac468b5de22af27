"""The EPCIS 2.0 event query over HTTP: GET /epcis/events, the event log as EPCIS JSON-LD, page by page.

Follows the EPCIS 2.0 REST binding where it applies: the answer is an EPCISQueryDocument, pages are asked for
with perPage and nextPageToken, and the next page is linked from a ``Link: <...>; rel="next"`` header.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime

from tracking import epcis

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
