"""dashboards/macros.py against Grafana's own cases.

The macro cases are those of grafana/grafana pkg/tsdb/grafana-postgresql-datasource/macros_test.go
(TestMacroEngine and the $__interval case of TestInterpolateSQLCommenter), with the same inputs and outputs.
The variable cases follow packages/grafana-sql/src/datasource/SqlDatasource.ts (interpolateVariable) and
templateSrv's formats.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboards.macros import (
    MacroError,
    TimeRange,
    Variable,
    expand,
    format_interval,
    interpolate_global,
    interpolate_macros,
    interpolate_variables,
    panel_interval,
    parse_interval,
)

FROM = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
RANGE = TimeRange(FROM, FROM + timedelta(minutes=5))
FROM_S, TO_S = int(FROM.timestamp()), int(FROM.timestamp()) + 300


def plain(sql: str, time_range: TimeRange = RANGE) -> str:
    return interpolate_macros(sql, time_range, timescaledb=False)


def timescale(sql: str) -> str:
    return interpolate_macros(sql, RANGE, timescaledb=True)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select $__time(time_column)", 'select time_column AS "time"'),
        ("select min($__time(time_column))", 'select min(time_column AS "time")'),
        ("WHERE $__timeFilter(time_column)",
         "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
        ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
        ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
        # pre 5.3 compatibility: a ',' right after the macro adds the alias
        ("SELECT $__timeGroup(time_column,'5m'), value",
         'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
        ("SELECT $__timeGroup(time_column,'5m') as time, value",
         "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
        ("SELECT $__timeGroup(time_column,'5m')", "SELECT floor(extract(epoch from time_column)/300)*300"),
        ("SELECT $__timeGroupAlias(time_column,'5m')",
         'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'),
        ("$__timeGroup(time_column , '5m')", "floor(extract(epoch from time_column)/300)*300"),
        ("$__timeGroupAlias(time_column , '5m')", 'floor(extract(epoch from time_column)/300)*300 AS "time"'),
        ("select $__unixEpochFilter(time)", f"select time >= {FROM_S} AND time <= {TO_S}"),
        ("select $__unixEpochNanoFilter(time)",
         f"select time >= {FROM_S * 10**9} AND time <= {TO_S * 10**9}"),
        ("select $__unixEpochNanoFrom()", f"select {FROM_S * 10**9}"),
        ("select $__unixEpochNanoTo()", f"select {TO_S * 10**9}"),
        ("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')",
         "SELECT floor((time_column+time_adjustment)/300)*300"),
        ("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')",
         'SELECT floor((time_column+time_adjustment)/300)*300 AS "time"'),
    ],
)  # fmt: skip
def test_grafana_macro_cases(sql: str, expected: str) -> None:
    assert plain(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("GROUP BY $__timeGroup(time_column,'5m')", "GROUP BY time_bucket('300.000s',time_column)"),
        ("GROUP BY $__timeGroup(time_column , '5m')", "GROUP BY time_bucket('300.000s',time_column)"),
        ("GROUP BY $__timeGroup(time_column , '12d')", "GROUP BY time_bucket('1036800.000s',time_column)"),
        ("GROUP BY $__timeGroup(time_column , '20ms')", "GROUP BY time_bucket('0.020s',time_column)"),
    ],
)
def test_grafana_timescaledb_cases(sql: str, expected: str) -> None:
    assert timescale(sql) == expected


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(1960, 2, 1, 7, tzinfo=UTC), datetime(1965, 2, 3, 8, tzinfo=UTC)),
        (datetime(1960, 2, 1, 7, tzinfo=UTC), datetime(1980, 2, 3, 8, tzinfo=UTC)),
    ],
)
def test_grafana_cases_before_1970(start: datetime, end: datetime) -> None:
    time_range = TimeRange(start, end)
    start_s, end_s = (
        int((start - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()),
        int((end - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()),
    )
    assert plain("WHERE $__timeFilter(time_column)", time_range) == (
        f"WHERE time_column BETWEEN '{start:%Y-%m-%dT%H:%M:%SZ}' AND '{end:%Y-%m-%dT%H:%M:%SZ}'"
    )
    assert plain("select $__unixEpochFilter(time)", time_range) == f"select time >= {start_s} AND time <= {end_s}"
    assert plain("select $__unixEpochNanoFilter(time)", time_range) == (
        f"select time >= {start_s * 10**9} AND time <= {end_s * 10**9}"
    )


def test_grafana_case_with_half_seconds() -> None:
    time_range = TimeRange(
        datetime(1960, 2, 1, 7, 0, 0, 500_000, tzinfo=UTC), datetime(1980, 2, 3, 8, 0, 0, 500_000, tzinfo=UTC)
    )
    assert plain("WHERE $__timeFilter(time_column)", time_range) == (
        "WHERE time_column BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    )
    # Go's Unix() floors before 1970 too.
    assert plain("select $__unixEpochFilter(t)", time_range) == "select t >= -312915600 AND t <= 318412800"


def test_grafana_interval_case() -> None:
    assert interpolate_global("SELECT $__interval", RANGE, timedelta(minutes=10)) == "SELECT 10m"
    assert interpolate_global("SELECT $__interval_ms", RANGE, timedelta(minutes=10)) == "SELECT 600000"
    assert interpolate_global("$__unixEpochFrom() $__unixEpochTo()", RANGE, timedelta(1)) == f"{FROM_S} {TO_S}"


def test_unknown_macro_and_missing_arguments_are_errors_as_in_grafana() -> None:
    with pytest.raises(MacroError, match='unknown macro "__nope"'):
        plain("select $__nope(x)")
    with pytest.raises(MacroError, match="missing time column argument for macro __timeFilter"):
        plain("where $__timeFilter()")
    with pytest.raises(MacroError, match="needs time column and interval"):
        plain("select $__timeGroup(t)")
    with pytest.raises(MacroError, match="error parsing interval"):
        plain("select $__timeGroup(t, 'soon')")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5m", timedelta(minutes=5)), ("1h30m", timedelta(minutes=90)), ("20ms", timedelta(milliseconds=20)),
     ("12d", timedelta(days=12)), ("2w", timedelta(weeks=2)), ("1.5h", timedelta(minutes=90))],
)  # fmt: skip
def test_intervals_parse_as_gtime(text: str, expected: timedelta) -> None:
    assert parse_interval(text) == expected


def test_calendar_intervals_count_from_now() -> None:
    january_31 = datetime(2025, 1, 31, tzinfo=UTC)
    # Go's AddDate: January 31 plus one month is March 3 in 2025.
    assert parse_interval("1M", now=january_31) == timedelta(days=31)
    assert parse_interval("1y", now=january_31) == timedelta(days=365)


@pytest.mark.parametrize(
    ("interval", "text"),
    [(timedelta(days=400), "1y"), (timedelta(days=2), "2d"), (timedelta(minutes=90), "1h"),
     (timedelta(seconds=90), "1m"), (timedelta(seconds=5), "5s"), (timedelta(milliseconds=20), "20ms"),
     (timedelta(microseconds=10), "1ms")],
)  # fmt: skip
def test_intervals_format_as_gtime(interval: timedelta, text: str) -> None:
    assert format_interval(interval) == text


def test_panel_interval_rounds_like_grafana() -> None:
    month = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC))
    assert panel_interval(month, max_data_points=1000) == timedelta(minutes=30)
    assert panel_interval(RANGE, max_data_points=1000) == timedelta(seconds=1)  # the data source's minimum


def test_single_value_variables_go_in_as_they_are_with_quotes_doubled() -> None:
    values = {"epc": Variable("30'14"), "n": Variable("5")}
    assert interpolate_variables("where epc = '$epc' and n >= ${n}", values) == "where epc = '30''14' and n >= 5"


def test_multi_value_and_all_variables_become_quoted_lists() -> None:
    values = {"site": Variable(["a", "b'c"], multi=True), "one": Variable("x", include_all=True)}
    assert interpolate_variables("in ($site) and in ([[one]])", values) == "in ('a','b''c') and in ('x')"


def test_variable_formats() -> None:
    values = {"v": Variable(["a", "b'c"], multi=True)}
    assert interpolate_variables("${v:csv}", values) == "a,b'c"
    assert interpolate_variables("${v:sqlstring}", values) == "'a','b''c'"
    assert interpolate_variables("${v:singlequote}", values) == "'a','b\\'c'"
    assert interpolate_variables("${v:doublequote}", values) == '"a","b\'c"'
    assert interpolate_variables("${v:pipe}", values) == "a|b'c"
    with pytest.raises(MacroError, match="unsupported variable format"):
        interpolate_variables("${v:nope}", values)


def test_names_that_are_not_variables_stay() -> None:
    assert interpolate_variables("$__timeFilter(t) and $missing", {}) == "$__timeFilter(t) and $missing"


def test_expand_runs_the_three_steps_in_grafanas_order() -> None:
    sql = "select $__timeGroupAlias(t, $__interval), v from x where $__timeFilter(t) and s in ($site)"
    assert expand(sql, RANGE, interval=timedelta(minutes=1), variables={"site": Variable(["a"], multi=True)}) == (
        "select time_bucket('60.000s',t) AS \"time\", v from x where t BETWEEN '2018-04-12T18:00:00Z' AND "
        "'2018-04-12T18:05:00Z' and s in ('a')"
    )
