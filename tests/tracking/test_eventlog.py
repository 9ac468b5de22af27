"""The event log as writers see it: what an entry holds and hashes, who can append, and appends under load."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tracking import eventlog

Conn = psycopg.Connection[Any]
AT = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def _entries(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute(
        "select seq, recorded_at, event_time, kind, subject, payload, prev_hash, hash from event_log order by seq"
    ).fetchall()


def _registry(db: Conn) -> None:
    db.execute(
        "insert into locations (id, site_id, parent_id, kind, timezone) values"
        " ('dc-1', 'dc-1', null, 'site', 'Europe/Berlin'), ('dock-1', 'dc-1', 'dc-1', 'dock_door', null)"
    )


def test_an_entry_hashes_its_predecessor_and_its_canonical_text(db: Conn) -> None:
    with db.transaction():
        eventlog.append(db, "inventory", "cc-7", AT, {"b": 1, "a": [1.50, 'x\n"y"'], "é": True})
    ((seq, recorded_at, event_time, kind, subject, _, prev_hash, stored),) = _entries(db)
    # jsonb prints keys by length, then bytes ("é" is two bytes), with one space after ':' and ','.
    text = (
        f"1\n{eventlog.utc_text(recorded_at)}\n2025-03-01T08:00:00.123456Z\ninventory\ncc-7\n"
        '{"a": [1.5, "x\\n\\"y\\""], "b": 1, "é": true}'
    )
    assert (seq, event_time, kind, subject, prev_hash) == (1, AT, "inventory", "cc-7", eventlog.GENESIS)
    assert stored == hashlib.sha256(eventlog.GENESIS + text.encode()).digest()
    assert db.execute(
        "select event_log_canonical(seq, recorded_at, event_time, kind, subject, payload) from event_log"
    ).fetchone() == (text,)


def test_entries_chain_in_order_and_the_head_follows(db: Conn) -> None:
    for n in range(3):
        with db.transaction():
            eventlog.append(db, "inventory", f"cc-{n}", AT, {"n": n})
    rows = _entries(db)
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[6] for r in rows[1:]] == [r[7] for r in rows[:-1]]
    assert db.execute("select seq, hash from event_log_head").fetchone() == (3, rows[-1][7])


def test_a_recorded_movement_is_in_the_log_in_the_same_transaction(db: Conn) -> None:
    _registry(db)
    db.execute(
        "insert into location_events (at, epc, kind, from_location, to_location, direction)"
        " values (%s, '3074257BF7194E4000001A85', 'arrived', null, 'dock-1', 'in')",
        (AT,),
    )
    ((seq, _, event_time, kind, subject, payload, _, _),) = _entries(db)
    assert (seq, event_time, kind, subject) == (1, AT, "movement", "3074257BF7194E4000001A85")
    assert payload == {"event": "arrived", "to_location": "dock-1", "to_site": "dc-1", "direction": "in"}


def test_container_changes_are_aggregations_per_container_and_time(db: Conn) -> None:
    db.execute(
        "insert into container_changes (at, container_epc, item_epc, action, source) values"
        " (%(at)s, 'P1', 'I2', 'add', 'api'), (%(at)s, 'P1', 'I1', 'add', 'api'),"
        " (%(at)s, 'P2', 'I3', 'delete', 'inferred')",
        {"at": AT},
    )
    assert [(r[3], r[4], r[5]) for r in _entries(db)] == [
        ("aggregation", "P1", {"action": "ADD", "children": ["I1", "I2"], "source": "api"}),
        ("aggregation", "P2", {"action": "DELETE", "children": ["I3"], "source": "inferred"}),
    ]


def test_a_rolled_back_append_leaves_no_entry_and_no_gap(db: Conn) -> None:
    with db.transaction() as tx:
        eventlog.append(db, "inventory", "cc-1", AT, {})
        db.execute("insert into location_events (at, epc, kind, to_location) values (%s, 'AB', 'arrived', 'x')", (AT,))
        raise psycopg.Rollback(tx)
    with db.transaction():
        eventlog.append(db, "inventory", "cc-2", AT, {})
    assert [(r[0], r[4]) for r in _entries(db)] == [(1, "cc-2")]


def test_a_bad_event_fails_the_statement_that_queued_it(db: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        eventlog.append(db, "Movement!", "cc-1", AT, {})
    with pytest.raises(psycopg.errors.CheckViolation):
        eventlog.append(db, "inventory", "two\nlines", AT, {})
    assert _entries(db) == []


def test_entries_cannot_be_changed_or_removed_even_by_the_owner(db: Conn) -> None:
    with db.transaction():
        eventlog.append(db, "inventory", "cc-1", AT, {})
    for statement in ("update event_log set payload = '{}'", "delete from event_log where seq = 1"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            db.execute(statement)
    assert len(_entries(db)) == 1


@pytest.fixture
def app_role(db: Conn) -> Iterator[str]:
    """A role with the grants the migration documents for an application role that does not own the tables."""
    role = f"stocktrace_eventlog_test_{os.getpid()}"
    db.execute(f"drop role if exists {role}")
    db.execute(f"create role {role} nologin")
    db.execute(f"grant select on event_log, event_log_head to {role}")
    db.execute(f"grant execute on function event_log_append(text, text, timestamptz, jsonb) to {role}")
    yield role
    db.execute("reset role")
    db.execute(f"drop owned by {role}")
    db.execute(f"drop role {role}")


def test_an_application_role_appends_and_can_do_nothing_else(db: Conn, app_role: str) -> None:
    db.execute(f"set role {app_role}")
    with db.transaction():
        eventlog.append(db, "inventory", "cc-1", AT, {"counted": 3})
    assert [r[0] for r in _entries(db)] == [1]
    for statement in (
        "update event_log set payload = '{}'",
        "delete from event_log",
        "truncate event_log",
        "insert into event_log select * from event_log",
        "update event_log_head set seq = 0",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(statement)


def test_truncate_is_refused_to_a_role_that_is_not_superuser_even_with_the_privilege(db: Conn, app_role: str) -> None:
    db.execute(f"grant truncate on event_log to {app_role}")
    db.execute(f"set role {app_role}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE"):
        db.execute("truncate event_log")


def test_a_truncated_log_and_head_start_a_new_chain(db: Conn) -> None:
    with db.transaction():
        eventlog.append(db, "inventory", "cc-1", AT, {})
    db.execute("truncate event_log, event_log_head")
    with db.transaction():
        eventlog.append(db, "inventory", "cc-2", AT, {})
    assert [(r[0], r[6]) for r in _entries(db)] == [(1, eventlog.GENESIS)]


def test_concurrent_transactions_make_one_gapless_chain_in_commit_order(dsn: str, db: Conn) -> None:
    def writer(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(15):
                with conn.transaction() as tx:
                    for k in range(1 + i % 3):
                        eventlog.append(conn, "inventory", f"w{n}-{i}-{k}", AT, {"writer": n})
                    if i % 5 == 4:
                        raise psycopg.Rollback(tx)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = _entries(db)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == 4 * sum(1 + i % 3 for i in range(15) if i % 5 != 4)
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    assert eventlog.verify(db).intact


def _wait_until_blocked(db: Conn, pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = db.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
        if row == ("Lock",):
            return
        time.sleep(0.02)
    raise AssertionError("the first transaction never waited for the row lock")


def test_the_head_is_locked_at_commit_so_crossing_transactions_do_not_deadlock(dsn: str, db: Conn) -> None:
    """With the head locked at the append, this order deadlocks: a holds the head and waits for b's row,
    b waits for the head. Locked at commit, b commits first and a follows."""
    _registry(db)
    with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b:
        b.execute("update locations set name = 'b' where id = 'dc-1'")
        eventlog.append(a, "inventory", "a", AT, {})
        errors: list[BaseException] = []

        def a_takes_the_row() -> None:
            try:
                a.execute("update locations set name = 'a' where id = 'dc-1'")
                a.commit()
            except psycopg.Error as exc:  # the deadlock this test is about
                errors.append(exc)

        a_pid = a.info.backend_pid
        thread = threading.Thread(target=a_takes_the_row)
        thread.start()
        _wait_until_blocked(db, a_pid)
        eventlog.append(b, "inventory", "b", AT, {})
        b.commit()
        thread.join(timeout=10)
    assert errors == []
    assert [r[4] for r in _entries(db)] == ["b", "a"]
    assert db.execute("select name from locations where id = 'dc-1'").fetchone() == ("a",)


def test_appends_of_one_transaction_keep_their_order_and_share_the_commit(db: Conn) -> None:
    with db.transaction():
        for n in range(500):
            eventlog.append(db, "inventory", f"cc-{n}", AT + timedelta(seconds=n), {"n": n})
        assert _entries(db) == []  # sealed at commit, not before
    rows = _entries(db)
    assert [r[4] for r in rows] == [f"cc-{n}" for n in range(500)]
    assert db.execute("select count(*) from event_log_queue").fetchone() == (0,)
