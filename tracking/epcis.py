"""EPCIS 2.0 events (JSON/JSON-LD binding) from the event log.

Each log entry of a kind with an EPCIS form becomes one event (the payload shapes are in
stocktrace/migrations/0220_event_log.sql):

- movement: an ObjectEvent, action OBSERVE. bizStep from the CBV 2.0 vocabulary by what happened and which way
  a portal was crossed: receiving (arrived through a dock door, inwards), arriving (arrived), shipping
  (departed through a dock door, outwards), departing (departed), storing (moved within a site), arriving
  (moved to another site). Disposition in_progress, or in_transit once it has left.
- aggregation: an AggregationEvent: parentID the container (SSCC), childEPCs, action ADD (packing) or DELETE
  (unpacking).
- condition: an ObjectEvent with bizStep sensor_reporting and a sensorElementList per sensor device, each
  reading a sensorReport (gs1:Temperature in CEL, gs1:RelativeHumidity in P1, i.e. percent).
- inventory: an ObjectEvent with bizStep cycle_counting; counted EPCs in epcList, counts per GTIN in
  quantityList.

Identifiers. Objects: the EPC pure identity URI (TDS §6, urn:epc:id:...) of a tag GS1 can decode, the raw URI
(TDS §12, urn:epc:raw:<bits>.x<hex>) of one it cannot, an SSCC given as 18 digits as its GS1 Digital Link URI
(https://id.gs1.org/00/<sscc>); class-level identifiers (quantityList) are Digital Link URIs of the GTIN.
Locations (readPoint, bizLocation): the location's SGLN (urn:epc:id:sgln:...) once the registry carries one,
otherwise the HTTP URI of the location in this service's API, <api>/locations/<id>: EPCIS 2.0 accepts any
URI there, and an HTTP URI under the operator's own domain is unique and can be looked up. Sensors likewise are
<api>/devices/<id>. eventID is a name-based UUID URN (RFC 9562 §5.5) of the log entry's chain hash: stable
across exports, and it leads back to the entry.

eventTime is given in UTC, with eventTimeZoneOffset the offset of the site's time zone at that moment
(+00:00 when the site has none), as EPCIS 2.0 §7.4 asks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from devices import epc
from tracking.eventlog import utc_text

log = logging.getLogger(__name__)

CONTEXT: Final = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
SCHEMA_VERSION: Final = "2.0"
# A fixed namespace for the eventID UUIDs of this service's log entries.
_EVENT_NAMESPACE: Final = uuid.UUID("7c4c1d2e-1b7a-5f0e-9d3c-5e0c7ace0220")
_SGLN: Final = "urn:epc:id:sgln:"
_HEX: Final = frozenset("0123456789ABCDEFabcdef")


class NotExportableError(ValueError):
    """A log entry whose payload lacks what its EPCIS event needs; the export leaves it out."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    recorded_at: datetime
    event_time: datetime
    kind: str
    subject: str
    payload: Mapping[str, Any]
    hash: bytes


@dataclass(frozen=True, slots=True)
class Place:
    """What an export needs of a registered location: its SGLN if it has one, and its site's time zone."""

    sgln: str | None = None
    timezone: str | None = None


