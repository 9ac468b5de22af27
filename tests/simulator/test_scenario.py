"""Scenario files load, validate, and say exactly what is wrong with a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.scenario import DEFAULT_SCENARIO, ScenarioError, parse_duration, parse_scenario
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"


def _document(path: Path = SMALL) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_default_scenario_has_every_device_family() -> None:
    scenario = load_scenario(DEFAULT_SCENARIO)
    formats = {r.format.value for s in scenario.sites for r in s.readers}
    formats |= {x.format.value for s in scenario.sites for x in s.sensors}
    formats |= {v.tracker.format for v in scenario.vehicles} | {v.reefer.format for v in scenario.vehicles}
    assert formats == {"zebra-fx", "impinj-r700", "native", "tasmota", "ttn-v3", "owntracks", "sparkplug-b"}
    kinds = {loc.kind.value for s in scenario.sites for loc in s.locations}
    assert {"dock_door", "zone", "shelf", "cold_room", "freezer"} <= kinds
    assert any(a.side == "in" for s in scenario.sites for r in s.readers for a in r.antennas)


def test_unknown_antenna_location_is_named() -> None:
    data = _document()
    data["sites"][0]["readers"][1]["antennas"][0]["location"] = "dc-nowhere"
    with pytest.raises(ScenarioError, match=r"reader dc-staging antenna 1 covers unknown location 'dc-nowhere'"):
        parse_scenario(data, source="small.yaml")


def test_field_error_names_its_path() -> None:
    data = _document()
    data["physics"] = {"miss_rate": 1.5}
    with pytest.raises(ScenarioError, match=r"small.yaml is invalid:\n  physics.miss_rate: Input should be less"):
        parse_scenario(data, source="small.yaml")


def test_gtin_with_a_wrong_check_digit_is_refused() -> None:
    data = _document()
    data["skus"][0]["gtin"] = "04012345000116"
    with pytest.raises(
        ScenarioError, match=r"skus.0.gtin: GTIN 04012345000116 has check digit 6; the GS1 check digit is 5"
    ):
        parse_scenario(data)


def test_duplicate_ids_are_refused() -> None:
    data = _document()
    data["sites"][0]["sensors"][0]["id"] = "dc-portal"
    with pytest.raises(ScenarioError, match=r"id 'dc-portal' is used by a reader and a sensor"):
        parse_scenario(data)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"broken.yaml is not valid YAML"):
        load_scenario(broken)
    with pytest.raises(ScenarioError, match=r"cannot read scenario .*missing.yaml"):
        load_scenario(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("42", 42)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not like 90s"):
        parse_duration("soon")
