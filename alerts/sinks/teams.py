"""Microsoft Teams through a Workflows (Power Automate) webhook: one Adaptive Card per group.

Office 365 connectors (MessageCard) are retired; a Workflows flow started by "When a Teams webhook request is
received" posts the card in the request's ``attachments`` to a channel or chat. The request is Teams' message
with an Adaptive Card attachment (learn.microsoft.com/connectors/teams "Request body schema"; Alertmanager's
notify/msteamsv2 sends the same shape)::

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
      "contentUrl": null, "content": {"$schema": ..., "type": "AdaptiveCard", "version": "1.4", "body": [...]}}]}

Workflows answers 202 Accepted once the flow run is queued.
"""

from __future__ import annotations

from typing import Final

import httpx

from alerts.model import Alert
from alerts.routes import TeamsReceiver
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
    summary_of,
)
from alerts.sinks.slack import title

CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"
_MAX_ALERTS: Final = 20


def render(notification: Notification, receiver: TeamsReceiver) -> JsonObject:
    firing = notification.status == "firing"
    body: list[JsonObject] = [
        {
            "type": "TextBlock",
            "text": title(notification),
            "weight": "Bolder",
            "size": "Medium",
            "style": "heading",
            "wrap": True,
            # Adaptive Card colours are semantic: Attention (red) while firing, Good (green) once resolved.
            "color": "Attention" if firing else "Good",
        }
    ]
    shown = notification.alerts[:_MAX_ALERTS]
    for alert in shown:
        body += _alert(alert)
    hidden = len(notification.alerts) - len(shown)
    if hidden:
        body.append({"type": "TextBlock", "text": f"{hidden} more alert(s) in this group", "isSubtle": True})
    card: JsonObject = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "Full"},
    }
    if notification.external_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open stocktrace", "url": notification.external_url}]
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


def _alert(alert: Alert) -> list[JsonObject]:
    facts = [
        {"title": "Status", "value": alert_status(alert)},
        {"title": "Severity", "value": alert.labels.get("severity", "-")},
        {"title": "Since", "value": go_time(alert.starts_at)},
    ]
    if alert.ends_at is not None:
        facts.append({"title": "Until", "value": go_time(alert.ends_at)})
    blocks: list[JsonObject] = [
        {"type": "TextBlock", "text": summary_of(alert), "weight": "Bolder", "wrap": True, "separator": True}
    ]
    description = alert.annotations.get("description")
    if description:
        blocks.append({"type": "TextBlock", "text": description, "wrap": True})
    blocks.append({"type": "FactSet", "facts": facts})
    return blocks


class TeamsSink(SharedClientSink):
    def __init__(self, config: TeamsReceiver, client: httpx.AsyncClient, clock: Clock) -> None:
        self._config, self._client, self._clock = config, client, clock

    async def send(self, message: Message) -> Receipt:
        headers = {"Content-Type": "application/json", "User-Agent": "stocktrace"}
        response = await post(self._client, self._config.url, message.body.encode(), headers, self._config.timeout_s)
        check_response(response, self._clock())
        return Receipt(response.status_code)
