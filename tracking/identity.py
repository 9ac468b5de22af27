"""The ``items`` rows: every EPC seen or named, with its GS1 identity decoded once (devices/epc.py).

Decoding takes tens of microseconds per EPC, too much for the ingest hot path when many tags are new, so the
resolver registers the EPCs of new sightings at its next tick, before it gives them a state; an association
through the API registers the EPCs it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, TypeAlias

import psycopg

from devices.epc import identify

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

_UNREGISTERED: Final = """
select e.epc, (select min(s.first_seen_at) from tag_sightings s where s.epc = e.epc)
from unnest(%s::text[]) as e(epc)
where not exists (select 1 from items i where i.epc = e.epc)
"""
_REGISTER: Final = """
insert into items (epc, scheme, gtin, serial, sscc, uri, first_seen_at)
select * from unnest(%(epcs)s::text[], %(schemes)s::text[], %(gtins)s::text[], %(serials)s::text[],
                     %(ssccs)s::text[], %(uris)s::text[], %(ats)s::timestamptz[])
order by 1
on conflict (epc) do nothing
"""


async def register(conn: Conn, first_seen: Mapping[str, datetime]) -> int:
    """Insert the ``items`` rows of these EPCs (hex, as read) that have none; returns how many were new."""
    if not first_seen:
        return 0
    epcs = sorted(first_seen)
    identities = [identify(epc) for epc in epcs]
    result = await conn.execute(
        _REGISTER,
        {
            "epcs": epcs,
            "schemes": [i.scheme for i in identities],
            "gtins": [i.gtin for i in identities],
            "serials": [i.serial for i in identities],
            "ssccs": [i.sscc for i in identities],
            "uris": [i.uri for i in identities],
            "ats": [first_seen[epc] for epc in epcs],
        },
    )
    return max(result.rowcount, 0)


async def register_sighted(conn: Conn, epcs: Iterable[str]) -> int:
    """Register the EPCs among ``epcs`` that have sightings but no ``items`` row yet, first seen as sighted."""
    wanted = sorted(set(epcs))
    if not wanted:
        return 0
    cursor = await conn.execute(_UNREGISTERED, (wanted,))
    missing = {epc: first for epc, first in await cursor.fetchall() if first is not None}
    return await register(conn, missing)
