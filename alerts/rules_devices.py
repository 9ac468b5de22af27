"""Device rules: a device offline, a sensor that is up but sends no measurements.

Offline is judged the way the ``device_health`` view (0100_registry.sql) judges it, but against the
evaluator's clock instead of the database's ``now()``, so that timelines in tests and a replay judge the same:

- its latest device-wide event says offline (a last will, a Sparkplug death certificate) and nothing arrived
  after it: offline since that event;
- or it has been silent longer than its inactivity timeout (``devices.inactivity_timeout_s``, else the default
  of its kind): offline since it was last seen, firing once the timeout (and the rule's ``pending_for``) passed.

A device never seen is not raised here: nothing was expected of it yet. Only registered, assigned devices
count; the unassigned ones are listed by the registry API.

On the device clock (alerts/clock.py) the times compared with now are device times too: a device was last seen
at its newest tag read, measurement or event that carries its own time. A last will carries only the moment it
was received; the device fell silent after its last message, so it is offline from then. Whether anything
arrived after the will is still told by the order of arrival.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, Tick, label_set
from alerts.rules_config import DeviceOffline, SensorStale
from devices.reading import Quantity

DEVICE_OFFLINE: Final = "DeviceOffline"
SENSOR_STALE: Final = "SensorStale"

_DEVICES: Final = """
select d.id, d.kind, d.location_id, a.last_seen_at, e.observed_at, e.received_at, e.online, e.reason,
       coalesce(d.inactivity_timeout_s, default_inactivity_timeout_s(d.kind)) as timeout_s
from devices d
left join device_activity a on a.device_id = d.id
left join lateral (
    select ev.observed_at, ev.received_at, ev.online, ev.reason from device_events ev
    where ev.device_id = d.id and ev.antenna = -1 and ev.observed_at <= %(now)s
    order by ev.observed_at desc limit 1
) e on true
where d.assigned
"""


# The same per device, plus its newest time of its own: the newest read of any of its antennas, the newest value
# of each quantity it measures (the natural key's index, one probe per quantity), its newest event up to now (a
# retained birth a broker kept from an earlier run may carry a later time). Events stamped on receipt are
# another timeline: they are the latest whenever they are newer by arrival.
_DEVICES_ON_DEVICE_TIME: Final = """
select d.id, d.kind, d.location_id, a.last_seen_at, e.observed_at, e.received_at, e.online, e.reason,
       coalesce(d.inactivity_timeout_s, default_inactivity_timeout_s(d.kind)) as timeout_s,
       greatest(r.read_at, t.observed_at, h.observed_at) as device_seen_at
from devices d
left join device_activity a on a.device_id = d.id
left join lateral (
    select ev.observed_at, ev.received_at, ev.online, ev.reason from device_events ev
    where ev.device_id = d.id and ev.antenna = -1 and (ev.observed_at <= %(now)s or ev.observed_at = ev.received_at)
    order by ev.observed_at desc limit 1
) e on true
left join lateral (select max(x.last_read_at) as read_at from antenna_activity x where x.device_id = d.id) r on true
left join lateral (
    select max(n.observed_at) as observed_at
    from unnest(%(quantities)s::text[]) as q(quantity)
    cross join lateral (
        select t.observed_at from telemetry t
        where t.device_id = d.id and t.quantity = q.quantity and t.observed_at <> t.received_at
        order by t.observed_at desc limit 1
    ) n
) t on true
left join lateral (
    select ev.observed_at from device_events ev
    where ev.device_id = d.id and ev.antenna = -1 and ev.observed_at <> ev.received_at and ev.observed_at <= %(now)s
    order by ev.observed_at desc limit 1
) h on true
where d.assigned
"""
# Every quantity ingest writes to telemetry (ingest/batch.py): the measured ones and GPS fixes.
_QUANTITIES: Final = [*(q.value for q in Quantity), "position"]


def offline_since(row: tuple[Any, ...], now: datetime) -> tuple[datetime, datetime, str] | None:
    """(silent since, offline from, why) for a device row of _DEVICES, or None when it is online or unseen."""
    _, _, _, last_seen, event_at, event_received, event_online, reason, timeout_s = row
    seen = min(last_seen, now) if last_seen is not None else None
    if event_at is not None and not event_online and (seen is None or seen <= event_received):
        return event_at, event_at, reason or "offline"
    latest = max((t for t in (seen, event_received) if t is not None), default=None)
    if latest is None:
        return None
    deadline = latest + timedelta(seconds=timeout_s)
    if now > deadline:
        return latest, deadline, f"silent for more than {timeout_s} s"
    return None


def offline_since_on_device_time(row: tuple[Any, ...], now: datetime) -> tuple[datetime, datetime, str] | None:
    """``offline_since`` for a row of _DEVICES_ON_DEVICE_TIME, with now the devices' own time."""
    _, _, _, received, event_at, event_received, event_online, reason, timeout_s, device_seen = row
    if event_at is not None and not event_online and (received is None or received <= event_received):
        since = event_at if event_at != event_received else (device_seen or now)
        if since <= now:
            return since, since, reason or "offline"
        # Its newer data came in with the will after this tick read the clock: the next tick judges it.
        return None
    if device_seen is None:
        return None
    seen = min(device_seen, now)
    deadline = seen + timedelta(seconds=timeout_s)
    if now > deadline:
        return seen, deadline, f"silent for more than {timeout_s} s"
    return None


