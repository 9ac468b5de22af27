"""Sparkplug B 3.0: edge nodes and their devices over MQTT, protobuf payloads (Eclipse Sparkplug 3.0.0).

Topics are ``spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]`` (spec §4.1). Readings name
an edge node ``<group_id>/<edge_node_id>`` and one of its devices ``<group_id>/<edge_node_id>/<device_id>``.
The spec forbids ``/``, ``+`` and ``#`` inside the three ids (§4.1.2, §4.1.4, §4.1.5), so the slash cannot
be confused, and a device id reads like the topic it came from.

What each message becomes:

- NBIRTH / DBIRTH: a ``DeviceStatus`` online, reason ``birth``; its extra holds ``seq`` (and the NBIRTH's
  ``bdSeq``) and ``metrics``, the declared table ``name → {alias, datatype, value}``. The birth's current
  values also become readings, as NDATA/DDATA values do.
- NDATA / DDATA: a ``Measurement`` per metric mapped to a quantity, and a ``Position`` when a latitude and a
  longitude come in one payload. Every other metric of the payload goes into the ``extra`` of those
  readings (``name → value``), with ``null_metrics`` (names whose ``is_null`` is set: they carry no value
  and are skipped) and ``unknown_aliases`` (``alias → value`` for aliases that no birth named). A payload
  with no mapped metric at all raises ``DecodeError`` naming its metrics and how to map them, so it lands
  in the dead letters.
- NDEATH: ``DeviceStatus`` offline, reason ``death-certificate``, for the edge node and every device born
  under it, at the time the broker delivered it (the will was written at connect time). An NDEATH whose
  ``bdSeq`` differs from the current NBIRTH's is the stale will of an earlier session and is ignored
  (§4.2, "Death Message (NDEATH)": hosts act on an NDEATH "with a bdSeq number that matches the preceding
  bdSeq number in the NBIRTH").
- DDEATH: ``DeviceStatus`` offline, reason ``death-certificate``, for the device.
- NCMD, DCMD and ``spBv1.0/STATE/<host_id>``: no readings. Host applications write them (our own rebirth
  requests among them); they observe no device.

Metric names map to quantities through ``SparkplugDecoder(metrics={name: target})``, merged over
``DEFAULT_METRICS``, and per edge node or device through ``devices={device_id: {name: target}}`` merged over
those (a device's over its edge node's, which a device without a map of its own uses); the registry's
``decoder_options.metrics`` become these. A name matches case-insensitively, in full (``Cold Room/Probe 1``)
or by its last folder segment (``Sensors/Temperature`` matches ``temperature``); the full name wins. The
targets are in ``TARGETS``; ``temperature_f``, ``battery_mv`` and ``pressure_pa`` are converted to °C, V and
hPa. Each measurement keeps its metric's name in ``extra["metric"]`` (two probes may both map to
temperature), and ``historical``, ``transient`` and ``properties`` when the metric has them. A metric's
timestamp (ms since 1970) takes precedence over the payload's, which takes precedence over the time of
receipt. DataSet and Template values, arrays, bytes (as hex) and DateTime values (as ISO 8601) are kept in
extra as JSON.

State. The decoder is a callable object: per edge node it keeps the last ``seq``, the NBIRTH's ``bdSeq``
and the alias tables of the node and of each device. Sequence numbers count every message of an edge
node from 0 to 255 and wrap to 0 (§6.4.5, payload ``seq``). A gap, data before any birth, data from a
device without a birth, or an alias that no birth named makes the decoder return a ``Reply``: an NCMD
``Node Control/Rebirth = true`` to ``spBv1.0/<group_id>/NCMD/<edge_node_id>``, protobuf-encoded as §6.4.23
(NCMD) shows, with a ``DeviceStatus`` (online, reason ``rebirth-requested``) for the edge node whose extra
says why. Whatever can be decoded still is; when nothing else could be, that status carries the values.
At most one rebirth is requested per edge node per ``rebirth_interval`` of message time, so a node is not
flooded with requests.

Shared subscriptions. When several workers share the MQTT load, a birth may reach one worker and the data
that follows it another. Every birth is stored (it is the birth status, whose extra holds the alias table),
so a decoder given a ``BirthBook`` first looks there when it meets data it cannot name: data before any
birth, from a device without a birth, or with an alias its table lacks. The decoder does no I/O: when the
book has not been filled for those ids lately it raises ``BirthsNotLoadedError`` before changing any
state; ingest loads the latest stored births of those ids into the book and hands the message over again.
A stored birth newer than the one the decoder holds is adopted (a newer NBIRTH starts the node afresh);
the sequence number of an adopted node is taken from the next message. Only when no stored birth names
the data does the decoder ask for a rebirth: it keeps the values by alias in extra or in the rebirth
status, and they go to the dead letters only when nothing in the message could be decoded and no rebirth
was due.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.message import DecodeError as ProtobufDecodeError

from devices.decoders import sparkplug_b_pb2 as pb
from devices.decoders.errors import DecodeError
from devices.decoders.timestamps import from_epoch
from devices.reading import DeviceStatus, Measurement, Position, Quantity, RawMessage, Reading, Reply

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"
SEQ_MODULUS: Final = 256
DEFAULT_REBIRTH_INTERVAL: Final = timedelta(seconds=30)
DEFAULT_BIRTH_REFRESH: Final = timedelta(seconds=2)
_NEVER: Final = datetime.min.replace(tzinfo=UTC)
MAX_DATASET_ROWS: Final = 1000
_NODE_KINDS: Final = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD"})
_DEVICE_KINDS: Final = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})
_COMMAND_KINDS: Final = frozenset({"NCMD", "DCMD", "STATE"})
# Sparkplug times are ms since 1970 (§6.4.5, §6.4.6). Below 1e11 ms (March 1973) the device clock was
# never set; 1e14 ms is the year 5138, up to where timestamps.from_epoch reads milliseconds.
_MS_MIN: Final = 100_000_000_000
_MS_MAX: Final = 100_000_000_000_000


def _same(value: float) -> float:
    return value


def _fahrenheit_to_celsius(value: float) -> float:
    return (value - 32) * 5 / 9


_UNITS: Final[Mapping[str, tuple[Quantity, Callable[[float], float]]]] = {
    "temperature_c": (Quantity.TEMPERATURE_C, _same),
    "temperature_f": (Quantity.TEMPERATURE_C, _fahrenheit_to_celsius),
    "humidity_pct": (Quantity.HUMIDITY_PCT, _same),
    "battery_pct": (Quantity.BATTERY_PCT, _same),
    "battery_v": (Quantity.BATTERY_V, _same),
    "battery_mv": (Quantity.BATTERY_V, lambda mv: mv / 1000),
    "pressure_hpa": (Quantity.PRESSURE_HPA, _same),
    "pressure_pa": (Quantity.PRESSURE_HPA, lambda pa: pa / 100),
    "signal_dbm": (Quantity.SIGNAL_DBM, _same),
}
_POSITION_FIELDS: Final = ("latitude", "longitude", "altitude_m")
TARGETS: Final = (*_UNITS, *_POSITION_FIELDS)
DEFAULT_METRICS: Final[Mapping[str, str]] = {
    "temperature": "temperature_c",
    "temperature_c": "temperature_c",
    "temperature_f": "temperature_f",
    "humidity": "humidity_pct",
    "humidity_pct": "humidity_pct",
    "battery": "battery_pct",
    "battery_pct": "battery_pct",
    "battery_v": "battery_v",
    "battery_mv": "battery_mv",
    "pressure": "pressure_hpa",
    "pressure_hpa": "pressure_hpa",
    "rssi": "signal_dbm",
    "signal_dbm": "signal_dbm",
    "latitude": "latitude",
    "longitude": "longitude",
    "altitude": "altitude_m",
    "altitude_m": "altitude_m",
}

# Signed integers travel as two's complement in uint32/uint64 (§6.4.17 Datatype Details).
_SIGNED_BITS: Final[Mapping[int, int]] = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32, pb.Int64: 64}
# Arrays travel in bytes_value, packed little endian (§6.4.17, Array Types).
_ARRAY_FORMATS: Final[Mapping[int, str]] = {
    pb.Int8Array: "b",
    pb.Int16Array: "h",
    pb.Int32Array: "i",
    pb.Int64Array: "q",
    pb.UInt8Array: "B",
    pb.UInt16Array: "H",
    pb.UInt32Array: "I",
    pb.UInt64Array: "Q",
    pb.FloatArray: "f",
    pb.DoubleArray: "d",
    pb.DateTimeArray: "q",
}


@dataclass(frozen=True, slots=True)
class _Topic:
    group: str
    kind: str
    node: str
    device: str | None

    @property
    def node_id(self) -> str:
        return f"{self.group}/{self.node}"

    @property
    def device_id(self) -> str:
        return self.node_id if self.device is None else f"{self.node_id}/{self.device}"


@dataclass(frozen=True, slots=True)
class _Definition:
    """A metric as a birth declared it; data messages may send only its alias."""

    name: str
    datatype: int


@dataclass(slots=True)
class _EdgeNode:
    seq: int | None = None
    bd_seq: int | None = None
    born: bool = False
    aliases: dict[str | None, dict[int, _Definition]] = field(default_factory=dict)
    """Alias tables by device id; ``None`` is the edge node's own table."""
    born_at: dict[str | None, datetime] = field(default_factory=dict)
    """When each table's birth was received, to tell whether a stored birth is newer."""
    rebirth_requested_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredBirth:
    """An NBIRTH or DBIRTH as ingest stored it, read back by a worker that did not see it."""

    born_at: datetime
    """When it was received (the stored row's ``received_at``): births compare by it across workers."""
    bd_seq: int | None
    aliases: Mapping[int, _Definition]


