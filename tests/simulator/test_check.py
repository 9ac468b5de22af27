"""``--check`` against the real database: what is stored is counted, what is missing is reported as such."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from simulator.check import Unavailable, _alert_text, _check_alert_rows, _check_alerts, _check_locations, check
from simulator.publisher import MemorySink
from simulator.run import RunResult, run
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"


@pytest.fixture(scope="module")
def result() -> RunResult:
    return run(load_scenario(SMALL), mqtt=None, sink=MemorySink(), duration_s=3600)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def test_ingest_completeness_counts_stored_reads_and_dead_letters(
    result: RunResult, db: psycopg.Connection[Any], dsn: str
) -> None:
    reads = list(result.truth.reads.distinct())
    stored = [r for n, r in enumerate(reads) if n % 10 != 0]  # every tenth read "lost"
    now = datetime.now(UTC)
    with (
        db.cursor() as cur,
        cur.copy("copy rfid_reads (read_at, device_id, antenna, epc, received_at) from stdin") as copy,
    ):
        for epc, at_ms, antenna, device, _ in stored:
            copy.write_row((_at(at_ms), device, antenna, epc, now))
    db.execute(
        "insert into dead_letters (received_at, topic, payload, error)"
        " values (%s, 'zebra/x/data', '\\x00', 'bad'), (%s, 'zebra/x/data', '\\x01', 'bad')",
        (now, now),
    )
    result.real_started_at = time.time() - 60
    report = check(result, dsn, wait_s=5, settle_s=0.3)
    ingest = report.ingest
    assert not isinstance(ingest, Unavailable)
    assert (ingest.expected, ingest.stored) == (len(reads), len(stored))
    assert ingest.completeness_pct == pytest.approx(90.0, abs=0.1)
    assert set(ingest.per_format) == {"zebra-fx", "impinj-r700", "native"}
    assert ingest.dead_letters == 2
    text = report.as_text()
    assert "ingest completeness: 89.997 %" in text
    assert "dead letters during the run: 2" in text
    if isinstance(report.location, Unavailable):
        assert "location accuracy: not available yet" in text
    if isinstance(report.alerts, Unavailable):
        assert "alerts: not available yet" in text
    assert report.as_json()["ingest"]["reads_expected"] == len(reads)


def test_location_accuracy_from_item_locations(result: RunResult, db: psycopg.Connection[Any]) -> None:
    # A temporary table shadows whatever tracking provides, on this connection only.
    db.execute("create temporary table item_locations (epc text, location_id text, since timestamptz)")
    truth = {epc: result.truth.location(epc) for epc in result.truth.items}
    present = sorted(epc for epc, place in truth.items() if place is not None)
    wrong = set(present[:3])
    since = datetime.now(UTC)
    with db.cursor() as cur, cur.copy("copy item_locations from stdin") as copy:
        for epc in present:
            copy.write_row((epc, "somewhere-else" if epc in wrong else truth[epc], since))
            copy.write_row((epc, "an-older-place", since - timedelta(hours=1)))
    located = _check_locations(db, result)
    assert not isinstance(located, Unavailable)
    assert (located.items, located.correct, located.unknown) == (len(present), len(present) - 3, 0)
    assert located.accuracy_pct == pytest.approx(100 * (len(present) - 3) / len(present), abs=0.01)
    assert sum(n for _, shown, n in located.confusions if shown == "somewhere-else") == 3


def test_without_an_event_log_each_row_of_alerts_counts(result: RunResult, db: psycopg.Connection[Any]) -> None:
    db.execute("create temporary table alerts (id serial, rule text, subject text, starts_at timestamptz)")
    door = next(f for f in result.faults if f.fault == "cold_room_door_open")
    offline = next(f for f in result.faults if f.fault == "reader_offline")
    db.execute(
        "insert into alerts (rule, subject, starts_at) values (%s, %s, %s), (%s, %s, %s), (%s, %s, %s)",
        ("temperature-excursion", door.subject, datetime.fromtimestamp(door.start + 300, UTC),
         "device-offline", offline.subject, datetime.fromtimestamp(offline.start + 120, UTC),
         "inventory-variance", "dc-s-02", datetime.fromtimestamp(door.start, UTC)),
    )  # fmt: skip
    alerts = _check_alert_rows(db, result)
    assert not isinstance(alerts, Unavailable)
    assert (alerts.alerts, alerts.matched_alerts) == (3, 2)
    assert alerts.per_fault["cold_room_door_open"] | {} == {
        "faults": 1,
        "detected": 1,
        "recall_pct": 100.0,
        "latency_p50_s": 300.0,
        "latency_max_s": 300.0,
    }
    assert alerts.per_fault["reader_offline"]["latency_p50_s"] == 120.0
    assert alerts.per_fault["shrink"]["detected"] == 0


def _fired(db: psycopg.Connection[Any], name: str, subject: str, at: float, state: str = "firing") -> None:
    """An alert changing state, as the evaluator records it in the event log (alerts/lifecycle.py, Record)."""
    payload = {"alertname": name, "subject": subject, "state": state, "labels": {"subject": subject}, "summary": ""}
    db.execute(
        "select event_log_append('alert', %s, %s, %s::jsonb)",
        (f"fp-{name}-{subject}", datetime.fromtimestamp(at, UTC), json.dumps(payload)),
    )


def test_alerts_are_the_episodes_that_fired_during_the_run(result: RunResult, db: psycopg.Connection[Any]) -> None:
    offline = next(f for f in result.faults if f.fault == "reader_offline")
    door = next(f for f in result.faults if f.fault == "cold_room_door_open")
    # The reader flapped: two episodes of one alert, each told (the alerts table keeps only the second).
    _fired(db, "DeviceOffline", offline.subject, offline.start + 60)
    _fired(db, "DeviceOffline", offline.subject, offline.start + 120, state="resolved")
    _fired(db, "DeviceOffline", offline.subject, offline.start + 180)
    _fired(db, "TemperatureExcursion", door.subject, door.start + 300)
    _fired(db, "SensorStale", "a-probe-that-was-fine", door.start)
    _fired(db, "DeviceOffline", "dock-reader", result.ended_at + 5)  # the simulator stopped: after the end
    result.real_started_at = time.time() - 60
    alerts = _check_alerts(db, result)
    assert not isinstance(alerts, Unavailable)
    assert (alerts.alerts, alerts.matched_alerts, alerts.after_end) == (4, 3, 1)
    assert alerts.per_fault["reader_offline"]["detected"] == 1
    assert alerts.per_fault["reader_offline"]["latency_p50_s"] == 60.0
    assert alerts.unmatched == ["SensorStale a-probe-that-was-fine"]
    assert alerts.precision_pct == 75.0
    text = "\n".join(_alert_text(alerts))
    assert "1 more began after the run's end (not counted)" in text
    assert "matches no fault: SensorStale a-probe-that-was-fine" in text


def test_alerts_recorded_before_the_run_began_are_not_its_own(result: RunResult, db: psycopg.Connection[Any]) -> None:
    door = next(f for f in result.faults if f.fault == "cold_room_door_open")
    _fired(db, "TemperatureExcursion", door.subject, door.start + 300)  # an earlier run over the same hours
    result.real_started_at = time.time() + 60
    alerts = _check_alerts(db, result)
    assert not isinstance(alerts, Unavailable)
    assert (alerts.alerts, alerts.per_fault["cold_room_door_open"]["detected"]) == (0, 0)


def test_a_variance_finds_a_misplaced_unit_only_when_it_is_about_that_product(
    result: RunResult, db: psycopg.Connection[Any]
) -> None:
    misplaced = next(f for f in result.faults if f.fault == "misplaced_item")
    target, gtin = misplaced.location_id, misplaced.details["gtin"]
    other = next(sku.gtin for sku in load_scenario(SMALL).skus if sku.gtin != gtin)
    _fired(db, "InventoryVariance", f"{other}@{target}", misplaced.start + 60)  # another product at that shelf
    result.real_started_at = time.time() - 60
    alerts = _check_alerts(db, result)
    assert not isinstance(alerts, Unavailable)
    assert alerts.per_fault["misplaced_item"]["detected"] == 0

    _fired(db, "InventoryVariance", f"{gtin}@{target}", misplaced.start + 120)
    alerts = _check_alerts(db, result)
    assert not isinstance(alerts, Unavailable)
    assert alerts.per_fault["misplaced_item"]["detected"] == 1
