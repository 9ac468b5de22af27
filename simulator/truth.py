"""The ground truth: where each item really was, and when, every injected fault, and every read published.

It is kept in memory for ``--check`` and, when a file is given, written as JSON lines while the run goes on:

- ``{"type": "run", ...}`` first: scenario, seed, mode, virtual start;
- ``{"type": "item", "epc", "gtin", "lot", "expires_at", "pallet"}`` when an item comes into being;
- ``{"type": "stay", "epc", "location_id", "site_id", "since", "until", "reason"}`` when an item leaves a place
  (``location_id`` null: the item is nowhere we track — shipped to a customer or stolen); stays still open at
  the end are written with ``"until": null``;
- ``{"type": "fault", "fault", "subject", "start", "end", "ongoing", ...}`` when a fault ends (faults still
  going at the end are written with the run's end and ``"ongoing": true``);
- ``{"type": "book", "location_id", "gtin", "quantity", "at"}`` — the ERP's book inventory at the start and end;
- ``{"type": "summary", ...}`` last.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import msgspec


def iso(t: float) -> str:
    """A virtual time (epoch seconds) as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Stay:
    """An item in one place over [since, until); ``until`` None while it is still there."""

    epc: str
    location_id: str | None
    site_id: str | None
    since: float
    until: float | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "stay", "epc": self.epc, "location_id": self.location_id, "site_id": self.site_id,
            "since": iso(self.since), "until": None if self.until is None else iso(self.until), "reason": self.reason,
        }  # fmt: skip


@dataclass(slots=True)
class FaultRecord:
    """One injected fault: what, on which subject, from when until when."""

    id: int
    fault: str
    subject: str
    start: float
    end: float | None = None
    site_id: str | None = None
    location_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self, ongoing: bool = False) -> dict[str, Any]:
        return {
            "type": "fault", "id": self.id, "fault": self.fault, "subject": self.subject,
            "start": iso(self.start), "end": None if self.end is None else iso(self.end), "ongoing": ongoing,
            "site_id": self.site_id, "location_id": self.location_id, "details": self.details,
        }  # fmt: skip


@dataclass(slots=True)
class ReadLog:
    """Every tag read published, by the key stocktrace stores it under: (EPC, device time in ms, antenna)."""

    epc: list[str] = field(default_factory=list)
    at_ms: list[int] = field(default_factory=list)
    antenna: list[int] = field(default_factory=list)
    device_id: list[str] = field(default_factory=list)
    format: list[str] = field(default_factory=list)

    def add(self, epc: str, at_ms: int, antenna: int, device_id: str, fmt: str) -> None:
        self.epc.append(epc)
        self.at_ms.append(at_ms)
        self.antenna.append(antenna)
        self.device_id.append(device_id)
        self.format.append(fmt)

    def __len__(self) -> int:
        return len(self.epc)

    def distinct(self) -> Iterator[tuple[str, int, int, str, str]]:
        """Each read once, although duplicates were published twice."""
        seen: set[tuple[str, int, int]] = set()
        for row in zip(self.epc, self.at_ms, self.antenna, self.device_id, self.format, strict=True):
            key = (row[0], row[1], row[2])
            if key not in seen:
                seen.add(key)
                yield row


class GroundTruth:
    """What really happened in a run; written to ``out`` as JSON lines when one is given."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.stays: dict[str, list[Stay]] = {}
        self.faults: list[FaultRecord] = []
        self.items: dict[str, dict[str, Any]] = {}
        self.reads = ReadLog()
        self.book_at_start: dict[tuple[str, str], int] = {}
        self.book_at_end: dict[tuple[str, str], int] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._out = out
        self._encoder = msgspec.json.Encoder()

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._out is not None:
            self._out.write(self._encoder.encode(record) + b"\n")

    def begin(self, t: float, header: Mapping[str, Any]) -> None:
        self.started_at = t
        self._write({"type": "run", "start": iso(t), **header})

    def item_created(self, epc: str, attributes: Mapping[str, Any]) -> None:
        self.items[epc] = dict(attributes)
        self._write({"type": "item", "epc": epc, **attributes})

    def move(self, epc: str, location_id: str | None, site_id: str | None, t: float, reason: str) -> None:
        """The item is now at ``location_id`` (None: nowhere tracked). A move to where it is changes nothing."""
        history = self.stays.setdefault(epc, [])
        if history:
            current = history[-1]
            if current.location_id == location_id:
                return
            current.until = t
            self._write(current.as_json())
        history.append(Stay(epc, location_id, site_id, t, None, reason))

    def location(self, epc: str, t: float | None = None) -> str | None:
        """Where the item was at ``t`` (now if None)."""
        history = self.stays.get(epc, [])
        if t is None:
            return history[-1].location_id if history else None
        for stay in reversed(history):
            if stay.since <= t:
                return stay.location_id
        return None

    def fault_started(self, fault: str, subject: str, t: float, **where: Any) -> FaultRecord:
        record = FaultRecord(len(self.faults) + 1, fault, subject, t, None, where.pop("site_id", None),
                             where.pop("location_id", None), where)  # fmt: skip
        self.faults.append(record)
        return record

    def fault_ended(self, record: FaultRecord, t: float) -> None:
        if record.end is None:
            record.end = max(t, record.start)
            self._write(record.as_json())

    def book(self, rows: Mapping[tuple[str, str], int], t: float, at_start: bool) -> None:
        (self.book_at_start if at_start else self.book_at_end).update(rows)
        for (location_id, gtin), quantity in sorted(rows.items()):
            self._write({"type": "book", "location_id": location_id, "gtin": gtin, "quantity": quantity, "at": iso(t)})

    def finish(self, t: float, summary: Mapping[str, Any]) -> None:
        """Close the record: open stays are written with no end, ongoing faults end with the run."""
        self.ended_at = t
        for history in self.stays.values():
            if history and history[-1].until is None:
                self._write(history[-1].as_json())
        for record in self.faults:
            if record.end is None:
                record.end = max(t, record.start)
                self._write(record.as_json(ongoing=True))
        self._write({"type": "summary", "end": iso(t), **summary})
        if self._out is not None:
            self._out.flush()
