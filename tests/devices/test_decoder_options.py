"""Per-device decoder options: checked per source format, stored in the registry, and built into decoders.

Decoding with them through real ingest is in tests/ingest/test_decoder_options.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from devices.decoder_options import DeviceDecoding, build_decoders
from devices.decoders import DecodeError
from devices.decoders import sparkplug_b_pb2 as pb
from devices.reading import Measurement, Quantity, RawMessage
from devices.registry import Device, decoder_settings, run, upsert_device, upsert_location, upsert_site
from stocktrace.cli import main
from tests.devices.test_registry import Api, _location, _site, api_client

Conn = psycopg.Connection[Any]
AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _device(source: str, options: Any, **fields: Any) -> Device:
    return Device.model_validate(
        {"id": "d-1", "kind": "sensor", "source": source, "decoder_options": options, **fields}
    )


def _apply(dsn: str, text: str, *flags: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["apply", "-f", "-", "--database-url", dsn, *flags], input=text)
    return result.exit_code, result.output.splitlines()


# --- what each format accepts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "options", "stored"),
    [
        ("ttn-v3", {"fields": {"T_probe": "temperature_c"}}, {"fields": {"T_probe": "temperature_c"}}),
        (
            "chirpstack-v4",
            {"fields": {"gps.lat": "latitude"}, "default_fields": False},
            {"fields": {"gps.lat": "latitude"}, "default_fields": False},
        ),
        ("esphome", {"sensors": {"probe_a": "temperature_f"}}, {"sensors": {"probe_a": "temperature_f"}}),
        ("tasmota", {"timezone": "Europe/Berlin"}, {"timezone": "Europe/Berlin"}),
        ("sparkplug-b", {"metrics": {"Line 1/Oil": "pressure_pa"}}, {"metrics": {"Line 1/Oil": "pressure_pa"}}),
        # What the defaults say anyway is not stored: the same device reads back equal either way.
        ("ttn-v3", {"fields": {}, "default_fields": True}, None),
        ("native", {}, None),
    ],
)
def test_each_format_accepts_its_options(source: str, options: dict[str, Any], stored: Any) -> None:
    assert _device(source, options).decoder_options == stored


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("ttn-v3", {"fields": {"T1": "temprature_c"}}, "fields.T1: 'temprature_c' is not a target; use one of"),
        ("ttn-v3", {"field": {"T1": "temperature_c"}}, "field: unknown option for ttn-v3 (it takes fields"),
        ("esphome", {"sensors": {"gps": "latitude"}}, "sensors.gps: 'latitude' is not a target"),
        ("tasmota", {"timezone": "Europe/Berln"}, "timezone: unknown time zone 'Europe/Berln'"),
        ("tasmota", {"zone": "Europe/Berlin"}, "zone: unknown option for tasmota (it takes timezone)"),
        ("sparkplug-b", {"metrics": {"T": "temperature_c", "t": "humidity_pct"}}, "'T' and 't' are the same name"),
        ("zebra-fx", {"fields": {"a": "temperature_c"}}, "source format 'zebra-fx' takes no options"),
    ],
)
def test_bad_options_say_what_is_wrong_and_where(source: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _device(source, options)
    (error,) = exc.value.errors()
    assert error["loc"] == ("decoder_options",)
    assert message in error["msg"]


# --- decoders built with them --------------------------------------------------------------------------------


def _uplink(device_id: str, decoded: dict[str, Any]) -> RawMessage:
    body = {"end_device_ids": {"device_id": device_id}, "uplink_message": {"decoded_payload": decoded}}
    return RawMessage(f"v3/app@ttn/devices/{device_id}/up", json.dumps(body).encode(), AT)


def _values(readings: list[Any]) -> dict[str, tuple[Quantity, float]]:
    return {r.extra["field"]: (r.quantity, r.value) for r in readings if isinstance(r, Measurement)}


def test_a_lorawan_field_map_is_laid_over_the_default_one_unless_told_not_to() -> None:
    built = build_decoders(
        [
            DeviceDecoding("probe-1", "ttn-v3", {"fields": {"T_probe": "temperature_c", "Vbat": "battery_mv"}}),
            DeviceDecoding("probe-2", "ttn-v3", {"fields": {"T_probe": "temperature_f"}, "default_fields": False}),
        ]
    )
    decode = built.decoders["ttn-v3"]
    payload = {"T_probe": 41.0, "Vbat": 3012, "humidity": 61.0}

    assert _values(decode(_uplink("probe-1", payload))) == {
        "T_probe": (Quantity.TEMPERATURE_C, 41.0),
        "Vbat": (Quantity.BATTERY_V, 3.012),
        "humidity": (Quantity.HUMIDITY_PCT, 61.0),  # the default map's name
    }
    assert _values(decode(_uplink("probe-2", payload))) == {"T_probe": (Quantity.TEMPERATURE_C, 5.0)}
    assert _values(decode(_uplink("other", payload))) == {"humidity": (Quantity.HUMIDITY_PCT, 61.0)}


def test_an_esphome_sensor_map_names_what_the_name_does_not() -> None:
    decode = build_decoders([DeviceDecoding("box-7", "esphome", {"sensors": {"probe_a": "pressure_pa"}})]).decoders[
        "esphome"
    ]
    (reading,) = decode(RawMessage("box-7/sensor/probe_a/state", b"101325", AT))
    assert isinstance(reading, Measurement)
    assert (reading.quantity, reading.value) == (Quantity.PRESSURE_HPA, 1013.25)


def test_a_tasmota_device_reads_its_own_zone_else_its_sites_else_utc() -> None:
    decode = build_decoders(
        [
            DeviceDecoding("plug-ny", "tasmota", {"timezone": "America/New_York"}, site_timezone="Europe/Berlin"),
            DeviceDecoding("plug-berlin", "tasmota", {}, site_timezone="Europe/Berlin"),
        ]
    ).decoders["tasmota"]
    payload = b'{"Time":"2026-01-15T12:00:00","DS18B20":{"Temperature":-18.4}}'

    def observed(device: str) -> datetime:
        (reading,) = decode(RawMessage(f"tele/{device}/SENSOR", payload, AT))
        assert isinstance(reading, Measurement)
        return reading.observed_at

    assert observed("plug-ny") == datetime(2026, 1, 15, 17, 0, tzinfo=UTC)
    assert observed("plug-berlin") == datetime(2026, 1, 15, 11, 0, tzinfo=UTC)
    assert observed("plug-loose") == datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_sparkplug_metric_maps_are_per_device_and_a_rebuild_keeps_the_births() -> None:
    built = build_decoders([DeviceDecoding("G/node", "sparkplug-b", {"metrics": {"Level": "humidity_pct"}})])
    decode = built.decoders["sparkplug-b"]

    def message(kind: str, seq: int, **metric: Any) -> RawMessage:
        payload = pb.Payload(timestamp=1_772_355_600_000 + seq, seq=seq)
        payload.metrics.add(datatype=pb.Double, **metric)
        return RawMessage(f"spBv1.0/G/{kind}/node", payload.SerializeToString(), AT)

    decode(message("NBIRTH", 0, name="Level", alias=1, double_value=40.0))
    readings = decode(message("NDATA", 1, alias=1, double_value=42.0))
    assert [(r.quantity, r.value) for r in readings if isinstance(r, Measurement)] == [(Quantity.HUMIDITY_PCT, 42.0)]

    rebuilt = build_decoders([], previous=built.decoders).decoders["sparkplug-b"]

    # The alias is still named (the birth was kept: no rebirth is asked), but no map says what Level is.
    with pytest.raises(DecodeError, match=r"metrics \['Level'\] are not mapped"):
        rebuilt(message("NDATA", 2, alias=1, double_value=43.0))


def test_stored_options_that_no_longer_fit_are_reported_and_the_device_gets_defaults() -> None:
    built = build_decoders([DeviceDecoding("plug-1", "tasmota", {"timezone": "Mars/Olympus"})])
    assert built.problems == [
        "device 'plug-1': its stored tasmota options are not usable: timezone: unknown time zone 'Mars/Olympus';"
        " use an IANA name such as Europe/Berlin"
    ]
    (reading,) = built.decoders["tasmota"](
        RawMessage("tele/plug-1/SENSOR", b'{"Time":"2026-01-15T12:00:00","AM2301":{"Temperature":4.0}}', AT)
    )
    assert isinstance(reading, Measurement)
    assert reading.observed_at == datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


# --- the registry, the file, the API and the command line ----------------------------------------------------


def test_the_registry_hands_each_device_its_options_and_site_zone(db: Conn) -> None:
    run(db, upsert_site(_site(timezone="Europe/Berlin")))
    run(db, upsert_location(_location("cold-1", kind="cold_room")))
    run(db, upsert_device(_device("tasmota", None, id="plug-1", location="cold-1")))
    run(db, upsert_device(_device("ttn-v3", {"fields": {"T": "temperature_c"}}, id="probe-1", mqtt=None)))
    run(db, upsert_device(_device("native", None, id="plain-1")))

    assert run(db, decoder_settings()) == [
        DeviceDecoding("plug-1", "tasmota", {}, "Europe/Berlin"),
        DeviceDecoding("probe-1", "ttn-v3", {"fields": {"T": "temperature_c"}}, None),
    ]


MANIFEST = """\
devices:
  - id: probe-1
    kind: sensor
    source: ttn-v3
    mqtt: null
    decoder_options:
      fields:
        T_probe: temperature_c
        Vbat: battery_mv
