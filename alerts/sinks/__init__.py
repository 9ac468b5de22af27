"""Receivers: one module per kind, each rendering a notification and sending it.

``render`` runs when a group's message is made (alerts/groups.py); ``build_sink`` makes the sender the delivery
worker uses. Kinds that take one alert per request (PagerDuty events, Grafana annotations) are rendered one
delivery per alert that changed.
"""

from __future__ import annotations

import httpx

from alerts.routes import (
    GrafanaReceiver,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    TeamsReceiver,
    WebhookReceiver,
)
from alerts.sinks import grafana, pagerduty, slack, teams, webhook
from alerts.sinks.base import (
    Clock,
    JsonObject,
    Message,
    Notification,
    Receipt,
    RetryableSinkError,
    Sink,
    SinkError,
)

__all__ = [
    "Message",
    "Notification",
    "Receipt",
    "RetryableSinkError",
    "Sink",
    "SinkError",
    "build_sink",
    "per_alert",
    "render",
]


def render(receiver: Receiver, notification: Notification) -> JsonObject:
    match receiver:
        case WebhookReceiver():
            return webhook.render(notification, receiver)
        case SlackReceiver():
            return slack.render(notification, receiver)
        case TeamsReceiver():
            return teams.render(notification, receiver)
        case PagerDutyReceiver():
            return pagerduty.render(notification, receiver)
        case GrafanaReceiver():
            return grafana.render(notification, receiver)


def per_alert(receiver: Receiver) -> bool:
    """Whether this kind sends one request per alert rather than one per group."""
    return isinstance(receiver, PagerDutyReceiver | GrafanaReceiver)


def build_sink(receiver: Receiver, client: httpx.AsyncClient, clock: Clock) -> Sink:
    match receiver:
        case WebhookReceiver():
            return webhook.WebhookSink(receiver, client, clock)
        case SlackReceiver():
            return slack.SlackSink(receiver, client, clock)
        case TeamsReceiver():
            return teams.TeamsSink(receiver, client, clock)
        case PagerDutyReceiver():
            return pagerduty.PagerDutySink(receiver, client, clock)
        case GrafanaReceiver():
            return grafana.GrafanaSink(receiver, clock)
