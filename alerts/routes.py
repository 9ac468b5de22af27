"""Where alert notifications go: receivers and the routes that choose them, read from a YAML file.

The file is named by ``STOCKTRACE_ALERT_ROUTES_FILE`` (alerts/routes.example.yaml shows every field). Routing
follows Alertmanager's route tree, flattened: routes are tried in order, the first whose matchers all match an
alert decides its receivers, and a route with ``continue: true`` lets the routes after it match as well. An
alert that no route takes goes to ``default_receivers`` (a route with ``continue: true`` that matched counts as
taking it, as in Alertmanager).

Matchers use Alertmanager's syntax (https://prometheus.io/docs/alerting/latest/configuration/#matcher):
``name="value"``, ``name!="value"``, ``name=~"regex"``, ``name!~"regex"``; regexes are anchored at both ends.

Secrets stay out of the file: any string may be ``${VARIABLE}``, read from the environment when the delivery
worker starts. Routing (done by the evaluator inside its transaction) never needs them, so a missing secret
stops the worker at start with the path of the field, and never stops an alert from being recorded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROUTES_FILE_ENV: Final = "STOCKTRACE_ALERT_ROUTES_FILE"

_SECRET = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Receiver names appear in URLs, logs and Alertmanager's "receiver" field (which it regex-quotes); keeping them
# to these characters means the quoting never changes them.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RoutesError(Exception):
    """The routes file is wrong; the message names the file, each faulty field's path, and what is wrong."""


def parse_duration(value: object) -> timedelta:
    """``90`` (seconds), ``"1h30m"``, ``"500ms"``, ``"7d"``: Prometheus' duration notation."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic reports only the former as a validation error of the field.
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 1h30m, 7d")  # noqa: TRY004
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 1h30m, 7d")
    return timedelta(seconds=sum(float(number) * _UNIT_S[unit] for number, unit in parts))


Duration = Annotated[timedelta, Field(json_schema_extra={"examples": ["30s", "5m", "24h"]})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Receiver(_Strict):
    name: str = Field(pattern=_NAME)
    timeout: Duration = timedelta(seconds=10)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)

    @property
    def timeout_s(self) -> float:
        return self.timeout.total_seconds()


class WebhookReceiver(_Receiver):
    """Any HTTP endpoint; the body is Alertmanager's webhook format, version 4."""

    type: Literal["webhook"]
    url: str
    hmac_key: str | None = Field(default=None, description="Signs each body: X-Stocktrace-Signature (sha256=<hex>)")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request (e.g. Authorization)")
    max_alerts: int = Field(default=0, ge=0, description="Alerts per message (the rest: truncatedAlerts); 0 = all")


class SlackReceiver(_Receiver):
    """A Slack incoming webhook (https://api.slack.com/messaging/webhooks): one message per group."""

    type: Literal["slack"]
    url: str


class TeamsReceiver(_Receiver):
    """A Microsoft Teams Workflows ("When a Teams webhook request is received") URL: an Adaptive Card per group."""

    type: Literal["teams"]
    url: str


class PagerDutyReceiver(_Receiver):
    """PagerDuty Events API v2: a trigger per firing alert and a resolve with the same dedup_key."""

    type: Literal["pagerduty"]
    routing_key: str
    url: str = "https://events.pagerduty.com/v2/enqueue"
    source: str | None = Field(default=None, description="payload.source; default: the alert's subject label")


class GrafanaReceiver(_Receiver):
    """Grafana annotations: a region from startsAt, closed at endsAt when the alert resolves."""

    type: Literal["grafana"]
    url: str
    token: str | None = Field(default=None, description="Service account token (Bearer)")
    dashboard_uid: str | None = None
    panel_id: int | None = None
    tags: list[str] = Field(default_factory=list, description="Added to alertname:<name> and severity:<severity>")


