"""The whole API as the service serves it (create_app), on the test database, with keys of each role."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from stocktrace.app import create_app
from stocktrace.auth import Role, create_key
from stocktrace.logs import configure_logging
from stocktrace.settings import Settings, load_settings

Conn = psycopg.Connection[Any]
Headers = dict[str, str]


@pytest.fixture
def settings(dsn: str) -> Settings:
    return load_settings(database_url=dsn)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI, db: Conn) -> Iterator[TestClient]:
    """A client with no key; the tables are emptied first (the ``db`` fixture)."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def key_of(db: Conn) -> Callable[..., Headers]:
    """Headers carrying a new key of ``role``, named ``name``."""

    def issue(role: Role, name: str | None = None) -> Headers:
        issued = create_key(db, name or f"test-{role}", role)
        return {"Authorization": f"Bearer {issued.key}"}

    return issue


@pytest.fixture
def admin(key_of: Callable[..., Headers]) -> Headers:
    return key_of(Role.ADMIN, "alice")


class LogLines:
    """What was logged through `configure_logging`, one JSON object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def logged(settings: Settings) -> Iterator[LogLines]:
    """Logging configured as `stocktrace run` configures it, into a buffer (not a terminal: JSON)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    lines = LogLines()
    configure_logging("INFO", settings, stream=lines.stream)
    yield lines
    root.handlers[:] = handlers
    root.setLevel(level)
