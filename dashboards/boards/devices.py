"""Devices: how much each reader and antenna reads, and when each sensor last reported and on what battery."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards.boards.operations import DEVICES_BY_STATUS
from dashboards.datasource import Format, Sql
from dashboards.panels import add_panels, board, data_table, query_variable, stat_values, time_series
from dashboards.rollups import READ_COUNTS_INTERVAL, read_counts

UID = "stocktrace-devices"

READERS = """
select id from devices where kind = 'rfid_reader'
union
select device_id from antenna_activity
order by 1
"""

# From the read counts ingest keeps (dashboards/rollups.py), not the raw reads. Grouped by antenna, so the series
# name is made once a bucket rather than once a row.
READS_PER_READER = f"""
select $__timeGroupAlias(minute, $__interval), device_id as metric,
       sum(reads) / ($__interval_ms / 1000.0) as "reads/s"
from {read_counts("minute, device_id, reads")}
where device_id in ($reader)
group by 1, 2
order by 1
"""

READS_PER_ANTENNA = f"""
select $__timeGroupAlias(minute, $__interval), device_id || ' #' || antenna as metric,
       sum(reads) / ($__interval_ms / 1000.0) as "reads/s"
from {read_counts("minute, device_id, antenna, reads")}
where device_id in ($reader)
group by 1, device_id, antenna
order by 1
"""

ANTENNAS = """
select device_id, antenna, location_id, side, last_read_at, connected, last_event_reason, last_event_at
from antenna_health
where device_id in ($reader)
order by device_id, antenna
"""

# The newest battery value of each device, through telemetry's (device_id, quantity, observed_at) index.
SENSORS = """
select h.device_id, h.kind, h.location_id, h.status, h.last_seen_at, pct.value as battery_pct, volts.value as battery_v
from device_health h
left join lateral (
    select t.value from telemetry t
    where t.device_id = h.device_id and t.quantity = 'battery_pct'
    order by t.observed_at desc limit 1
) pct on true
left join lateral (
    select t.value from telemetry t
    where t.device_id = h.device_id and t.quantity = 'battery_v'
    order by t.observed_at desc limit 1
) volts on true
where h.kind is distinct from 'rfid_reader'
order by pct.value nulls last, h.last_seen_at nulls first, h.device_id
"""

BATTERY = """
select $__timeGroupAlias(observed_at, $__interval), device_id as metric, avg(value) as "battery"
from telemetry
where $__timeFilter(observed_at) and quantity = 'battery_pct'
group by 1, 2
order by 1
"""


def build() -> builders.Dashboard:
    dashboard = board(
        UID,
        "stocktrace / Devices",
        "Read rates per reader and antenna, antenna state, sensors' last report and battery.",
    ).with_variable(query_variable("reader", "Reader", READERS, multi=True, include_all=True))
    return add_panels(
        dashboard,
        [
            stat_values(
                "Devices", "Registered devices by status.",
                Sql(DEVICES_BY_STATUS, Format.TABLE, "online:number, offline:number, never seen:number"),
                width=24, height=4,
            ),
            time_series(
                "Read rate per reader", "Tag reads per second, by the reader's timestamp.",
                [Sql(READS_PER_READER, Format.TIME_SERIES, "time:time, metric:text, reads/s:number")],
                min_interval=READ_COUNTS_INTERVAL, unit="reqps",
            ),
            time_series(
                "Read rate per antenna", "Tag reads per second per antenna port: a port that drops to zero while "
                "its neighbours read is worth a look.",
                [Sql(READS_PER_ANTENNA, Format.TIME_SERIES, "time:time, metric:text, reads/s:number")],
                min_interval=READ_COUNTS_INTERVAL, unit="reqps",
            ),
            data_table(
                "Antennas", "Where each antenna points, its newest read and its last reported state.",
                Sql(ANTENNAS, Format.TABLE, "device_id:text, antenna:number, last_read_at:time"),
                width=24,
            ),
            data_table(
                "Sensors: last seen and battery", "Every device but the readers, lowest battery first.",
                Sql(SENSORS, Format.TABLE,
                    "device_id:text, status:text, last_seen_at:time, battery_pct:number, battery_v:number"),
            ),
            time_series(
                "Battery", "Battery charge reported by the sensors.",
                [Sql(BATTERY, Format.TIME_SERIES, "time:time, metric:text, battery:number")],
                unit="percent",
            ),
        ],
    )  # fmt: skip
