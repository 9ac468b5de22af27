"""The HTTP API: each stage's router under /api/v1, plus health and Prometheus metrics.

The glue around the routers: API keys and roles (auth.py), the actor of each change for the audit triggers
(audit.py), errors as problem details and a body size limit (problems.py), request ids and access logs
(logs.py), and the OpenAPI document that describes all of it (openapi.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from alerts.api import router as alerts_router
from alerts.deliveries_api import router as deliveries_router
from devices.api import router as devices_router
from ingest.api import router as ingest_router
from ingest.wire import Connection, MqttError
from stocktrace import audit, auth, openapi, problems
from stocktrace.logs import RequestLog
from stocktrace.settings import Settings, broker_options
from tracking.api import router as presence_router
from tracking.epcis_api import router as epcis_router
from tracking.inventory_api import router as inventory_router

log = logging.getLogger(__name__)

# Every stage's endpoints, mounted under /api/v1; the glue's own (audit, keys) come last.
ROUTERS: Final[tuple[APIRouter, ...]] = (
    devices_router,
    ingest_router,
    presence_router,
    inventory_router,
    epcis_router,
    alerts_router,
    deliveries_router,
    audit.router,
    auth.router,
)


def create_app(settings: Settings, workers: int | None = None) -> FastAPI:
    """The API; with ``workers``, readiness also waits for that many ingest workers to be subscribed."""

    # Prometheus scrapes without a key unless STOCKTRACE_METRICS_AUTH is set (it can send a bearer token).
    open_paths = auth.OPEN_PATHS - {"/metrics"} if settings.metrics_auth else auth.OPEN_PATHS

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_auth:
            log.warning("API authentication is OFF (STOCKTRACE_API_AUTH=false): anyone reaching the API is admin")
        # Names each request's API key on its connections, for the audit triggers (stocktrace/audit.py).
        pool = audit.create_pool(settings.database_url)
        await pool.open(wait=False)
        app.state.pool = pool
        app.state.settings = settings
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="stocktrace",
        summary="Where every tagged item is, what condition it is in, and what needs attention now.",
        description=openapi.describe(settings.api_max_body_bytes),
        version="0.1.0",
        lifespan=lifespan,
    )
    for router in ROUTERS:
        app.include_router(router, prefix=auth.API_PREFIX, dependencies=[Depends(auth.authorize)])
    _add_operations(app, settings, workers)
    problems.install(app)
    # Added innermost first: a request meets RequestLog, ErrorBoundary, Authentication, BodyLimit, the routes.
    app.add_middleware(problems.BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(auth.Authentication, enabled=settings.api_auth, open_paths=open_paths)
    app.add_middleware(problems.ErrorBoundary)
    app.add_middleware(RequestLog)
    app.openapi = lambda: openapi.document(app, open_paths)  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def _add_operations(app: FastAPI, settings: Settings, workers: int | None) -> None:
    """/healthz, /readyz and /metrics."""

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="The database and the broker are reachable",
        responses={503: {"description": "Not ready: each check that failed says why"}},
    )
    async def readyz() -> JSONResponse:
        checks = {"database": await _database_ok(settings), "broker": await _broker_ok(settings)}
        if workers is not None:
            checks["workers"] = _workers_ok(workers)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics of every stage and worker")
    async def metrics() -> Response:
        return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    # Workers are separate processes; in multiprocess mode their metrics are read from the shared directory.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    return registry


def _workers_ok(expected: int) -> str:
    subscribed = 0.0
    for metric in _registry().collect():
        if metric.name == "stocktrace_ingest_subscribed_workers":
            subscribed = sum(sample.value for sample in metric.samples)
    if subscribed >= expected:
        return "ok"
    return f"{subscribed:.0f} of {expected} ingest workers subscribed"


async def _database_ok(settings: Settings) -> str:
    try:
        async with await psycopg.AsyncConnection.connect(settings.database_url, connect_timeout=3) as conn:
            await conn.execute("select 1")
    except psycopg.Error as exc:
        return f"unreachable: {str(exc).strip()[:200]}"
    return "ok"


async def _broker_ok(settings: Settings) -> str:
    # A client id of its own each time: two probes (two API replicas) with one id would disconnect each other
    # (MQTT v5 §3.1.4-3: the broker closes the existing connection of a client id that connects again).
    client_id = f"{settings.mqtt_client_id}-probe-{uuid.uuid4().hex[:8]}"
    options = broker_options(settings, client_id, clean_start=True)
    try:
        connection = await Connection.open(options, lambda *_: None, timeout_s=3)
    except MqttError as exc:
        return f"unreachable: {exc}"
    await connection.close()
    return "ok"