def stored_birth(extra: Mapping[str, Any], received_at: datetime) -> StoredBirth:
    """The alias table of a stored birth status, from its extra (``bdSeq``, ``metrics``: name → alias, datatype)."""
    aliases: dict[int, _Definition] = {}
    metrics = extra.get("metrics")
    for label, declared in metrics.items() if isinstance(metrics, Mapping) else ():
        alias = declared.get("alias") if isinstance(declared, Mapping) else None
        # A metric the birth did not name is labelled "alias N": it names nothing.
        if isinstance(alias, int) and not isinstance(alias, bool) and label != f"alias {alias}":
            aliases[alias] = _Definition(str(label), _type_number(declared.get("datatype")))
    bd_seq = extra.get("bdSeq")
    known = isinstance(bd_seq, int) and not isinstance(bd_seq, bool)
    return StoredBirth(received_at, bd_seq if known else None, aliases)


class BirthsNotLoadedError(Exception):
    """The decoder needs the stored births of these ids and ``book`` has none fresh; raised before any change.

    Whoever can read the database records what it holds for each id in ``book`` and decodes the message again.
    """

    def __init__(self, book: BirthBook, device_ids: Sequence[str]) -> None:
        super().__init__(f"stored births needed for {', '.join(device_ids)}")
        self.book = book
        self.device_ids = list(device_ids)


