"""The alert lifecycle: from the rules' findings to stored alerts and the changes delivery is told about.

pending → firing → resolved, one alert per rule and subject (the fingerprint of its labels). Modelled on
Alertmanager's notification pipeline (notify/notify.go), as small stages run in order::

    tracked = track(findings, stored, now)                # the new state of every alert the rules touched
    PIPELINE = [Inhibit(offline), Silence(silences, now), Dedup(now), Record(conn, now), Notify(conn, enqueue)]

- ``track``: a finding without an alert starts one (pending until its delay has passed, then firing); an alert
  whose finding is gone resolves (at the end the rule saw, else now). A firing alert never goes back to
  pending; a resolved one that is found again starts a new episode (acknowledgement and notification cleared).
- ``Inhibit``: an alert whose subject depends on devices that are offline (a DeviceOffline alert pending or
  firing for them) is held back, and shows which alerts hold it (``inhibited_by``).
- ``Silence``: an alert that an active silence matches shows the silence ids (``silenced_by``).
- ``Dedup``: what to tell: a firing alert not yet told (or no longer held back or silenced), a firing alert
  told more than its repeat interval ago and not acknowledged (a repeat), and a resolved alert that was told it
  fired. Pending alerts are never told.
- ``Record``: the alerts table, and an 'alert' entry in the event log when an alert fires or stops firing.
- ``Notify``: ``alerts.outbox.enqueue`` with the changes, in the same transaction as Record.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Protocol, TypeAlias

import psycopg

from alerts.model import Alert, AlertChange, Severity, State, fingerprint
from alerts.rules import Finding
from alerts.silences import Silence as SilenceRule

Conn: TypeAlias = psycopg.AsyncConnection[Any]
Enqueue: TypeAlias = Callable[[Conn, Sequence[AlertChange]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Stored:
    """An alerts row, as the lifecycle needs it."""

    fingerprint: str
    alertname: str
    subject: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    group_key: str
    state: State
    starts_at: datetime
    fires_at: datetime | None
    ends_at: datetime | None
    inhibited_by: tuple[str, ...]
    silenced_by: tuple[int, ...]
    notified_at: datetime | None
    acknowledged_at: datetime | None
    depends_on: frozenset[str] = frozenset()
    needs_all: bool = False
    repeat_s: float = 4 * 3600.0


STORED_COLUMNS: Final = (
    "fingerprint, alertname, subject, severity, labels, annotations, group_key, state, starts_at, fires_at, ends_at,"
    " inhibited_by, silenced_by, notified_at, acknowledged_at, depends_on, needs_all, repeat_s"
)


def stored_from_row(row: Sequence[Any]) -> Stored:
    values = list(row)
    values[7] = State(values[7])
    values[11] = tuple(values[11])
    values[12] = tuple(values[12])
    values[15] = frozenset(values[15])
    return Stored(*values)


def carry(stored: Stored, now: datetime, external_url: str = "") -> Tracked:
    """An open alert of a rule that did not run this tick, unchanged (it is still silenced, repeated...)."""
    alert = Alert(
        labels=dict(stored.labels), annotations=dict(stored.annotations), state=stored.state,
        starts_at=stored.starts_at, updated_at=now, generator_url=_url(external_url, stored.fingerprint),
        fingerprint=stored.fingerprint,
    )  # fmt: skip
    return Tracked(
        alert=alert, previous=stored.state, stored=stored, group_key=stored.group_key, fires_at=stored.fires_at,
        depends_on=stored.depends_on, needs_all=stored.needs_all, repeat_s=stored.repeat_s,
        inhibited_by=stored.inhibited_by, silenced_by=stored.silenced_by, notified_at=stored.notified_at,
        acknowledged=stored.acknowledged_at is not None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tracked:
    """An alert after this tick, with what it was before and why it changed."""

    alert: Alert
    previous: State | None
    stored: Stored | None
    group_key: str
    fires_at: datetime | None
    reason: str = ""
    depends_on: frozenset[str] = frozenset()
    needs_all: bool = False
    repeat_s: float = 4 * 3600.0
    inhibited_by: tuple[str, ...] = ()
    silenced_by: tuple[int, ...] = ()
    notified_at: datetime | None = None
    acknowledged: bool = False
    notify: str | None = None
    """Why delivery is told about it this tick (None: it is not)."""

    @property
    def changed(self) -> bool:
        return self.previous != self.alert.state

    @property
    def suppressed(self) -> bool:
        return bool(self.inhibited_by or self.silenced_by)


class Stage(Protocol):
    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]: ...


async def run(stages: Sequence[Stage], alerts: list[Tracked]) -> list[Tracked]:
    for stage in stages:
        if not alerts:
            break
        alerts = await stage(alerts)
    return alerts


# ----------------------------------------------------------------------------------------------------
# track


def labels_of(finding: Finding) -> dict[str, str]:
    return {**finding.labels, "alertname": finding.alertname, "severity": str(finding.severity),
            "subject": finding.subject}  # fmt: skip


def group_key(labels: Mapping[str, str], group_by: Iterable[str]) -> str:
    """The labels an alert is grouped by for delivery, as Prometheus prints a label set."""
    pairs = (f"{name}={json.dumps(labels.get(name, ''), ensure_ascii=False)}" for name in sorted(set(group_by)))
    return "{" + ", ".join(pairs) + "}"


Keyed: TypeAlias = dict[str, tuple[Finding, dict[str, str]]]


def keyed(findings: Iterable[Finding]) -> Keyed:
    """Findings by the fingerprint of their labels (the first of two findings with the same labels wins)."""
    found: Keyed = {}
    for finding in findings:
        labels = labels_of(finding)
        found.setdefault(fingerprint(labels), (finding, labels))
    return found


def track(
    findings: Iterable[Finding] | Keyed, stored: Mapping[str, Stored], now: datetime, external_url: str = ""
) -> list[Tracked]:
    """The new state of every alert that has a finding or was open (see the module's description)."""
    by_fingerprint = findings if isinstance(findings, dict) else keyed(findings)
    tracked = []
    for key in sorted(by_fingerprint.keys() | {k for k, s in stored.items() if s.state is not State.RESOLVED}):
        found = by_fingerprint.get(key)
        before = stored.get(key)
        if found is not None and found[0].resolved_at is None:
            tracked.append(_active(key, found[0], found[1], before, now, external_url))
        elif before is not None and before.state is not State.RESOLVED:
            tracked.append(_resolved(before, found[0] if found else None, now, external_url))
    return tracked


def _active(
    key: str, finding: Finding, labels: dict[str, str], before: Stored | None, now: datetime, url: str
) -> Tracked:
    due = finding.fires_at is not None and finding.fires_at <= now
    continuing = before is not None and before.state is not State.RESOLVED
    fires_at = finding.fires_at
    if continuing and before is not None:
        state = State.FIRING if due or before.state is State.FIRING else State.PENDING
        starts_at = min(before.starts_at, finding.active_at)
        previous: State | None = before.state
        if before.state is State.FIRING and before.fires_at is not None:
            fires_at = before.fires_at  # when it fired stays put (a rule judging "now" would move it every tick)
    else:
        state = State.FIRING if due else State.PENDING
        starts_at = finding.active_at
        previous = None if before is None else State.RESOLVED
    reason = _reason(previous, state, before, finding)
    alert = Alert(
        labels=labels, annotations=dict(finding.annotations), state=state, starts_at=starts_at, updated_at=now,
        generator_url=_url(url, key), fingerprint=key,
    )  # fmt: skip
    return Tracked(
        alert=alert,
        previous=previous,
        stored=before,
        group_key=group_key(labels, finding.group_by),
        fires_at=fires_at,
        reason=reason,
        depends_on=finding.depends_on,
        needs_all=finding.needs_all,
        repeat_s=finding.repeat_s,
        notified_at=before.notified_at if continuing and before is not None else None,
        acknowledged=continuing and before is not None and before.acknowledged_at is not None,
    )


def _reason(previous: State | None, state: State, before: Stored | None, finding: Finding) -> str:
    if previous == state:
        return ""
    ended = before.ends_at if before is not None and previous is State.RESOLVED else None
    if ended is not None and finding.active_at < ended:
        return "reopened: later data shows the condition had not ended"
    if state is State.PENDING:
        return "condition began; waiting for its delay"
    return "condition held past its delay" if previous is State.PENDING else "condition began"


def _resolved(before: Stored, finding: Finding | None, now: datetime, url: str) -> Tracked:
    ends_at = finding.resolved_at if finding is not None and finding.resolved_at is not None else now
    ends_at = max(ends_at, before.starts_at)
    annotations = dict(finding.annotations) if finding is not None else dict(before.annotations)
    alert = Alert(
        labels=dict(before.labels), annotations=annotations, state=State.RESOLVED, starts_at=before.starts_at,
        ends_at=ends_at, updated_at=now, generator_url=_url(url, before.fingerprint), fingerprint=before.fingerprint,
    )  # fmt: skip
    reason = "condition ended" if before.state is State.FIRING else "condition ended before its delay"
    return Tracked(
        alert=alert, previous=before.state, stored=before, group_key=before.group_key, fires_at=before.fires_at,
        reason=reason, depends_on=before.depends_on, needs_all=before.needs_all, repeat_s=before.repeat_s,
        notified_at=before.notified_at, acknowledged=before.acknowledged_at is not None,
    )  # fmt: skip


def _url(external_url: str, key: str) -> str:
    return f"{external_url.rstrip('/')}/api/v1/alerts/{key}" if external_url else ""


# ----------------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True, slots=True)
class Inhibit:
    """Hold back alerts whose devices are offline; ``offline`` maps a device to its DeviceOffline fingerprint."""

    offline: Mapping[str, str]

    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]:
        return [replace(t, inhibited_by=self._holders(t)) for t in alerts]

    def _holders(self, t: Tracked) -> tuple[str, ...]:
        if t.alert.state is State.RESOLVED or not t.depends_on:
            return ()
        holders = sorted({self.offline[d] for d in t.depends_on if d in self.offline})
        if t.needs_all and len([d for d in t.depends_on if d in self.offline]) < len(t.depends_on):
            return ()
        return tuple(holders)


