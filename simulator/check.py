"""``simulate --check``: compare the ground truth of a run with what stocktrace stored.

- Ingest completeness: every tag read the simulator published (in a format stocktrace has a decoder for) must
  be in ``rfid_reads`` under its natural key (EPC, device time, antenna); duplicates count once. Dead letters
  received during the run are counted.
- Location accuracy, once tracking provides ``item_locations(epc, location_id, since)``: the share of items
  whose latest location there equals where the item really is at the end of the run.
- Alert precision, recall and detection latency per fault type; a variance detects a fault about one product
  (a misplaced unit, a wrong book count) only when it is about that product. An alert is an episode that fired, as the
  event log records it (each time an alert starts firing; the ``alerts`` table keeps only the latest episode
  of each rule and subject, and pending alerts that never fired told nobody), recorded since the run began and
  active within it. Alerts that begin after the run's end (devices that fall silent when the simulator stops)
  are reported apart and not counted. Before counting, the check waits for the evaluator to judge the data
  ingested: one evaluation after ingest settled, or on the device clock one that no longer moves.

What stocktrace does not provide yet is reported as not available, never estimated.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from devices.decoders import DECODERS
from simulator.run import RunResult
from simulator.truth import FaultRecord, iso

READER_FORMATS = ("zebra-fx", "impinj-r700", "native")
POLL_S = 0.5
SKEW_MARGIN_S = 3600.0
ALERT_GRACE_S = 1800.0
ALERT_EARLY_S = 120.0

# Which alerts count as detecting which fault: words one of which must appear in the alert's rule or kind.
FAULT_ALERT_WORDS: dict[str, tuple[str, ...]] = {
    "shrink": ("shrink", "missing", "left", "theft", "lost", "variance"),
    "misplaced_item": ("misplac", "variance", "location", "wrong"),
    "cold_room_door_open": ("excursion", "temperature", "cold", "range", "breach"),
    "reefer_failure": ("excursion", "temperature", "cold", "range", "breach", "reefer"),
    "reader_offline": ("offline", "stale", "device", "silent"),
    "sensor_battery_dying": ("battery", "stale", "offline", "silent"),
    "wrong_book_count": ("variance", "book", "count"),
}
_KIND_COLUMNS = ("rule", "rule_name", "alertname", "kind", "type", "name", "category")
_START_COLUMNS = ("starts_at", "started_at", "fired_at", "firing_at", "raised_at", "opened_at", "created_at")


@dataclass
class Unavailable:
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"available": False, "reason": self.reason}


@dataclass
class IngestCheck:
    per_format: dict[str, dict[str, Any]]
    expected: int
    stored: int
    dead_letters: int
    dead_letter_errors: list[tuple[str, int]]
    waited_s: float

    @property
    def completeness_pct(self) -> float | None:
        return round(100.0 * self.stored / self.expected, 3) if self.expected else None

    def as_json(self) -> dict[str, Any]:
        return {
            "available": True, "completeness_pct": self.completeness_pct, "reads_expected": self.expected,
            "reads_stored": self.stored, "per_format": self.per_format, "dead_letters": self.dead_letters,
            "dead_letter_errors": [{"error": e, "count": n} for e, n in self.dead_letter_errors],
            "waited_s": round(self.waited_s, 1),
        }  # fmt: skip


@dataclass
class LocationCheck:
    items: int
    correct: int
    unknown: int
    confusions: Sequence[tuple[str | None, str | None, int]]
    departed: int
    departed_still_located: int

    @property
    def accuracy_pct(self) -> float | None:
        return round(100.0 * self.correct / self.items, 3) if self.items else None

    def as_json(self) -> dict[str, Any]:
        return {
            "available": True, "accuracy_pct": self.accuracy_pct, "items": self.items, "correct": self.correct,
            "not_located": self.unknown, "departed_items": self.departed,
            "departed_still_located": self.departed_still_located,
            "top_confusions": [{"truth": t, "stocktrace": s, "items": n} for t, s, n in self.confusions],
        }  # fmt: skip


@dataclass
class AlertCheck:
    per_fault: dict[str, dict[str, Any]]
    alerts: int
    matched_alerts: int
    columns: dict[str, str]
    after_end: int = 0
    """Alerts that began after the run's end: what the run's own end caused, not counted."""
    unmatched: list[str] = field(default_factory=list)
    """The alerts that match no fault, as ``alertname subject``."""

    @property
    def precision_pct(self) -> float | None:
        return round(100.0 * self.matched_alerts / self.alerts, 2) if self.alerts else None

    def as_json(self) -> dict[str, Any]:
        return {
            "available": True, "alerts": self.alerts, "alerts_matching_a_fault": self.matched_alerts,
            "precision_pct": self.precision_pct, "per_fault": self.per_fault, "columns_used": self.columns,
            "alerts_after_run_end": self.after_end, "alerts_matching_no_fault": self.unmatched,
        }  # fmt: skip


@dataclass
class CheckReport:
    scenario: str
    virtual_start: float
    virtual_end: float
    ingest: IngestCheck | Unavailable
    location: LocationCheck | Unavailable
    alerts: AlertCheck | Unavailable
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "virtual_start": iso(self.virtual_start), "virtual_end": iso(self.virtual_end),
            "ingest": self.ingest.as_json(), "location": self.location.as_json(), "alerts": self.alerts.as_json(),
            "notes": self.notes,
        }  # fmt: skip

    def as_text(self) -> str:
        lines = [f"check of scenario {self.scenario}, {iso(self.virtual_start)} … {iso(self.virtual_end)} (virtual)"]
        lines += _ingest_text(self.ingest) + _location_text(self.location) + _alert_text(self.alerts)
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _ingest_text(check: IngestCheck | Unavailable) -> list[str]:
    if isinstance(check, Unavailable):
        return [f"ingest completeness: not available ({check.reason})"]
    pct = "n/a" if check.completeness_pct is None else f"{check.completeness_pct:.3f} %"
    lines = [f"ingest completeness: {pct} — {check.stored:,} of {check.expected:,} published reads in rfid_reads"]
    for name, row in sorted(check.per_format.items()):
        if row.get("decoder") is False:
            lines.append(
                f"  {name:<12} not checked: stocktrace has no {name} decoder yet ({row['published']:,} reads published)"
            )
        else:
            lines.append(f"  {name:<12} {row['stored']:>10,} / {row['published']:<10,} {row['completeness_pct']} %")
    lines.append(f"  dead letters during the run: {check.dead_letters:,}")
    lines += [f"    {count:>6,} x {error}" for error, count in check.dead_letter_errors]
    return lines


def _location_text(check: LocationCheck | Unavailable) -> list[str]:
    if isinstance(check, Unavailable):
        return [f"location accuracy: not available yet ({check.reason})"]
    pct = "n/a" if check.accuracy_pct is None else f"{check.accuracy_pct:.2f} %"
    lines = [f"location accuracy: {pct} — {check.correct:,} of {check.items:,} items where they really are; "
             f"{check.unknown:,} not located; {check.departed_still_located:,} of {check.departed:,} departed items "
             "still shown on site"]  # fmt: skip
    lines += [f"  {n:>5} x truth {t} but stocktrace says {s}" for t, s, n in check.confusions]
    return lines


def _alert_text(check: AlertCheck | Unavailable) -> list[str]:
    if isinstance(check, Unavailable):
        return [f"alerts: not available yet ({check.reason})"]
    precision = "n/a" if check.precision_pct is None else f"{check.precision_pct:.1f} %"
    lines = [f"alerts: {check.alerts} raised, {check.matched_alerts} match an injected fault (precision {precision})"]
    if check.after_end:
        lines.append(f"  {check.after_end} more began after the run's end (not counted)")
    lines += [f"  matches no fault: {alert}" for alert in check.unmatched[:10]]
    for fault, row in sorted(check.per_fault.items()):
        latency = (
            ""
            if row["latency_p50_s"] is None
            else f", latency p50 {row['latency_p50_s']:.0f} s max {row['latency_max_s']:.0f} s"
        )
        lines.append(f"  {fault:<22} recall {row['detected']}/{row['faults']}{latency}")
    return lines


def check(result: RunResult, dsn: str, wait_s: float = 60.0, settle_s: float = 10.0) -> CheckReport:
    """Compare ``result`` with the database at ``dsn``, waiting up to ``wait_s`` for ingest and tracking.

    A count that stays put for ``settle_s`` is taken as final: ingest catching up with an accelerated run
    commits batches of tens of thousands of reads, each taking seconds on a busy host.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        ingest = _check_ingest(conn, result, wait_s, settle_s)
        if _exists(conn, "item_locations"):
            # Tracking follows ingest; give it the same chance to settle.
            query = "select count(*) from item_locations where since >= %s"
            since = datetime.fromtimestamp(result.started_at - SKEW_MARGIN_S, UTC)
            _wait_until_stable(conn, query, (since,), len(result.truth.items), wait_s, settle_s)
        location = _check_locations(conn, result)
        if _exists(conn, "alert_rule_runs"):
            _wait_for_evaluation(conn, time.time(), wait_s, settle_s)
        alerts = _check_alerts(conn, result)
    notes = []
    if result.topic_prefix:
        notes.append(f"topics carried the prefix {result.topic_prefix!r}; stocktrace must subscribe under it")
    return CheckReport(result.scenario, result.started_at, result.ended_at, ingest, location, alerts, notes)


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (name,)).fetchone()
    return bool(row and row[0])


