"""`stocktrace verify`: an intact chain passes; edits, deletions, reordering and a cut tail are found by seq.

Tampering is done the way a superuser would: with triggers off (session_replication_role = replica).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from tracking import eventlog
from tracking.eventlog import Anchor, Engine
from tracking.eventlog_cli import verify

Conn = psycopg.Connection[Any]
AT = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
ENTRIES = 20
# Payloads whose jsonb text has escapes, non-ASCII, numbers as typed and nesting: the Python and SQL
# canonical forms must agree on every one.
PAYLOADS: list[dict[str, Any]] = [
    {"event": "arrived", "to_location": "dock-1", "direction": "in"},
    {"note": 'tab\there "quoted" \\ back', "temperature_c": 4.50, "n": 10**20},
    {"ort": "Kühlraum 3 — Süd", "readings": [{"at": "2025-03-01T08:00:00Z", "temperature_c": -18.25}]},
    {"children": ["3174257BF4499602D2000000"], "action": "ADD", "nested": {"b": [], "a": {}}},
]


@pytest.fixture
def chain(db: Conn) -> Iterator[Conn]:
    """ENTRIES entries in five transactions; yields the connection, tampering allowed on it."""
    for batch in range(5):
        with db.transaction():
            for i in range(ENTRIES // 5):
                n = batch * (ENTRIES // 5) + i
                eventlog.append(db, "movement", f"{n:024X}", AT + timedelta(minutes=n), PAYLOADS[n % len(PAYLOADS)])
    db.execute("set session_replication_role = replica")
    yield db
    db.execute("set session_replication_role = origin")


def _verify(db: Conn, *args: str) -> Result:
    return CliRunner().invoke(verify, ["--database-url", db.info.dsn, *args])


def _problems(report: eventlog.Report) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


def _head(db: Conn) -> Anchor:
    row = db.execute("select seq, hash from event_log_head").fetchone()
    assert row is not None
    return Anchor(row[1], row[0])


@pytest.mark.parametrize("engine", list(Engine))
def test_an_intact_chain_verifies(chain: Conn, engine: Engine) -> None:
    settings = chain.isolation_level, chain.read_only
    report = eventlog.verify(chain, engine=engine)
    assert (chain.isolation_level, chain.read_only) == settings  # the snapshot's settings do not stay behind
    assert report.intact, report.problems
    assert (report.entries, report.first_seq, report.last_seq, report.head_seq) == (ENTRIES, 1, ENTRIES, ENTRIES)


def test_the_command_prints_the_head_to_anchor_and_exits_0(chain: Conn) -> None:
    result = _verify(chain)
    assert result.exit_code == 0, result.output
    assert f"{ENTRIES} entries checked" in result.output
    assert f"head: {_head(chain)}" in result.output
    assert _verify(chain, "--expect-head", str(_head(chain))).exit_code == 0


@pytest.mark.parametrize("engine", list(Engine))
def test_an_edited_payload_is_found_at_its_seq(chain: Conn, engine: Engine) -> None:
    chain.execute("""update event_log set payload = payload || '{"to_location": "elsewhere"}' where seq = 7""")
    report = eventlog.verify(chain, engine=engine)
    assert _problems(report) == [(7, "edited")]
    assert report.first_problem_seq == 7


def test_an_edited_time_kind_or_subject_is_found(chain: Conn) -> None:
    chain.execute("update event_log set event_time = event_time + interval '1 second' where seq = 3")
    chain.execute("update event_log set kind = 'inventory' where seq = 9")
    chain.execute("update event_log set subject = 'someone-else' where seq = 15")
    assert _problems(eventlog.verify(chain)) == [(3, "edited"), (9, "edited"), (15, "edited")]


def test_an_edited_entry_with_a_recomputed_hash_breaks_the_next_link(chain: Conn) -> None:
    chain.execute("""update event_log set payload = '{"event": "departed"}' where seq = 7""")
    chain.execute(
        "update event_log set hash = sha256(prev_hash || convert_to("
        "event_log_canonical(seq, recorded_at, event_time, kind, subject, payload), 'UTF8')) where seq = 7"
    )
    assert _problems(eventlog.verify(chain)) == [(8, "broken_link")]


@pytest.mark.parametrize("engine", list(Engine))
def test_deleted_entries_are_found(chain: Conn, engine: Engine) -> None:
    chain.execute("delete from event_log where seq in (5, 11, 12, 13)")
    report = eventlog.verify(chain, engine=engine)
    assert _problems(report) == [(5, "missing"), (11, "missing")]
    assert "entries 11..13 are missing" in report.problems[1].detail


def test_a_deleted_first_entry_is_found(chain: Conn) -> None:
    chain.execute("delete from event_log where seq = 1")
    assert _problems(eventlog.verify(chain)) == [(1, "missing")]


def test_reordered_entries_are_found(chain: Conn) -> None:
    for old, new in ((4, 1004), (5, 4), (1004, 5)):
        chain.execute("update event_log set seq = %s where seq = %s", (new, old))
    problems = _problems(eventlog.verify(chain))
    assert problems == [(4, "broken_link"), (4, "edited"), (5, "broken_link"), (5, "edited"), (6, "broken_link")]


def test_a_cut_tail_is_found_against_the_head(chain: Conn) -> None:
    chain.execute(f"delete from event_log where seq > {ENTRIES - 3}")
    report = eventlog.verify(chain)
    assert _problems(report) == [(ENTRIES - 2, "truncated")]
    assert f"entries {ENTRIES - 2}..{ENTRIES} are missing from the end" in report.problems[0].detail


def test_a_tail_cut_with_its_head_is_found_only_against_a_head_kept_elsewhere(chain: Conn) -> None:
    kept = _head(chain)
    chain.execute(f"delete from event_log where seq > {ENTRIES - 3}")
    chain.execute(
        f"update event_log_head set seq = {ENTRIES - 3}, hash = (select hash from event_log where seq = {ENTRIES - 3})"
    )
    assert eventlog.verify(chain).intact  # from inside, a shorter chain is a valid chain
    result = _verify(chain, "--expect-head", str(kept))
    assert result.exit_code == 1
    assert "does not contain the expected head" in result.output


def test_a_head_kept_earlier_is_still_found_after_more_appends(chain: Conn) -> None:
    kept = _head(chain)
    chain.execute("set session_replication_role = origin")
    with chain.transaction():
        eventlog.append(chain, "inventory", "later", AT, {})
    assert eventlog.verify(chain, anchor=kept).intact
    assert eventlog.verify(chain, anchor=Anchor(kept.hash)).intact
    assert not eventlog.verify(chain, anchor=Anchor(kept.hash, ENTRIES - 1)).intact


def test_an_entry_slipped_in_past_the_head_is_found(chain: Conn) -> None:
    prev = _head(chain).hash
    text = eventlog.canonical_text(
        ENTRIES + 1, "2099-03-02T00:00:00.000000Z", "2099-03-02T00:00:00.000000Z", "movement", "X", "{}"
    )
    chain.execute(
        "insert into event_log values (%s, '2099-03-02Z', '2099-03-02Z', 'movement', 'X', '{}', %s, %s)",
        (ENTRIES + 1, prev, hashlib.sha256(prev + text.encode()).digest()),
    )
    assert _problems(eventlog.verify(chain)) == [(ENTRIES + 1, "head_behind")]


def test_from_checks_only_the_entries_from_that_seq_on(chain: Conn) -> None:
    chain.execute("""update event_log set payload = '{}' where seq in (3, 12)""")
    report = eventlog.verify(chain, from_seq=10)
    assert (report.entries, _problems(report)) == (ENTRIES - 9, [(12, "edited")])
    chain.execute("delete from event_log where seq = 9")
    assert _problems(eventlog.verify(chain, from_seq=10)) == [(9, "missing"), (12, "edited")]


def test_the_command_reports_every_problem_and_exits_1(chain: Conn) -> None:
    chain.execute("""update event_log set payload = '{}' where seq = 6""")
    chain.execute("delete from event_log where seq = 14")
    result = _verify(chain)
    assert result.exit_code == 1
    assert "NOT INTACT: 2 problem(s), the first at seq 6" in result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["seq", "6", "edited"] for line in lines)
    assert any("entry 14 is missing" in line for line in lines)


def test_the_command_prints_json(chain: Conn) -> None:
    chain.execute("delete from event_log where seq = 2")
    result = _verify(chain, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert (report["intact"], report["entries"], report["first_problem_seq"]) == (False, ENTRIES - 1, 2)
    assert report["head"] == {"seq": ENTRIES, "hash": _head(chain).hash.hex()}
    assert report["problems"] == [{"seq": 2, "kind": "missing", "detail": "entry 2 is missing: deleted from the log"}]


def test_the_command_exits_2_when_it_cannot_check(db: Conn) -> None:
    assert _verify(db, "--expect-head", "not-a-hash").exit_code == 2
    result = CliRunner().invoke(verify, ["--database-url", "postgresql:///stocktrace_no_such_database"])
    assert result.exit_code == 2
    assert "cannot read the event log" in result.output
