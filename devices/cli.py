"""The devices stage's commands; the ``stocktrace`` CLI adds them (and BENCHMARKS under ``stocktrace bench``)."""

from __future__ import annotations

import click

from devices.decode_cli import decode, decode_benchmark
from devices.epc_cli import epc
from devices.registry_cli import COMMANDS as REGISTRY_COMMANDS

COMMANDS: list[click.Command] = [
    epc,
    decode,
    *REGISTRY_COMMANDS,
]
BENCHMARKS: list[click.Command] = [
    decode_benchmark,
]
