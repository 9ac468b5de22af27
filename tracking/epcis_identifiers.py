"""The way back from the URIs an EPCIS document carries to stocktrace's own keys: the inverse of
``tracking.epcis.Identifiers``.

Objects (parentID, childEPCs). stocktrace keys an item by its EPC as readers report it (hex), so a URI is looked
up among the items first: a pure identity URI (``urn:epc:id:...``) by the URI the item's tag decodes to, a GS1
Digital Link URI by its SSCC (``/00/``) or GTIN and serial (``/01/.../21/...``), so that the two forms of one
identity find the same item. A raw URI (``urn:epc:raw:96.x<hex>``) is the hex itself, and a URI of this API
(``.../api/v1/items/<key>``) the key in it. An object no reader has seen yet cannot be given its hex (the tag's
filter value and encoding are not in the URI), so it is kept under the URI it came with, in an ``items`` row
that carries the GTIN and serial or SSCC the URI names: the API finds it by URI and by SSCC.

Locations (readPoint, bizLocation). A location is named by its id (if the id is itself the URI), by its SGLN
(``urn:epc:id:sgln:...``) once the registry carries one, or by its URI in this API (``.../api/v1/locations/<id>``)
as the export writes it, whichever host it was exported from. Anything else names no registered location.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias
from urllib.parse import unquote, urlsplit

import psycopg

Conn: TypeAlias = psycopg.AsyncConnection[tuple[Any, ...]]

_RAW: Final = re.compile(r"^urn:epc:raw:(\d+)\.x([0-9A-Fa-f]+)$")
_PURE: Final = re.compile(r"^urn:epc:id:([a-z]+):(.+)$")
_API_PATH: Final = re.compile(r"/api/v1/(items|locations)/([^/]+)$")
# GS1 Digital Link URIs: an SSCC is /00/<18 digits>, a serialised trade item /01/<14>/21/<serial>.
_DL_SSCC: Final = re.compile(r"^/00/(\d{18})$")
_DL_SGTIN: Final = re.compile(r"^/01/(\d{14})(?:/10/[^/]+)?/21/([^/]+)$")
_SCHEMES: Final = frozenset({"sgtin", "sscc", "sgln", "grai", "giai"})


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What a URI says of an object, before it is looked up: the key it has if no item matches, and its keys."""

    uri: str
    key: str
    scheme: str = "unknown"
    pure_uri: str | None = None
    gtin: str | None = None
    serial: str | None = None
    sscc: str | None = None


