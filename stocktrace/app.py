"""The HTTP API: each stage's router under /api/v1, plus health and Prometheus metrics."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from devices.api import router as devices_router
from ingest.api import router as ingest_router
from ingest.wire import Connection, MqttError
from stocktrace import db
from stocktrace.settings import Settings, broker_options
from tracking.epcis_api import router as epcis_router
from tracking.inventory_api import router as inventory_router


def create_app(settings: Settings, workers: int | None = None) -> FastAPI:
    """The API; with ``workers``, readiness also waits for that many ingest workers to be subscribed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = db.create_pool(settings.database_url)
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
        version="0.1.0",
        lifespan=lifespan,
    )
    for router in (devices_router, ingest_router, inventory_router, epcis_router):
        app.include_router(router, prefix="/api/v1")

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="The database and the broker are reachable")
    async def readyz() -> JSONResponse:
        checks = {"database": await _database_ok(settings), "broker": await _broker_ok(settings)}
        if workers is not None:
            checks["workers"] = _workers_ok(workers)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics of every stage and worker")
    async def metrics() -> Response:
        return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)

    return app


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
    options = broker_options(settings, f"{settings.mqtt_client_id}-probe", clean_start=True)
    try:
        connection = await Connection.open(options, lambda *_: None, timeout_s=3)
    except MqttError as exc:
        return f"unreachable: {exc}"
    await connection.close()
    return "ok"
