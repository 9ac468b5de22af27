"""EPCIS 2.0 capture: the containment an EPCISDocument from another system (a WMS, an ERP, a trading partner)
describes, applied to stocktrace's containers.

A document is checked against GS1's JSON Schema (tracking/epcis_schema.py) and then read event by event.
AggregationEvents (EPCIS 2.0 §7.4.3) change containment through tracking/containers.py, the functions the API's
``POST /containers/{sscc}/contents`` uses, so that each change is in ``container_changes`` and the hash-chained
event log like any other (with source ``epcis``):

- ADD: the children (childEPCs) are put into the parent, leaving any container they were in.
- DELETE: the children listed are taken out of the parent; with none listed, everything in it is.
- OBSERVE: the children listed were seen in the parent, so they are put there if they are not. Children of the
  parent that are not listed stay: an observation may miss some (a case reader that does not read every tag).

Time. Each change happens at the event's eventTime (an absolute time; eventTimeZoneOffset is kept with the
event). Events are applied in eventTime order, and a change to a child is applied only if nothing changed that
child's containment later (by any path: the API, inference, another document): an event that arrives late
never overrides newer containment. An event whose every child changed later is ``superseded``.

Once. Every event is recorded by its eventID (or, without one, the SHA-256 of its JSON), so a document sent
again, or an import run again after it stopped half way, changes nothing twice: those events are
``duplicates``.

Not applied (kept, counted, and replayable later from ``epcis_events``): other event types (ObjectEvent,
TransactionEvent, TransformationEvent, AssociationEvent); an OBSERVE without a parentID; error declarations;
childQuantityList (stocktrace's containers hold identified items, not class quantities). bizLocation and
readPoint are mapped to registry locations (tracking/epcis_identifiers.py) and recorded with the event.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal, TypeAlias

import psycopg
from psycopg.types.json import Jsonb

from tracking import containers, epcis_identifiers, epcis_schema
from tracking.epcis_schema import SchemaError

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]
Outcome: TypeAlias = Literal["applied", "superseded", "not_applied"]
ErrorBehaviour: TypeAlias = Literal["rollback", "proceed"]
Source: TypeAlias = Literal["api", "cli"]
Progress: TypeAlias = Callable[[int, int], None]
"""Called after each batch with (events done, events in the document)."""

DOCUMENT_TYPES: Final = ("EPCISDocument", "EPCISQueryDocument")
BATCH_EVENTS: Final = 1000
"""Events per transaction of an import (a capture through the API is one transaction)."""
_EVENT_LISTS: Final = {
    "EPCISDocument": ("epcisBody", "eventList"),
    "EPCISQueryDocument": ("epcisBody", "queryResults", "resultsBody", "eventList"),
}


@dataclass(frozen=True, slots=True)
class EventError:
    """Why a document, or one event of it (``index``), was refused; ``path`` leads to the field at fault."""

    path: tuple[str | int, ...]
    detail: str
    index: int | None = None

    @property
    def pointer(self) -> str:
        return SchemaError(self.path, self.detail).pointer

    def to_json(self) -> dict[str, Any]:
        return {"eventIndex": self.index, "pointer": self.pointer, "detail": self.detail}


class InvalidDocumentError(ValueError):
    """The document breaks the schema, or (with rollback) one of its events cannot be applied: nothing was."""

    def __init__(self, errors: Sequence[EventError], total: int | None = None) -> None:
        self.errors = list(errors)
        self.total = total if total is not None else len(self.errors)
        first = f": {self.errors[0].pointer} {self.errors[0].detail}" if self.errors else ""
        super().__init__(f"{self.total} error(s) in the EPCIS document{first}")


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a document, read: the URIs as sent, the time as an aware datetime."""

    index: int
    key: str
    type: str
    action: str | None
    event_time: datetime
    time_zone: str
    parent: str | None
    children: tuple[str, ...]
    read_point: str | None
    biz_location: str | None
    body: Mapping[str, Any]

    @property
    def applicable(self) -> bool:
        """An AggregationEvent with a parent, and not an error declaration (kept, not applied: undoing what an
        erroneous event did needs its corrective events, which the sender captures as events of their own)."""
        return (
            self.type == "AggregationEvent"
            and self.parent is not None
            and self.action is not None
            and "errorDeclaration" not in self.body
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """A document read: the events that can be captured, in eventTime order, and those refused."""

    events: list[Event]
    errors: list[EventError]
    total: int
    """Events in the document."""


def read(document: Any) -> Reading:
    """Check ``document`` against the schema and read its events; InvalidDocumentError if it is not a document.

    Events that break the schema, or the rules the schema cannot state, are listed in ``errors`` (and left
    out of ``events``); it is the caller's error behaviour that decides whether the rest are captured.
    """
    if not isinstance(document, dict) or document.get("type") not in DOCUMENT_TYPES:
        detail = f"an EPCIS document has type {' or '.join(DOCUMENT_TYPES)}"
        raise InvalidDocumentError([EventError(("type",), detail)])
    where = _EVENT_LISTS[document["type"]]
    schema_errors, total = epcis_schema.check(document)
    errors: list[EventError] = []
    for error in schema_errors:
        index = _event_index(error.path, where)
        if index is None:  # the document itself is broken, not one of its events
            listed = [EventError(e.path, e.detail, _event_index(e.path, where)) for e in schema_errors]
            raise InvalidDocumentError(listed, total)
        errors.append(EventError(error.path, error.detail, index))
    refused = {e.index for e in errors}
    events: list[Event] = []
    raw_events = _dig(document, where)
    for index, body in enumerate(raw_events):
        if index in refused:
            continue
        try:
            events.append(_event(index, body))
        except _EventRefusedError as exc:
            errors.append(EventError((*where, index, *exc.path), exc.detail, index))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # what the schema lets through
            errors.append(EventError((*where, index), f"not an EPCIS event: {exc!r}"[:200], index))
    events.sort(key=lambda e: (e.event_time, e.index))
    return Reading(events, errors, len(raw_events))


def event_count(document: Any) -> int:
    """How many events a document carries, before it is checked (0 for anything that is not a document)."""
    where = _EVENT_LISTS.get(str(document.get("type"))) if isinstance(document, dict) else None
    return len(_dig(document, where)) if where else 0


def _dig(document: Mapping[str, Any], where: Sequence[str]) -> list[Any]:
    value: Any = document
    for key in where:
        value = value.get(key, {}) if isinstance(value, Mapping) else {}
    return value if isinstance(value, list) else []


def _event_index(path: Sequence[str | int], where: Sequence[str]) -> int | None:
    prefix = len(where)
    index = path[prefix] if len(path) > prefix and tuple(path[:prefix]) == tuple(where) else None
    return index if isinstance(index, int) else None


class _EventRefusedError(ValueError):
    def __init__(self, path: tuple[str | int, ...], detail: str) -> None:
        super().__init__(detail)
        self.path, self.detail = path, detail


def _event(index: int, body: Mapping[str, Any]) -> Event:
    kind = str(body["type"])
    action = body.get("action")
    parent = body.get("parentID") if kind == "AggregationEvent" else None
    children = tuple(dict.fromkeys(body.get("childEPCs", []))) if kind == "AggregationEvent" else ()
    if kind == "AggregationEvent":
        if action in ("ADD", "DELETE") and parent is None:
            raise _EventRefusedError(("parentID",), f"an AggregationEvent with action {action} needs a parentID")
        if parent is not None and parent in children:
            at = body["childEPCs"].index(parent)
            raise _EventRefusedError(("childEPCs", at), "the parent cannot be one of its own children")
    return Event(
        index=index,
        key=_event_key(body),
        type=kind,
        action=action,
        event_time=_event_time(body),
        time_zone=str(body["eventTimeZoneOffset"]),
        parent=parent,
        children=children,
        read_point=_location(body.get("readPoint")),
        biz_location=_location(body.get("bizLocation")),
        body=body,
    )


def _event_key(body: Mapping[str, Any]) -> str:
    """The eventID, or for an event without one a hash of its content (recordTime is the sender's, left out)."""
    event_id = body.get("eventID")
    if isinstance(event_id, str):
        # An error declaration repeats the erroneous event's eventID: it is an event of its own.
        return event_id + "#errorDeclaration" if "errorDeclaration" in body else event_id
    content = {k: v for k, v in body.items() if k != "recordTime"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _event_time(body: Mapping[str, Any]) -> datetime:
    """eventTime, absolute; a time without an offset is read at eventTimeZoneOffset."""
    text = str(body["eventTime"])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _EventRefusedError(("eventTime",), f"{text[:40]!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        offset = str(body["eventTimeZoneOffset"])
        sign = -1 if offset.startswith("-") else 1
        hours, minutes = offset[1:].split(":")
        at = at.replace(tzinfo=timezone(sign * timedelta(hours=int(hours), minutes=int(minutes))))
    return at.astimezone(UTC)


def _location(value: Any) -> str | None:
    return str(value["id"]) if isinstance(value, Mapping) and "id" in value else None


# --- applying ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Counts:
    applied: int = 0
    duplicates: int = 0
    superseded: int = 0
    not_applied: int = 0

    def add(self, other: Counts) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.superseded += other.superseded
        self.not_applied += other.not_applied


_KNOWN: Final = "select event_key from epcis_events where event_key = any(%s)"
_RECORD: Final = """
insert into epcis_events (event_key, capture_id, type, action, event_time, event_time_zone, parent_epc,
                          read_point, biz_location, outcome, event)
select * from unnest(%(keys)s::text[], %(captures)s::uuid[], %(types)s::text[], %(actions)s::text[],
                     %(times)s::timestamptz[], %(zones)s::text[], %(parents)s::text[], %(read_points)s::text[],
                     %(biz_locations)s::text[], %(outcomes)s::text[], %(events)s::jsonb[])
on conflict (event_key) do nothing
returning event_key
"""
_OUTCOMES: Final = """
update epcis_events e set outcome = u.outcome
from unnest(%s::text[], %s::text[]) as u(event_key, outcome)
where e.event_key = u.event_key
"""
_LATEST_CHANGES: Final = """
select item_epc, max(at) from container_changes where item_epc = any(%s) group by item_epc
"""
_CONTENTS: Final = "select item_epc from container_contents where container_epc = %s"


async def apply(conn: Conn, capture_id: uuid.UUID, events: Sequence[Event]) -> Counts:
    """Capture ``events`` (in eventTime order) inside the caller's transaction; each event at most once ever."""
    counts = Counts()
    fresh = await _unseen(conn, events, counts)
    if not fresh:
        return counts
    objects = await epcis_identifiers.resolve_objects(conn, _first_named(fresh))
    places = await epcis_identifiers.resolve_locations(
        conn, {uri for e in fresh for uri in (e.read_point, e.biz_location) if uri is not None}
    )
    recorded = await _record(conn, capture_id, fresh, objects, places)
    counts.duplicates += len(fresh) - len(recorded)
    todo = [e for e in fresh if e.key in recorded]
    latest = _LatestChanges(conn)
    await latest.load({objects[uri] for e in todo if e.applicable for uri in e.children})
    outcomes: dict[str, Outcome] = {}
    # Pipelined: the containment statements go out without waiting for each answer (they need none), so a
    # batch costs a few round trips rather than a few per event.
    async with conn.pipeline():
        for event in todo:
            outcome = await _aggregate(conn, event, objects, latest) if event.applicable else "not_applied"
            outcomes[event.key] = outcome
    changed = {key: outcome for key, outcome in outcomes.items() if outcome != "applied"}
    if changed:
        await conn.execute(_OUTCOMES, (list(changed), list(changed.values())))
    counts.applied += sum(1 for o in outcomes.values() if o == "applied")
    counts.superseded += sum(1 for o in outcomes.values() if o == "superseded")
    counts.not_applied += sum(1 for o in outcomes.values() if o == "not_applied")
    return counts


async def _unseen(conn: Conn, events: Sequence[Event], counts: Counts) -> list[Event]:
    """The events neither captured before nor repeated earlier in ``events``."""
    cursor = await conn.execute(_KNOWN, ([e.key for e in events],))
    seen = {row[0] for row in await cursor.fetchall()}
    fresh = []
    for event in events:
        if event.key in seen:
            counts.duplicates += 1
        else:
            seen.add(event.key)
            fresh.append(event)
    return fresh


def _first_named(events: Sequence[Event]) -> dict[str, datetime]:
    """Every object URI the applicable events name, with the earliest time one names it."""
    named: dict[str, datetime] = {}
    for event in (e for e in events if e.applicable):
        for uri in (event.parent, *event.children):
            if uri is not None and (uri not in named or event.event_time < named[uri]):
                named[uri] = event.event_time
    return named


async def _record(
    conn: Conn, capture_id: uuid.UUID, events: Sequence[Event], objects: Mapping[str, str], places: Mapping[str, str]
) -> set[str]:
    """Record the events (as applied, corrected after); the keys recorded, which a concurrent capture may thin."""
    cursor = await conn.execute(
        _RECORD,
        {
            "keys": [e.key for e in events],
            "captures": [capture_id] * len(events),
            "types": [e.type for e in events],
            "actions": [e.action for e in events],
            "times": [e.event_time for e in events],
            "zones": [e.time_zone for e in events],
            "parents": [objects.get(e.parent) if e.parent else None for e in events],
            "read_points": [places.get(e.read_point) if e.read_point else None for e in events],
            "biz_locations": [places.get(e.biz_location) if e.biz_location else None for e in events],
            "outcomes": ["applied"] * len(events),
            "events": [Jsonb(dict(e.body)) for e in events],
        },
    )
    return {row[0] for row in await cursor.fetchall()}


class _LatestChanges:
    """When each child's containment last changed: loaded once per batch, then kept up to date as it is applied.

    Events are applied in eventTime order, so a change made in this batch is never later than the events after
    it; only changes stored before (or by another path) can supersede them.
    """

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._at: dict[str, datetime | None] = {}

    async def load(self, children: Collection[str]) -> None:
        missing = [c for c in children if c not in self._at]
        if not missing:
            return
        cursor = await self._conn.execute(_LATEST_CHANGES, (missing,))
        self._at.update(dict.fromkeys(missing))
        self._at.update(dict(await cursor.fetchall()))

    def current(self, children: Sequence[str], at: datetime) -> list[str]:
        """Those of ``children`` whose containment did not change after ``at``."""
        return [c for c in children if (last := self._at.get(c)) is None or last <= at]

    def changed(self, children: Sequence[str], at: datetime) -> None:
        self._at.update(dict.fromkeys(children, at))


async def _aggregate(conn: Conn, event: Event, objects: Mapping[str, str], latest: _LatestChanges) -> Outcome:
    """One AggregationEvent, applied to the children whose containment did not change after it."""
    assert event.parent is not None  # applicable
    parent = objects[event.parent]
    children = [objects[uri] for uri in event.children]
    if event.action == "DELETE" and not event.children:
        cursor = await conn.execute(_CONTENTS, (parent,))
        children = [row[0] for row in await cursor.fetchall()]
    # Two forms of one identity may name the parent among the children; it cannot contain itself.
    children = [child for child in dict.fromkeys(children) if child != parent]
    if not children:
        return "applied"
    await latest.load(children)  # only a DELETE of everything names children not loaded yet
    current = latest.current(children, event.event_time)
    if not current:
        return "superseded"
    if event.action == "DELETE":
        await containers.dissociate(conn, parent, current, event.event_time, "epcis")
    else:
        await containers.associate(conn, parent, current, event.event_time, "epcis")
    latest.changed(current, event.event_time)
    return "applied"


# --- captures (jobs) -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Capture:
    """A capture job, as the EPCIS 2.0 capture interface reports it, with what it did to each event."""

    id: uuid.UUID
    created_at: datetime
    source: Source
    error_behaviour: ErrorBehaviour
    name: str | None = None
    finished_at: datetime | None = None
    success: bool | None = None
    events: int = 0
    counts: Counts = field(default_factory=Counts)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.finished_at is None

    def to_json(self) -> dict[str, Any]:
        """The capture job (EPCIS 2.0 capture interface: captureID, createdAt, finishedAt, running, success,
        captureErrorBehaviour, errors) and stocktrace's counts of what happened to the events."""
        return {
            "captureID": str(self.id),
            "createdAt": _text(self.created_at),
            "finishedAt": _text(self.finished_at) if self.finished_at else None,
            "running": self.running,
            "success": bool(self.success),
            "captureErrorBehaviour": self.error_behaviour,
            "errors": self.errors,
            "source": self.source,
            "name": self.name,
            "events": self.events,
            "applied": self.counts.applied,
            "duplicates": self.counts.duplicates,
            "superseded": self.counts.superseded,
            "notApplied": self.counts.not_applied,
            "refused": len(self.errors),
        }


def _text(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_START: Final = """
insert into epcis_captures (id, source, name, error_behaviour, events) values (%s, %s, %s, %s, %s)
returning created_at
"""
_FINISH: Final = """
update epcis_captures set finished_at = now(), success = %(success)s, applied = %(applied)s,
    duplicates = %(duplicates)s, superseded = %(superseded)s, not_applied = %(not_applied)s, errors = %(errors)s
where id = %(id)s
returning finished_at
"""
_COLUMNS: Final = (
    "id, created_at, source, error_behaviour, name, finished_at, success, events, applied, duplicates, superseded,"
    " not_applied, errors"
)


async def start(conn: Conn, source: Source, behaviour: ErrorBehaviour, events: int, name: str | None) -> Capture:
    capture_id = uuid.uuid4()
    cursor = await conn.execute(_START, (capture_id, source, name, behaviour, events))
    row = await cursor.fetchone()
    assert row is not None
    return Capture(capture_id, row[0], source, behaviour, name, events=events)


async def finish(conn: Conn, capture: Capture, errors: Sequence[EventError]) -> None:
    capture.errors = [e.to_json() for e in errors[: epcis_schema.MAX_LISTED_ERRORS]]
    capture.success = not errors
    cursor = await conn.execute(
        _FINISH,
        {
            "id": capture.id, "success": capture.success, "applied": capture.counts.applied,
            "duplicates": capture.counts.duplicates, "superseded": capture.counts.superseded,
            "not_applied": capture.counts.not_applied, "errors": Jsonb(capture.errors),
        },
    )  # fmt: skip
    row = await cursor.fetchone()
    capture.finished_at = row[0] if row else None


async def capture(
    conn: Conn, document: Any, *, source: Source, behaviour: ErrorBehaviour = "rollback", name: str | None = None
) -> Capture:
    """Capture a whole document in one transaction on ``conn``: the API's capture.

    InvalidDocumentError (and nothing stored) when the document breaks the schema or, with rollback, when any event
    is refused; with proceed, the refused events are listed in the capture's errors and the rest captured.
    """
    reading = read(document)
    if reading.errors and behaviour == "rollback":
        raise InvalidDocumentError(reading.errors)
    async with conn.transaction():
        job = await start(conn, source, behaviour, reading.total, name)
        job.counts = await apply(conn, job.id, reading.events)
        await finish(conn, job, reading.errors)
    return job


async def import_events(
    conn: Conn,
    reading: Reading,
    *,
    name: str | None,
    behaviour: ErrorBehaviour = "rollback",
    batch: int = BATCH_EVENTS,
    progress: Progress | None = None,
) -> Capture:
    """Capture a document read from a file, ``batch`` events per transaction, for documents of any size.

    Each batch commits on its own: an import stopped half way keeps what it committed, and running it again
    captures the rest (the events already captured are duplicates).
    """
    if reading.errors and behaviour == "rollback":
        raise InvalidDocumentError(reading.errors)
    async with conn.transaction():
        job = await start(conn, "cli", behaviour, reading.total, name)
    for first in range(0, len(reading.events), batch):
        async with conn.transaction():
            job.counts.add(await apply(conn, job.id, reading.events[first : first + batch]))
        if progress is not None:
            progress(min(first + batch, len(reading.events)), len(reading.events))
    async with conn.transaction():
        await finish(conn, job, reading.errors)
    return job


async def find(conn: Conn, capture_id: uuid.UUID) -> Capture | None:
    cursor = await conn.execute(f"select {_COLUMNS} from epcis_captures where id = %s", (capture_id,))
    row = await cursor.fetchone()
    return _capture(row) if row else None


async def recent(conn: Conn, limit: int) -> list[Capture]:
    cursor = await conn.execute(f"select {_COLUMNS} from epcis_captures order by created_at desc limit %s", (limit,))
    return [_capture(row) for row in await cursor.fetchall()]


def _capture(row: Sequence[Any]) -> Capture:
    return Capture(
        id=row[0], created_at=row[1], source=row[2], error_behaviour=row[3], name=row[4], finished_at=row[5],
        success=row[6], events=row[7], counts=Counts(row[8], row[9], row[10], row[11]), errors=list(row[12]),
    )  # fmt: skip
