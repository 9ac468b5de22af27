"""Inventory: SKUs and lots, observed stock against the books, stock accuracy, consumption.

Observed stock is what the presence resolver says is present (item_state); the book is what the ERP or WMS
last said (tracking/inventory_book.py imports it). Both are rolled up the location hierarchy the same way, so
a zone counts its shelves. The SQL views behind these plans (stocktrace/migrations/0210_inventory.sql,
0211_consumption.sql) are the same ones the dashboards and the alert rules query.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Final, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from tracking.inventory_plan import ConflictError, InvalidError, NotFoundError, Plan, Row, Statement

# ----------------------------------------------------------------------------------------------------
# GTINs

_GTIN_LENGTHS: Final = frozenset({8, 12, 13, 14})


def gs1_check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit of `digits` (the number without its check digit), GS1 General Specifications
    §7.9.1: weights 3 and 1 alternate from the rightmost digit."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def normalise_gtin(text: str) -> str:
    """A GTIN-8, -12, -13 or -14 as 14 digits (left-padded with zeros), its check digit verified."""
    gtin = text.strip()
    if not gtin.isascii() or not gtin.isdigit() or len(gtin) not in _GTIN_LENGTHS:
        raise ValueError(f"{text!r} is not a GTIN: expected 8, 12, 13 or 14 digits")
    expected = gs1_check_digit(gtin[:-1])
    if int(gtin[-1]) != expected:
        raise ValueError(f"{text!r} is not a GTIN: its check digit should be {expected}")
    return gtin.zfill(14)


Gtin = Annotated[
    str,
    AfterValidator(normalise_gtin),
    Field(description="GTIN-8/12/13/14; stored as 14 digits", examples=["09506000134352"]),
]

# ----------------------------------------------------------------------------------------------------
# Models


class Sku(BaseModel):
    """A product, by GTIN, with the conditions it must be kept in and what stocking it costs."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "gtin": "09506000134352",
                    "name": "Insulin glargine 100 U/ml, 5 pens",
                    "temperature_min_c": 2.0,
                    "temperature_max_c": 8.0,
                    "lead_time_days": 3,
                    "unit_cost": 42.5,
                    "order_cost": 80.0,
                    "holding_cost_rate": 0.25,
                }
            ]
        },
    )

    gtin: Gtin
    name: str = Field(min_length=1, max_length=200)
    temperature_min_c: float | None = Field(None, ge=-273.15)
    temperature_max_c: float | None = Field(None, ge=-273.15)
    humidity_min_pct: float | None = Field(None, ge=0, le=100)
    humidity_max_pct: float | None = Field(None, ge=0, le=100)
    lead_time_days: float | None = Field(None, ge=0, description="Days from order to delivery")
    unit_cost: float | None = Field(None, ge=0)
    order_cost: float | None = Field(None, ge=0, description="Cost of placing one order")
    holding_cost_rate: float | None = Field(None, ge=0, description="Holding cost per year, as a fraction of unit cost")
    reorder_minimum_units: int | None = Field(
        None, ge=0, description="A fixed reorder point that overrides the one computed from consumption"
    )

    @model_validator(mode="after")
    def _ranges_ordered(self) -> Self:
        for low, high in (("temperature_min_c", "temperature_max_c"), ("humidity_min_pct", "humidity_max_pct")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is above {high} ({hi})")
        return self


class Lot(BaseModel):
    """A production lot (GS1 AI 10) of one GTIN."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"lot": "L-88", "gtin": "09506000134352", "expires_on": "2027-03-31", "produced_at": None}]
        },
    )

    lot: str = Field(min_length=1, max_length=64, pattern=r"^[^\s/]+$", description="The lot number")
    gtin: Gtin
    expires_on: date | None = None
    produced_at: AwareDatetime | None = None


class ItemLot(BaseModel):
    epc: str
    gtin: str | None
    lot: str | None


class LotItem(BaseModel):
    """An item of a lot and where it is now."""

    epc: str
    status: str | None = Field(description="present, departed, in_transit; null before the first read")
    location_id: str | None
    since: datetime | None


class StockLine(BaseModel):
    """One GTIN at one location: what the readers see against the book."""

    gtin: str
    name: str | None = Field(description="The SKU's name, when the GTIN is registered")
    observed_units: int
    book_units: int
    variance_units: int = Field(description="observed - book")
    variance_pct: float | None = Field(description="(observed - book) / book * 100; null when the book says 0")
    book_as_of: datetime | None


class LocationInventory(BaseModel):
    location_id: str
    observed_units: int
    book_units: int
    accuracy_pct: float | None = Field(description="(1 - sum |observed - book| / sum book) * 100, at least 0")
    record_accuracy_pct: float | None = Field(description="Share of GTIN lines where observed equals book, %")
    lines: list[StockLine]


class VarianceLine(BaseModel):
    location_id: str
    site_id: str
    gtin: str
    observed_units: int
    book_units: int
    variance_units: int
    variance_pct: float | None
    book_as_of: datetime | None


class StockAccuracy(BaseModel):
    location_id: str
    site_id: str
    records: int
    records_exact: int
    observed_units: int
    book_units: int
    absolute_variance_units: int
    accuracy_pct: float | None
    record_accuracy_pct: float


# ----------------------------------------------------------------------------------------------------
# SKUs

_SKU_COLUMNS: Final = tuple(Sku.model_fields)


def list_skus() -> Plan[list[Sku]]:
    rows = yield Statement("select * from skus order by gtin")
    return [_sku(row) for row in rows]


def get_sku(gtin: str) -> Plan[Sku]:
    rows = yield Statement("select * from skus where gtin = %(gtin)s", {"gtin": gtin})
    if not rows:
        raise NotFoundError(f"no SKU with GTIN {gtin!r}")
    return _sku(rows[0])


def upsert_sku(sku: Sku) -> Plan[bool]:
    """Create or replace a SKU; True when it was created."""
    rows = yield Statement(
        """
        insert into skus (gtin, name, temperature_min_c, temperature_max_c, humidity_min_pct, humidity_max_pct,
                          lead_time_days, unit_cost, order_cost, holding_cost_rate, reorder_minimum_units)
        values (%(gtin)s, %(name)s, %(temperature_min_c)s, %(temperature_max_c)s, %(humidity_min_pct)s,
                %(humidity_max_pct)s, %(lead_time_days)s, %(unit_cost)s, %(order_cost)s, %(holding_cost_rate)s,
                %(reorder_minimum_units)s)
        on conflict (gtin) do update set
            name = excluded.name, temperature_min_c = excluded.temperature_min_c,
            temperature_max_c = excluded.temperature_max_c, humidity_min_pct = excluded.humidity_min_pct,
            humidity_max_pct = excluded.humidity_max_pct, lead_time_days = excluded.lead_time_days,
            unit_cost = excluded.unit_cost, order_cost = excluded.order_cost,
            holding_cost_rate = excluded.holding_cost_rate, reorder_minimum_units = excluded.reorder_minimum_units,
            updated_at = now()
        returning (xmax = 0) as created
        """,
        sku.model_dump(),
    )
    return bool(rows[0]["created"])


def delete_sku(gtin: str) -> Plan[None]:
    rows = yield Statement("delete from skus where gtin = %(gtin)s returning gtin", {"gtin": gtin})
    if not rows:
        raise NotFoundError(f"no SKU with GTIN {gtin!r}")


def _sku(row: Row) -> Sku:
    return Sku.model_validate({name: row[name] for name in _SKU_COLUMNS})


# ----------------------------------------------------------------------------------------------------
# Lots and the items in them


def list_lots(gtin: str | None = None) -> Plan[list[Lot]]:
    rows = yield Statement(
        "select lot, gtin, expires_on, produced_at from lots"
        " where %(gtin)s::text is null or gtin = %(gtin)s order by lot",
        {"gtin": gtin},
    )
    return [Lot.model_validate(row) for row in rows]


def get_lot(lot: str) -> Plan[Lot]:
    rows = yield Statement("select lot, gtin, expires_on, produced_at from lots where lot = %(lot)s", {"lot": lot})
    if not rows:
        raise NotFoundError(f"no lot {lot!r}")
    return Lot.model_validate(rows[0])


def upsert_lot(lot: Lot) -> Plan[bool]:
    """Create or replace a lot; True when it was created. Its GTIN cannot change while items are assigned."""
    rows = yield Statement(
        "select gtin from items where lot = %(lot)s and gtin is distinct from %(gtin)s limit 1",
        {"lot": lot.lot, "gtin": lot.gtin},
    )
    if rows:
        raise ConflictError(f"lot {lot.lot!r} has items of GTIN {rows[0]['gtin']}; it cannot become {lot.gtin}")
    rows = yield Statement(
        """
        insert into lots (lot, gtin, expires_on, produced_at)
        values (%(lot)s, %(gtin)s, %(expires_on)s, %(produced_at)s)
        on conflict (lot) do update set gtin = excluded.gtin, expires_on = excluded.expires_on,
            produced_at = excluded.produced_at, updated_at = now()
        returning (xmax = 0) as created
        """,
        lot.model_dump(),
    )
    return bool(rows[0]["created"])


def delete_lot(lot: str) -> Plan[None]:
    yield from get_lot(lot)
    rows = yield Statement("select count(*) as n from items where lot = %(lot)s", {"lot": lot})
    if rows[0]["n"]:
        raise ConflictError(f"lot {lot!r} still has {rows[0]['n']} items; assign them elsewhere first")
    yield Statement("delete from lots where lot = %(lot)s", {"lot": lot})


def lot_items(lot: str) -> Plan[list[LotItem]]:
    yield from get_lot(lot)
    rows = yield Statement(
        """
        select i.epc, s.status, s.location_id, s.since
        from items i left join item_state s on s.epc = i.epc
        where i.lot = %(lot)s order by i.epc
        """,
        {"lot": lot},
    )
    return [LotItem.model_validate(row) for row in rows]


def assign_lot(epc: str, lot: str | None) -> Plan[ItemLot]:
    """Put an item in a lot (or take it out with None); the lot must be of the item's GTIN."""
    items = yield Statement("select epc, gtin from items where epc = %(epc)s for update", {"epc": epc})
    if not items:
        raise NotFoundError(f"no item with EPC {epc!r}")
    if lot is not None:
        stored = yield from get_lot(lot)
        if items[0]["gtin"] != stored.gtin:
            raise InvalidError(
                f"lot {lot!r} is of GTIN {stored.gtin}, item {epc!r} of GTIN {items[0]['gtin']}", field="lot"
            )
    yield Statement("update items set lot = %(lot)s where epc = %(epc)s", {"lot": lot, "epc": epc})
    return ItemLot(epc=epc, gtin=items[0]["gtin"], lot=lot)


# ----------------------------------------------------------------------------------------------------
# Observed against book


def require_location(location_id: str) -> Plan[None]:
    rows = yield Statement("select 1 from locations where id = %(id)s", {"id": location_id})
    if not rows:
        raise NotFoundError(f"no location {location_id!r}")


def location_inventory(location_id: str) -> Plan[LocationInventory]:
    """Observed and book per GTIN at a location, everything inside it included."""
    yield from require_location(location_id)
    rows = yield Statement(
        """
        select v.gtin, k.name, v.observed_units, v.book_units, v.book_as_of
        from location_inventory(%(id)s) v left join skus k on k.gtin = v.gtin
        order by v.gtin
        """,
        {"id": location_id},
    )
    lines = [_stock_line(row) for row in rows]
    book = sum(line.book_units for line in lines)
    absolute = sum(abs(line.variance_units) for line in lines)
    return LocationInventory(
        location_id=location_id,
        observed_units=sum(line.observed_units for line in lines),
        book_units=book,
        accuracy_pct=max(0.0, 1.0 - absolute / book) * 100.0 if book else None,
        record_accuracy_pct=(100.0 * sum(line.variance_units == 0 for line in lines) / len(lines) if lines else None),
        lines=lines,
    )


def _stock_line(row: Row) -> StockLine:
    observed, book = int(row["observed_units"]), int(row["book_units"])
    return StockLine(
        gtin=row["gtin"],
        name=row["name"],
        observed_units=observed,
        book_units=book,
        variance_units=observed - book,
        variance_pct=100.0 * (observed - book) / book if book else None,
        book_as_of=row["book_as_of"],
    )


def variances(
    location_id: str | None = None, *, threshold_pct: float = 0.0, threshold_units: int = 1
) -> Plan[list[VarianceLine]]:
    """Variances at `location_id` and every location inside it (all locations when None), largest first.

    A line is listed when |variance_units| >= threshold_units and |variance_pct| >= threshold_pct, both; stock
    found where the book says none has no percentage and passes any percentage threshold.
    """
    if location_id is not None:
        yield from require_location(location_id)
    rows = yield Statement(
        """
        select v.* from inventory_variance v
        where (%(loc)s::text is null or v.location_id in (select location_id from location_subtree(%(loc)s)))
          and abs(v.variance_units) >= %(units)s
          and (v.variance_pct is null or abs(v.variance_pct) >= %(pct)s)
        order by abs(v.variance_units) desc, v.location_id, v.gtin
        """,
        {"loc": location_id, "units": threshold_units, "pct": threshold_pct},
    )
    return [VarianceLine.model_validate(row) for row in rows]


def stock_accuracy(location_id: str | None = None) -> Plan[list[StockAccuracy]]:
    """Stock accuracy of `location_id` and every location inside it (all locations when None)."""
    if location_id is not None:
        yield from require_location(location_id)
    rows = yield Statement(
        """
        select a.* from stock_accuracy a
        where %(loc)s::text is null or a.location_id in (select location_id from location_subtree(%(loc)s))
        order by a.site_id, a.location_id
        """,
        {"loc": location_id},
    )
    return [StockAccuracy.model_validate(row) for row in rows]


# ----------------------------------------------------------------------------------------------------
# Consumption


def refresh_consumption(from_day: date, to_day: date) -> Plan[int]:
    """Rebuild consumption_daily for the local days from_day..to_day (inclusive); returns the rows written."""
    if to_day < from_day:
        raise InvalidError(f"to_day {to_day} is before from_day {from_day}", field="to_day")
    rows = yield Statement("select refresh_consumption(%(from)s, %(to)s) as written", {"from": from_day, "to": to_day})
    return int(rows[0]["written"])
