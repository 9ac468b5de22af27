"""Grafana's expansion of a PostgreSQL panel query, reproduced so that the panels' SQL can run outside Grafana.

Grafana turns a panel's ``rawSql`` into the SQL it sends in three steps, reproduced here in the same order:

1. Template variables, in the browser: templateSrv.replace with the data source's ``interpolateVariable``
   (packages/grafana-sql/src/datasource/SqlDatasource.ts). A multi-value or include-all variable becomes a
   list of quoted literals (``'a','b'``); a single-value variable is inserted as it is, with ``'`` doubled. A
   ``${name:format}`` picks one of templateSrv's formats instead (csv, singlequote, sqlstring, ...).
   ``$__interval`` and ``$__interval_ms`` come from the panel's interval (rangeutil.calculateInterval).
2. Global substitutions, in the backend: ``$__interval_ms``, ``$__interval``, ``$__unixEpochFrom()`` and
   ``$__unixEpochTo()`` (pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go, ``Interpolate``).
3. The PostgreSQL macro engine (pkg/tsdb/grafana-postgresql-datasource/macros.go): ``$__timeFilter``,
   ``$__timeGroup`` (``time_bucket`` when the data source has TimescaleDB enabled), ``$__timeGroupAlias``,
   ``$__unixEpochFilter`` and the rest, with Go's formatting of times (RFC 3339, nanosecond precision, trailing
   zeros dropped) and of floats (``%v``).

tests/dashboards/test_macros.py runs Grafana's own test cases (macros_test.go) through this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class MacroError(ValueError):
    """A macro Grafana would refuse (its backend answers the query with this error)."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The dashboard's time range; both ends UTC-aware."""

    from_at: datetime
    to_at: datetime

    def __post_init__(self) -> None:
        if self.from_at.tzinfo is None or self.to_at.tzinfo is None:
            raise ValueError("a time range needs UTC-aware datetimes")


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard variable's current value: one string, or several for a multi-value (or All) selection."""

    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False


# ----------------------------------------------------------------------------------------------------
# Go's formatting


def format_rfc3339_nano(at: datetime) -> str:
    """Go's ``t.UTC().Format(time.RFC3339Nano)``: fraction without trailing zeros, none when it is zero."""
    utc = at.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _unix_ns(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def _unix_s(at: datetime) -> int:
    # Go's Time.Unix() floors, also before 1970: 1960-02-01T07:00:00.5Z gives ...00 seconds, not ...01.
    return _unix_ns(at) // 1_000_000_000


def format_go_float(value: float) -> str:
    """Go's ``fmt.Sprintf("%v", float64)``: the shortest digits that round-trip, in exponent form when the
    exponent is below -4 or at least 6 (strconv.FormatFloat 'g' with precision -1): 300, 0.02, 1.0368e+06."""
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # the decimal point's place from the left of the digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


_GO_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION: Final = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DATE_UNIT: Final = re.compile(r"^(\d+)([dwMy])$")


def _parse_go_duration(text: str) -> timedelta:
    """Go's time.ParseDuration: a sequence of decimal numbers with units, such as "300ms" or "1h30m"."""
    body = text.removeprefix("-").removeprefix("+")
    if body == "0":
        return timedelta(0)
    position, seconds = 0, 0.0
    while position < len(body):
        match = _GO_DURATION.match(body, position)
        if match is None or match[1] in ("", "."):
            raise MacroError(f"error parsing interval {text}")
        seconds += float(match[1]) * _GO_UNITS[match[2]]
        position = match.end()
    if not body:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=-seconds if text.startswith("-") else seconds)


