"""Operations: is stocktrace taking in what the devices send, and what is firing."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from dashboards.datasource import Format, Sql
from dashboards.panels import add_panels, board, data_table, stat_values, time_series
from dashboards.rollups import READ_COUNTS_INTERVAL, read_counts

UID = "stocktrace-operations"

ALERTS_FIRING = """
select count(*) filter (where severity = 'critical') as critical,
       count(*) filter (where severity = 'warning') as warning,
       count(*) filter (where severity = 'info') as info
from alerts
where state = 'firing'
"""

DEVICES_BY_STATUS = """
select count(*) filter (where status = 'online') as online,
       count(*) filter (where status = 'offline') as offline,
       count(*) filter (where status = 'never_seen') as "never seen"
from device_health
where registered
"""

# An alert counts as firing in a bucket from the moment it fired until it was resolved; each bucket is read at
# its start, so a bucket shows what an operator would have seen then.
ALERTS_OVER_TIME = """
select b.at as time, s.severity as metric, count(a.fingerprint) as firing
from generate_series(
         time_bucket(make_interval(secs => $__interval_ms / 1000.0), $__timeFrom()::timestamptz),
         $__timeTo()::timestamptz,
         make_interval(secs => $__interval_ms / 1000.0)) as b(at)
cross join (values ('critical'), ('warning'), ('info')) as s(severity)
left join alerts a
       on a.severity = s.severity and a.state <> 'pending'
      and a.fires_at <= b.at and coalesce(a.ends_at, 'infinity') > b.at
group by b.at, s.severity
order by b.at
"""

# RFID rate and lag come from the read counts ingest keeps (dashboards/rollups.py), never the raw reads: a month
# costs a row per antenna and half hour, not every read of the month.
READ_RATE = f"""
select $__timeGroupAlias(minute, $__interval),
       sum(reads) / ($__interval_ms / 1000.0) as "RFID reads/s"
from {read_counts("minute, reads")}
group by 1
order by 1
"""

TELEMETRY_RATE = """
select $__timeGroupAlias(observed_at, $__interval),
       count(*) / ($__interval_ms / 1000.0) as "sensor values/s"
from telemetry
where $__timeFilter(observed_at)
group by 1
order by 1
"""

# Lag is what the device stamped against when stocktrace stored it: network, broker and batching delay, plus
# whatever a device held back while it was offline. Negative values mean the device's clock runs ahead.
READ_LAG = f"""
select $__timeGroupAlias(minute, $__interval),
       sum(lag_sum_s) / sum(reads) as "RFID mean lag",
       max(lag_max_s) as "RFID max lag"
from {read_counts("minute, reads, lag_sum_s, lag_max_s")}
group by 1
order by 1
"""

TELEMETRY_LAG = """
select $__timeGroupAlias(observed_at, $__interval),
       avg(extract(epoch from received_at - observed_at)) as "sensor mean lag",
       max(extract(epoch from received_at - observed_at)) as "sensor max lag"
from telemetry
where $__timeFilter(observed_at)
group by 1
order by 1
"""

DEAD_LETTERS = """
select $__timeGroupAlias(received_at, $__interval), count(*) as "dead letters"
from dead_letters
where $__timeFilter(received_at)
group by 1
order by 1
"""

RECENT_DEAD_LETTERS = """
select received_at, topic, error, length(payload) as bytes
from dead_letters
where $__timeFilter(received_at)
order by received_at desc
limit 100
"""

SILENT_DEVICES = """
select device_id, kind, location_id, status, reason, last_seen_at, registered
from device_health
where status <> 'online'
order by last_seen_at nulls first, device_id
"""

FIRING_ALERTS = """
select severity, alertname, subject, starts_at, fires_at,
       annotations ->> 'summary' as summary,
       acknowledged_by is not null as acknowledged
from alerts
where state = 'firing'
order by case severity when 'critical' then 0 when 'warning' then 1 else 2 end, fires_at desc
limit 200
"""


def build() -> builders.Dashboard:
    dashboard = board(
        UID,
        "stocktrace / Operations",
        "What is firing, which devices are silent, and whether ingest keeps up with what devices send.",
        time_from="now-6h",
    )
    alert_steps = ((None, "green"), (1, "red"))
    return add_panels(
        dashboard,
        [
            stat_values(
                "Alerts firing", "Alerts firing now, by severity.",
                Sql(ALERTS_FIRING, Format.TABLE, "critical:number, warning:number, info:number"),
                width=8, steps=alert_steps,
            ),
            stat_values(
                "Devices", "Registered devices by status (device_health): silent past their inactivity timeout "
                "or announced offline count as offline.",
                Sql(DEVICES_BY_STATUS, Format.TABLE, "online:number, offline:number, never seen:number"),
                width=8,
            ),
            stat_values(
                "Dead letters in range", "Messages that could not be decoded, in the selected range.",
                Sql("select count(*) as \"dead letters\" from dead_letters where $__timeFilter(received_at)",
                    Format.TABLE, "dead letters:number"),
                width=8, steps=alert_steps,
            ),
            time_series(
                "Alerts firing by severity", "How many alerts were firing at each moment.",
                [Sql(ALERTS_OVER_TIME, Format.TIME_SERIES, "time:time, metric:text, firing:number")],
                width=12,
            ),
            time_series(
                "Ingest rate", "Readings stored per second, by the time the device stamped on them.",
                [Sql(READ_RATE, Format.TIME_SERIES, "time:time, RFID reads/s:number"),
                 Sql(TELEMETRY_RATE, Format.TIME_SERIES, "time:time, sensor values/s:number")],
                min_interval=READ_COUNTS_INTERVAL, unit="reqps", width=12,
            ),
            time_series(
                "Ingest lag", "From the device's timestamp to stocktrace storing the reading.",
                [Sql(READ_LAG, Format.TIME_SERIES, "time:time, RFID mean lag:number, RFID max lag:number"),
                 Sql(TELEMETRY_LAG, Format.TIME_SERIES, "time:time, sensor mean lag:number, sensor max lag:number")],
                min_interval=READ_COUNTS_INTERVAL, unit="s", width=12,
            ),
            time_series(
                "Dead letters", "Messages that could not be decoded, by when they arrived.",
                [Sql(DEAD_LETTERS, Format.TIME_SERIES, "time:time, dead letters:number")],
                width=12,
            ),
            data_table(
                "Firing alerts", "Every alert firing now, most severe first.",
                Sql(FIRING_ALERTS, Format.TABLE, "severity:text, alertname:text, subject:text, starts_at:time"),
                width=24,
            ),
            data_table(
                "Devices not online", "Devices offline or never heard from, the longest silent first.",
                Sql(SILENT_DEVICES, Format.TABLE, "device_id:text, status:text, last_seen_at:time"),
            ),
            data_table(
                "Recent dead letters", "The newest undecodable messages with the decoder's reason.",
                Sql(RECENT_DEAD_LETTERS, Format.TABLE, "received_at:time, topic:text, error:text, bytes:number"),
            ),
        ],
    )  # fmt: skip
