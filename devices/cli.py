"""The devices stage's commands; the ``stocktrace`` CLI adds them (and BENCHMARKS under ``stocktrace bench``)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
BENCHMARKS: list[click.Command] = []
