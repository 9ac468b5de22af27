"""The TimescaleDB data source as panels refer to it, and the SQL query model Grafana's PostgreSQL plugin reads.

grafana-foundation-sdk ships query models for many data sources but none for PostgreSQL, so this module adds
one the way the SDK's "Defining a custom query type" how-to does: a `cogvariants.Dataquery` with `to_json`,
and a builder for it. The JSON is what Grafana's own query editor saves in code mode (packages/grafana-sql,
SQLQuery): ``{refId, datasource, rawSql, format, rawQuery, editorMode}``; the backend reads ``rawSql`` and
``format`` (pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go, QueryJson).

Each query also carries, outside the JSON, the columns its panel reads, so the tests can run every query against
the real database and check that those columns come back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

DATASOURCE_UID: Final = "stocktrace"
# The plugin id since Grafana 10.3; "postgres" (dashboards/provisioning/datasources/stocktrace.yaml) is its alias,
# and panels find the data source by uid either way.
DATASOURCE_TYPE: Final = "grafana-postgresql-datasource"


def stocktrace() -> dashboard.DataSourceRef:
    """The reference every panel, annotation and variable uses: the provisioned data source, by its uid."""
    return dashboard.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class Format(StrEnum):
    """How Grafana turns the rows into frames (sqleng: dataQueryFormatSeries / dataQueryFormatTable)."""

    TIME_SERIES = "time_series"
    TABLE = "table"


@dataclass(frozen=True, slots=True)
class Column:
    """A column the panel reads, and whether it must hold numbers (a value to plot) or times."""

    name: str
    kind: str = "any"  # "number", "time", "text" or "any"


def columns(spec: str) -> tuple[Column, ...]:
    """Columns from a compact spec: ``"time:time, metric:text, reads/s:number, location_id"``."""
    found = []
    for item in spec.split(","):
        if item.strip():
            name, _, kind = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "any")
            found.append(Column(name.strip(), kind.strip() or "any"))
    return tuple(found)


class SqlQuery(cogvariants.Dataquery):
    """A raw SQL target of the PostgreSQL data source."""

    ref_id: str
    raw_sql: str
    format: Format
    datasource: dashboard.DataSourceRef
    hide: bool | None
    expects: tuple[Column, ...]

    def __init__(
        self,
        raw_sql: str = "",
        format: Format = Format.TABLE,
        ref_id: str = "A",
        datasource: dashboard.DataSourceRef | None = None,
        hide: bool | None = None,
        expects: tuple[Column, ...] = (),
    ) -> None:
        self.raw_sql = raw_sql
        self.format = format
        self.ref_id = ref_id
        self.datasource = datasource or stocktrace()
        self.hide = hide
        self.expects = expects

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": self.datasource,
            "rawSql": self.raw_sql,
            "format": str(self.format),
            # Code mode: the SQL is the query; the visual builder would otherwise rebuild it from its own model.
            "rawQuery": True,
            "editorMode": "code",
        }
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        ref = data.get("datasource") or {}
        return cls(
            raw_sql=data.get("rawSql", ""),
            format=Format(data.get("format", Format.TIME_SERIES)),
            ref_id=data.get("refId", "A"),
            datasource=dashboard.DataSourceRef(type_val=ref.get("type"), uid=ref.get("uid")),
            hide=data.get("hide"),
        )


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builds a `SqlQuery`: ``Sql(SELECT, Format.TIME_SERIES, "time:time, reads:number").ref_id("B")``."""

    _internal: SqlQuery

    def __init__(self, raw_sql: str, format: Format, expects: str = "") -> None:
        self._internal = SqlQuery(raw_sql=raw_sql.strip(), format=format, expects=columns(expects))

    def build(self) -> SqlQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def hide(self, hide: bool) -> Self:
        self._internal.hide = hide
        return self


class SqlAnnotationTarget(dashboard.AnnotationTarget):
    """An annotation query's target for a SQL data source.

    The SDK types an annotation's target after the built-in Grafana data source (limit, matchAny, tags, type);
    SQL data sources keep a regular query there instead (packages/grafana-sql/src/utils/migration.ts moves the
    old ``rawQuery`` string into ``target.rawSql``). Rows become annotations by column name: time, timeEnd,
    text, tags (comma separated).
    """

    query: SqlQuery

    def __init__(self, query: SqlQuery | None = None) -> None:
        super().__init__()
        self.query = query or SqlQuery()

    def to_json(self) -> dict[str, object]:
        return self.query.to_json()


@dataclass
class SqlAnnotation(cogbuilder.Builder[dashboard.AnnotationTarget]):
    """Builds a `SqlAnnotationTarget` from SQL returning time, timeEnd, text and tags."""

    raw_sql: str
    ref_id: str = "Anno"
    _built: SqlAnnotationTarget = field(init=False)

    def __post_init__(self) -> None:
        query = SqlQuery(
            raw_sql=self.raw_sql.strip(),
            format=Format.TABLE,
            ref_id=self.ref_id,
            expects=columns("time:time, timeEnd:time, text:text, tags:text"),
        )
        self._built = SqlAnnotationTarget(query)

    def build(self) -> SqlAnnotationTarget:
        return self._built
