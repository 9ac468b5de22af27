"""Book inventory imports: what the ERP or WMS says is where, as JSON lines or a CSV file.

Each line is checked on its own and the import keeps the good ones, reporting the others with their line
number (the CSV file's physical line, header = line 1; the JSON list's position, first = 1) and the reason.
Two lines for the same GTIN and location in one import are added together: ERPs that keep stock per lot
export one line per lot. Every import is kept; see 0210_inventory.sql for how the current book is chosen.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tracking.inventory import normalise_gtin
from tracking.inventory_plan import InvalidError, Plan, Statement

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

# A book "as of" later than this ahead of the server's clock is a wrong clock or a wrong field, and it would
# hide every later import of the same line.
_CLOCK_SKEW: Final = timedelta(minutes=5)
_COLUMNS: Final = {
    "gtin": "gtin",
    "location_id": "location_id",
    "location": "location_id",
    "quantity": "quantity",
    "qty": "quantity",
    "as_of": "as_of",
}
_REQUIRED: Final = ("gtin", "location_id", "quantity")


class BookLine(BaseModel):
    """One line of the book: this many units of a GTIN at a location."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"gtin": "09506000134352", "location_id": "cold-room-2", "quantity": 340}]},
    )

    gtin: str = Field(min_length=1, max_length=20, description="GTIN-8/12/13/14")
    location_id: str = Field(min_length=1, max_length=200)
    quantity: int = Field(ge=0, description="Units on the book; 0 clears the line")
    as_of: AwareDatetime | None = Field(None, description="When the ERP's figure was true; the import's by default")


class Rejection(BaseModel):
    line: int = Field(description="CSV: the file's line (header = 1); JSON: the position in the list (first = 1)")
    reason: str


class BookImport(BaseModel):
    """What an import stored and what it refused."""

    import_id: int
    source: str
    as_of: datetime
    complete_for: str | None
    accepted: int = Field(description="Lines stored (before adding up lines of the same GTIN and location)")
    rejected: list[Rejection]


