"""Whether each device is up: last seen per device and per antenna, online or offline, and why.

The rules live in the ``device_health`` and ``antenna_health`` views (0100_registry.sql) so that dashboards
and the API agree: the latest device-wide event decides (an MQTT last will, a Sparkplug death certificate, a
vendor status event) unless the device has sent something since, and a device silent for longer than its
inactivity timeout (per device, else per kind: reader 60 s, sensor 15 min, tracker 10 min) is offline.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from devices.registry import DeviceKind, NotFoundError, Plan, Statement


class Status(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    NEVER_SEEN = "never_seen"


StatusFilter = Literal["online", "offline", "never_seen", "unassigned"]
"""What ``GET /devices?status=`` accepts: a health status, or ``unassigned`` for devices whose data cannot be
placed (seen but not registered, or registered with assigned: false)."""


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)


class AntennaHealth(_Report):
    port: int
    location: str | None
    """Where the registry maps it; null for an antenna that reports but is not mapped."""
    side: Literal["in", "out"] | None
    last_read_at: datetime | None
    connected: bool | None
    """From the reader's latest event about this antenna; null if it never sent one."""
    last_event_reason: str | None
    last_event_at: datetime | None


class DeviceHealth(_Report):
    device_id: str
    registered: bool
    assigned: bool
    status: Status
    reason: str | None
    """Why offline: the event's reason (``last-will``, ``death-certificate``, ...) or ``inactive``."""
    last_seen_at: datetime | None
    last_topic: str | None
    messages: int
    last_event_at: datetime | None
    last_event_online: bool | None
    last_event_reason: str | None
    inactivity_timeout_s: int
    antennas: list[AntennaHealth]


class DeviceState(_Report):
    """One line of the device list: what the registry says and whether the device is up."""

    id: str
    registered: bool
    assigned: bool
    kind: DeviceKind | None
    source: str | None
    name: str | None
    location: str | None
    status: Status
    reason: str | None
    last_seen_at: datetime | None
    last_topic: str | None


def device_health(device_id: str) -> Plan[DeviceHealth]:
    rows = yield Statement(
        "select device_id, registered, assigned, status, reason, last_seen_at, last_topic, messages,"
        " last_event_at, last_event_online, last_event_reason, inactivity_timeout_s"
        " from device_health where device_id = %(id)s",
        {"id": device_id},
    )
    if not rows:
        raise NotFoundError(f"device {device_id!r} is not registered and has never published")
    antennas = yield Statement(
        "select antenna as port, location_id as location, side, last_read_at, connected, last_event_reason,"
        " last_event_at from antenna_health where device_id = %(id)s order by antenna",
        {"id": device_id},
    )
    return DeviceHealth.model_validate({**rows[0], "antennas": antennas})


def list_device_states(status: StatusFilter | None = None, kind: DeviceKind | None = None) -> Plan[list[DeviceState]]:
    """Every registered or seen device, by id, optionally of one status (or unassigned) and kind."""
    rows = yield Statement(
        "select h.device_id as id, h.registered, h.assigned, h.kind, h.source, d.name,"
        " h.location_id as location, h.status, h.reason, h.last_seen_at, h.last_topic"
        " from device_health h left join devices d on d.id = h.device_id"
        " where (%(status)s::text is null or h.status = %(status)s"
        "        or (%(status)s = 'unassigned' and not h.assigned))"
        " and (%(kind)s::text is null or h.kind = %(kind)s)"
        " order by h.device_id",
        {"status": status, "kind": kind and kind.value},
    )
    return [DeviceState.model_validate(row) for row in rows]
