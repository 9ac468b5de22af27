"""The Things Stack v3 uplinks of a Dragino LHT65 LoRaWAN temperature/humidity sensor, over TTS MQTT.

Topic ``v3/<application id>@<tenant id>/devices/<device id>/up`` (The Things Stack docs, "MQTT Server").
The body is the Application Server's uplink message ("Data Formats" → Uplink Messages): ``end_device_ids``,
``received_at`` and ``uplink_message`` with ``f_port``, ``f_cnt``, ``frm_payload`` (base64), the payload
formatter's ``decoded_payload``, ``rx_metadata`` per gateway and the radio ``settings``. LoRaWAN devices keep no
clock: the times are the gateway's and the network's.

The 11-byte LHT65 frame (Dragino LHT65 user manual, "Uplink Payload"): battery (2 bits status, 14 bits mV),
SHT20 temperature (int16, /100 °C), humidity (uint16, /10 %), external sensor type (1 = DS18B20 probe), probe
temperature (int16, /100 °C), 0x7FFF. ``decoded_payload`` carries what Dragino's payload formatter returns:
``BatV``, ``TempC_SHT``, ``Hum_SHT``, ``TempC_DS``, ``Ext_sensor``.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from simulator.formats import Publication

_ENCODER = msgspec.json.Encoder()
EXT_DS18B20 = 0x01


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    application_id: str
    tenant_id: str
    dev_eui: str
    dev_addr: str
    gateway_id: str
    gateway_eui: str


def topic(identity: Identity) -> str:
    return f"v3/{identity.application_id}@{identity.tenant_id}/devices/{identity.device_id}/up"


def battery_status(volts: float) -> int:
    """The two status bits: 3 good, 2 ok, 1 low, 0 ultra low."""
    return 3 if volts >= 2.65 else 2 if volts >= 2.55 else 1 if volts >= 2.50 else 0


def lht65_frame(battery_v: float, temperature_c: float, humidity_pct: float, probe_c: float) -> bytes:
    battery = (battery_status(battery_v) << 14) | (round(battery_v * 1000) & 0x3FFF)
    return struct.pack(
        ">HhHBhH",
        battery,
        round(temperature_c * 100),
        round(humidity_pct * 10),
        EXT_DS18B20,
        round(probe_c * 100),
        0x7FFF,
    )


def decoded(frame: bytes) -> dict[str, Any]:
    """What Dragino's LHT65 payload formatter makes of a frame."""
    battery, temperature, humidity, ext, probe, _ = struct.unpack(">HhHBhH", frame)
    return {
        "BatV": (battery & 0x3FFF) / 1000,
        "Bat_status": battery >> 14,
        "TempC_SHT": temperature / 100,
        "Hum_SHT": humidity / 10,
        "TempC_DS": probe / 100,
        "Ext_sensor": "Temperature Sensor" if ext == EXT_DS18B20 else "No external sensor",
    }


def rfc3339(at_ns: int) -> str:
    """2026-03-02T10:00:00.123456789Z, as The Things Stack writes times."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}Z"


def uplink(
    identity: Identity, frame: bytes, f_cnt: int, at_ns: int, radio: dict[str, float], ids: list[str]
) -> Publication:
    """An uplink received by one gateway at ``at_ns`` (UTC, ns); the AS publishes it a little later."""
    gateway_time, ns_time, as_time = at_ns, at_ns + 40_000_000, at_ns + 75_000_000
    body = {
        "end_device_ids": {
            "device_id": identity.device_id,
            "application_ids": {"application_id": identity.application_id},
            "dev_eui": identity.dev_eui,
            "join_eui": "A840410000000101",
            "dev_addr": identity.dev_addr,
        },
        "correlation_ids": ids,
        "received_at": rfc3339(as_time),
        "uplink_message": {
            "session_key_id": base64.b64encode(bytes.fromhex(identity.dev_eui * 2)).decode(),
            "f_port": 2,
            "f_cnt": f_cnt,
            "frm_payload": base64.b64encode(frame).decode(),
            "decoded_payload": decoded(frame),
            "rx_metadata": [_rx(identity, gateway_time, radio, ids)],
            "settings": {
                "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7, "coding_rate": "4/5"}},
                "frequency": "868100000",
                "timestamp": int(radio["timestamp"]),
                "time": rfc3339(gateway_time),
            },
            "received_at": rfc3339(ns_time),
            "consumed_airtime": "0.061696s",
        },
    }
    return Publication(topic(identity), _ENCODER.encode(body))


def _rx(identity: Identity, at_ns: int, radio: dict[str, float], ids: list[str]) -> dict[str, Any]:
    return {
        "gateway_ids": {"gateway_id": identity.gateway_id, "eui": identity.gateway_eui},
        "time": rfc3339(at_ns),
        "timestamp": int(radio["timestamp"]),
        "rssi": round(radio["rssi"]),
        "channel_rssi": round(radio["rssi"]),
        "snr": round(radio["snr"], 1),
        "uplink_token": base64.b64encode(ids[-1].encode()).decode(),
        "channel_index": 0,
        "received_at": rfc3339(at_ns + 20_000_000),
    }
