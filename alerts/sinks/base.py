"""What every receiver shares: the notification it renders, the message it sends, and how a send fails.

Rendering happens when an alert change is enqueued (inside the evaluator's transaction), so the outbox holds
exactly the bytes that will be sent and a resend is byte-identical. Sending happens in the delivery worker,
which adds what must not sit in the database (URLs with tokens, routing keys, signatures).

A sink raises ``RetryableSinkError`` for timeouts, network errors, 5xx, 408 and 429 responses, and
``SinkError`` for other 4xx responses: the request itself is wrong, and sending it again will not help.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import httpx

from alerts.model import Alert, State

Clock = Callable[[], datetime]
JsonObject = dict[str, Any]

# The longest Retry-After we obey; a receiver asking for more is retried at this interval instead.
MAX_RETRY_AFTER_S: Final = 3600.0
_GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"


class SinkError(Exception):
    """The receiver refused the message for good (a 4xx response): retrying the same request will not help."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RetryableSinkError(SinkError):
    """The receiver could not take the message now (timeout, network, 5xx, 429); try again later."""

    def __init__(self, message: str, *, status_code: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Notification:
    """Alerts that changed together, for one receiver and one group (Alertmanager's notification)."""

    receiver: str
    group_key: str
    group_labels: Mapping[str, str]
    alerts: tuple[Alert, ...]
    external_url: str = ""

    @property
    def status(self) -> str:
        """``firing`` if any alert fires, else ``resolved`` (Alertmanager's types.Alerts.Status)."""
        return "firing" if any(alert.state is State.FIRING for alert in self.alerts) else "resolved"


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery as the worker hands it to a sink."""

    delivery_id: int
    receiver: str
    seq: int
    idempotency_key: str
    body: str  # the rendered payload, JSON text, exactly as enqueued
    references: Mapping[str, JsonObject] = field(default_factory=dict)

    def payload(self) -> JsonObject:
        loaded: JsonObject = json.loads(self.body)
        return loaded


@dataclass(frozen=True, slots=True)
class Receipt:
    """A successful send: the status code, and what the receiver calls the alerts (kept for later sends)."""

    status_code: int | None
    references: Mapping[str, JsonObject] = field(default_factory=dict)


class Sink(Protocol):
    async def send(self, message: Message) -> Receipt: ...

    async def aclose(self) -> None: ...


class SharedClientSink:
    """A sink sending through the worker's shared HTTP client, which the worker closes."""

    async def aclose(self) -> None:
        return None


def alert_status(alert: Alert) -> str:
    return "firing" if alert.state is State.FIRING else "resolved"


def go_time(moment: datetime | None) -> str:
    """A time as Go's encoding/json writes time.Time (RFC 3339 with trailing zeros of the fraction dropped), as
    Alertmanager puts it in webhooks; no time is Go's zero time, as Alertmanager sends for a firing alert."""
    if moment is None:
        return _GO_ZERO_TIME
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def summary_of(alert: Alert) -> str:
    """One line for people: the summary annotation, else the rule and its subject."""
    summary = alert.annotations.get("summary")
    if summary:
        return summary
    subject = alert.labels.get("subject")
    return f"{alert.name} on {subject}" if subject else alert.name


def retry_after_s(response: httpx.Response, now: datetime) -> float | None:
    """Retry-After in seconds, as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent or bad."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(max((moment - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def check_response(response: httpx.Response, now: datetime) -> None:
    """Raise the error a non-2xx response means; the first 200 characters of its body say why."""
    code = response.status_code
    if 200 <= code < 300:
        return
    reason = f"HTTP {code}: {response.text[:200]}".rstrip(": ")
    if code in (408, 429) or code >= 500:
        raise RetryableSinkError(reason, status_code=code, retry_after_s=retry_after_s(response, now))
    raise SinkError(reason, status_code=code)


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
) -> httpx.Response:
    """POST a body; timeouts and network errors become RetryableSinkError. The URL is never put in the error
    (Slack, Teams and Workflows URLs carry their secret in the path)."""
    try:
        return await client.post(url, content=body, headers=dict(headers), timeout=timeout_s)
    except httpx.TimeoutException:
        raise RetryableSinkError(f"no response within {timeout_s:g} s") from None
    except httpx.TransportError as exc:
        raise RetryableSinkError(f"cannot reach the receiver: {type(exc).__name__}: {exc}"[:300]) from None


def json_body(payload: Any) -> str:
    """Compact JSON text, UTF-8 kept as is, as stored in the outbox and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
