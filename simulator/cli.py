"""``stocktrace simulate``: run a scenario against the broker, write the ground truth, check stocktrace against it."""

from __future__ import annotations

import json
import math
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import psycopg

from simulator.check import CheckReport, check
from simulator.engine import RunStats
from simulator.erp import SOURCE, DatabaseBook
from simulator.load import LoadResult, run_load
from simulator.manifest import manifest_yaml, rules_yaml, service_environment
from simulator.publisher import PublishError
from simulator.run import RunResult, run
from simulator.scenario import DEFAULT_SCENARIO, Scenario, ScenarioError, load_scenario, parse_duration
from simulator.truth import iso
from stocktrace.settings import Settings, SettingsError, load_settings

DEFAULT_DURATION = {"accelerated": "8h", "load": "30s"}
PROGRESS_EVERY_S = 5.0


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _seconds(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


def _start(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--start") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give the time with its offset, e.g. 2026-03-02T06:00:00+01:00", param_hint="--start")
    return moment.timestamp()


def _mqtt(url: str | None, settings: Settings) -> tuple[str, int]:
    if url is None:
        return settings.mqtt_host, settings.mqtt_port
    try:
        parsed = load_settings(mqtt_url=url)
    except SettingsError as exc:
        raise click.BadParameter(str(exc), param_hint="--mqtt-url") from None
    return parsed.mqtt_host, parsed.mqtt_port


def _credentials(settings: Settings) -> tuple[str, str] | None:
    if settings.mqtt_username is None:
        return None
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else ""
    return settings.mqtt_username, password


def _progress(quiet: bool) -> Any:
    last = [0.0]

    def show(stats: RunStats) -> None:
        if quiet or stats.real_elapsed_s - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = stats.real_elapsed_s
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.messages.items()))
        click.echo(f"{iso(stats.virtual_time)}  {sum(stats.messages.values()):,} messages ({counts}), "
                   f"{stats.reads:,} reads", err=True)  # fmt: skip

    return show


def _run_in_thread(target: Any) -> Any:
    """Run ``target(stop)`` in a thread so that Ctrl-C ends the run cleanly (truth written, wills not sent)."""
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = target(stop)
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="simulation")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:  # interrupted before the run could hand anything back
        raise click.Abort
    return outcome["result"]


def _summary(result: RunResult, scenario: Scenario, truth: Path | None) -> str:
    data = result.as_json()
    minutes = (result.ended_at - result.started_at) / 60
    lines = [
        f"scenario {result.scenario} (seed {result.seed}), {result.mode}: "
        f"{data['virtual_start']} … {data['virtual_end']}, "
        f"{minutes:,.0f} virtual minutes in {result.real_elapsed_s:,.1f} s",
        f"published {data['messages_total']:,} messages: "
        + ", ".join(f"{k} {v:,}" for k, v in data["messages"].items()),
        f"tag reads {data['reads_published']:,} ({data['reads_distinct']:,} distinct); "
        f"duplicates {result.duplicates:,}, "
        f"late {result.late:,}, cross-reads {100 * data['cross_read_share']:.1f} %, last wills {result.wills}",
        "operations: " + ", ".join(f"{k} {v:,}" for k, v in result.operations.items()),
        f"faults injected: {len(result.faults)}"
        + (f" ({result.faults_skipped} found no subject)" if result.faults_skipped else ""),
    ]
    for fault in result.faults:
        end = (
            "ongoing"
            if fault.end is None or fault.end >= result.ended_at
            else f"+{(fault.end - result.started_at) / 60:.0f} min"
        )
        lines.append(
            f"  {fault.fault:<22} {fault.subject:<28} +{(fault.start - result.started_at) / 60:.0f} min … {end}"
        )
    if truth is not None:
        lines.append(f"ground truth written to {truth}")
    lines.append(f"routes the service needs: {service_environment(scenario, result.topic_prefix)}")
    return "\n".join(lines)


def _load_text(result: LoadResult) -> str:
    data = result.as_json()
    return (
        f"load: {result.devices} devices over {result.processes} processes, {result.reads_per_message} read(s) per "
        f"message: {result.messages_acked:,} messages acknowledged in {result.elapsed_s:.1f} s = "
        f"{data['msgs_per_s']:,.0f} msg/s, {data['reads_per_s']:,.0f} reads/s "
        f"(target {result.target_reads_per_s:,.0f} reads/s, achieved {data['achieved_pct']} %)"
    )


@click.command("simulate")
@click.option("--scenario", "scenario_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Scenario YAML (default: the built-in Berlin/Hamburg warehouse).")  # fmt: skip
@click.option(
    "--mode", type=click.Choice(["realtime", "accelerated", "load"]), default="accelerated", show_default=True
)
@click.option("--speed", type=float, default=0.0, show_default=True,
              help="Accelerated: virtual seconds per real second; 0 runs as fast as it can.")  # fmt: skip
