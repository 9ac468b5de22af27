"""The boards, one module each; `BOARDS` is what export and push publish, in menu order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.boards import cold_chain, devices, inventory, item_tracker, operations

BOARDS: Final[tuple[Callable[[], Dashboard], ...]] = (
    operations.build,
    inventory.build,
    cold_chain.build,
    item_tracker.build,
    devices.build,
)
