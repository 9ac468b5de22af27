"""The hash-chained event log (stocktrace/migrations/0220_event_log.sql): appending to it, and checking it.

Each entry's hash is ``sha256(prev_hash || utf8(canonical text))``; the migration describes the canonical text.
``verify`` walks the chain in seq order through a server-side cursor and reports every entry whose content no
longer matches its hash (edited), every seq missing (deleted), every link that no longer joins (re-hashed,
replaced or reordered entries) and a tail shorter than the head says. A tail cut off together with its head, or
a chain re-hashed from some entry on, looks intact from the inside: only a head hash kept elsewhere
(``--expect-head``) shows that.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

GENESIS: Final = bytes(32)
"""The prev_hash of the first entry."""

MAX_LISTED_PROBLEMS: Final = 1000
"""A chain rewritten wholesale has a problem per entry; beyond this many they are counted, not listed."""

# The same text form of a time as the migration's event_log_canonical(): UTC, microseconds, "Z".
_SQL_TIME: Final = """to_char({} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_RECORDED_AT: Final = _SQL_TIME.format("recorded_at")
_EVENT_TIME: Final = _SQL_TIME.format("event_time")

# Python recomputes each hash from the stored fields; the database only formats the times and the jsonb.
_PYTHON_ROWS: Final = (
    f"select seq, {_RECORDED_AT}, {_EVENT_TIME}, kind, subject, payload::text, prev_hash, hash"
    " from event_log where seq >= %s order by seq"
)
# The database recomputes each hash. The expression is written out here rather than calling
# event_log_canonical(), so that a function replaced in the database cannot hide an edit.
_SQL_ROWS: Final = (
    "select seq, prev_hash, hash,"
    " hash = sha256(prev_hash || convert_to(concat_ws(E'\\n', seq::text,"
    f" {_RECORDED_AT}, {_EVENT_TIME}, kind, subject, payload::text), 'UTF8'))"
    " from event_log where seq >= %s order by seq"
)
_FETCH_ROWS: Final = 10_000
_ANCHOR: Final = re.compile(r"^(?:(\d+):)?([0-9a-fA-F]{64})$")


def canonical_text(seq: int, recorded_at: str, event_time: str, kind: str, subject: str, payload: str) -> str:
    """The text an entry's hash covers; times as ``utc_text`` gives them, payload as jsonb prints it."""
    return f"{seq}\n{recorded_at}\n{event_time}\n{kind}\n{subject}\n{payload}"


def entry_hash(prev_hash: bytes, text: str) -> bytes:
    return hashlib.sha256(prev_hash + text.encode()).digest()


def utc_text(at: datetime) -> str:
    """A time as the canonical text has it, e.g. ``2025-03-01T08:00:00.000000Z``."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def append(
    conn: psycopg.Connection[Any], kind: str, subject: str, event_time: datetime, payload: Mapping[str, Any]
) -> None:
    """Queue an event on ``conn``'s transaction; it is chained, and gets its seq, when that transaction commits."""
    conn.execute("select event_log_append(%s, %s, %s, %s)", (kind, subject, event_time, Jsonb(dict(payload))))


class Engine(StrEnum):
    """Where ``verify`` recomputes the hashes: in this process, or in the database."""

    PYTHON = "python"
    SQL = "sql"


@dataclass(frozen=True, slots=True)
class Anchor:
    """A head hash kept outside the database; ``seq`` is None when only the hash was kept."""

    hash: bytes
    seq: int | None = None

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQ:HASH`` or ``HASH``, the hash as 64 hex digits (what ``verify`` prints as the head)."""
        match = _ANCHOR.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not SEQ:HASH or a 64-digit hex SHA-256")
        seq = int(match[1]) if match[1] else None
        return cls(bytes.fromhex(match[2]), seq)

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash.hex()}" if self.seq is not None else self.hash.hex()


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int
    kind: str
    """edited, missing, broken_link, truncated, head_behind, head_mismatch, head_missing or anchor.

    Reordered entries show as edited (seq is part of what is hashed) with broken links around them."""
    detail: str


@dataclass(slots=True)
class Report:
    """What ``verify`` found: intact when ``problems_total`` is 0."""

    from_seq: int
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int | None = None
    head_hash: bytes | None = None
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0
    elapsed_s: float = 0.0

    @property
    def intact(self) -> bool:
        return self.problems_total == 0

    @property
    def first_problem_seq(self) -> int | None:
        return min((p.seq for p in self.problems), default=None)

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "from_seq": self.from_seq,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": None if self.head_seq is None else {"seq": self.head_seq, "hash": _hex(self.head_hash)},
            "first_problem_seq": self.first_problem_seq,
            "problems_total": self.problems_total,
            "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in self.problems],
            "elapsed_s": round(self.elapsed_s, 3),
            "entries_per_s": round(self.entries_per_s),
        }


Progress = Callable[[int, int], None]
"""Called now and then during a walk with (entries checked, last seq)."""

_Row = tuple[int, bytes, bytes, bool]  # seq, prev_hash, hash, hash matches content


def verify(
    conn: psycopg.Connection[Any],
    *,
    from_seq: int = 1,
    anchor: Anchor | None = None,
    engine: Engine = Engine.PYTHON,
    progress: Progress | None = None,
) -> Report:
    """Walk the chain from ``from_seq`` to its end in one snapshot. ``conn`` must not be in a transaction."""
    started = time.perf_counter()
    walk = _Walk(Report(from_seq=from_seq), anchor)
    with _snapshot(conn):
        walk.start(*_entry_before(conn, from_seq))
        if anchor is not None and anchor.seq is not None and anchor.seq < from_seq:
            walk.anchor_seen = _hash_at(conn, anchor.seq) == anchor.hash
        with conn.cursor(name="event_log_verify", binary=True) as cursor:
            cursor.execute(_PYTHON_ROWS if engine is Engine.PYTHON else _SQL_ROWS, (from_seq,))
            for batch in _python_rows(cursor) if engine is Engine.PYTHON else _sql_rows(cursor):
                walk.check(batch)
                if progress is not None:
                    progress(walk.report.entries, walk.prev_seq)
        head = conn.execute("select seq, hash from event_log_head").fetchone()
    walk.finish(head)
    walk.report.elapsed_s = time.perf_counter() - started
    return walk.report


@contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction, so that the entries and the head are seen at one instant."""
    saved = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level, conn.read_only = saved


def _entry_before(conn: psycopg.Connection[Any], from_seq: int) -> tuple[int, bytes]:
    """The seq and hash the walk links its first entry to: the entry before ``from_seq``, or the genesis."""
    row = conn.execute(
        "select seq, hash from event_log where seq < %s order by seq desc limit 1", (from_seq,)
    ).fetchone()
    return (row[0], bytes(row[1])) if row is not None else (0, GENESIS)


def _hash_at(conn: psycopg.Connection[Any], seq: int) -> bytes | None:
    row = conn.execute("select hash from event_log where seq = %s", (seq,)).fetchone()
    return bytes(row[0]) if row is not None else None


def _python_rows(cursor: psycopg.ServerCursor[Any]) -> Iterator[list[_Row]]:
    sha256 = hashlib.sha256
    while batch := cursor.fetchmany(_FETCH_ROWS):
        yield [
            (seq, prev, stored, sha256(prev + f"{seq}\n{at}\n{ev}\n{kind}\n{subj}\n{doc}".encode()).digest() == stored)
            for seq, at, ev, kind, subj, doc, prev, stored in batch
        ]


def _sql_rows(cursor: psycopg.ServerCursor[Any]) -> Iterator[list[_Row]]:
    while batch := cursor.fetchmany(_FETCH_ROWS):
        yield batch


class _Walk:
    """The chain's invariants, checked entry by entry against the one before."""

    def __init__(self, report: Report, anchor: Anchor | None) -> None:
        self.report = report
        self.prev_seq, self.prev_hash = 0, GENESIS
        self.anchor = anchor
        self.anchor_seen = False

    def start(self, prev_seq: int, prev_hash: bytes) -> None:
        """Link the first entry walked to this one (the entry before it, or the genesis)."""
        self.prev_seq, self.prev_hash = prev_seq, prev_hash

    def check(self, rows: list[_Row]) -> None:
        for seq, prev_hash, stored, matches in rows:
            if seq != self.prev_seq + 1:
                self._missing(seq)
            elif prev_hash != self.prev_hash:
                self._broken_link(seq)
            if not matches:
                self._problem(seq, "edited", "its content no longer matches its hash: the entry was edited")
            if self.anchor is not None and stored == self.anchor.hash and self.anchor.seq in (None, seq):
                self.anchor_seen = True
            self.prev_seq, self.prev_hash = seq, stored
        if rows:
            self.report.first_seq = self.report.first_seq or rows[0][0]
            self.report.last_seq = rows[-1][0]
            self.report.entries += len(rows)

    def finish(self, head: tuple[int, bytes] | None) -> None:
        last = self.report.last_seq if self.report.last_seq is not None else self.prev_seq
        if head is None:
            if last:
                self._problem(last, "head_missing", "the chain's head row is gone: entries after it may be too")
        else:
            self._check_head(last, head[0], bytes(head[1]))
        if self.anchor is not None and not self.anchor_seen:
            detail = f"the chain does not contain the expected head {self.anchor}: it was rewritten or cut before it"
            self._problem(self.anchor.seq or last, "anchor", detail)

    def _check_head(self, last: int, head_seq: int, head_hash: bytes) -> None:
        self.report.head_seq, self.report.head_hash = head_seq, head_hash
        if head_seq > last:
            detail = f"entries {last + 1}..{head_seq} are missing from the end (the head records seq {head_seq})"
            self._problem(last + 1, "truncated", detail)
        elif head_seq < last:
            detail = f"the log goes on past the head (seq {head_seq}): entries {head_seq + 1}..{last} did not"
            self._problem(
                head_seq + 1, "head_behind", f"{detail} come through event_log_append, or the head was edited"
            )
        elif head_hash != self.prev_hash:
            self._problem(last, "head_mismatch", f"the head's hash is not seq {last}'s: one of them was edited")

    def _broken_link(self, seq: int) -> None:
        detail = f"its prev_hash is not the hash of seq {self.prev_seq}: that entry was edited and re-hashed, or"
        self._problem(seq, "broken_link", f"{detail} entries were replaced or reordered")

    def _missing(self, seq: int) -> None:
        first = self.prev_seq + 1
        which = f"entry {first} is" if first == seq - 1 else f"entries {first}..{seq - 1} are"
        self._problem(first, "missing", f"{which} missing: deleted from the log")

    def _problem(self, seq: int, kind: str, detail: str) -> None:
        self.report.add(Problem(seq, kind, detail))


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None
