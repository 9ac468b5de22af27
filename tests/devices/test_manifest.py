"""`stocktrace apply -f`: idempotent, reported per object, validated with paths, and in agreement with the API."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from devices.manifest import Objects, parse
from stocktrace.cli import main
from tests.devices.test_registry import api_client

EXAMPLE = Path(__file__).parents[2] / "devices" / "examples" / "site.yaml"
Conn = psycopg.Connection[Any]

SMALL = """
sites:
  - id: dc-1
    name: DC 1
    locations:
      - id: dock-1
        kind: dock_door
      - id: cold-1
        kind: cold_room
        temperature_c: {min: 2, max: 8}
devices:
  - id: fx-1
    kind: rfid_reader
    source: zebra-fx
    location: dock-1
    mqtt: {topic_prefix: zebra/fx-1}
    antennas:
      - {port: 1, location: dock-1, side: out}
      - {port: 2, location: dock-1, side: in}
"""


def _apply(dsn: str, text: str, *options: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["apply", "-f", "-", "--database-url", dsn, *options], input=text)
    return result.exit_code, result.output.splitlines()


def _counts(db: Conn) -> tuple[Any, ...]:
    row = db.execute(
        "select (select count(*) from locations), (select count(*) from devices), (select count(*) from antennas)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_example_applies_and_a_second_apply_changes_nothing(dsn: str, db: Conn) -> None:
    code, first = _apply(dsn, EXAMPLE.read_text())
    assert code == 0, first
    assert first[-1] == "25 created"
    assert "device/fx9600-dock1 created" in first

    code, second = _apply(dsn, EXAMPLE.read_text())

    assert code == 0
    assert second[-1] == "25 unchanged"
    assert all(line.endswith(" unchanged") for line in second[:-1])


def test_dry_run_reports_and_changes_nothing(dsn: str, db: Conn) -> None:
    code, lines = _apply(dsn, SMALL, "--dry-run")

    assert code == 0
    assert lines == [
        "site/dc-1 created",
        "location/dock-1 created",
        "location/cold-1 created",
        "device/fx-1 created",
        "4 created (dry run: nothing was changed)",
    ]
    assert _counts(db) == (0, 0, 0)


def test_changes_are_reported_with_their_fields(dsn: str, db: Conn) -> None:
    _apply(dsn, SMALL)
    changed = SMALL.replace("{min: 2, max: 8}", "{min: 2, max: 6}").replace("side: in}", "side: in}\n    name: Dock 1")

    code, lines = _apply(dsn, changed)

    assert code == 0
    assert "location/cold-1 updated (temperature_c)" in lines
    assert "device/fx-1 updated (name)" in lines
    assert lines[-1] == "2 updated, 2 unchanged"


def test_objects_absent_from_the_file_are_left_alone_unless_pruned(dsn: str, db: Conn) -> None:
    _apply(dsn, SMALL)
    db.execute("insert into rfid_reads values (now(), 'fx-1', 1, 'E200', -60, now(), null)")
    only_site = "sites: [{id: dc-1, name: DC 1}]"

    assert _apply(dsn, only_site)[1] == ["site/dc-1 unchanged", "1 unchanged"]
    assert _counts(db) == (3, 1, 2)

    code, lines = _apply(dsn, only_site, "--prune")

    assert code == 0
    assert lines == [
        "site/dc-1 unchanged",
        "device/fx-1 deleted",
        "location/cold-1 deleted",
        "location/dock-1 deleted",
        "3 deleted, 1 unchanged",
    ]
    assert _counts(db) == (1, 0, 0)
    assert db.execute("select count(*) from rfid_reads where device_id = 'fx-1'").fetchone() == (1,)


def test_with_prune_references_must_be_in_the_file(dsn: str, db: Conn) -> None:
    _apply(dsn, SMALL)

    code, lines = _apply(dsn, "locations: [{id: zone-a, kind: zone, parent: dc-1}]", "--prune")

    assert code == 1
    assert lines[1] == (
        "  locations[0].parent: 'dc-1' is not in this file (with --prune, what the file does not declare is deleted)"
        " (line 1)"
    )
    assert _counts(db) == (3, 1, 2)


def test_problems_name_their_path_and_line_and_nothing_is_written(dsn: str, db: Conn) -> None:
    text = """\
sites:
  - id: dc-1
    locations:
      - {id: dock-1, kind: dock_door}
      - {id: cold-1, kind: cold_room, temprature_c: {min: 2}}
      - id: yard
        kind: yard
        geofence:
          polygon: [[52.52, 13.40], [52.53, 13.41]]
devices:
  - {id: fx-1, kind: rfid_reader, source: native, location: dock-9}
"""
    code, lines = _apply(dsn, text)

    assert code == 1
    assert lines == [
        "Error: <stdin>: 2 problems:",
        "  sites[0].locations[1].temprature_c: unknown field (check its spelling) (line 5)",
        "  sites[0].locations[2].geofence: polygon needs at least 3 points, got 2 distinct (line 9)",
    ]
    assert _counts(db) == (0, 0, 0)


def test_reference_problems_are_all_reported_before_writing(dsn: str, db: Conn) -> None:
    text = """\
sites:
  - id: dc-1
    locations:
      - {id: zone-a, kind: zone, parent: dc-2}
