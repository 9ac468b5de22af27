"""Database access for inventory and conditions, written once as *plans*.

A plan is a generator that yields SQL statements and receives each one's rows (psycopg's own sans-I/O style, as
the device registry does): `run` carries it out on a sync connection (scripts, tests, the alert evaluator),
`arun` on an async one (the API). The errors here are the refusals a caller can act on; the API maps them to
404, 409 and 422.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, TypeAlias, TypeVar

import psycopg
from psycopg.rows import dict_row

T = TypeVar("T")
Row: TypeAlias = dict[str, Any]


class InventoryError(Exception):
    """A request the inventory cannot carry out; `message` says why, `field` which input was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFoundError(InventoryError):
    pass


class ConflictError(InventoryError):
    pass


class InvalidError(InventoryError):
    pass


@dataclass(frozen=True, slots=True)
class Statement:
    sql: LiteralString
    params: Sequence[Any] | Mapping[str, Any] = ()


Plan: TypeAlias = Generator[Statement, list[Row], T]
"""A database operation written once: yields statements, receives each one's rows, returns its result."""


def run(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
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
            raise _integrity_error(exc) from exc


async def arun(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
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
            raise _integrity_error(exc) from exc


def _integrity_error(exc: psycopg.errors.IntegrityError) -> InventoryError:
    # Plans check references first and name the wrong field; this is the net for a concurrent writer.
    message = exc.diag.message_primary or str(exc)
    if isinstance(exc, psycopg.errors.CheckViolation):
        return InvalidError(message)
    return ConflictError(message + (f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""))
