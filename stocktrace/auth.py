"""API keys and roles: who may call what.

A key is ``stk_<id>_<secret>``: 12 hex digits of public id, then 32 random bytes (base64url). It is shown once
when created; the database keeps its SHA-256 (migrations/0910_api_keys.sql says why a plain hash is the right
tool for a random key). Clients send it as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Roles are ordered: a viewer reads; an operator also acknowledges and silences alerts, imports the book and runs
counts; an admin also changes the registry, rules and keys. `RULES` maps each method and route (its path
template, so that ``/devices/{device_id}`` is one route whatever the id) to the least role it needs. The
`Authentication` middleware refuses a missing or wrong key before anything else happens; the `authorize`
dependency, which the app adds to every router it mounts, checks the role once the route is known, so the stage
routers know nothing of either. /healthz, /readyz, /metrics and the API's documentation are open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

import click
import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from stocktrace.audit import Actor, acting
from stocktrace.logs import REQUEST_ID
from stocktrace.problems import problem

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
KEY_PREFIX: Final = "stk_"
_ID_HEX: Final = 12
_SECRET_BYTES: Final = 32
OPEN_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


# ----------------------------------------------------------------------------------------------------
# Which role each route needs


@dataclass(frozen=True, slots=True)
class Rule:
    """Requests with one of ``methods`` to ``path`` (a route template) or below it need ``role``."""

    methods: frozenset[str]
    path: str
    role: Role

    def covers(self, method: str, template: str) -> bool:
        if method not in self.methods:
            return False
        return template == self.path or template.startswith(self.path.rstrip("/") + "/")


READ: Final = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANY: Final = READ | WRITE

RULES: Final[tuple[Rule, ...]] = (
    # Who changed what, and the keys themselves, are for admins only, even to read.
    Rule(ANY, "/api/v1/audit", Role.ADMIN),
    Rule(ANY, "/api/v1/keys", Role.ADMIN),
    Rule(READ, "/api/v1", Role.VIEWER),
    # Day-to-day operations on the floor.
    Rule(frozenset({"POST"}), "/api/v1/inventory/book", Role.OPERATOR),
    Rule(WRITE, "/api/v1/inventory/cycle-counts", Role.OPERATOR),
    Rule(frozenset({"POST"}), "/api/v1/inventory/consumption/refresh", Role.OPERATOR),
    Rule(frozenset({"PUT"}), "/api/v1/items/{epc}/lot", Role.OPERATOR),
    Rule(frozenset({"POST"}), "/api/v1/containers/{sscc}/contents", Role.OPERATOR),
    Rule(frozenset({"POST"}), "/api/v1/epcis/capture", Role.OPERATOR),
    Rule(WRITE, "/api/v1/silences", Role.OPERATOR),
    Rule(frozenset({"POST", "DELETE"}), "/api/v1/alerts/{fingerprint}/ack", Role.OPERATOR),
    Rule(frozenset({"POST"}), "/api/v1/deliveries/{delivery_id}/retry", Role.OPERATOR),
    # Everything else that changes something is configuration: the registry, SKUs and lots, rules, receivers.
    Rule(WRITE, "/api/v1", Role.ADMIN),
)


def required_role(method: str, template: str) -> Role:
    """The least role a request needs; anything no rule covers needs an admin."""
    for rule in RULES:
        if rule.covers(method, template):
            return rule.role
    return Role.ADMIN


# ----------------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from."""

    key_id: str | None
    name: str
    role: Role


def new_key() -> tuple[str, str]:
    """A fresh (id, key)."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def key_id_of(key: str) -> str | None:
    """The id inside a key, or None if it is not shaped like one of ours."""
    if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + _ID_HEX + 2:
        return None
    key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _ID_HEX]
    if key[len(KEY_PREFIX) + _ID_HEX] != "_" or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKey(BaseModel):
    """An API key as listed: everything but the secret."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f1b0c6a9e2d",
                    "name": "erp-sync",
                    "role": "operator",
                    "created_at": "2026-03-01T08:00:00Z",
                    "last_used_at": "2026-03-02T09:14:00Z",
                    "revoked_at": None,
                }
            ]
        }
    )

    id: str = Field(description="Public id; the key starts with stk_<id>_")
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute")
    revoked_at: datetime | None


class NewKey(BaseModel):
    """What to call a new key and what it may do."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "erp-sync", "role": "operator"}]}
    )

    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", description="Who holds it")
    role: Role


class IssuedKey(ApiKey):
    """A new key, with the key itself: store it now, it is never shown again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f1b0c6a9e2d",
                    "name": "erp-sync",
                    "role": "operator",
                    "created_at": "2026-03-01T08:00:00Z",
                    "last_used_at": None,
                    "revoked_at": None,
                    "key": "stk_3f1b0c6a9e2d_q8V2rQe3o1n9zXb8F3hY0cKpL5tWmA7sD4gJ6uR2iE0",
                }
            ]
        }
    )

    key: str = Field(description="The key; send it as Authorization: Bearer <key>")