class Identifiers:
    """Turns stocktrace's ids into the URIs EPCIS carries; ``api_root`` is e.g. https://host/api/v1."""

    def __init__(self, api_root: str, places: Mapping[str, Place] | None = None) -> None:
        self.api_root = api_root.rstrip("/")
        self.places = places or {}

    def location(self, location_id: str) -> str:
        sgln = self.places.get(location_id, Place()).sgln
        if sgln is not None and sgln.startswith(_SGLN):
            return sgln
        return f"{self.api_root}/locations/{quote(location_id, safe='')}"

    def device(self, device_id: str) -> str:
        return f"{self.api_root}/devices/{quote(device_id, safe='')}"

    def epc(self, value: str) -> str:
        """An EPC (hex as read, or already a URI) or an SSCC (18 digits) as a URI."""
        if value.startswith(("urn:", "https://", "http://")):
            return value
        if len(value) == 18 and value.isdigit():
            return f"https://id.gs1.org/00/{value}"
        identity = epc.identify(value)
        if identity.uri is not None:
            return identity.uri
        if identity.raw_hex and _HEX.issuperset(identity.raw_hex):
            return f"urn:epc:raw:{len(identity.raw_hex) * 4}.x{identity.raw_hex}"
        return f"{self.api_root}/items/{quote(value, safe='')}"

    def offset(self, location_id: str | None, at: datetime) -> str:
        """eventTimeZoneOffset: the UTC offset of the location's site at ``at``, as +HH:MM."""
        name = self.places.get(location_id or "", Place()).timezone
        try:
            delta = at.astimezone(ZoneInfo(name)).utcoffset() if name else None
        except (ZoneInfoNotFoundError, ValueError):
            delta = None
        minutes = int(delta.total_seconds()) // 60 if delta is not None else 0
        sign = "-" if minutes < 0 else "+"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def event_id(entry_hash: bytes) -> str:
    return f"urn:uuid:{uuid.uuid5(_EVENT_NAMESPACE, entry_hash.hex())}"


def to_event(entry: LogEntry, ids: Identifiers) -> dict[str, Any]:
    """The EPCIS event of one log entry; NotExportableError when its kind has none or its payload lacks a field."""
    mapper = _MAPPERS.get(entry.kind)
    if mapper is None:
        raise NotExportableError(f"kind {entry.kind!r} has no EPCIS event")
    try:
        return mapper(entry, ids)
    except (KeyError, TypeError, AttributeError) as exc:
        raise NotExportableError(f"{entry.kind} payload is not as documented: {exc!r}") from exc


def locations_of(entries: Iterable[LogEntry]) -> set[str]:
    """Every location id the entries' payloads name: what an export looks up in the registry."""
    keys = ("location", "from_location", "to_location")
    return {e.payload[k] for e in entries for k in keys if isinstance(e.payload.get(k), str)}


def query_document(events: Sequence[Mapping[str, Any]], created_at: datetime) -> dict[str, Any]:
    """The EPCISQueryDocument that answers an event query (EPCIS 2.0 REST binding, GET /events)."""
    return {
        **_document_head("EPCISQueryDocument", created_at),
        "epcisBody": {"queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": list(events)}}},
    }


def capture_document(events: Sequence[Mapping[str, Any]], created_at: datetime) -> dict[str, Any]:
    """An EPCISDocument, the form another repository captures (EPCIS 2.0 §9)."""
    return {**_document_head("EPCISDocument", created_at), "epcisBody": {"eventList": list(events)}}


def _document_head(kind: str, created_at: datetime) -> dict[str, Any]:
    return {"@context": [CONTEXT], "type": kind, "schemaVersion": SCHEMA_VERSION, "creationDate": utc_text(created_at)}


def _head(kind: str, entry: LogEntry, ids: Identifiers, location: str | None) -> dict[str, Any]:
    return {
        "type": kind,
        "eventTime": utc_text(entry.event_time),
        "eventTimeZoneOffset": ids.offset(location, entry.event_time),
        "recordTime": utc_text(entry.recorded_at),
        "eventID": event_id(entry.hash),
    }


def _where(ids: Identifiers, read_point: str | None, biz_location: str | None) -> dict[str, Any]:
    where: dict[str, Any] = {}
    if read_point is not None:
        where["readPoint"] = {"id": ids.location(read_point)}
    if biz_location is not None:
        where["bizLocation"] = {"id": ids.location(biz_location)}
    return where


def _movement(entry: LogEntry, ids: Identifiers) -> dict[str, Any]:
    payload = entry.payload
    happened = payload["event"]
    if happened not in ("arrived", "departed", "moved"):
        raise NotExportableError(f"movement {happened!r} is not arrived, departed or moved")
    departed = happened == "departed"
    location = payload.get("from_location") if departed else payload.get("to_location")
    step = _movement_step(happened, payload.get("direction"), payload.get("from_site"), payload.get("to_site"))
    return {
        **_head("ObjectEvent", entry, ids, location),
        "epcList": [ids.epc(entry.subject)],
        "action": "OBSERVE",
        "bizStep": step,
        "disposition": "in_transit" if departed else "in_progress",
        # Once it has left, where it is is not known: no bizLocation (EPCIS 2.0 §7.3.4).
        **_where(ids, location, None if departed else location),
    }


