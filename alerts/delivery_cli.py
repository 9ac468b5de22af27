"""Commands of alert delivery: ``stocktrace delivery run|check``, ``stocktrace bench delivery|alert-latency``."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from alerts import delivery, delivery_bench, latency_bench
from alerts.routes import ROUTES_FILE_ENV, Grouping, RoutesConfig, RoutesError, destinations
from devices.options import database_option
from stocktrace import db

F = TypeVar("F", bound=Callable[..., Any])


def _routes_option(function: F) -> F:
    return click.option(
        "--routes",
        "routes_file",
        envvar=ROUTES_FILE_ENV,
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Routes file (alerts/routes.example.yaml shows every field) [env: {ROUTES_FILE_ENV}]",
    )(function)


def _load(routes_file: Path) -> RoutesConfig:
    try:
        return delivery.load_worker_routes(routes_file)
    except RoutesError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("delivery")
def delivery_group() -> None:
    """Alert delivery: the worker that sends the outbox, and a check of the routes file."""


@delivery_group.command("run")
@database_option
@_routes_option
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel sends.")
def run(database_url: str, routes_file: Path, concurrency: int) -> None:
    """Send pending alert deliveries until SIGTERM or Ctrl-C; run as many as you like, on any hosts.

    Each receiver gets its deliveries in order, one at a time; receivers are served in parallel. A delivery
    being sent when the signal comes is finished and recorded first.

    \b
    Example:
      STOCKTRACE_ALERT_ROUTES_FILE=/etc/stocktrace/routes.yaml stocktrace delivery run
    """
    config = _load(routes_file)
    click.echo(f"delivering to {len(config.receivers)} receiver(s) from {database_url} with {concurrency} slot(s)")
    asyncio.run(_run_until_signal(database_url, config, concurrency))


async def _run_until_signal(database_url: str, config: RoutesConfig, concurrency: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await delivery.run(database_url, stop, config, concurrency=concurrency)


@delivery_group.command("check")
@_routes_option
@click.option("--labels", "-l", multiple=True, metavar="NAME=VALUE", help="Show where an alert with these labels goes.")
def check(routes_file: Path, labels: tuple[str, ...]) -> None:
    """Validate the routes file, with its ${VARIABLES} read from the environment; exit 1 if it is wrong.

    \b
    Examples:
      stocktrace delivery check --routes routes.yaml
      stocktrace delivery check -l alertname=ColdChainBreach -l severity=critical
    """
    config = _load(routes_file)
    for receiver in config.receivers:
        click.echo(f"receiver {receiver.name:<24} {receiver.type}")
    click.echo(f"{len(config.routes)} route(s), default receivers: {', '.join(config.default_receivers) or 'none'}")
    if labels:
        pairs = dict(label.partition("=")[::2] for label in labels)
        for found in destinations(config, pairs):
            click.echo(f"-> {found.receiver} (route {found.route_key}, {_pacing(found.grouping)})")


def _pacing(grouping: Grouping) -> str:
    def seconds(value: timedelta) -> str:
        return f"{value.total_seconds():g}s"

    repeat = seconds(grouping.repeat_interval) if grouping.repeat_interval is not None else "the rule's"
    return (
        f"group by {', '.join(grouping.group_by)}, wait {seconds(grouping.group_wait)},"
        f" interval {seconds(grouping.group_interval)}, repeat {repeat}"
    )


@click.command("delivery")
@database_option
@click.option("--deliveries", "-n", default=2_000, show_default=True, help="Deliveries in the throughput run.")
@click.option("--receivers", default=4, show_default=True, help="Receivers (lanes) they are spread over.")
@click.option("--concurrency", default=4, show_default=True, help="Worker slots.")
@click.option("--rate", default=50.0, show_default=True, help="Changes/s offered in the latency run.")
@click.option("--latency-seconds", default=5.0, show_default=True, help="Length of the latency run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_delivery(
    database_url: str, deliveries: int, receivers: int, concurrency: int, rate: float, latency_seconds: float,
    as_json: bool,
) -> None:  # fmt: skip
    """Alert delivery: deliveries/s and commit→received latency, against a plain POST loop.

    Runs in a database of its own (<database>_bench_delivery), created for the run and dropped after it, with
    a local webhook receiver in a process of its own.

    \b
    Examples:
      stocktrace bench delivery
      stocktrace bench delivery --deliveries 5000 --receivers 8 --json
    """
    with db.scratch_database(database_url, "bench_delivery") as url:
        config = delivery_bench.BenchConfig(url, deliveries, receivers, concurrency, rate, latency_seconds)
        result = delivery_bench.run_benchmark(config, lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(
        f"\n{'':<28}{'outbox + worker':>18}{'plain POST loop':>18}\n"
        f"{'throughput':<28}{result.deliveries_per_s:>13,.0f} /s  {result.baseline_posts_per_s:>13,.0f} /s\n"
        f"{'latency p50':<28}{result.latency_p50_ms:>13.1f} ms  {result.baseline_p50_ms:>13.2f} ms\n"
        f"{'latency p99':<28}{result.latency_p99_ms:>13.1f} ms  {result.baseline_p99_ms:>13.2f} ms\n"
        f"outbox: {result.deliveries:,} deliveries over {result.receivers} receiver(s), {result.concurrency} slot(s); "
        f"latency from commit to received at {result.offered_rate:g} changes/s (max {result.latency_max_ms:.1f} ms); "
        f"enqueue {result.enqueue_per_s:,.0f}/s, one change per transaction"
    )


@click.command("alert-latency")
@database_option
@click.option(
    "--mqtt-url", envvar="STOCKTRACE_MQTT_URL", default="mqtt://127.0.0.1:1883", show_default=True,
    help="Broker to publish through (mqtt:// only) [env: STOCKTRACE_MQTT_URL]",
)  # fmt: skip
@click.option("--trials", "-n", default=40, show_default=True, type=click.IntRange(2, 1000), help="Readings timed.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Evaluator tick, s.")
@click.option("--tick-only", is_flag=True, help="Do not wake the evaluator on new data: the tick alone.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_alert_latency(
    database_url: str, mqtt_url: str, trials: int, interval: float, tick_only: bool, as_json: bool
) -> None:
    """Reading → webhook: a breaching reading published over MQTT until its alert's webhook arrives.

    The ingest consumer, the evaluator (every rule; no alarm delay for the breach) and the delivery worker run
    in this process against the broker and a database of its own (<database>_bench_alert_latency, created for
    the run and dropped after it); a local webhook receiver records arrival times. Baselines from the same
    run: an MQTT publish → subscriber round trip, and delivery alone (outbox commit → webhook).

    \b
    Examples:
      stocktrace bench alert-latency
      stocktrace bench alert-latency --trials 100 --json
      stocktrace bench alert-latency --tick-only     # what the evaluator's tick alone allows
    """
    broker = urlsplit(mqtt_url)
    if broker.scheme != "mqtt":
        raise click.BadParameter("the benchmark publishes over plain mqtt:// only", param_hint="--mqtt-url")
    with db.scratch_database(database_url, "bench_alert_latency") as url:
        config = latency_bench.BenchConfig(
            url, broker.hostname or "127.0.0.1", broker.port or 1883, trials, interval, tick_only
        )
        result = latency_bench.run_benchmark(config, lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    _print_latency(result)


def _print_latency(result: latency_bench.BenchResult) -> None:
    woken = "woken by ingest" if result.woken_by_ingest else "on its tick only"
    rows = [
        ("reading → webhook", result.p50_ms, result.p99_ms),
        ("  publish → committed", result.ingest_p50_ms, result.ingest_p99_ms),
        ("  committed → webhook", result.after_commit_p50_ms, result.after_commit_p99_ms),
        ("baseline: MQTT round trip", result.mqtt_p50_ms, result.mqtt_p99_ms),
        ("baseline: delivery alone", result.delivery_p50_ms, result.delivery_p99_ms),
    ]
    click.echo(f"\n{'':<30}{'p50':>10}{'p99':>10}")
    for label, p50, p99 in rows:
        click.echo(f"{label:<30}{p50:>7.1f} ms{p99:>7.1f} ms")
    click.echo(
        f"{result.trials} trials, max {result.max_ms:.1f} ms; p99 is {result.p99_ms / result.mqtt_p99_ms:.0f} x the"
        f" MQTT round trip's. Evaluator every {result.interval_s:g} s, {woken}: {result.ticks_per_s:.1f} ticks/s of"
        f" {result.tick_mean_ms:.1f} ms, {result.evaluator_busy:.0%} of a core."
    )


COMMANDS: list[click.Command] = [delivery_group]
BENCHMARKS: list[click.Command] = [bench_delivery, bench_alert_latency]
