"""Item tracker: one item (the $epc variable): where it is, where it went, what temperature it went through, and
where it travelled aboard a vehicle."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import geomap
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import geomap as geomap_models

from dashboards.datasource import Format, Sql
from dashboards.panels import add_panels, board, data_table, lettered, query_variable, state_timeline, time_series

UID = "stocktrace-item-tracker"

# The most recently seen items; any other EPC can be typed in.
RECENT_ITEMS = "select epc from item_state order by last_seen_at desc limit 500"

NOW = """
select s.epc, s.status, s.location_id, l.name as location, s.site_id, s.since, s.last_seen_at, s.container_epc,
       i.gtin, k.name as product, i.lot, i.serial
from item_state s
join items i on i.epc = s.epc
left join locations l on l.id = s.location_id
left join skus k on k.gtin = i.gtin
where s.epc = '$epc'
"""

# Where it was at each moment: its events in the range, preceded by where it already was when the range began.
TIMELINE = """
select time, location
from (
    select e.at as time, coalesce(e.to_location, 'departed') as location
    from location_events e
    where e.epc = '$epc' and $__timeFilter(e.at)
    union all
    (select $__timeFrom()::timestamptz, coalesce(e.to_location, 'departed')
     from location_events e
     where e.epc = '$epc' and e.at < $__timeFrom()::timestamptz
     order by e.at desc
     limit 1)
) moves
order by time
"""

MOVEMENTS = """
select at, kind, from_location, to_location, direction, recorded_at
from location_events
where epc = '$epc' and $__timeFilter(at)
order by at desc
limit 1000
"""

# The sensors of each place it stayed in, during the stay (as tracking/condition.py; location_sensors falls back
# to the nearest ancestor with sensors).
EXPERIENCED = """
select $__timeGroupAlias(t.observed_at, $__interval), avg(t.temperature_c) as "temperature"
from item_location_intervals s
join location_temperature t
  on t.location_id = s.location_id and t.observed_at >= s.from_at and t.observed_at < coalesce(s.until_at, 'infinity')
where s.epc = '$epc' and $__timeFilter(t.observed_at)
group by 1
order by 1
"""

SKU_BAND = """
select t.at as time, b.side as metric, b.limit_c as "limit"
from items i
join skus k on k.gtin = i.gtin
cross join lateral (values ('SKU min', k.temperature_min_c), ('SKU max', k.temperature_max_c)) as b(side, limit_c)
cross join (values ($__timeFrom()::timestamptz), ($__timeTo()::timestamptz)) as t(at)
where i.epc = '$epc' and b.limit_c is not null
order by 1
"""

# While aboard a vehicle the item shares the vehicle's GPS fixes (tracking/vehicles.py); its last known position
# is in item_state.
POSITIONS = """
select t.observed_at as time, t.latitude, t.longitude, t.speed_mps * 3.6 as speed_kmh, s.location_id as vehicle
from item_location_intervals s
join locations v on v.id = s.location_id and v.kind = 'vehicle'
join devices d on d.location_id = s.location_id
join telemetry t
  on t.device_id = d.id and t.quantity = 'position'
 and t.observed_at >= s.from_at and t.observed_at < coalesce(s.until_at, 'infinity')
where s.epc = '$epc' and $__timeFilter(t.observed_at) and t.latitude is not null
union all
select last_seen_at, latitude, longitude, null, location_id
from item_state
where epc = '$epc' and latitude is not null
order by 1
"""


def _markers() -> common_builders.MapLayerOptions:
    location = (
        common_builders.FrameGeometrySource()
        .mode(common.FrameGeometrySourceMode.COORDS)
        .latitude("latitude")
        .longitude("longitude")
    )
    style: dict[str, Any] = {
        "color": {"fixed": "dark-blue"},
        "size": {"fixed": 5},
        "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
    }
    return (
        common_builders.MapLayerOptions()
        .type("markers")
        .name("Positions")
        .location(location)
        .config({"showLegend": False, "style": style})
        .tooltip(True)
    )


def _map() -> geomap.Panel:
    panel = (
        geomap.Panel()
        .title("In transit")
        .description("GPS fixes of the vehicles it travelled on, and its last known position.")
        .span(12)
        .height(10)
        .view(geomap.MapViewConfig().id("fit").lat(0).lon(0).zoom(10).all_layers(True))
        .basemap(common_builders.MapLayerOptions().type("default").name("Basemap"))
        .layers([_markers()])
        .tooltip(geomap.TooltipOptions().mode(geomap_models.TooltipMode.DETAILS))
    )
    for target in lettered(
        [Sql(POSITIONS, Format.TABLE, "time:time, latitude:number, longitude:number, vehicle:text")]
    ):
        panel.with_target(target)
    return panel


def build() -> builders.Dashboard:
    dashboard = board(
        UID,
        "stocktrace / Item tracker",
        "Pick an EPC: where it is, where it has been, the temperatures it went through, where it travelled.",
        time_from="now-7d",
    ).with_variable(
        # Options in the query's order (most recently seen first), not alphabetical.
        query_variable("epc", "EPC", RECENT_ITEMS, custom=True).sort(dashboard_models.VariableSort.DISABLED)
    )
    return add_panels(
        dashboard,
        [
            data_table(
                "Now", "The item's current state as the presence resolver decided it.",
                Sql(NOW, Format.TABLE, "epc:text, status:text, location_id:text, since:time, last_seen_at:time"),
                width=24, height=4,
            ),
            state_timeline(
                "Where it was", "Its location over time, from its location events.",
                Sql(TIMELINE, Format.TABLE, "time:time, location:text"),
            ),
            time_series(
                "Temperature it went through", "The sensors of each place it stayed in, during the stay, with "
                "its SKU's allowed range.",
                [Sql(EXPERIENCED, Format.TIME_SERIES, "time:time, temperature:number"),
                 Sql(SKU_BAND, Format.TIME_SERIES, "time:time, metric:text, limit:number")],
                unit="celsius", width=12, height=10,
            ),
            _map(),
            data_table(
                "Movements", "Every arrival, departure and move in the range, newest first.",
                Sql(MOVEMENTS, Format.TABLE, "at:time, kind:text, from_location:text, to_location:text"),
                width=24, height=8,
            ),
        ],
    )  # fmt: skip
