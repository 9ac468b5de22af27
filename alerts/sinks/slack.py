"""Slack incoming webhooks: one message per group, Block Kit blocks with a plain-text fallback.

Payload and limits from Slack's documentation (https://api.slack.com/messaging/webhooks,
https://api.slack.com/reference/block-kit/blocks): ``text`` is the notification fallback when ``blocks`` are
given; a header's plain_text holds at most 150 characters, a section's mrkdwn at most 3,000, a message at most
50 blocks. Slack answers 200 ``ok``; 400/403/404/410 mean the payload or the webhook is wrong (not retried),
429 carries Retry-After (incoming webhooks take about one message per second per channel).
"""

from __future__ import annotations

from typing import Final

import httpx

from alerts.model import Alert
from alerts.routes import SlackReceiver
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

_MAX_ALERT_BLOCKS: Final = 20
_HEADER_CHARS: Final = 150
_SECTION_CHARS: Final = 3000


def title(notification: Notification) -> str:
    """Alertmanager's default title: [FIRING:n] or [RESOLVED] and the group's label values."""
    firing = sum(alert_status(alert) == "firing" for alert in notification.alerts)
    status = f"FIRING:{firing}" if firing else "RESOLVED"
    names = " ".join(notification.group_labels.values()) or notification.alerts[0].name
    return f"[{status}] {names}"


def render(notification: Notification, receiver: SlackReceiver) -> JsonObject:
    heading = title(notification)
    blocks: list[JsonObject] = [{"type": "header", "text": {"type": "plain_text", "text": heading[:_HEADER_CHARS]}}]
    shown = notification.alerts[:_MAX_ALERT_BLOCKS]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": _section(alert)}} for alert in shown]
    hidden = len(notification.alerts) - len(shown)
    footer = [f"{hidden} more alert(s) in this group"] if hidden else []
    if notification.external_url:
        footer.append(f"<{notification.external_url}|Open stocktrace>")
    if footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(footer)}]})
    return {"text": heading, "blocks": blocks}


def _section(alert: Alert) -> str:
    icon = ":red_circle:" if alert_status(alert) == "firing" else ":large_green_circle:"
    lines = [f"{icon} *{_escape(summary_of(alert))}*"]
    description = alert.annotations.get("description")
    if description:
        lines.append(_escape(description))
    details = [f"severity `{_escape(alert.labels.get('severity', '-'))}`", f"since {go_time(alert.starts_at)}"]
    if alert.ends_at is not None:
        details.append(f"until {go_time(alert.ends_at)}")
    lines.append(" · ".join(details))
    if alert.generator_url:
        lines.append(f"<{alert.generator_url}|Source>")
    return "\n".join(lines)[:_SECTION_CHARS]


def _escape(text: str) -> str:
    # Slack mrkdwn: &, < and > are control characters and must be escaped (api.slack.com "Escaping text").
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSink(SharedClientSink):
    def __init__(self, config: SlackReceiver, client: httpx.AsyncClient, clock: Clock) -> None:
        self._config, self._client, self._clock = config, client, clock

    async def send(self, message: Message) -> Receipt:
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "stocktrace"}
        response = await post(self._client, self._config.url, message.body.encode(), headers, self._config.timeout_s)
        check_response(response, self._clock())
        return Receipt(response.status_code)
