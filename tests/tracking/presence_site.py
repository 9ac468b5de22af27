"""A small registry for the presence tests: two sites, a dock door portal, two shelves, a truck with a GPS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ingest.batch import Row, Rows

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
BERLIN = (52.3906, 13.5125)
HAMBURG = (53.5204, 10.0251)
ON_THE_ROAD = (52.75, 12.65)

# Valid SGTIN-96 and SSCC-96 EPCs (company prefix 4012345).
ITEM = "3034F4E4E40002C000000001"  # urn:epc:id:sgtin:4012345.000011.1, GTIN 04012345000115
OTHER = "3034F4E4E400070000000001"  # urn:epc:id:sgtin:4012345.000028.1, GTIN 04012345000283
PALLET = "3154F4E4E40000000A000000"  # urn:epc:id:sscc:4012345.0000000010


def sgtin(serial: int) -> str:
    """An item of GTIN 04012345000115 with this serial."""
    return f"3034F4E4E40002C0{serial:08X}"


def build_site(db: psycopg.Connection[Any]) -> None:
    """Registry rows as `stocktrace apply` would write them."""
    db.execute(
        "insert into locations (id, site_id, parent_id, kind, geofence) values"
        " ('berlin', 'berlin', null, 'site', %s), ('hamburg', 'hamburg', null, 'site', %s)",
        (
            json.dumps({"center": list(BERLIN), "radius_m": 300}),
            json.dumps({"polygon": [[53.519, 10.023], [53.522, 10.023], [53.522, 10.028], [53.519, 10.028]]}),
        ),
    )
    db.execute(
        "insert into locations (id, site_id, parent_id, kind) values"
        " ('dock-1', 'berlin', 'berlin', 'dock_door'), ('zone-a', 'berlin', 'berlin', 'zone'),"
        " ('shelf-1', 'berlin', 'zone-a', 'shelf'), ('shelf-2', 'berlin', 'zone-a', 'shelf'),"
        " ('receiving', 'berlin', 'berlin', 'zone'), ('truck-1', 'berlin', 'berlin', 'vehicle'),"
        " ('hh-dock', 'hamburg', 'hamburg', 'dock_door')"
    )
    db.execute(
        "insert into devices (id, kind, source, location_id, assigned) values"
        " ('fx-dock', 'rfid_reader', 'zebra-fx', 'dock-1', true),"
        " ('r700', 'rfid_reader', 'impinj-r700', 'zone-a', true),"
        " ('gw-recv', 'rfid_reader', 'native', 'receiving', true),"
        " ('fx-hh', 'rfid_reader', 'zebra-fx', 'hh-dock', true),"
        " ('parked', 'rfid_reader', 'native', 'shelf-1', false),"
        " ('nowhere', 'rfid_reader', 'native', null, true),"
        " ('gps-1', 'gps_tracker', 'owntracks', 'truck-1', true)"
    )
    db.execute(
        "insert into antennas (device_id, antenna, location_id, side) values"
        " ('fx-dock', 1, 'dock-1', 'out'), ('fx-dock', 2, 'dock-1', 'in'),"
        " ('fx-hh', 1, 'hh-dock', 'out'), ('fx-hh', 2, 'hh-dock', 'in'),"
        " ('r700', 1, 'shelf-1', null), ('r700', 2, 'shelf-2', null)"
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def read(seconds: float, device: str, antenna: int, epc: str = ITEM, rssi: float | None = -60.0) -> Row:
    """One rfid_reads row as ingest/batch.py builds it."""
    return (at(seconds), device, antenna, epc, rssi, at(seconds) + timedelta(seconds=1), None)


def position(seconds: float, point: tuple[float, float], device: str = "gps-1") -> Row:
    """One telemetry row of a GPS fix."""
    return (at(seconds), device, "position", None, point[0], point[1], None, 8.0, None, at(seconds), None)


def heartbeat(seconds: float, device: str) -> Row:
    return (at(seconds), device, -1, True, "heartbeat", at(seconds), None)


def rows(reads: Sequence[Row] = (), telemetry: Sequence[Row] = (), events: Sequence[Row] = ()) -> Rows:
    batch = Rows(datetime.now(UTC), rfid_reads=list(reads), telemetry=list(telemetry), device_events=list(events))
    for row in batch.rfid_reads:
        key = (row[1], row[2])
        seen = batch.antennas.get(key)
        batch.antennas[key] = (row[0], 1) if seen is None else (max(row[0], seen[0]), seen[1] + 1)
    return batch
