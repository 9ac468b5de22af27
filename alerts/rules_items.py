"""Item rules: an item that left its site without being shipped, one that stays too long, a lot past expiry.

**Shrink** (subject: an item). The presence resolver marks an item ``departed`` when no reader sees it any more
(tracking/presence.py). A departure is a shipment when a stock exit (the ``location_exits`` view of
0211_consumption.sql: through a dock door outwards, onto a vehicle, into production, to another site) happened
within ``shipment_window`` before it; otherwise the item left without a shipment: possible shrink. It fires
once the item has stayed gone for ``pending_for`` (a tag read only now and then is taken back by the resolver
when it is read again). Departures older than ``lookback`` are not raised any more; a raised one stays until
the item is seen again. It depends on
the readers of the site's dock doors and of the location it left: with one of them offline, the door may
simply not have seen it go.

**Dwell** (subject: an item). Present in a location longer than the rule's ``max_dwell``, by default per
location kind (rules_config.DWELL_BY_KIND_S: a dock door or yard is a place to pass through). Depends on the
location's readers (a reader that stops reporting leaves what it saw where it was).

**Expiry** (subject: a lot). Items of a lot still present after its ``expires_on`` date (the lot is usable
through that day, UTC), or ``warn_before`` ahead of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any, Final

from alerts.model import Severity
from alerts.rules import Conn, Evaluation, Finding, Tick, join_names, label_set, plural, tracked_until
from alerts.rules_config import Dwell, Expiry, Shrink

SHRINK: Final = "ItemLeftWithoutShipment"
DWELL: Final = "ItemDwellTooLong"
EXPIRED: Final = "LotExpired"

_DEPARTED: Final = """
select s.epc, s.site_id, s.since, d.from_location, i.gtin, i.lot
from item_state s
join items i on i.epc = s.epc
left join lateral (
    select e.from_location from location_events e
    where e.epc = s.epc and e.kind = 'departed' and e.at <= s.since
    order by e.at desc limit 1
) d on true
where s.status = 'departed' and s.since <= %(now)s and (s.since >= %(since)s or s.epc = any(%(open)s))
  and not exists (
      select 1 from location_exits x
      where x.epc = s.epc and x.at <= s.since and x.at >= s.since - make_interval(secs => %(window)s)
  )