def _wait_until_stable(conn: psycopg.Connection[Any], query: LiteralString, params: tuple[Any, ...], target: int,
                       wait_s: float, settle_s: float) -> float:  # fmt: skip
    """Poll a count until it reaches ``target`` or stops changing for ``settle_s``; the time waited."""
    started = time.monotonic()
    last, last_change = -1, started
    while time.monotonic() - started < wait_s:
        row = conn.execute(query, params).fetchone()
        count = int(row[0]) if row else 0
        if count != last:
            last, last_change = count, time.monotonic()
        if count >= target or time.monotonic() - last_change >= settle_s:
            break
        time.sleep(POLL_S)
    return time.monotonic() - started


def _wait_for_evaluation(conn: psycopg.Connection[Any], since: float, wait_s: float, settle_s: float) -> float:
    """Wait until the evaluator judged what is stored: a tick after ``since`` (wall clock), or on the device
    clock, whose time stands still when nothing arrives, a time that stopped moving for ``settle_s``."""
    started = time.monotonic()
    last, last_change = None, started
    while time.monotonic() - started < wait_s:
        row = conn.execute("select max(evaluated_at) from alert_rule_runs").fetchone()
        evaluated = row[0] if row else None
        if evaluated is not None and evaluated.timestamp() >= since:
            break
        if evaluated != last:
            last, last_change = evaluated, time.monotonic()
        elif time.monotonic() - last_change >= settle_s:  # judged all it has, or no evaluator is running
            break
        time.sleep(POLL_S)
    return time.monotonic() - started


