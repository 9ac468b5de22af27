"""REST endpoints of the device registry; the app mounts ``router`` under /api/v1.

The bodies are the registry models that the manifest file uses too (devices/registry.py), so an object written
here reads back the same from ``stocktrace apply``'s point of view, and the reverse. PUT creates or replaces
(201 when it created), POST only creates (409 if the id is taken), DELETE refuses (409) while something is
inside or attached to the object. Deleting a device keeps its readings: if it publishes again it is listed
by ``GET /devices?status=unassigned``, from where a PUT adopts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from devices import health
from devices.registry import (
    Action,
    Antenna,
    Change,
    ConflictError,
    Device,
    DeviceKind,
    InvalidError,
    Location,
    LocationKind,
    NotFoundError,
    Plan,
    RegistryError,
    Site,
    arun,
    delete_device,
    delete_place,
    get_device,
    get_location,
    get_site,
    list_locations,
    list_sites,
    upsert_device,
    upsert_location,
    upsert_site,
)

T = TypeVar("T")
router = APIRouter(tags=["registry"])

_STATUS: Final[dict[type[RegistryError], int]] = {
    NotFoundError: status.HTTP_404_NOT_FOUND,
    ConflictError: status.HTTP_409_CONFLICT,
    InvalidError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    """The app's connection pool, opened in its lifespan (stocktrace/db.py create_pool)."""
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]
DeviceId = Annotated[str, Path(description="The device id its decoder reports; it may contain '/'")]


async def _run(pool: AsyncConnectionPool[Any], plan: Plan[T]) -> T:
    """Run a plan in one transaction; the one place a registry refusal becomes an HTTP error."""
    try:
        async with pool.connection() as conn, conn.transaction():
            return await arun(conn, plan)
    except RegistryError as exc:
        code = _STATUS.get(type(exc), status.HTTP_409_CONFLICT)
        if code == status.HTTP_422_UNPROCESSABLE_CONTENT:
            loc = ["body", *exc.field.split(".")] if exc.field else ["body"]
            raise HTTPException(code, [{"loc": loc, "msg": exc.message, "type": "registry"}]) from exc
        raise HTTPException(code, exc.message) from exc


def _same_id(path_id: str, body_id: str | int, field: str = "id") -> None:
    if str(path_id) != str(body_id):
        message = f"the body's {field} {body_id!r} differs from the path's {path_id!r}"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", field], "msg": message}])


def _created(change: Change, response: Response) -> None:
    if change.action is Action.CREATED:
        response.status_code = status.HTTP_201_CREATED


def _only_create(kind: str, write: Plan[Change]) -> Plan[Change]:
    change = yield from write
    if change.action is not Action.CREATED:
        # Raised after the write, so the transaction rolls it back.
        raise ConflictError(f"{kind} {change.id!r} already exists; PUT replaces it")
    return change


# ----------------------------------------------------------------------------------------------------
# Sites


@router.get("/sites")
async def read_sites(pool: Pool) -> list[Site]:
    return await _run(pool, list_sites())


@router.post("/sites", status_code=status.HTTP_201_CREATED)
async def create_site(site: Site, pool: Pool) -> Site:
    await _run(pool, _only_create("site", upsert_site(site)))
    return site


@router.get("/sites/{site_id}")
async def read_site(site_id: str, pool: Pool) -> Site:
    return await _run(pool, get_site(site_id))


@router.put("/sites/{site_id}")
async def put_site(site_id: str, site: Site, pool: Pool, response: Response) -> Site:
    _same_id(site_id, site.id)
    _created(await _run(pool, upsert_site(site)), response)
    return site


