"""REST endpoints for inventory and conditions; the app mounts ``router`` under /api/v1.

SKUs and lots (with their items and conditions), the book imported from an ERP or WMS (JSON lines, a CSV body
or a CSV file upload), observed-against-book per location, variances, stock accuracy, cycle counts, consumption
points, and an item's experienced conditions. Refusals come from the plans (tracking/inventory_plan.py) and
become 404 (unknown object), 409 (conflicting state) or 422 (invalid input, with the field or line at fault).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from tracking.condition import (
    DEFAULT_MAX_HOLD_S,
    ItemConditions,
    LotConditions,
    plan_item_conditions,
    plan_lot_conditions,
)
from tracking.inventory import (
    ItemLot,
    LocationInventory,
    Lot,
    LotItem,
    Sku,
    StockAccuracy,
    VarianceLine,
    assign_lot,
    delete_lot,
    delete_sku,
    get_lot,
    get_sku,
    list_lots,
    list_skus,
    location_inventory,
    lot_items,
    normalise_gtin,
    refresh_consumption,
    require_location,
    stock_accuracy,
    upsert_lot,
    upsert_sku,
    variances,
)
from tracking.inventory_book import (
    BookImport,
    BookLine,
    BookRejectedError,
    ParsedBook,
    current_book,
    import_book,
    parse_csv,
    parse_json_lines,
)
from tracking.inventory_count import (
    CountStatus,
    CycleCount,
    CycleCountStart,
    finish_cycle_count,
    get_cycle_count,
    list_cycle_counts,
    start_cycle_count,
)
from tracking.inventory_plan import (
    ConflictError,
    InvalidError,
    InventoryError,
    NotFoundError,
    Plan,
    Statement,
    arun,
)

T = TypeVar("T")
router = APIRouter(tags=["inventory"])

_STATUS: Final[dict[type[InventoryError], int]] = {
    NotFoundError: status.HTTP_404_NOT_FOUND,
    ConflictError: status.HTTP_409_CONFLICT,
    InvalidError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}
_QUERY_FIELDS: Final = frozenset({"complete_for", "from_day", "to_day"})
_BOOK_LINES: Final = TypeAdapter(list[BookLine])
_CSV_TYPES: Final = frozenset({"text/csv", "application/csv", "text/plain"})
_CSV_EXAMPLE: Final = "gtin,location_id,quantity\n09506000134352,cold-room-2,340\n4006381333931,shelf-a1,12\n"


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    """The app's connection pool, opened in its lifespan (stocktrace/db.py create_pool)."""
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]
GtinPath = Annotated[str, Path(description="GTIN-8/12/13/14", examples=["09506000134352"])]


async def _run(pool: AsyncConnectionPool[Any], plan: Plan[T]) -> T:
    """Run a plan in one transaction; the one place an inventory refusal becomes an HTTP error."""
    try:
        async with pool.connection() as conn, conn.transaction():
            return await arun(conn, plan)
    except BookRejectedError as exc:
        detail = [{"loc": ["body", r.line], "msg": r.reason, "type": "book_line"} for r in exc.rejected]
        # An import without lines has no line to blame: its message says so.
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail or exc.message) from exc
    except InventoryError as exc:
        code = _STATUS.get(type(exc), status.HTTP_409_CONFLICT)
        if code == status.HTTP_422_UNPROCESSABLE_CONTENT:
            place = "query" if exc.field in _QUERY_FIELDS else "body"
            loc = [place, *exc.field.split(".")] if exc.field else [place]
            raise HTTPException(code, [{"loc": loc, "msg": exc.message, "type": "inventory"}]) from exc
        raise HTTPException(code, exc.message) from exc


def _gtin(text: str, where: str = "path") -> str:
    try:
        return normalise_gtin(text)
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": [where, "gtin"], "msg": str(exc), "type": "value_error"}]
        ) from exc


def _same(path_value: str, body_value: str, field: str) -> None:
    if path_value != body_value:
        message = f"the body's {field} {body_value!r} differs from the path's {path_value!r}"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", field], "msg": message}])


def _created(created: bool, response: Response) -> None:
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK


# ----------------------------------------------------------------------------------------------------
# SKUs


@router.get("/skus", summary="Every SKU")
async def read_skus(pool: Pool) -> list[Sku]:
    return await _run(pool, list_skus())


@router.post("/skus", status_code=status.HTTP_201_CREATED, summary="Register a SKU (409 if the GTIN is taken)")
async def create_sku(sku: Sku, pool: Pool) -> Sku:
    await _run(pool, _create_only(upsert_sku(sku), f"SKU {sku.gtin} already exists; PUT replaces it"))
    return sku


@router.get("/skus/{gtin}", summary="One SKU")
async def read_sku(gtin: GtinPath, pool: Pool) -> Sku:
    return await _run(pool, get_sku(_gtin(gtin)))


@router.put("/skus/{gtin}", summary="Create or replace a SKU (201 when created)")
async def put_sku(gtin: GtinPath, sku: Sku, pool: Pool, response: Response) -> Sku:
    _same(_gtin(gtin), sku.gtin, "gtin")
    _created(await _run(pool, upsert_sku(sku)), response)
    return sku


@router.delete("/skus/{gtin}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a SKU")
async def remove_sku(gtin: GtinPath, pool: Pool) -> None:
    await _run(pool, delete_sku(_gtin(gtin)))


def _create_only(write: Plan[bool], refusal: str) -> Plan[bool]:
    created = yield from write
    if not created:
        # Raised after the write, so the transaction rolls it back.
        raise ConflictError(refusal)
    return created


# ----------------------------------------------------------------------------------------------------
# Lots and items


class LotAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"lot": "L-88"}]})

    lot: str | None = Field(description="The lot to put the item in; null takes it out of its lot")


@router.get("/lots", summary="Lots, optionally of one GTIN")
async def read_lots(pool: Pool, gtin: Annotated[str | None, Query()] = None) -> list[Lot]:
    return await _run(pool, list_lots(None if gtin is None else _gtin(gtin, "query")))


@router.post("/lots", status_code=status.HTTP_201_CREATED, summary="Register a lot (409 if it exists)")
async def create_lot(lot: Lot, pool: Pool) -> Lot:
    await _run(pool, _create_only(upsert_lot(lot), f"lot {lot.lot!r} already exists; PUT replaces it"))
    return lot


@router.get("/lots/{lot}", summary="One lot")
async def read_lot(lot: str, pool: Pool) -> Lot:
    return await _run(pool, get_lot(lot))


@router.put("/lots/{lot}", summary="Create or replace a lot (201 when created)")
async def put_lot(lot: str, body: Lot, pool: Pool, response: Response) -> Lot:
    _same(lot, body.lot, "lot")
    _created(await _run(pool, upsert_lot(body)), response)
    return body


@router.delete("/lots/{lot}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a lot (409 with items)")
async def remove_lot(lot: str, pool: Pool) -> None:
    await _run(pool, delete_lot(lot))


@router.get("/lots/{lot}/items", summary="The items of a lot and where they are")
async def read_lot_items(lot: str, pool: Pool) -> list[LotItem]:
    return await _run(pool, lot_items(lot))


@router.get("/lots/{lot}/conditions", summary="What the lot's items went through (worst case and per item)")
async def read_lot_conditions(
    lot: str,
    pool: Pool,
    until: Annotated[AwareDatetime | None, Query(description="Now by default")] = None,
    max_hold_s: Annotated[float, Query(gt=0, le=86400)] = DEFAULT_MAX_HOLD_S,
) -> LotConditions:
    return await _run(pool, plan_lot_conditions(lot, until, max_hold_s=max_hold_s))


@router.put("/items/{epc}/lot", summary="Put an item in a lot, or take it out")
async def put_item_lot(epc: str, body: LotAssignment, pool: Pool) -> ItemLot:
    return await _run(pool, assign_lot(epc, body.lot))


