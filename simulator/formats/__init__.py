"""The vendors' own MQTT formats, written from their documentation (not from stocktrace's decoders).

Each module turns what a simulated device observed into the topic and payload that device really publishes.
Topics here have no prefix; the publisher adds the run's topic prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class TagReport:
    """One tag in one reader report: what every reader format carries, in SI units."""

    epc: str
    antenna: int
    rssi_dbm: float
    reads: int
    at_ms: int
    """The reader's own clock (skew included), epoch milliseconds."""


@dataclass(frozen=True, slots=True)
class Publication:
    """A topic and payload a format produced."""

    topic: str
    payload: bytes
    retain: bool = False


def utc(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, UTC)


def iso_ms(at_ms: int) -> str:
    """2026-03-02T10:00:00.123Z"""
    return utc(at_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
