"""stocktrace's own format (docs/native-format.md): ``stocktrace/<device>/reads|telemetry|status``, JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from simulator.formats import Publication, TagReport, iso_ms

_ENCODER = msgspec.json.Encoder()


def _read(report: TagReport) -> dict[str, Any]:
    return {"epc": report.epc, "antenna": report.antenna, "rssi_dbm": report.rssi_dbm, "at": report.at_ms}


def reads(device_id: str, reports: Sequence[TagReport], batch: bool) -> list[Publication]:
    """One message per read, or one ``{"at", "reads": [...]}`` batch (each read keeps its own time)."""
    topic = f"stocktrace/{device_id}/reads"
    if not reports:
        return []
    if batch:
        body = {"at": reports[-1].at_ms, "reads": [_read(r) for r in reports]}
        return [Publication(topic, _ENCODER.encode(body))]
    return [Publication(topic, _ENCODER.encode(_read(r))) for r in reports]


def telemetry(device_id: str, at_ms: int, values: Mapping[str, Any]) -> Publication:
    """Quantities by their native names (temperature_c, humidity_pct, battery_pct, position)."""
    return Publication(f"stocktrace/{device_id}/telemetry", _ENCODER.encode({"at": iso_ms(at_ms), **values}))


def status_topic(device_id: str) -> str:
    return f"stocktrace/{device_id}/status"


def will(device_id: str) -> Publication:
    """The last will a native device registers: the bare word ``offline``."""
    return Publication(status_topic(device_id), b"offline", retain=True)


def online(device_id: str, at_ms: int) -> Publication:
    body = {"online": True, "reason": "connected", "at": iso_ms(at_ms)}
    return Publication(status_topic(device_id), _ENCODER.encode(body), retain=True)


def heartbeat(device_id: str, at_ms: int) -> Publication:
    """What a native reader with nothing to report sends instead, so that silence still means it is down."""
    body = {"online": True, "reason": "heartbeat", "at": iso_ms(at_ms)}
    return Publication(status_topic(device_id), _ENCODER.encode(body))
