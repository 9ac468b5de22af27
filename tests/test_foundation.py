"""The glue: settings, migrations, retention, the HTTP API, the command line."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stocktrace import db as database
from stocktrace.cli import main
from stocktrace.retention import drop_expired_chunks, server_edition
from stocktrace.settings import SettingsError, load_settings


def test_settings_errors_name_the_variable_and_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("STOCKTRACE_MQTT_URL", "http://broker")
    monkeypatch.setenv("STOCKTRACE_BATCH_MAX_MESSAGES", "0")
    monkeypatch.setenv("STOCKTRACE_ROUTES", "zebra/#=no-such-format")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "STOCKTRACE_MQTT_URL: must look like mqtt://host:1883" in message
    assert "STOCKTRACE_BATCH_MAX_MESSAGES" in message
    assert "STOCKTRACE_ROUTES" in message
    assert "known decoders:" in message
    assert "native" in message


def test_settings_parse_routes_and_topics(monkeypatch) -> None:
    monkeypatch.setenv("STOCKTRACE_ROUTES", "zebra/+/data=native; lab/#=native")
    monkeypatch.setenv("STOCKTRACE_MQTT_TOPICS", "a/#, b/+")
    monkeypatch.setenv("STOCKTRACE_MQTT_URL", "mqtts://broker.example:8883")
    settings = load_settings()
    assert [(r.topic_filter, r.decoder) for r in settings.routes] == [("zebra/+/data", "native"), ("lab/#", "native")]
    assert settings.mqtt_topics == ["a/#", "b/+"]
    assert (settings.mqtt_host, settings.mqtt_port, settings.mqtt_tls) == ("broker.example", 8883, True)


def test_migrations_are_recorded_and_safe_to_run_again(dsn, db) -> None:
    assert database.migrate(dsn) == []
    versions = [row[0] for row in db.execute("select version from schema_migrations order by version")]
    assert versions == [m.version for m in database.available_migrations()]
    hypertables = {row[0] for row in db.execute("select hypertable_name from timescaledb_information.hypertables")}
    assert {"rfid_reads", "telemetry"} <= hypertables


def test_the_apache_edition_drops_expired_chunks_itself(dsn, db) -> None:
    old, recent = datetime.now(UTC) - timedelta(days=40), datetime.now(UTC) - timedelta(hours=1)
    for at in (old, recent):
        db.execute(
            "insert into rfid_reads (read_at, device_id, epc, received_at) values (%s, 'd', 'ABCD1234', %s)", (at, at)
        )

    async def run() -> tuple[str, int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await server_edition(conn), await drop_expired_chunks(conn, timedelta(days=30))

    edition, dropped = asyncio.run(run())
    assert edition == "apache"  # this machine's build; the Timescale edition gets policies instead
    assert dropped == 1
    assert db.execute("select read_at from rfid_reads").fetchall() == [(recent,)]


@pytest.fixture
def client(dsn, db, monkeypatch):
    monkeypatch.setenv("STOCKTRACE_DATABASE_URL", dsn)
    from stocktrace.app import create_app
    from stocktrace.auth import Role, create_key

    key = create_key(db, "foundation-tests", Role.ADMIN).key
    with TestClient(create_app(load_settings()), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client


def test_health_readiness_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok", "broker": "ok"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "stocktrace_ingest_messages_total" in metrics.text


def test_readiness_fails_with_the_reason_when_the_database_is_unreachable(monkeypatch) -> None:
    monkeypatch.setenv("STOCKTRACE_DATABASE_URL", "postgresql://127.0.0.1:1/nowhere")
    from stocktrace.app import create_app

    with TestClient(create_app(load_settings())) as test_client:
        response = test_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable:")


def test_dead_letters_are_listed_newest_first_and_paged(client, db) -> None:
    for i in range(3):
        db.execute(
            "insert into dead_letters (received_at, topic, payload, error) values (now(), %s, %s, 'bad')",
            (f"t/{i}", b"\x00\x01"),
        )
    page = client.get("/api/v1/dead-letters", params={"limit": 2}).json()
    assert [letter["topic"] for letter in page] == ["t/2", "t/1"]
    assert page[0]["payload_base64"] == "AAE="
    rest = client.get("/api/v1/dead-letters", params={"before_id": page[-1]["id"]}).json()
    assert [letter["topic"] for letter in rest] == ["t/0"]


def test_ingest_stats_count_recent_reads(client, db) -> None:
    now = datetime.now(UTC)
    db.execute(
        "insert into rfid_reads (read_at, device_id, epc, received_at) values (%s, 'd', 'ABCD1234', %s)", (now, now)
    )
    stats = client.get("/api/v1/ingest/stats").json()
    assert stats["rfid_reads_last_minute"] == 1


def test_migrate_command_reports_what_it_did(dsn, monkeypatch) -> None:
    monkeypatch.setenv("STOCKTRACE_DATABASE_URL", dsn)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "schema is up to date" in result.output


def test_a_bad_setting_is_reported_without_a_traceback(monkeypatch) -> None:
    monkeypatch.setenv("STOCKTRACE_DATABASE_URL", "mysql://x")
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 1
    assert "STOCKTRACE_DATABASE_URL: must start with postgresql://" in result.output
    assert "Traceback" not in result.output


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from stocktrace.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`STOCKTRACE_{name.upper()}`" not in readme]
    assert missing == [], f"settings missing from the README's configuration table: {missing}"
