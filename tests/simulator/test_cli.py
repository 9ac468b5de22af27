"""``stocktrace simulate`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from devices.decoders import sparkplug_b_pb2 as pb
from devices.manifest import Objects, parse
from simulator.cli import simulate
from simulator.delivery import Message
from simulator.formats import sparkplug_b
from simulator.publisher import MemorySink
from simulator.run import run
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"


def test_manifest_is_one_the_registry_accepts(tmp_path: Path) -> None:
    target = tmp_path / "site.yaml"
    outcome = CliRunner().invoke(simulate, ["--scenario", str(SMALL), "--manifest", str(target)])
    assert outcome.exit_code == 0, outcome.output
    text = target.read_text()
    assert "STOCKTRACE_ROUTES='impinj/+/events=impinj-r700;owntracks/#=owntracks;" in text
    objects = Objects.of(parse(text).manifest)
    assert not objects.problems
    devices = {entry.obj.id: entry.obj for entry in objects.devices}
    # Ids as the decoders name devices: OwnTracks <user>:<device>, Sparkplug <group>/<node>.
    assert {"dc-portal", "test:truck-1-gps", "test-chain/truck-1-unit", "dc-lht65-freezer"} <= set(devices)
    portal = devices["dc-portal"]
    assert [(a.port, a.location, a.side) for a in portal.antennas] == [(1, "dc-dock-1", "out"), (2, "dc-dock-1", "in")]
    assert devices["test:truck-1-gps"].location == "truck-1"


def test_a_manifest_under_a_topic_prefix_tells_the_service_the_prefix(tmp_path: Path) -> None:
    target = tmp_path / "site.yaml"
    args = ["--scenario", str(SMALL), "--manifest", str(target), "--topic-prefix", "lab/run-7/"]
    outcome = CliRunner().invoke(simulate, args)
    assert outcome.exit_code == 0, outcome.output
    header = next(line for line in target.read_text().splitlines() if line.startswith("# Routes for the service"))
    # Routes as the firmware writes topics; the prefix is the service's to remove.
    assert "STOCKTRACE_ROUTES='impinj/+/events=impinj-r700;" in header
    assert header.endswith(" STOCKTRACE_MQTT_TOPIC_PREFIX='lab/run-7'")
    devices = {entry.obj.id: entry.obj for entry in Objects.of(parse(target.read_text()).manifest).devices}
    mqtt = devices["dc-portal"].mqtt
    assert mqtt is not None
    assert (mqtt.topic_prefix or "").startswith("lab/run-7/")  # the broker's ACLs see whole topics


def test_accelerated_run_prints_json_and_writes_the_truth(
    tmp_path: Path, mqtt_address: tuple[str, int], topic_prefix: str
) -> None:
    truth = tmp_path / "truth.jsonl"
    args = ["--scenario", str(SMALL), "--duration", "20m", "--json", "--truth", str(truth),
            "--mqtt-url", f"mqtt://{mqtt_address[0]}:{mqtt_address[1]}", "--topic-prefix", topic_prefix]  # fmt: skip
    outcome = CliRunner().invoke(simulate, args)
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert report["check"] is None
    assert report["run"]["virtual_s"] >= 1199
    assert report["run"]["messages_total"] > 100
    assert report["run"]["topic_prefix"] == topic_prefix
    assert truth.read_text().count('"type":"summary"') == 1


def test_invalid_scenario_is_reported_with_its_field(tmp_path: Path) -> None:
    data = yaml.safe_load(SMALL.read_text())
    data["vehicles"][0]["route"] = ["test-dc", "atlantis"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    outcome = CliRunner().invoke(simulate, ["--scenario", str(bad), "--duration", "1m"])
    assert outcome.exit_code == 1
    assert "vehicle truck-1: route names unknown site 'atlantis'" in outcome.output


def test_sparkplug_node_answers_a_rebirth_request() -> None:
    sink = MemorySink()
    not_a_rebirth = sparkplug_b.birth("test-chain", "truck-1-unit", [], {}, 0, 0).payload
    sink.pending_commands = [("truck-1-unit", not_a_rebirth), ("truck-1-unit", _rebirth_command())]
    run(load_scenario(SMALL), mqtt=None, sink=sink, duration_s=600)
    births = [m for m in sink.messages if m.topic == "spBv1.0/test-chain/NBIRTH/truck-1-unit"]
    assert len(births) == 2  # on connecting, and again when asked (not for the other command)
    assert _seqs(sink.messages)[:3] == [0, 0, 1]


def _rebirth_command() -> bytes:
    payload = pb.Payload(timestamp=1)
    payload.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
    return payload.SerializeToString()


def _seqs(messages: list[Message]) -> list[int]:
    seqs = []
    for message in messages:
        if message.format == "sparkplug-b":
            payload = pb.Payload()
            payload.ParseFromString(message.payload)
            seqs.append(payload.seq)
    return seqs