def _check_ingest(
    conn: psycopg.Connection[Any], result: RunResult, wait_s: float, settle_s: float
) -> IngestCheck | Unavailable:
    if not _exists(conn, "rfid_reads"):
        return Unavailable("the database has no rfid_reads table; run `stocktrace migrate`")
    rows = [r for r in result.truth.reads.distinct() if r[4] in DECODERS]
    since = datetime.fromtimestamp(result.started_at - SKEW_MARGIN_S, UTC)
    query = "select count(*) from rfid_reads where read_at >= %s"
    waited = _wait_until_stable(conn, query, (since,), len(rows), wait_s, settle_s)
    per_format = _stored_per_format(conn, rows)
    for fmt in {r[4] for r in result.truth.reads.distinct()} - set(DECODERS):
        per_format[fmt] = {"decoder": False, "published": sum(1 for r in result.truth.reads.distinct() if r[4] == fmt)}
    dead, errors = _dead_letters(conn, result)
    stored = sum(row.get("stored", 0) for row in per_format.values())
    return IngestCheck(per_format, len(rows), stored, dead, errors, waited)


def _stored_per_format(
    conn: psycopg.Connection[Any], rows: list[tuple[str, int, int, str, str]]
) -> dict[str, dict[str, Any]]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "create temporary table expected_reads (epc text, read_at timestamptz, antenna int, format text)"
            " on commit drop"
        )
        with cur.copy("copy expected_reads (epc, read_at, antenna, format) from stdin") as copy:
            for epc, at_ms, antenna, _device, fmt in rows:
                copy.write_row((epc, datetime.fromtimestamp(at_ms / 1000, UTC), antenna, fmt))
        cur.execute(
            "select e.format, count(*), count(*) filter (where exists (select 1 from rfid_reads r"
            " where r.epc = e.epc and r.read_at = e.read_at and r.antenna = e.antenna))"
            " from expected_reads e group by 1"
        )
        found = cur.fetchall()
    return {
        fmt: {"decoder": True, "published": int(total), "stored": int(stored),
              "completeness_pct": round(100.0 * int(stored) / int(total), 3)}
        for fmt, total, stored in found
    }  # fmt: skip


