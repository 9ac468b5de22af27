"""An MQTT v5 subscriber connection that acknowledges QoS 1 messages when the application says so.

Why not a client library here: stocktrace acknowledges a message only after what it carries is committed,
and does so for thousands of messages per commit. paho-mqtt 2 can do manual acks, but its receive loop tops out
near 33k msg/s on one core; gmqtt acks after a per-message coroutine (a task per message); aiomqtt has no
application-controlled ack. This module implements only what a consumer needs of MQTT v5 (OASIS standard,
2019): CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH in (QoS 0 and 1), PUBACK out in bulk, PUBLISH out at QoS 0,
PINGREQ/PINGRESP and DISCONNECT. Everything else (publishers, tests, the simulator) uses paho-mqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

_CONNECT: Final = 0x10
_CONNACK: Final = 0x20
_PUBLISH: Final = 0x30
_PUBACK: Final = 0x40
_SUBSCRIBE: Final = 0x82  # §3.8.1: the low nibble of SUBSCRIBE is reserved as 0b0010
_SUBACK: Final = 0x90
_PINGREQ: Final = b"\xc0\x00"
_PINGRESP: Final = 0xD0
_DISCONNECT: Final = b"\xe0\x00"
_PUBACK_HEADER: Final = struct.Struct(">BBH")

# §2.2.2.2 property identifiers used in CONNECT and read from CONNACK.
_SESSION_EXPIRY: Final = 0x11
_RECEIVE_MAXIMUM: Final = 0x21
_MAXIMUM_PACKET_SIZE: Final = 0x27
_SERVER_KEEP_ALIVE: Final = 0x13
_REASON_STRING: Final = 0x1F
_PROPERTY_SIZES: Final = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
}
_STRING_PROPERTIES: Final = frozenset((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F))

# §3.2.2.2 CONNACK reason codes worth a sentence of advice.
_CONNACK_REASONS: Final = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version (the broker must speak MQTT v5)",
    0x85: "client identifier not valid",
    0x86: "bad user name or password (check STOCKTRACE_MQTT_USERNAME / STOCKTRACE_MQTT_PASSWORD)",
    0x87: "not authorized (give the stocktrace user read access to the topics in the broker's ACL)",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}

# on_publish(topic, payload, packet_id) — packet_id is 0 for QoS 0 messages, which need no acknowledgement.
PublishHandler = Callable[[str, bytes, int], None]


class MqttError(Exception):
    """The broker refused us, broke the protocol, or the connection was lost."""


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    receive_maximum: int = 65535
    clean_start: bool = False


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def _connect_packet(options: BrokerOptions) -> bytes:
    flags = 0x00 if not options.clean_start else 0x02
    if options.username is not None:
        flags |= 0x80
    if options.password is not None:
        flags |= 0x40
    properties = struct.pack(">BI", _SESSION_EXPIRY, options.session_expiry_s) + struct.pack(
        ">BH", _RECEIVE_MAXIMUM, options.receive_maximum
    )
    body = _utf8("MQTT") + bytes([5, flags]) + struct.pack(">H", options.keepalive_s)
    body += _varint(len(properties)) + properties + _utf8(options.client_id)
    if options.username is not None:
        body += _utf8(options.username)
    if options.password is not None:
        body += _utf8(options.password)
    return _packet(_CONNECT, body)


def _read_varint(buffer: bytes | bytearray, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None when the buffer ends first."""
    value, shift = 0, 0
    for index in range(offset, min(offset + 4, len(buffer))):
        byte = buffer[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(buffer) >= offset + 4:
        raise MqttError("malformed remaining length")
    return None


def _parse_properties(data: bytes) -> dict[int, int | str]:
    """CONNACK properties we care about; unknown ones are skipped by their declared type (§2.2.2.2)."""
    found: dict[int, int | str] = {}
    offset = 0
    while offset < len(data):
        identifier = data[offset]
        offset += 1
        if identifier in _PROPERTY_SIZES:
            size = _PROPERTY_SIZES[identifier]
            found[identifier] = int.from_bytes(data[offset : offset + size], "big")
            offset += size
        elif identifier in _STRING_PROPERTIES:
            (length,) = struct.unpack_from(">H", data, offset)
            found[identifier] = data[offset + 2 : offset + 2 + length].decode(errors="replace")
            offset += 2 + length
        elif identifier == 0x26:  # user property: a string pair
            for _ in range(2):
                (length,) = struct.unpack_from(">H", data, offset)
                offset += 2 + length
        elif identifier == 0x0B:  # subscription identifier: a variable byte integer
            parsed = _read_varint(data, offset)
            if parsed is None:
                raise MqttError("malformed property")
            offset = parsed[1]
        else:
            raise MqttError(f"unknown property 0x{identifier:02x}")
    return found


class _Protocol(asyncio.Protocol):
    """Frames packets off the socket; PUBLISH goes straight to the handler, the rest to waiting futures."""

    def __init__(self, on_publish: PublishHandler) -> None:
        self._on_publish = on_publish
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.replies: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        # Whoever waits on the connection reads the error; when nobody does, it is not an unhandled one.
        self.closed.add_done_callback(lambda future: future.cancelled() or future.exception())
        self.last_received = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_exception(MqttError(f"connection lost: {exc or 'closed by the broker'}"))

    def data_received(self, data: bytes) -> None:
        self.last_received = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        try:
            consumed = self._frame(buffer)
        except (MqttError, UnicodeDecodeError, struct.error, IndexError) as exc:
            self._fail(MqttError(f"protocol error: {exc}"))
            return
        del buffer[:consumed]

    def _frame(self, buffer: bytearray) -> int:
        offset, end_of_data = 0, len(buffer)
        on_publish = self._on_publish
        while end_of_data - offset >= 2:
            parsed = _read_varint(buffer, offset + 1)
            if parsed is None:
                break
            length, start = parsed
            end = start + length
            if end > end_of_data:
                break
            first = buffer[offset]
            if first & 0xF0 == _PUBLISH:
                # §3.3.2: topic name, packet identifier (QoS > 0), properties, then the payload.
                topic_length = (buffer[start] << 8) | buffer[start + 1]
                cursor = start + 2 + topic_length
                topic = buffer[start + 2 : cursor].decode()
                packet_id = 0
                if first & 0x06:
                    packet_id = (buffer[cursor] << 8) | buffer[cursor + 1]
                    cursor += 2
                properties_length = buffer[cursor]
                if properties_length < 0x80:
                    cursor += 1 + properties_length
                else:
                    parsed_properties = _read_varint(buffer, cursor)
                    if parsed_properties is None:
                        raise MqttError("malformed PUBLISH properties")
                    cursor = parsed_properties[1] + parsed_properties[0]
                on_publish(topic, bytes(buffer[cursor:end]), packet_id)
            elif first != _PINGRESP:
                self.replies.put_nowait((first, bytes(buffer[start:end])))
            offset = end
        return offset

    def _fail(self, error: MqttError) -> None:
        if not self.closed.done():
            self.closed.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class Connection:
    """One connected, subscribed session. Call `ack` with the packet ids of messages whose data is stored."""

    def __init__(self, protocol: _Protocol, keepalive_s: int) -> None:
        self._protocol = protocol
        self._keepalive_s = keepalive_s
        self._next_packet_id = 1
        self._pinger = asyncio.create_task(self._ping())
        self.session_present = False

    @classmethod
    async def open(cls, options: BrokerOptions, on_publish: PublishHandler, timeout_s: float = 10.0) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(on_publish), options.host, options.port, ssl=options.tls),
                timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise MqttError(f"cannot reach the broker at {options.host}:{options.port}: {exc}") from exc
        assert protocol.transport is not None
        protocol.transport.write(_connect_packet(options))
        connection = cls(protocol, options.keepalive_s)
        try:
            first, body = await connection._reply(timeout_s)
            connection._accept_connack(first, body)
        except BaseException:
            await connection.close()
            raise
        return connection

    def _accept_connack(self, first: int, body: bytes) -> None:
        if first != _CONNACK:
            raise MqttError(f"expected CONNACK, got packet type 0x{first:02x}")
        self.session_present = bool(body[0] & 0x01)
        reason = body[1]
        properties = _parse_properties(body[3 : 3 + body[2]]) if len(body) > 2 and body[2] < 0x80 else {}
        if reason >= 0x80:
            advice = _CONNACK_REASONS.get(reason, "refused")
            detail = properties.get(_REASON_STRING)
            raise MqttError(
                f"broker refused the connection: {advice} (reason 0x{reason:02x}{f', {detail}' if detail else ''})"
            )
        server_keepalive = properties.get(_SERVER_KEEP_ALIVE)
        if isinstance(server_keepalive, int) and server_keepalive:
            self._keepalive_s = server_keepalive

    async def _reply(self, timeout_s: float) -> tuple[int, bytes]:
        getter = asyncio.ensure_future(self._protocol.replies.get())
        waiting: set[asyncio.Future[Any]] = {getter, self._protocol.closed}
        done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._protocol.closed.done():
            self._protocol.closed.result()  # raises the reason the connection closed
        raise MqttError(f"no answer from the broker within {timeout_s:g} s")

    async def subscribe(self, topic_filters: Sequence[str], qos: int = 1, timeout_s: float = 10.0) -> None:
        packet_id = self._take_packet_id()
        payload = b"".join(_utf8(topic_filter) + bytes([qos]) for topic_filter in topic_filters)
        self._write(_packet(_SUBSCRIBE, struct.pack(">H", packet_id) + b"\x00" + payload))
        while True:
            first, body = await self._reply(timeout_s)
            if first == _SUBACK and struct.unpack_from(">H", body)[0] == packet_id:
                break
        properties_length = body[2]
        codes = body[3 + properties_length :]
        refused = [f for f, code in zip(topic_filters, codes, strict=False) if code >= 0x80]
        if refused:
            raise MqttError(
                f"broker refused the subscription to {', '.join(refused)} (not authorized or invalid filter)"
            )

    def ack(self, packet_ids: Sequence[int]) -> None:
        """Acknowledge QoS 1 deliveries, in the order they arrived (§4.6: PUBACKs go in order)."""
        if packet_ids:
            pack = _PUBACK_HEADER.pack
            self._write(b"".join([pack(_PUBACK, 2, packet_id) for packet_id in packet_ids]))

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0 (replies to devices, such as a Sparkplug rebirth request)."""
        self._write(_packet(_PUBLISH, _utf8(topic) + b"\x00" + payload))

    @property
    def closed(self) -> asyncio.Future[None]:
        """Completes (with an MqttError) when the connection is lost."""
        return self._protocol.closed

    async def close(self) -> None:
        self._pinger.cancel()
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.write(_DISCONNECT)
            transport.close()
        if not self._protocol.closed.done():
            self._protocol.closed.set_result(None)
        with contextlib.suppress(BaseException):
            await self._protocol.closed

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise MqttError("connection is closed")
        transport.write(data)

    def _take_packet_id(self) -> int:
        packet_id = self._next_packet_id
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    async def _ping(self) -> None:
        # §3.1.2.10: send PINGREQ within the keep alive; a broker silent for 1.5 keep alives is gone.
        loop = asyncio.get_running_loop()
        interval = max(self._keepalive_s / 2, 1)
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self._protocol.last_received > self._keepalive_s * 1.5:
                self._protocol._fail(MqttError("broker stopped answering (keep alive expired)"))
                return
            with contextlib.suppress(MqttError):
                self._write(_PINGREQ)
