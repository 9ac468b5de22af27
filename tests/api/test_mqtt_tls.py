"""MQTT over TLS with per-device credentials, end to end, as the README's Mosquitto deployment describes it.

A certificate authority and a broker certificate are made with the openssl command line; a Mosquitto of the
test's own listens with TLS only, with the password and ACL files that `stocktrace devices mosquitto` writes
from the registry. A device publishes with its own credentials; the ingest worker, configured only through
STOCKTRACE_MQTT_URL=mqtts://..., STOCKTRACE_MQTT_CA_FILE and the service credentials, stores its reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from devices.registry import Device, run, upsert_device
from ingest.wire import BrokerOptions, Connection, MqttError
from stocktrace.cli import main
from stocktrace.service import consumer_for
from stocktrace.settings import Settings, broker_options, load_settings
from tests.ingest.helpers import wait_for_count

MOSQUITTO = shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
OPENSSL = shutil.which("openssl")
SERVICE_PASSWORD = "service-secret"


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path, name: str = "ca") -> None:
    """A CA (``<name>.crt``) and, signed by it, a broker certificate for 127.0.0.1 (``broker.crt/.key``)."""
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *curve, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
        "-subj", f"/CN=stocktrace {name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder,
    )  # fmt: skip
    (folder / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl("req", *curve, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", f"{name}.crt", "-CAkey", f"{name}.key", "-CAcreateserial",
        "-out", "broker.crt", "-days", "2", "-extfile", "broker.ext", cwd=folder,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class TlsBroker:
    port: int
    folder: Path
    passwords: dict[str, str]

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    assert MOSQUITTO is not None
    with log.open("wb") as output:
        # A file, not a pipe: a pipe nobody reads would stall the broker once its buffer filled.
        return subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=output, stderr=subprocess.STDOUT)


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
def broker(dsn: str, db: psycopg.Connection[Any], tmp_path: Path, topic_prefix: str) -> Iterator[TlsBroker]:
    if MOSQUITTO is None or OPENSSL is None:
        pytest.fail("mosquitto and openssl are needed; run `make test` to set them up")
    make_certificates(tmp_path)
    device = Device.model_validate(
        {"id": f"{topic_prefix}-reader", "kind": "rfid_reader", "source": "native", "mqtt": {}}
    )
    run(db, upsert_device(device))
    files = ["--password-file", str(tmp_path / "passwd"), "--acl-file", str(tmp_path / "acl")]
    written = CliRunner().invoke(
        main,
        ["devices", "mosquitto", *files, "--database-url", dsn, "--service-password", SERVICE_PASSWORD],
    )
    assert written.exit_code == 0, written.output
    passwords = dict(line.split("\t") for line in written.stdout.splitlines())
    port = _free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'broker.crt'}\nkeyfile {tmp_path / 'broker.key'}\n"
        "tls_version tlsv1.2\n"
        "allow_anonymous false\n"
        f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n"
        "persistence false\n"
        # Run as whoever runs the tests, so that the broker can read the files in tmp_path.
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "log_dest stdout\n"
    )
    log = tmp_path / "mosquitto.log"
    process = _start(tmp_path / "mosquitto.conf", log)
    try:
        _wait_for_port(port, process, log)
        yield TlsBroker(port, tmp_path, passwords)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _settings(dsn: str, broker: TlsBroker, prefix: str, ca_file: Path) -> Settings:
    return load_settings(
        database_url=dsn,
        mqtt_url=f"mqtts://127.0.0.1:{broker.port}",
        mqtt_ca_file=str(ca_file),
        mqtt_username="stocktrace",
        mqtt_password=SecretStr(SERVICE_PASSWORD),
        mqtt_topics=f"stocktrace/{prefix}-reader/#",
        mqtt_client_id=prefix,
        mqtt_share_group=prefix,
    )


def _device_client(broker: TlsBroker, username: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(broker.ca_file))
    client.username_pw_set(username, broker.passwords[username])
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_a_device_publishes_over_tls_and_the_worker_stores_its_reads(dsn, db, broker, topic_prefix) -> None:
    device = f"{topic_prefix}-reader"
    settings = _settings(dsn, broker, topic_prefix, broker.ca_file)
    reads = [json.dumps({"epc": f"3034F4E4E40002C00000{n:04X}", "antenna": 1}).encode() for n in range(20)]

    async def scenario() -> None:
        consumer = consumer_for(settings, 1)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.wait_for(consumer.connected.wait(), 10)
        publisher = _device_client(broker, device)
        try:
            for payload in reads:
                info = publisher.publish(f"stocktrace/{device}/reads", payload, qos=1)
                info.wait_for_publish(timeout=10)
            assert await wait_for_count(dsn, "select count(*) from rfid_reads", len(reads), timeout_s=20) == 20
        finally:
            publisher.disconnect()
            publisher.loop_stop()
            stop.set()
            await asyncio.wait_for(task, 30)
            await asyncio.sleep(0.2)  # the TLS close_notify and the socket's close take a turn of the loop

    asyncio.run(scenario())
    assert db.execute("select count(distinct epc), min(device_id) from rfid_reads").fetchone() == (20, device)


def _connect(options: BrokerOptions) -> None:
    async def connect() -> None:
        try:
            connection = await Connection.open(options, lambda *_: None, timeout_s=5)
            await connection.close()
        finally:
            # A refused connection's socket closes on a later turn of the loop; let it, before the loop ends.
            await asyncio.sleep(0.2)

    asyncio.run(connect())


def test_the_worker_refuses_a_broker_its_ca_did_not_sign(dsn, broker, topic_prefix, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    make_certificates(other, "other-ca")
    options = broker_options(_settings(dsn, broker, topic_prefix, other / "other-ca.crt"), f"{topic_prefix}-probe")
    with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        _connect(options)


def test_the_listener_takes_neither_plain_connections_nor_wrong_passwords(dsn, broker, topic_prefix) -> None:
    settings = _settings(dsn, broker, topic_prefix, broker.ca_file)
    _connect(broker_options(settings, f"{topic_prefix}-probe", clean_start=True))  # the right ones pass

    plain = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{broker.port}"})
    with pytest.raises(MqttError):
        _connect(broker_options(plain, f"{topic_prefix}-probe", clean_start=True))

    wrong = settings.model_copy(update={"mqtt_password": SecretStr("not-the-password")})
    with pytest.raises(MqttError, match="broker refused the connection"):
        _connect(broker_options(wrong, f"{topic_prefix}-probe", clean_start=True))
