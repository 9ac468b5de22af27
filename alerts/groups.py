"""Alert groups: the alerts each receiver is told about together, and when it is told next.

Alertmanager's aggregation groups (dispatch/dispatch.go), kept in the database (0320_alert_groups.sql) rather
than in memory, so that a restart or a second delivery worker carries on where the last one stopped:

- ``record`` (in the evaluator's transaction, through ``alerts.outbox.enqueue``) puts each change into the
  groups its routes choose and sets when each group is due: ``group_wait`` after a new group appeared, then no
  sooner than ``group_interval`` after its last message (a repeat from the rules counts as a change, unless the
  route sets its own ``repeat_interval``);
- ``take_due`` locks one group that is due (``FOR UPDATE SKIP LOCKED``: two workers never take the same one);
- ``flush`` decides the messages of a locked group and clears what they tell. A grouped receiver (webhook,
  Slack, Teams) gets one message with every alert of the group: those firing, and those resolved since the
  last message; per-alert receivers (PagerDuty, Grafana) get one per alert that changed, as before.

As in Alertmanager, an alert that resolves before its receiver was ever told it fired is dropped without a
word, silenced and inhibited alerts stay out of messages while they are (the alerts table says so when the
group is flushed), and a group whose alerts have all resolved and been told is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.model import Alert, AlertChange, State
from alerts.routes import Grouping, Receiver, RoutesConfig, destinations, group_labels
from alerts.sinks import per_alert
from alerts.sinks.base import Notification

Conn = psycopg.AsyncConnection[Any]
GroupId = tuple[str, str]
"""A group: its receiver and its group key."""

_UPSERT_GROUPS: Final = """
    insert into alert_groups as g (receiver, group_key, group_labels, group_interval_s, repeat_interval_s,
                                   created_at)
    select * from unnest(%s::text[], %s::text[], %s::jsonb[], %s::float8[], %s::float8[], %s::timestamptz[])
    order by 1, 2
    on conflict (receiver, group_key) do update set
        group_labels = excluded.group_labels, group_interval_s = excluded.group_interval_s,
        repeat_interval_s = excluded.repeat_interval_s
    returning receiver, group_key, group_interval_s, flush_at, notified_at
"""
_LOCK_GROUPS: Final = """
    select receiver, group_key, group_interval_s, flush_at, notified_at from alert_groups
    where (receiver, group_key) in (select * from unnest(%s::text[], %s::text[]))
    order by receiver, group_key
    for update
"""
_HOLDING: Final = """
    select receiver, group_key, fingerprint from alert_group_alerts where fingerprint = any(%s) and firing
"""
_MEMBERS: Final = """
    select receiver, group_key, fingerprint, firing, told from alert_group_alerts
    where (receiver, group_key, fingerprint) in (select * from unnest(%s::text[], %s::text[], %s::text[]))
"""
_PUT_MEMBERS: Final = """
    insert into alert_group_alerts as m (receiver, group_key, fingerprint, alert, firing, changed, told)
    select * from unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[], %s::bool[], %s::bool[], %s::bool[])
    order by 1, 2, 3
    on conflict (receiver, group_key, fingerprint) do update set
        alert = excluded.alert, firing = excluded.firing, changed = m.changed or excluded.changed,
        told = excluded.told
"""
_DROP_MEMBERS: Final = """
    delete from alert_group_alerts
    where (receiver, group_key, fingerprint) in (select * from unnest(%s::text[], %s::text[], %s::text[]))
"""
_SCHEDULE: Final = """
    update alert_groups g set flush_at = u.flush_at
    from unnest(%s::text[], %s::text[], %s::timestamptz[]) as u(receiver, group_key, flush_at)
    where g.receiver = u.receiver and g.group_key = u.group_key
"""
_TAKE_DUE: Final = """
    select receiver, group_key from alert_groups
    where flush_at <= %(now)s and receiver = any(%(receivers)s)
    order by flush_at
    limit 1
    for update skip locked
"""
_NEXT_DUE: Final = "select min(flush_at) from alert_groups where flush_at is not null and receiver = any(%s)"
_GROUP: Final = """
    select group_labels, repeat_interval_s, notified_at from alert_groups where receiver = %s and group_key = %s
