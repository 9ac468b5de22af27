"""Impinj R700/R720 readers through the IoT device interface: ``tagInventory`` events, here over MQTT.

Each event is ``{"timestamp", "hostname", "eventType": "tagInventory", "tagInventoryEvent": {...}}``. With the
reader's default event configuration the EPC is base64-encoded in ``epc`` (``epcHex`` only when enabled) and
the peak RSSI is in hundredths of a dBm, ``peakRssiCdbm``; ``frequency`` is in kHz and
``transmitPowerCdbm`` in hundredths of a dBm. Impinj IoT Device Interface reference, "TagInventoryEvent";
the MQTT event topic is set per reader, here ``impinj/<hostname>/events``.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from simulator.formats import Publication, TagReport, utc

_ENCODER = msgspec.json.Encoder()
# ETSI EN 302 208 channels used by readers in Europe, kHz.
EU_CHANNELS_KHZ = (865700, 866300, 866900, 867500)


def topic(hostname: str) -> str:
    return f"impinj/{hostname}/events"


def timestamp(at_ms: int) -> str:
    """2026-03-02T10:00:00.123000Z: the reader writes microseconds and a Z."""
    return utc(at_ms).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(hostname: str, report: TagReport, antenna_name: str, tx_power_cdbm: int = 3000) -> dict[str, Any]:
    return {
        "timestamp": timestamp(report.at_ms),
        "hostname": hostname,
        "eventType": "tagInventory",
        "tagInventoryEvent": {
            "epc": base64.b64encode(bytes.fromhex(report.epc)).decode("ascii"),
            "antennaPort": report.antenna,
            "antennaName": antenna_name,
            "peakRssiCdbm": round(report.rssi_dbm * 100),
            "frequency": EU_CHANNELS_KHZ[report.at_ms % len(EU_CHANNELS_KHZ)],
            "transmitPowerCdbm": tx_power_cdbm,
        },
    }


def publication(hostname: str, report: TagReport, antenna_name: str) -> Publication:
    return Publication(topic(hostname), _ENCODER.encode(event(hostname, report, antenna_name)))
