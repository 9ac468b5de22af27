"""Every SQL query of every board (panels, the alerts annotation, variables), expanded as Grafana expands it and
run against the real TimescaleDB, returns the columns its panel reads.

The database is filled with a compact generated history (dashboards/dataset.py, COPY): 40 days of two sites,
their readers, sensors, trucks, items, books, consumption and alerts. The simulator's path through MQTT, ingest
and the resolver takes minutes for a month of history; the generated rows land in the same tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from grafana_foundation_sdk.models import dashboard

from dashboards import catalogue, dataset
from dashboards.boards import BOARDS
from dashboards.datasource import Format
from dashboards.macros import TimeRange, Variable

DAYS = 40
# Reads over the last two days only: one-hour chunks make 40 days of reads slow to create and to drop.
SCALE = dataset.Scale(days=DAYS, items=200, reads_per_antenna_per_minute=0.5, sensor_interval_s=900,
                      gps_interval_s=600, read_days=2)  # fmt: skip
NUMBERS = {"int2", "int4", "int8", "float4", "float8", "numeric"}
TIMES = {"timestamptz", "timestamp", "date"}
TEXTS = {"text", "varchar", "bpchar", "name"}
# Choices an operator makes from the boards' fixed lists, so that these panels have rows in 40 days of history.
CHOICES = {"dead_stock_days": Variable("30"), "variance_units": Variable("1"), "variance_pct": Variable("0")}

MODELS: list[dashboard.Dashboard] = [build().build() for build in BOARDS]
QUERIES = [(model, query) for model in MODELS for query in catalogue.queries(model)]


@pytest.fixture(scope="module")
def world(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """The generated history in this run's database, loaded once for the module."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "select quote_ident(tablename) from pg_tables where schemaname = 'public'"
                " and tablename <> 'schema_migrations'"
            )
        ]
        conn.execute(f"truncate {', '.join(tables)} restart identity cascade".encode())
        dataset.load(conn, SCALE)
        yield conn


@pytest.fixture(scope="module")
def dashboard_range() -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(now - timedelta(days=DAYS), now)


def values_for(conn: psycopg.Connection[Any], model: dashboard.Dashboard, span: TimeRange) -> dict[str, Variable]:
    resolved = catalogue.resolve_variables(conn, model, span)
    return {**resolved, **{name: value for name, value in CHOICES.items() if name in resolved}}


def check_columns(query: catalogue.BoardQuery, result: catalogue.Result) -> None:
    types = dict(zip(result.columns, result.type_names, strict=True))
    for column in query.expects:
        assert column.name in types, f"{query.name}: no column {column.name!r} in {result.columns}"
        kind = types[column.name]
        allowed = {"number": NUMBERS, "time": TIMES, "text": TEXTS}.get(column.kind)
        assert allowed is None or kind in allowed, f"{query.name}: {column.name} is {kind}, not {column.kind}"


def check_time_series(query: catalogue.BoardQuery, result: catalogue.Result) -> None:
    """What Grafana's SQL backend needs of the time_series format (sqleng processFrame): a time column named
    time; every other column a number (a value) except one text column named metric (the series name)."""
    types = dict(zip(result.columns, result.type_names, strict=True))
    assert types.get("time") in TIMES, f"{query.name}: no time column named time"
    for name, kind in types.items():
        if name not in ("time", "metric"):
            assert kind in NUMBERS, f"{query.name}: value column {name} is {kind}"
    assert types.get("metric", "text") in TEXTS
    times = [row[result.columns.index("time")] for row in result.rows]
    assert times == sorted(times), f"{query.name}: rows must come in time order"


@pytest.mark.parametrize(("model", "query"), QUERIES, ids=[query.name for _, query in QUERIES])
def test_query_runs_and_returns_what_its_panel_reads(
    world: psycopg.Connection[Any], dashboard_range: TimeRange, model: dashboard.Dashboard,
    query: catalogue.BoardQuery,
) -> None:  # fmt: skip
    values = values_for(world, model, dashboard_range)

    result = catalogue.run(world, query, query.time_range(dashboard_range), values)

    assert not re.search(r"\$(\w|\{)|\[\[", result.sql), f"{query.name}: a variable or macro was left unexpanded"
    check_columns(query, result)
    if query.kind == "variable":
        assert result.type_names[0] in TEXTS, f"{query.name}: options come from the first column, as text"
    if query.format is Format.TIME_SERIES:
        check_time_series(query, result)
    assert result.rows, f"{query.name}: no rows from a populated database"


def test_device_counts_match_device_health(world: psycopg.Connection[Any], dashboard_range: TimeRange) -> None:
    query = next(q for _, q in QUERIES if q.board == "stocktrace-operations" and q.title == "Devices")

    (row,) = catalogue.run(world, query, dashboard_range, {}).rows

    # dataset.py: one sensor silent for two hours, one reader gone by its last will.
    assert row == (16, 2, 0)


def test_lot_mkt_lies_between_the_mean_and_the_maximum(
    world: psycopg.Connection[Any], dashboard_range: TimeRange
) -> None:
    query = next(q for _, q in QUERIES if q.title.startswith("Lots"))

    result = catalogue.run(world, query, dashboard_range, {})

    column = {name: index for index, name in enumerate(result.columns)}
    for row in result.rows:
        mean, mkt, highest = row[column["mean_c"]], row[column["mean_kinetic_c"]], row[column["maximum_c"]]
        # The Arrhenius weighting favours warm periods: MKT is at least the time-weighted mean (Jensen).
        assert mean - 1e-9 <= mkt <= highest + 1e-9, row


def test_time_filter_narrows_what_panels_count(world: psycopg.Connection[Any], dashboard_range: TimeRange) -> None:
    query = next(q for _, q in QUERIES if q.title == "Dead letters in range")
    last_day = TimeRange(dashboard_range.to_at - timedelta(days=1), dashboard_range.to_at)

    (month,) = catalogue.run(world, query, dashboard_range, {}).rows
    (day,) = catalogue.run(world, query, last_day, {}).rows

    # One dead letter every 20 minutes.
    assert day[0] == pytest.approx(72, abs=1)
    assert month[0] == pytest.approx(72 * DAYS, abs=2)