"""
# What the alerts table says now: a firing alert that is silenced or inhibited stays out of messages, and an
# acknowledged one is not repeated.
_FLUSH_MEMBERS: Final = """
    select m.fingerprint, m.alert, m.firing, m.changed, m.told,
           coalesce(a.state = 'firing' and (cardinality(a.silenced_by) > 0 or cardinality(a.inhibited_by) > 0),
                    false) as suppressed,
           coalesce(a.acknowledged_at is not null, false) as acknowledged
    from alert_group_alerts m left join alerts a on a.fingerprint = m.fingerprint
    where m.receiver = %s and m.group_key = %s
"""


@dataclass(slots=True)
class _Target:
    """A group some changes go to, with the alerts they bring (a later change of one alert supersedes)."""

    labels: dict[str, str] | None
    grouping: Grouping | None
    alerts: dict[str, Alert] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _State:
    group_interval_s: float
    flush_at: datetime | None
    notified_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Member:
    firing: bool
    told: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A message a flush makes: a receiver and what it is told."""

    receiver: Receiver
    notification: Notification


def group_key(route_key: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's groupKey: the route's key, a colon, and the group labels as Prometheus prints them."""
    return f"{route_key}:{label_set(labels)}"


def label_set(labels: Mapping[str, str]) -> str:
    """Prometheus' LabelSet.String(): sorted ``name="value"`` pairs, comma and space separated, in braces."""
    pairs = (f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in sorted(labels.items()))
    return "{" + ", ".join(pairs) + "}"


def worth_telling(change: AlertChange) -> bool:
    state = change.alert.state
    return state is State.FIRING or (state is State.RESOLVED and change.previous is State.FIRING)


def targets(config: RoutesConfig, changes: Sequence[AlertChange]) -> dict[GroupId, _Target]:
    """The groups these changes go to by the routes, in the order of the changes that open each group."""
    found: dict[GroupId, _Target] = {}
    for change in filter(worth_telling, changes):
        alert = change.alert
        for destination in destinations(config, alert.labels):
            labels = group_labels(alert.labels, destination.group_by)
            key = (destination.receiver, group_key(destination.route_key, labels))
            found.setdefault(key, _Target(labels, destination.grouping)).alerts[alert.fingerprint] = alert
    return found


async def record(conn: Conn, config: RoutesConfig, changes: Sequence[AlertChange], now: datetime) -> list[GroupId]:
    """Put the changes into their groups and schedule each group; returns the groups due by ``now``."""
    found = targets(config, changes)
    resolved = [c.alert for c in changes if c.alert.state is State.RESOLVED and worth_telling(c)]
    await _add_holders(conn, found, resolved)
    if not found:
        return []
    states = await _lock(conn, found, now)
    found = {key: target for key, target in found.items() if key in states}
    members = await _members(conn, found)
    puts: list[tuple[str, str, str, Alert, bool, bool, bool]] = []
    drops: list[tuple[str, str, str]] = []
    schedule: list[tuple[str, str, datetime]] = []
    for key, target in found.items():
        changed = False
        for fingerprint, alert in target.alerts.items():
            put, drop, counts = _decide(alert, members.get((*key, fingerprint)), target.grouping)
            if put is not None:
                puts.append((*key, fingerprint, alert, *put))
            if drop:
                drops.append((*key, fingerprint))
            changed |= counts
        if changed:
            schedule.append((*key, _flush_at(states[key], target.grouping, now)))
    await _write(conn, puts, drops, schedule)
    return [(receiver, key) for receiver, key, at in schedule if at <= now]


def _decide(alert: Alert, member: _Member | None, grouping: Grouping | None) -> tuple[
    tuple[bool, bool, bool] | None, bool, bool
]:  # fmt: skip
    """For one alert in one group: the member row to write (firing, changed, told), whether to drop it
    instead, and whether the group has something new to tell."""
    if alert.state is State.FIRING:
        told = member is not None and member.firing and member.told
        repeat_of_group = told and grouping is not None and grouping.repeat_interval is not None
        if repeat_of_group:
            return (True, False, True), False, False  # the group's own repeat_interval decides
        return (True, True, member.told if member is not None else False), False, True
    if member is None:
        # Told firing before this receiver kept groups (or before a routes change): its resolve is owed.
        return (False, True, True), False, True
    if member.firing and not member.told:
        return None, True, False  # fired and resolved before anyone was told: nothing to say
    return (False, True, True), False, member.firing


def _flush_at(state: _State, grouping: Grouping | None, now: datetime) -> datetime:
    if state.notified_at is None:
        # A group not yet told anything: its first message waits group_wait from when it appeared.
        wait = grouping.group_wait if grouping is not None else timedelta(0)
        return state.flush_at if state.flush_at is not None else now + wait
    due = max(now, state.notified_at + timedelta(seconds=state.group_interval_s))
    return min(due, state.flush_at) if state.flush_at is not None else due


async def _add_holders(conn: Conn, found: dict[GroupId, _Target], resolved: Sequence[Alert]) -> None:
    """A resolved alert also goes to every group that holds it as firing: a receiver told that it fired is told
    that it ended, even when the routes changed in between."""
    if not resolved:
        return
    by_fingerprint = {alert.fingerprint: alert for alert in resolved}
    cursor = await conn.execute(_HOLDING, (list(by_fingerprint),))
    for receiver, key, fingerprint in await cursor.fetchall():
        target = found.setdefault((receiver, key), _Target(None, None))
        target.alerts.setdefault(fingerprint, by_fingerprint[fingerprint])


async def _lock(conn: Conn, found: dict[GroupId, _Target], now: datetime) -> dict[GroupId, _State]:
    """Create the new groups and lock every group these changes touch, in key order."""
    routed = sorted((key, t) for key, t in found.items() if t.grouping is not None)
    held = sorted(key for key, t in found.items() if t.grouping is None)
    rows: list[tuple[Any, ...]] = []
    if routed:
        columns = list(zip(*[_group_row(key, t, now) for key, t in routed], strict=True))
        rows += await (await conn.execute(_UPSERT_GROUPS, [list(c) for c in columns])).fetchall()
    if held:
        rows += await (await conn.execute(_LOCK_GROUPS, ([r for r, _ in held], [k for _, k in held]))).fetchall()
    return {(receiver, key): _State(interval, flush_at, notified_at) for receiver, key, interval, flush_at,
            notified_at in rows}  # fmt: skip


def _group_row(key: GroupId, target: _Target, now: datetime) -> tuple[object, ...]:
    grouping = target.grouping
    assert grouping is not None
    repeat = grouping.repeat_interval.total_seconds() if grouping.repeat_interval is not None else None
    return (*key, Jsonb(target.labels or {}), grouping.group_interval.total_seconds(), repeat, now)


async def _members(conn: Conn, found: dict[GroupId, _Target]) -> dict[tuple[str, str, str], _Member]:
    keys = [(*key, fingerprint) for key, target in found.items() for fingerprint in target.alerts]
    cursor = await conn.execute(_MEMBERS, [list(c) for c in zip(*keys, strict=True)])
    return {(r, k, f): _Member(firing, told) for r, k, f, firing, told in await cursor.fetchall()}


async def _write(
    conn: Conn, puts: list[tuple[str, str, str, Alert, bool, bool, bool]], drops: list[tuple[str, str, str]],
    schedule: list[tuple[str, str, datetime]],
) -> None:  # fmt: skip
    if puts:
        rows = [(r, k, f, Jsonb(snapshot(alert)), firing, changed, told) for r, k, f, alert, firing, changed, told
                in puts]  # fmt: skip
        await conn.execute(_PUT_MEMBERS, [list(c) for c in zip(*rows, strict=True)])
    if drops:
        await conn.execute(_DROP_MEMBERS, [list(c) for c in zip(*drops, strict=True)])
    if schedule:
        await conn.execute(_SCHEDULE, [list(c) for c in zip(*schedule, strict=True)])


async def take_due(conn: Conn, receivers: Sequence[str], now: datetime) -> GroupId | None:
    """Lock the most overdue group of these receivers that nobody else holds (inside a transaction)."""
    cursor = await conn.execute(_TAKE_DUE, {"now": now, "receivers": list(receivers)})
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])


