"""Every decoder against golden payloads: tests/devices/cases/<decoder>/<case>/{payload.bin,expected.json}.

``expected.json`` holds ``{"topic": ..., "readings": [...]}`` (readings as ``devices.reading.as_json`` gives
them) or ``{"topic": ..., "error": "<part of the DecodeError message>"}``. A new vendor quirk or bug becomes a
new folder. ``received_at`` is fixed so that payloads without a time of their own decode the same every run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devices.decoders import DECODERS, DecodeError
from devices.reading import RawMessage, as_json

CASES = Path(__file__).parent / "cases"
RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _cases() -> list[Path]:
    return sorted(path for path in CASES.glob("*/*") if (path / "expected.json").exists())


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_case(case: Path) -> None:
    decoder = DECODERS[case.parent.name]
    expected = json.loads((case / "expected.json").read_text())
    message = RawMessage(expected["topic"], (case / "payload.bin").read_bytes(), RECEIVED_AT)
    if "error" in expected:
        with pytest.raises(DecodeError, match=expected["error"]):
            decoder(message)
    else:
        assert [as_json(r) for r in decoder(message)] == expected["readings"]


def test_every_decoder_has_golden_cases() -> None:
    covered = {case.parent.name for case in _cases()}
    assert set(DECODERS) <= covered, f"decoders without golden cases: {sorted(set(DECODERS) - covered)}"
