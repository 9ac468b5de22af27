"""The RFID rate and lag panels, which read the counts ingest keeps, show what the same panels computed from every
raw read would: filled through the real broker and consumer, over ranges whose buckets come from each grain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from dashboards import catalogue
from dashboards.boards import BOARDS
from dashboards.macros import TimeRange, panel_interval, parse_interval
from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count

# What the panels computed before the read counts existed: the same buckets, from every raw read.
RAW = {
    "Ingest rate": """
        select $__timeGroupAlias(read_at, $__interval), count(*) / ($__interval_ms / 1000.0) as "RFID reads/s"
        from rfid_reads where $__timeFilter(read_at) group by 1 order by 1""",
    "Ingest lag": """
        select $__timeGroupAlias(read_at, $__interval),
               avg(extract(epoch from received_at - read_at)) as "RFID mean lag",
               max(extract(epoch from received_at - read_at)) as "RFID max lag"
        from rfid_reads where $__timeFilter(read_at) group by 1 order by 1""",
    "Read rate per reader": """
        select $__timeGroupAlias(read_at, $__interval), device_id as metric,
               count(*) / ($__interval_ms / 1000.0) as "reads/s"
        from rfid_reads where $__timeFilter(read_at) and device_id in ($reader) group by 1, 2 order by 1, 2""",
    "Read rate per antenna": """
        select $__timeGroupAlias(read_at, $__interval), device_id || ' #' || antenna as metric,
               count(*) / ($__interval_ms / 1000.0) as "reads/s"
        from rfid_reads where $__timeFilter(read_at) and device_id in ($reader) group by 1, 2 order by 1, 2""",
}
READS = 540  # one every 20 s for the last three hours, round the three antennas
# Ranges whose buckets are 1 minute (read_counts), 2 minutes (read_counts), 10 minutes (read_counts_5m) and
# 30 minutes (read_counts_30m).
RANGES = {"3 hours": timedelta(hours=3), "2 days": timedelta(days=2), "7 days": timedelta(days=7),
          "30 days": timedelta(days=30)}  # fmt: skip


@pytest.fixture(scope="module")
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def readers() -> tuple[str, str]:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    return f"{prefix}-a", f"{prefix}-b"


@pytest.fixture(scope="module")
def ingested(
    dsn: str, mqtt_address: tuple[str, int], now: datetime, readers: tuple[str, str]
) -> Iterator[psycopg.Connection[Any]]:
    """Three hours of reads of two readers, through the broker and the consumer, one message delivered twice."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [str(row[0]) for row in conn.execute(
            "select quote_ident(tablename) from pg_tables"
            " where schemaname = 'public' and tablename <> 'schema_migrations'"
        )]  # fmt: skip
        conn.execute(f"truncate {', '.join(tables)} restart identity cascade".encode())
        antennas = [(readers[0], 1), (readers[0], 2), (readers[1], 1)]
        start_at = now - timedelta(hours=3)
        messages = []
        for first in range(0, READS, 30):
            reads = [(start_at + timedelta(seconds=20 * k), *antennas[k % 3]) for k in range(first, first + 30)]
            for device in readers:
                body = {"reads": [{"epc": f"30{k:022X}", "antenna": antenna, "at": at.isoformat()}
                                  for k, (at, d, antenna) in enumerate(reads, first) if d == device]}  # fmt: skip
                messages.append((f"stocktrace/{device}/reads", json.dumps(body).encode()))
        messages.append(messages[0])  # a redelivery: stored once, counted once

        async def ingest() -> None:
            async with running_consumer(dsn, mqtt_address, [f"stocktrace/{device}/reads" for device in readers]):
                publish_all(publisher(mqtt_address), messages)
                await wait_for_count(dsn, "select coalesce(sum(reads), 0) from read_counts", READS)

        asyncio.run(ingest())
        assert conn.execute("select count(*) from rfid_reads").fetchone() == (READS,)
        yield conn


def span(now: datetime, length: timedelta) -> TimeRange:
    """A range ending now that starts on a half hour, so that every grain's first bucket lies wholly inside it."""
    start = now - length
    return TimeRange(start - timedelta(minutes=start.minute % 30, seconds=start.second, microseconds=start.microsecond),
                     now)  # fmt: skip


PANELS = [
    (model, query)
    for model in (build().build() for build in BOARDS)
    for query in catalogue.queries(model)
    if query.title in RAW and query.ref_id == "A"  # B of the Operations panels is telemetry
]


def comparable(rows: list[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], list[float]]]:
    """Each row as its labels (time, series name) and its numbers as floats (rates are numeric, lags double
    precision), in the order of the labels."""
    split = [
        (tuple(v for v in row if not isinstance(v, int | float | Decimal)),
         [float(v) for v in row if isinstance(v, int | float | Decimal)])
        for row in rows
    ]  # fmt: skip
    return sorted(split, key=lambda row: row[0])


@pytest.mark.parametrize("length", RANGES.values(), ids=RANGES.keys())
@pytest.mark.parametrize(("model", "query"), PANELS, ids=[q.name for _, q in PANELS])
def test_panel_shows_what_the_raw_reads_would(ingested, now, model, query, length) -> None:
    time_range = span(now, length)
    values = catalogue.resolve_variables(ingested, model, time_range)
    raw = catalogue.BoardQuery(query.board, query.title, "panel", query.ref_id, query.format, RAW[query.title],
                               query.expects, min_interval=query.min_interval)  # fmt: skip

    shown = catalogue.run(ingested, query, time_range, values)
    expected = catalogue.run(ingested, raw, time_range, values)

    assert shown.columns == expected.columns
    assert len(shown.rows) == len(expected.rows) > 0
    for (labels, numbers), (raw_labels, raw_numbers) in zip(comparable(shown.rows), comparable(expected.rows),
                                                            strict=True):  # fmt: skip
        assert labels == raw_labels, query.name
        assert numbers == pytest.approx(raw_numbers, rel=1e-9), (query.name, labels)


@pytest.mark.parametrize("length", RANGES.values(), ids=RANGES.keys())
def test_rates_add_up_to_every_read_once_and_name_each_antenna(ingested, now, readers, length) -> None:
    time_range = span(now, length)
    interval_s = panel_interval(time_range, min_interval=parse_interval("1m")).total_seconds()
    by_title = {query.title: (model, query) for model, query in PANELS}
    model, per_antenna = by_title["Read rate per antenna"]
    values = catalogue.resolve_variables(ingested, model, time_range)

    total = sum(row[1] for row in catalogue.run(ingested, by_title["Ingest rate"][1], time_range, {}).rows)
    antennas = catalogue.run(ingested, per_antenna, time_range, values).rows

    assert float(total) * interval_s == pytest.approx(READS)
    assert {row[1] for row in antennas} == {f"{readers[0]} #1", f"{readers[0]} #2", f"{readers[1]} #1"}
    assert float(sum(row[2] for row in antennas)) * interval_s == pytest.approx(READS)
