"""Logs are JSON off a terminal and text on one, never carry secrets or whole payloads, and name the request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from stocktrace.logs import MAX_FIELD_CHARS, MAX_MESSAGE_CHARS, configure_logging
from stocktrace.settings import Settings, load_settings

log = logging.getLogger("stocktrace.test")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def secret_settings() -> Settings:
    return load_settings(
        database_url="postgresql://stocktrace:db-pass-123@db.internal:5432/stocktrace",
        mqtt_username="stocktrace",
        mqtt_password=SecretStr("broker-pass-456"),
    )


def _connect() -> None:
    raise ConnectionError("password=db-pass-123 rejected")


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restored")
def test_off_a_terminal_each_line_is_a_json_object_with_the_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    log.info("stored %d reads", 50, extra={"device": "fx9600-dock1"})
    log.debug("not at INFO")
    [entry] = _lines(stream)
    assert entry["message"] == "stored 50 reads"
    assert (entry["level"], entry["logger"], entry["device"]) == ("INFO", "stocktrace.test", "fx9600-dock1")
    assert entry["at"].endswith("+00:00")


@pytest.mark.usefixtures("restored")
def test_on_a_terminal_lines_are_text() -> None:
    stream = Terminal()
    configure_logging("INFO", stream=stream)
    log.warning("broker unreachable")
    assert stream.getvalue().rstrip().endswith("WARNING stocktrace.test: broker unreachable")


@pytest.mark.usefixtures("restored")
def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first)
    configure_logging("INFO", stream=second)
    log.info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


@pytest.mark.usefixtures("restored")
def test_secrets_never_reach_the_log(secret_settings: Settings) -> None:
    stream = io.StringIO()
    configure_logging("INFO", secret_settings, stream=stream)
    log.info("connecting to %s", secret_settings.database_url)
    log.info("broker refused password %s", "broker-pass-456")
    log.info("request with Authorization: Bearer stk_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eA")
    log.info('config {"api_key": "k-999", "webhook": "https://hooks:tok-777@example.com/x"}')
    try:
        _connect()
    except ConnectionError:
        log.exception("cannot connect")
    text = stream.getvalue()
    for secret in ("db-pass-123", "broker-pass-456", "Zm9vYmFyYmF6cXV4cXV1eA", "k-999", "tok-777"):
        assert secret not in text, secret
    entries = _lines(stream)
    assert entries[0]["message"] == "connecting to postgresql://stocktrace:***@db.internal:5432/stocktrace"
    assert "stk_0123456789ab_***" in entries[2]["message"], "the key id stays, to find the key"
    assert "ConnectionError" in entries[4]["exception"]


@pytest.mark.usefixtures("restored")
def test_long_messages_and_fields_are_cut() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    payload = "x" * 100_000
    log.warning("undecodable payload %s", payload, extra={"payload": payload})
    [entry] = _lines(stream)
    assert len(entry["message"]) < MAX_MESSAGE_CHARS + 50
    assert entry["message"].endswith("more characters)")
    assert len(entry["payload"]) < MAX_FIELD_CHARS + 50


def test_each_request_is_logged_once_with_its_id_key_and_status_but_no_query(client, admin, logged) -> None:
    response = client.get("/api/v1/sites", params={"search": "secret-term"}, headers=admin)
    [entry] = [e for e in logged.entries() if e["logger"] == "stocktrace.access"]
    assert entry["request_id"] == response.headers["x-request-id"]
    assert (entry["method"], entry["path"], entry["status"], entry["key"]) == ("GET", "/api/v1/sites", 200, "alice")
    assert "secret-term" not in json.dumps(entry)
    assert entry["duration_ms"] >= 0


def test_a_clients_request_id_is_kept_only_if_it_is_sane(client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "lb-1234.5"}).headers["x-request-id"] == "lb-1234.5"
    generated = client.get("/healthz", headers={"X-Request-ID": "<script>" * 20}).headers["x-request-id"]
    assert len(generated) == 32