class BookRejectedError(InvalidError):
    """No line of the import could be stored; `rejected` says why for each."""

    def __init__(self, rejected: Sequence[Rejection]) -> None:
        super().__init__(f"no line of the import could be stored ({len(rejected)} rejected)")
        self.rejected = list(rejected)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A line that passed the checks that need no database."""

    line: int
    gtin: str
    location_id: str
    quantity: int
    as_of: datetime | None


@dataclass(frozen=True, slots=True)
class ParsedBook:
    candidates: list[Candidate]
    rejected: list[Rejection]


# ----------------------------------------------------------------------------------------------------
# Parsing


def parse_json_lines(lines: Iterable[BookLine], now: datetime) -> ParsedBook:
    results = [
        _candidate(n, line.gtin, line.location_id, str(line.quantity), line.as_of, now)
        for n, line in enumerate(lines, start=1)
    ]
    return _split(results)


def parse_csv(text: str, now: datetime) -> ParsedBook:
    """Lines of a CSV file with a header naming gtin, location_id and quantity (as_of optional).

    The delimiter is whichever of ',', ';' and tab the header uses most (spreadsheets in much of Europe write
    ';'); a UTF-8 byte order mark, as spreadsheets write, is ignored. A header without the required columns
    refuses the whole file.
    """
    text = text.removeprefix("\ufeff")
    header_text = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max((",", ";", "\t"), key=header_text.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = _header(reader)
    return _split(_csv_records(reader, columns, now))


def _header(reader: Iterator[list[str]]) -> dict[str, int]:
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise InvalidError("the file is empty: a header naming gtin, location_id and quantity is expected", "body")
    columns = {_COLUMNS[name]: i for i, cell in enumerate(header) if (name := cell.strip().lower()) in _COLUMNS}
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        raise InvalidError(
            f"the header {header!r} lacks {', '.join(missing)}; it must name gtin, location_id and quantity",
            "body",
        )
    return columns


def _csv_records(reader: CsvReader, columns: dict[str, int], now: datetime) -> Iterator[Candidate | Rejection]:
    width = max(columns.values()) + 1
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if len(record) < width:
            yield Rejection(line=line, reason=f"expected at least {width} fields, found {len(record)}")
            continue
        as_of_cell = record[columns["as_of"]].strip() if "as_of" in columns else ""
        try:
            as_of = _parse_time(as_of_cell) if as_of_cell else None
        except ValueError as exc:
            yield Rejection(line=line, reason=str(exc))
            continue
        yield _candidate(
            line, record[columns["gtin"]], record[columns["location_id"]], record[columns["quantity"]], as_of, now
        )


def _candidate(
    line: int, gtin: str, location_id: str, quantity: str, as_of: datetime | None, now: datetime
) -> Candidate | Rejection:
    try:
        return Candidate(line, normalise_gtin(gtin), _location(location_id), _quantity(quantity), _as_of(as_of, now))
    except ValueError as exc:
        return Rejection(line=line, reason=str(exc))


def _location(text: str) -> str:
    if not text.strip():
        raise ValueError("location_id is empty")
    return text.strip()


def _quantity(text: str) -> int:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"quantity {text.strip()!r} is not a number") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(f"quantity {text.strip()!r} is not a whole number of units")
    if value < 0:
        raise ValueError(f"quantity {text.strip()} is negative")
    if value > 2**31 - 1:
        raise ValueError(f"quantity {text.strip()} is too large")
    return int(value)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"as_of {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ValueError(f"as_of {text!r} has no UTC offset")
    return value.astimezone(UTC)


def _as_of(value: datetime | None, now: datetime) -> datetime | None:
    if value is not None and value > now + _CLOCK_SKEW:
        raise ValueError(f"as_of {value.isoformat()} is in the future")
    return value


def _split(results: Iterable[Candidate | Rejection]) -> ParsedBook:
    parsed = ParsedBook([], [])
    for result in results:
        if isinstance(result, Candidate):
            parsed.candidates.append(result)
        else:
            parsed.rejected.append(result)
    return parsed


# ----------------------------------------------------------------------------------------------------
# Storing


def import_book(
    parsed: ParsedBook, *, source: str, as_of: datetime, complete_for: str | None = None
) -> Plan[BookImport]:
    """Store the lines whose location exists as one import; raise BookRejectedError if none can be stored."""
    if complete_for is not None:
        rows = yield Statement("select 1 from locations where id = %(id)s", {"id": complete_for})
        if not rows:
            raise InvalidError(f"complete_for names no location: {complete_for!r}", field="complete_for")
    wanted = sorted({c.location_id for c in parsed.candidates})
    rows = yield Statement("select id from locations where id = any(%(ids)s)", {"ids": wanted})
    known = {row["id"] for row in rows}
    accepted = [c for c in parsed.candidates if c.location_id in known]
    rejected = parsed.rejected + [
        Rejection(line=c.line, reason=f"unknown location {c.location_id!r}")
        for c in parsed.candidates
        if c.location_id not in known
    ]
    rejected.sort(key=lambda r: r.line)
    if not accepted:
        raise BookRejectedError(rejected)
    rows = yield Statement(
        """
        insert into book_imports (source, as_of, complete_for, lines_accepted, lines_rejected)
        values (%(source)s, %(as_of)s, %(complete_for)s, %(accepted)s, %(rejected)s) returning id
        """,
        {
            "source": source,
            "as_of": as_of,
            "complete_for": complete_for,
            "accepted": len(accepted),
            "rejected": len(rejected),
        },
    )
    import_id = int(rows[0]["id"])
    yield from _insert_lines(import_id, accepted, as_of)
    return BookImport(
        import_id=import_id,
        source=source,
        as_of=as_of,
        complete_for=complete_for,
        accepted=len(accepted),
        rejected=rejected,
    )


def _insert_lines(import_id: int, lines: Sequence[Candidate], as_of: datetime) -> Plan[None]:
    yield Statement(
        """
        insert into book_lines (import_id, gtin, location_id, quantity, as_of)
        select %(import_id)s, gtin, location_id, sum(quantity), max(as_of)
        from unnest(%(gtins)s::text[], %(locations)s::text[], %(quantities)s::integer[], %(as_ofs)s::timestamptz[])
             as l (gtin, location_id, quantity, as_of)
        group by gtin, location_id
        """,
        {
            "import_id": import_id,
            "gtins": [c.gtin for c in lines],
            "locations": [c.location_id for c in lines],
            "quantities": [c.quantity for c in lines],
            "as_ofs": [c.as_of or as_of for c in lines],
        },
    )


def current_book(location_id: str | None = None, gtin: str | None = None) -> Plan[list[BookLine]]:
    """The book now, at `location_id` and inside it (everywhere when None), one line per GTIN and location."""
    rows = yield Statement(
        """
        select gtin, location_id, quantity, as_of from book_current(%(loc)s)
        where %(gtin)s::text is null or gtin = %(gtin)s
        order by location_id, gtin
        """,
        {"loc": location_id, "gtin": gtin},
    )
    return [BookLine.model_validate(row) for row in rows]
