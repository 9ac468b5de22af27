"""Silences: Alertmanager's, kept in the ``silences`` table.

A silence has matchers on labels (``name``, ``op`` one of ``=``, ``!=``, ``=~``, ``!~``, ``value``; regexes
anchored at both ends, Alertmanager's matcher syntax as alerts/routes.py parses it), a time range and who set it
and why. An alert that every matcher of an active silence matches is *silenced*: it keeps its state and is shown
with the silence's id, and nothing is sent for it while the silence lasts. If it is still firing when the
silence ends, it is sent then. Expiring a silence sets its end to now; it stays listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from alerts.routes import Matcher, parse_matcher

Op = Literal["=", "!=", "=~", "!~"]


class MatcherIn(BaseModel):
    """One matcher, as an object or Alertmanager's text form (``severity="critical"``)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "site", "op": "=", "value": "hamburg"}]}
    )

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    op: Op = "="
    value: str = Field(max_length=1000)


def to_matcher(raw: object) -> Matcher:
    """A matcher from its text form or an object; raises ValueError with the reason."""
    if isinstance(raw, str):
        return parse_matcher(raw)
    given = MatcherIn.model_validate(raw)
    return parse_matcher(str(Matcher(given.name, given.op, given.value)))


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


def from_row(silence_id: int, matchers: Sequence[Mapping[str, str]], starts_at: datetime, ends_at: datetime) -> Silence:
    return Silence(silence_id, tuple(Matcher(m["name"], m["op"], m["value"]) for m in matchers), starts_at, ends_at)


ACTIVE: Final = "select id, matchers, starts_at, ends_at from silences where starts_at <= %(now)s and ends_at > %(now)s"


def matcher_json(matcher: Matcher) -> dict[str, Any]:
    return {"name": matcher.name, "op": matcher.op, "value": matcher.value}


class SilenceIn(BaseModel):
    """A new silence."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "matchers": [{"name": "alertname", "op": "=", "value": "TemperatureExcursion"},
                                 'location=~"cold-room-.*"'],
                    "ends_at": "2026-03-01T18:00:00Z",
                    "created_by": "j.doe",
                    "comment": "defrosting cold rooms 1 to 4",
                }
            ]
        },
    )  # fmt: skip

    matchers: list[MatcherIn | str] = Field(min_length=1, max_length=50)
    starts_at: AwareDatetime | None = Field(default=None, description="Default: now")
    ends_at: AwareDatetime
    created_by: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)

    @field_validator("matchers")
    @classmethod
    def _parse(cls, value: list[MatcherIn | str]) -> list[MatcherIn | str]:
        for item in value:
            to_matcher(item.model_dump() if isinstance(item, MatcherIn) else item)
        return value

    def parsed(self) -> list[Matcher]:
        return [to_matcher(m.model_dump() if isinstance(m, MatcherIn) else m) for m in self.matchers]


class SilenceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "matchers": [{"name": "location", "op": "=~", "value": "cold-room-.*"}],
                    "starts_at": "2026-03-01T14:00:00Z",
                    "ends_at": "2026-03-01T18:00:00Z",
                    "created_by": "j.doe",
                    "comment": "defrosting cold rooms 1 to 4",
                    "created_at": "2026-03-01T13:58:12Z",
                    "status": "active",
                }
            ]
        }
    )

    id: int
    matchers: list[MatcherIn]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    status: Literal["pending", "active", "expired"]
