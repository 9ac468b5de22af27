"""Database operations written once as *plans*, carried out on sync or async connections.

A plan is a generator that yields SQL statements and receives each one's rows (psycopg's own sans-I/O style):
`run` carries it out on a sync connection (the CLI, scripts, tests), `arun` on an async one (the API). The
registry and the inventory both write their queries this way; each says how an integrity error reads to its
callers.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, TypeAlias, TypeVar

import psycopg
from psycopg.rows import dict_row

T = TypeVar("T")
Row: TypeAlias = dict[str, Any]
IntegrityMapper: TypeAlias = Callable[[psycopg.errors.IntegrityError], Exception]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: LiteralString
    params: Sequence[Any] | Mapping[str, Any] = ()


Plan: TypeAlias = Generator[Statement, list[Row], T]
"""A database operation written once: yields statements, receives each one's rows, returns its result."""


def run(conn: psycopg.Connection[Any], plan: Plan[T], integrity: IntegrityMapper) -> T:
    """Carry out a plan on a sync connection; the caller owns the transaction."""
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            statement = next(plan)
            while True:
                cur.execute(statement.sql, statement.params)
                statement = plan.send(cur.fetchall() if cur.description else [])
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]  # StopIteration.value is Any; the plan's T
        except psycopg.errors.IntegrityError as exc:
            raise integrity(exc) from exc


async def arun(conn: psycopg.AsyncConnection[Any], plan: Plan[T], integrity: IntegrityMapper) -> T:
    """Carry out a plan on an async connection; the caller owns the transaction."""
    async with conn.cursor(row_factory=dict_row) as cur:
        try:
            statement = next(plan)
            while True:
                await cur.execute(statement.sql, statement.params)
                statement = plan.send(await cur.fetchall() if cur.description else [])
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]  # StopIteration.value is Any; the plan's T
        except psycopg.errors.IntegrityError as exc:
            raise integrity(exc) from exc
