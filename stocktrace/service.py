"""The running service: N ingest worker processes, the HTTP API, and the retention job.

Each worker is a process of its own (Python runs one core per process) with its own MQTT session in one
shared-subscription group, so the broker splits the stream between them. The parent serves the API, runs
retention, restarts a worker that dies, and on SIGTERM/SIGINT asks every worker to commit, acknowledge and
disconnect before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.context import SpawnProcess
from typing import Final

import uvicorn
from prometheus_client import multiprocess

from alerts import delivery, evaluator
from alerts.cli import rules_from
from alerts.clock import clock_named
from ingest.consumer import BatchPolicy, Consumer, shared
from ingest.routes import Router
from ingest.writer import Step, Writer
from stocktrace.app import create_app
from stocktrace.logs import configure_logging
from stocktrace.retention import RetentionPlan, keep_bounded
from stocktrace.settings import Settings, broker_options, load_settings
from tracking import resolver
from tracking.sightings import Sightings

log = logging.getLogger(__name__)

_RESTART_DELAY_S: Final = 1.0
_SHUTDOWN_GRACE_S: Final = 30.0


def writer_steps() -> list[Step]:
    """What later stages do with each batch inside its transaction: tracking folds reads into sightings."""
    return [Sightings()]


def consumer_for(settings: Settings, index: int) -> Consumer:
    """The consumer of worker ``index``: its own session, the group's shared subscriptions."""
    router = Router(settings.routes, prefix=settings.mqtt_topic_prefix)
    filters = router.subscriptions([*settings.mqtt_topics, *router.topic_filters])
    return Consumer(
        broker_options(settings, f"{settings.mqtt_client_id}-{index}"),
        shared(filters, settings.mqtt_share_group),
        router,
        Writer(settings.database_url, steps=writer_steps()),
        BatchPolicy(settings.batch_max_messages, settings.batch_max_wait_ms / 1000, settings.max_payload_bytes),
        registry_url=settings.database_url,
    )


async def _run_worker(index: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_stop_when_orphaned(stop))
    await consumer_for(load_settings(), index).run(stop)
    watchdog.cancel()


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    # A worker whose supervisor was killed (SIGKILL gives it no chance to stop us) stops too, gracefully.
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1)
        if os.getppid() != parent:
            log.warning("the supervising process is gone; stopping")
            stop.set()


def worker_main(index: int) -> None:
    """Entry point of a worker process."""
    settings = load_settings()
    configure_logging(settings.log_level, settings)
    asyncio.run(_run_worker(index))


class Supervisor:
    """Keeps N worker processes running until told to stop."""

    def __init__(self, workers: int) -> None:
        self._count = workers
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, SpawnProcess] = {}

    def start(self, index: int) -> None:
        process = self._context.Process(
            target=worker_main, args=(index,), name=f"stocktrace-worker-{index}", daemon=False
        )
        process.start()
        self._processes[index] = process

    async def run(self, stop: asyncio.Event) -> None:
        for index in range(1, self._count + 1):
            self.start(index)
        while not stop.is_set():
            for index, process in list(self._processes.items()):
                if not process.is_alive():
                    log.error("worker %d exited with code %s; restarting it", index, process.exitcode)
                    _forget_metrics_of(process)
                    self.start(index)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESTART_DELAY_S)
        await self.stop()

    async def stop(self) -> None:
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SHUTDOWN_GRACE_S
        for process in self._processes.values():
            # join() blocks, so it waits in a thread while the API keeps answering.
            await loop.run_in_executor(None, process.join, max(0.0, deadline - loop.time()))
            if process.is_alive():
                log.error("worker %s did not stop in %.0f s; killing it", process.name, _SHUTDOWN_GRACE_S)
                process.kill()


def _forget_metrics_of(process: SpawnProcess) -> None:
    # Live gauges (subscribed workers) of a dead process must stop counting.
    if process.pid is not None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]  # untyped in prometheus_client


class _ApiServer(uvicorn.Server):
    """uvicorn without its signal handling: the service owns SIGTERM/SIGINT and shuts the API down itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, workers: int, stop: asyncio.Event | None = None) -> None:
    """Run the whole service until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = _ApiServer(
        uvicorn.Config(
            create_app(settings, workers),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            lifespan="on",
        )
    )
    plan = RetentionPlan(timedelta(days=settings.retention_days), timedelta(days=settings.compress_after_days))
    api = asyncio.create_task(server.serve())
    background = [
        asyncio.create_task(keep_bounded(settings.database_url, plan, stop)),
        # Each of these takes an advisory lock: with several stocktrace processes exactly one does the work.
        asyncio.create_task(resolver.run(settings.database_url, stop)),
        asyncio.create_task(
            evaluator.run(
                settings.database_url, stop, rules_from(settings.rules_file), clock=clock_named(settings.alert_clock)
            )
        ),
    ]
    if settings.alert_routes_file is not None:
        routes = delivery.load_worker_routes(settings.alert_routes_file)
        background.append(asyncio.create_task(delivery.run(settings.database_url, stop, routes)))
    else:
        log.warning("STOCKTRACE_ALERT_ROUTES_FILE is not set: alerts are evaluated but sent nowhere")
    try:
        await Supervisor(workers).run(stop)
    finally:
        server.should_exit = True
        await asyncio.gather(api, *background, return_exceptions=True)


def prepare_metrics_directory() -> None:
    """Prometheus multiprocess mode: every process writes its metrics to one directory the API reads."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="stocktrace-metrics-")
