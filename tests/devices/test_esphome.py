"""ESPHome sensor names: hints, and the per-device map for names that say nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devices.decoders import DecodeError
from devices.decoders.esphome import ESPHome
from devices.decoders.lorawan import FieldMap
from devices.reading import Measurement, Quantity, RawMessage

RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def state(sensor: str, value: bytes, node: str = "cold-box-7") -> RawMessage:
    return RawMessage(f"{node}/sensor/{sensor}/state", value, RECEIVED_AT)


def measured(decoder: ESPHome, message: RawMessage) -> tuple[Quantity, float]:
    (reading,) = decoder(message)
    assert isinstance(reading, Measurement)
    return reading.quantity, reading.value


@pytest.mark.parametrize(
    ("sensor", "value", "expected"),
    [
        ("freezer_temp", b"-18.25", (Quantity.TEMPERATURE_C, -18.25)),
        ("freezer_temperature_f", b"-0.4", (Quantity.TEMPERATURE_C, -18.0)),
        ("dock_humidity", b"61", (Quantity.HUMIDITY_PCT, 61.0)),
        ("bme280_pressure", b"1013.2", (Quantity.PRESSURE_HPA, 1013.2)),
        ("battery_level", b"87", (Quantity.BATTERY_PCT, 87.0)),
        ("battery_voltage", b"3.71", (Quantity.BATTERY_V, 3.71)),
        ("vbat", b"3.71", (Quantity.BATTERY_V, 3.71)),
        ("wifi_signal", b"-61", (Quantity.SIGNAL_DBM, -61.0)),
    ],
)
def test_names_tell_the_quantity(sensor: str, value: bytes, expected: tuple[Quantity, float]) -> None:
    assert measured(ESPHome(), state(sensor, value)) == expected


def test_a_device_map_classifies_names_that_say_nothing_for_that_device_only() -> None:
    decoder = ESPHome({"cold-box-7": FieldMap(quantities={"Probe": Quantity.TEMPERATURE_C})})
    assert measured(decoder, state("probe", b"4.5")) == (Quantity.TEMPERATURE_C, 4.5)
    with pytest.raises(DecodeError, match="sensor 'probe' has no quantity mapping"):
        decoder(state("probe", b"4.5", node="cold-box-8"))


def test_a_device_map_overrides_the_name_hints_and_converts_units() -> None:
    fields = FieldMap(
        quantities={"esp32_internal_temperature": Quantity.TEMPERATURE_C, "adc_battery": Quantity.BATTERY_V},
        fahrenheit=frozenset({"esp32_internal_temperature"}),
        millivolts=frozenset({"adc_battery"}),
    )
    decoder = ESPHome({"cold-box-7": fields})
    assert measured(decoder, state("esp32_internal_temperature", b"39.2")) == (Quantity.TEMPERATURE_C, 4.0)
    assert measured(decoder, state("adc_battery", b"3650")) == (Quantity.BATTERY_V, 3.65)


def test_the_chip_temperature_is_not_the_goods_temperature_without_a_mapping() -> None:
    with pytest.raises(DecodeError, match="own chip temperature"):
        ESPHome()(state("cpu_temp", b"51.0"))


@pytest.mark.parametrize("payload", [b"nan", b"None", b"inf", b"", b"1e400"])
def test_a_state_without_a_number_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="sensor 'freezer_temp'"):
        ESPHome()(state("freezer_temp", payload))


def test_readings_are_stamped_with_delivery_time_and_name_their_sensor() -> None:
    (reading,) = ESPHome()(state("freezer_temp", b"-18.25"))
    assert reading == Measurement("cold-box-7", RECEIVED_AT, Quantity.TEMPERATURE_C, -18.25, {"sensor": "freezer_temp"})