def _movement_step(happened: str, direction: str | None, from_site: str | None, to_site: str | None) -> str:
    if happened == "arrived":
        return "receiving" if direction == "in" else "arriving"
    if happened == "departed":
        return "shipping" if direction == "out" else "departing"
    return "arriving" if from_site and to_site and from_site != to_site else "storing"


def _aggregation(entry: LogEntry, ids: Identifiers) -> dict[str, Any]:
    payload = entry.payload
    action = payload.get("action", "ADD")
    if action not in ("ADD", "DELETE"):
        raise NotExportableError(f"aggregation action {action!r} is not ADD or DELETE")
    children = [ids.epc(child) for child in payload.get("children", [])]
    if action == "ADD" and not children:
        raise NotExportableError("an aggregation ADD needs children")
    location = payload.get("location")
    event = {
        **_head("AggregationEvent", entry, ids, location),
        "parentID": ids.epc(entry.subject),
        "action": action,
        "bizStep": "packing" if action == "ADD" else "unpacking",
        "disposition": "in_progress",
        **_where(ids, location, location),
    }
    if children:  # a DELETE without children takes everything out of the parent (EPCIS 2.0 §7.4.3)
        event["childEPCs"] = children
    return event


def _condition(entry: LogEntry, ids: Identifiers) -> dict[str, Any]:
    payload = entry.payload
    location = payload.get("location")
    epcs = payload.get("epcs", [entry.subject])
    elements = _sensor_elements(payload["readings"], ids)
    if not elements:
        raise NotExportableError("a condition event needs temperature or humidity readings")
    if not epcs and location is None:
        raise NotExportableError("a condition event without items needs a location (its readPoint)")
    return {
        **_head("ObjectEvent", entry, ids, location),
        "epcList": [ids.epc(e) for e in epcs],
        "action": "OBSERVE",
        "bizStep": "sensor_reporting",
        **_where(ids, location, location),
        "sensorElementList": elements,
    }


# Our quantity → (CBV 2.0 measurement type, UN/ECE Recommendation 20 unit code).
_MEASUREMENTS: Final = {"temperature_c": ("gs1:Temperature", "CEL"), "humidity_pct": ("gs1:RelativeHumidity", "P1")}


def _sensor_elements(readings: Sequence[Mapping[str, Any]], ids: Identifiers) -> list[dict[str, Any]]:
    """One sensorElement per device, in the order the devices first appear, its readings as sensorReports."""
    by_device: dict[str | None, list[dict[str, Any]]] = {}
    for reading in readings:
        reports = by_device.setdefault(reading.get("device_id"), [])
        at = _parse_time(reading["at"]) if reading.get("at") else None
        for quantity, (kind, unit) in _MEASUREMENTS.items():
            value = reading.get(quantity)
            if isinstance(value, int | float) and not isinstance(value, bool):
                report = {"type": kind, "value": value, "uom": unit}
                reports.append(report if at is None else {**report, "time": utc_text(at)})
    return [
        {**({"sensorMetadata": {"deviceID": ids.device(device)}} if device else {}), "sensorReport": reports}
        for device, reports in by_device.items()
        if reports
    ]


