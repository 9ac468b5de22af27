"""What a rule is: given the data up to ``now``, the subjects that are not fine (findings).

A rule reads what it needs from the database on every run, by device time and up to ``now`` (the evaluator's
clock), and returns a *finding* per subject whose condition holds, with when it became active and when it
fires (after the rule's delay). The lifecycle (alerts/lifecycle.py) compares the findings with the stored
alerts: a new finding is a new alert, a missing one resolves it. Because every run starts from the data, a late
reading changes the next run's findings, a restart loses nothing but the time it takes, and no timer lives in
memory.

Each finding names the devices its subject depends on (``depends_on``): a variance needs every reader of the
zone, a temperature excursion needs its room's sensors. The inhibition stage holds a finding back while those
devices are offline and lets the one device-offline alert speak instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeAlias

import psycopg

from alerts.model import Severity
from alerts.rules_config import Attributes, RulesConfig

Conn: TypeAlias = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class Finding:
    """One subject whose condition holds (or, with ``resolved_at``, held until then and no longer does)."""

    alertname: str
    subject: str
    severity: Severity
    labels: Mapping[str, str]
    """Besides alertname, severity and subject: where and what (site, location, gtin, lot, device)."""
    annotations: Mapping[str, str]
    active_at: datetime
    """When the condition began: the first out-of-range reading, the moment the device fell silent."""
    fires_at: datetime | None
    """When it fires (active_at plus the rule's delay); later than now means pending, None pending for now."""
    resolved_at: datetime | None = None
    """The rule knows the condition ended then (readings back inside the band): the alert resolves with it."""
    depends_on: frozenset[str] = frozenset()
    """Devices whose silence would cause this finding (or hide it)."""
    needs_all: bool = False
    """Held back only when every device in depends_on is offline (one of a room's sensors still speaks for it);
    otherwise any one offline holds it back (a zone missing one reader is under-counted)."""
    repeat_s: float = 4 * 3600.0
    group_by: tuple[str, ...] = ("alertname", "site")


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """A stored alert of a rule, as the rule may need it (to look back to its start, to keep it open)."""

    fingerprint: str
    subject: str
    state: str
    starts_at: datetime
    ends_at: datetime | None
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Evaluation:
    findings: list[Finding]
    subjects: int
    """How many subjects the rule judged (for the throughput figures)."""


@dataclass(frozen=True, slots=True)
class Place:
    id: str
    site_id: str
    parent_id: str | None
    kind: str


@dataclass(slots=True)
class Topology:
    """The registry as the rules see it: locations, which devices sense and read where."""

    places: dict[str, Place] = field(default_factory=dict)
    device_kind: dict[str, str] = field(default_factory=dict)
    device_location: dict[str, str | None] = field(default_factory=dict)
    own_sensors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Per location: the assigned sensors placed there (not its ancestors')."""
    antenna_readers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Per location: the readers with an antenna mapped to it, or placed there themselves."""
    children: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def ancestors(self, location_id: str) -> list[str]:
        """The location and every location above it, nearest first."""
        found: list[str] = []
        current: str | None = location_id
        while current is not None and current in self.places and current not in found:
            found.append(current)
            current = self.places[current].parent_id
        return found

    def subtree(self, location_id: str) -> list[str]:
        found, todo = [], [location_id]
        while todo:
            current = todo.pop()
            found.append(current)
            todo.extend(self.children.get(current, ()))
        return found

    def readers_for(self, location_id: str) -> frozenset[str]:
        """Every reader that reads somewhere inside the location (a zone needs all its shelves' readers)."""
        return frozenset(r for loc in self.subtree(location_id) for r in self.antenna_readers.get(loc, ()))

    def site_of(self, location_id: str | None) -> str:
        place = self.places.get(location_id or "")
        return place.site_id if place else ""

    def attributes(self, location_id: str | None, **more: str | None) -> Attributes:
        place = self.places.get(location_id or "")
        return Attributes(
            location_kind=place.kind if place else None,
            site=place.site_id if place else None,
            ancestors=frozenset(self.ancestors(location_id)) if location_id else frozenset(),
            **more,
        )


async def load_topology(conn: Conn) -> Topology:
    topology = Topology()
    cursor = await conn.execute("select id, site_id, parent_id, kind from locations")
    for row in await cursor.fetchall():
        topology.places[row[0]] = Place(*row)
        if row[2] is not None:
            topology.children[row[2]].append(row[0])
    cursor = await conn.execute("select id, kind, location_id, assigned from devices")
    for device_id, kind, location_id, assigned in await cursor.fetchall():
        topology.device_kind[device_id] = kind
        topology.device_location[device_id] = location_id
        if location_id is not None and assigned and kind == "sensor":
            topology.own_sensors[location_id].add(device_id)
        if location_id is not None and assigned and kind == "rfid_reader":
            topology.antenna_readers[location_id].add(device_id)
    cursor = await conn.execute("select device_id, location_id from antennas")
    for device_id, location_id in await cursor.fetchall():
        topology.antenna_readers[location_id].add(device_id)
    return topology


@dataclass(frozen=True, slots=True)
class Tick:
    """One evaluation: the moment judged, the configuration, the registry and the alerts already stored."""

    now: datetime
    config: RulesConfig
    topology: Topology
    open_alerts: Mapping[str, Sequence[OpenAlert]] = field(default_factory=dict)
    """Per alertname: its stored alerts that are pending or firing, or resolved within the rule's lookback."""
    device_time: bool = False
    """``now`` is the devices' own time (alerts/clock.py): times stamped on receipt are another timeline."""

    def alerts_of(self, *alertnames: str) -> list[OpenAlert]:
        return [a for name in alertnames for a in self.open_alerts.get(name, ())]


class Rule(Protocol):
    name: str
    """The rule's section in the configuration."""
    alertnames: tuple[str, ...]
    """The alerts it raises: the lifecycle resolves stored alerts of these names that it no longer finds."""

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation: ...


async def tracked_until(conn: Conn, now: datetime) -> datetime:
    """``now``, or earlier while tracking still has reads from before it to fold (the resolver is behind
    ingest, as it is when a backlog arrives): how far the item state is known. Rules on item state judge up to
    here, so that an item whose arrival elsewhere tracking has not taken in yet is not called gone."""
    cursor = await conn.execute("select min(first_at) from sighting_deltas")
    row = await cursor.fetchone()
    oldest: datetime | None = row[0] if row is not None else None
    return now if oldest is None else min(now, oldest)


def label_set(**labels: str | None) -> dict[str, str]:
    """Labels without the empty ones (a location without a site has no site label)."""
    return {name: value for name, value in labels.items() if value}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def join_names(names: Iterable[str], limit: int = 5) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:limit])
    return shown + (f" and {len(listed) - limit} more" if len(listed) > limit else "")