async def next_due(conn: Conn, receivers: Sequence[str]) -> datetime | None:
    """When the next group of these receivers is due (None: none is waiting)."""
    row = await (await conn.execute(_NEXT_DUE, (list(receivers),))).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class _Flushing:
    fingerprint: str
    alert: Alert
    firing: bool
    changed: bool
    told: bool
    suppressed: bool
    acknowledged: bool


async def flush(conn: Conn, config: RoutesConfig, group: GroupId, now: datetime) -> list[Message]:
    """The messages of a group that is due and locked by this transaction; what they tell is cleared, and the
    group is rescheduled (for its repeat) or deleted (when nothing is left in it)."""
    receiver_name, key = group
    receiver = config.receiver(receiver_name)
    row = await (await conn.execute(_GROUP, group)).fetchone()
    if receiver is None or row is None:
        return []  # a receiver this configuration does not know: left for one that does
    labels, repeat_s, notified_at = row
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(_FLUSH_MEMBERS, group)
    members = [_flushing(found) for found in await cursor.fetchall()]
    shown = sorted(
        (m for m in members if (m.firing and not m.suppressed) or (not m.firing and m.changed)),
        key=lambda m: sorted(m.alert.labels.items()),
    )
    news = [m for m in shown if m.changed]
    repeat_due = repeat_s is not None and (notified_at is None or now - notified_at >= timedelta(seconds=repeat_s))
    if not news and repeat_due:
        news = [m for m in shown if m.firing and not m.acknowledged]
    messages: list[Message] = []
    if news:
        told = tuple(m.alert for m in (news if per_alert(receiver) else shown))
        batches = [(alert,) for alert in told] if per_alert(receiver) else [told]
        messages = [
            Message(receiver, Notification(receiver_name, key, labels, batch, config.external_url)) for batch in batches
        ]
    await _after_flush(conn, group, shown if news else [], members, repeat_s, notified_at, now)
    return messages


