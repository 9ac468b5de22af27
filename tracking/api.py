"""HTTP endpoints of presence: where an item is and has been, what is at a location, and containers' contents.

The app mounts ``router`` under /api/v1. An item is named by its EPC as hex (as readers report it, any case) or
by its pure-identity URI (``urn:epc:id:sgtin:...``); a container also by its 18-digit SSCC. The state is what
the resolver (tracking/resolver.py) last decided, at most a tick (about a second) behind the reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from psycopg_pool import AsyncConnectionPool
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from devices.epc import UNKNOWN, identify
from tracking import containers
from tracking.containers import Conn
from tracking.policy import policy_for

router = APIRouter(tags=["presence"])

_EXAMPLE_EPC: Final = "3034F4E4E40002C000000001"
_EXAMPLE_SSCC_EPC: Final = "3154F4E4E40000000A000000"
_STATE_COLUMNS: Final = (
    "s.location_id, l.name, s.site_id, s.status, s.since, s.last_seen_at, s.container_epc, s.latitude, s.longitude"
)


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    """The app's connection pool, opened in its lifespan (stocktrace/db.py create_pool)."""
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]
EpcPath = Annotated[
    str,
    Path(description="EPC as hex, or its pure-identity URI", examples=[_EXAMPLE_EPC], max_length=256),
]
SsccPath = Annotated[
    str,
    Path(description="The container's EPC (hex or URI) or its 18-digit SSCC", examples=[_EXAMPLE_SSCC_EPC],
         max_length=256),
]  # fmt: skip


class State(BaseModel):
    """Where the item is now."""

    location_id: str | None = Field(description="Null when it has departed and not arrived anywhere since")
    location_name: str | None = None
    site_id: str | None = Field(description="The site it is at; for a departed item, the site it left")
    status: Literal["present", "departed", "in_transit"]
    since: datetime = Field(description="When it got there (or departed), in device time")
    last_seen_at: datetime = Field(description="When a reader last saw it there")
    container_epc: str | None = Field(None, description="The container it is in, whose location it takes")
    latitude: float | None = Field(None, description="Aboard a vehicle: the vehicle's latest GPS fix")
    longitude: float | None = None


class Item(BaseModel):
    """An item: its GS1 identity, decoded from the EPC, and where it is."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "epc": _EXAMPLE_EPC, "scheme": "sgtin", "gtin": "04012345000115", "serial": "1", "sscc": None,
                "uri": "urn:epc:id:sgtin:4012345.000011.1", "lot": "L2611", "first_seen_at": "2026-03-02T08:00:00Z",
                "state": {"location_id": "berlin-a-01", "location_name": "Shelf A-01", "site_id": "berlin-dc",
                          "status": "present", "since": "2026-03-02T08:00:02Z", "last_seen_at": "2026-03-02T09:14:10Z",
                          "container_epc": None, "latitude": None, "longitude": None},
            }]
        }
    )  # fmt: skip

    epc: str
    scheme: str = Field(description="sgtin, sscc, sgln, grai, giai or unknown")
    gtin: str | None = None
    serial: str | None = None
    sscc: str | None = None
    uri: str | None = Field(None, description="Pure-identity URI (EPC Tag Data Standard)")
    lot: str | None = None
    first_seen_at: datetime
    state: State | None = Field(description="Null until the resolver has placed it")


class LocationEvent(BaseModel):
    at: datetime = Field(description="When it happened, in device time")
    kind: Literal["arrived", "departed", "moved"]
    from_location: str | None
    to_location: str | None
    direction: Literal["in", "out"] | None = Field(description="Through a portal: which way it crossed")
    recorded_at: datetime


class History(BaseModel):
    """An item's location events, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "epc": _EXAMPLE_EPC,
                "events": [
                    {"at": "2026-03-02T08:20:00Z", "kind": "moved", "from_location": "berlin-receiving",
                     "to_location": "berlin-a-01", "direction": None, "recorded_at": "2026-03-02T08:20:03Z"},
                    {"at": "2026-03-02T08:00:00Z", "kind": "moved", "from_location": "berlin-dock-1",
                     "to_location": "berlin-receiving", "direction": "in", "recorded_at": "2026-03-02T08:00:02Z"},
                ],
                "next_before": None,
            }]
        }
    )  # fmt: skip

    epc: str
    events: list[LocationEvent]
    next_before: datetime | None = Field(description="Pass as ?before= for the next (older) page; null at the end")


class GtinCount(BaseModel):
    gtin: str | None = Field(description="Null for tags that are not SGTINs (SSCC pallets, unknown EPCs)")
    items: int


class LocatedItem(BaseModel):
    epc: str
    gtin: str | None
    location_id: str
    status: Literal["present", "in_transit"]
    since: datetime
    last_seen_at: datetime
    container_epc: str | None