locations:
  - {id: zone-b, kind: zone}
  - {id: loop-1, kind: zone, parent: loop-2}
  - {id: loop-2, kind: zone, parent: loop-1}
  - {id: zone-a, kind: zone, parent: dc-1}
devices:
  - id: fx-1
    kind: rfid_reader
    source: native
    antennas: [{port: 1, location: dock-9}]
  - {id: phone, kind: gps_tracker, source: native, location: zone-a}
"""
    code, lines = _apply(dsn, text)

    assert code == 1
    assert lines[0] == "Error: <stdin>: 6 problems:"
    assert set(lines[1:]) == {
        "  sites[0].locations[0].parent: is nested under 'dc-1'; drop parent or move the entry (line 4)",
        "  locations[0].parent: a top-level location needs a parent (line 6)",
        "  locations[3].id: 'zone-a' is already declared at sites[0].locations[0] (line 9)",
        "  devices[0].antennas[0].location: 'dock-9' is neither in this file nor in the registry (line 14)",
        "  devices[1].location: a gps_tracker is fixed to a vehicle or container; 'zone-a' is a zone (line 15)",
        "  locations[1].parent: location 'loop-1' would be inside itself (line 7)",
    }
    assert _counts(db) == (0, 0, 0)


def test_a_refusal_from_the_registry_rolls_back_the_whole_file(dsn: str, db: Conn) -> None:
    _apply(dsn, "sites: [{id: dc-1}]\nlocations: [{id: zone-a, kind: zone, parent: dc-1}]")

    code, lines = _apply(dsn, "sites: [{id: dc-2}, {id: zone-a}]")

    assert code == 1
    assert lines[-1] == "  sites[1].id: 'zone-a' is a location of kind zone, not a site (line 1)"
    assert _counts(db) == (2, 0, 0)


def test_yaml_errors_say_where(dsn: str, db: Conn) -> None:
    code, lines = _apply(dsn, "sites:\n  - id: dc-1\n   name: [unclosed\n")

    assert code == 1
    assert lines[0] == "Error: <stdin>: 1 problem:"
    assert lines[1].startswith("  file: not valid YAML: ")
    assert (
        _apply(dsn, "- just\n- a list\n")[1][1]
        == "  file: expected a mapping with sites, locations and devices (line 1)"
    )


def test_the_file_and_the_api_agree(dsn: str, db: Conn) -> None:
    _apply(dsn, EXAMPLE.read_text())
    objects = Objects.of(parse(EXAMPLE.read_text()).manifest)

    with api_client(dsn) as api:
        sites = api.get("/api/v1/sites").json()
        locations = {loc["id"]: loc for loc in api.get("/api/v1/locations").json()}
        devices = {e.obj.id: api.get(f"/api/v1/devices/{e.obj.id}").json() for e in objects.devices}

        assert sites == [e.obj.model_dump(mode="json") for e in objects.sites]
        assert locations == {e.obj.id: e.obj.model_dump(mode="json") for e in objects.locations}
        assert devices == {e.obj.id: e.obj.model_dump(mode="json") for e in objects.devices}

        # A change made through the API is what the next apply reports, and undoes.
        reader = {**copy.deepcopy(devices["fx9600-dock1"]), "name": "Dock 1, relabelled"}
        reader["antennas"][1]["side"] = "out"
        assert api.put("/api/v1/devices/fx9600-dock1", json=reader).status_code == 200
        cold = {**locations["cold-1"], "temperature_c": {"min": 2, "max": 10}}
        assert api.put("/api/v1/locations/cold-1", json=cold).status_code == 200

        code, lines = _apply(dsn, EXAMPLE.read_text())

        assert code == 0
        assert "location/cold-1 updated (temperature_c)" in lines
        assert "device/fx9600-dock1 updated (name, antennas)" in lines
        assert api.get("/api/v1/devices/fx9600-dock1").json() == devices["fx9600-dock1"]
    assert _apply(dsn, EXAMPLE.read_text())[1][-1] == "25 unchanged"


def test_a_device_added_through_the_api_is_adopted_by_a_file_that_declares_it(dsn: str, db: Conn) -> None:
    with api_client(dsn) as api:
        api.post("/api/v1/devices", json={"id": "fx-1", "kind": "rfid_reader", "source": "native"})

    code, lines = _apply(dsn, SMALL)

    assert code == 0
    assert "device/fx-1 updated (source, location, mqtt, antennas)" in lines


def test_nested_and_flat_locations_are_the_same_objects() -> None:
    nested = parse("sites: [{id: s, locations: [{id: z, kind: zone, locations: [{id: b, kind: bin}]}]}]")
    flat = parse("sites: [{id: s}]\nlocations: [{id: z, kind: zone, parent: s}, {id: b, kind: bin, parent: z}]")

    def objects(text: Any) -> list[Any]:
        return [entry.obj for entry in Objects.of(text.manifest).locations]

    assert objects(nested) == objects(flat)


@pytest.mark.parametrize("section", ["sites", "locations", "devices"])
def test_each_section_may_be_empty_or_missing(section: str) -> None:
    assert parse(yaml.safe_dump({section: []})).manifest.model_dump()[section] == []
    assert parse("").manifest.sites == []
