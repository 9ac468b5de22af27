"""The ground truth is consistent: one place per item at a time, faults with start ≤ end, books explained."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.publisher import MemorySink
from simulator.run import RunResult, run
from simulator.scenario import FaultType, parse_scenario

SMALL = Path(__file__).parent / "small.yaml"


@pytest.fixture(scope="module")
def quiet_end(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """Four hours of the small scenario with work ending at 09:00, so nothing is half-way through a door at the end."""
    data = yaml.safe_load(SMALL.read_text())
    data["operations"]["working_hours"] = ["06:00", "09:00"]
    path = tmp_path_factory.mktemp("truth") / "truth.jsonl"
    result = run(parse_scenario(data), mqtt=None, sink=MemorySink(), duration_s=4 * 3600, truth_path=path)
    return result, path


def test_each_item_is_in_exactly_one_place_at_a_time(quiet_end: tuple[RunResult, Path]) -> None:
    result, _ = quiet_end
    assert result.operations["received"] > 0
    assert result.operations["shipped"] > 0
    for epc, stays in result.truth.stays.items():
        assert stays, epc
        for before, after in itertools.pairwise(stays):
            assert before.until == after.since, (epc, before, after)  # no gap, no overlap
            assert before.location_id != after.location_id
        assert all(s.until is None or s.since <= s.until for s in stays)
        assert stays[-1].until is None  # where it is now
    places = Counter(result.truth.location(epc) for epc in result.truth.items)
    assert places["truck-1"] + places["van-1"] + places[None] < len(result.truth.items)


def test_every_fault_has_a_start_before_its_end(quiet_end: tuple[RunResult, Path]) -> None:
    result, _ = quiet_end
    assert {f.fault for f in result.faults} == {t.value for t in FaultType}
    for fault in result.faults:
        assert fault.end is not None
        assert result.started_at <= fault.start <= fault.end <= result.ended_at
    door = next(f for f in result.faults if f.fault == FaultType.COLD_ROOM_DOOR_OPEN)
    assert door.subject == "dc-cold"
    assert door.end == door.start + 900.0
    shrunk = next(f for f in result.faults if f.fault == FaultType.SHRINK)
    assert result.truth.location(shrunk.subject) is None


def test_books_differ_from_the_shelves_only_where_faults_put_them(quiet_end: tuple[RunResult, Path]) -> None:
    result, _ = quiet_end
    gtins = {epc: item["gtin"] for epc, item in result.truth.items.items()}
    counted = Counter((place, gtins[epc]) for epc in gtins if (place := result.truth.location(epc)) is not None)
    explained: Counter[tuple[str, str]] = Counter()
    for fault in result.faults:
        if fault.fault == FaultType.SHRINK:
            explained[(fault.location_id or "", gtins[fault.subject])] += 1
        elif fault.fault == FaultType.MISPLACED_ITEM:
            explained[(fault.details["booked_at"], gtins[fault.subject])] += 1
            explained[(fault.location_id or "", gtins[fault.subject])] -= 1
        elif fault.fault == FaultType.WRONG_BOOK_COUNT:
            explained[(fault.location_id or "", fault.details["gtin"])] += fault.details["delta"]
    book = result.truth.book_at_end
    difference = {key: book.get(key, 0) - counted.get(key, 0) for key in set(book) | set(counted)}
    assert {k: v for k, v in difference.items() if v} == {k: v for k, v in explained.items() if v}


def test_the_truth_file_says_what_the_run_kept(quiet_end: tuple[RunResult, Path]) -> None:
    result, path = quiet_end
    records: list[dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["type"] == "run"
    assert records[-1]["type"] == "summary"
    kinds = Counter(r["type"] for r in records)
    assert kinds["item"] == len(result.truth.items)
    assert kinds["stay"] == sum(len(stays) for stays in result.truth.stays.values())
    assert kinds["fault"] == len(result.faults)
    assert kinds["book"] == len(result.truth.book_at_start) + len(result.truth.book_at_end)
    open_stays = [r for r in records if r["type"] == "stay" and r["until"] is None]
    assert len(open_stays) == len(result.truth.stays)
    assert all(r["start"] <= r["end"] for r in records if r["type"] == "fault")
