"""Per-device credentials and topic ACLs for Mosquitto, checked against a real broker started for these tests.

What Mosquitto 2.0 does with a publish the ACL refuses depends on the protocol: an MQTT 3.1.1 client gets a
normal PUBACK and the message is dropped; an MQTT 5 client gets PUBACK reason code 0x87 (Not authorized).
A refused CONNECT is CONNACK 0x87 in MQTT 5 and return code 5 (not authorized) in 3.1.1.
"""

from __future__ import annotations

import base64
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from devices.manifest import apply, parse
from devices.mosquitto import (
    AclError,
    check_password,
    clients,
    device_client,
    filters_overlap,
    hash_password,
    parse_password_file,
    render_acl,
)
from devices.registry import Device, delete_device, list_devices, run, upsert_device
from stocktrace.cli import main

Conn = psycopg.Connection[Any]
NOT_AUTHORIZED = 0x87
MOSQUITTO = shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")


def _device(id: str, source: str = "native", kind: str = "rfid_reader", **fields: Any) -> Device:
    return Device.model_validate({"id": id, "kind": kind, "source": source, **fields})


# --- files, without a broker ----------------------------------------------------------------------------------


def test_password_hash_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "reader-1", "s3cret"], check=True)
    hashed = parse_password_file(passwords.read_text())["reader-1"]
    _, _, iterations, salt, _ = hashed.split("$")

    assert hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == hashed
    assert check_password("s3cret", hash_password("s3cret"))
    assert not check_password("guess", hashed)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("stocktrace/a/#", "stocktrace/ab/#", False),
        ("stocktrace/a/#", "stocktrace/a/b/#", True),
        ("stocktrace/a", "stocktrace/a/#", True),
        ("spBv1.0/g/NBIRTH/n1", "spBv1.0/g/NBIRTH/n2", False),
        ("spBv1.0/g/+/n1", "spBv1.0/g/NDATA/n1", True),
        ("tele/plug/#", "stat/plug/#", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


def test_devices_that_could_publish_as_each_other_are_refused() -> None:
    outer = _device("fx-1", "zebra-fx", mqtt={"topic_prefix": "zebra/dock"})
    inner = _device("fx-2", "zebra-fx", mqtt={"topic_prefix": "zebra/dock/2"})

    with pytest.raises(AclError, match="devices 'fx-1' and 'fx-2' could both publish"):
        clients([outer, inner], "stocktrace")


def test_formats_without_default_topics_need_a_prefix() -> None:
    with pytest.raises(AclError, match=r"device 'fx-1' \(zebra-fx\) has no default topics: set its mqtt.topic_prefix"):
        device_client(_device("fx-1", "zebra-fx"))
    with pytest.raises(AclError, match="a Sparkplug topic prefix is <group_id>/<edge_node_id>"):
        device_client(_device("node", "sparkplug-b", kind="gateway", mqtt={"topic_prefix": "just-a-node"}))


def test_topics_follow_each_formats_layout() -> None:
    def grants(device: Device) -> tuple[tuple[str, ...], tuple[str, ...]]:
        client = device_client(device)
        assert client is not None
        return client.grants.publish, client.grants.subscribe

    assert grants(_device("r-1")) == (("stocktrace/r-1", "stocktrace/r-1/#"), ("stocktrace/r-1/#",))
    assert grants(_device("plug-1", "tasmota", kind="sensor")) == (
        ("tele/plug-1/#", "stat/plug-1/#"),
        ("cmnd/plug-1/#",),
    )
    assert grants(_device("jane:phone", "owntracks", kind="gps_tracker", mqtt={"username": "jane"}))[0] == (
        "owntracks/jane/phone",
        "owntracks/jane/phone/#",
    )
    node = _device("plant/node-1", "sparkplug-b", kind="gateway", mqtt={"username": "node-1"})
    assert "spBv1.0/plant/DDATA/node-1/+" in grants(node)[0]
    assert device_client(_device("tag", "ruuvi-gateway", kind="sensor", mqtt=None)) is None


def test_anonymous_clients_get_nothing_and_service_reads_everything() -> None:
    acl = render_acl(clients([_device("r-1")], "stocktrace"))
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]

    assert rules == [
        "user stocktrace",
        "topic write spBv1.0/+/NCMD/+",
        "topic read #",
        "user r-1",
        "topic readwrite stocktrace/r-1/#",
        "topic write stocktrace/r-1",
    ]


def test_the_service_user_name_is_reserved() -> None:
    with pytest.raises(AclError, match="uses the service's user name 'stocktrace'"):
        clients([_device("stocktrace")], "stocktrace")


