"""The transactional outbox: alert changes become deliveries in the caller's transaction.

The evaluator calls ``enqueue`` inside the transaction that records its alert changes, so the change and what
is owed to each receiver commit together or not at all; the delivery worker (alerts/delivery.py) sends them
afterwards. Each change is routed (alerts/routes.py), grouped per receiver and group, rendered into the
receiver's own format, and inserted as one delivery per receiver and group, numbered in the receiver's lane.

What is worth telling: an alert that fires (first time or a repeat) and one that resolves after it fired. A
pending alert, and one that resolves without ever having fired, reached nobody and stays silent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from alerts.model import Alert, AlertChange, State
from alerts.routes import Receiver, RoutesConfig, current_routes, destinations, group_labels
from alerts.sinks import per_alert, render
from alerts.sinks.base import Notification, json_body

log = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "stocktrace_deliveries"

_ALLOCATE = """
    insert into delivery_lanes as lane (receiver, last_seq)
    select receiver, count from unnest(%s::text[], %s::bigint[]) as wanted (receiver, count) order by receiver
    on conflict (receiver) do update set last_seq = lane.last_seq + excluded.last_seq
    returning receiver, last_seq
"""
_INSERT = """
    insert into deliveries (receiver, seq, kind, group_key, status, fingerprints, payload)
    values (%s, %s, %s, %s, %s, %s, %s::json)
"""


@dataclass(frozen=True, slots=True)
class Planned:
    """A delivery to be: a receiver and what it will be told."""

    receiver: Receiver
    notification: Notification

    @property
    def body(self) -> str:
        return json_body(render(self.receiver, self.notification))


def worth_telling(change: AlertChange) -> bool:
    state = change.alert.state
    return state is State.FIRING or (state is State.RESOLVED and change.previous is State.FIRING)


def plan(config: RoutesConfig, changes: Sequence[AlertChange]) -> list[Planned]:
    """The deliveries these changes make, in the order of the changes that open each group."""
    groups: dict[tuple[str, str], tuple[dict[str, str], dict[str, Alert]]] = {}
    for change in filter(worth_telling, changes):
        alert = change.alert
        for destination in destinations(config, alert.labels):
            labels = group_labels(alert.labels, destination.group_by)
            key = f"{destination.route_key}:{label_set(labels)}"
            # A later change of the same alert in the same batch supersedes the earlier one.
            groups.setdefault((destination.receiver, key), (labels, {}))[1][alert.fingerprint] = alert
    planned: list[Planned] = []
    for (name, key), (labels, alerts) in groups.items():
        receiver = config.receiver(name)
        assert receiver is not None, "RoutesConfig checks that routes name known receivers"
        batches = [(alert,) for alert in alerts.values()] if per_alert(receiver) else [tuple(alerts.values())]
        planned += [Planned(receiver, Notification(name, key, labels, batch, config.external_url)) for batch in batches]
    return planned


def label_set(labels: dict[str, str]) -> str:
    """Prometheus' LabelSet.String(): sorted ``name="value"`` pairs, comma and space separated, in braces."""
    pairs = (f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in sorted(labels.items()))
    return "{" + ", ".join(pairs) + "}"


async def enqueue(
    conn: psycopg.AsyncConnection[Any], changes: Sequence[AlertChange], *, routes: RoutesConfig | None = None
) -> None:
    """Add the deliveries these changes make to the outbox, in ``conn``'s current transaction.

    ``routes`` defaults to the file named by $STOCKTRACE_ALERT_ROUTES_FILE. Without either, nothing is owed to
    anyone: the changes are recorded by the caller and no delivery is made.
    """
    config = routes if routes is not None else current_routes()
    if config is None:
        _warn_unrouted()
        return
    planned = plan(config, changes)
    if not planned:
        return
    counts = Counter(item.receiver.name for item in planned)
    names = sorted(counts)
    async with _in_transaction(conn), conn.cursor() as cursor:
        await cursor.execute(_ALLOCATE, (names, [counts[name] for name in names]))
        next_seq = {name: last - counts[name] + 1 for name, last in await cursor.fetchall()}
        rows = []
        for item in planned:
            seq = next_seq[item.receiver.name]
            next_seq[item.receiver.name] = seq + 1
            rows.append(_row(item, seq))
        await cursor.executemany(_INSERT, rows)
        await cursor.execute("select pg_notify(%s, '')", (NOTIFY_CHANNEL,))


def _in_transaction(conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[object]:
    """The caller's transaction; a transaction of our own only on an autocommit connection outside one, so that
    the lane counters and the deliveries still go in together. (``conn.transaction()`` on an idle connection
    that is not autocommit would BEGIN and COMMIT on its own, apart from the caller's later writes.)"""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        return conn.transaction()
    return contextlib.nullcontext()


def _row(item: Planned, seq: int) -> tuple[object, ...]:
    notification = item.notification
    fingerprints = [alert.fingerprint for alert in notification.alerts]
    return (
        item.receiver.name,
        seq,
        item.receiver.type,
        notification.group_key,
        notification.status,
        fingerprints,
        item.body,
    )


@functools.cache
def _warn_unrouted() -> None:
    # Cached: one warning per process, not one per evaluation.
    log.warning("alert changes are not delivered: $STOCKTRACE_ALERT_ROUTES_FILE is not set")