_KEY_COLUMNS: Final = "id, name, role, created_at, last_used_at, revoked_at"
_INSERT: Final = (
    f"insert into api_keys (id, name, role, secret_sha256) values (%s, %s, %s, %s) returning {_KEY_COLUMNS}"
)
_LIST: Final = f"select {_KEY_COLUMNS} from api_keys where %s or revoked_at is null order by created_at, id"
_TOUCH: Final = "update api_keys set last_used_at = date_trunc('minute', now()) where id = %s"


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(id=row[0], name=row[1], role=Role(row[2]), created_at=row[3], last_used_at=row[4], revoked_at=row[5])


class KeyNameTakenError(Exception):
    """A key in force already has this name."""


def create_key(conn: psycopg.Connection[Any], name: str, role: Role) -> IssuedKey:
    """Store a new key; the returned object is the only place its secret is ever seen."""
    key_id, key = new_key()
    try:
        with conn.transaction():
            row = conn.execute(_INSERT, (key_id, name, role.value, digest(key))).fetchone()
    except psycopg.errors.UniqueViolation:
        raise KeyNameTakenError(f"a key named {name!r} exists; revoke it first or choose another name") from None
    assert row is not None
    return IssuedKey(**_api_key(row).model_dump(), key=key)


def replace_key(conn: psycopg.Connection[Any], name: str, role: Role) -> IssuedKey:
    """Revoke the key in force named ``name``, if any, and issue a new one (for ``stocktrace demo``)."""
    with conn.transaction():
        revoke_key(conn, name)
        return create_key(conn, name, role)


def list_keys(conn: psycopg.Connection[Any], *, revoked: bool = False) -> list[ApiKey]:
    rows = conn.execute(_LIST, (revoked,)).fetchall()
    return [_api_key(row) for row in rows]


def revoke_key(conn: psycopg.Connection[Any], id_or_name: str) -> ApiKey | None:
    """Revoke the key in force with this id or name; None if there is none."""
    row = conn.execute(
        f"update api_keys set revoked_at = now() where (id = %s or name = %s) and revoked_at is null"
        f" returning {_KEY_COLUMNS}",
        (id_or_name, id_or_name),
    ).fetchone()
    return None if row is None else _api_key(row)


async def authenticate(pool: AsyncConnectionPool[Any], key: str) -> Principal | None:
    """The key's holder, or None for a key that is unknown, revoked or wrong."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "select name, role, secret_sha256, revoked_at is not null,"
            " last_used_at is null or last_used_at < now() - interval '1 minute' from api_keys where id = %s",
            (key_id,),
        )
        row = await cursor.fetchone()
        # Compared in constant time, so that response times say nothing about how much of a guess was right.
        if row is None or row[3] or not hmac.compare_digest(bytes(row[2]), digest(key)):
            return None
        if row[4]:
            await conn.execute(_TOUCH, (key_id,))
    return Principal(key_id, row[0], Role(row[1]))


# ----------------------------------------------------------------------------------------------------
# The middleware


def _presented_key(scope: Scope) -> str | None:
    """The key from ``Authorization: Bearer``, else from ``X-API-Key``."""
    headers = {name: str(value.decode("latin-1")).strip() for name, value in scope["headers"]}
    scheme, _, credentials = headers.get(b"authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(b"x-api-key") or None


_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="stocktrace"'}
_ANONYMOUS: Final = Principal(None, "anonymous", Role.ADMIN)
_PRINCIPAL: Final = "stocktrace.principal"


class Authentication:
    """ASGI middleware: every request outside `OPEN_PATHS` needs a valid key (else 401), before anything is read.

    Which role a route needs is checked once the route is known, by `authorize`. With ``enabled`` false (a
    local demonstration only) every request acts as an admin named "anonymous".
    """

    def __init__(self, app: ASGIApp, *, enabled: bool = True, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.enabled = enabled
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        found = await self._identify(scope) if self.enabled else _ANONYMOUS
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        scope[_PRINCIPAL] = found
        scope.setdefault("state", {})["key_name"] = found.name
        with self._acting(scope, found):
            await self.app(scope, receive, send)

    async def _identify(self, scope: Scope) -> Principal | Response:
        """The request's principal, or the refusal to answer with."""
        path = scope["path"]
        key = _presented_key(scope)
        if key is None:
            detail = "this API needs a key: send Authorization: Bearer <key> (or X-API-Key: <key>)"
            return problem(401, detail, path, headers=_CHALLENGE)
        try:
            principal = await authenticate(scope["app"].state.pool, key)
        except psycopg.Error as exc:
            log.error("cannot check an API key: %s", exc)  # noqa: TRY400  # the database's message says it all
            return problem(503, "cannot check the API key now: the database is unavailable", path)
        if principal is None:
            return problem(401, "the API key is unknown or revoked", path, headers=_CHALLENGE)
        return principal

    @contextmanager
    def _acting(self, scope: Scope, principal: Principal) -> Iterator[None]:
        actor = Actor(principal.name, principal.key_id, f"{scope['method']} {scope['path']}", REQUEST_ID.get())
        with acting(actor):
            yield


