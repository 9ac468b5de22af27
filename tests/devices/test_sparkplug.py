"""Sparkplug B across messages: births, aliases, sequence numbers, rebirth requests and death certificates.

Each test starts a fresh decoder; the golden cases in cases/sparkplug-b cover single messages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devices.decoders import DECODERS, DecodeError
from devices.decoders import sparkplug_b_pb2 as pb
from devices.decoders.sparkplug import (
    BENCH_SAMPLE,
    BirthBook,
    BirthsNotLoadedError,
    SparkplugDecoder,
    StoredBirth,
    stored_birth,
)
from devices.reading import DeviceStatus, Measurement, Position, Quantity, RawMessage, Reading, Reply

AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MS = 1_772_355_600_000  # AT in ms since 1970
GROUP, NODE = "Plant 1", "Gateway 1"


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


def payload(seq: int | None, *metrics: dict[str, Any], timestamp: int | None = MS) -> bytes:
    message = pb.Payload(timestamp=timestamp, seq=seq)
    for metric in metrics:
        message.metrics.add(**metric)
    return message.SerializeToString()


def nbirth(seq: int = 0, bd_seq: int = 0) -> bytes:
    return payload(
        seq,
        {"name": "bdSeq", "alias": 0, "timestamp": MS, "datatype": pb.Int64, "long_value": bd_seq},
        {
            "name": "Node Control/Rebirth",
            "alias": 1,
            "timestamp": MS,
            "datatype": pb.Boolean,
            "boolean_value": False,
        },
        {
            "name": "Cold Room/Temperature",
            "alias": 2,
            "timestamp": MS,
            "datatype": pb.Float,
            "float_value": 4.5,
        },
        {"name": "Cold Room/Door Offset", "alias": 3, "timestamp": MS, "datatype": pb.Int16, "int_value": 7},
    )


def dbirth(seq: int, device: str = "Probe 1") -> bytes:
    return payload(
        seq,
        {"name": "Humidity", "alias": 10, "timestamp": MS, "datatype": pb.Float, "float_value": 70.0},
        {"name": "Battery", "alias": 11, "timestamp": MS, "datatype": pb.UInt8, "int_value": 90},
    )


def by_alias(alias: int, **value: Any) -> dict[str, Any]:
    return {"alias": alias, "timestamp": MS, **value}


def decode(
    decoder: SparkplugDecoder, kind: str, body: bytes, device: str | None = None, at: datetime = AT
) -> list[Reading]:
    return decoder(RawMessage(topic(kind, device), body, at))


def replies(readings: list[Reading]) -> list[Reply]:
    return [r for r in readings if isinstance(r, Reply)]


def measurements(readings: list[Reading]) -> list[Measurement]:
    return [r for r in readings if isinstance(r, Measurement)]


def assert_rebirth_request(reply: Reply) -> None:
    assert reply.topic == f"spBv1.0/{GROUP}/NCMD/{NODE}"
    request = pb.Payload.FromString(reply.payload)
    assert [(m.name, m.datatype, m.boolean_value) for m in request.metrics] == [
        ("Node Control/Rebirth", pb.Boolean, True)
    ]
    assert request.timestamp == MS
    assert not request.HasField("seq")  # an NCMD carries no sequence number


@pytest.fixture
def decoder() -> SparkplugDecoder:
    return SparkplugDecoder()


def test_data_by_alias_is_named_by_the_birth(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    readings = decode(
        decoder,
        "NDATA",
        payload(1, by_alias(2, float_value=5.25), by_alias(3, int_value=(-3) & 0xFFFFFFFF)),
    )
    assert readings == [
        Measurement(
            "Plant 1/Gateway 1",
            AT,
            Quantity.TEMPERATURE_C,
            5.25,
            {"Cold Room/Door Offset": -3, "metric": "Cold Room/Temperature"},
        )
    ]


def test_device_data_by_alias_uses_the_device_birth(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    birth = decode(decoder, "DBIRTH", dbirth(1), "Probe 1")
    assert birth[0] == DeviceStatus(
        "Plant 1/Gateway 1/Probe 1",
        AT,
        True,
        "birth",
        extra={
            "seq": 1,
            "metrics": {
                "Humidity": {"alias": 10, "datatype": "Float", "value": 70.0},
                "Battery": {"alias": 11, "datatype": "UInt8", "value": 90},
            },
        },
    )
    readings = decode(decoder, "DDATA", payload(2, by_alias(10, float_value=71.5)), "Probe 1")
    assert [(m.device_id, m.quantity, m.value) for m in measurements(readings)] == [
        ("Plant 1/Gateway 1/Probe 1", Quantity.HUMIDITY_PCT, 71.5)
    ]
    assert not replies(readings)


def test_seq_gap_requests_a_rebirth_and_keeps_the_data(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    decode(decoder, "NDATA", payload(1, by_alias(2, float_value=5.0)))
    readings = decode(decoder, "NDATA", payload(3, by_alias(2, float_value=6.0)))
    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    status = next(r for r in readings if isinstance(r, DeviceStatus))
    assert (status.device_id, status.reason, dict(status.extra)) == (
        "Plant 1/Gateway 1",
        "rebirth-requested",
        {"cause": "seq-gap", "expected_seq": 2, "seq": 3},
    )
    assert [m.value for m in measurements(readings)] == [6.0]


def test_seq_wraps_from_255_to_0_without_a_gap(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    for seq in [*range(1, 256), 0, 1]:
        readings = decode(decoder, "NDATA", payload(seq, by_alias(2, float_value=float(seq))))
        assert not replies(readings), f"seq {seq} was taken for a gap"


def test_data_before_any_birth_requests_a_rebirth(decoder: SparkplugDecoder) -> None:
    body = payload(5, {"name": "Temperature", "timestamp": MS, "datatype": pb.Double, "double_value": 3.0})
    readings = decode(decoder, "NDATA", body)
    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    assert [m.value for m in measurements(readings)] == [3.0]


def test_unknown_aliases_are_kept_with_the_rebirth_request(decoder: SparkplugDecoder) -> None:
    readings = decode(decoder, "NDATA", payload(5, by_alias(2, float_value=5.5), by_alias(3, int_value=1)))
    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    (status,) = [r for r in readings if isinstance(r, DeviceStatus)]
    assert status.extra == {"cause": "no-birth", "unknown_aliases": {"2": 5.5, "3": 1}}


def test_an_alias_the_birth_did_not_name_requests_a_rebirth(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    readings = decode(decoder, "NDATA", payload(1, by_alias(2, float_value=5.0), by_alias(99, int_value=4)))
    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    (measurement,) = measurements(readings)
    assert measurement.extra["unknown_aliases"] == {"99": 4}


def test_rebirth_requests_are_spaced_by_the_interval() -> None:
    decoder = SparkplugDecoder(rebirth_interval=timedelta(seconds=30))
    body = payload(5, by_alias(2, float_value=5.5))
    assert replies(decode(decoder, "NDATA", body))
    with pytest.raises(DecodeError, match=r"aliases \['2'\] were named by no birth"):
        decode(decoder, "NDATA", payload(6, by_alias(2, float_value=5.5)), at=AT + timedelta(seconds=10))
    assert replies(decode(decoder, "NDATA", payload(7, by_alias(2, float_value=5.5)), at=AT + timedelta(seconds=31)))


def test_a_worker_that_missed_the_birth_asks_for_one_instead_of_losing_data() -> None:
    first, second = SparkplugDecoder(), SparkplugDecoder()  # two workers behind one shared subscription
    decode(first, "NBIRTH", nbirth())
    readings = decode(second, "NDATA", payload(1, by_alias(2, float_value=5.0)))
    assert replies(readings)
    assert not measurements(readings)
    (status,) = [r for r in readings if isinstance(r, DeviceStatus)]
    assert status.extra["unknown_aliases"] == {"2": 5.0}
    decode(second, "NBIRTH", nbirth())  # the rebirth reaches the second worker
    assert [m.value for m in measurements(decode(second, "NDATA", payload(1, by_alias(2, float_value=5.0))))] == [5.0]


def test_data_from_a_device_without_a_birth_requests_a_rebirth(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    body = payload(1, {"name": "Temperature", "timestamp": MS, "datatype": pb.Float, "float_value": 2.0})
    readings = decode(decoder, "DDATA", body, "Probe 9")
    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    assert [m.device_id for m in measurements(readings)] == ["Plant 1/Gateway 1/Probe 9"]


def test_ndeath_takes_the_node_and_its_devices_offline(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth(bd_seq=4))
    decode(decoder, "DBIRTH", dbirth(1), "Probe 1")
    death = payload(None, {"name": "bdSeq", "timestamp": MS, "datatype": pb.Int64, "long_value": 4})
    later = AT + timedelta(minutes=5)
    assert decode(decoder, "NDEATH", death, at=later) == [
        DeviceStatus("Plant 1/Gateway 1", later, False, "death-certificate", extra={"bdSeq": 4}),
        DeviceStatus("Plant 1/Gateway 1/Probe 1", later, False, "death-certificate"),
    ]
    # The session is over: data without a new birth asks for one.
    assert replies(decode(decoder, "NDATA", payload(2, by_alias(2, float_value=5.0)), at=later))


def test_ndeath_of_an_earlier_session_is_ignored(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth(bd_seq=5))
    stale = payload(None, {"name": "bdSeq", "timestamp": MS, "datatype": pb.Int64, "long_value": 4})
    assert decode(decoder, "NDEATH", stale) == []
    readings = decode(decoder, "NDATA", payload(1, by_alias(2, float_value=5.0)))
    assert not replies(readings)
    assert [m.value for m in measurements(readings)] == [5.0]


def test_ddeath_takes_the_device_offline(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    decode(decoder, "DBIRTH", dbirth(1), "Probe 1")
    readings = decode(decoder, "DDEATH", payload(2), "Probe 1")
    assert readings == [DeviceStatus("Plant 1/Gateway 1/Probe 1", AT, False, "death-certificate", extra={"seq": 2})]
    # Its aliases died with it.
    assert replies(decode(decoder, "DDATA", payload(3, by_alias(10, float_value=1.0)), "Probe 1"))


def test_null_metrics_are_skipped_and_noted(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    readings = decode(decoder, "NDATA", payload(1, by_alias(2, float_value=5.0), by_alias(3, is_null=True)))
    assert [(m.value, m.extra["null_metrics"]) for m in measurements(readings)] == [(5.0, ["Cold Room/Door Offset"])]
    with pytest.raises(DecodeError, match=r"metrics \['Cold Room/Temperature'\] are null"):
        decode(decoder, "NDATA", payload(2, by_alias(2, is_null=True)))


def test_a_payload_without_mapped_metrics_says_how_to_map_them(decoder: SparkplugDecoder) -> None:
    decode(decoder, "NBIRTH", nbirth())
    with pytest.raises(
        DecodeError,
        match=r"\['Cold Room/Door Offset'\] are not mapped.*decoder_options\.metrics of 'Plant 1/Gateway 1'",
    ):
        decode(decoder, "NDATA", payload(1, by_alias(3, int_value=2)))


def test_configured_names_map_and_convert_units() -> None:
    decoder = SparkplugDecoder(metrics={"Freezer/T1": "temperature_f", "Pack Voltage": "battery_mv"})
    body = payload(
        0,
        {"name": "Freezer/T1", "timestamp": MS, "datatype": pb.Double, "double_value": 5.0},
        {"name": "Pack Voltage", "timestamp": MS, "datatype": pb.UInt16, "int_value": 3600},
    )
    readings = measurements(decode(decoder, "NBIRTH", body))
    assert [(m.quantity, round(m.value, 3)) for m in readings] == [
        (Quantity.TEMPERATURE_C, -15.0),
        (Quantity.BATTERY_V, 3.6),
    ]


def test_an_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature_k"):
        SparkplugDecoder(metrics={"T": "temperature_k"})


def test_metric_time_wins_over_payload_time_which_wins_over_receipt(decoder: SparkplugDecoder) -> None:
    body = payload(
        0,
        {"name": "Temperature", "timestamp": MS - 60_000, "datatype": pb.Float, "float_value": 1.0},
        {"name": "Humidity", "datatype": pb.Float, "float_value": 2.0},
        timestamp=MS - 1_000,
    )
    readings = measurements(decode(decoder, "NBIRTH", body, at=AT + timedelta(hours=1)))
    assert [m.observed_at for m in readings] == [AT - timedelta(minutes=1), AT - timedelta(seconds=1)]
    untimed = payload(1, {"name": "Humidity", "datatype": pb.Float, "float_value": 2.0}, timestamp=None)
    (measurement,) = measurements(decode(decoder, "NDATA", untimed, at=AT + timedelta(hours=1)))
    assert measurement.observed_at == AT + timedelta(hours=1)


def test_latitude_and_longitude_together_make_a_position(decoder: SparkplugDecoder) -> None:
    body = payload(
        0,
        {"name": "GPS/Latitude", "timestamp": MS, "datatype": pb.Double, "double_value": 51.9},
        {"name": "GPS/Longitude", "timestamp": MS, "datatype": pb.Double, "double_value": 4.5},
        {"name": "GPS/Altitude", "timestamp": MS, "datatype": pb.Float, "float_value": 12.0},
    )
    positions = [r for r in decode(decoder, "NBIRTH", body) if isinstance(r, Position)]
    assert [(p.latitude, p.longitude, p.altitude_m) for p in positions] == [(51.9, 4.5, 12.0)]
    alone = payload(1, {"name": "GPS/Latitude", "timestamp": MS, "datatype": pb.Double, "double_value": 51.9})
    with pytest.raises(DecodeError, match="GPS/Latitude"):
        decode(decoder, "NDATA", alone)


def test_commands_are_not_readings(decoder: SparkplugDecoder) -> None:
    request = pb.Payload(timestamp=MS)
    request.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
    assert decode(decoder, "NCMD", request.SerializeToString()) == []


@pytest.mark.parametrize(
    ("bad_topic", "error"),
    [
        ("spBv1.0/G/DDATA/N", "DDATA must name a device"),
        ("spBv1.0/G/NDATA/N/D", "NDATA must not name a device"),
        ("spBv1.0/G/NDUMP/N", "unknown message type 'NDUMP'"),
        ("spAv1.0/G/NDATA/N", "is not spBv1.0/"),
    ],
)
def test_topics_outside_the_namespace_are_refused(decoder: SparkplugDecoder, bad_topic: str, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decoder(RawMessage(bad_topic, nbirth(), AT))


def test_an_unset_device_clock_is_refused(decoder: SparkplugDecoder) -> None:
    with pytest.raises(DecodeError, match="not a plausible Sparkplug time"):
        decode(decoder, "NBIRTH", payload(0, timestamp=5_000))


def test_the_bench_sample_is_a_birth_with_names() -> None:
    bench_topic, body = BENCH_SAMPLE
    readings = SparkplugDecoder()(RawMessage(bench_topic, body, AT))
    assert isinstance(readings[0], DeviceStatus)
    assert readings[0].reason == "birth"
    assert {m.quantity for m in measurements(readings)} == {Quantity.TEMPERATURE_C, Quantity.HUMIDITY_PCT}


def test_registered_as_sparkplug_b() -> None:
    assert isinstance(DECODERS["sparkplug-b"], SparkplugDecoder)


# --- births shared between workers: the decoder's side (ingest's is in tests/ingest/test_sparkplug_births.py) ---


def stored(readings: list[Reading]) -> StoredBirth:
    """What another worker's database row gives back for the birth status among ``readings``."""
    (status,) = [r for r in readings if isinstance(r, DeviceStatus) and r.reason == "birth"]
    return stored_birth(json.loads(json.dumps(status.extra)), AT)