def _flushing(row: dict[str, Any]) -> _Flushing:
    return _Flushing(
        row["fingerprint"], alert_from(row["alert"]), row["firing"], row["changed"], row["told"], row["suppressed"],
        row["acknowledged"],
    )  # fmt: skip


async def _after_flush(
    conn: Conn, group: GroupId, sent: list[_Flushing], members: list[_Flushing], repeat_s: float | None,
    notified_at: datetime | None, now: datetime,
) -> None:  # fmt: skip
    gone = [m.fingerprint for m in sent if not m.firing]
    told = [m.fingerprint for m in sent if m.firing]
    receiver, key = group
    if gone:
        await conn.execute(
            "delete from alert_group_alerts where receiver = %s and group_key = %s and fingerprint = any(%s)",
            (receiver, key, gone),
        )
    if told:
        await conn.execute(
            "update alert_group_alerts set changed = false, told = true"
            " where receiver = %s and group_key = %s and fingerprint = any(%s)",
            (receiver, key, told),
        )
    left = [m for m in members if m.fingerprint not in gone]
    if not left:
        await conn.execute("delete from alert_groups where receiver = %s and group_key = %s", group)
        return
    repeat_at = None
    if repeat_s is not None and any(m.firing for m in left):
        # From this message; with none sent, from the last one, unless that is past (everything acknowledged or
        # silenced): then from now, never a past time, which would have the group taken again at once.
        repeat = timedelta(seconds=repeat_s)
        last = None if sent else notified_at
        repeat_at = last + repeat if last is not None and last + repeat > now else now + repeat
    await conn.execute(
        "update alert_groups set flush_at = %s, notified_at = case when %s then %s else notified_at end"
        " where receiver = %s and group_key = %s",
        (repeat_at, bool(sent), now, receiver, key),
    )


def snapshot(alert: Alert) -> dict[str, Any]:
    """An alert as stored in its groups (JSON), so that a later message renders it as it was told."""
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "state": str(alert.state),
        "starts_at": alert.starts_at.isoformat(),
        "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
        "updated_at": alert.updated_at.isoformat() if alert.updated_at else None,
        "generator_url": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def alert_from(stored: Mapping[str, Any]) -> Alert:
    def moment(name: str) -> datetime | None:
        value = stored.get(name)
        return datetime.fromisoformat(value) if value else None

    starts_at = moment("starts_at")
    assert starts_at is not None, "every stored alert has a start"
    return Alert(
        labels=dict(stored["labels"]), annotations=dict(stored["annotations"]), state=State(stored["state"]),
        starts_at=starts_at, ends_at=moment("ends_at"), updated_at=moment("updated_at"),
        generator_url=stored.get("generator_url", ""), fingerprint=stored["fingerprint"],
    )  # fmt: skip
