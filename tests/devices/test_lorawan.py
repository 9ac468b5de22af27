"""LoRaWAN field maps: per-device mappings, units and what the default map refuses to guess.

Message bodies follow The Things Stack "Data Formats" uplink and ChirpStack "Event types" up examples; the
golden cases in cases/ttn-v3 and cases/chirpstack-v4 cover the documented shapes themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from devices.decoders import DECODERS, DecodeError
from devices.decoders.lorawan import DEFAULT_FIELD_MAP, ChirpStack, FieldMap, TheThingsStack
from devices.reading import Measurement, Position, Quantity, RawMessage, Reading, Reply

RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LHT65 = {
    "BatV": 3.062,
    "Bat_status": 3,
    "Ext_sensor": "Temperature Sensor",
    "Hum_SHT": 88.6,
    "TempC_DS": 27.81,
}


def ttn(decoded: dict[str, Any], device_id: str = "dev1") -> RawMessage:
    body = {
        "end_device_ids": {"device_id": device_id, "application_ids": {"application_id": "app1"}},
        "received_at": "2020-02-12T15:15:46.014773143Z",
        "uplink_message": {"f_port": 2, "f_cnt": 1, "decoded_payload": decoded},
    }
    return RawMessage(f"v3/app1@ttn/devices/{device_id}/up", json.dumps(body).encode(), RECEIVED_AT)


def chirpstack(decoded: dict[str, Any], dev_eui: str = "0101010101010101", name: str = "Test device") -> RawMessage:
    body = {
        "time": "2022-07-18T09:34:15.775023242+00:00",
        "deviceInfo": {"deviceName": name, "devEui": dev_eui},
        "fPort": 1,
        "object": decoded,
    }
    topic = f"application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{dev_eui}/event/up"
    return RawMessage(topic, json.dumps(body).encode(), RECEIVED_AT)


def extra(reading: Reading) -> Mapping[str, Any]:
    assert not isinstance(reading, Reply)
    return reading.extra


def values(readings: list[Reading]) -> dict[str, tuple[Quantity, float]]:
    """Measurements by the decoded field they came from."""
    return {r.extra["field"]: (r.quantity, r.value) for r in readings if isinstance(r, Measurement)}


def test_a_device_map_replaces_the_default_for_that_device_only() -> None:
    decoder = TheThingsStack({"cold-room-3": FieldMap(quantities={"TempC_DS": Quantity.TEMPERATURE_C})})
    probe_only = decoder(ttn(LHT65, device_id="cold-room-3"))
    assert values(probe_only) == {"TempC_DS": (Quantity.TEMPERATURE_C, 27.81)}
    assert extra(probe_only[0])["decoded"] == {k: v for k, v in LHT65.items() if k != "TempC_DS"}
    assert set(values(decoder(ttn(LHT65, device_id="cold-room-4")))) == {"BatV", "Hum_SHT", "TempC_DS"}


def test_fahrenheit_and_millivolt_fields_are_converted() -> None:
    fields = FieldMap(
        quantities={"probe_f": Quantity.TEMPERATURE_C, "vbat_mv": Quantity.BATTERY_V},
        fahrenheit=frozenset({"probe_f"}),
        millivolts=frozenset({"vbat_mv"}),
    )
    readings = TheThingsStack({"dev1": fields})(ttn({"probe_f": 39.2, "vbat_mv": 3600}))
    assert values(readings) == {
        "probe_f": (Quantity.TEMPERATURE_C, 4.0),
        "vbat_mv": (Quantity.BATTERY_V, 3.6),
    }


def test_default_map_converts_fahrenheit_names_and_elsys_vdd() -> None:
    readings = TheThingsStack()(ttn({"temperature_f": 212, "vdd": 3626}))
    assert values(readings) == {
        "temperature_f": (Quantity.TEMPERATURE_C, 100.0),
        "vdd": (Quantity.BATTERY_V, 3.626),
    }


def test_dotted_names_match_nested_paths() -> None:
    fields = FieldMap(quantities={"probe.t": Quantity.TEMPERATURE_C})
    readings = TheThingsStack({"dev1": fields})(ttn({"probe": {"t": -18.5, "id": 7}, "t": 99}))
    assert values(readings) == {"probe.t": (Quantity.TEMPERATURE_C, -18.5)}
    assert extra(readings[0])["decoded"] == {"probe": {"id": 7}, "t": 99}


def test_names_match_any_case_and_cayenne_channels() -> None:
    readings = TheThingsStack()(ttn({"TEMPERATURE": 5, "temperature_2": 6, "Humidity": 50}))
    assert values(readings) == {
        "TEMPERATURE": (Quantity.TEMPERATURE_C, 5.0),
        "temperature_2": (Quantity.TEMPERATURE_C, 6.0),
        "Humidity": (Quantity.HUMIDITY_PCT, 50.0),
    }


def test_a_gps_without_fix_is_not_a_position_but_is_kept() -> None:
    readings = TheThingsStack()(ttn({"latitude": 0, "longitude": 0, "battery": 90}))
    assert [type(r) for r in readings] == [Measurement]
    assert extra(readings[0])["decoded"] == {"latitude": 0, "longitude": 0}


def test_top_level_latitude_and_longitude_make_a_position() -> None:
    readings = TheThingsStack()(ttn({"latitude": 52.3655, "longitude": 4.8885, "alt": 21.5}))
    assert readings == [
        Position(
            "dev1",
            datetime(2020, 2, 12, 15, 15, 46, 14773, tzinfo=UTC),
            52.3655,
            4.8885,
            21.5,
            extra=extra(readings[0]),
        )
    ]
    assert "decoded" not in extra(readings[0])


def test_only_implausible_values_is_a_decode_error_that_names_them() -> None:
    with pytest.raises(DecodeError, match=r"no plausible reading: TempC_DS=327.67"):
        TheThingsStack()(ttn({"TempC_DS": 327.67}))
    with pytest.raises(DecodeError, match="no plausible reading"):
        TheThingsStack()(ttn({"latitude": 0, "longitude": 0}))


def test_numeric_strings_count_but_booleans_do_not() -> None:
    readings = TheThingsStack()(ttn({"temperature": "4.5", "humidity": True}))
    assert values(readings) == {"temperature": (Quantity.TEMPERATURE_C, 4.5)}
    assert extra(readings[0])["decoded"] == {"humidity": True}


def test_chirpstack_maps_by_dev_eui_in_any_case_or_by_device_name() -> None:
    em300 = {"battery": 50, "temperature": 20.0, "humidity": 30.0}
    by_eui = ChirpStack({"0101010101010101".upper(): FieldMap(quantities={"humidity": Quantity.HUMIDITY_PCT})})
    assert set(values(by_eui(chirpstack(em300)))) == {"humidity"}
    by_name = ChirpStack({"EM300-TH cold room": FieldMap(quantities={"temperature": Quantity.TEMPERATURE_C})})
    assert set(values(by_name(chirpstack(em300, name="EM300-TH cold room")))) == {"temperature"}
    assert set(values(by_name(chirpstack(em300)))) == {"battery", "temperature", "humidity"}


def test_decoded_payload_must_be_an_object() -> None:
    with pytest.raises(DecodeError, match="decoded_payload must be a JSON object, got list"):
        TheThingsStack()(ttn([1, 2]))  # type: ignore[arg-type]  # a formatter returning an array


def test_the_decoder_table_uses_the_default_map() -> None:
    assert isinstance(DECODERS["ttn-v3"], TheThingsStack)
    assert isinstance(DECODERS["chirpstack-v4"], ChirpStack)
    assert DEFAULT_FIELD_MAP.quantities["tempc_ds"] is Quantity.TEMPERATURE_C