class BirthBook:
    """Births stored by every worker, as ingest last loaded them: the decoder reads it, ingest fills it.

    An entry (a birth, or ``None`` when none is stored) is used for ``fresh_for`` of message time; after that
    the decoder asks for it again, since another worker may have stored a newer birth by then.
    """

    def __init__(self, fresh_for: timedelta = DEFAULT_BIRTH_REFRESH) -> None:
        self._fresh_for = fresh_for
        self._entries: dict[str, tuple[datetime, StoredBirth | None]] = {}

    def record(self, device_id: str, birth: StoredBirth | None, at: datetime) -> None:
        """What the database holds for ``device_id`` (``group/node`` or ``group/node/device``), as of ``at``."""
        self._entries[device_id] = (at, birth)

    def forget(self, node_id: str) -> None:
        """Drop what was loaded for an edge node and its devices: a new birth of theirs is awaited."""
        for device_id in [key for key in self._entries if key == node_id or key.startswith(f"{node_id}/")]:
            del self._entries[device_id]

    def latest(self, device_ids: Sequence[str], at: datetime) -> dict[str, StoredBirth | None]:
        """The stored birth of each id; raises `BirthsNotLoadedError` for ids not loaded within ``fresh_for``."""
        found: dict[str, StoredBirth | None] = {}
        stale: list[str] = []
        for device_id in device_ids:
            entry = self._entries.get(device_id)
            if entry is None or not timedelta(0) <= at - entry[0] < self._fresh_for:
                stale.append(device_id)
            else:
                found[device_id] = entry[1]
        if stale:
            raise BirthsNotLoadedError(self, stale)
        return found


@dataclass(frozen=True, slots=True)
class _Value:
    name: str | None
    """``None`` when the metric came by an alias that no birth named."""
    alias: int | None
    value: Any
    is_null: bool
    observed_at: datetime
    own: Mapping[str, Any]


