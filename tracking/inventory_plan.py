"""Database access for inventory and conditions, written once as *plans*.

Plans and their drivers are `devices.plans`, shared with the device registry: `run` carries a plan out on a
sync connection (scripts, tests, the alert evaluator), `arun` on an async one (the API). The errors here are
the refusals a caller can act on; the API maps them to 404, 409 and 422.
"""

from __future__ import annotations

from typing import Any

import psycopg

from devices import plans
from devices.plans import Plan as Plan
from devices.plans import Row as Row
from devices.plans import Statement as Statement
from devices.plans import T


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


def run(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Carry out a plan on a sync connection; the caller owns the transaction."""
    return plans.run(conn, plan, _integrity_error)


async def arun(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Carry out a plan on an async connection; the caller owns the transaction."""
    return await plans.arun(conn, plan, _integrity_error)


def _integrity_error(exc: psycopg.errors.IntegrityError) -> InventoryError:
    # Plans check references first and name the wrong field; this is the net for a concurrent writer.
    message = exc.diag.message_primary or str(exc)
    if isinstance(exc, psycopg.errors.CheckViolation):
        return InvalidError(message)
    return ConflictError(message + (f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""))
