"""Inventory: what the readers see against what the books say, what is short, old, idle or turning over.

Everything is per site (the $site variable); each location counts what is inside it, as the inventory views do.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards.datasource import Format, Sql
from dashboards.panels import (
    add_panels,
    bar_gauge,
    board,
    custom_variable,
    data_table,
    query_variable,
    stat_values,
    time_series,
)

UID = "stocktrace-inventory"

SITES = "select id from locations where kind = 'site' order by id"

SITE_ACCURACY = """
select accuracy_pct as "unit accuracy", record_accuracy_pct as "record accuracy"
from stock_accuracy
where location_id = '$site'
"""

ACCURACY_BY_LOCATION = """
select location_id, accuracy_pct
from stock_accuracy
where site_id = '$site' and location_id <> '$site' and accuracy_pct is not null
order by accuracy_pct, location_id
limit 50
"""

ON_HAND_VS_BOOK = """
select v.location_id, v.gtin, k.name as product, v.observed_units, v.book_units, v.variance_units, v.variance_pct,
       v.book_as_of
from inventory_variance v
left join skus k on k.gtin = v.gtin
where v.site_id = '$site'
order by v.location_id, v.gtin
limit 2000
"""

# The thresholds are custom variables (fixed choices), so nothing typed by a person reaches the SQL.
VARIANCE_BEYOND = """
select v.location_id, v.gtin, k.name as product, v.observed_units, v.book_units, v.variance_units, v.variance_pct
from inventory_variance v
left join skus k on k.gtin = v.gtin
where v.site_id = '$site'
  and abs(v.variance_units) >= $variance_units
  and (v.variance_pct is null or abs(v.variance_pct) >= $variance_pct)
order by abs(v.variance_units) desc, v.location_id
limit 500
"""

# What the alert stage decided (alerts/rules_inventory.py, LowStock): its reorder point is weekday-aware and uses
# the configured service level; the alert's annotations carry it and the suggested order.
LOW_STOCK_ALERTS = """
select a.labels ->> 'location' as location_id, a.labels ->> 'gtin' as gtin, k.name as product,
       r.on_hand_units,
       case when a.annotations ->> 'reorder_point' ~ '^[0-9]+(\\.[0-9]+)?$'
            then (a.annotations ->> 'reorder_point')::double precision end as reorder_point_units,
       case when a.annotations ->> 'suggested_order_units' ~ '^[0-9]+$'
            then (a.annotations ->> 'suggested_order_units')::bigint end as suggested_order_units,
       r.days_of_inventory, a.state, a.fires_at
from alerts a
left join skus k on k.gtin = a.labels ->> 'gtin'
left join inventory_reorder_points r on r.location_id = a.labels ->> 'location' and r.gtin = a.labels ->> 'gtin'
where a.alertname = 'LowStock' and a.state <> 'resolved' and a.labels ->> 'site' = '$site'
order by r.days_of_inventory nulls first, location_id, gtin
limit 500
"""

# The textbook rule over the last 28 days (inventory_reorder_points, 0900_dashboards.sql), for every SKU with a
# lead time or a fixed minimum, whether or not the alert stage runs.
LOW_STOCK = """
select location_id, gtin, name as product, on_hand_units, reorder_point_units, suggested_order_units,
       days_of_inventory, average_daily_units, lead_time_days
from inventory_reorder_points
where site_id = '$site' and below_reorder_point
order by days_of_inventory nulls first, on_hand_units, location_id
limit 500
"""

AGING = """
select location_id, gtin, count(*) as units,
       count(*) filter (where age_on_site < interval '30 days') as "under 30 d",
       count(*) filter (where age_on_site >= interval '30 days' and age_on_site < interval '90 days') as "30-90 d",
       count(*) filter (where age_on_site >= interval '90 days' and age_on_site < interval '180 days') as "90-180 d",
       count(*) filter (where age_on_site >= interval '180 days') as "over 180 d",
       extract(epoch from max(age_on_site)) / 86400 as oldest_days
from inventory_aging
where site_id = '$site' and gtin is not null
group by location_id, gtin
order by oldest_days desc, location_id
limit 500
"""

DEAD_STOCK = """
select d.location_id, d.gtin, k.name as product, d.units, d.last_arrival_at, d.last_consumed_on, d.idle_days
from dead_stock(make_interval(days => $dead_stock_days)) d
left join skus k on k.gtin = d.gtin
where d.site_id = '$site'
order by d.idle_days desc, d.location_id
limit 500
"""

TURNOVER = """
select d.location_id, d.gtin, k.name as product, d.on_hand_units, d.consumed_units, d.average_daily_units,
       d.days_of_inventory, t.average_on_hand_units, t.turnover_per_year
