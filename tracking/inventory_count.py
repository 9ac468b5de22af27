"""Cycle counts: a named read window over a location, and its result kept per GTIN.

While a count is open the readers do the counting. Finishing it compares, per GTIN, the items present in the
location (or inside it) that a reader saw since the count started with the book at that moment; items the
presence state still places there but that no reader confirmed during the window are kept apart as "unread",
the ones to look for. The alert rules judge variance only against finished counts (0210_inventory.sql).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tracking.inventory_plan import ConflictError, InvalidError, NotFoundError, Plan, Row, Statement

_CLOCK_SKEW: Final = timedelta(minutes=5)
CountStatus = Literal["open", "finished"]


class CycleCountStart(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Cold room 2, weekly", "location_id": "cold-room-2"}]},
    )

    name: str = Field(min_length=1, max_length=200)
    location_id: str = Field(min_length=1)
    started_at: AwareDatetime | None = Field(None, description="When the window opened; now by default")


class CycleCountLine(BaseModel):
    gtin: str
    observed_units: int = Field(description="Present and read during the window")
    book_units: int
    unread_units: int = Field(description="Placed here by the presence state but not read during the window")
    variance_units: int
    variance_pct: float | None


class CycleCount(BaseModel):
    id: int
    name: str
    location_id: str
    started_at: datetime
    ended_at: datetime | None
    status: CountStatus
    records: int
    records_exact: int
    observed_units: int
    book_units: int
    unread_units: int
    accuracy_pct: float | None = Field(description="(1 - sum |observed - book| / sum book) * 100, at least 0")
    results: list[CycleCountLine] = Field(default_factory=list, description="Per GTIN, once finished")


def start_cycle_count(start: CycleCountStart, now: datetime | None = None) -> Plan[CycleCount]:
    now = now or datetime.now(UTC)
    started_at = start.started_at or now
    if started_at > now + _CLOCK_SKEW:
        raise InvalidError(f"started_at {started_at.isoformat()} is in the future", field="started_at")
    rows = yield Statement("select 1 from locations where id = %(id)s", {"id": start.location_id})
    if not rows:
        raise InvalidError(f"no location {start.location_id!r}", field="location_id")
    rows = yield Statement(
        "insert into cycle_counts (name, location_id, started_at) values (%(name)s, %(loc)s, %(at)s) returning id",
        {"name": start.name, "loc": start.location_id, "at": started_at},
    )
    return (yield from get_cycle_count(int(rows[0]["id"])))


def finish_cycle_count(count_id: int) -> Plan[CycleCount]:
    """Close the window now and keep the result; a count finishes once."""
    rows = yield Statement("select status from cycle_counts where id = %(id)s for update", {"id": count_id})
    if not rows:
        raise NotFoundError(f"no cycle count {count_id}")
    if rows[0]["status"] != "open":
        raise ConflictError(f"cycle count {count_id} is already finished")
    yield Statement(
        """
        with counted as (select location_id, started_at from cycle_counts where id = %(id)s),
        subtree as (select location_id from location_subtree((select location_id from counted))),
        present as (
            select i.gtin,
                   count(*) filter (where s.last_seen_at >= c.started_at) as observed,
                   count(*) filter (where s.last_seen_at < c.started_at)  as unread
            from item_state s join items i on i.epc = s.epc, counted c
            where s.location_id in (select location_id from subtree)
              and s.status = 'present' and i.gtin is not null
            group by i.gtin
        ),
        book as (
            select b.gtin, sum(b.quantity) as units
            from book_current((select location_id from counted)) b
            group by b.gtin
        )
        insert into cycle_count_results (count_id, gtin, observed_units, book_units, unread_units)
        select %(id)s, coalesce(p.gtin, b.gtin), coalesce(p.observed, 0), coalesce(b.units, 0), coalesce(p.unread, 0)
        from present p full join book b on b.gtin = p.gtin
        """,
        {"id": count_id},
    )
    yield Statement(
        "update cycle_counts set status = 'finished', ended_at = greatest(now(), started_at) where id = %(id)s",
        {"id": count_id},
    )
    return (yield from get_cycle_count(count_id))


def get_cycle_count(count_id: int) -> Plan[CycleCount]:
    rows = yield Statement("select * from cycle_count_summary where id = %(id)s", {"id": count_id})
    if not rows:
        raise NotFoundError(f"no cycle count {count_id}")
    lines = yield Statement(
        "select gtin, observed_units, book_units, unread_units from cycle_count_results"
        " where count_id = %(id)s order by gtin",
        {"id": count_id},
    )
    return CycleCount.model_validate({**rows[0], "results": [_line(line) for line in lines]})


def list_cycle_counts(location_id: str | None = None, status: CountStatus | None = None) -> Plan[list[CycleCount]]:
    """Counts, newest first, without their per-GTIN lines."""
    rows = yield Statement(
        """
        select * from cycle_count_summary
        where (%(loc)s::text is null or location_id = %(loc)s) and (%(status)s::text is null or status = %(status)s)
        order by started_at desc, id desc
        """,
        {"loc": location_id, "status": status},
    )
    return [CycleCount.model_validate(row) for row in rows]


def _line(row: Row) -> CycleCountLine:
    observed, book = int(row["observed_units"]), int(row["book_units"])
    return CycleCountLine(
        gtin=row["gtin"],
        observed_units=observed,
        book_units=book,
        unread_units=row["unread_units"],
        variance_units=observed - book,
        variance_pct=100.0 * (observed - book) / book if book else None,
    )