@dataclass(frozen=True, slots=True)
class Silence:
    """Mark alerts that an active silence matches."""

    silences: Sequence[SilenceRule]
    now: datetime

    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]:
        active = [s for s in self.silences if s.active(self.now)]
        return [replace(t, silenced_by=self._ids(t, active)) for t in alerts]

    def _ids(self, t: Tracked, active: Sequence[SilenceRule]) -> tuple[int, ...]:
        if t.alert.state is State.RESOLVED:
            return ()
        return tuple(s.id for s in active if s.matches(t.alert.labels))


@dataclass(frozen=True, slots=True)
class Dedup:
    """Decide what delivery is told (see the module's description)."""

    now: datetime

    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]:
        return [self._decide(t) for t in alerts]

    def _decide(self, t: Tracked) -> Tracked:
        state = t.alert.state
        if state is State.FIRING and not t.suppressed:
            if t.notified_at is None:
                reason = t.reason or "no longer silenced or inhibited"
                return replace(t, notify=reason, notified_at=self.now)
            due = (self.now - t.notified_at).total_seconds() >= t.repeat_s
            if due and not t.acknowledged:
                return replace(t, notify="repeat: still firing", notified_at=self.now)
        if state is State.RESOLVED and t.previous is State.FIRING and t.notified_at is not None:
            return replace(t, notify=t.reason)
        return t


