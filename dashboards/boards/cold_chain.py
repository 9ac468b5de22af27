"""Cold chain: temperatures against their allowed band, excursions, time out of range, and each lot's exposure.

A location's temperature is its own sensors' (location_temperature where the sensor's location is the location
itself), so a shelf does not repeat its cold room's curve. Samples hold until the sensor's next one, for at most
15 minutes, as in tracking/condition.py.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards.datasource import Format, Sql
from dashboards.panels import add_panels, board, data_table, query_variable, time_series

UID = "stocktrace-cold-chain"

SENSED_LOCATIONS = """
select distinct d.location_id
from devices d
join locations l on l.id = d.location_id
where d.kind = 'sensor' and d.assigned and l.kind not in ('vehicle', 'container')
order by 1
"""

TEMPERATURE = """
select $__timeGroupAlias(observed_at, $__interval), location_id as metric, avg(temperature_c) as "temperature"
from location_temperature
where $__timeFilter(observed_at) and location_id in ($location) and sensor_location_id = location_id
group by 1, 2
order by 1
"""

# The band is the location's current one (location_ranges), drawn across the range as two points per limit.
BAND = """
select t.at as time, r.location_id || ' ' || b.side as metric, b.limit_c as "limit"
from location_ranges r
cross join lateral (values ('min', r.temperature_min_c), ('max', r.temperature_max_c)) as b(side, limit_c)
cross join (values ($__timeFrom()::timestamptz), ($__timeTo()::timestamptz)) as t(at)
where r.location_id in ($location) and b.limit_c is not null
order by 1
"""

CONTAINER_TEMPERATURE = """
select $__timeGroupAlias(t.observed_at, $__interval), t.location_id as metric, avg(t.temperature_c) as "temperature"
from location_temperature t
join locations l on l.id = t.location_id
where $__timeFilter(t.observed_at) and t.sensor_location_id = t.location_id and l.kind in ('container', 'vehicle')
group by 1, 2
order by 1
"""

# Gaps and islands: consecutive samples of one sensor on the same side of the band form one excursion.
EXCURSIONS = """
with samples as (
    select location_id, device_id, observed_at, temperature_c, band, temperature_min_c, temperature_max_c,
           least(lead(observed_at) over w, observed_at + interval '15 minutes') as held_until,
           row_number() over w
             - row_number() over (partition by location_id, device_id, band order by observed_at) as island
    from location_temperature
    where $__timeFilter(observed_at) and sensor_location_id = location_id
    window w as (partition by location_id, device_id order by observed_at)
)
select location_id, device_id, band, min(observed_at) as started_at, max(held_until) as ended_at,
       extract(epoch from max(held_until) - min(observed_at)) / 60 as minutes,
       min(temperature_c) as lowest_c, max(temperature_c) as highest_c,
       min(temperature_min_c) as band_min_c, max(temperature_max_c) as band_max_c
from samples
where band <> 'within'
group by location_id, device_id, band, island
order by started_at desc
limit 500
"""

TIME_OUT_OF_RANGE = """
with samples as (
    select location_id, band,
           extract(epoch from least(lead(observed_at) over (partition by location_id, device_id order by observed_at),
                                    observed_at + interval '15 minutes', $__timeTo()::timestamptz) - observed_at)
               as held_s
    from location_temperature
    where $__timeFilter(observed_at) and sensor_location_id = location_id
)
select location_id,
       coalesce(sum(held_s) filter (where band = 'above'), 0) / 60 as minutes_above,
       coalesce(sum(held_s) filter (where band = 'below'), 0) / 60 as minutes_below,
       100 * coalesce(sum(held_s) filter (where band <> 'within'), 0) / nullif(sum(held_s), 0) as out_of_range_pct,
       sum(held_s) / 3600 as covered_hours
from samples
group by location_id
order by out_of_range_pct desc nulls last, location_id
"""

LOT_EXPOSURE = """
select e.lot, e.gtin, k.name as product, l.expires_on, e.items, e.mean_kinetic_c, e.mean_c, e.minimum_c, e.maximum_c,
       e.temperature_min_c, e.temperature_max_c, e.above_s / 60 as minutes_above, e.below_s / 60 as minutes_below,
       e.covered_s / 3600 as covered_hours
from lot_temperature_exposure($__timeFrom()::timestamptz, $__timeTo()::timestamptz) e
left join skus k on k.gtin = e.gtin
left join lots l on l.lot = e.lot
order by e.above_s + e.below_s desc, e.mean_kinetic_c desc, e.lot
limit 500
"""


def build() -> builders.Dashboard:
    dashboard = board(
        UID,
        "stocktrace / Cold chain",
        "Temperatures against their band, excursions, time out of range, and each lot's mean kinetic temperature.",
    ).with_variable(query_variable("location", "Location", SENSED_LOCATIONS, multi=True, include_all=True))
    return add_panels(
        dashboard,
        [
            time_series(
                "Temperature by location", "Mean of each location's own sensors, with its allowed band.",
                [Sql(TEMPERATURE, Format.TIME_SERIES, "time:time, metric:text, temperature:number"),
                 Sql(BAND, Format.TIME_SERIES, "time:time, metric:text, limit:number")],
                unit="celsius", width=16, height=9,
            ),
            data_table(
                "Time out of range", "Minutes above and below the band per location, and the share of the "
                "covered time that was out of range.",
                Sql(TIME_OUT_OF_RANGE, Format.TABLE,
                    "location_id:text, minutes_above:number, minutes_below:number, out_of_range_pct:number"),
                width=8, height=9, sort_by="out_of_range_pct",
            ),
            time_series(
                "Temperature in containers and vehicles", "Reefers and containers with their own sensors.",
                [Sql(CONTAINER_TEMPERATURE, Format.TIME_SERIES, "time:time, metric:text, temperature:number")],
                unit="celsius", width=24,
            ),
            data_table(
                "Excursions", "Each stretch a sensor spent outside its location's band, newest first.",
                Sql(EXCURSIONS, Format.TABLE,
                    "location_id:text, band:text, started_at:time, ended_at:time, minutes:number"),
                width=24, height=9,
            ),
            data_table(
                "Lots: temperature exposure", "Per lot, over the selected range: mean kinetic temperature "
                "(USP <1079.2>, ΔH/R = 10 000 K), time-weighted mean and extremes, minutes outside the SKU's "
                "range, from the sensors of every place its items were (hourly resolution).",
                Sql(LOT_EXPOSURE, Format.TABLE,
                    "lot:text, gtin:text, mean_kinetic_c:number, minutes_above:number, minutes_below:number"),
                width=24, height=9,
            ),
        ],
    )  # fmt: skip
