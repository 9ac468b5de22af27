"""Who changed what: the actor of each API request, handed to the audit triggers, and GET /api/v1/audit.

The audit log itself is kept by the database (migrations/0911_audit.sql): a trigger on each audited table
records the row before and after. The trigger learns who is acting from settings of the session, which
`AuditedPool` sets on every connection it hands out while a request is being handled, and clears when the
connection comes back. Stage routers keep using ``request.app.state.pool`` as before and need not know.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

_SET: Final = (
    "select set_config('stocktrace.actor', %s, false), set_config('stocktrace.actor_key', %s, false),"
    " set_config('stocktrace.request', %s, false), set_config('stocktrace.request_id', %s, false)"
)
_CLEAR: Final = (
    "select set_config('stocktrace.actor', '', false), set_config('stocktrace.actor_key', '', false),"
    " set_config('stocktrace.request', '', false), set_config('stocktrace.request_id', '', false)"
)
_MAX_REQUEST_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting, and through which request."""

    name: str
    key_id: str | None
    request: str
    request_id: str | None

    def settings(self) -> tuple[str, str, str, str]:
        return self.name, self.key_id or "", self.request[:_MAX_REQUEST_CHARS], self.request_id or ""


ACTOR: ContextVar[Actor | None] = ContextVar("stocktrace_actor", default=None)


@contextmanager
def acting(actor: Actor) -> Iterator[None]:
    """Connections taken from an `AuditedPool` inside this block record ``actor`` on what they change."""
    token = ACTOR.set(actor)
    try:
        yield
    finally:
        ACTOR.reset(token)


class AuditedPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A connection pool that names the current `Actor` on each connection it lends, for the audit triggers.

    The names are session settings (set_config(..., false)): the pool's connections are in autocommit, so a
    transaction-local setting would end with the first statement. They are cleared by the pool's ``reset``
    callback, which runs on every returned connection after the pool has rolled back anything left open, so
    a connection never carries one request's actor into the next, however the request ended. If clearing
    fails, the pool discards the connection.
    """

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self._named: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        super().__init__(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            reset=self._forget_actor,
        )

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109  # the pool's API
        conn = await super().getconn(timeout)
        actor = ACTOR.get()
        if actor is None:
            return conn
        try:
            await conn.execute(_SET, actor.settings())
        except BaseException:
            await self.putconn(conn)
            raise
        self._named.add(conn)
        return conn

    async def _forget_actor(self, conn: AsyncConnection[Any]) -> None:
        if conn in self._named:
            await conn.execute(_CLEAR)
            self._named.discard(conn)


def create_pool(dsn: str) -> AuditedPool:
    """The API's pool; open it with ``await pool.open()``."""
    return AuditedPool(dsn)


# ----------------------------------------------------------------------------------------------------
# GET /api/v1/audit

router = APIRouter(tags=["audit"])


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]


class AuditEntry(BaseModel):
    """One change to one row."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 812,
                    "at": "2026-03-02T09:14:10.512Z",
                    "actor": "erp-sync",
                    "actor_key": "3f1b0c6a9e2d",
                    "request": "PUT /api/v1/devices/fx9600-dock1",
                    "request_id": "0c9e1f2a3b4c4d5e8f6a7b8c9d0e1f2a",
                    "table": "devices",
                    "operation": "update",
                    "object": "fx9600-dock1",
                    "before": {"id": "fx9600-dock1", "location_id": "dock-1", "name": "Dock 1 portal"},
                    "after": {"id": "fx9600-dock1", "location_id": "dock-2", "name": "Dock 1 portal"},
                }
            ]
        }
    )

    id: int
    at: datetime = Field(description="When the transaction that made the change began")
    actor: str = Field(description="The API key's name, or db:<user> for a change made outside the API")
    actor_key: str | None = Field(description="The API key's id")
    request: str | None = Field(description="The API request that made the change")
    request_id: str | None = Field(description="The request's X-Request-ID, to find it in the logs")
    table: str
    operation: Literal["insert", "update", "delete"]
    object: str | None = Field(description="The row's key (its primary key columns joined by '/')")
    before: dict[str, Any] | None = Field(description="The row before the change; null for an insert")
    after: dict[str, Any] | None = Field(description="The row after the change; null for a delete")


@router.get("/audit", summary="Changes to configuration and master data, newest first, paged")
async def read_audit(
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Page: only entries with a smaller id")
    ] = None,
    table: Annotated[str | None, Query(max_length=63, description="Only changes to this table")] = None,
    object_key: Annotated[str | None, Query(alias="object", max_length=500, description="Only this row")] = None,
    actor: Annotated[str | None, Query(max_length=100, description="Only changes by this key name")] = None,
) -> list[AuditEntry]:
    """Who changed what and when, with the row before and after: registry, inventory and alert configuration,
    and API keys (never their secret). For the next page pass ``before_id`` = the last entry's ``id``."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            select id, at, actor, actor_key, request, request_id, table_name, operation, object_key, before, after
            from audit_log
            where (%(before)s::bigint is null or id < %(before)s)
              and (%(table)s::text is null or table_name = %(table)s)
              and (%(object)s::text is null or object_key = %(object)s)
              and (%(actor)s::text is null or actor = %(actor)s)
            order by id desc limit %(limit)s
            """,
            {"before": before_id, "table": table, "object": object_key, "actor": actor, "limit": limit},
        )
        rows = await cursor.fetchall()
    return [_entry(row) for row in rows]


def _entry(r: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        id=r[0], at=r[1], actor=r[2], actor_key=r[3], request=r[4], request_id=r[5], table=r[6],
        operation=r[7], object=r[8], before=r[9], after=r[10],
    )  # fmt: skip
