"""The transactional outbox: alert changes become deliveries in the caller's transaction.

The evaluator calls ``enqueue`` inside the transaction that records its alert changes, so the change and what
is owed to each receiver commit together or not at all; the delivery worker (alerts/delivery.py) sends them
afterwards. Each change is routed (alerts/routes.py) into its receivers' groups (alerts/groups.py); a group
that is due at once (no group_wait for a new group, group_interval passed for a known one) is flushed right
here, rendered into the receiver's own format and inserted as a delivery numbered in the receiver's lane.
Groups that must wait are flushed by the delivery worker when they are due (``flush_due``), the same way.

What is worth telling: an alert that fires (first time or a repeat) and one that resolves after it fired. A
pending alert, and one that resolves without ever having fired, reached nobody and stays silent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from alerts import groups
from alerts.groups import Message, label_set, worth_telling
from alerts.model import AlertChange
from alerts.routes import RoutesConfig, current_routes
from alerts.sinks import render
from alerts.sinks.base import json_body

__all__ = ["NOTIFY_CHANNEL", "enqueue", "flush_due", "label_set", "worth_telling"]

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


async def enqueue(
    conn: psycopg.AsyncConnection[Any], changes: Sequence[AlertChange], *, routes: RoutesConfig | None = None,
    now: datetime | None = None,
) -> None:  # fmt: skip
    """Add these changes to their groups, and the deliveries of the groups due by ``now`` (default: the wall
    clock) to the outbox, in ``conn``'s current transaction.

    ``routes`` defaults to the file named by $STOCKTRACE_ALERT_ROUTES_FILE. Without either, nothing is owed to
    anyone: the changes are recorded by the caller and no delivery is made.
    """
    config = routes if routes is not None else current_routes()
    if config is None:
        _warn_unrouted()
        return
    if not any(map(worth_telling, changes)):
        return
    now = now or datetime.now(UTC)
    async with _in_transaction(conn):
        due = await groups.record(conn, config, changes, now)
        messages = [message for group in due for message in await groups.flush(conn, config, group, now)]
        await _insert(conn, messages)
        # Also when every group waits: a worker sleeping until the next group is due learns of an earlier one.
        await conn.execute("select pg_notify(%s, '')", (NOTIFY_CHANNEL,))


async def flush_due(conn: psycopg.AsyncConnection[Any], config: RoutesConfig, now: datetime) -> int | None:
    """Flush one group of ``config``'s receivers that is due by ``now`` and that no one else is flushing, in a
    transaction of its own (``conn`` is in autocommit mode); returns the deliveries it made, or None when no
    group was due."""
    receivers = [receiver.name for receiver in config.receivers]
    async with conn.transaction():
        group = await groups.take_due(conn, receivers, now)
        if group is None:
            return None
        messages = await groups.flush(conn, config, group, now)
        await _insert(conn, messages)
        if messages:
            await conn.execute("select pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return len(messages)


async def _insert(conn: psycopg.AsyncConnection[Any], messages: Sequence[Message]) -> None:
    """The deliveries of these messages, numbered in their receivers' lanes in this order."""
    if not messages:
        return
    counts = Counter(message.receiver.name for message in messages)
    names = sorted(counts)
    async with conn.cursor() as cursor:
        await cursor.execute(_ALLOCATE, (names, [counts[name] for name in names]))
        next_seq = {name: last - counts[name] + 1 for name, last in await cursor.fetchall()}
        rows = []
        for message in messages:
            seq = next_seq[message.receiver.name]
            next_seq[message.receiver.name] = seq + 1
            rows.append(_row(message, seq))
        await cursor.executemany(_INSERT, rows)


def _in_transaction(conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[object]:
    """The caller's transaction; a transaction of our own only on an autocommit connection outside one, so that
    the lane counters and the deliveries still go in together. (``conn.transaction()`` on an idle connection
    that is not autocommit would BEGIN and COMMIT on its own, apart from the caller's later writes.)"""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        return conn.transaction()
    return contextlib.nullcontext()


def _row(message: Message, seq: int) -> tuple[object, ...]:
    notification = message.notification
    fingerprints = [alert.fingerprint for alert in notification.alerts]
    body = json_body(render(message.receiver, notification))
    return (message.receiver.name, seq, message.receiver.type, notification.group_key, notification.status,
            fingerprints, body)  # fmt: skip


@functools.cache
def _warn_unrouted() -> None:
    # Cached: one warning per process, not one per evaluation.
    log.warning("alert changes are not delivered: $STOCKTRACE_ALERT_ROUTES_FILE is not set")