Receiver = Annotated[
    WebhookReceiver | SlackReceiver | TeamsReceiver | PagerDutyReceiver | GrafanaReceiver,
    Field(discriminator="type"),
]


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        # Alertmanager's labels.Matcher.String(): name, operator, Go-quoted value.
        return f"{self.name}{self.op}{json.dumps(self.value, ensure_ascii=False)}"

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


def parse_matcher(text: str) -> Matcher:
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f'{text!r} is not a matcher such as severity="critical" or alertname=~"Cold.*"')
    name, op, raw = found.groups()
    value = raw
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{text!r}: the quoted value is not closed or has a bad escape") from None
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{text!r}: bad regular expression: {exc}") from None
    return Matcher(name, op, value)


class _Timing(_Strict):
    """Alertmanager's grouping timers; on a route, None takes the file's top-level value."""

    @field_validator("group_wait", "group_interval", "repeat_interval", mode="before", check_fields=False)
    @classmethod
    def _timing(cls, value: object) -> timedelta | None:
        return None if value is None else parse_duration(value)


class Route(_Timing):
    matchers: tuple[Matcher, ...] = ()
    receivers: list[str] = Field(min_length=1)
    group_by: list[str] | None = Field(default=None, description="Labels that split messages; ['...'] = all")
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = Field(default=False, alias="continue")

    @field_validator("matchers", mode="before")
    @classmethod
    def _parse_matchers(cls, value: object) -> object:
        if isinstance(value, list):
            return tuple(parse_matcher(item) if isinstance(item, str) else item for item in value)
        return value

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)

    @property
    def key(self) -> str:
        # Alertmanager's Route.Key() for a child of the root route: "{}/{matchers}".
        return "{}/{" + ",".join(str(matcher) for matcher in self.matchers) + "}"


class DeliveryPolicy(_Strict):
    """How hard the delivery worker tries before a delivery is marked failed."""

    max_attempts: int = Field(default=0, ge=0, description="Attempts before giving up; 0 = no limit (max_age decides)")
    max_age: Duration = timedelta(hours=24)
    backoff_initial: Duration = timedelta(seconds=1)
    backoff_max: Duration = timedelta(minutes=5)
    retention: Duration = Field(default=timedelta(days=30), description="Sent deliveries older than this are deleted")

    @field_validator("max_age", "backoff_initial", "backoff_max", "retention", mode="before")
    @classmethod
    def _durations(cls, value: object) -> timedelta:
        return parse_duration(value)


class RoutesConfig(_Timing):
    external_url: str = Field(default="", description="Where people open stocktrace; Alertmanager's externalURL")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])
    # Alertmanager waits 30s and 5m by default; stocktrace sends at once unless a route asks to wait (README,
    # "Alert routes"): alerts that fire in one evaluation already go out together, and a breach should reach
    # people within a second of the reading that shows it.
    group_wait: Duration = Field(default=timedelta(0), description="Wait before a new group's first message")
    group_interval: Duration = Field(default=timedelta(0), description="Least time between a group's messages")
    repeat_interval: Duration | None = Field(
        default=None, description="Tell a still-firing group again after this; unset: the rules' repeat_interval"
    )
    delivery: DeliveryPolicy = DeliveryPolicy()
    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    default_receivers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_names(self) -> RoutesConfig:
        names = [receiver.name for receiver in self.receivers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"receiver names must be unique; repeated: {', '.join(duplicates)}")
        known = set(names)
        problems = [
            f"routes.{index}.receivers: unknown receiver {name!r}"
            for index, route in enumerate(self.routes)
            for name in route.receivers
            if name not in known
        ]
        problems += [
            f"default_receivers: unknown receiver {name!r}" for name in self.default_receivers if name not in known
        ]
        if problems:
            raise ValueError("; ".join(problems) + f" (receivers: {', '.join(sorted(known)) or 'none'})")
        return self

    def receiver(self, name: str) -> Receiver | None:
        return next((receiver for receiver in self.receivers if receiver.name == name), None)