@router.get("/items/{epc}/conditions", summary="The temperature and humidity an item went through")
async def read_item_conditions(
    epc: str,
    pool: Pool,
    since: Annotated[AwareDatetime | None, Query(description="Its first stay by default")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Now by default")] = None,
    max_hold_s: Annotated[
        float, Query(gt=0, le=86400, description="How long a sample holds without a newer one")
    ] = DEFAULT_MAX_HOLD_S,
) -> ItemConditions:
    """Per stay, the sensors that spoke for the location; over the period, minimum, maximum, time-weighted
    mean, mean kinetic temperature (USP <1079.2>) and the time above and below the SKU's range, cumulative and
    longest consecutive, in seconds."""
    if since is not None and until is not None and until <= since:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["query", "until"], "msg": "until must be after since"}]
        )
    return await _run(pool, plan_item_conditions(epc, since, until, max_hold_s=max_hold_s))


# ----------------------------------------------------------------------------------------------------
# Book


_BOOK_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/BookLine"}},
                "example": [{"gtin": "09506000134352", "location_id": "cold-room-2", "quantity": 340}],
            },
            "text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": "A CSV file"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post(
    "/inventory/book",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_BOOK_BODY,
    summary="Import book inventory: JSON lines, a CSV body or a CSV file upload",
    responses={422: {"description": "Nothing could be stored: every line's number and reason"}},
)
async def import_book_lines(
    request: Request,
    pool: Pool,
    source: Annotated[str | None, Query(max_length=200, description="Who sent it: erp, wms, a file name")] = None,
    as_of: Annotated[AwareDatetime | None, Query(description="When the book was true; now by default")] = None,
    complete_for: Annotated[
        str | None,
        Query(description="This import is the whole book of this location and everything inside it"),
    ] = None,
) -> BookImport:
    """Lines are checked one by one: bad GTINs (check digit), quantities that are not whole non-negative
    numbers, unknown locations and malformed CSV rows are reported with their line number and reason, and
    the rest is stored. CSV: a header naming gtin, location_id and quantity (as_of optional), separated by
    ',', ';' or tab. The response is 201 with the report, or 422 if no line could be stored."""
    now = datetime.now(UTC)
    if as_of is not None and as_of > now:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["query", "as_of"], "msg": "as_of is in the future"}]
        )
    parsed, default_source = await _read_book(request, now)
    plan = import_book(parsed, source=source or default_source, as_of=as_of or now, complete_for=complete_for)
    return await _run(pool, plan)


async def _read_book(request: Request, now: datetime) -> tuple[ParsedBook, str]:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            lines = _BOOK_LINES.validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        return parse_json_lines(lines, now), "api"
    if content_type in _CSV_TYPES:
        return _parse_csv_bytes(await request.body(), now), "csv"
    if content_type == "multipart/form-data":
        # The form closes its spooled files on exit.
        async with request.form() as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    [{"loc": ["body", "file"], "msg": "a multipart upload needs the CSV in a part named 'file'"}],
                )
            return _parse_csv_bytes(await upload.read(), now), f"csv:{upload.filename or 'upload'}"
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"send application/json, text/csv or multipart/form-data, not {content_type!r}",
    )


def _parse_csv_bytes(body: bytes, now: datetime) -> ParsedBook:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body"], "msg": f"the CSV is not UTF-8 (byte {exc.start}); export it as UTF-8"}],
        ) from exc
    try:
        return parse_csv(text, now)
    except InvalidError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body"], "msg": exc.message}]) from exc


@router.get("/inventory/book", summary="The book now, one line per GTIN and location")
async def read_book(
    pool: Pool,
    location: Annotated[str | None, Query(description="This location and everything inside it")] = None,
    gtin: Annotated[str | None, Query()] = None,
) -> list[BookLine]:
    return await _run(pool, current_book(location, None if gtin is None else _gtin(gtin, "query")))


# ----------------------------------------------------------------------------------------------------
# Observed against book


@router.get("/locations/{location_id}/inventory", summary="Observed against book per GTIN at a location")
async def read_location_inventory(location_id: str, pool: Pool) -> LocationInventory:
    """Everything inside the location counts (a zone includes its shelves), on both sides."""
    return await _run(pool, location_inventory(location_id))


