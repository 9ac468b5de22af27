"""Prometheus metrics of the ingest path, updated once per batch so they cost nothing per message."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

MESSAGES: Final = Counter("stocktrace_ingest_messages", "MQTT messages committed and acknowledged")
ROWS: Final = Counter("stocktrace_ingest_rows", "Rows written to the raw tables", ["table"])
DEAD_LETTERS: Final = Counter("stocktrace_ingest_dead_letters", "Messages that could not be decoded")
DATABASE_ERRORS: Final = Counter("stocktrace_ingest_database_errors", "Batches whose commit failed and was retried")
BROKER_RECONNECTS: Final = Counter("stocktrace_ingest_broker_reconnects", "Connections to the broker (re)opened")
BATCH_MESSAGES: Final = Histogram(
    "stocktrace_ingest_batch_messages",
    "Messages per committed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000),
)
COMMIT_SECONDS: Final = Histogram(
    "stocktrace_ingest_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAG_SECONDS: Final = Histogram(
    "stocktrace_ingest_lag_seconds",
    "From the oldest read's device time to its commit, per batch",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600),
)
SUBSCRIBED: Final = Gauge(
    "stocktrace_ingest_subscribed_workers",
    "Workers connected and subscribed (1 per worker process)",
    multiprocess_mode="livesum",
)