async def authorize(request: Request) -> None:
    """Dependency of every router under /api/v1: the key's role must reach the one `RULES` names for the route."""
    principal = request.scope.get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise HTTPException(401, "this API needs a key", headers=_CHALLENGE)
    # The matched route's template; depending on the FastAPI version it carries the mount prefix or not.
    template = str(getattr(request.scope.get("route"), "path_format", request.url.path))
    if not template.startswith(API_PREFIX + "/"):
        template = API_PREFIX + template
    needed = required_role(request.method, template)
    if not principal.role.allows(needed):
        detail = f"{request.method} {template} needs the {needed} role; the key {principal.name!r} is {principal.role}"
        raise HTTPException(403, detail)


# ----------------------------------------------------------------------------------------------------
# /api/v1/keys

router = APIRouter(tags=["keys"])


KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", examples=["3f1b0c6a9e2d"])]


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]


@router.get("/keys", summary="The API keys in force (never their secrets)")
async def read_keys(pool: Pool, revoked: bool = False) -> list[ApiKey]:
    """With ``revoked=true``, revoked keys too."""
    async with pool.connection() as conn:
        cursor = await conn.execute(_LIST, (revoked,))
        return [_api_key(row) for row in await cursor.fetchall()]


@router.post(
    "/keys",
    status_code=status.HTTP_201_CREATED,
    summary="Issue a key; the response is the only time it is shown",
    responses={409: {"description": "A key in force has this name"}},
)
async def issue_key(body: NewKey, pool: Pool) -> IssuedKey:
    key_id, key = new_key()
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(_INSERT, (key_id, body.name, body.role.value, digest(key)))
            row = await cursor.fetchone()
    except psycopg.errors.UniqueViolation:
        raise HTTPException(409, f"a key named {body.name!r} is in force; revoke it first") from None
    assert row is not None
    return IssuedKey(**_api_key(row).model_dump(), key=key)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke a key at once")
async def remove_key(key_id: KeyIdPath, pool: Pool) -> Response:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "update api_keys set revoked_at = now() where id = %s and revoked_at is null returning id", (key_id,)
        )
        if await cursor.fetchone() is None:
            raise HTTPException(404, f"no key {key_id} in force")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ----------------------------------------------------------------------------------------------------
# stocktrace keys create|list|revoke


@click.group("keys")
def keys() -> None:
    """API keys: create one (shown once), list them, revoke one.

    \b
    Examples:
      stocktrace keys create --role admin --name ops-laptop
      stocktrace keys list
      stocktrace keys revoke ops-laptop
    """


def _database_option(function: Any) -> Any:
    return click.option(
        "--database-url",
        envvar="STOCKTRACE_DATABASE_URL",
        default="postgresql:///stocktrace",
        show_default=True,
        help="libpq URL of the database [env: STOCKTRACE_DATABASE_URL]",
    )(function)


@contextmanager
def _connection(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(database_url, connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot connect to the database: {exc}".strip()) from None
    with conn:
        try:
            yield conn
        except psycopg.errors.UndefinedTable:
            raise click.ClickException("the api_keys table is missing: run `stocktrace migrate` first") from None


@keys.command("create")
@click.option("--name", required=True, help="Who or what holds the key, e.g. erp-sync or ops-laptop")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True, help="What it may do")
@_database_option
def create_command(name: str, role: str, database_url: str) -> None:
    """Issue a key and print it once on stdout; only its hash is stored."""
    with _connection(database_url) as conn:
        try:
            issued = create_key(conn, name, Role(role))
        except KeyNameTakenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(issued.key)
    click.echo(
        f"key {issued.id} ({issued.name}, {issued.role}) created; it is shown only this once.\n"
        "Send it as: Authorization: Bearer <key>",
        err=True,
    )


@keys.command("list")
@click.option("--revoked", is_flag=True, help="Include revoked keys")
@_database_option
def list_command(revoked: bool, database_url: str) -> None:
    """The keys: id, name, role, created, last used (to the minute), revoked."""
    with _connection(database_url) as conn:
        found = list_keys(conn, revoked=revoked)
    click.echo(f"{'ID':<12}  {'NAME':<24} {'ROLE':<8}  {'CREATED':<16}  {'LAST USED':<16}  REVOKED")
    for key in found:
        click.echo(
            f"{key.id:<12}  {key.name:<24} {key.role:<8}  {_minute(key.created_at):<16}  "
            f"{_minute(key.last_used_at):<16}  {_minute(key.revoked_at)}"
        )


def _minute(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at else "-"


@keys.command("revoke")
@click.argument("key")
@_database_option
def revoke_command(key: str, database_url: str) -> None:
    """Revoke a key (by id or name) at once: its next request is refused."""
    with _connection(database_url) as conn:
        revoked = revoke_key(conn, key)
    if revoked is None:
        raise click.ClickException(f"no key in force has the id or name {key!r}; see `stocktrace keys list`")
    click.echo(f"revoked key {revoked.id} ({revoked.name})")


COMMANDS: list[click.Command] = [keys]