@router.delete("/sites/{site_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_site(site_id: str, pool: Pool) -> None:
    await _run(pool, delete_place(site_id, "site"))


# ----------------------------------------------------------------------------------------------------
# Locations


@router.get("/locations")
async def read_locations(
    pool: Pool, site: str | None = None, kind: Annotated[LocationKind | None, Query()] = None
) -> list[Location]:
    """Locations, parents before children; ``site`` and ``kind`` narrow the list."""
    return await _run(pool, list_locations(site, kind))


@router.post("/locations", status_code=status.HTTP_201_CREATED)
async def create_location(location: Location, pool: Pool) -> Location:
    await _run(pool, _only_create("location", upsert_location(location)))
    return location


@router.get("/locations/{location_id}")
async def read_location(location_id: str, pool: Pool) -> Location:
    return await _run(pool, get_location(location_id))


@router.put("/locations/{location_id}")
async def put_location(location_id: str, location: Location, pool: Pool, response: Response) -> Location:
    _same_id(location_id, location.id)
    _created(await _run(pool, upsert_location(location)), response)
    return location


@router.delete("/locations/{location_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_location(location_id: str, pool: Pool) -> None:
    await _run(pool, delete_place(location_id, "location"))


# ----------------------------------------------------------------------------------------------------
# Devices. Sub-resources come first: a device id may contain '/', so /devices/{id:path} would swallow them.


@router.get("/devices")
async def read_devices(
    pool: Pool,
    state: Annotated[
        health.StatusFilter | None,
        Query(alias="status", description="online, offline, never_seen or unassigned"),
    ] = None,
    kind: Annotated[DeviceKind | None, Query()] = None,
) -> list[health.DeviceState]:
    """Every registered or publishing device with its state; ``unassigned`` lists those to adopt."""
    return await _run(pool, health.list_device_states(state, kind))


@router.post("/devices", status_code=status.HTTP_201_CREATED)
async def create_device(device: Device, pool: Pool) -> Device:
    await _run(pool, _only_create("device", upsert_device(device)))
    return device


@router.get("/devices/{device_id:path}/health")
async def read_device_health(device_id: DeviceId, pool: Pool) -> health.DeviceHealth:
    return await _run(pool, health.device_health(device_id))


@router.get("/devices/{device_id:path}/antennas")
async def read_antennas(device_id: DeviceId, pool: Pool) -> list[Antenna]:
    return (await _run(pool, get_device(device_id))).antennas


@router.put("/devices/{device_id:path}/antennas")
async def put_antennas(device_id: DeviceId, antennas: list[Antenna], pool: Pool) -> list[Antenna]:
    """Replace the reader's whole antenna map."""
    return (await _run(pool, _change_antennas(device_id, lambda _: antennas))).antennas


@router.put("/devices/{device_id:path}/antennas/{port}")
async def put_antenna(device_id: DeviceId, port: int, antenna: Antenna, pool: Pool) -> Antenna:
    _same_id(str(port), antenna.port, "port")
    await _run(pool, _change_antennas(device_id, lambda old: [*(a for a in old if a.port != port), antenna]))
    return antenna


@router.delete("/devices/{device_id:path}/antennas/{port}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_antenna(device_id: DeviceId, port: int, pool: Pool) -> None:
    def without(old: list[Antenna]) -> list[Antenna]:
        if all(antenna.port != port for antenna in old):
            raise NotFoundError(f"device {device_id!r} has no antenna {port} mapped")
        return [antenna for antenna in old if antenna.port != port]

    await _run(pool, _change_antennas(device_id, without))


def _change_antennas(device_id: str, change: Callable[[list[Antenna]], list[Antenna]]) -> Plan[Device]:
    device = yield from get_device(device_id)
    try:
        updated = Device.model_validate({**device.model_dump(), "antennas": change(device.antennas)})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidError(str(error["msg"]).removeprefix("Value error, "), "antennas") from None
    yield from upsert_device(updated)
    return updated


@router.get("/devices/{device_id:path}")
async def read_device(device_id: DeviceId, pool: Pool) -> Device:
    return await _run(pool, get_device(device_id))


@router.put("/devices/{device_id:path}")
async def put_device(device_id: DeviceId, device: Device, pool: Pool, response: Response) -> Device:
    """Create or replace a device; for one that has been publishing unregistered, this adopts it."""
    _same_id(device_id, device.id)
    _created(await _run(pool, upsert_device(device)), response)
    return device


@router.delete("/devices/{device_id:path}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_device(device_id: DeviceId, pool: Pool) -> None:
    """Remove the device from the registry; its readings stay."""
    await _run(pool, delete_device(device_id))


__all__ = ["get_pool", "router"]