class DeviceOfflineRule:
    name = "device_offline"
    alertnames: tuple[str, ...] = (DEVICE_OFFLINE,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        if tick.device_time:
            cursor = await conn.execute(_DEVICES_ON_DEVICE_TIME, {"now": tick.now, "quantities": _QUANTITIES})
        else:
            cursor = await conn.execute(_DEVICES, {"now": tick.now})
        rows = await cursor.fetchall()
        judge = offline_since_on_device_time if tick.device_time else offline_since
        section = tick.config.device_offline
        findings = []
        for row in rows:
            found = judge(row, tick.now)
            if found is not None:
                params = section.for_subject(tick.topology.attributes(row[2], device=row[0], device_kind=row[1]))
                if params.enabled is not False:
                    findings.append(self._finding(tick, row, found, params))
        return Evaluation(findings, len(rows))

    def _finding(
        self, tick: Tick, row: tuple[Any, ...], found: tuple[datetime, datetime, str], params: DeviceOffline
    ) -> Finding:
        device_id, kind, location_id = row[0], row[1], row[2]
        since, offline_from, why = found
        place = tick.topology.places.get(location_id or "")
        where = f" at {place.id}" if place else ""
        return Finding(
            alertname=DEVICE_OFFLINE,
            subject=device_id,
            severity=params.severity or (Severity.CRITICAL if kind == "sensor" else Severity.WARNING),
            labels=label_set(
                device=device_id, device_kind=kind, location=location_id, site=tick.topology.site_of(location_id)
            ),
            annotations={
                "summary": f"{kind} {device_id}{where} is offline",
                "description": f"{device_id} has been offline since {since.isoformat()} ({why}); "
                "alerts that depend on it are held back until it is back.",
            },
            active_at=since,
            fires_at=offline_from + timedelta(seconds=params.for_s),
            repeat_s=tick.config.repeat_s(params),
            group_by=tuple(tick.config.group_by(params)),
        )


_LATEST: Final = """
select d.id, d.location_id, m.latest
from devices d
cross join lateral (
    select max(t.observed_at) as latest from telemetry t
    where t.device_id = d.id and t.quantity in ('temperature_c', 'humidity_pct') and t.observed_at <= %(now)s
) m
where d.assigned and d.kind = 'sensor'
"""


class SensorStaleRule:
    """A sensor that has reported a temperature or humidity before and has not for ``stale_after``."""

    name = "sensor_stale"
    alertnames: tuple[str, ...] = (SENSOR_STALE,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        cursor = await conn.execute(_LATEST, {"now": tick.now})
        rows = await cursor.fetchall()
        findings = []
        for device_id, location_id, latest in rows:
            params = tick.config.sensor_stale.for_subject(
                tick.topology.attributes(location_id, device=device_id, device_kind="sensor")
            )
            if params.enabled is False or latest is None:
                continue
            if (tick.now - latest).total_seconds() > params.stale_s:
                findings.append(self._finding(tick, device_id, location_id, latest, params))
        return Evaluation(findings, len(rows))

    def _finding(
        self, tick: Tick, device_id: str, location_id: str | None, latest: datetime, params: SensorStale
    ) -> Finding:
        return Finding(
            alertname=SENSOR_STALE,
            subject=device_id,
            severity=params.severity or Severity.WARNING,
            labels=label_set(device=device_id, location=location_id, site=tick.topology.site_of(location_id)),
            annotations={
                "summary": f"sensor {device_id} has sent no temperature or humidity since {latest.isoformat()}",
                "description": "The room it speaks for is not being watched; its last reading holds no longer.",
            },
            active_at=latest,
            fires_at=latest + timedelta(seconds=params.stale_s),
            depends_on=frozenset({device_id}),
            repeat_s=tick.config.repeat_s(params),
            group_by=tuple(tick.config.group_by(params)),
        )
