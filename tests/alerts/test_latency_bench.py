"""``stocktrace bench alert-latency`` runs the whole path: a reading over the real broker to a webhook."""

from __future__ import annotations

import json

from click.testing import CliRunner

from alerts.delivery_cli import bench_alert_latency


def test_bench_times_readings_to_webhooks_against_its_baselines(dsn: str, mqtt_address: tuple[str, int]) -> None:
    host, port = mqtt_address
    args = ["--database-url", dsn, "--mqtt-url", f"mqtt://{host}:{port}", "--trials", "3", "--json"]
    outcome = CliRunner().invoke(bench_alert_latency, args)
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert result["trials"] == 3
    assert result["woken_by_ingest"] is True
    # Every trial's webhook arrived, after its reading was committed, after it was published.
    assert 0 < result["ingest_p50_ms"] < result["p50_ms"] <= result["max_ms"]
    assert result["mqtt_p50_ms"] > 0
    assert result["delivery_p50_ms"] > 0


def test_bench_refuses_a_broker_it_cannot_publish_to(dsn: str) -> None:
    outcome = CliRunner().invoke(bench_alert_latency, ["--database-url", dsn, "--mqtt-url", "mqtts://broker:8883"])
    assert outcome.exit_code == 2
    assert "plain mqtt:// only" in outcome.output