@click.option(
    "--duration", default=None, help="Virtual time to run: 90s, 15m, 8h, 2d. Real time: until Ctrl-C if unset."
)
@click.option(
    "--start", default=None, help="Accelerated: virtual start, ISO 8601 with offset (default: now - duration)."
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's).")
@click.option("--truth", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the ground truth here as JSON lines.")  # fmt: skip
@click.option("--devices", type=click.IntRange(min=1), default=100, show_default=True, help="Load: simulated readers.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=5000.0, show_default=True,
              help="Load: reads per second, all readers together.")  # fmt: skip
@click.option(
    "--batch", type=click.IntRange(min=1, max=10_000), default=1, show_default=True, help="Load: reads per message."
)
@click.option(
    "--processes", type=click.IntRange(min=1), default=None, help="Load: publishing processes (default: CPUs)."
)
@click.option("--mqtt-url", default=None, help="Broker, mqtt://host:port (default: STOCKTRACE_MQTT_URL).")
@click.option("--topic-prefix", default="", help="Put every topic under this prefix (tests keep runs apart this way).")
@click.option("--ideal", is_flag=True, help="No noise, misses, duplicates, delays or clock skew.")
@click.option("--manifest", "manifest_path", default=None,
              type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the scenario's registry manifest (for `stocktrace apply -f`) and its alert rules "
                   "(FILE with the suffix .rules.yaml, for STOCKTRACE_RULES_FILE), and exit.")  # fmt: skip
@click.option("--check", "do_check", is_flag=True,
              help="After the run, compare the truth with what stocktrace stored (start from an empty database; "
                   "accelerated runs need the service on STOCKTRACE_ALERT_CLOCK=device).")  # fmt: skip
@click.option(
    "--check-wait", type=float, default=60.0, show_default=True, help="Seconds to wait for ingest to catch up."
)
@click.option("--database-url", default=None, help="Database for --check (default: STOCKTRACE_DATABASE_URL).")
@click.option("--book-every", default="15m", show_default=True,
              help="With --check, the simulated ERP imports its book inventory into that database at the start, "
                   "then this often (virtual time), as `POST /inventory/book` would; 0 never.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def simulate(scenario_path: Path | None, mode: str, speed: float, duration: str | None, start: str | None,
             seed: int | None, truth: Path | None, devices: int, rate: float, batch: int, processes: int | None,
             mqtt_url: str | None, topic_prefix: str, ideal: bool, manifest_path: Path | None, do_check: bool,
             check_wait: float, database_url: str | None, book_every: str, as_json: bool) -> None:  # fmt: skip
    """Run a warehouse and cold chain that behave like the real thing, and record the ground truth.

    \b
    Examples:
      stocktrace simulate --mode realtime                      the demo: devices publish as they would
      stocktrace simulate --duration 8h --truth truth.jsonl    a working day in about a minute
      stocktrace simulate --duration 2h --check                ... then measure stocktrace against the truth
                                                               (serve it with STOCKTRACE_ALERT_CLOCK=device)
      stocktrace simulate --manifest site.yaml                 the registry for `stocktrace apply -f`
                                                               (and site.rules.yaml, its alert rules)
      stocktrace simulate --mode load --devices 200 --rate 20000 --duration 30s
    """
    settings = _settings()
    host, port = _mqtt(mqtt_url, settings)
    seconds = _seconds(duration or DEFAULT_DURATION.get(mode), "--duration")
    if mode == "load":
        _load(host, port, devices, rate, seconds or 30.0, batch, processes, topic_prefix, as_json)
        return
    try:
        scenario = load_scenario(scenario_path or DEFAULT_SCENARIO)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    if manifest_path is not None:
        manifest_path.write_text(manifest_yaml(scenario, topic_prefix), encoding="utf-8")
        rules_path = manifest_path.with_suffix(".rules.yaml")
        rules_path.write_text(rules_yaml(scenario), encoding="utf-8")
        click.echo(f"wrote the registry manifest of {scenario.name} to {manifest_path}; apply it with "
                   f"`stocktrace apply -f {manifest_path}`; its alert rules to {rules_path}, for "
                   f"STOCKTRACE_RULES_FILE", err=as_json)  # fmt: skip
        return
    options: dict[str, Any] = {
        "mode": mode, "mqtt": (host, port), "speed": speed or None, "duration_s": seconds, "start": _start(start),
        "seed": seed, "truth_path": truth, "topic_prefix": topic_prefix, "credentials": _credentials(settings),
        "ideal": ideal, "progress": _progress(as_json),
    }  # fmt: skip
    every_s = _seconds(book_every, "--book-every") or 0.0
    book = DatabaseBook(database_url or settings.database_url) if do_check and every_s > 0 else None
    if book is not None:
        options |= {"book": book, "book_every_s": every_s}
    try:
        result: RunResult = _run_in_thread(lambda stop: run(scenario, stop=stop, **options))
    except PublishError as exc:
        raise click.ClickException(f"{exc}. Is Mosquitto running? `make demo` starts it.") from None
    report = _check(result, database_url or settings.database_url, check_wait) if do_check else None
    if report is not None and book is not None:
        report.notes.append(f"the ERP book was imported {book.imports} time(s) (source {SOURCE!r}); "
                            f"{book.rejected} line(s) refused")  # fmt: skip
    if as_json:
        output = {"run": result.as_json(), "check": report.as_json() if report else None}
        click.echo(json.dumps(output, ensure_ascii=False, default=_json_default))
        return
    click.echo(_summary(result, scenario, truth))
    if report is not None:
        click.echo(report.as_text())


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _check(result: RunResult, dsn: str, wait_s: float) -> CheckReport:
    try:
        return check(result, dsn, wait_s=wait_s)
    except psycopg.Error as exc:
        raise click.ClickException(f"cannot check against {dsn}: {exc}") from None


def _load(host: str, port: int, devices: int, rate: float, seconds: float, batch: int, processes: int | None,
          prefix: str, as_json: bool) -> None:  # fmt: skip
    try:
        result = run_load(host, port, devices, rate, seconds, batch=batch, processes=processes, topic_prefix=prefix)
    except OSError as exc:
        raise click.ClickException(f"cannot publish to {host}:{port}: {exc}") from None
    click.echo(json.dumps(result.as_json()) if as_json else _load_text(result))


@click.group()
def main() -> None:
    """The simulator on its own (``python -m simulator.cli simulate ...``); stocktrace registers `simulate`."""


main.add_command(simulate)
COMMANDS: list[click.Command] = [simulate]

if __name__ == "__main__":
    sys.exit(main())
