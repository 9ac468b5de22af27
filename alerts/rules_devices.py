"""Device rules: a device offline, a sensor that is up but sends no measurements.

Offline is judged the way the ``device_health`` view (0100_registry.sql) judges it, but against the
evaluator's clock instead of the database's ``now()``, so that timelines in tests and a replay judge the same:

- its latest device-wide event says offline (a last will, a Sparkplug death certificate) and nothing arrived
  after it: offline since that event;
- or it has been silent longer than its inactivity timeout (``devices.inactivity_timeout_s``, else the default
  of its kind): offline since it was last seen, firing once the timeout (and the rule's ``pending_for``) passed.

A device never seen is not raised here: nothing was expected of it yet. Only registered, assigned devices
count; the unassigned ones are listed by the registry API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, Tick, label_set
from alerts.rules_config import DeviceOffline, SensorStale

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


class DeviceOfflineRule:
    name = "device_offline"
    alertnames: tuple[str, ...] = (DEVICE_OFFLINE,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        cursor = await conn.execute(_DEVICES, {"now": tick.now})
        rows = await cursor.fetchall()
        section = tick.config.device_offline
        findings = []
        for row in rows:
            found = offline_since(row, tick.now)
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
