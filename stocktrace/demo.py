"""`stocktrace demo`: the service, fed by the simulator's warehouse in real time, with live counts.

The simulator's scenario is registered first (sites, locations, readers and sensors, as `stocktrace apply`
would), its vendor formats are routed to their decoders, then the service starts and the simulated devices
begin publishing. Every few seconds a line shows what arrived and what stocktrace made of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import yaml

from devices import manifest, registry
from simulator.manifest import manifest as scenario_manifest
from simulator.manifest import routes as scenario_routes
from simulator.run import run as run_simulation
from simulator.scenario import DEFAULT_SCENARIO, ScenarioError, load_scenario

__all__ = ["ScenarioError", "run_demo"]
from stocktrace import auth, service
from stocktrace.settings import Settings, load_settings

_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    messages: int
    reads: int
    dead_letters: int
    devices_online: int
    devices: int
    items_present: int | None
    alerts_firing: int | None


def demo_key(settings: Settings) -> str | None:
    """A fresh admin key named "demo" (the previous one is revoked), or None when the API asks for no key."""
    if not settings.api_auth:
        return None
    with psycopg.connect(settings.database_url) as conn:
        return auth.replace_key(conn, "demo", auth.Role.ADMIN).key


def register(settings: Settings, scenario_path: Path | None) -> tuple[str, int]:
    """Apply the scenario's registry manifest; returns its routes (STOCKTRACE_ROUTES) and objects created."""
    scenario = load_scenario(scenario_path or DEFAULT_SCENARIO)
    document = manifest.parse(yaml.safe_dump(scenario_manifest(scenario), sort_keys=False))
    with psycopg.connect(settings.database_url) as conn:
        changes = registry.run(conn, manifest.apply(document))
    return scenario_routes(scenario), sum(1 for change in changes if change.action is registry.Action.CREATED)


def _count(conn: psycopg.Connection[tuple[object, ...]], table: str, query: str) -> int | None:
    exists = conn.execute("select to_regclass(%s)", (table,)).fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute(query).fetchone()
    return int(str(row[0])) if row and row[0] is not None else 0


def snapshot(conn: psycopg.Connection[tuple[object, ...]]) -> Snapshot:
    row = conn.execute(
        """
        select (select coalesce(sum(messages), 0) from device_activity),
               (select coalesce(sum(reads), 0) from antenna_activity),
               (select count(*) from dead_letters),
               (select count(*) filter (where status = 'online') from device_health),
               (select count(*) from device_health where registered)
        """
    ).fetchone()
    assert row is not None
    messages, reads, dead, online, devices = (int(str(value)) for value in row)
    return Snapshot(
        time.monotonic(), messages, reads, dead, online, devices,
        _count(conn, "item_state", "select count(*) from item_state where status = 'present'"),
        _count(conn, "alerts", "select count(*) from alerts where state = 'firing'"),
    )  # fmt: skip


def describe(before: Snapshot, now: Snapshot) -> str:
    elapsed = max(now.at - before.at, 1e-6)
    parts = [
        f"{(now.messages + now.dead_letters - before.messages - before.dead_letters) / elapsed:7,.0f} msg/s",
        f"{(now.reads - before.reads) / elapsed:7,.0f} reads/s",
        f"devices online {now.devices_online}/{now.devices}",
        f"dead letters {now.dead_letters}",
    ]
    if now.items_present is not None:
        parts.append(f"items located {now.items_present:,}")
    if now.alerts_firing is not None:
        parts.append(f"alerts firing {now.alerts_firing}")
    return " | ".join(parts)


async def _wait_until_ready(url: str, stop: asyncio.Event, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline and not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return True
            await asyncio.sleep(0.3)
    return False


async def _report(settings: Settings, stop: asyncio.Event, echo: Callable[[str], None]) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        before = snapshot(conn)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _EVERY_S)
            now = snapshot(conn)
            echo(describe(before, now))
            before = now


async def run_demo(scenario_path: Path | None, workers: int, echo: Callable[[str], None]) -> None:
    routes, created = register(load_settings(), scenario_path)
    # Workers are processes that read their settings from the environment. The demo's MQTT session is its own
    # and short-lived, so that it neither inherits a production session's backlog nor keeps one after it ends.
    os.environ["STOCKTRACE_ROUTES"] = routes
    os.environ.setdefault("STOCKTRACE_MQTT_CLIENT_ID", "stocktrace-demo")
    os.environ.setdefault("STOCKTRACE_MQTT_SHARE_GROUP", "stocktrace-demo")
    os.environ.setdefault("STOCKTRACE_MQTT_SESSION_EXPIRY_S", "300")
    settings = load_settings()
    echo(f"registered the demo warehouse ({created} new objects); routes: {routes}")
    url = f"http://{settings.api_host}:{settings.api_port}"
    stop = asyncio.Event()
    service.prepare_metrics_directory()
    serving = asyncio.create_task(service.serve(settings, workers, stop))
    if not await _wait_until_ready(url, stop):
        stop.set()
        await serving
        raise RuntimeError(f"the service did not become ready; check {url}/readyz")
    key = demo_key(settings)
    header = f"-H 'Authorization: Bearer {key}' " if key else ""
    echo(
        f"\nstocktrace is running.\n"
        f"  API key      {key or 'not needed (STOCKTRACE_API_AUTH=false)'}\n"
        f"  try          curl {header}{url}/api/v1/devices\n"
        f"  API          {url}/docs\n"
        f"  live counts  {url}/api/v1/ingest/stats\n"
        f"  devices      {url}/api/v1/devices\n"
        f"  alerts       {url}/api/v1/alerts\n"
        f"  metrics      {url}/metrics\n"
        f"The simulated warehouse publishes in real time; Ctrl-C stops both.\n"
    )
    halt = threading.Event()
    simulation = asyncio.create_task(
        asyncio.to_thread(
            run_simulation, load_scenario(scenario_path or DEFAULT_SCENARIO), mode="realtime",
            mqtt=(settings.mqtt_host, settings.mqtt_port), stop=halt, duration_s=7 * 86400.0,
        )
    )  # fmt: skip
    reporting = asyncio.create_task(_report(settings, stop, echo))
    try:
        await serving
    finally:
        halt.set()
        stop.set()
        await asyncio.gather(simulation, reporting, return_exceptions=True)
