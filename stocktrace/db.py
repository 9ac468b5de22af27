"""Database connections and schema migrations."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

# Any 64-bit number unique to stocktrace: several processes starting at once apply migrations one at a time.
_MIGRATION_LOCK: Final = 0x5E0C_7ACE_0001


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migrations shipped with this version, in the order they apply (by their numeric prefix)."""
    folder = resources.files("stocktrace") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: int(m.version))


def migrate(dsn: str) -> list[Migration]:
    """Apply every migration not yet recorded, each in its own transaction; returns those applied."""
    applied: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "create table if not exists schema_migrations ("
                " version text primary key, name text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
            done = {row[0]: row[1] for row in conn.execute("select version, checksum from schema_migrations")}
            for migration in available_migrations():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        log.warning(
                            "migration %s_%s was edited after it was applied",
                            migration.version,
                            migration.name,
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %s_%s", migration.version, migration.name)
                applied.append(migration)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    """An async pool for the API and background jobs; open it with ``await pool.open()``."""
    return AsyncConnectionPool(dsn, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True})


@contextlib.contextmanager
def scratch_database(database_url: str, purpose: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh, migrated database ``<name>_<purpose>`` on the server of ``database_url``, for a benchmark: its URL,
    and the database dropped afterwards unless ``keep``. One left over by an interrupted run is replaced."""
    server = psycopg.conninfo.conninfo_to_dict(database_url)
    name = f"{server.get('dbname') or 'stocktrace'}_{purpose}"
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    try:
        migrate(url)
        yield url
    finally:
        if not keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(drop)
