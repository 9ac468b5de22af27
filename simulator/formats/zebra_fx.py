"""Zebra FX7500/FX9600 readers through the on-reader IoT Connector: tag data events on the data interface.

Each tag data event is ``{"data": {...}, "timestamp": ..., "type": "SIMPLE"}``; ``data`` holds the tag's
``idHex`` (lower-case hex EPC, ``format`` "epc"), ``antenna``, ``peakRssi`` (integer dBm), ``reads`` (how often
the tag was read since its last report) and ``eventNum``. With batching enabled on the data interface the
reader sends a JSON array of such events in one message. Timestamps are ISO 8601 with milliseconds and a
"+0000" offset. Zebra IoT Connector documentation, "Data Events"; the data interface's MQTT topic is set per
reader, here ``zebra/<reader>/data``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from simulator.formats import Publication, TagReport, utc

_ENCODER = msgspec.json.Encoder()


def topic(reader_id: str) -> str:
    return f"zebra/{reader_id}/data"


def timestamp(at_ms: int) -> str:
    """2026-03-02T10:00:00.123+0000, as the IoT Connector writes it."""
    return utc(at_ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}+0000"


def event(reader_id: str, report: TagReport, event_num: int) -> dict[str, Any]:
    return {
        "data": {
            "eventNum": event_num,
            "format": "epc",
            "idHex": report.epc.lower(),
            "antenna": report.antenna,
            "peakRssi": round(report.rssi_dbm),
            "reads": report.reads,
            "hostName": reader_id,
        },
        "timestamp": timestamp(report.at_ms),
        "type": "SIMPLE",
    }


def events_topic(reader_id: str) -> str:
    return f"zebra/{reader_id}/events"


def heartbeat(reader_id: str, at_ms: int, ports: Sequence[int]) -> Publication:
    """A management-events heartbeat; ``radio_control.antennas`` gives each port's connection state.

    IoT Connector documentation, "Configuration of Management Events": heartbeats are sent every
    ``interval`` seconds (60 by default) with the sections the configuration selects.
    """
    body = {
        "data": {"radio_control": {"antennas": {str(port): "connected" for port in ports}}},
        "timestamp": timestamp(at_ms),
        "type": "heartbeat",
    }
    return Publication(events_topic(reader_id), _ENCODER.encode(body))


def publications(reader_id: str, reports: Sequence[TagReport], first_event: int, batch: bool) -> list[Publication]:
    """One message per tag event, or one JSON array of them when the data interface batches."""
    events = [event(reader_id, report, first_event + n) for n, report in enumerate(reports)]
    if batch:
        return [Publication(topic(reader_id), _ENCODER.encode(events))] if events else []
    return [Publication(topic(reader_id), _ENCODER.encode(e)) for e in events]