"""


def test_apply_refuses_bad_options_with_their_line_and_writes_nothing(dsn: str, db: Conn) -> None:
    bad = MANIFEST.replace("Vbat: battery_mv", "Vbat: batery_mv") + (
        "  - {id: plug-1, kind: sensor, source: tasmota, decoder_options: {timezone: CET/Berlin}}\n"
    )

    code, lines = _apply(dsn, bad)

    assert code == 1
    assert lines[:3] == [
        "Error: <stdin>: 2 problems:",
        "  devices[0].decoder_options.fields.Vbat: 'batery_mv' is not a target; use one of temperature_c,"
        " temperature_f, humidity_pct, battery_pct, battery_v, battery_mv, pressure_hpa, pressure_pa, signal_dbm,"
        " latitude, longitude, altitude_m (line 9)",
        "  devices[1].decoder_options.timezone: unknown time zone 'CET/Berlin'; use an IANA name such as"
        " Europe/Berlin (line 10)",
    ]
    assert db.execute("select count(*) from devices").fetchone() == (0,)


def test_dry_run_shows_what_changes_inside_the_options(dsn: str, db: Conn) -> None:
    assert _apply(dsn, MANIFEST)[0] == 0
    changed = MANIFEST.replace("T_probe: temperature_c", "T_probe: temperature_f").replace(
        "Vbat: battery_mv", "Hum: humidity_pct"
    )

    code, lines = _apply(dsn, changed, "--dry-run")

    assert code == 0
    assert lines == [
        "device/probe-1 updated (decoder_options); decoder_options: fields.Hum added, fields.T_probe changed,"
        " fields.Vbat removed",
        "1 updated (dry run: nothing was changed)",
    ]
    stored = db.execute("select decoder_options from devices where id = 'probe-1'").fetchone()
    assert stored == ({"fields": {"T_probe": "temperature_c", "Vbat": "battery_mv"}},)


def test_devices_show_prints_the_entry_with_its_options(dsn: str, db: Conn) -> None:
    _apply(dsn, MANIFEST)

    result = CliRunner().invoke(main, ["devices", "show", "probe-1", "--database-url", dsn])

    assert result.exit_code == 0, result.output
    assert result.output == (
        "- id: probe-1\n  kind: sensor\n  source: ttn-v3\n  mqtt: null\n  assigned: true\n"
        "  decoder_options:\n    fields:\n      T_probe: temperature_c\n      Vbat: battery_mv\n"
    )
    missing = CliRunner().invoke(main, ["devices", "show", "probe-9", "--database-url", dsn])
    assert (missing.exit_code, missing.output) == (1, "Error: no device 'probe-9' in the registry\n")


@pytest.fixture
def api(dsn: str, db: Conn) -> Any:
    with api_client(dsn) as client:
        yield client


def test_the_api_sets_and_returns_options_and_refuses_bad_ones(api: Api) -> None:
    device = {"id": "plug-1", "kind": "sensor", "source": "tasmota", "decoder_options": {"timezone": "Asia/Tokyo"}}

    assert api.put("/api/v1/devices/plug-1", json=device).status_code == 201
    assert api.get("/api/v1/devices/plug-1").json()["decoder_options"] == {"timezone": "Asia/Tokyo"}

    refused = api.put("/api/v1/devices/plug-1", json={**device, "decoder_options": {"timezone": "Tokyo"}})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "decoder_options"]
    assert error["msg"] == "timezone: unknown time zone 'Tokyo'; use an IANA name such as Europe/Berlin"
    assert api.get("/api/v1/devices/plug-1").json()["decoder_options"] == {"timezone": "Asia/Tokyo"}