class LocationItems(BaseModel):
    """What is at a location now (and, by default, in the locations inside it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "location_id": "berlin-zone-a", "kind": "zone", "include_sublocations": True, "total": 2,
                "by_gtin": [{"gtin": "04012345000733", "items": 2}],
                "items": [{"epc": "3034F4E4E4000B4000000001", "gtin": "04012345000733", "location_id": "berlin-a-01",
                           "status": "present", "since": "2026-03-02T08:00:02Z",
                           "last_seen_at": "2026-03-02T09:14:10Z", "container_epc": None}],
                "next_after": "3034F4E4E4000B4000000001",
            }]
        }
    )  # fmt: skip

    location_id: str
    kind: str
    include_sublocations: bool
    total: int
    by_gtin: list[GtinCount]
    items: list[LocatedItem]
    next_after: str | None = Field(description="Pass as ?after= for the next page; null at the end")


class ContainerContent(BaseModel):
    epc: str
    gtin: str | None
    source: Literal["api", "epcis", "inferred"]
    associated_at: datetime


class Container(BaseModel):
    """A container (pallet, case), where it is, and what is inside."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "epc": _EXAMPLE_SSCC_EPC, "sscc": "040123450000000108", "uri": "urn:epc:id:sscc:4012345.0000000010",
                "state": None,
                "contents": [{"epc": _EXAMPLE_EPC, "gtin": "04012345000115", "source": "api",
                              "associated_at": "2026-03-02T08:00:00Z"}],
            }]
        }
    )  # fmt: skip

    epc: str
    sscc: str | None
    uri: str | None
    state: State | None
    contents: list[ContainerContent]


