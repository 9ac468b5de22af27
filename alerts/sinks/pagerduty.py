"""PagerDuty Events API v2: one event per alert, a trigger while it fires and a resolve when it ends.

Shapes from PagerDuty's Events API v2 reference (github.com/PagerDuty/api-schema, reference/events-v2): POST
https://events.pagerduty.com/v2/enqueue with ``routing_key``, ``event_action`` (trigger | resolve),
``dedup_key`` and, for a trigger, ``payload`` {summary (at most 1,024 characters), source, severity (critical |
error | warning | info), timestamp, class, custom_details}. The dedup_key is the alert's fingerprint, so a
trigger sent twice is one PagerDuty alert, and the resolve closes the alert its trigger opened.

"202 Accepted: no retry. 400 Bad Request: no retry. 429 Too many API calls: retry after some time. 5xx and
network errors: retry after some time." (the reference's "API Response Codes & Retry Logic").

The routing key is a secret: it is added when sending, never stored in the outbox.
"""

from __future__ import annotations

import json
from typing import Final

import httpx

from alerts.model import Alert, State
from alerts.routes import PagerDutyReceiver
from alerts.sinks.base import (
    Clock,
    JsonObject,
    Message,
    Notification,
    Receipt,
    SharedClientSink,
    check_response,
    json_body,
    post,
    summary_of,
)

_SUMMARY_CHARS: Final = 1024
_SEVERITIES: Final = frozenset({"critical", "error", "warning", "info"})


def render(notification: Notification, receiver: PagerDutyReceiver) -> JsonObject:
    (alert,) = notification.alerts
    if alert.state is not State.FIRING:
        return {"event_action": "resolve", "dedup_key": alert.fingerprint}
    event: JsonObject = {
        "event_action": "trigger",
        "dedup_key": alert.fingerprint,
        "payload": _payload(alert, receiver),
        "client": "stocktrace",
    }
    if notification.external_url:
        event["client_url"] = notification.external_url
    if alert.generator_url:
        event["links"] = [{"href": alert.generator_url, "text": "Source"}]
    return event


def _payload(alert: Alert, receiver: PagerDutyReceiver) -> JsonObject:
    severity = alert.labels.get("severity", "")
    return {
        "summary": summary_of(alert)[:_SUMMARY_CHARS],
        "source": receiver.source or alert.labels.get("subject") or "stocktrace",
        "severity": severity if severity in _SEVERITIES else "warning",
        "timestamp": alert.starts_at.isoformat(),
        "class": alert.name,
        "custom_details": {"labels": dict(alert.labels), "annotations": dict(alert.annotations)},
    }


class PagerDutySink(SharedClientSink):
    def __init__(self, config: PagerDutyReceiver, client: httpx.AsyncClient, clock: Clock) -> None:
        self._config, self._client, self._clock = config, client, clock

    async def send(self, message: Message) -> Receipt:
        # routing_key first, as PagerDuty's examples put it; the rest as rendered.
        event = {"routing_key": self._config.routing_key, **json.loads(message.body)}
        headers = {"Content-Type": "application/json", "User-Agent": "stocktrace"}
        body = json_body(event).encode()
        response = await post(self._client, self._config.url, body, headers, self._config.timeout_s)
        check_response(response, self._clock())
        return Receipt(response.status_code)
