"""Each receiver kind, end to end: enqueue in a transaction, the worker sends, a local HTTP receiver records.

The expected bodies are written out field by field from the receivers' own documentation: Alertmanager's
webhook format version 4 (notify/webhook/webhook.go, template/template.go), Slack incoming webhooks, Teams
Workflows with an Adaptive Card, PagerDuty Events API v2, Grafana's annotations HTTP API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from alerts.model import State
from tests.alerts.receiver import (
    T0,
    Answer,
    alert,
    clean_outbox,
    enqueue_changes,
    fired,
    resolved,
    routes,
    running_receiver,
    running_worker,
    wait_for,
)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    yield from clean_outbox(dsn)


KEY = "s3cret-key"


def test_webhook_body_is_alertmanager_v4_and_signed(dsn: str, db: psycopg.Connection) -> None:
    cold = alert("ColdChainBreach", "cold-room-2", site="dc-1")
    warm = alert("ColdChainBreach", "cold-room-3", site="dc-1", severity="warning")
    with running_receiver() as receiver:
        config = routes({"name": "ops", "type": "webhook", "url": f"{receiver.url}/hook", "hmac_key": KEY})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(cold), fired(warm))
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "receiver": "ops",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "ColdChainBreach", "severity": "critical", "site": "dc-1", "subject": "cold-room-2",
                },
                "annotations": {
                    "description": "above 8 °C for 15 minutes", "summary": "ColdChainBreach on cold-room-2",
                },
                "startsAt": "2025-03-04T05:06:07.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://stocktrace.test/alerts?subject=cold-room-2",
                "fingerprint": cold.fingerprint,
            },
            {
                "status": "firing",
                "labels": {
                    "alertname": "ColdChainBreach", "severity": "warning", "site": "dc-1", "subject": "cold-room-3",
                },
                "annotations": {
                    "description": "above 8 °C for 15 minutes", "summary": "ColdChainBreach on cold-room-3",
                },
                "startsAt": "2025-03-04T05:06:07.123Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://stocktrace.test/alerts?subject=cold-room-3",
                "fingerprint": warm.fingerprint,
            },
        ],
        "groupLabels": {"alertname": "ColdChainBreach"},
        "commonLabels": {"alertname": "ColdChainBreach", "site": "dc-1"},
        "commonAnnotations": {"description": "above 8 °C for 15 minutes"},
        "externalURL": "http://stocktrace.test",
        "version": "4",
        "groupKey": '{}/{}:{alertname="ColdChainBreach"}',
        "truncatedAlerts": 0,
    }  # fmt: skip
    timestamp = request.headers["x-stocktrace-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(KEY.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-stocktrace-signature"] == f"sha256={expected}"
    assert request.headers["x-stocktrace-sequence"] == "1"
    key = db.execute("select idempotency_key::text from deliveries").fetchone()
    assert key is not None
    assert request.headers["idempotency-key"] == key[0]


def test_webhook_resolved_and_truncated(dsn: str, db: psycopg.Connection) -> None:
    items = [alert("LowStock", f"gtin-{n}", severity="warning") for n in range(3)]
    with running_receiver() as receiver:
        config = routes({"name": "ops", "type": "webhook", "url": receiver.url, "max_alerts": 2})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, *[resolved(item) for item in items])
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    body = receiver.requests[0].json()
    assert body["status"] == "resolved"
    assert [a["status"] for a in body["alerts"]] == ["resolved", "resolved"]
    assert body["alerts"][0]["endsAt"] == "2025-03-04T05:26:07.123Z"
    assert body["truncatedAlerts"] == 1
    assert "x-stocktrace-signature" not in receiver.requests[0].headers


def test_slack_one_message_per_group(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        config = routes({"name": "chat", "type": "slack", "url": f"{receiver.url}/services/T0/B0/xyz"})
        changes = [fired(alert("ColdChainBreach", "room-<1>")), fired(alert("ColdChainBreach", "room-2"))]

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, *changes, fired(alert("LowStock", "gtin-1")))
                await wait_for(receiver, 2)

        asyncio.run(scenario())
    cold, low = (request.json() for request in receiver.requests)
    assert cold["text"] == "[FIRING:2] ColdChainBreach"
    assert cold["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": "[FIRING:2] ColdChainBreach"}}
    sections = [block for block in cold["blocks"] if block["type"] == "section"]
    assert len(sections) == 2
    assert {section["text"]["type"] for section in sections} == {"mrkdwn"}
    # In label order, as Alertmanager sorts a group's alerts: "room-2" before "room-<1>".
    assert "ColdChainBreach on room-&lt;1&gt;" in sections[1]["text"]["text"]
    assert cold["blocks"][-1]["type"] == "context"
    assert low["text"] == "[FIRING:1] LowStock"


def test_teams_workflows_adaptive_card(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.set_default(Answer(202, b""))
        config = routes({"name": "teams", "type": "teams", "url": f"{receiver.url}/workflows/abc"})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, resolved(alert()))
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    message = receiver.requests[0].json()
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["body"][0]["text"] == "[RESOLVED] ColdChainBreach"
    assert card["body"][0]["color"] == "Good"
    facts = next(block for block in card["body"] if block["type"] == "FactSet")["facts"]
    assert {"title": "Status", "value": "resolved"} in facts


def test_pagerduty_trigger_then_resolve_with_one_dedup_key(dsn: str, db: psycopg.Connection) -> None:
    breach = alert("ColdChainBreach", "cold-room-2")
    with running_receiver() as receiver:
        receiver.set_default(Answer.json(202, {"status": "success", "message": "Event processed"}))
        pagerduty = {
            "name": "pd",
            "type": "pagerduty",
            "routing_key": "R0UT1NGKEY",
            "url": f"{receiver.url}/v2/enqueue",
        }
        config = routes(pagerduty)

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(breach))
                await enqueue_changes(dsn, config, resolved(breach))
                await wait_for(receiver, 2)

        asyncio.run(scenario())
    trigger, resolve = (request.json() for request in receiver.requests)
    assert trigger == {
        "routing_key": "R0UT1NGKEY",
        "event_action": "trigger",
        "dedup_key": breach.fingerprint,
        "payload": {
            "summary": "ColdChainBreach on cold-room-2",
            "source": "cold-room-2",
            "severity": "critical",
            "timestamp": "2025-03-04T05:06:07.123000+00:00",
            "class": "ColdChainBreach",
            "custom_details": {"labels": dict(breach.labels), "annotations": dict(breach.annotations)},
        },
        "client": "stocktrace",
        "client_url": "http://stocktrace.test",
        "links": [{"href": "http://stocktrace.test/alerts?subject=cold-room-2", "text": "Source"}],
    }
    assert resolve == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": breach.fingerprint}
    assert all(request.path == "/v2/enqueue" for request in receiver.requests)
    # The routing key is a secret: added when sending, never stored.
    assert db.execute("select count(*) from deliveries where payload::text like '%R0UT1NGKEY%'").fetchone() == (0,)


def test_pagerduty_429_waits_for_retry_after_and_400_fails(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.script(
            Answer.json(429, {"status": "throttled"}, **{"Retry-After": "1"}),
            Answer.json(202, {"status": "success"}),
            Answer.json(400, {"status": "invalid event", "message": "Event object is invalid"}),
        )
        config = routes({"name": "pd", "type": "pagerduty", "routing_key": "k", "url": receiver.url})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(alert(subject="a")), fired(alert(subject="b")))
                await asyncio.to_thread(receiver.wait_for, 3, 10, succeeded=False)
                await asyncio.sleep(0.2)

        asyncio.run(scenario())
    throttled, accepted, _refused = receiver.requests
    assert accepted.received_at - throttled.received_at >= 1.0
    assert throttled.body == accepted.body
    states = db.execute("select seq, state, attempts, last_status_code from deliveries order by seq").fetchall()
    assert states == [(1, "sent", 2, 202), (2, "failed", 1, 400)]


def test_grafana_annotation_created_then_closed(dsn: str, db: psycopg.Connection) -> None:
    breach = alert("ColdChainBreach", "cold-room-2")
    with running_receiver() as receiver:

        def grafana(method: str, path: str, body: bytes) -> Answer:
            if method == "POST":
                return Answer.json(200, {"message": "Annotation added", "id": 41})
            return Answer.json(200, {"message": "Annotation updated"})

        receiver.answer_by(grafana)
        config = routes(
            {"name": "grafana", "type": "grafana", "url": receiver.url, "token": "glsa_token",
             "dashboard_uid": "stocktrace-cold", "panel_id": 4, "tags": ["stocktrace"]}
        )  # fmt: skip

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(breach))
                await wait_for(receiver, 1)
                await enqueue_changes(dsn, config, resolved(breach))
                await wait_for(receiver, 2)

        asyncio.run(scenario())
    created, closed = receiver.requests
    starts_ms = round(T0.timestamp() * 1000)
    tags = ["alertname:ColdChainBreach", "severity:critical", "stocktrace"]
    assert (created.method, created.path) == ("POST", "/api/annotations")
    assert created.headers["authorization"] == "Bearer glsa_token"
    assert created.json() == {
        "dashboardUID": "stocktrace-cold",
        "panelId": 4,
        "time": starts_ms,
        "timeEnd": None,
        "tags": tags,
        "text": "[FIRING] ColdChainBreach on cold-room-2\nabove 8 °C for 15 minutes",
    }
    assert (closed.method, closed.path) == ("PUT", "/api/annotations/41")
    assert closed.json() == {
        "time": starts_ms,
        "timeEnd": starts_ms + round(timedelta(minutes=20).total_seconds() * 1000),
        "tags": tags,
        "text": "[RESOLVED] ColdChainBreach on cold-room-2\nabove 8 °C for 15 minutes",
    }


def test_grafana_resolve_without_its_firing_annotation_creates_the_region(dsn: str, db: psycopg.Connection) -> None:
    breach = alert("ColdChainBreach", "cold-room-2", state=State.FIRING)
    with running_receiver() as receiver:
        receiver.set_default(Answer.json(200, {"message": "Annotation added", "id": 7}))
        config = routes({"name": "grafana", "type": "grafana", "url": receiver.url})

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, resolved(breach))
                await wait_for(receiver, 1)

        asyncio.run(scenario())
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", "/api/annotations")
    assert request.json()["timeEnd"] - request.json()["time"] == 20 * 60 * 1000


def test_grafana_errors_say_whether_to_retry(dsn: str, db: psycopg.Connection) -> None:
    with running_receiver() as receiver:
        receiver.script(
            Answer.json(503, {"message": "database is locked"}),
            Answer.json(400, {"message": "bad request data"}),
        )
        receiver.set_default(Answer.json(200, {"message": "Annotation added", "id": 3}))
        config = routes(
            {"name": "grafana", "type": "grafana", "url": receiver.url},
            {"name": "unreachable", "type": "grafana", "url": "http://127.0.0.1:9"},
            routes=[{"matchers": ['subject!="down"'], "receivers": ["grafana"]}, {"receivers": ["unreachable"]}],
            delivery={"backoff_initial": "10ms"},
        )

        async def scenario() -> None:
            async with running_worker(dsn, config):
                await enqueue_changes(dsn, config, fired(alert(subject="a")), fired(alert(subject="down")))
                await enqueue_changes(dsn, config, fired(alert(subject="b")))
                await wait_for(receiver, 1)
                await asyncio.sleep(0.2)

        asyncio.run(scenario())
    attempts = db.execute(
        "select d.receiver, d.seq, a.attempt, a.status_code, a.outcome, a.error from delivery_attempts a"
        " join deliveries d on d.id = a.delivery_id where a.attempt = 1 or d.receiver = 'grafana' order by 1, 2, 3"
    ).fetchall()
    assert attempts[:3] == [
        ("grafana", 1, 1, 503, "retry", "Server Error 503: database is locked"),
        ("grafana", 1, 2, 400, "failed", "Bad Input: `{'message': 'bad request data'}`"),
        ("grafana", 2, 1, 200, "sent", None),
    ]
    ((receiver_name, _, _, status, outcome, error),) = attempts[3:]
    assert (receiver_name, status, outcome) == ("unreachable", None, "retry")
    assert error.startswith("cannot reach Grafana: ConnectionError")