def check_digit(digits: str) -> str:
    """The GS1 check digit of a key's other digits."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str(-total % 10)


def name_object(uri: str) -> ObjectName:
    """Read an EPCIS object URI (pure identity, raw, Digital Link, this API's, or any other URI)."""
    raw = _RAW.match(uri)
    if raw is not None:
        return ObjectName(uri, raw[2].upper())
    pure = _PURE.match(uri)
    if pure is not None:
        return _pure_identity(uri, pure[1], pure[2])
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        api = _API_PATH.search(parts.path)
        if api is not None and api[1] == "items":
            return ObjectName(uri, unquote(api[2]))
        sscc = _DL_SSCC.match(parts.path)
        if sscc is not None:
            return ObjectName(uri, uri, "sscc", sscc=sscc[1])
        sgtin = _DL_SGTIN.match(parts.path)
        if sgtin is not None:
            return ObjectName(uri, uri, "sgtin", gtin=sgtin[1], serial=unquote(sgtin[2]))
    return ObjectName(uri, uri)


def _pure_identity(uri: str, scheme: str, body: str) -> ObjectName:
    """An EPC pure identity URI (TDS §6.3); SGTINs and SSCCs also give the GTIN and serial, or the SSCC."""
    fields = body.split(".")
    if scheme == "sgtin" and len(fields) == 3 and (fields[0] + fields[1]).isdigit() and fields[1]:
        prefix, reference, serial = fields
        body13 = reference[0] + prefix + reference[1:]
        gtin = body13 + check_digit(body13)
        return ObjectName(uri, uri, "sgtin", uri, gtin=gtin, serial=unquote(serial))
    if scheme == "sscc" and len(fields) == 2 and "".join(fields).isdigit() and fields[1]:
        prefix, reference = fields
        body17 = reference[0] + prefix + reference[1:]
        return ObjectName(uri, uri, "sscc", uri, sscc=body17 + check_digit(body17))
    return ObjectName(uri, uri, scheme if scheme in _SCHEMES else "unknown", uri)


_MATCHES: Final = """
select n.uri, i.epc
from unnest(%(uris)s::text[], %(pure)s::text[], %(gtins)s::text[], %(serials)s::text[], %(ssccs)s::text[])
    as n(uri, pure, gtin, serial, sscc)
join lateral (
    select i.epc from items i
    where i.epc = n.uri or i.uri = n.pure or i.sscc = n.sscc or (i.gtin = n.gtin and i.serial = n.serial)
    -- An item readers report (keyed by hex) before one kept under a URI.
    order by i.epc like '%%:%%', i.epc
    limit 1
) i on true
"""
_REGISTER: Final = """
insert into items (epc, scheme, gtin, serial, sscc, uri, first_seen_at)
select * from unnest(%(keys)s::text[], %(schemes)s::text[], %(gtins)s::text[], %(serials)s::text[],
                     %(ssccs)s::text[], %(pure)s::text[], %(ats)s::timestamptz[])
order by 1
on conflict (epc) do nothing
"""


async def resolve_objects(conn: Conn, first_named: Mapping[str, datetime]) -> dict[str, str]:
    """Each URI's item key; a URI no item answers to gets an ``items`` row of its own, first seen when named.

    Keys in hex (raw URIs, this API's URIs) get their row, decoded as a reader's would be, when they are
    associated (tracking/containers.py ensure_items).
    """
    names = [name_object(uri) for uri in sorted(first_named)]
    keys = {n.uri: n.key for n in names}
    lookup = [n for n in names if n.key == n.uri]
    if not lookup:
        return keys
    cursor = await conn.execute(
        _MATCHES,
        {
            "uris": [n.uri for n in lookup],
            "pure": [n.pure_uri for n in lookup],
            "gtins": [n.gtin for n in lookup],
            "serials": [n.serial for n in lookup],
            "ssccs": [n.sscc for n in lookup],
        },
    )
    found: dict[str, str] = dict(await cursor.fetchall())
    keys.update(found)
    unseen = [n for n in lookup if n.uri not in found]
    if unseen:
        await conn.execute(
            _REGISTER,
            {
                "keys": [n.key for n in unseen],
                "schemes": [n.scheme for n in unseen],
                "gtins": [n.gtin for n in unseen],
                "serials": [n.serial for n in unseen],
                "ssccs": [n.sscc for n in unseen],
                "pure": [n.pure_uri for n in unseen],
                "ats": [first_named[n.uri] for n in unseen],
            },
        )
    return keys


_LOCATIONS: Final = """
select n.uri, l.id
from unnest(%(uris)s::text[], %(ids)s::text[]) as n(uri, api_id)
join lateral (
    select l.id from locations l
    where l.id = n.uri or l.id = n.api_id or to_jsonb(l)->>'sgln' = n.uri
    order by l.id = n.uri desc, l.id
    limit 1
) l on true
"""


async def resolve_locations(conn: Conn, uris: Collection[str]) -> dict[str, str]:
    """The registry location each URI names, for those that name one."""
    if not uris:
        return {}
    ordered = sorted(uris)
    cursor = await conn.execute(_LOCATIONS, {"uris": ordered, "ids": [_api_location(uri) for uri in ordered]})
    return dict(await cursor.fetchall())


def _api_location(uri: str) -> str | None:
    """The id in a location URI of this API (``https://host/api/v1/locations/<id>``), None for other URIs."""
    parts = urlsplit(uri)
    api = _API_PATH.search(parts.path) if parts.scheme in ("http", "https") else None
    return unquote(api[2]) if api is not None and api[1] == "locations" else None
