"""The pieces every board is made of: the dashboard frame, the alerts annotation, panels and variables.

Panels get their ids here, in the order they are added, because annotations and links refer to panels by id
and Grafana only invents ids for panels that lack one when it loads a dashboard (so they would differ between
loads of a provisioned file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common, dashboard

from dashboards.datasource import Sql, SqlAnnotation, stocktrace

TAGS: Final = ["stocktrace"]

# Alerts are annotations on every time-series panel: the red band from when the condition began to when it
# ended (still open while firing). Pending alerts (not yet past their delay) are left out: they have not fired.
ALERTS_ANNOTATION_SQL: Final = """
select starts_at as time,
       ends_at as "timeEnd",
       alertname || ' ' || subject || coalesce(': ' || (annotations ->> 'summary'), '') as text,
       concat_ws(',', severity, alertname, subject) as tags
from alerts
where state <> 'pending'
  and starts_at <= $__timeTo()::timestamptz
  and coalesce(ends_at, 'infinity') >= $__timeFrom()::timestamptz
order by starts_at
"""


def alerts_annotation() -> builders.AnnotationQuery:
    return (
        builders.AnnotationQuery()
        .name("Alerts")
        .datasource(stocktrace())
        .enable(True)
        .icon_color("red")
        .target(SqlAnnotation(ALERTS_ANNOTATION_SQL))
    )


def board(uid: str, title: str, description: str, *, time_from: str = "now-24h") -> builders.Dashboard:
    """A dashboard of the stocktrace folder with the alerts annotation; its panels come from `add_panels`."""
    return (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone(common.TimeZoneBrowser)
        .time(time_from, "now")
        .refresh("1m")
        # Provisioned from files (dashboards/provisioning/dashboards/stocktrace.yaml refuses UI saves).
        .readonly()
        .annotation(alerts_annotation())
        .link(
            builders.DashboardLink("stocktrace")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


def add_panels(
    dashboard_builder: builders.Dashboard, panels: Sequence[cogbuilder.Builder[dashboard.Panel]]
) -> builders.Dashboard:
    """Number the panels 1, 2, ... and lay them out left to right, top to bottom (the SDK's grid)."""
    for number, panel in enumerate(panels, start=1):
        built = panel.build()
        built.id_val = number
        built.datasource = stocktrace()
        dashboard_builder.with_panel(panel)
    return dashboard_builder


def lettered(targets: Sequence[Sql]) -> Sequence[Sql]:
    """Give the targets refIds A, B, C... in order, as Grafana's editor does."""
    for letter, target in zip("ABCDEFGH", targets, strict=False):
        target.ref_id(letter)
    return targets


def time_series(
    title: str, description: str, targets: Sequence[Sql], *, unit: str = "short", width: int = 12, height: int = 8,
    relative_time: str | None = None, min_interval: str | None = None,
) -> timeseries.Panel:  # fmt: skip
    """relative_time pins the panel to the last N (e.g. "24h") whatever the dashboard's range; min_interval is the
    smallest $__interval the panel groups by (Grafana's "Min interval"), for data kept per minute or coarser."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if relative_time is not None:
        panel.time_from(relative_time)
    if min_interval is not None:
        panel.interval(min_interval)
    for target in lettered(targets):
        panel.with_target(target)
    return panel


def data_table(
    title: str, description: str, target: Sql, *, width: int = 12, height: int = 8, sort_by: str | None = None
) -> table.Panel:
    panel = table.Panel().title(title).description(description).span(width).height(height).filterable(True)
    if sort_by is not None:
        panel.sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel.with_target(lettered([target])[0])


def stat_values(
    title: str, description: str, target: Sql, *, unit: str = "short", width: int = 6, height: int = 4,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
) -> stat.Panel:  # fmt: skip
    """A stat per numeric column of the query's last row (table format), coloured by the threshold steps."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds(steps))
    )
    return panel.with_target(lettered([target])[0])


def bar_gauge(
    title: str, description: str, target: Sql, *, unit: str = "short", width: int = 12, height: int = 8,
    minimum: float | None = None, maximum: float | None = None,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
) -> bargauge.Panel:  # fmt: skip
    """One bar per row (reduce with all values), named by the row's text column."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_builders.ReduceDataOptions().values(True).calcs([]))
        .thresholds(thresholds(steps))
    )
    if minimum is not None:
        panel.min(minimum)
    if maximum is not None:
        panel.max(maximum)
    return panel.with_target(lettered([target])[0])


def state_timeline(
    title: str, description: str, target: Sql, *, width: int = 24, height: int = 6
) -> statetimeline.Panel:
    panel = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .span(width)
        .height(height)
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
    )
    return panel.with_target(lettered([target])[0])


def thresholds(steps: Sequence[tuple[float | None, str]]) -> builders.ThresholdsConfig:
    return (
        builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


def query_variable(
    name: str, label: str, sql: str, *, multi: bool = False, include_all: bool = False, custom: bool = False
) -> builders.QueryVariable:
    """A variable whose options are the first column of `sql` (a table-format query, refreshed on load)."""
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .datasource(stocktrace())
        .query(sql.strip())
        .refresh(dashboard.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if custom:
        variable.allow_custom_value(True)
    return variable


def custom_variable(name: str, label: str, options: Sequence[str], default: str) -> builders.CustomVariable:
    """A fixed list of choices: thresholds a person picks, never free text that would end up in the SQL."""
    return (
        builders.CustomVariable(name)
        .label(label)
        .values(",".join(options))
        .current(dashboard.VariableOption(selected=True, text=default, value=default))
    )
