"""`stocktrace decode` and `stocktrace bench decode`, run through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from devices.decoders import DECODERS
from devices.reading import DeviceStatus, RawMessage, Reading
from stocktrace.cli import main

CASES = Path(__file__).parent / "cases"
MY_FORMATS = ("native", "zebra-fx", "impinj-r700", "owntracks", "ruuvi-gateway")


def _run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_list_names_every_source_with_its_description() -> None:
    code, out, _ = _run("decode", "--list")

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == set(DECODERS)
    assert "Zebra FX7500/FX9600/ATR7000 readers through the IoT Connector" in lines["zebra-fx"]
    assert "OwnTracks phone and tracker messages" in lines["owntracks"]


def test_source_prints_one_json_line_per_reading() -> None:
    case = CASES / "impinj-r700" / "webhook-batch"
    expected = json.loads((case / "expected.json").read_text())["readings"]

    code, out, err = _run("decode", "--source", "impinj-r700", str(case / "payload.bin"))

    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == expected


def test_payload_from_stdin_with_topic() -> None:
    payload = (CASES / "owntracks" / "transition-enter" / "payload.bin").read_bytes()

    code, out, _ = _run("decode", "--source", "owntracks", "--topic", "owntracks/jane/phone/event", "-", stdin=payload)

    assert code == 0
    [position] = [json.loads(line) for line in out.splitlines()]
    assert position["device_id"] == "jane:phone"
    assert position["extra"]["event"] == "enter"


def test_decode_error_goes_to_stderr_with_status_1() -> None:
    code, out, err = _run(
        "decode",
        "--source",
        "zebra-fx",
        "--topic",
        "zebra/dock-door-1/data",
        "-",
        stdin=b'[{"data":{"idHex":"ad9',
    )

    assert code == 1
    assert out == ""
    assert "decode error (zebra-fx): payload is not valid JSON" in err


def test_decode_error_without_topic_suggests_giving_one() -> None:
    payload = (CASES / "owntracks" / "location" / "payload.bin").read_bytes()

    code, _, err = _run("decode", "--source", "owntracks", "-", stdin=payload)

    assert code == 1
    assert "--topic" in err


def test_unknown_source_lists_the_known_ones() -> None:
    code, out, err = _run("decode", "--source", "zebra", "-", stdin=b"{}")

    assert code == 2
    assert out == ""
    assert "unknown source 'zebra'" in err
    assert all(name in err for name in DECODERS)
    assert "stocktrace decode --list" in err


def test_missing_source_says_what_to_give() -> None:
    code, _, err = _run("decode", "-", stdin=b"{}")

    assert code == 2
    assert "give --source NAME" in err


def test_message_without_readings_is_not_an_error() -> None:
    payload = (CASES / "owntracks" / "card-is-not-a-reading" / "payload.bin").read_bytes()

    code, out, err = _run("decode", "--source", "owntracks", "--topic", "owntracks/jane/phone/info", "-", stdin=payload)

    assert (code, out) == (0, "")
    assert "no readings" in err


# This module serves two test formats; the bench finds a sample for the one named here only.
BENCH_SAMPLE = {"with-sample": ("stocktrace/t-1/status", b'{"online":true}')}


def _decoder_without_sample(message: RawMessage) -> list[Reading]:
    return []


def _decoder_with_sample(message: RawMessage) -> list[Reading]:
    return [DeviceStatus("t-1", message.received_at, True, "connected")]


def test_bench_reports_every_format_in_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DECODERS, "no-sample", _decoder_without_sample)
    monkeypatch.setitem(DECODERS, "with-sample", _decoder_with_sample)

    code, out, _ = _run("bench", "decode", "--seconds", "0.01", "--json")

    assert code == 0
    report = json.loads(out)
    measured = {row["source"]: row for row in report["formats"]}
    skipped = {row["source"]: row["reason"] for row in report["skipped"]}
    assert set(measured) | set(skipped) == set(DECODERS)
    assert "BENCH_SAMPLE" in skipped["no-sample"]
    assert measured["with-sample"]["payload_bytes"] == len(b'{"online":true}')
    for name in MY_FORMATS:
        row = measured[name]
        assert row["messages_per_s"] > 0
        assert row["readings_per_message"] >= 1
        assert row["ratio_to_baseline"] == pytest.approx(row["us_per_message"] / row["baseline_us_per_message"])
        assert row["messages_per_s"] == pytest.approx(1e6 / row["us_per_message"])


def test_bench_prints_a_table() -> None:
    code, out, _ = _run("bench", "decode", "--seconds", "0.01")

    assert code == 0
    assert "json.loads" in out
    rows = {line.split()[0] for line in out.splitlines()[2:]}
    assert set(MY_FORMATS) <= rows


def test_options_decode_as_a_worker_would_for_that_device() -> None:
    uplink = json.loads((CASES / "ttn-v3" / "nothing-mapped" / "payload.bin").read_bytes())
    uplink["uplink_message"]["decoded_payload"] = {"T_probe": 41.0}
    payload = json.dumps(uplink).encode()
    options = '{"fields": {"T_probe": "temperature_f"}}'

    code, _, err = _run("decode", "--source", "ttn-v3", "-", stdin=payload)
    assert code == 1
    assert "no field mapped" in err

    code, out, err = _run("decode", "--source", "ttn-v3", "--device", "dev1", "--options", options, "-", stdin=payload)
    assert (code, err) == (0, "")
    [reading] = [json.loads(line) for line in out.splitlines()]
    assert (reading["device_id"], reading["quantity"], reading["value"]) == ("dev1", "temperature_c", 5.0)


def test_options_need_a_device_and_must_be_valid() -> None:
    code, _, err = _run("decode", "--source", "ttn-v3", "--options", "{}", "-", stdin=b"{}")
    assert code == 2
    assert "give --device ID too" in err

    bad = '{"fields": {"T_probe": "temprature_c"}}'
    code, _, err = _run("decode", "--source", "ttn-v3", "--device", "dev1", "--options", bad, "-", stdin=b"{}")
    assert code == 2
    assert "'temprature_c' is not a target" in err
