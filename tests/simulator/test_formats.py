"""What the simulator publishes, written from the vendors' documents, is what stocktrace's decoders read.

The two sides were written apart; agreeing on every message of a run is the evidence that neither carries a
bug the other mirrors.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devices.decoders import DECODERS, DecodeError
from devices.reading import Measurement, Position, RawMessage, TagRead
from simulator.delivery import Message
from simulator.formats import TagReport, impinj_r700, tasmota, ttn_v3, zebra_fx
from simulator.publisher import MemorySink
from simulator.run import RunResult, run
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"
REPORT = TagReport("3074257BF7194E4000001A85", 2, -61.37, 4, 1772442000123)


@pytest.fixture(scope="module")
def published() -> tuple[RunResult, list[Message]]:
    sink = MemorySink()
    result = run(load_scenario(SMALL), mqtt=None, sink=sink, duration_s=3600)
    return result, sink.messages


def test_every_message_decodes_and_every_read_arrives_under_its_key(published: tuple[RunResult, list[Message]]) -> None:
    result, messages = published
    received_at = datetime.now(UTC)
    decoded: Counter[str] = Counter()
    keys = set()
    for message in messages:
        try:
            readings = DECODERS[message.format](RawMessage(message.topic, message.payload, received_at))
        except DecodeError as exc:
            pytest.fail(f"{message.format} {message.topic}: {exc}\n{message.payload[:300]!r}")
        for reading in readings:
            decoded[type(reading).__name__] += 1
            if isinstance(reading, TagRead):
                keys.add(
                    (reading.epc, round(reading.observed_at.timestamp() * 1000), reading.antenna, reading.device_id)
                )
    published_keys = {(epc, at, antenna, device) for epc, at, antenna, device, _ in result.truth.reads.distinct()}
    assert keys == published_keys
    assert decoded["Measurement"]
    assert decoded["Position"]
    assert decoded["DeviceStatus"]


def test_sensor_values_survive_their_formats(published: tuple[RunResult, list[Message]]) -> None:
    _, messages = published
    received_at = datetime.now(UTC)
    temperatures: dict[str, list[float]] = {}
    for message in messages:
        for reading in DECODERS[message.format](RawMessage(message.topic, message.payload, received_at)):
            if isinstance(reading, Measurement) and reading.quantity.value == "temperature_c":
                temperatures.setdefault(reading.device_id, []).append(reading.value)
            if isinstance(reading, Position):
                assert 52.3 < reading.latitude < 52.6
                assert 12.9 < reading.longitude < 13.6
    # The Fahrenheit Tasmota in a -20 °C freezer, the LHT65 probe in a -21 °C one, the reefer at 4 °C.
    assert sum(temperatures["xd-tasmota-freezer"]) / len(temperatures["xd-tasmota-freezer"]) == pytest.approx(
        -20, abs=1
    )
    assert min(temperatures["dc-lht65-freezer"]) == pytest.approx(-21, abs=1)
    assert 2 < temperatures["dc-tasmota-cold"][0] < 6


def test_zebra_event_shape() -> None:
    (single,) = zebra_fx.publications("dock-1", [REPORT], 7, batch=False)
    assert single.topic == "zebra/dock-1/data"
    assert json.loads(single.payload) == {
        "data": {"eventNum": 7, "format": "epc", "idHex": "3074257bf7194e4000001a85", "antenna": 2, "peakRssi": -61,
                 "reads": 4, "hostName": "dock-1"},
        "timestamp": "2026-03-02T09:00:00.123+0000", "type": "SIMPLE",
    }  # fmt: skip
    (batched,) = zebra_fx.publications("dock-1", [REPORT, REPORT], 1, batch=True)
    assert [e["data"]["eventNum"] for e in json.loads(batched.payload)] == [1, 2]


def test_impinj_event_shape() -> None:
    body = json.loads(impinj_r700.publication("impinj-14-2b-9f", REPORT, "shelf-1").payload)
    event = body["tagInventoryEvent"]
    assert (body["eventType"], body["hostname"], body["timestamp"]) == (
        "tagInventory",
        "impinj-14-2b-9f",
        "2026-03-02T09:00:00.123000Z",
    )
    assert base64.b64decode(event["epc"]).hex().upper() == REPORT.epc  # base64 by default, not hex
    assert (event["antennaPort"], event["peakRssiCdbm"]) == (2, -6137)  # hundredths of a dBm


def test_tasmota_writes_local_time_without_offset_and_its_unit() -> None:
    body = json.loads(tasmota.sensor("cold-1", 1772442000123, ZoneInfo("Europe/Berlin"), 4.0, 80.0, "F", "x").payload)
    assert body["Time"] == "2026-03-02T10:00:00"
    assert body["TempUnit"] == "F"
    assert body["AM2301"]["Temperature"] == 39.2


def test_lht65_frame_is_dragino_layout() -> None:
    frame = ttn_v3.lht65_frame(3.05, -21.37, 65.2, -21.5)
    assert frame.hex() == "cbea" + "f7a7" + "028c" + "01" + "f79a" + "7fff"
    assert ttn_v3.decoded(frame)["TempC_SHT"] == -21.37