from days_of_inventory(28) d
left join inventory_turnover(28) t on t.location_id = d.location_id and t.gtin = d.gtin
left join skus k on k.gtin = d.gtin
where d.site_id = '$site' and (d.on_hand_units > 0 or d.consumed_units > 0)
order by d.days_of_inventory nulls last, d.location_id
limit 500
"""

CONSUMPTION = """
select (day::timestamp at time zone 'UTC') as time, sum(units) as "units consumed"
from consumption_daily
where site_id = '$site' and day between $__timeFrom()::date and $__timeTo()::date
group by day
order by day
"""


def build() -> builders.Dashboard:
    dashboard = (
        board(
            UID,
            "stocktrace / Inventory",
            "Observed against book stock, accuracy, low stock, aging, dead stock and turnover, per site.",
            time_from="now-30d",
        )
        .with_variable(query_variable("site", "Site", SITES))
        .with_variable(
            custom_variable("variance_units", "Variance of at least (units)", ["1", "2", "5", "10", "50"], "5")
        )
        .with_variable(custom_variable("variance_pct", "and at least (%)", ["0", "1", "2", "5", "10"], "2"))
        .with_variable(custom_variable("dead_stock_days", "Dead after (days)", ["30", "60", "90", "180", "365"], "90"))
    )
    accuracy_steps = ((None, "red"), (95, "orange"), (98, "green"))
    return add_panels(
        dashboard,
        [
            stat_values(
                "Stock accuracy", "Unit accuracy (1 - |observed - book| / book) and record accuracy (share of "
                "SKU records exactly right) of the whole site.",
                Sql(SITE_ACCURACY, Format.TABLE, "unit accuracy:number, record accuracy:number"),
                unit="percent", width=8, height=6, steps=accuracy_steps,
            ),
            bar_gauge(
                "Stock accuracy by location", "The 50 least accurate locations of the site.",
                Sql(ACCURACY_BY_LOCATION, Format.TABLE, "location_id:text, accuracy_pct:number"),
                unit="percent", width=16, height=6, minimum=0, maximum=100, steps=accuracy_steps,
            ),
            data_table(
                "On hand vs book", "Observed (readers) and book (ERP) units per location and SKU.",
                Sql(ON_HAND_VS_BOOK, Format.TABLE,
                    "location_id:text, gtin:text, observed_units:number, book_units:number, variance_units:number"),
                width=12, height=10,
            ),
            data_table(
                "Variance beyond thresholds", "Records off by at least the chosen units and percentage.",
                Sql(VARIANCE_BEYOND, Format.TABLE,
                    "location_id:text, gtin:text, variance_units:number, variance_pct:number"),
                width=12, height=10,
            ),
            data_table(
                "Low stock alerts",
                "Low-stock alerts firing or pending: the alert stage's reorder point and suggested order.",
                Sql(
                    LOW_STOCK_ALERTS,
                    Format.TABLE,
                    "location_id:text, gtin:text, reorder_point_units:number, suggested_order_units:number, "
                    "state:text",
                ),
                width=12,
                height=8,
            ),
            data_table(
                "Below reorder point",
                "SKUs at or below their reorder point by the last 28 days of demand (lead-time demand plus safety "
                "stock at 95 % service, or the SKU's fixed minimum), with the suggested order quantity.",
                Sql(
                    LOW_STOCK,
                    Format.TABLE,
                    "location_id:text, gtin:text, on_hand_units:number, reorder_point_units:number, "
                    "suggested_order_units:number",
                ),
                width=12,
                height=8,
            ),
            data_table(
                "Aging", "Units by how long they have been on site, oldest first.",
                Sql(AGING, Format.TABLE, "location_id:text, gtin:text, units:number, oldest_days:number"),
                width=12, height=8,
            ),
            data_table(
                "Dead stock", "SKUs nothing has arrived at or been consumed from for the chosen number of days.",
                Sql(DEAD_STOCK, Format.TABLE, "location_id:text, gtin:text, units:number, idle_days:number"),
                width=12, height=8,
            ),
            data_table(
                "Turnover and days of inventory", "Over the last 28 whole days: days of inventory at the current "
                "rate of consumption, and turnover per year.",
                Sql(TURNOVER, Format.TABLE,
                    "location_id:text, gtin:text, days_of_inventory:number, turnover_per_year:number"),
                width=16, height=8,
            ),
            time_series(
                "Consumption per day", "Units shipped, consumed or transferred out of the site's stock per day.",
                [Sql(CONSUMPTION, Format.TIME_SERIES, "time:time, units consumed:number")],
                width=8, height=8,
            ),
        ],
    )  # fmt: skip
