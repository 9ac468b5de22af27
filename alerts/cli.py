"""The alert rules' commands; the ``stocktrace`` CLI adds COMMANDS (and BENCHMARKS under ``stocktrace bench``).

- ``stocktrace rules check [FILE]``: validate a rules file and show what each rule does with it;
- ``stocktrace rules evaluate``: run the evaluator (leader election included) until Ctrl-C, or once;
- ``stocktrace bench alerts``: evaluation throughput against a naive per-subject evaluator.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from alerts import evaluator, rules_bench
from alerts.evaluator import Evaluator, TickReport
from alerts.rules_config import PRESETS, RULES_FILE_ENV, RulesConfig, RulesError, load_rules
from devices.options import database_option
from stocktrace import db

F = TypeVar("F", bound=Callable[..., Any])


def _rules_option(function: F) -> F:
    return click.option(
        "--rules",
        "rules_file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=RULES_FILE_ENV,
        help=f"Rules file (YAML) [env: {RULES_FILE_ENV}]; default: the shipped alerts/rules.default.yaml",
    )(function)


def rules_from(path: Path | None) -> RulesConfig:
    """The rules in ``path`` (else $STOCKTRACE_RULES_FILE, else the shipped defaults), or a click error."""
    chosen = path or (Path(os.environ[RULES_FILE_ENV]) if os.environ.get(RULES_FILE_ENV) else None)
    try:
        return load_rules(chosen)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("rules")
def rules() -> None:
    """Alert rules: check a rules file, run the evaluator."""


@rules.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def check(path: Path | None) -> None:
    """Validate a rules file (default: $STOCKTRACE_RULES_FILE or the shipped one) and summarise it.

    Errors name the path in the file and the line, e.g. rules.low_stock.service_level (line 12).

    \b
    Examples:
      stocktrace rules check /etc/stocktrace/rules.yaml
    """
    config = rules_from(path)
    click.echo(f"{config.source}: valid")
    for name in ("temperature_excursion", "lot_exposure", "inventory_variance", "low_stock", "device_offline",
                 "sensor_stale", "battery_low", "shrink", "dwell", "expiry"):  # fmt: skip
        section = getattr(config, name)
        state = "off" if section.params.enabled is False else "on"
        every = config.interval_s(name)
        overrides = len(section.overrides)
        click.echo(f"  {name:<22} {state:<3}  every {every:g} s  {overrides} override(s)")
    click.echo("presets: " + ", ".join(f"{n} ({p.min_c:g}..{p.max_c:g} °C)" for n, p in PRESETS.items()))


@rules.command("evaluate")
@database_option
@_rules_option
@click.option("--interval", default=1.0, show_default=True, help="Seconds between ticks.")
@click.option("--once", is_flag=True, help="One tick now, then exit (prints each change).")
def evaluate(database_url: str, rules_file: Path | None, interval: float, once: bool) -> None:
    """Evaluate the alert rules until Ctrl-C; with several processes, one evaluates (an advisory lock).

    Changes go to the delivery outbox ($STOCKTRACE_ALERT_ROUTES_FILE names the routes).

    \b
    Examples:
      stocktrace rules evaluate
      STOCKTRACE_RULES_FILE=rules.yaml stocktrace rules evaluate --once
    """
    config = rules_from(rules_file)
    if once:
        report = asyncio.run(_once(database_url, config))
        _print_tick(report)
        return
    stop = asyncio.Event()
    try:
        asyncio.run(evaluator.run(database_url, stop, config, interval))
    except KeyboardInterrupt:
        stop.set()


async def _once(database_url: str, config: RulesConfig) -> TickReport:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute("select pg_try_advisory_lock(%s)", (evaluator.LOCK_KEY,))
        row = await cursor.fetchone()
        if not (row and row[0]):
            raise click.ClickException("another process is evaluating (it holds the evaluator lock)")
        return await Evaluator(config).tick(conn)


def _print_tick(report: TickReport) -> None:
    click.echo(f"tick at {report.now.isoformat()} in {report.duration_ms:.0f} ms, {report.subjects:,} subjects")
    for run in report.runs:
        outcome = f"failed: {run.error}" if run.error else f"{run.findings} finding(s) of {run.subjects:,}"
        click.echo(f"  {run.rule:<22} {run.duration_ms:8.1f} ms  {outcome}")
    for change in report.changes:
        alert = change.alert
        click.echo(
            f"  {alert.state:<8} {alert.name} {alert.labels.get('subject', '')}: {alert.annotations.get('summary', '')}"
        )


@click.command("alerts")
@database_option
@click.option("--rooms", default=1_000, show_default=True, help="Cold rooms with a sensor each.")
@click.option("--shelves", default=100, show_default=True, help="Shelves, each read by an antenna.")
@click.option("--skus", default=100, show_default=True, help="SKUs on every shelf (pairs = shelves x SKUs).")
@click.option("--ticks", default=5, show_default=True, help="Evaluation ticks measured.")
@click.option("--naive-subjects", default=2_000, show_default=True, help="Subjects the naive baseline judges.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench_alerts(
    database_url: str, rooms: int, shelves: int, skus: int, ticks: int, naive_subjects: int, as_json: bool
) -> None:
    """Alert evaluation throughput (rules x subjects per second) against a naive per-subject evaluator.

    Runs in a database of its own (<database>_bench_alerts), created and migrated for the run and dropped
    after it.

    \b
    Examples:
      stocktrace bench alerts
      stocktrace bench alerts --rooms 5000 --json
    """
    with db.scratch_database(database_url, "bench_alerts") as url:
        config = rules_bench.BenchConfig(url, rooms, shelves, skus, max(2, ticks), naive_subjects)
        result = rules_bench.run_benchmark(config, lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    _print_bench(result)


def _print_bench(result: rules_bench.BenchResult) -> None:
    click.echo(
        f"\nevaluation  {result.subjects_per_s:>10,.0f} subjects/s  ({result.subjects_per_tick:,} per tick, "
        f"{result.speedup:.1f} x naive)\n"
        f"naive       {result.naive_subjects_per_s:>10,.0f} subjects/s  (each subject with its own queries, "
        f"{result.naive_subjects:,} judged)\n"
        f"tick        p50 {result.tick_p50_ms:.0f} ms, max {result.tick_max_ms:.0f} ms; first tick "
        f"{result.first_tick_ms:.0f} ms ({result.changes_first_tick:,} alerts fired)"
    )
    for rule in result.rules:
        click.echo(
            f"  {rule.rule:<22} {rule.subjects:>7,} subjects {rule.findings:>6,} findings "
            f"{rule.median_ms:8.1f} ms  {rule.subjects_per_s:>10,.0f}/s"
        )


COMMANDS: list[click.Command] = [rules]
BENCHMARKS: list[click.Command] = [bench_alerts]