# Arrays of arrays cannot be unnested row by row, so inhibited_by and silenced_by travel as array literals.
# A resolved row that is written again starts a new episode: its acknowledgement is cleared.
_UPSERT: Final = """
insert into alerts as a (fingerprint, alertname, subject, severity, labels, annotations, group_key, state,
                         starts_at, fires_at, ends_at, inhibited_by, silenced_by, depends_on, needs_all, repeat_s,
                         notified_at, evaluated_at)
select u.fingerprint, u.alertname, u.subject, u.severity, u.labels::jsonb, u.annotations::jsonb, u.group_key,
       u.state, u.starts_at, u.fires_at, u.ends_at, u.inhibited_by::text[], u.silenced_by::bigint[],
       u.depends_on::text[], u.needs_all, u.repeat_s, u.notified_at, u.evaluated_at
from unnest(%(fingerprint)s::text[], %(alertname)s::text[], %(subject)s::text[], %(severity)s::text[],
            %(labels)s::text[], %(annotations)s::text[], %(group_key)s::text[], %(state)s::text[],
            %(starts_at)s::timestamptz[], %(fires_at)s::timestamptz[], %(ends_at)s::timestamptz[],
            %(inhibited_by)s::text[], %(silenced_by)s::text[], %(depends_on)s::text[], %(needs_all)s::bool[],
            %(repeat_s)s::float4[], %(notified_at)s::timestamptz[], %(evaluated_at)s::timestamptz[])
    as u(fingerprint, alertname, subject, severity, labels, annotations, group_key, state, starts_at, fires_at,
         ends_at, inhibited_by, silenced_by, depends_on, needs_all, repeat_s, notified_at, evaluated_at)
on conflict (fingerprint) do update set
    labels = excluded.labels, annotations = excluded.annotations, group_key = excluded.group_key,
    state = excluded.state, starts_at = excluded.starts_at, fires_at = excluded.fires_at, ends_at = excluded.ends_at,
    inhibited_by = excluded.inhibited_by, silenced_by = excluded.silenced_by, depends_on = excluded.depends_on,
    needs_all = excluded.needs_all, repeat_s = excluded.repeat_s, notified_at = excluded.notified_at,
    evaluated_at = excluded.evaluated_at, updated_at = now(),
    acknowledged_at = case when a.state = 'resolved' then null else a.acknowledged_at end,
    acknowledged_by = case when a.state = 'resolved' then null else a.acknowledged_by end,
    ack_comment = case when a.state = 'resolved' then null else a.ack_comment end
"""