class SparkplugDecoder:
    """Decodes Sparkplug B messages, following each edge node's births, sequence numbers and aliases."""

    def __init__(
        self,
        metrics: Mapping[str, str] | None = None,
        rebirth_interval: timedelta = DEFAULT_REBIRTH_INTERVAL,
        *,
        devices: Mapping[str, Mapping[str, str]] | None = None,
        births: BirthBook | None = None,
    ) -> None:
        self._metrics = dict(metrics or {})
        self._targets = _targets({**DEFAULT_METRICS, **self._metrics})
        own = devices or {}
        # A device's map is laid over its edge node's (``group/node/device`` is inside ``group/node``).
        self._device_targets = {
            device_id: _targets(
                {**DEFAULT_METRICS, **self._metrics, **own.get(device_id.rsplit("/", 1)[0], {}), **metrics}
                if device_id.count("/") == 2
                else {**DEFAULT_METRICS, **self._metrics, **metrics}
            )
            for device_id, metrics in own.items()
        }
        self._rebirth_interval = rebirth_interval
        self._book = births
        self._nodes: dict[tuple[str, str], _EdgeNode] = {}

    def reconfigured(self, devices: Mapping[str, Mapping[str, str]]) -> SparkplugDecoder:
        """This decoder with other per-device metric maps, carrying on with the edge nodes it follows."""
        decoder = SparkplugDecoder(self._metrics, self._rebirth_interval, devices=devices, births=self._book)
        decoder._nodes = self._nodes
        return decoder

    def __call__(self, message: RawMessage) -> list[Reading]:
        topic = _parse_topic(message.topic)
        if topic.kind in _COMMAND_KINDS:
            return []
        payload = _parse_payload(message.payload)
        at = message.received_at
        match topic.kind:
            case "NBIRTH":
                return self._node_birth(topic, payload, at)
            case "DBIRTH":
                return self._device_birth(topic, payload, at)
            case "NDEATH":
                return self._node_death(topic, payload, at)
            case "DDEATH":
                return self._device_death(topic, payload, at)
            case _:
                return self._data(topic, payload, at)

    def _node_birth(self, topic: _Topic, payload: pb.Payload, received_at: datetime) -> list[Reading]:
        # An NBIRTH starts a new session: every device is born again after it (§6.4.20: "All DBIRTH
        # messages sent by an Edge Node MUST be sent immediately after the NBIRTH").
        node = _EdgeNode(seq=_seq(payload), bd_seq=_bd_seq(payload), born=True)
        self._nodes[topic.group, topic.node] = node
        node.aliases[None] = _definitions(payload)
        node.born_at[None] = received_at
        return self._birth(topic, payload, received_at, {"seq": node.seq, "bdSeq": node.bd_seq})

    def _device_birth(self, topic: _Topic, payload: pb.Payload, received_at: datetime) -> list[Reading]:
        if self._book is not None and not self._born(topic):
            self._recall(topic, received_at, device=False)
        node, trouble = self._follow(topic, payload)
        node.aliases[topic.device] = _definitions(payload)
        node.born_at[topic.device] = received_at
        rebirth = self._rebirth(topic, node, trouble, received_at, {})
        return [*rebirth, *self._birth(topic, payload, received_at, {"seq": node.seq})]

    def _birth(self, topic: _Topic, payload: pb.Payload, received_at: datetime, extra: dict[str, Any]) -> list[Reading]:
        definitions = self._nodes[topic.group, topic.node].aliases[topic.device]
        values = _values(payload, definitions, received_at)
        table = {_label(v): _declaration(metric, v) for metric, v in zip(payload.metrics, values, strict=True)}
        status = DeviceStatus(
            topic.device_id,
            _payload_time(payload, received_at),
            True,
            "birth",
            extra={**extra, "metrics": table},
        )
        readings, _ = self._readings(topic.device_id, values, self._targets_of(topic))
        return [status, *readings]

    def _node_death(self, topic: _Topic, payload: pb.Payload, received_at: datetime) -> list[Reading]:
        bd_seq = _bd_seq(payload)
        node = self._nodes.get((topic.group, topic.node))
        if node is not None and None not in (node.bd_seq, bd_seq) and node.bd_seq != bd_seq:
            return []
        self._nodes.pop((topic.group, topic.node), None)
        devices = sorted(device for device in (node.aliases if node else {}) if device is not None)
        return [
            DeviceStatus(topic.node_id, received_at, False, "death-certificate", extra={"bdSeq": bd_seq}),
            *(DeviceStatus(f"{topic.node_id}/{device}", received_at, False, "death-certificate") for device in devices),
        ]

    def _device_death(self, topic: _Topic, payload: pb.Payload, received_at: datetime) -> list[Reading]:
        if self._book is not None and not self._born(topic):
            self._recall(topic, received_at, device=False)
        node, trouble = self._follow(topic, payload)
        node.aliases.pop(topic.device, None)
        node.born_at.pop(topic.device, None)
        at = _payload_time(payload, received_at)
        status = DeviceStatus(topic.device_id, at, False, "death-certificate", extra={"seq": _seq(payload)})
        return [*self._rebirth(topic, node, trouble, received_at, {}), status]

    def _data(self, topic: _Topic, payload: pb.Payload, received_at: datetime) -> list[Reading]:
        if self._book is not None and (self._lacks_names(topic, payload) or self._awaits_rebirth(topic, payload)):
            self._recall(topic, received_at, device=True)
        node, trouble = self._follow(topic, payload)
        if trouble is None and topic.device not in node.aliases:
            trouble = {"cause": "no-device-birth"}
        values = _values(payload, node.aliases.get(topic.device, {}), received_at)
        if trouble is None and any(v.name is None for v in values):
            trouble = {"cause": "unknown-alias"}
        readings, leftovers = self._readings(topic.device_id, values, self._targets_of(topic))
        rebirth = self._rebirth(topic, node, trouble, received_at, {} if readings else leftovers)
        if not readings and not rebirth:
            raise DecodeError(self._nothing_decoded(topic, values, node))
        return [*rebirth, *readings]

    def _born(self, topic: _Topic) -> bool:
        node = self._nodes.get((topic.group, topic.node))
        return node is not None and node.born

    def _lacks_names(self, topic: _Topic, payload: pb.Payload) -> bool:
        """Whether this data message has a metric that no birth this decoder holds names."""
        node = self._nodes.get((topic.group, topic.node))
        table = node.aliases.get(topic.device) if node is not None and node.born else None
        if table is None:
            return True
        return any(not m.name and (not m.HasField("alias") or m.alias not in table) for m in payload.metrics)

    def _awaits_rebirth(self, topic: _Topic, payload: pb.Payload) -> bool:
        """Whether this decoder asked for a rebirth that it has not seen, and this message's seq shows a gap: the
        new session has begun and its NBIRTH went to another worker (aliases may mean other metrics now)."""
        node = self._nodes.get((topic.group, topic.node))
        if node is None or not node.born or node.rebirth_requested_at is None or node.seq is None:
            return False
        if node.rebirth_requested_at <= node.born_at.get(None, _NEVER):
            return False  # answered
        seq = _seq(payload)
        return seq is not None and seq != (node.seq + 1) % SEQ_MODULUS

    def _recall(self, topic: _Topic, at: datetime, *, device: bool) -> None:
        """Adopt the births stored for this message's edge node (and device) that are newer than those held.

        Raises `BirthsNotLoadedError`, having changed nothing, when the book has not loaded them lately.
        """
        assert self._book is not None
        wanted = [topic.node_id, topic.device_id] if device and topic.device is not None else [topic.node_id]
        births = self._book.latest(wanted, at)
        key = (topic.group, topic.node)
        node = self._nodes.get(key)
        stored = births.get(topic.node_id)
        if stored is not None and (node is None or not node.born or stored.born_at > node.born_at.get(None, _NEVER)):
            # A newer NBIRTH is a new session: the devices' tables of the old one are void (§6.4.20).
            rebirth_requested_at = node.rebirth_requested_at if node is not None else None
            node = _EdgeNode(bd_seq=stored.bd_seq, born=True, rebirth_requested_at=rebirth_requested_at)
            node.aliases[None], node.born_at[None] = dict(stored.aliases), stored.born_at
            self._nodes[key] = node
        if node is None or not node.born or topic.device is None:
            return
        stored = births.get(topic.device_id)
        if stored is not None and stored.born_at > node.born_at.get(topic.device, _NEVER):
            node.aliases[topic.device], node.born_at[topic.device] = dict(stored.aliases), stored.born_at

    def _follow(self, topic: _Topic, payload: pb.Payload) -> tuple[_EdgeNode, dict[str, Any] | None]:
        """The edge node's state after this message, and why a rebirth is due (``None`` when it is not)."""
        node = self._nodes.setdefault((topic.group, topic.node), _EdgeNode())
        trouble: dict[str, Any] | None = None if node.born else {"cause": "no-birth"}
        seq = _seq(payload)
        if seq is not None:
            expected = None if node.seq is None else (node.seq + 1) % SEQ_MODULUS
            if trouble is None and expected is not None and seq != expected:
                trouble = {"cause": "seq-gap", "expected_seq": expected, "seq": seq}
            node.seq = seq
        return node, trouble

    def _rebirth(
        self,
        topic: _Topic,
        node: _EdgeNode,
        trouble: Mapping[str, Any] | None,
        at: datetime,
        leftovers: Mapping[str, Any],
    ) -> list[Reading]:
        last = node.rebirth_requested_at
        if trouble is None or (last is not None and timedelta(0) <= at - last < self._rebirth_interval):
            return []
        node.rebirth_requested_at = at
        if self._book is not None:
            self._book.forget(topic.node_id)  # what it loaded is older than the birth now asked for
        extra = {**trouble, **({"device": topic.device} if topic.device else {}), **leftovers}
        return [
            _rebirth_request(topic.group, topic.node, at),
            DeviceStatus(topic.node_id, at, True, "rebirth-requested", extra=extra),
        ]

    def _targets_of(self, topic: _Topic) -> Mapping[str, str]:
        """The metric map of the message's device, else of its edge node, else the decoder's own."""
        if not self._device_targets:
            return self._targets
        own = self._device_targets.get(topic.device_id) or self._device_targets.get(topic.node_id)
        return self._targets if own is None else own

    def _readings(
        self, device_id: str, values: Sequence[_Value], targets: Mapping[str, str]
    ) -> tuple[list[Reading], dict[str, Any]]:
        """Readings of the mapped metrics, each with the other metrics in extra; and those others alone."""
        mapped: list[tuple[_Value, str]] = []
        positional: dict[str, _Value] = {}
        others: dict[str, Any] = {}
        nulls: list[str] = []
        unnamed: dict[str, Any] = {}
        for value in values:
            if value.name is None:
                unnamed[str(value.alias)] = value.value
            elif value.is_null:
                nulls.append(value.name)
            else:
                _sort(value, _target(targets, value.name), mapped, positional, others)
        position = _position(device_id, positional, others)
        shared = {**others, **({"null_metrics": nulls} if nulls else {})}
        shared |= {"unknown_aliases": unnamed} if unnamed else {}
        readings: list[Reading] = [_measurement(device_id, value, target, shared) for value, target in mapped]
        if position is not None:
            readings.append(_with_extra(position, shared))
        return readings, shared

    def _nothing_decoded(self, topic: _Topic, values: Sequence[_Value], node: _EdgeNode) -> str:
        named = [v.name for v in values if v.name is not None and not v.is_null]
        nulls = [v.name for v in values if v.name is not None and v.is_null]
        unnamed = [str(v.alias) for v in values if v.name is None]
        parts = [f"{topic.kind} from {topic.device_id} has no metric mapped to a quantity"]
        if named:
            parts.append(
                f"metrics {named} are not mapped; map a name to one of {', '.join(TARGETS)} "
                f"under decoder_options.metrics of {topic.device_id!r} in the registry"
            )
        if nulls:
            parts.append(f"metrics {nulls} are null")
        if unnamed:
            parts.append(
                f"aliases {unnamed} were named by no birth this decoder saw; a rebirth was requested at "
                f"{node.rebirth_requested_at.isoformat() if node.rebirth_requested_at else 'no time'}"
            )
        if not values:
            parts.append("the payload carries no metrics")
        return "; ".join(parts)