def test_the_example_sites_devices_get_credentials(dsn: str, db: Conn) -> None:
    example = Path(__file__).parents[2] / "devices" / "examples" / "site.yaml"
    run(db, apply(parse(example.read_text())))

    users = {client.username: client for client in clients(run(db, list_devices()), "stocktrace")}

    # Sensors behind a gateway or network server do not connect; the gateways do, under their own topics.
    assert sorted(users) == [
        "cold-chain-node", "driver-417", "fx9600-dock1", "impinj-14-2b-9f", "ruuvi-gw-cold", "shelf-reader-a1",
        "stocktrace", "tts-stocktrace-app",
    ]  # fmt: skip
    assert users["driver-417"].grants.publish == ("owntracks/driver-417/phone", "owntracks/driver-417/phone/#")
    assert users["tts-stocktrace-app"].grants.publish == ("v3/stocktrace@ttn", "v3/stocktrace@ttn/#")


# --- a real broker --------------------------------------------------------------------------------------------


@dataclass
class Broker:
    port: int
    files: Path
    database_url: str
    passwords: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def generate(self, *options: str) -> dict[str, str]:
        """Run `stocktrace devices mosquitto`; the new passwords it prints."""
        result = CliRunner().invoke(
            main,
            ["devices", "mosquitto", "--password-file", str(self.files / "passwd"),
             "--acl-file", str(self.files / "acl"), "--database-url", self.database_url,
             "--service-password", "service-secret", *options],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        issued = dict(line.split("\t") for line in result.stdout.splitlines())
        self.passwords |= issued
        return issued

    def reload(self) -> None:
        # mosquitto.conf(5): password_file and acl_file are reloaded on SIGHUP.
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited: {log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("mosquitto did not start listening")


@pytest.fixture
def broker(dsn: str, db: Conn, tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed; run `make test` to set it up")
    run(db, upsert_device(_device("reader-a")))
    run(db, upsert_device(_device("reader-b")))
    run(db, upsert_device(_device("plug-1", "tasmota", kind="sensor")))
    run(db, upsert_device(_device("plant/node-1", "sparkplug-b", kind="gateway", mqtt={"username": "node-1"})))
    port = _free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {tmp_path / 'passwd'}\n"
        f"acl_file {tmp_path / 'acl'}\n"
        "persistence false\n"
        # Run as whoever runs the tests, so that the broker can read the files in tmp_path.
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "log_dest stdout\n"
    )
    broker = Broker(port, tmp_path, dsn, {})
    broker.generate()
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as output:
        # A file, not a pipe: a pipe nobody reads would stall the broker once its buffer filled.
        broker.process = process = subprocess.Popen(
            [MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process, log)
        yield broker
    finally:
        process.terminate()
        process.wait(timeout=10)


class Probe:
    """A paho client that records what the broker answered."""

    def __init__(self, broker: Broker, username: str | None, password: str | None, protocol: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion(protocol))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.port = broker.port
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason)
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.acked:
            self.pubacks[mid] = reason
            self.acked.notify_all()

    def connect(self) -> int:
        """The CONNACK's reason code (MQTT 3.1.1 return codes come mapped to their MQTT 5 equivalents)."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        return self.connack.get(timeout=5).value

    def publish(self, topic: str, payload: bytes) -> int:
        """The PUBACK's reason code, 0 for MQTT 3.1.1."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.pubacks, timeout=5), f"no PUBACK for {topic}"
            return self.pubacks[mid].value

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


OpenProbe = Callable[..., Probe]


@pytest.fixture
def probe(broker: Broker) -> Iterator[OpenProbe]:
    opened: list[Probe] = []

    def open_probe(username: str | None, protocol: int = mqtt.MQTTv311, password: str | None = None) -> Probe:
        client = Probe(broker, username, password or broker.passwords.get(username or ""), protocol)
        opened.append(client)
        return client

    yield open_probe
    for client in opened:
        client.close()


def _service(probe: OpenProbe, topic_filter: str) -> Probe:
    service = probe("stocktrace", password="service-secret")
    assert service.connect() == 0
    # The service consumes through a shared subscription, as the ingest workers do.
    service.client.subscribe(f"$share/stocktrace/{topic_filter}", qos=1)
    time.sleep(0.2)
    return service


def _received(service: Probe, marker: str) -> list[str]:
    """Topics delivered up to and including the one named ``marker``."""
    topics = []
    while True:
        message = service.messages.get(timeout=5)
        topics.append(message.topic)
        if message.topic == marker:
            return topics


def test_a_device_publishes_on_its_own_topics_and_the_service_receives(probe: OpenProbe) -> None:
    service = _service(probe, "stocktrace/#")
    reader = probe("reader-a")
    assert reader.connect() == 0

    assert reader.publish("stocktrace/reader-a/reads", b'{"epc": "E200"}') == 0

    assert _received(service, "stocktrace/reader-a/reads") == ["stocktrace/reader-a/reads"]


def test_mqtt_3_publish_on_another_devices_topic_is_dropped(probe: OpenProbe) -> None:
    service = _service(probe, "stocktrace/#")
    reader = probe("reader-a")
    reader.connect()

    # MQTT 3.1.1 has no way to refuse a publish: the PUBACK is normal and the broker drops the message.
    assert reader.publish("stocktrace/reader-b/reads", b'{"epc": "FAKE"}') == 0
    reader.publish("stocktrace/reader-a/reads", b'{"epc": "E200"}')

    assert _received(service, "stocktrace/reader-a/reads") == ["stocktrace/reader-a/reads"]


def test_mqtt_5_publish_on_another_devices_topic_is_refused(probe: OpenProbe) -> None:
    service = _service(probe, "#")
    reader = probe("reader-a", mqtt.MQTTv5)
    assert reader.connect() == 0

    assert reader.publish("stocktrace/reader-b/reads", b'{"epc": "FAKE"}') == NOT_AUTHORIZED
    assert reader.publish("stocktrace/reader-b/status", b"offline") == NOT_AUTHORIZED
    assert reader.publish("tele/plug-1/SENSOR", b"{}") == NOT_AUTHORIZED
    assert reader.publish("stocktrace/reader-a/status", b"online") == 0

    assert _received(service, "stocktrace/reader-a/status") == ["stocktrace/reader-a/status"]


@pytest.mark.parametrize(
    ("user", "own", "other"),
    [
        ("plug-1", "tele/plug-1/SENSOR", "tele/plug-2/SENSOR"),
        ("node-1", "spBv1.0/plant/NBIRTH/node-1", "spBv1.0/plant/NBIRTH/node-2"),
        ("node-1", "spBv1.0/plant/DDATA/node-1/probe", "spBv1.0/other/DDATA/node-1/probe"),
    ],
)
def test_formats_with_their_own_topic_layout(probe: OpenProbe, user: str, own: str, other: str) -> None:
    service = _service(probe, "#")
    device = probe(user, mqtt.MQTTv5)
    assert device.connect() == 0

    assert (device.publish(other, b"{}"), device.publish(own, b"{}")) == (NOT_AUTHORIZED, 0)
    assert _received(service, own) == [own]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
@pytest.mark.parametrize(
    ("username", "password"), [("stranger", "anything"), ("reader-a", "wrong password"), (None, None)]
)
def test_unknown_clients_are_refused_at_connect(
    probe: OpenProbe, username: str | None, password: str | None, protocol: int
) -> None:
    client = probe(username, protocol, password=password)
    assert client.connect() == NOT_AUTHORIZED


def test_regenerating_keeps_passwords_and_a_reload_applies_registry_changes(
    broker: Broker, probe: OpenProbe, db: Conn
) -> None:
    run(db, upsert_device(_device("reader-c")))
    run(db, delete_device("reader-b"))
    old = dict(broker.passwords)

    issued = broker.generate()

    assert list(issued) == ["reader-c"]
    assert "reader-b" not in parse_password_file((broker.files / "passwd").read_text())
    assert probe("reader-c").connect() == NOT_AUTHORIZED

    broker.reload()

    assert probe("reader-c").connect() == 0
    assert probe("reader-a", password=old["reader-a"]).connect() == 0
    assert probe("reader-b", password=old["reader-b"]).connect() == NOT_AUTHORIZED


def test_rotate_and_supplied_passwords(broker: Broker, probe: OpenProbe) -> None:
    old = broker.passwords["reader-a"]

    issued = broker.generate("--rotate", "reader-a", "--password", "plug-1=chosen-by-the-installer")

    assert list(issued) == ["reader-a"]
    broker.reload()
    assert probe("reader-a", password=old).connect() == NOT_AUTHORIZED
    assert probe("reader-a", password=issued["reader-a"]).connect() == 0
    assert probe("plug-1", password="chosen-by-the-installer").connect() == 0
    assert oct((broker.files / "passwd").stat().st_mode & 0o777) == "0o640"
