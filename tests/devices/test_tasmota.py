"""Tasmota time zones: ``Time`` is the device's local time unless SetOption52 adds an offset."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from devices.decoders import DECODERS, DecodeError
from devices.decoders.tasmota import Tasmota
from devices.reading import DeviceStatus, Measurement, RawMessage, Reading

RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def sensor(time: str, device: str = "freezer-3") -> RawMessage:
    payload = f'{{"Time":"{time}","DS18B20":{{"Temperature":-18.4}},"TempUnit":"C"}}'
    return RawMessage(f"tele/{device}/SENSOR", payload.encode(), RECEIVED_AT)


def observed(readings: list[Reading]) -> datetime:
    assert isinstance(readings[0], Measurement | DeviceStatus)
    return readings[0].observed_at


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("2024-01-15T12:00:00", datetime(2024, 1, 15, 11, 0, tzinfo=UTC)),  # CET, UTC+1
        ("2024-07-15T12:00:00", datetime(2024, 7, 15, 10, 0, tzinfo=UTC)),  # CEST, UTC+2
    ],
)
def test_time_without_offset_is_read_in_the_device_zone(local: str, utc: datetime) -> None:
    decoder = Tasmota(zones={"freezer-3": BERLIN})
    assert observed(decoder(sensor(local))) == utc


def test_devices_without_a_zone_use_the_default_zone() -> None:
    assert observed(Tasmota(zones={"freezer-3": BERLIN})(sensor("2024-01-15T12:00:00", "other"))) == datetime(
        2024, 1, 15, 12, 0, tzinfo=UTC
    )
    new_york = Tasmota(default_zone=ZoneInfo("America/New_York"))
    assert observed(new_york(sensor("2024-01-15T12:00:00"))) == datetime(2024, 1, 15, 17, 0, tzinfo=UTC)


def test_an_offset_in_time_wins_over_the_configured_zone() -> None:
    decoder = Tasmota(zones={"freezer-3": ZoneInfo("America/New_York")})
    assert observed(decoder(sensor("2024-01-15T12:00:00+01:00"))) == datetime(2024, 1, 15, 11, 0, tzinfo=UTC)


def test_state_time_is_read_in_the_device_zone_too() -> None:
    state = RawMessage("tele/freezer-3/STATE", b'{"Time":"2024-01-15T12:00:00","Uptime":"0T00:05:17"}', RECEIVED_AT)
    readings = Tasmota(zones={"freezer-3": BERLIN})(state)
    assert observed(readings) == datetime(2024, 1, 15, 11, 0, tzinfo=UTC)
    assert readings == [
        DeviceStatus("freezer-3", observed(readings), True, "heartbeat", extra={"Uptime": "0T00:05:17"})
    ]


def test_a_clock_that_was_never_set_falls_back_to_delivery_time_and_keeps_the_device_time() -> None:
    readings = Tasmota()(sensor("1970-01-01T00:00:13"))
    assert observed(readings) == RECEIVED_AT
    assert isinstance(readings[0], Measurement)
    assert readings[0].extra == {"Time": "1970-01-01T00:00:13", "sensor": "DS18B20"}


def test_a_time_that_is_not_iso_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not ISO 8601"):
        Tasmota()(sensor("15/01/2024 12:00"))


def test_the_decoder_table_reads_utc() -> None:
    assert observed(DECODERS["tasmota"](sensor("2024-01-15T12:00:00"))) == datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