def _targets(merged: Mapping[str, str]) -> dict[str, str]:
    wrong = sorted({target for target in merged.values() if target not in TARGETS})
    if wrong:
        message = f"unknown Sparkplug metric targets {wrong}; expected one of {', '.join(TARGETS)}"
        raise ValueError(message)
    return {name.lower(): target for name, target in merged.items()}


def _target(targets: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return targets.get(lowered) or targets.get(lowered.rsplit("/", 1)[-1])


def _sort(
    value: _Value,
    target: str | None,
    mapped: list[tuple[_Value, str]],
    positional: dict[str, _Value],
    others: dict[str, Any],
) -> None:
    assert value.name is not None
    if target is None or not _is_number(value.value):
        others[value.name] = value.value
    elif target in _UNITS:
        mapped.append((value, target))
    else:
        positional[target] = value


def _parse_topic(topic: str) -> _Topic:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE" and parts[2]:
        return _Topic("", "STATE", parts[2], None)
    if parts[0] != NAMESPACE or len(parts) not in (4, 5) or not all(parts):
        message = f"topic {topic[:200]!r} is not spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]"
        raise DecodeError(message)
    kind = parts[2]
    device = parts[4] if len(parts) == 5 else None
    if (kind in _NODE_KINDS and device is None) or (kind in _DEVICE_KINDS and device is not None):
        return _Topic(parts[1], kind, parts[3], device)
    if kind in _NODE_KINDS | _DEVICE_KINDS:
        message = f"topic {topic[:200]!r}: {kind} {'must' if kind in _DEVICE_KINDS else 'must not'} name a device"
        raise DecodeError(message)
    kinds = ", ".join(sorted(_NODE_KINDS | _DEVICE_KINDS))
    message = f"topic {topic[:200]!r}: unknown message type {kind[:40]!r}; expected one of {kinds}"
    raise DecodeError(message)


def _parse_payload(data: bytes) -> pb.Payload:
    try:
        return pb.Payload.FromString(data)
    except ProtobufDecodeError as exc:
        message = f"payload is not a Sparkplug B protobuf: {exc}"
        raise DecodeError(message) from None


def _seq(payload: pb.Payload) -> int | None:
    return payload.seq if payload.HasField("seq") else None


def _bd_seq(payload: pb.Payload) -> int | None:
    for metric in payload.metrics:
        if metric.name == BDSEQ_METRIC and metric.WhichOneof("value") in ("int_value", "long_value"):
            return int(_signed_or_plain(metric))
    return None


def _signed_or_plain(metric: pb.Payload.Metric) -> int:
    raw = metric.long_value if metric.HasField("long_value") else metric.int_value
    bits = _SIGNED_BITS.get(metric.datatype)
    return raw if bits is None else _signed(raw, bits)


def _definitions(payload: pb.Payload) -> dict[int, _Definition]:
    return {
        metric.alias: _Definition(metric.name, metric.datatype)
        for metric in payload.metrics
        if metric.HasField("alias") and metric.name
    }


def _at_ms(ms: int) -> datetime:
    if not _MS_MIN <= ms < _MS_MAX:
        message = f"timestamp {ms} is not a plausible Sparkplug time in milliseconds since 1970"
        raise DecodeError(message)
    return from_epoch(ms)


def _payload_time(payload: pb.Payload, received_at: datetime) -> datetime:
    return _at_ms(payload.timestamp) if payload.HasField("timestamp") else received_at


def _values(payload: pb.Payload, definitions: Mapping[int, _Definition], received_at: datetime) -> list[_Value]:
    default_at = _payload_time(payload, received_at)
    return [_value(metric, definitions, default_at) for metric in payload.metrics]


def _value(metric: pb.Payload.Metric, definitions: Mapping[int, _Definition], default_at: datetime) -> _Value:
    alias = metric.alias if metric.HasField("alias") else None
    definition = None if alias is None else definitions.get(alias)
    name = metric.name or (definition.name if definition else None)
    datatype = metric.datatype if metric.HasField("datatype") else (definition.datatype if definition else 0)
    value = None if metric.is_null else _metric_value(metric, datatype)
    own: dict[str, Any] = {}
    if metric.is_historical:
        own["historical"] = True
    if metric.is_transient:
        own["transient"] = True
    if metric.HasField("properties"):
        own["properties"] = _properties(metric.properties)
    observed_at = _at_ms(metric.timestamp) if metric.HasField("timestamp") else default_at
    return _Value(name, alias, value, value is None, observed_at, own)


def _label(value: _Value) -> str:
    return value.name if value.name is not None else f"alias {value.alias}"


def _declaration(metric: pb.Payload.Metric, value: _Value) -> dict[str, Any]:
    declared: dict[str, Any] = {"alias": value.alias} if value.alias is not None else {}
    return declared | {"datatype": _type_name(metric.datatype), "value": value.value}


def _type_number(name: object) -> int:
    """A datatype as ``_type_name`` wrote it, back to its number (0, Unknown, when it cannot be read)."""
    text = str(name)
    try:
        return int(pb.DataType.Value(text))
    except ValueError:
        number = text.removeprefix("type ")
        return int(number) if number.isdigit() else 0


def _type_name(datatype: int) -> str:
    try:
        return pb.DataType.Name(datatype)  # type: ignore[arg-type]  # any uint32 may arrive on the wire
    except ValueError:
        return f"type {datatype}"


def _metric_value(metric: pb.Payload.Metric, datatype: int) -> Any:
    kind = metric.WhichOneof("value")
    if kind is None:
        return None
    if kind == "dataset_value":
        return _dataset(metric.dataset_value)
    if kind == "template_value":
        return _template(metric.template_value)
    if kind == "bytes_value":
        return _bytes(metric.bytes_value, datatype)
    if kind == "extension_value":
        return {"extension": metric.extension_value.SerializeToString().hex()}
    return _scalar(kind, getattr(metric, kind), datatype)


def _scalar(kind: str, raw: Any, datatype: int) -> Any:
    """A uint32/uint64/float/double/bool/string oneof value, read as its Sparkplug datatype, JSON-ready."""
    if kind == "float_value":
        return _finite_or_text(_float32(raw))
    if kind == "double_value":
        return _finite_or_text(raw)
    if kind in ("int_value", "long_value"):
        if datatype in _SIGNED_BITS:
            return _signed(raw, _SIGNED_BITS[datatype])
        if datatype == pb.DateTime:
            return _iso_or_ms(raw)
    return raw


def _signed(raw: int, bits: int) -> int:
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _float32(raw: float) -> float:
    """The shortest decimal that is the same 32-bit float: 21.3, not 21.299999237060547."""
    if not math.isfinite(raw):
        return raw
    packed = struct.pack("<f", raw)
    for digits in range(6, 10):
        short = float(f"{raw:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return raw


def _finite_or_text(value: float) -> float | str:
    # JSON (and PostgreSQL's jsonb) has no NaN or Infinity.
    return value if math.isfinite(value) else str(value)


def _iso_or_ms(ms: int) -> str | int:
    try:
        return _at_ms(ms).isoformat().replace("+00:00", "Z")
    except DecodeError:
        return ms


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bytes(data: bytes, datatype: int) -> Any:
    if datatype == pb.BooleanArray:
        return _booleans(data)
    if datatype == pb.StringArray:
        return [text.decode("utf-8", "replace") for text in data.removesuffix(b"\0").split(b"\0")] if data else []
    fmt = _ARRAY_FORMATS.get(datatype)
    if fmt is None or len(data) % struct.calcsize(fmt):
        return data.hex()
    items = struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data)
    if datatype == pb.DateTimeArray:
        return [_iso_or_ms(ms) for ms in items]
    if fmt == "f":
        return [_finite_or_text(_float32(item)) for item in items]
    return [_finite_or_text(item) if fmt == "d" else item for item in items]


def _booleans(data: bytes) -> list[bool] | str:
    # A 4-byte little-endian count, then the values packed eight to a byte, most significant bit first
    # (§6.4.17, BooleanArray: [F, F, T, T, F, T, F, F, T, T, F, T] → 0C 00 00 00 34 D0).
    if len(data) < 4:
        return data.hex()
    count = int.from_bytes(data[:4], "little")
    bits = data[4:]
    if count > len(bits) * 8:
        return data.hex()
    return [bool(bits[i // 8] >> (7 - i % 8) & 1) for i in range(count)]


def _dataset(dataset: pb.Payload.DataSet) -> dict[str, Any]:
    types = list(dataset.types)
    rows = [
        [_cell(cell, types[i] if i < len(types) else 0) for i, cell in enumerate(row.elements)]
        for row in dataset.rows[:MAX_DATASET_ROWS]
    ]
    return {
        "columns": list(dataset.columns),
        "types": [_type_name(t) for t in types],
        "rows": rows,
        "row_count": len(dataset.rows),
    }


def _cell(cell: pb.Payload.DataSet.DataSetValue, datatype: int) -> Any:
    kind = cell.WhichOneof("value")
    if kind is None:
        return None
    if kind == "extension_value":
        return {"extension": cell.extension_value.SerializeToString().hex()}
    return _scalar(kind, getattr(cell, kind), datatype)


def _template(template: pb.Payload.Template) -> dict[str, Any]:
    summary: dict[str, Any] = {"is_definition": template.is_definition}
    if template.HasField("template_ref"):
        summary["template_ref"] = template.template_ref
    if template.HasField("version"):
        summary["version"] = template.version
    summary["parameters"] = {parameter.name: _parameter(parameter) for parameter in template.parameters}
    summary["metrics"] = {
        metric.name or f"alias {metric.alias}": None if metric.is_null else _metric_value(metric, metric.datatype)
        for metric in template.metrics
    }
    return summary


def _parameter(parameter: pb.Payload.Template.Parameter) -> Any:
    kind = parameter.WhichOneof("value")
    if kind is None:
        return None
    if kind == "extension_value":
        return {"extension": parameter.extension_value.SerializeToString().hex()}
    return _scalar(kind, getattr(parameter, kind), parameter.type)


def _properties(properties: pb.Payload.PropertySet) -> dict[str, Any]:
    return {key: _property(value) for key, value in zip(properties.keys, properties.values, strict=False)}


def _property(value: pb.Payload.PropertyValue) -> Any:
    kind = value.WhichOneof("value")
    if value.is_null or kind is None:
        return None
    if kind == "propertyset_value":
        return _properties(value.propertyset_value)
    if kind == "propertysets_value":
        return [_properties(item) for item in value.propertysets_value.propertyset]
    if kind == "extension_value":
        return {"extension": value.extension_value.SerializeToString().hex()}
    return _scalar(kind, getattr(value, kind), value.type)


def _measurement(device_id: str, value: _Value, target: str, shared: Mapping[str, Any]) -> Measurement:
    quantity, convert = _UNITS[target]
    assert value.name is not None
    extra = {**shared, "metric": value.name, **value.own}
    return Measurement(device_id, value.observed_at, quantity, convert(float(value.value)), extra)


def _position(device_id: str, positional: Mapping[str, _Value], others: dict[str, Any]) -> Position | None:
    """A fix when latitude and longitude came together and lie on Earth; otherwise they stay in ``others``."""
    lat, lon, alt = (positional.get(name) for name in _POSITION_FIELDS)
    if lat is not None and lon is not None and -90 <= lat.value <= 90 and -180 <= lon.value <= 180:
        altitude = None if alt is None else float(alt.value)
        return Position(device_id, lat.observed_at, float(lat.value), float(lon.value), altitude)
    for value in positional.values():
        assert value.name is not None
        others[value.name] = value.value
    return None


def _with_extra(position: Position, extra: Mapping[str, Any]) -> Position:
    return Position(
        position.device_id, position.observed_at, position.latitude, position.longitude, position.altitude_m,
        extra=extra,
    )  # fmt: skip


def _rebirth_request(group: str, node: str, at: datetime) -> Reply:
    """An NCMD asking the edge node for a new NBIRTH and DBIRTHs (§6.4.23: a timestamp and no seq)."""
    ms = round(at.timestamp() * 1000)
    payload = pb.Payload(timestamp=ms)
    payload.metrics.add(name=REBIRTH_METRIC, timestamp=ms, datatype=pb.Boolean, boolean_value=True)
    return Reply(f"{NAMESPACE}/{group}/NCMD/{node}", payload.SerializeToString())


def _bench_sample() -> tuple[str, bytes]:
    """An NBIRTH with names, as §6.4.19 shows one, plus sensor metrics."""
    ms = 1_767_322_800_000
    payload = pb.Payload(timestamp=ms, seq=0)
    payload.metrics.add(name=BDSEQ_METRIC, alias=0, timestamp=ms, datatype=pb.Int64, long_value=3)
    payload.metrics.add(name=REBIRTH_METRIC, alias=1, timestamp=ms, datatype=pb.Boolean, boolean_value=False)
    payload.metrics.add(name="Properties/Hardware Make", alias=2, timestamp=ms, datatype=pb.String, string_value="Pi")
    payload.metrics.add(name="Sensors/Temperature", alias=3, timestamp=ms, datatype=pb.Float, float_value=4.5)
    payload.metrics.add(name="Sensors/Humidity", alias=4, timestamp=ms, datatype=pb.Double, double_value=61.2)
    return f"{NAMESPACE}/Warehouse/NBIRTH/Gateway 1", payload.SerializeToString()


BENCH_SAMPLE: Final[tuple[str, bytes]] = _bench_sample()
"""A (topic, payload) NBIRTH that ``stocktrace bench decode`` times."""
