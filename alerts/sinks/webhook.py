"""Generic webhook: Alertmanager's webhook body, version 4, so every existing Alertmanager receiver works.

The body is the one Alertmanager's notify/webhook/webhook.go sends (its Message: template.Data plus version,
groupKey, truncatedAlerts), documented at https://prometheus.io/docs/alerting/latest/configuration/#webhook_config.
``alerts`` holds the whole group (alerts/groups.py): every alert of it that fires, and those resolved since
the group's last message, in label order as Alertmanager sorts them.

Every request carries:

- ``Idempotency-Key``: the same on every attempt of one delivery. Delivery is at least once: a worker that dies
  after the receiver answered but before the outcome was committed sends the delivery again, with this key.
- ``X-Stocktrace-Sequence``: this receiver's delivery number, 1, 2, 3 ... in the order they are sent.
- with ``hmac_key`` set, ``X-Stocktrace-Timestamp`` (Unix seconds of this attempt) and
  ``X-Stocktrace-Signature: sha256=<hex>``, the HMAC-SHA256 under the key of ``<timestamp>.<body>``.

Verifying on the receiving side (the timestamp is inside the signed string, so a captured request cannot be
replayed later with a new timestamp)::

    expected = hmac.new(key, timestamp.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(f"sha256={expected}", signature_header) and abs(time.time() - int(timestamp)) < 300

Use the raw body bytes as received, before any JSON parsing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

import httpx

from alerts.model import Alert
from alerts.routes import WebhookReceiver
from alerts.sinks.base import (
    Clock,
    JsonObject,
    Message,
    Notification,
    Receipt,
    SharedClientSink,
    alert_status,
    check_response,
    go_time,
    post,
)

SIGNATURE_HEADER: Final = "X-Stocktrace-Signature"
TIMESTAMP_HEADER: Final = "X-Stocktrace-Timestamp"
SEQUENCE_HEADER: Final = "X-Stocktrace-Sequence"


def render(notification: Notification, receiver: WebhookReceiver) -> JsonObject:
    max_alerts = receiver.max_alerts
    alerts = list(notification.alerts)
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        alerts, truncated = alerts[:max_alerts], len(alerts) - max_alerts
    # Common labels and annotations are computed over every alert of the group, truncated or not, as
    # Alertmanager computes them before truncating.
    return {
        "receiver": notification.receiver,
        "status": notification.status,
        "alerts": [_alert(alert) for alert in alerts],
        "groupLabels": dict(sorted(notification.group_labels.items())),
        "commonLabels": _common([alert.labels for alert in notification.alerts]),
        "commonAnnotations": _common([alert.annotations for alert in notification.alerts]),
        "externalURL": notification.external_url,
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": truncated,
    }


def _alert(alert: Alert) -> JsonObject:
    return {
        "status": alert_status(alert),
        "labels": dict(sorted(alert.labels.items())),
        "annotations": dict(sorted(alert.annotations.items())),
        "startsAt": go_time(alert.starts_at),
        "endsAt": go_time(alert.ends_at),
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    common = dict(maps[0])
    for other in maps[1:]:
        common = {key: value for key, value in common.items() if other.get(key) == value}
    return dict(sorted(common.items()))


def signature(key: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSink(SharedClientSink):
    def __init__(self, config: WebhookReceiver, client: httpx.AsyncClient, clock: Clock) -> None:
        self._config, self._client, self._clock = config, client, clock

    async def send(self, message: Message) -> Receipt:
        body = message.body.encode()
        headers = {
            **self._config.headers,
            "Content-Type": "application/json",
            "User-Agent": "stocktrace",
            "Idempotency-Key": message.idempotency_key,
            SEQUENCE_HEADER: str(message.seq),
        }
        if self._config.hmac_key:
            timestamp = str(int(self._clock().timestamp()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self._config.hmac_key, timestamp, body)
        response = await post(self._client, self._config.url, body, headers, self._config.timeout_s)
        check_response(response, self._clock())
        return Receipt(response.status_code)
