"""Where simulated devices publish: the real broker (one MQTT v5 connection per device, QoS 1) or memory.

Each device has its own connection so that its last will is its own: when a fault takes a device offline,
the connection is closed with reason code 0x04, "Disconnect with Will Message" (MQTT 5.0 §3.14.2.1), and
the broker publishes the will exactly as it would for a device that lost power.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from simulator.delivery import Message
from simulator.formats import Publication

log = logging.getLogger(__name__)

QOS = 1
# Below Mosquitto's max_inflight_messages (stocktrace/setup/mosquitto.conf) so the broker never refuses a burst.
MAX_INFLIGHT = 500
# How many unacknowledged publications may pile up in paho before the simulation waits for the broker.
MAX_UNACKED = 20_000
CONNECT_TIMEOUT_S = 10.0
PUMP_EVERY = 100


class PublishError(Exception):
    """The broker cannot be reached or refused a device."""


@dataclass(frozen=True, slots=True)
class Link:
    """What a device's connection needs: its id, last will and the topics it takes commands on."""

    device_id: str
    will: Publication | None = None
    subscriptions: tuple[str, ...] = ()


class Sink(Protocol):
    def open(self, links: Sequence[Link]) -> None: ...
    def publish(self, message: Message) -> None: ...
    def disconnect(self, device_id: str, with_will: bool) -> None: ...
    def reconnect(self, link: Link) -> None: ...
    def commands(self) -> list[tuple[str, bytes]]: ...
    def pump(self, timeout_s: float = 0.0) -> None: ...
    def close(self) -> None: ...


@dataclass
class MemorySink:
    """Keeps what would have been published, wills included; for tests and dry runs."""

    messages: list[Message] = field(default_factory=list)
    wills: list[tuple[str, Publication]] = field(default_factory=list)
    links: dict[str, Link] = field(default_factory=dict)
    pending_commands: list[tuple[str, bytes]] = field(default_factory=list)

    def open(self, links: Sequence[Link]) -> None:
        self.links = {link.device_id: link for link in links}

    def publish(self, message: Message) -> None:
        self.messages.append(message)

    def disconnect(self, device_id: str, with_will: bool) -> None:
        will = self.links[device_id].will
        if with_will and will is not None:
            self.wills.append((device_id, will))

    def reconnect(self, link: Link) -> None:
        self.links[link.device_id] = link

    def commands(self) -> list[tuple[str, bytes]]:
        found, self.pending_commands = self.pending_commands, []
        return found

    def pump(self, timeout_s: float = 0.0) -> None:
        return None

    def close(self) -> None:
        return None


class MqttSink:
    """Publishes to a real broker, each device on its own MQTT v5 connection, every message at QoS 1.

    The connections have no network threads: the simulation thread publishes (paho writes at once) and calls
    `pump` to read acknowledgements and commands. One Python thread per device would spend its time handing
    the interpreter lock around; measured here, a pumped client publishes half again as fast.
    """

    def __init__(self, host: str, port: int, topic_prefix: str = "", username: str | None = None,
                 password: str | None = None) -> None:  # fmt: skip
        self.host, self.port = host, port
        self.prefix = topic_prefix.strip("/")
        self._credentials = (username, password)
        self._clients: dict[str, mqtt.Client] = {}
        self._commands: list[tuple[str, bytes]] = []
        self._token = secrets.token_hex(3)
        self._since_pump = 0
        self.sent = 0
        self.acked = 0

    def topic(self, topic: str) -> str:
        return f"{self.prefix}/{topic}" if self.prefix else topic

    def open(self, links: Sequence[Link]) -> None:
        for link in links:
            self._connect(link)

    def _connect(self, link: Link) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sim-{link.device_id}-{self._token}",
            protocol=mqtt.MQTTv5,
            userdata=link,
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if self._credentials[0] is not None:
            client.username_pw_set(*self._credentials)
        if link.will is not None:
            client.will_set(self.topic(link.will.topic), link.will.payload, qos=QOS, retain=link.will.retain)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        try:
            client.connect(self.host, self.port, keepalive=60)
        except OSError as exc:
            raise PublishError(f"cannot connect to MQTT broker {self.host}:{self.port}: {exc}") from None
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not client.is_connected():
            if time.monotonic() > deadline or client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"broker {self.host}:{self.port} did not accept device {link.device_id}")
        self._clients[link.device_id] = client

    def _on_connect(self, client: mqtt.Client, link: Link, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused simulated device %s: %s", link.device_id, rc)
            return
        for topic in link.subscriptions:
            client.subscribe(self.topic(topic), qos=QOS)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self.acked += 1

    def _on_message(self, client: mqtt.Client, link: Link, message: mqtt.MQTTMessage) -> None:
        self._commands.append((link.device_id, bytes(message.payload)))

    def publish(self, message: Message) -> None:
        self._clients[message.device_id].publish(
            self.topic(message.topic), message.payload, qos=QOS, retain=message.retain
        )
        self.sent += 1
        self._since_pump += 1
        if self._since_pump >= PUMP_EVERY:
            self.pump()
        while self.sent - self.acked > MAX_UNACKED:
            self.pump(0.001)

    def pump(self, timeout_s: float = 0.0) -> None:
        """Read acknowledgements and commands, write what is queued, keep the connections alive."""
        self._since_pump = 0
        for client in self._clients.values():
            client.loop(timeout_s)

    def disconnect(self, device_id: str, with_will: bool) -> None:
        # What the device sent before it died must reach the broker first, or its acks would never come.
        self.flush(5.0)
        client = self._clients.pop(device_id)
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=4 if with_will else 0)
        client.disconnect(reasoncode=reason)
        client.loop(0.01)

    def reconnect(self, link: Link) -> None:
        self._connect(link)

    def commands(self) -> list[tuple[str, bytes]]:
        found, self._commands = self._commands, []
        return found

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the broker acknowledged everything published; False if it did not in time."""
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            self.pump(0.005)
        return self.acked >= self.sent

    def close(self) -> None:
        if not self.flush():
            log.warning("broker acknowledged %d of %d publications before the simulator closed", self.acked, self.sent)
        for client in self._clients.values():
            client.disconnect()
            client.loop(0.01)
        self._clients.clear()