def _parse_time(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # stocktrace writes UTC throughout


def _inventory(entry: LogEntry, ids: Identifiers) -> dict[str, Any]:
    payload = entry.payload
    location = payload.get("location")
    epcs = [ids.epc(e) for e in payload.get("epcs", [])]
    quantities = [
        {"epcClass": f"https://id.gs1.org/01/{str(q['gtin']).zfill(14)}", "quantity": q["quantity"]}
        for q in payload.get("quantities", [])
    ]
    if not epcs and not quantities:
        raise NotExportableError("an inventory event needs epcs or quantities")
    event = {
        **_head("ObjectEvent", entry, ids, location),
        "epcList": epcs,
        "action": "OBSERVE",
        "bizStep": "cycle_counting",
        **_where(ids, location, location),
    }
    if quantities:
        event["quantityList"] = quantities
    return event


_MAPPERS: Final[Mapping[str, Callable[[LogEntry, Identifiers], dict[str, Any]]]] = {
    "movement": _movement,
    "aggregation": _aggregation,
    "condition": _condition,
    "inventory": _inventory,
}
EXPORTED_KINDS: Final = tuple(_MAPPERS)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which log entries an export covers; every filter is optional. ``after`` is the last seq already sent."""

    event_time_from: datetime | None = None
    event_time_to: datetime | None = None
    epc: str | None = None
    location: str | None = None
    after: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Page:
    events: list[dict[str, Any]]
    last_seq: int | None
    """The seq to continue after, or None when this page reached the end of the log."""


# Entries in seq order. epc matches the subject or a child or counted EPC; location matches any location the
# payload names, and a site matches the locations inside it (through the registry) and the sites a movement
# recorded.
_PAGE: Final = """
select seq, recorded_at, event_time, kind, subject, payload, hash
from event_log
where seq > %(after)s
  and kind = any(%(kinds)s)
  and (%(time_from)s::timestamptz is null or event_time >= %(time_from)s)
  and (%(time_to)s::timestamptz is null or event_time < %(time_to)s)
  and (%(epcs)s::text[] is null
       or subject = any(%(epcs)s) or payload->'children' ?| %(epcs)s or payload->'epcs' ?| %(epcs)s)
  and (%(places)s::text[] is null
       or payload->>'location' = any(%(places)s) or payload->>'to_location' = any(%(places)s)
       or payload->>'from_location' = any(%(places)s)
       or payload->>'to_site' = any(%(places)s) or payload->>'from_site' = any(%(places)s))
order by seq
limit %(limit)s
"""
# The registry has no SGLN column yet; reading the row as jsonb picks one up once it has (a null until then).
_PLACES: Final = """
select l.id, to_jsonb(l)->>'sgln', s.timezone
from locations l left join locations s on s.id = l.site_id
where l.id = any(%s)
"""


async def fetch_page(conn: psycopg.AsyncConnection[Any], query: EventQuery, api_root: str) -> Page:
    """One page of EPCIS events from the log; entries without an EPCIS form are skipped (and logged)."""
    params = {
        "after": query.after,
        "kinds": list(EXPORTED_KINDS),
        "time_from": query.event_time_from,
        "time_to": query.event_time_to,
        "epcs": await _epc_forms(conn, query.epc) if query.epc else None,
        "places": await _places_within(conn, query.location) if query.location else None,
        "limit": query.limit,
    }
    cursor = await conn.execute(_PAGE, params)
    entries = [LogEntry(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in await cursor.fetchall()]
    ids = Identifiers(api_root, await _registered_places(conn, locations_of(entries)))
    events = []
    for entry in entries:
        try:
            events.append(to_event(entry, ids))
        except NotExportableError as exc:
            log.warning("event log entry %d left out of the EPCIS export: %s", entry.seq, exc)
    last_seq = entries[-1].seq if len(entries) == query.limit else None
    return Page(events, last_seq)


async def _epc_forms(conn: psycopg.AsyncConnection[Any], value: str) -> list[str]:
    """The forms an EPC can have in the log: as given, and the hex of a pure identity URI the items know."""
    cursor = await conn.execute("select epc from items where uri = %s or epc = upper(%s)", (value, value))
    return [value, *(row[0] for row in await cursor.fetchall())]


async def _places_within(conn: psycopg.AsyncConnection[Any], location: str) -> list[str]:
    cursor = await conn.execute("select id from locations where id = %s or site_id = %s", (location, location))
    return [location, *(row[0] for row in await cursor.fetchall())]


async def _registered_places(conn: psycopg.AsyncConnection[Any], location_ids: set[str]) -> dict[str, Place]:
    if not location_ids:
        return {}
    cursor = await conn.execute(_PLACES, (list(location_ids),))
    return {row[0]: Place(row[1], row[2]) for row in await cursor.fetchall()}


def now() -> datetime:
    """creationDate of a document made now."""
    return datetime.now(UTC)
