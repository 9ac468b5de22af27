"""A batch of messages as received, and the rows they become once decoded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from psycopg.types.json import Jsonb

from devices.decoders import DecodeError
from devices.decoders.sparkplug import BirthsNotLoadedError
from devices.reading import DeviceStatus, Measurement, Position, RawMessage, Reply, TagRead
from ingest.routes import Router

log = logging.getLogger(__name__)

Row = tuple[Any, ...]


@dataclass(slots=True)
class Inbox:
    """Messages received since the last commit, in arrival order."""

    topics: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    packet_ids: list[int] = field(default_factory=list)
    first_at: float = 0.0

    def __len__(self) -> int:
        return len(self.topics)


@dataclass(slots=True)
class Rows:
    """What one batch writes, table by table."""

    received_at: datetime
    rfid_reads: list[Row] = field(default_factory=list)
    telemetry: list[Row] = field(default_factory=list)
    device_events: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    # device_id -> (last topic, messages)
    activity: dict[str, tuple[str, int]] = field(default_factory=dict)
    # (device_id, antenna) -> (newest read time, reads)
    antennas: dict[tuple[str, int], tuple[datetime, int]] = field(default_factory=dict)
    oldest_observed_at: datetime | None = None

    @property
    def row_count(self) -> int:
        return len(self.rfid_reads) + len(self.telemetry) + len(self.device_events)


def _extra(extra: Any) -> Jsonb | None:
    return Jsonb(extra) if extra else None


def decode_inbox(inbox: Inbox, router: Router, received_at: datetime, max_payload_bytes: int) -> Rows:
    """Decode every message; what does not decode becomes a dead letter with its reason, never an exception.

    For callers that cannot load stored Sparkplug births: a decoder that asks for them is told none are stored.
    """
    decoding = Decoding(inbox, router, received_at, max_payload_bytes)
    while (need := decoding.run()) is not None:
        for device_id in need.device_ids:
            need.book.record(device_id, None, received_at)
    return decoding.rows


class Decoding:
    """One batch being decoded, in arrival order. It pauses where a decoder needs births stored by other workers
    (`run` says which, and in which book): the caller loads them into the book and calls `run` again to go on
    from that message."""

    def __init__(self, inbox: Inbox, router: Router, received_at: datetime, max_payload_bytes: int) -> None:
        self.rows = Rows(received_at)
        self._inbox = inbox
        self._router = router
        self._max_payload_bytes = max_payload_bytes
        self._next: int | None = 0

    def run(self) -> BirthsNotLoadedError | None:
        """Decode on; what a decoder needs loaded before it can go on, or None when the batch is decoded."""
        return None if self._next is None else self._decode_from(self._next)

    def _decode_from(self, start: int) -> BirthsNotLoadedError | None:
        rows, router, max_payload_bytes = self.rows, self._router, self._max_payload_bytes
        received_at, reads, activity = rows.received_at, rows.rfid_reads, rows.activity
        inbox = self._inbox
        messages = zip(islice(inbox.topics, start, None), islice(inbox.payloads, start, None), strict=True)
        for index, (topic, payload) in enumerate(messages, start):
            if len(payload) > max_payload_bytes:
                rows.dead_letters.append(
                    (
                        received_at,
                        topic,
                        payload[:1024],
                        f"payload of {len(payload)} bytes exceeds the limit of {max_payload_bytes}",
                    )
                )
                continue
            local = router.local(topic)
            decoder = None if local is None else router.resolve(local)
            if decoder is None or local is None:
                rows.dead_letters.append((received_at, topic, payload, router.unrouted(topic)))
                continue
            try:
                readings = decoder(RawMessage(local, payload, received_at))
            except DecodeError as exc:
                rows.dead_letters.append((received_at, topic, payload, str(exc)[:2000]))
                continue
            except BirthsNotLoadedError as need:  # raised before the decoder changed anything: decode it again
                self._next = index
                return need
            except Exception as exc:  # a decoder bug must not stop ingest; the payload is kept for a fix and replay
                log.exception("decoder for %s failed on a %d-byte payload", topic[:200], len(payload))
                rows.dead_letters.append(
                    (received_at, topic, payload, f"decoder failed: {type(exc).__name__}: {exc}"[:2000])
                )
                continue
            device_id = None
            for reading in readings:
                if type(reading) is TagRead:
                    reads.append(
                        (reading.observed_at, reading.device_id, reading.antenna, reading.epc, reading.rssi_dbm,
                         received_at, _extra(reading.extra))
                    )  # fmt: skip
                    device_id = reading.device_id
                else:
                    device_id = _sort_other(reading, rows, received_at) or device_id
            if device_id is not None:
                _, count = activity.get(device_id, (topic, 0))
                activity[device_id] = (topic, count + 1)
        self._next = None
        self._summarise()
        return None

    def _summarise(self) -> None:
        if self.rows.rfid_reads:
            self.rows.oldest_observed_at = _summarise_antennas(self.rows.rfid_reads, self.rows.antennas)


def _summarise_antennas(reads: list[Row], antennas: dict[tuple[str, int], tuple[datetime, int]]) -> datetime:
    """Fill in each antenna's newest read and count; returns the oldest read time (for the lag metric)."""
    oldest: datetime = reads[0][0]
    for row in reads:
        at = row[0]
        if at < oldest:
            oldest = at
        key = (row[1], row[2])
        seen = antennas.get(key)
        antennas[key] = (at, 1) if seen is None else (at if at > seen[0] else seen[0], seen[1] + 1)
    return oldest


def _sort_other(reading: object, rows: Rows, received_at: datetime) -> str | None:
    if isinstance(reading, Measurement):
        rows.telemetry.append(
            (reading.observed_at, reading.device_id, reading.quantity.value, reading.value,
             None, None, None, None, None, received_at, _extra(reading.extra))
        )  # fmt: skip
        return reading.device_id
    if isinstance(reading, Position):
        rows.telemetry.append(
            (reading.observed_at, reading.device_id, "position", None, reading.latitude, reading.longitude,
             reading.altitude_m, reading.accuracy_m, reading.speed_mps, received_at, _extra(reading.extra))
        )  # fmt: skip
        return reading.device_id
    if isinstance(reading, DeviceStatus):
        rows.device_events.append(
            (reading.observed_at, reading.device_id, -1 if reading.antenna is None else reading.antenna,
             reading.online, reading.reason, received_at, _extra(reading.extra))
        )  # fmt: skip
        return reading.device_id
    if isinstance(reading, Reply):
        rows.replies.append(reading)
    return None