@router.get("/inventory/variance", summary="Where observed stock differs from the book")
async def read_variance(
    pool: Pool,
    location: Annotated[str | None, Query(description="This location and everything inside it")] = None,
    threshold_pct: Annotated[float, Query(ge=0, description="Only |variance| of at least this %")] = 0.0,
    threshold_units: Annotated[int, Query(ge=0, description="Only |variance| of at least this many units")] = 1,
) -> list[VarianceLine]:
    """Both thresholds must be met; stock found where the book says none meets any percentage."""
    plan = variances(location, threshold_pct=threshold_pct, threshold_units=threshold_units)
    return await _run(pool, plan)


@router.get("/inventory/accuracy", summary="Stock accuracy per location")
async def read_accuracy(
    pool: Pool,
    location: Annotated[str | None, Query(description="This location and everything inside it")] = None,
) -> list[StockAccuracy]:
    """accuracy_pct = (1 - Σ|observed - book| / Σbook) * 100 over the location's GTINs, at least 0;
    record_accuracy_pct = share of GTINs whose observed equals the book."""
    return await _run(pool, stock_accuracy(location))


# ----------------------------------------------------------------------------------------------------
# Cycle counts


@router.post("/inventory/cycle-counts", status_code=status.HTTP_201_CREATED, summary="Open a cycle count")
async def create_cycle_count(start: CycleCountStart, pool: Pool) -> CycleCount:
    return await _run(pool, start_cycle_count(start))


@router.post("/inventory/cycle-counts/{count_id}/finish", summary="Close a cycle count and keep its result")
async def close_cycle_count(count_id: int, pool: Pool) -> CycleCount:
    return await _run(pool, finish_cycle_count(count_id))


@router.get("/inventory/cycle-counts", summary="Cycle counts, newest first (without per-GTIN lines)")
async def read_cycle_counts(
    pool: Pool,
    location: Annotated[str | None, Query()] = None,
    count_status: Annotated[CountStatus | None, Query(alias="status")] = None,
) -> list[CycleCount]:
    return await _run(pool, list_cycle_counts(location, count_status))


@router.get("/inventory/cycle-counts/{count_id}", summary="One cycle count with its per-GTIN result")
async def read_cycle_count(count_id: int, pool: Pool) -> CycleCount:
    return await _run(pool, get_cycle_count(count_id))


# ----------------------------------------------------------------------------------------------------
# Consumption


class ConsumptionPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "Filling line 1"}]})

    note: str | None = Field(None, max_length=500)


class ConsumptionRefresh(BaseModel):
    from_day: date
    to_day: date
    rows_written: int


@router.put(
    "/inventory/consumption-points/{location_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Mark a location (and what is inside it) as consuming the items that arrive there",
)
async def put_consumption_point(location_id: str, body: ConsumptionPoint, pool: Pool) -> None:
    await _run(pool, _mark_consumption_point(location_id, body.note))


@router.delete(
    "/inventory/consumption-points/{location_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop counting arrivals at a location as consumption",
)
async def remove_consumption_point(location_id: str, pool: Pool) -> None:
    await _run(pool, _unmark_consumption_point(location_id))


@router.post("/inventory/consumption/refresh", summary="Rebuild daily consumption for a range of days")
async def refresh_daily_consumption(
    pool: Pool,
    from_day: Annotated[date, Query(description="First local day")],
    to_day: Annotated[date, Query(description="Last local day, inclusive")],
) -> ConsumptionRefresh:
    written = await _run(pool, refresh_consumption(from_day, to_day))
    return ConsumptionRefresh(from_day=from_day, to_day=to_day, rows_written=written)


def _mark_consumption_point(location_id: str, note: str | None) -> Plan[None]:
    yield from require_location(location_id)
    yield Statement(
        "insert into consumption_points (location_id, note) values (%(id)s, %(note)s)"
        " on conflict (location_id) do update set note = excluded.note",
        {"id": location_id, "note": note},
    )


def _unmark_consumption_point(location_id: str) -> Plan[None]:
    rows = yield Statement(
        "delete from consumption_points where location_id = %(id)s returning location_id", {"id": location_id}
    )
    if not rows:
        raise NotFoundError(f"location {location_id!r} is not a consumption point")