@dataclass(slots=True)
class Record:
    """Write what changed to the alerts table, and each change of state to the event log."""

    conn: Conn
    now: datetime
    event_log: bool = True
    written: int = field(default=0)

    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]:
        rows = [t for t in alerts if _differs(t)]
        if rows:
            await self.conn.execute(_UPSERT, _columns(rows, self.now))
            self.written = len(rows)
        # Pending alerts that come and go (a reading on the edge of a band) are no part of the record: what
        # fired, and when it ended, is.
        moved = [t for t in alerts if t.changed and State.FIRING in (t.alert.state, t.previous)]
        if moved and self.event_log:
            entries = [_log_entry(t) for t in moved]
            await self.conn.execute(
                "select count(event_log_append('alert', u.key, u.at, u.payload::jsonb))"
                " from unnest(%s::text[], %s::timestamptz[], %s::text[]) as u(key, at, payload)",
                ([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]),
            )
        return alerts


def _differs(t: Tracked) -> bool:
    s = t.stored
    if s is None or t.changed:
        return True
    a = t.alert
    return (
        dict(s.annotations) != dict(a.annotations)
        or s.starts_at != a.starts_at
        or s.fires_at != t.fires_at
        or s.inhibited_by != t.inhibited_by
        or s.silenced_by != t.silenced_by
        or s.notified_at != t.notified_at
        or s.group_key != t.group_key
        or s.depends_on != t.depends_on
        or s.repeat_s != t.repeat_s
    )


def _columns(rows: Sequence[Tracked], now: datetime) -> dict[str, list[Any]]:
    return {
        "fingerprint": [t.alert.fingerprint for t in rows],
        "alertname": [t.alert.name for t in rows],
        "subject": [t.alert.labels.get("subject", "") for t in rows],
        "severity": [t.alert.labels.get("severity", str(Severity.WARNING)) for t in rows],
        "labels": [json.dumps(dict(t.alert.labels)) for t in rows],
        "annotations": [json.dumps(dict(t.alert.annotations)) for t in rows],
        "group_key": [t.group_key for t in rows],
        "state": [str(t.alert.state) for t in rows],
        "starts_at": [t.alert.starts_at for t in rows],
        "fires_at": [t.fires_at for t in rows],
        "ends_at": [t.alert.ends_at for t in rows],
        "inhibited_by": [_array(t.inhibited_by) for t in rows],
        "silenced_by": [_array(map(str, t.silenced_by)) for t in rows],
        "depends_on": [_array(sorted(t.depends_on)) for t in rows],
        "needs_all": [t.needs_all for t in rows],
        "repeat_s": [t.repeat_s for t in rows],
        "notified_at": [t.notified_at for t in rows],
        "evaluated_at": [now] * len(rows),
    }


def _array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal, each element quoted (device ids may hold commas or braces)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def _log_entry(t: Tracked) -> tuple[str, datetime, str]:
    alert = t.alert
    at = alert.ends_at if alert.state is State.RESOLVED and alert.ends_at else alert.starts_at
    payload = {
        "alertname": alert.name,
        "subject": alert.labels.get("subject", ""),
        "state": str(alert.state),
        "previous": None if t.previous is None else str(t.previous),
        "reason": t.reason,
        "labels": dict(alert.labels),
        "summary": alert.annotations.get("summary", ""),
    }
    return alert.fingerprint, at, json.dumps(payload)


@dataclass(frozen=True, slots=True)
class Notify:
    """Hand the changes worth telling to delivery (the outbox), in the caller's transaction."""

    conn: Conn
    enqueue: Enqueue
    sent: list[AlertChange] = field(default_factory=list)

    async def __call__(self, alerts: list[Tracked]) -> list[Tracked]:
        told = [t for t in alerts if t.notify is not None]
        changes = [AlertChange(t.alert, t.previous if t.changed else t.alert.state, t.notify or "") for t in told]
        if changes:
            await self.enqueue(self.conn, changes)
            self.sent.extend(changes)
        return told