def test_a_stored_birth_reads_back_as_the_alias_table() -> None:
    birth = stored(SparkplugDecoder()(RawMessage(topic("NBIRTH"), nbirth(bd_seq=7), AT)))
    assert birth.bd_seq == 7
    assert {alias: (d.name, d.datatype) for alias, d in birth.aliases.items()} == {
        0: ("bdSeq", pb.Int64),
        1: ("Node Control/Rebirth", pb.Boolean),
        2: ("Cold Room/Temperature", pb.Float),
        3: ("Cold Room/Door Offset", pb.Int16),
    }


def test_a_worker_that_missed_the_births_names_the_data_from_the_stored_ones() -> None:
    first = SparkplugDecoder()
    node_birth = stored(decode(first, "NBIRTH", nbirth()))
    device_birth = stored(decode(first, "DBIRTH", dbirth(1), "Probe 1"))
    book = BirthBook()
    second = SparkplugDecoder(births=book)
    data = payload(2, by_alias(10, float_value=71.5))

    # It asks before it changes anything, so the same message can be decoded again once the book is filled.
    with pytest.raises(BirthsNotLoadedError) as asked:
        decode(second, "DDATA", data, "Probe 1")
    assert asked.value.device_ids == ["Plant 1/Gateway 1", "Plant 1/Gateway 1/Probe 1"]
    assert asked.value.book is book
    book.record("Plant 1/Gateway 1", node_birth, AT)
    book.record("Plant 1/Gateway 1/Probe 1", device_birth, AT)
    readings = decode(second, "DDATA", data, "Probe 1")

    assert not replies(readings)
    assert [(m.extra["metric"], m.value) for m in measurements(readings)] == [("Humidity", 71.5)]
    # The node's table came along, and seq goes on from the data (no gap).
    assert not replies(decode(second, "NDATA", payload(3, by_alias(2, float_value=5.0)), at=AT))