class ContentsChange(BaseModel):
    """Items to put into the container and to take out of it (as EPC hex or URI)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"add": [_EXAMPLE_EPC], "remove": []}]})

    add: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=10_000)
    remove: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=10_000)
    at: AwareDatetime | None = Field(None, description="When it was packed or unpacked; now if not given")


def _invalid(where: list[str | int], message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": where, "msg": message, "type": "value_error"}])


def _not_found(message: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, message)


async def _epc(conn: Conn, text: str, where: list[str | int]) -> str:
    """The EPC hex an item is known by: hex as given (upper-cased), or looked up by its URI or SSCC."""
    text = text.strip()
    if text.startswith("urn:epc:id:"):
        cursor = await conn.execute("select epc from items where uri = %s limit 1", (text,))
        row = await cursor.fetchone()
        if row is None:
            raise _not_found(f"no item with the identity {text!r} has been seen")
        return str(row[0])
    if text.isdigit() and len(text) == 18:
        cursor = await conn.execute("select epc from items where sscc = %s limit 1", (text,))
        row = await cursor.fetchone()
        if row is None:
            raise _not_found(f"no container with SSCC {text} has been seen; name it by its EPC to associate it")
        return str(row[0])
    identity = identify(text)
    if identity.reason == "not a hexadecimal EPC":
        raise _invalid(where, f"{text[:64]!r} is neither an EPC in hex, an EPC URI, nor an 18-digit SSCC")
    return identity.raw_hex


def _state(row: tuple[Any, ...]) -> State | None:
    status_, since = row[3], row[4]
    if status_ is None or since is None:
        return None
    return State(
        location_id=row[0], location_name=row[1], site_id=row[2], status=status_, since=since,
        last_seen_at=row[5], container_epc=row[6], latitude=row[7], longitude=row[8],
    )  # fmt: skip


@router.get("/items/{epc}", summary="Where an item is now, with its identity")
async def read_item(epc: EpcPath, pool: Pool) -> Item:
    async with pool.connection() as conn:
        key = await _epc(conn, epc, ["path", "epc"])
        cursor = await conn.execute(
            f"select i.epc, i.scheme, i.gtin, i.serial, i.sscc, i.uri, i.lot, i.first_seen_at, {_STATE_COLUMNS}"
            " from items i left join item_state s on s.epc = i.epc left join locations l on l.id = s.location_id"
            " where i.epc = %s",
            (key,),
        )
        row = await cursor.fetchone()
    if row is None:
        raise _not_found(f"no item with EPC {key} has been seen")
    return Item(
        epc=row[0], scheme=row[1], gtin=row[2], serial=row[3], sscc=row[4], uri=row[5], lot=row[6],
        first_seen_at=row[7], state=_state(row[8:]),
    )  # fmt: skip


@router.get("/items/{epc}/history", summary="An item's location events, newest first, paged")
async def read_history(
    epc: EpcPath,
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[AwareDatetime | None, Query(description="Only events before this time (the next page)")] = None,
) -> History:
    async with pool.connection() as conn:
        key = await _epc(conn, epc, ["path", "epc"])
        if await _scalar(conn, "select 1 from items where epc = %s", (key,)) is None:
            raise _not_found(f"no item with EPC {key} has been seen")
        rows = await _events(conn, key, "(%(before)s::timestamptz is null or at < %(before)s)", before, limit + 1)
        next_before = None
        if len(rows) > limit:
            # Events at the page's last time all go on this page, so that ?before= that time loses none.
            next_before = rows[limit - 1][0]
            rows = [r for r in rows[:limit] if r[0] > next_before]
            rows += await _events(conn, key, "at = %(before)s", next_before, None)
    events = [LocationEvent(at=r[0], kind=r[1], from_location=r[2], to_location=r[3], direction=r[4],
                            recorded_at=r[5]) for r in rows]  # fmt: skip
    return History(epc=key, events=events, next_before=next_before)


async def _events(conn: Conn, epc: str, when: str, before: datetime | None, limit: int | None) -> list[Any]:
    cursor = await conn.execute(
        "select at, kind, from_location, to_location, direction, recorded_at from location_events"
        f" where epc = %(epc)s and {when}"
        # Newest first; of events at the same time, the arrival somewhere comes after the departure from elsewhere.
        " order by at desc, recorded_at desc, kind = 'departed', kind = 'moved' limit %(limit)s",
        {"epc": epc, "before": before, "limit": limit},
    )
    return await cursor.fetchall()


@router.get("/locations/{location_id}/items", summary="What is at a location now, with counts per GTIN")
async def read_location_items(
    location_id: Annotated[str, Path(max_length=256, examples=["berlin-zone-a"])],
    pool: Pool,
    include_sublocations: Annotated[bool, Query(description="Count what is in the locations inside it too")] = True,
    limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
    after: Annotated[str | None, Query(max_length=256, description="Only items with a larger EPC (next page)")] = None,
) -> LocationItems:
    async with pool.connection() as conn:
        kind = await _scalar(conn, "select kind from locations where id = %s", (location_id,))
        if kind is None:
            raise _not_found(f"no location {location_id!r} in the registry")
        places = await _places(conn, location_id, include_sublocations)
        cursor = await conn.execute(
            "select i.gtin, count(*) from item_state s join items i on i.epc = s.epc"
            " where s.location_id = any(%s) group by i.gtin order by count(*) desc, i.gtin",
            (places,),
        )
        counts = [GtinCount(gtin=r[0], items=r[1]) for r in await cursor.fetchall()]
        cursor = await conn.execute(
            "select s.epc, i.gtin, s.location_id, s.status, s.since, s.last_seen_at, s.container_epc"
            " from item_state s join items i on i.epc = s.epc"
            " where s.location_id = any(%s) and s.epc > %s order by s.epc limit %s",
            (places, after or "", limit),
        )
        rows = await cursor.fetchall()
    total = sum(c.items for c in counts)
    items = [LocatedItem(epc=r[0], gtin=r[1], location_id=r[2], status=r[3], since=r[4], last_seen_at=r[5],
                         container_epc=r[6]) for r in rows]  # fmt: skip
    more = 0 < limit == len(items)
    return LocationItems(
        location_id=location_id, kind=kind, include_sublocations=include_sublocations, total=total, by_gtin=counts,
        items=items, next_after=items[-1].epc if more and items else None,
    )  # fmt: skip


async def _places(conn: Conn, location_id: str, include_sublocations: bool) -> list[str]:
    if not include_sublocations:
        return [location_id]
    cursor = await conn.execute(
        "with recursive inside (id) as (select %s::text union select l.id from locations l"
        " join inside on l.parent_id = inside.id) select id from inside",
        (location_id,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def _scalar(conn: Conn, query: str, params: tuple[Any, ...]) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


@router.get("/containers/{sscc}", summary="A container, where it is, and what is inside")
async def read_container(sscc: SsccPath, pool: Pool) -> Container:
    async with pool.connection() as conn:
        key = await _epc(conn, sscc, ["path", "sscc"])
        return await _container(conn, key)


async def _container(conn: Conn, key: str) -> Container:
    cursor = await conn.execute(
        f"select i.sscc, i.uri, {_STATE_COLUMNS} from items i left join item_state s on s.epc = i.epc"
        " left join locations l on l.id = s.location_id where i.epc = %s",
        (key,),
    )
    row = await cursor.fetchone()
    cursor = await conn.execute(
        "select c.item_epc, i.gtin, c.source, c.associated_at from container_contents c"
        " left join items i on i.epc = c.item_epc where c.container_epc = %s order by c.item_epc",
        (key,),
    )
    contents = [ContainerContent(epc=r[0], gtin=r[1], source=r[2], associated_at=r[3]) for r in await cursor.fetchall()]
    if row is None and not contents:
        raise _not_found(f"no container with EPC {key} has been seen or packed")
    identity = identify(key)
    return Container(
        epc=key,
        sscc=row[0] if row else identity.sscc,
        uri=row[1] if row else identity.uri,
        state=_state(row[2:]) if row else None,
        contents=contents,
    )


@router.post("/containers/{sscc}/contents", summary="Pack items into a container or unpack them")
async def change_contents(sscc: SsccPath, change: ContentsChange, pool: Pool) -> Container:
    """Items added leave any container they were in; items removed stay where they are until read elsewhere.

    The resolver places added items at the container's location within a tick while they are not read
    themselves. An item cannot be both added and removed in one request.
    """
    at = change.at or datetime.now(UTC)
    async with pool.connection() as conn, conn.transaction():
        key = await _epc(conn, sscc, ["path", "sscc"])
        if identify(key).scheme == UNKNOWN:
            raise _invalid(["path", "sscc"], f"{key} is not a GS1 EPC that can name a container")
        add = [await _epc(conn, e, ["body", "add", i]) for i, e in enumerate(change.add)]
        remove = [await _epc(conn, e, ["body", "remove", i]) for i, e in enumerate(change.remove)]
        _check_change(key, add, remove)
        await containers.associate(conn, key, add, at, "api")
        await containers.dissociate(conn, key, remove, at, "api")
        return await _container(conn, key)


def _check_change(key: str, add: list[str], remove: list[str]) -> None:
    if key in add:
        raise _invalid(["body", "add", add.index(key)], "a container cannot contain itself")
    both = sorted(set(add) & set(remove))
    if both:
        raise _invalid(["body", "remove"], f"{both[0]} is both added and removed")


class PresencePolicyOverride(BaseModel):
    """A location's own presence settings; null (or absent) keeps the default of its kind (tracking/policy.py)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"age_out_s": 180, "dwell_s": None}]})

    dwell_s: float | None = Field(None, ge=0, le=86_400, description="Seconds seen before it has arrived")
    age_out_s: float | None = Field(None, gt=0, le=86_400, description="Seconds unseen before it has departed")
    hysteresis_db: float | None = Field(None, ge=0, le=60, description="dB stronger elsewhere before it moves")


