"""Every SQL query the boards send, and running one the way Grafana would: the tests and the benchmark use this.

A dashboard holds three kinds of SQL: panel targets, the alerts annotation and query variables. `queries` lists
them with the columns each panel reads; `resolve_variables` gives the variables the values Grafana would select
on load (a query variable's first option, or All); `run` expands a query (dashboards/macros.py) and executes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import psycopg
from grafana_foundation_sdk.models import dashboard

from dashboards.datasource import Column, Format, SqlAnnotationTarget, SqlQuery
from dashboards.macros import TimeRange, Variable, expand, panel_interval, parse_interval

Kind = Literal["panel", "annotation", "variable"]


@dataclass(frozen=True, slots=True)
class BoardQuery:
    board: str
    title: str
    kind: Kind
    ref_id: str
    format: Format
    sql: str
    expects: tuple[Column, ...]
    relative_time: str | None = None  # the panel's own range ("24h": the last 24 hours), as Grafana's timeFrom
    min_interval: str | None = None  # the panel's smallest $__interval ("1m"), as Grafana's panel interval

    @property
    def name(self) -> str:
        return f"{self.board} / {self.title} / {self.ref_id}"

    def time_range(self, dashboard_range: TimeRange) -> TimeRange:
        """The range Grafana queries this panel over: its relative time, when set, ends where the dashboard's does."""
        if self.relative_time is None:
            return dashboard_range
        return TimeRange(dashboard_range.to_at - parse_interval(self.relative_time), dashboard_range.to_at)


@dataclass(frozen=True, slots=True)
class BoardVariable:
    name: str
    type: str  # "query" or "custom"
    query: str
    multi: bool
    include_all: bool
    default: str | None


@dataclass(frozen=True, slots=True)
class Result:
    sql: str
    columns: tuple[str, ...]
    type_names: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    elapsed_s: float


def _panels(model: dashboard.Dashboard) -> Iterator[dashboard.Panel]:
    for panel in model.panels or []:
        if isinstance(panel, dashboard.RowPanel):
            yield from panel.panels
        else:
            yield panel


def queries(model: dashboard.Dashboard) -> list[BoardQuery]:
    """Panel targets, annotation targets and query variables, in the order they appear."""
    found: list[BoardQuery] = []
    for variable in variables(model):
        if variable.type == "query":
            # Grafana takes a variable's options from the first column (or __text and __value).
            found.append(BoardQuery(
                model.uid or "", f"${variable.name}", "variable", variable.name, Format.TABLE, variable.query, (),
            ))  # fmt: skip
    for annotation in (model.annotations.list_val or []) if model.annotations else []:
        if isinstance(annotation.target, SqlAnnotationTarget):
            query = annotation.target.query
            found.append(BoardQuery(
                model.uid or "", f"annotation {annotation.name}", "annotation", query.ref_id, query.format,
                query.raw_sql, query.expects,
            ))  # fmt: skip
    for panel in _panels(model):
        for target in panel.targets or []:
            if isinstance(target, SqlQuery):
                found.append(BoardQuery(
                    model.uid or "", panel.title or "", "panel", target.ref_id, target.format, target.raw_sql,
                    target.expects, panel.time_from, panel.interval,
                ))  # fmt: skip
    return found


def variables(model: dashboard.Dashboard) -> list[BoardVariable]:
    found = []
    for variable in (model.templating.list_val or []) if model.templating else []:
        current = variable.current.value if variable.current else None
        found.append(
            BoardVariable(
                name=variable.name,
                type=str(variable.type_val),
                query=str(variable.query or ""),
                multi=bool(variable.multi),
                include_all=bool(variable.include_all),
                default=current if isinstance(current, str) else None,
            )
        )
    return found


def run(
    conn: psycopg.Connection[Any],
    query: BoardQuery,
    time_range: TimeRange,
    values: Mapping[str, Variable],
    *,
    interval: timedelta | None = None,
) -> Result:
    """Expand query as Grafana would for this (the panel's) time range and these variables, and execute it."""
    if interval is None:
        lowest = parse_interval(query.min_interval) if query.min_interval else timedelta(seconds=1)
        interval = panel_interval(time_range, min_interval=lowest)
    sql = expand(query.sql, time_range, interval=interval, variables=values)
    started = time.perf_counter()
    cursor = conn.execute(sql.encode())
    rows = cursor.fetchall()
    elapsed = time.perf_counter() - started
    description = cursor.description or []
    type_names = tuple(_type_name(conn, column.type_code) for column in description)
    return Result(sql, tuple(column.name for column in description), type_names, rows, elapsed)


def _type_name(conn: psycopg.Connection[Any], oid: int) -> str:
    info = psycopg.adapters.types.get(oid)
    if info is not None:
        return info.name
    row = conn.execute("select typname from pg_type where oid = %s", (oid,)).fetchone()
    return str(row[0]) if row else str(oid)


def resolve_variables(
    conn: psycopg.Connection[Any], model: dashboard.Dashboard, time_range: TimeRange
) -> dict[str, Variable]:
    """The values Grafana selects when the dashboard loads without saved ones: All for an include-all variable,
    else the first option of a query variable, the saved default of a custom one."""
    resolved: dict[str, Variable] = {}
    for variable in variables(model):
        if variable.type == "query":
            query = BoardQuery(model.uid or "", variable.name, "variable", variable.name, Format.TABLE,
                               variable.query, ())  # fmt: skip
            options = [str(row[0]) for row in run(conn, query, time_range, resolved).rows]
            value: str | Sequence[str] = options if variable.include_all else (options[0] if options else "")
        else:
            value = variable.default or variable.query.split(",")[0]
        resolved[variable.name] = Variable(value, multi=variable.multi, include_all=variable.include_all)
    return resolved
