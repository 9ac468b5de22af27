"""Command-line options every stage's commands share. Here because devices is upstream of every stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def database_option(function: F) -> F:
    """``--database-url``, from STOCKTRACE_DATABASE_URL like the service's own setting."""
    return click.option(
        "--database-url",
        envvar="STOCKTRACE_DATABASE_URL",
        default="postgresql:///stocktrace",
        show_default=True,
        help="libpq URL of the database [env: STOCKTRACE_DATABASE_URL]",
    )(function)