def _dead_letters(conn: psycopg.Connection[Any], result: RunResult) -> tuple[int, list[tuple[str, int]]]:
    if not _exists(conn, "dead_letters"):
        return 0, []
    since = datetime.fromtimestamp(result.real_started_at, UTC)
    pattern = f"{result.topic_prefix}/%" if result.topic_prefix else "%"
    found = conn.execute(
        "select left(error, 120), count(*) from dead_letters where received_at >= %s and topic like %s"
        " group by 1 order by 2 desc",
        (since, pattern),
    ).fetchall()
    return sum(int(n) for _, n in found), [(str(e), int(n)) for e, n in found[:5]]


def _check_locations(conn: psycopg.Connection[Any], result: RunResult) -> LocationCheck | Unavailable:
    if not _exists(conn, "item_locations"):
        return Unavailable("tracking does not provide item_locations(epc, location_id, since) yet")
    located = dict(
        conn.execute(
            "select distinct on (epc) epc, location_id from item_locations order by epc, since desc"
        ).fetchall()
    )
    if not located:
        return Unavailable("item_locations has no rows: tracking is not running, or not built yet")
    truth = {epc: result.truth.location(epc) for epc in result.truth.items}
    present = {epc: place for epc, place in truth.items() if place is not None}
    departed = [epc for epc, place in truth.items() if place is None]
    correct = sum(1 for epc, place in present.items() if located.get(epc) == place)
    unknown = sum(1 for epc in present if located.get(epc) is None)
    confusions = Counter((place, located.get(epc)) for epc, place in present.items() if located.get(epc) != place)
    still = sum(1 for epc in departed if located.get(epc) is not None)
    top = [(t, s, n) for (t, s), n in confusions.most_common(5)]
    return LocationCheck(len(present), correct, unknown, top, len(departed), still)


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute("select column_name from information_schema.columns where table_name = %s", (table,))
    return [str(r[0]) for r in rows.fetchall()]


# Each time an alert starts firing, the evaluator appends to the event log (alerts/lifecycle.py, Record).
_FIRED: Final = """
select payload->>'alertname', event_time, payload::text from event_log
where kind = 'alert' and payload->>'state' = 'firing' and recorded_at >= %(recorded)s and event_time >= %(first)s
"""


def _check_alerts(conn: psycopg.Connection[Any], result: RunResult) -> AlertCheck | Unavailable:
    if _exists(conn, "event_log") and _exists(conn, "alerts"):
        return _check_fired(conn, result)
    return _check_alert_rows(conn, result)