@dataclass(frozen=True, slots=True)
class Grouping:
    """How the alerts of one route are grouped and paced (Alertmanager's route options)."""

    group_by: tuple[str, ...]
    group_wait: timedelta = timedelta(0)
    group_interval: timedelta = timedelta(0)
    repeat_interval: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """One receiver an alert goes to, and the route that chose it (its key, grouping and timers)."""

    receiver: str
    route_key: str
    grouping: Grouping

    @property
    def group_by(self) -> tuple[str, ...]:
        return self.grouping.group_by


def grouping(config: RoutesConfig, route: Route | None) -> Grouping:
    """A route's grouping, each option it leaves out taken from the top level of the file."""

    def pick(name: str) -> Any:
        own = getattr(route, name) if route is not None else None
        return own if own is not None else getattr(config, name)

    return Grouping(tuple(pick("group_by")), pick("group_wait"), pick("group_interval"), pick("repeat_interval"))


def destinations(config: RoutesConfig, labels: Mapping[str, str]) -> list[Destination]:
    """The receivers of an alert with these labels, in route order, each receiver once."""
    found: dict[str, Destination] = {}
    for route in config.routes:
        if not route.matches(labels):
            continue
        for name in route.receivers:
            found.setdefault(name, Destination(name, route.key, grouping(config, route)))
        if not route.continue_:
            break
    if not found:
        for name in config.default_receivers:
            found.setdefault(name, Destination(name, "{}", grouping(config, None)))
    return list(found.values())


def group_labels(labels: Mapping[str, str], group_by: Sequence[str]) -> dict[str, str]:
    """The labels that make an alert's group; ``...`` groups by every label, as in Alertmanager."""
    if "..." in group_by:
        return dict(sorted(labels.items()))
    return {name: labels[name] for name in sorted(group_by) if name in labels}


def load_routes(path: Path, *, environ: Mapping[str, str] | None = None) -> RoutesConfig:
    """Read and validate a routes file. With ``environ``, ``${VAR}`` references are replaced from it (the
    delivery worker); without, they are left as written (routing does not need secrets)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutesError(f"cannot read the alert routes file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RoutesError(f"{path} is not valid YAML: {exc}") from None
    if document is None:
        document = {}
    if environ is not None:
        document = _expand(document, environ, (), path)
    try:
        return RoutesConfig.model_validate(document)
    except ValidationError as exc:
        raise RoutesError(f"{path} is not a valid alert routes file:\n{_describe(exc)}") from None


def routes_file(environ: Mapping[str, str] = os.environ) -> Path | None:
    value = environ.get(ROUTES_FILE_ENV, "").strip()
    return Path(value) if value else None


_cache: dict[Path, tuple[float, RoutesConfig]] = {}


def current_routes() -> RoutesConfig | None:
    """The routes in ``$STOCKTRACE_ALERT_ROUTES_FILE`` (secrets unexpanded), re-read when the file changes;
    None when the variable is not set."""
    path = routes_file()
    if path is None:
        return None
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise RoutesError(f"cannot read the alert routes file {path}: {exc.strerror or exc}") from None
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    config = load_routes(path)
    _cache[path] = (mtime, config)
    return config


def _expand(node: Any, environ: Mapping[str, str], where: tuple[str | int, ...], path: Path) -> Any:
    if isinstance(node, str):
        return _SECRET.sub(lambda found: _variable(found.group(1), environ, where, path), node)
    if isinstance(node, dict):
        return {key: _expand(value, environ, (*where, key), path) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(value, environ, (*where, index), path) for index, value in enumerate(node)]
    return node


def _variable(name: str, environ: Mapping[str, str], where: Iterable[str | int], path: Path) -> str:
    if name not in environ:
        location = ".".join(str(part) for part in where)
        raise RoutesError(f"{path}: {location} refers to ${{{name}}}, which is not set in the environment")
    return environ[name]


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {location}: {error['msg']}")
    return "\n".join(lines)
