"""Eclipse Sparkplug B 3.0 edge nodes: NBIRTH, NDATA and the NDEATH will, protobuf payloads.

Topics are ``spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|NCMD>/<edge node>`` (spec §4.1). The NBIRTH carries every
metric with its name, alias and datatype, ``bdSeq`` (Int64) and ``Node Control/Rebirth``, with ``seq`` 0; each
NDATA after it carries changed metrics by alias only, ``seq`` counting up modulo 256; the NDEATH registered as
the MQTT will carries the same ``bdSeq`` (spec §6.4.5-§6.4.19). Payload schema: Eclipse Tahu
sparkplug_b.proto, compiled in devices/decoders/sparkplug_b_pb2.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from devices.decoders import sparkplug_b_pb2 as pb
from simulator.formats import Publication

NAMESPACE = "spBv1.0"
INT64 = pb.Int64
FLOAT = pb.Float
BOOLEAN = pb.Boolean
STRING = pb.String
REBIRTH = "Node Control/Rebirth"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    alias: int
    datatype: int


def topic(group: str, kind: str, node: str) -> str:
    return f"{NAMESPACE}/{group}/{kind}/{node}"


def _set(metric: pb.Payload.Metric, datatype: int, value: float | bool | str) -> None:
    metric.datatype = datatype
    if datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == FLOAT:
        metric.float_value = float(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    else:
        metric.long_value = int(value)


def birth(group: str, node: str, defs: Sequence[MetricDef], values: Mapping[str, float | bool | str],
          bd_seq: int, at_ms: int) -> Publication:  # fmt: skip
    payload = pb.Payload(timestamp=at_ms, seq=0)
    for name, datatype, value in (("bdSeq", INT64, bd_seq), (REBIRTH, BOOLEAN, False)):
        metric = payload.metrics.add(name=name, timestamp=at_ms)
        _set(metric, datatype, value)
    for definition in defs:
        metric = payload.metrics.add(name=definition.name, alias=definition.alias, timestamp=at_ms)
        _set(metric, definition.datatype, values[definition.name])
    return Publication(topic(group, "NBIRTH", node), payload.SerializeToString())


def data(group: str, node: str, defs: Sequence[MetricDef], values: Mapping[str, float | bool | str],
         seq: int, at_ms: int) -> Publication:  # fmt: skip
    payload = pb.Payload(timestamp=at_ms, seq=seq % 256)
    for definition in defs:
        if definition.name in values:
            metric = payload.metrics.add(alias=definition.alias, timestamp=at_ms)
            _set(metric, definition.datatype, values[definition.name])
    return Publication(topic(group, "NDATA", node), payload.SerializeToString())


def death(group: str, node: str, bd_seq: int, at_ms: int) -> Publication:
    payload = pb.Payload(timestamp=at_ms)
    _set(payload.metrics.add(name="bdSeq", timestamp=at_ms), INT64, bd_seq)
    return Publication(topic(group, "NDEATH", node), payload.SerializeToString())


def wants_rebirth(payload: bytes) -> bool:
    """Whether an NCMD asks the node to publish its birth again."""
    command = pb.Payload()
    try:
        command.ParseFromString(payload)
    except DecodeError:  # a malformed command is ignored, as an edge node would
        return False
    return any(m.name == REBIRTH and m.boolean_value for m in command.metrics)