class PresencePolicyView(BaseModel):
    """The presence settings in force at a location, and which of them are its own."""

    location_id: str
    kind: str
    dwell_s: float
    age_out_s: float
    hysteresis_db: float
    overrides: PresencePolicyOverride


LocationPath = Annotated[str, Path(max_length=256, examples=["berlin-freezer"])]


@router.get("/locations/{location_id}/presence-policy", summary="Dwell, age-out and hysteresis at a location")
async def read_presence_policy(location_id: LocationPath, pool: Pool) -> PresencePolicyView:
    async with pool.connection() as conn:
        return await _policy_view(conn, location_id)


@router.put("/locations/{location_id}/presence-policy", summary="Override the presence settings of a location")
async def put_presence_policy(
    location_id: LocationPath, override: PresencePolicyOverride, pool: Pool
) -> PresencePolicyView:
    """The resolver applies them from its next tick. All null removes the overrides."""
    async with pool.connection() as conn, conn.transaction():
        if await _scalar(conn, "select 1 from locations where id = %s", (location_id,)) is None:
            raise _not_found(f"no location {location_id!r} in the registry")
        if override.dwell_s is None and override.age_out_s is None and override.hysteresis_db is None:
            await conn.execute("delete from location_presence_policy where location_id = %s", (location_id,))
        else:
            await conn.execute(
                "insert into location_presence_policy (location_id, dwell_s, age_out_s, hysteresis_db)"
                " values (%(id)s, %(dwell)s, %(age_out)s, %(hysteresis)s) on conflict (location_id) do update"
                " set dwell_s = excluded.dwell_s, age_out_s = excluded.age_out_s,"
                " hysteresis_db = excluded.hysteresis_db, updated_at = now()",
                {"id": location_id, "dwell": override.dwell_s, "age_out": override.age_out_s,
                 "hysteresis": override.hysteresis_db},
            )  # fmt: skip
        return await _policy_view(conn, location_id)


async def _policy_view(conn: Conn, location_id: str) -> PresencePolicyView:
    cursor = await conn.execute(
        "select l.kind, p.dwell_s, p.age_out_s, p.hysteresis_db from locations l"
        " left join location_presence_policy p on p.location_id = l.id where l.id = %s",
        (location_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise _not_found(f"no location {location_id!r} in the registry")
    kind, dwell_s, age_out_s, hysteresis_db = row
    policy = policy_for(kind, dwell_s, age_out_s, hysteresis_db)
    return PresencePolicyView(
        location_id=location_id, kind=kind, dwell_s=policy.dwell_s, age_out_s=policy.age_out_s,
        hysteresis_db=policy.hysteresis_db,
        overrides=PresencePolicyOverride(dwell_s=dwell_s, age_out_s=age_out_s, hysteresis_db=hysteresis_db),
    )  # fmt: skip
