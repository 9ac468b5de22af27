"""The simulated ERP's book exports: its book inventory imported into stocktrace every so often.

A real ERP or WMS sends its stock per GTIN and location on a schedule (a nightly file, an export every
quarter of an hour); stocktrace keeps every import (tracking/inventory_book.py) and compares the newest with
what its readers see. The simulator does the same, through the same import code that ``POST /inventory/book``
runs, with each export stamped ``as_of`` the virtual time it describes. Without it the book would be empty
and neither a wrong book count nor a misplaced item could show as a variance.

A line that left the book since the previous export is sent with quantity 0, which clears it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final

import psycopg

from tracking import inventory_plan
from tracking.inventory_book import BookLine, BookRejectedError, import_book, parse_json_lines

log = logging.getLogger(__name__)

SOURCE: Final = "simulator-erp"
DEFAULT_EVERY_S: Final = 900.0

BookExport = Callable[[Mapping[tuple[str, str], int], float], None]
"""Called with the book (units per (location, GTIN)) and the virtual time it is true at."""


class DatabaseBook:
    """Imports each export into the stocktrace database at ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.previous: set[tuple[str, str]] = set()
        self.imports = 0
        self.rejected = 0

    def __call__(self, book: Mapping[tuple[str, str], int], t: float) -> None:
        cleared = {key: 0 for key in self.previous - book.keys()}
        lines = [
            BookLine(gtin=gtin, location_id=location_id, quantity=units, as_of=None)
            for (location_id, gtin), units in sorted({**book, **cleared}.items())
            if units >= 0
        ]
        self.previous = set(book)
        if not lines:
            return
        as_of = datetime.fromtimestamp(t, UTC)
        parsed = parse_json_lines(lines, datetime.now(UTC))
        try:
            with psycopg.connect(self.dsn) as conn:
                report = inventory_plan.run(conn, import_book(parsed, source=SOURCE, as_of=as_of))
        except BookRejectedError as exc:
            self.rejected += len(exc.rejected)
            log.warning("the ERP book export at %s was refused: %s", as_of.isoformat(), exc.rejected[:3])
            return
        self.imports += 1
        self.rejected += len(report.rejected)
        if report.rejected:
            # Locations stocktrace does not know: the registry manifest was not applied, or is another scenario's.
            log.warning("%d line(s) of the ERP book refused, e.g. %s", len(report.rejected), report.rejected[0])