"""


class ShrinkRule:
    name = "shrink"
    alertnames: tuple[str, ...] = (SHRINK,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        base = tick.config.shrink.params
        cursor = await conn.execute(
            _DEPARTED,
            {
                "now": tick.now,
                "since": tick.now - timedelta(seconds=base.lookback_s),
                "open": sorted({a.subject for a in tick.alerts_of(SHRINK) if a.state != "resolved"}),
                "window": base.window_s,
            },
        )
        rows = await cursor.fetchall()
        tracked = await tracked_until(conn, tick.now)
        findings = []
        for row in rows:
            params = tick.config.shrink.for_subject(tick.topology.attributes(row[3], gtin=row[4], lot=row[5]))
            if params.enabled is not False:
                findings.append(_shrink(tick, row, params, tracked))
        return Evaluation(findings, len(rows))


def _shrink(tick: Tick, row: tuple[Any, ...], params: Shrink, tracked: datetime) -> Finding:
    epc, site_id, since, from_location, gtin, lot = row
    due = since + timedelta(seconds=params.for_s)
    # Gone that long by the clock, but tracking has not caught up with it yet: pending until it has.
    fires_at = None if tracked < due <= tick.now else due
    topology = tick.topology
    doors = [p.id for p in topology.places.values() if p.kind == "dock_door" and p.site_id == site_id]
    readers = set().union(*(topology.readers_for(d) for d in doors)) if doors else set()
    if from_location:
        readers |= topology.readers_for(from_location)
    return Finding(
        alertname=SHRINK,
        subject=epc,
        severity=params.severity or Severity.WARNING,
        labels=label_set(epc=epc, site=site_id, gtin=gtin, lot=lot),
        annotations={
            "summary": f"item {epc} left {from_location or site_id} at {since.isoformat()} without a shipment",
            "description": "No stock exit (dock door outwards, vehicle, production, transfer) within "
            f"{params.window_s / 60:.0f} minutes before it was last seen: possible shrink.",
        },
        active_at=since,
        fires_at=fires_at,
        depends_on=frozenset(readers),
        repeat_s=tick.config.repeat_s(params),
        group_by=tuple(tick.config.group_by(params)),
    )


_PRESENT_SINCE: Final = """
select s.epc, s.location_id, s.since, i.gtin, i.lot
from item_state s join items i on i.epc = s.epc
where s.location_id = any(%(locs)s) and s.status = 'present' and s.since <= %(before)s
"""


class DwellRule:
    name = "dwell"
    alertnames: tuple[str, ...] = (DWELL,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        limits = _location_limits(tick)
        if not limits:
            return Evaluation([], 0)
        tracked = await tracked_until(conn, tick.now)  # an item tracking has not yet seen leave is still there
        cursor = await conn.execute(
            _PRESENT_SINCE,
            {"locs": sorted(limits), "before": tracked - timedelta(seconds=min(limits.values()))},
        )
        rows = await cursor.fetchall()
        findings = []
        for epc, location_id, since, gtin, lot in rows:
            params = tick.config.dwell.for_subject(tick.topology.attributes(location_id, gtin=gtin, lot=lot))
            limit = params.limit_s(tick.topology.places[location_id].kind)
            if params.enabled is not False and limit is not None and (tracked - since).total_seconds() > limit:
                findings.append(_dwell(tick, epc, location_id, since, gtin, lot, limit, params))
        return Evaluation(findings, len(rows))


def _location_limits(tick: Tick) -> dict[str, float]:
    """The locations where an item can dwell too long, each with the shortest limit an item there could have
    (an override by GTIN or lot may shorten it)."""
    section = tick.config.dwell
    by_item = [f.get("max_dwell") for m, f in section.overrides if m.gtin is not None or m.lot is not None]
    shortest_by_item = min((v for v in by_item if v is not None), default=None)
    found = {}
    for place in tick.topology.places.values():
        limit = section.for_subject(tick.topology.attributes(place.id)).limit_s(place.kind)
        candidates = [v for v in (limit, shortest_by_item) if v is not None]
        if candidates:
            found[place.id] = min(candidates)
    return found


def _dwell(
    tick: Tick, epc: str, location_id: str, since: datetime, gtin: str | None, lot: str | None, limit: float,
    params: Dwell,
) -> Finding:  # fmt: skip
    hours = (tick.now - since).total_seconds() / 3600
    return Finding(
        alertname=DWELL,
        subject=epc,
        severity=params.severity or Severity.WARNING,
        labels=label_set(epc=epc, location=location_id, site=tick.topology.site_of(location_id), gtin=gtin),
        annotations={
            "summary": f"item {epc} has been at {location_id} for {hours:.1f} h (limit {limit / 3600:g} h)",
            "description": f"Arrived {since.isoformat()}" + (f"; lot {lot}" if lot else "") + ".",
        },
        active_at=since + timedelta(seconds=limit),
        fires_at=since + timedelta(seconds=limit),
        depends_on=tick.topology.readers_for(location_id),
        repeat_s=tick.config.repeat_s(params),
        group_by=tuple(tick.config.group_by(params)),
    )


_EXPIRING: Final = """
select l.lot, l.gtin, l.expires_on, count(*)::bigint,
       array_agg(distinct s.location_id) filter (where s.location_id is not null)
from lots l
join items i on i.lot = l.lot
join item_state s on s.epc = i.epc
where s.status <> 'departed' and l.expires_on is not null and l.expires_on <= %(horizon)s
group by l.lot, l.gtin, l.expires_on
"""


class ExpiryRule:
    name = "expiry"
    alertnames: tuple[str, ...] = (EXPIRED,)

    async def evaluate(self, conn: Conn, tick: Tick) -> Evaluation:
        section = tick.config.expiry
        warn = max([section.params.warn_s, *(f.get("warn_before") or 0.0 for _, f in section.overrides)])
        cursor = await conn.execute(_EXPIRING, {"horizon": (tick.now + timedelta(seconds=warn)).date()})
        rows = await cursor.fetchall()
        findings = []
        for lot, gtin, expires_on, count, locations in rows:
            params = section.for_subject(tick.topology.attributes(None, gtin=gtin, lot=lot))
            expired_at = datetime.combine(expires_on + timedelta(days=1), time(), UTC)
            active = expired_at - timedelta(seconds=params.warn_s)
            if params.enabled is not False and tick.now >= active:
                findings.append(_expired(tick, lot, gtin, expired_at, active, count, locations or [], params))
        return Evaluation(findings, len(rows))


def _expired(
    tick: Tick, lot: str, gtin: str, expired_at: datetime, active: datetime, count: int, locations: list[str],
    params: Expiry,
) -> Finding:  # fmt: skip
    past = tick.now >= expired_at
    return Finding(
        alertname=EXPIRED,
        subject=lot,
        severity=params.severity or Severity.CRITICAL,
        labels=label_set(lot=lot, gtin=gtin),
        annotations={
            "summary": f"{plural(count, 'item')} of lot {lot} "
            + ("past expiry" if past else f"expire at {expired_at.isoformat()}"),
            "description": f"Lot {lot} (GTIN {gtin}) is usable through {(expired_at - timedelta(days=1)).date()}; "
            f"still at {join_names(locations)}.",
        },
        active_at=active,
        fires_at=active,
        repeat_s=tick.config.repeat_s(params),
        group_by=tuple(tick.config.group_by(params)),
    )
