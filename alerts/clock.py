"""The evaluator's clock: what "now" is when the rules judge the data (``STOCKTRACE_ALERT_CLOCK``).

- ``wall`` (the default): the host's clock. Right for live devices: a device that stops talking is silent
  now, whatever its own clock said last.
- ``device``: the newest device time ingested, so that the rules judge the data by the time it describes and
  not by when it arrived. For replaying a backlog or an accelerated simulation, where hours of device time
  arrive in seconds: on the wall clock, a two-hour run would be judged as if everything had happened in the
  last minute (delays never mature, every sensor looks stale). The device clock stands still while nothing
  arrives, so nothing goes offline after a replay ends either.

The device clock reads the newest tag read and the newest measurement (each table's time index, newest row
first), and takes the later. A reading counts only with a time of its own: one stamped with the moment it was
received (a last will, a payload without ``at``) is not on the devices' timeline and is skipped, and so is one
stamped more than ``ahead`` later than it arrived (a device whose clock is wrong would drag every other device
into silence). One stamped a little ahead counts at the moment it arrived.

It never runs backwards (a late batch of old reads holds it still), so a rule never judges an earlier moment
than it already did; it starts again from the data when the process restarts. Tracking may lag it: when hours
of reads arrive in seconds, the resolver is minutes of device time behind ingest, so the rules on item state
judge up to what tracking has taken in (``alerts.rules.tracked_until``).

The device clock assumes the devices' clocks agree to well within their inactivity timeouts (NTP): one
lagging by more than its timeout looks offline on it, and one set hours ahead (local time taken for UTC) drags
the clock along when its readings arrive late enough to look plausible, as replayed ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

import psycopg

Conn: TypeAlias = psycopg.AsyncConnection[Any]
Clock: TypeAlias = Callable[[], datetime]
ClockName: TypeAlias = Literal["wall", "device"]

DEFAULT_AHEAD: Final = timedelta(minutes=5)

# One index probe per table: the newest rows first, skipping the few without a device time of their own.
_NEWEST: Final = """
select greatest(
    (select least(r.read_at, r.received_at) from rfid_reads r
     where r.read_at <> r.received_at and r.read_at <= r.received_at + %(ahead)s
     order by r.read_at desc limit 1),
    (select least(t.observed_at, t.received_at) from telemetry t
     where t.observed_at <> t.received_at and t.observed_at <= t.received_at + %(ahead)s
     order by t.observed_at desc limit 1)
)
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeviceClock:
    """Now is the newest device time ingested (see the module's description); None before any reading."""

    def __init__(self, ahead: timedelta = DEFAULT_AHEAD) -> None:
        self.ahead = ahead
        self.last: datetime | None = None

    async def now(self, conn: Conn) -> datetime | None:
        cursor = await conn.execute(_NEWEST, {"ahead": self.ahead})
        row = await cursor.fetchone()
        found: datetime | None = row[0] if row is not None else None
        if found is not None and (self.last is None or found > self.last):
            self.last = found
        return self.last


def clock_named(name: ClockName) -> Clock | DeviceClock:
    """The clock a ``STOCKTRACE_ALERT_CLOCK`` value names."""
    return DeviceClock() if name == "device" else utc_now
