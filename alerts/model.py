"""What an alert is, shared by the evaluator (which decides) and delivery (which tells people).

The shape follows Prometheus Alertmanager's, so that its webhook format (version 4) maps one to one: an alert is
identified by its labels (the fingerprint is a hash of them), carries annotations for people, and is firing from
``starts_at`` until ``ends_at``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class State(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


def fingerprint(labels: Mapping[str, str]) -> str:
    """One alert per rule and subject: a stable hash of the sorted labels (which include rule and subject)."""
    canonical = json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert as it is now. ``labels`` always include ``alertname`` (the rule), ``severity`` and ``subject``."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: State
    starts_at: datetime
    ends_at: datetime | None = None
    updated_at: datetime | None = None
    generator_url: str = ""
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint(self.labels))

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A transition worth telling someone about (pending → firing, firing → resolved, a repeat)."""

    alert: Alert
    previous: State | None
    reason: str = ""