def _check_alert_rows(conn: psycopg.Connection[Any], result: RunResult) -> AlertCheck | Unavailable:
    """Without an event log: one alert per row of the alerts table, whatever its columns are called."""
    if not _exists(conn, "alerts"):
        return Unavailable("the alerts stage has no alerts table yet")
    columns = _columns(conn, "alerts")
    kind = next((c for c in _KIND_COLUMNS if c in columns), None)
    start = next((c for c in _START_COLUMNS if c in columns), None)
    if kind is None or start is None:
        return Unavailable(f"alerts has no recognisable rule and start columns (has: {', '.join(columns)})")
    query = sql.SQL("select {kind}::text, {start}, row_to_json(a)::text from alerts a where {start} >= %s").format(
        kind=sql.Identifier(kind), start=sql.Identifier(start)
    )
    rows = conn.execute(query, (datetime.fromtimestamp(result.started_at - ALERT_EARLY_S, UTC),)).fetchall()
    alerts = [(str(k).lower(), s.timestamp(), str(text)) for k, s, text in rows if isinstance(s, datetime)]
    per_fault, matched = _match_alerts(result.faults, alerts)
    return AlertCheck(per_fault, len(alerts), len(matched), {"rule": kind, "start": start})


def _check_fired(conn: psycopg.Connection[Any], result: RunResult) -> AlertCheck:
    recorded = datetime.fromtimestamp(result.real_started_at, UTC)
    first = datetime.fromtimestamp(result.started_at - ALERT_EARLY_S, UTC)
    rows = conn.execute(_FIRED, {"recorded": recorded, "first": first}).fetchall()
    fired = [(str(k).lower(), s.timestamp(), str(text)) for k, s, text in rows]
    alerts = [a for a in fired if a[1] <= result.ended_at]
    per_fault, matched = _match_alerts(result.faults, alerts)
    unmatched = [_describe(text) for i, (_, _, text) in enumerate(alerts) if i not in matched]
    return AlertCheck(per_fault, len(alerts), len(matched), {"source": "event_log"}, len(fired) - len(alerts),
                      unmatched)  # fmt: skip


def _describe(payload: str) -> str:
    try:
        entry = json.loads(payload)
    except ValueError:
        return payload[:80]
    return f"{entry.get('alertname', '?')} {entry.get('subject', '?')}"


def _match_alerts(
    faults: list[FaultRecord], alerts: list[tuple[str, float, str]]
) -> tuple[dict[str, dict[str, Any]], set[int]]:
    matched: set[int] = set()
    latencies: dict[str, list[float]] = {}
    detected: Counter[str] = Counter()
    totals = Counter(f.fault for f in faults)
    for fault in faults:
        hits = [i for i, alert in enumerate(alerts) if _detects(alert, fault)]
        matched.update(hits)
        if hits:
            detected[fault.fault] += 1
            latencies.setdefault(fault.fault, []).append(min(alerts[i][1] for i in hits) - fault.start)
    per_fault = {
        name: {"faults": total, "detected": detected[name],
               "recall_pct": round(100.0 * detected[name] / total, 1),
               "latency_p50_s": statistics.median(latencies[name]) if name in latencies else None,
               "latency_max_s": max(latencies[name]) if name in latencies else None}
        for name, total in totals.items()
    }  # fmt: skip
    return per_fault, matched


def _detects(alert: tuple[str, float, str], fault: FaultRecord) -> bool:
    kind, started, text = alert
    end = (fault.end or fault.start) + ALERT_GRACE_S
    if not fault.start - ALERT_EARLY_S <= started <= end:
        return False
    if not any(word in kind for word in FAULT_ALERT_WORDS.get(fault.fault, ())):
        return False
    # A fault about one product (a misplaced unit, a wrong count) is found by an alert about that product, not
    # by a variance of another product that happens to be at the same location.
    gtin = fault.details.get("gtin")
    if gtin is not None and "variance" in kind and str(gtin) not in text:
        return False
    subjects = {fault.subject, fault.location_id, fault.details.get("device_id")} - {None}
    return any(str(subject) in text for subject in subjects)
