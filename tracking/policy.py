"""The presence policy: how long a tag must be seen before it has arrived, unseen before it has departed, and how
much stronger another location's antenna must hear it before it has moved there. Every default is here.

Defaults per location kind (``locations.kind``), overridable per location in ``location_presence_policy``:

========================  =========  ============  ==============
kind                      dwell_s    age_out_s     hysteresis_db
========================  =========  ============  ==============
dock_door                 0          10            6
vehicle, container        0          60            6
everything else           2          60            6
========================  =========  ============  ==============

- dwell: a tag passing by a shelf on a forklift is read a few times; 2 s of reads at the same place is a tag that
  stays. A dock door is a place items pass through, so any read there counts at once.
- age-out: a tag in a full freezer is missed for tens of seconds, so 60 s. A dock door is read at 20 Hz while
  something passes, and an item stays there only seconds, so 10 s. A tag read less often than that (a reader
  reporting once a minute) gets three of its own read intervals instead (``AGE_OUT_READ_INTERVALS``).
  Age-out is counted on the location's own clock (its readers' newest read or heartbeat), never the wall clock:
  a reader that stops reporting leaves what it saw where it was, and late delivery cannot age anything out.
- hysteresis: the RSSI of one tag at one antenna varies by a few dB from read to read; 6 dB (four times the
  power) is beyond that noise, so a tag read through a wall by the neighbouring zone does not flap between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    dwell_s: float
    """Seconds a tag must be seen at a location (first to last read of the visit) before it arrives there."""
    age_out_s: float
    """Seconds of the location's clock without a read of the tag there after which it has departed."""
    hysteresis_db: float
    """dB by which another location's smoothed RSSI must exceed the current one's to move the item there."""

    @property
    def dwell(self) -> timedelta:
        return timedelta(seconds=self.dwell_s)

    @property
    def age_out(self) -> timedelta:
        return timedelta(seconds=self.age_out_s)


DEFAULT_POLICY: Final = PresencePolicy(dwell_s=2.0, age_out_s=60.0, hysteresis_db=6.0)
POLICY_BY_KIND: Final[Mapping[str, PresencePolicy]] = {
    "dock_door": PresencePolicy(dwell_s=0.0, age_out_s=10.0, hysteresis_db=6.0),
    "vehicle": PresencePolicy(dwell_s=0.0, age_out_s=60.0, hysteresis_db=6.0),
    "container": PresencePolicy(dwell_s=0.0, age_out_s=60.0, hysteresis_db=6.0),
}
# Locations whose antennas are marked side 'in'/'out' and whose passes have a direction.
PORTAL_KINDS: Final = frozenset({"dock_door"})

# A tag unread at a location for longer than this starts a new visit there (tag_sightings.first_seen_at, reads and
# the smoothed RSSI restart). Long enough to span a few reports of a reader that reports once a minute, so that a
# tag on a shelf stays one visit; a portal pass (the reads of a dock door's antennas) ends after the short gap.
VISIT_GAP_S: Final = 300.0
PORTAL_PASS_GAP_S: Final = 10.0
# A tag has departed when it has been missing for this many of its own usual read intervals at the location (the
# mean time between its reads during the visit, tracking/presence.py Sighting.age_out), if that is longer than
# the age-out. A reader that reports once a minute reads each tag once a minute, and one missed report is no
# departure.
AGE_OUT_READ_INTERVALS: Final = 3.0
# Weight of one read in the RSSI moving average: n newer reads together weigh 1 - (1 - a)^n.
RSSI_READ_WEIGHT: Final = 0.3

# Items that went out through a portal of a site this long before a vehicle left that site's geofence are
# taken to be aboard it: a truck is loaded at the dock, then drives off.
LOADING_WINDOW_S: Final = 900.0
# Items that moved between the same two locations as a container within this time of it, twice in a row, are
# taken to be inside it.
TRAVEL_TOGETHER_S: Final = 120.0


def policy_for(
    kind: str, dwell_s: float | None = None, age_out_s: float | None = None, hysteresis_db: float | None = None
) -> PresencePolicy:
    """The policy of a location of ``kind`` with its overrides (``None`` keeps the kind's default)."""
    base = POLICY_BY_KIND.get(kind, DEFAULT_POLICY)
    return PresencePolicy(
        dwell_s=base.dwell_s if dwell_s is None else dwell_s,
        age_out_s=base.age_out_s if age_out_s is None else age_out_s,
        hysteresis_db=base.hysteresis_db if hysteresis_db is None else hysteresis_db,
    )
