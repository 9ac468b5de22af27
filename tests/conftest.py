"""Fixtures for the real services: each test run gets a database of its own, migrated, and topic prefixes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from stocktrace.db import migrate

ADMIN_DSN = os.environ.get("STOCKTRACE_TEST_ADMIN_DSN", "postgresql:///postgres")
MQTT_HOST = os.environ.get("STOCKTRACE_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("STOCKTRACE_TEST_MQTT_PORT", "1883"))

# Tables that hold data (not the schema's own bookkeeping); emptied between tests.
_KEEP = {"schema_migrations"}


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """A freshly created and migrated database for this test run, dropped afterwards."""
    name = f"stocktrace_test_{os.getpid()}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL unreachable at {ADMIN_DSN}: {exc}; run `make test` to set it up")
    with admin:
        admin.execute(f'drop database if exists "{name}"')
        admin.execute(f'create database "{name}"')
    url = f"postgresql:///{name}"
    migrate(url)
    yield url
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test database, with every data table emptied first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables"
                " where schemaname = 'public'"
            )
            if row[0].split(".")[-1] not in _KEEP
        ]
        if tables:
            conn.execute(f"truncate {', '.join(tables)} restart identity cascade")
        yield conn


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so tests on one broker never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def mqtt_address() -> tuple[str, int]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    try:
        client.connect(MQTT_HOST, MQTT_PORT)
    except OSError as exc:
        pytest.exit(f"Mosquitto unreachable at {MQTT_HOST}:{MQTT_PORT}: {exc}; run `make test` to set it up")
    client.disconnect()
    return MQTT_HOST, MQTT_PORT