def test_without_a_stored_birth_it_asks_the_node_for_a_rebirth_and_asks_the_book_again_later() -> None:
    book = BirthBook(fresh_for=timedelta(seconds=2))
    decoder = SparkplugDecoder(births=book)
    book.record("Plant 1/Gateway 1", None, AT)

    readings = decode(decoder, "NDATA", payload(5, by_alias(2, float_value=5.5)))

    (reply,) = replies(readings)
    assert_rebirth_request(reply)
    # The request makes it look again: the answer may go to another worker.
    with pytest.raises(BirthsNotLoadedError):
        decode(decoder, "NDATA", payload(6, by_alias(2, float_value=5.5)), at=AT + timedelta(seconds=1))


def test_a_device_metric_map_wins_over_its_nodes_which_wins_over_the_decoders() -> None:
    node, probe_1 = "Plant 1/Gateway 1", "Plant 1/Gateway 1/Probe 1"
    decoder = SparkplugDecoder(
        metrics={"Battery": "battery_v"},
        devices={node: {"Level": "humidity_pct"}, probe_1: {"Battery": "battery_mv"}},
    )

    def data(seq: int, level: float, battery: float) -> bytes:
        return payload(
            seq,
            {"name": "Level", "datatype": pb.Float, "float_value": level},
            {"name": "Battery", "datatype": pb.Float, "float_value": battery},
        )

    def quantities(readings: list[Reading]) -> list[tuple[str, Quantity, float]]:
        return [(m.device_id, m.quantity, round(m.value, 3)) for m in measurements(readings)]

    decode(decoder, "NBIRTH", nbirth())
    decode(decoder, "DBIRTH", payload(1), "Probe 1")
    decode(decoder, "DBIRTH", payload(2), "Probe 2")

    assert quantities(decode(decoder, "NDATA", data(3, 40.0, 3.6))) == [
        (node, Quantity.HUMIDITY_PCT, 40.0),
        (node, Quantity.BATTERY_V, 3.6),
    ]
    assert quantities(decode(decoder, "DDATA", data(4, 41.0, 3600.0), "Probe 1")) == [
        (probe_1, Quantity.HUMIDITY_PCT, 41.0),  # its node's map, where its own says nothing
        (probe_1, Quantity.BATTERY_V, 3.6),  # its own: in mV
    ]
    assert quantities(decode(decoder, "DDATA", data(5, 42.0, 3.5), "Probe 2")) == [
        (f"{node}/Probe 2", Quantity.HUMIDITY_PCT, 42.0),  # no map of its own: its node's
        (f"{node}/Probe 2", Quantity.BATTERY_V, 3.5),
    ]
