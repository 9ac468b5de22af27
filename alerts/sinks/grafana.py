"""Grafana annotations, through grafana-client: an alert becomes a region on the dashboards' time axis.

When an alert fires, an annotation is created at startsAt (Grafana's HTTP API, POST /api/annotations, times in
epoch milliseconds), tagged ``alertname:<rule>`` and ``severity:<severity>`` so dashboards can show one kind
of alert through an annotation query by tags. Its id is kept (in delivery_references) so that, when the alert
resolves, the same annotation is updated (PUT /api/annotations/:id) with timeEnd = endsAt and becomes a region.
A resolve whose firing annotation was never created (that delivery finally failed) creates the whole region.

Grafana has no idempotency key: if a worker dies after Grafana created an annotation but before its id was
committed, the retry creates a second annotation for the same firing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from grafana_client.api import AsyncGrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaServerError, GrafanaTimeoutError

from alerts.model import State
from alerts.routes import GrafanaReceiver
from alerts.sinks.base import (
    Clock,
    JsonObject,
    Message,
    Notification,
    Receipt,
    RetryableSinkError,
    SinkError,
    summary_of,
)

T = TypeVar("T")


def render(notification: Notification, receiver: GrafanaReceiver) -> JsonObject:
    (alert,) = notification.alerts
    resolved = alert.state is not State.FIRING
    return {
        "fingerprint": alert.fingerprint,
        "status": "resolved" if resolved else "firing",
        "time": _epoch_ms(alert.starts_at),
        "timeEnd": _epoch_ms(alert.ends_at or alert.updated_at or alert.starts_at) if resolved else None,
        "tags": [f"alertname:{alert.name}", f"severity:{alert.labels.get('severity', 'none')}"],
        "text": _text(summary_of(alert), alert.annotations.get("description", ""), resolved),
    }


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _text(summary: str, description: str, resolved: bool) -> str:
    status = "RESOLVED" if resolved else "FIRING"
    return f"[{status}] {summary}" + (f"\n{description}" if description else "")


class GrafanaSink:
    def __init__(self, config: GrafanaReceiver, clock: Clock) -> None:
        self._config, self._clock = config, clock
        self._api = AsyncGrafanaApi.from_url(config.url, credential=config.token, timeout=config.timeout_s)

    async def send(self, message: Message) -> Receipt:
        annotation = message.payload()
        fingerprint: str = annotation["fingerprint"]
        tags = [*annotation["tags"], *self._config.tags]
        known = message.references.get(fingerprint)
        if known is not None and known.get("time") == annotation["time"]:
            await _call(
                lambda: self._api.annotations.update_annotation(
                    known["annotation_id"],
                    time_from=annotation["time"],
                    time_to=annotation["timeEnd"],
                    tags=tags,
                    text=annotation["text"],
                )
            )
            return Receipt(200)
        created = await _call(
            lambda: self._api.annotations.add_annotation(
                dashboard_uid=self._config.dashboard_uid,
                panel_id=self._config.panel_id,
                time_from=annotation["time"],
                time_to=annotation["timeEnd"],
                tags=tags,
                text=annotation["text"],
            )
        )
        reference = {"annotation_id": created["id"], "time": annotation["time"]}
        return Receipt(200, {fingerprint: reference})

    async def aclose(self) -> None:
        await self._api.client.s.close()


async def _call(request: Callable[[], Awaitable[T]]) -> T:
    """Run a grafana-client request, turning its errors into the sink errors that say whether to retry."""
    try:
        return await request()
    except GrafanaTimeoutError:
        raise RetryableSinkError("Grafana did not answer in time") from None
    except GrafanaServerError as exc:
        raise RetryableSinkError(str(exc)[:300], status_code=exc.status_code) from None
    except GrafanaClientError as exc:
        if exc.status_code in (408, 429):
            raise RetryableSinkError(str(exc)[:300], status_code=exc.status_code) from None
        raise SinkError(str(exc)[:300], status_code=exc.status_code) from None
    # grafana-client lets its HTTP library's connection errors through; they are OSErrors.
    except (GrafanaException, OSError) as exc:
        raise RetryableSinkError(f"cannot reach Grafana: {type(exc).__name__}: {exc}"[:300]) from None