def _add_months(at: datetime, months: int) -> datetime:
    # Go's AddDate normalises an overflowing day: January 31 plus one month is March 3 (or 2).
    month_index = at.month - 1 + months
    first = at.replace(year=at.year + month_index // 12, month=month_index % 12 + 1, day=1)
    return first + timedelta(days=at.day - 1)


def parse_interval(text: str, now: datetime | None = None) -> timedelta:
    """gtime.ParseInterval: Go durations, plus d, w, M and y measured on the calendar from now (UTC)."""
    match = _DATE_UNIT.match(text)
    if match is None:
        return _parse_go_duration(text)
    count, unit = int(match[1]), match[2]
    start = (now or datetime.now(UTC)).astimezone(UTC)
    if unit == "d":
        return timedelta(days=count)
    if unit == "w":
        return timedelta(days=7 * count)
    if unit == "M":
        return _add_months(start, count) - start
    return _add_months(start, 12 * count) - start


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit of y (365 d), d, h, m, s, ms; "1ms" below that."""
    for unit, size in (
        ("y", timedelta(days=365)),
        ("d", timedelta(days=1)),
        ("h", timedelta(hours=1)),
        ("m", timedelta(minutes=1)),
        ("s", timedelta(seconds=1)),
        ("ms", timedelta(milliseconds=1)),
    ):
        if interval >= size:
            return f"{interval // size}{unit}"
    return "1ms"


# ----------------------------------------------------------------------------------------------------
# The panel's interval (packages/grafana-data/src/datetime/rangeutil.ts, calculateInterval / roundInterval)

# (below this many ms, round to this many ms)
_ROUNDING: Final = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000), (3_500, 2_000),
    (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000), (90_000, 60_000),
    (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (32_400_000, 21_600_000), (86_400_000, 43_200_000), (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000), (3_628_800_000, 2_592_000_000),
)  # fmt: skip
_YEAR_MS: Final = 31_536_000_000


def round_interval(interval_ms: float) -> int:
    """rangeutil.roundInterval: snap a raw interval to the next "nice" one (10 ms ... 30 d, then 1 y)."""
    for below, nice in _ROUNDING:
        if interval_ms < below:
            return nice
    return _YEAR_MS


def panel_interval(
    time_range: TimeRange, max_data_points: int = 1000, min_interval: timedelta = timedelta(seconds=1)
) -> timedelta:
    """The interval Grafana gives a panel: the range over its width in points, rounded, at least min_interval
    (the data source's default ``timeInterval``; the panel's own ``interval`` overrides it)."""
    span_ms = (time_range.to_at - time_range.from_at) / timedelta(milliseconds=1)
    rounded = timedelta(milliseconds=round_interval(span_ms / max_data_points))
    return max(rounded, min_interval)


# ----------------------------------------------------------------------------------------------------
# Step 1: template variables (templateSrv.replace)

# packages/grafana-data/src/utils/variables.ts, variableRegex: $name, [[name:format]], ${name.field:format}
_VARIABLE: Final = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _quote_literal(value: str) -> str:
    # The PostgreSQL query model's quoteLiteral (grafana-postgresql-datasource/postgresMetaQuery.ts).
    return "'" + value.replace("'", "''") + "'"


def _default_format(value: str | Sequence[str], variable: Variable) -> str:
    """SqlDatasource.interpolateVariable."""
    if isinstance(value, str):
        if variable.multi or variable.include_all:
            return _quote_literal(value)
        return value.replace("'", "''")
    return ",".join(_quote_literal(v) for v in value)


def _values(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# templateSrv's formats (packages/grafana-data/src/types/templateVars.ts VariableFormatID, formatRegistry.ts).
_FORMATS: Final[Mapping[str, Callable[[list[str]], str]]] = {
    "raw": lambda values: ",".join(values),
    "csv": lambda values: ",".join(values),
    "pipe": lambda values: "|".join(values),
    "singlequote": lambda values: ",".join("'" + v.replace("'", "\\'") + "'" for v in values),
    "doublequote": lambda values: ",".join('"' + v.replace('"', '\\"') + '"' for v in values),
    "sqlstring": lambda values: ",".join(_quote_literal(v) for v in values),
}


def interpolate_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Replace $name, ${name}, ${name:format} and [[name]]; names that are not variables stay as written."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[4]
        format_id = match[3] or match[6]
        variable = variables.get(name)
        if variable is None:
            return match[0]
        if format_id is None:
            return _default_format(variable.value, variable)
        if format_id not in _FORMATS:
            raise MacroError(f"unsupported variable format {format_id!r} in {match[0]}")
        return _FORMATS[format_id](_values(variable.value))

    return _VARIABLE.sub(replace, sql)


# ----------------------------------------------------------------------------------------------------
# Step 2: sqleng.Interpolate


def interpolate_global(sql: str, time_range: TimeRange, interval: timedelta) -> str:
    sql = sql.replace("$__interval_ms", str(interval // timedelta(milliseconds=1)))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(_unix_s(time_range.from_at)))
    return sql.replace("$__unixEpochTo()", str(_unix_s(time_range.to_at)))


# ----------------------------------------------------------------------------------------------------
# Step 3: the PostgreSQL macro engine (macros.go)

_MACRO: Final = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


def _needs_column(name: str, args: list[str]) -> str:
    if not args or args == [""]:
        raise MacroError(f"missing time column argument for macro {name}")
    return args[0]


def _group(name: str, args: list[str], timescaledb: bool) -> str:
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    try:
        seconds = parse_interval(args[1].strip("'")).total_seconds()
    except MacroError:
        raise MacroError(f"error parsing interval {args[1]}") from None
    if name == "__unixEpochGroup":
        return f"floor(({args[0]})/{format_go_float(seconds)})*{format_go_float(seconds)}"
    if timescaledb:
        return f"time_bucket('{seconds:.3f}s',{args[0]})"
    return f"floor(extract(epoch from {args[0]})/{format_go_float(seconds)})*{format_go_float(seconds)}"


def _evaluate(name: str, args: list[str], time_range: TimeRange, timescaledb: bool) -> str:  # noqa: C901 - one
    # case per macro, as macros.go's evaluateMacro switch
    start, end = time_range.from_at, time_range.to_at
    if name == "__time":
        return f'{_needs_column(name, args)} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {_needs_column(name, args)}) as "time"'
    if name == "__timeFilter":
        column = _needs_column(name, args)
        return f"{column} BETWEEN '{format_rfc3339_nano(start)}' AND '{format_rfc3339_nano(end)}'"
    if name == "__timeFrom":
        return f"'{format_rfc3339_nano(start)}'"
    if name == "__timeTo":
        return f"'{format_rfc3339_nano(end)}'"
    if name in ("__timeGroup", "__unixEpochGroup"):
        return _group(name, args, timescaledb)
    if name in ("__timeGroupAlias", "__unixEpochGroupAlias"):
        return _group(name.removesuffix("Alias"), args, timescaledb) + ' AS "time"'
    if name == "__unixEpochFilter":
        column = _needs_column(name, args)
        return f"{column} >= {_unix_s(start)} AND {column} <= {_unix_s(end)}"
    if name == "__unixEpochNanoFilter":
        column = _needs_column(name, args)
        return f"{column} >= {_unix_ns(start)} AND {column} <= {_unix_ns(end)}"
    if name == "__unixEpochNanoFrom":
        return str(_unix_ns(start))
    if name == "__unixEpochNanoTo":
        return str(_unix_ns(end))
    raise MacroError(f'unknown macro "{name}"')


def interpolate_macros(sql: str, time_range: TimeRange, *, timescaledb: bool = True) -> str:
    """macros.go Interpolate. Like Grafana, a bare $__timeGroup followed directly by ',' is taken as the
    pre-5.3 form and gets the alias; the check looks at the first occurrence of the same text."""

    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name == "__timeGroup":
            index = sql.find(match[0]) + len(match[0])
            if index < len(sql) and sql[index] == ",":
                name = "__timeGroupAlias"
        args = [arg.strip(" ") for arg in match[2].split(",")]
        return _evaluate(name, args, time_range, timescaledb)

    return _MACRO.sub(replace, sql)


# ----------------------------------------------------------------------------------------------------


def expand(
    sql: str,
    time_range: TimeRange,
    *,
    interval: timedelta | None = None,
    variables: Mapping[str, Variable] | None = None,
    timescaledb: bool = True,
) -> str:
    """The SQL Grafana sends to PostgreSQL for this panel query, dashboard state and time range."""
    interval = interval or panel_interval(time_range)
    scoped = {
        "__interval": Variable(format_interval(interval)),
        "__interval_ms": Variable(str(interval // timedelta(milliseconds=1))),
        **(variables or {}),
    }
    sql = interpolate_variables(sql, scoped)
    sql = interpolate_global(sql, time_range, interval)
    return interpolate_macros(sql, time_range, timescaledb=timescaledb)
