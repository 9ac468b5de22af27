"""A small hand-built world for the inventory and condition tests: rows written directly, as the registry and
the presence resolver would write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tracking.inventory import gs1_check_digit

Conn = psycopg.Connection[Any]


def gtin(body: str) -> str:
    """A valid GTIN-14 from its first 13 digits."""
    return body + str(gs1_check_digit(body))


G1 = gtin("0950600013435")
G2 = gtin("0400638133393")
G3 = gtin("0061414100001")


def today_at(days_ago: int, hour: int = 10) -> datetime:
    """hour:00 UTC, days_ago whole days before today (UTC)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago) + timedelta(hours=hour)


class World:
    def __init__(self, db: Conn) -> None:
        self.db = db
        self._serial = 0

    def site(self, site_id: str, timezone: str | None = None) -> None:
        self.db.execute(
            "insert into locations (id, site_id, kind, timezone) values (%s, %s, 'site', %s)",
            (site_id, site_id, timezone),
        )

    def location(self, location_id: str, parent: str, kind: str, **ranges: float) -> None:
        self.db.execute(
            "insert into locations (id, site_id, parent_id, kind, temperature_min_c, temperature_max_c)"
            " select %s, site_id, id, %s, %s, %s from locations where id = %s",
            (location_id, kind, ranges.get("min_c"), ranges.get("max_c"), parent),
        )

    def item(self, item_gtin: str | None, epc: str | None = None, lot: str | None = None) -> str:
        self._serial += 1
        epc = epc or f"E{self._serial:08d}"
        self.db.execute(
            "insert into items (epc, scheme, gtin, lot, first_seen_at) values (%s, 'sgtin-96', %s, %s, %s)",
            (epc, item_gtin, lot, datetime(2026, 1, 1, tzinfo=UTC)),
        )
        return epc

    def place(
        self,
        epc: str,
        location_id: str | None,
        *,
        since: datetime | None = None,
        last_seen_at: datetime | None = None,
        status: str = "present",
    ) -> None:
        now = datetime.now(UTC)
        self.db.execute(
            """
            insert into item_state (epc, location_id, site_id, status, since, last_seen_at)
            values (%(epc)s, %(loc)s, (select site_id from locations where id = %(loc)s), %(status)s,
                    %(since)s, %(seen)s)
            on conflict (epc) do update set location_id = excluded.location_id, site_id = excluded.site_id,
                status = excluded.status, since = excluded.since, last_seen_at = excluded.last_seen_at
            """,
            {"epc": epc, "loc": location_id, "status": status, "since": since or now, "seen": last_seen_at or now},
        )

    def stock(self, item_gtin: str, location_id: str, units: int, **state: Any) -> list[str]:
        """`units` new items of a GTIN, present at a location."""
        epcs = [self.item(item_gtin) for _ in range(units)]
        for epc in epcs:
            self.place(epc, location_id, **state)
        return epcs

    def event(
        self,
        at: datetime,
        epc: str,
        kind: str,
        to: str | None = None,
        origin: str | None = None,
        direction: str | None = None,
    ) -> None:
        self.db.execute(
            "insert into location_events (at, epc, kind, from_location, to_location, direction)"
            " values (%s, %s, %s, %s, %s, %s)",
            (at, epc, kind, origin, to, direction),
        )

    def sensor(self, device_id: str, location_id: str) -> None:
        self.db.execute(
            "insert into devices (id, kind, source, location_id) values (%s, 'sensor', 'native', %s)",
            (device_id, location_id),
        )

    def samples(
        self, device_id: str, start: datetime, every: timedelta, values: list[float], quantity: str = "temperature_c"
    ) -> None:
        rows = [(start + i * every, device_id, quantity, value, start) for i, value in enumerate(values)]
        with self.db.cursor() as cur:
            cur.executemany(
                "insert into telemetry (observed_at, device_id, quantity, value, received_at)"
                " values (%s, %s, %s, %s, %s)",
                rows,
            )

    def book(self, lines: list[tuple[str, str, int]], *, as_of: datetime | None = None) -> None:
        """One import of (gtin, location, quantity) lines, straight into the tables."""
        as_of = as_of or datetime.now(UTC)
        import_id = self.db.execute(
            "insert into book_imports (source, as_of, lines_accepted, lines_rejected)"
            " values ('test', %s, %s, 0) returning id",
            (as_of, len(lines)),
        ).fetchone()
        assert import_id is not None
        with self.db.cursor() as cur:
            cur.executemany(
                "insert into book_lines (import_id, gtin, location_id, quantity, as_of) values (%s, %s, %s, %s, %s)",
                [(import_id[0], g, loc, q, as_of) for g, loc, q in lines],
            )

    def sku(self, sku_gtin: str, name: str, min_c: float | None = None, max_c: float | None = None) -> None:
        self.db.execute(
            "insert into skus (gtin, name, temperature_min_c, temperature_max_c) values (%s, %s, %s, %s)",
            (sku_gtin, name, min_c, max_c),
        )
