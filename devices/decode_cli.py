"""``stocktrace decode`` shows what a payload decodes to; ``stocktrace bench decode`` times the decoders."""

from __future__ import annotations

import gc
import inspect
import json
import platform
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any

import click
from pydantic_core import PydanticCustomError

from devices.decoder_options import DeviceDecoding, build_decoders, check_options
from devices.decoders import DECODERS, DecodeError, Decoder
from devices.reading import RawMessage, as_json


@click.command("decode")
@click.option("--list", "list_sources", is_flag=True, help="List the source formats and exit.")
@click.option("--source", metavar="NAME", help="Source format of the payload (see --list).")
@click.option(
    "--topic",
    default="",
    metavar="TOPIC",
    help="MQTT topic the payload arrived on; most formats take the device id from it.",
)
@click.option(
    "--device", metavar="ID", help="The device the payload is from, as the registry names it (with --options)."
)
@click.option(
    "--options",
    "options_json",
    metavar="JSON",
    help="The device's decoder_options, as in a manifest (field maps, time zone, metric names).",
)
@click.argument("payload_file", metavar="[FILE]", type=click.File("rb"), required=False)
def decode(
    list_sources: bool, source: str | None, topic: str, device: str | None, options_json: str | None,
    payload_file: IO[bytes] | None,
) -> None:  # fmt: skip
    """Print the normalised readings of one device payload, one JSON object per line.

    Use it to check a device before wiring it: capture one message (FILE, or - for stdin) and decode it
    as the source format you mean to route its topic to. A payload that does not decode prints the
    reason on stderr and exits with status 1.

    \b
    Examples:
      stocktrace decode --list
      stocktrace decode --source zebra-fx --topic zebra/dock-door-1/data tags.json
      T=owntracks/jane/phone; mosquitto_sub -t $T -C 1 | stocktrace decode --source owntracks --topic $T -
      stocktrace decode --source ttn-v3 --device lht65-freezer-1 \\
          --options '{"fields": {"TempC_SHT": "temperature_c", "BatV": "battery_v"}}' uplink.json
    """
    if list_sources:
        _print_sources(DECODERS)
        return
    if source is None or payload_file is None:
        raise click.UsageError(
            "give --source NAME and a FILE (or - for stdin); `stocktrace decode --list` shows the sources"
        )
    decoder = _with_options(source, device, options_json) if options_json else DECODERS.get(source)
    if decoder is None:
        raise click.BadParameter(
            f"unknown source {source!r}; known sources: {', '.join(sorted(DECODERS))}"
            " (`stocktrace decode --list` describes them)",
            param_hint="'--source'",
        )
    message = RawMessage(topic, payload_file.read(), datetime.now(UTC))
    try:
        readings = decoder(message)
    except DecodeError as exc:
        hint = "" if topic else " (no --topic was given; most formats name the device from it)"
        click.echo(f"decode error ({source}): {exc}{hint}", err=True)
        raise SystemExit(1) from None
    for reading in readings:
        click.echo(json.dumps(as_json(reading), ensure_ascii=False, default=_jsonable))
    if not readings:
        click.echo(f"no readings: this {source} message carries none (it decoded without error)", err=True)


def _with_options(source: str | None, device: str | None, options_json: str) -> Decoder | None:
    """The source's decoder as a worker builds it for ``device`` with these options (None: unknown source)."""
    if source is None or source not in DECODERS:
        return None
    if not device:
        raise click.UsageError("--options are a device's: give --device ID too (the id the decoder names it by)")
    try:
        options = json.loads(options_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'--options'") from None
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object, as decoder_options in a manifest", param_hint="'--options'")
    try:
        stored = check_options(source, options)
    except PydanticCustomError as exc:
        raise click.BadParameter(exc.message(), param_hint="'--options'") from None
    built = build_decoders([DeviceDecoding(device, source, stored or {})])
    return built.decoders[source]


def _jsonable(value: object) -> object:
    # Vendor fields kept in ``extra`` may hold bytes or times (binary formats such as Sparkplug).
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _print_sources(decoders: Mapping[str, Decoder]) -> None:
    width = max(map(len, decoders), default=0)
    for name in sorted(decoders):
        click.echo(f"{name.ljust(width)}  {describe(decoders[name])}".rstrip())


def describe(decoder: Decoder) -> str:
    """The first line of the decoder module's docstring (or of the decoder's own)."""
    module = inspect.getmodule(decoder)
    doc = (module.__doc__ if module is not None else None) or decoder.__doc__ or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


@click.command("decode")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.001),
    default=0.5,
    show_default=True,
    help="Time spent on each decoder, and again on its baseline.",
)
@click.option("--json", "as_json_output", is_flag=True, help="Print one JSON object instead of a table.")
def decode_benchmark(seconds: float, as_json_output: bool) -> None:
    """Messages per second of every source format on one core, against json.loads of the same payload.

    Each decoder module offers a representative message as BENCH_SAMPLE: a (topic, payload) tuple, or
    a mapping from source name to such a tuple when one module serves several formats. A format without
    one is listed as skipped. The run is single-threaded, so the figures are per core. The ratio says
    how many json.loads calls one decode costs: decoding must never be what limits ingest.

    \b
    Examples:
      stocktrace bench decode
      stocktrace bench decode --seconds 2 --json > decode-bench.json
    """
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for name in sorted(DECODERS):
        outcome = _bench_one(name, DECODERS[name], seconds)
        (results if "messages_per_s" in outcome else skipped).append(outcome)
    report = {
        "seconds_per_measurement": seconds,
        "python": platform.python_version(),
        "baseline": "json.loads of the same payload",
        "formats": results,
        "skipped": skipped,
    }
    if as_json_output:
        click.echo(json.dumps(report))
    else:
        _print_table(report)


def _bench_one(name: str, decoder: Decoder, seconds: float) -> dict[str, Any]:
    sample = _bench_sample(name, decoder)
    if sample is None:
        return {"source": name, "reason": "its module has no BENCH_SAMPLE (topic, payload) for it"}
    topic, payload = sample
    message = RawMessage(topic, payload, datetime.now(UTC))
    try:
        readings = len(decoder(message))
        calls, elapsed = _time_calls(partial(decoder, message), seconds)
    except DecodeError as exc:
        return {"source": name, "reason": f"its BENCH_SAMPLE does not decode: {exc}"}
    outcome: dict[str, Any] = {
        "source": name,
        "payload_bytes": len(payload),
        "readings_per_message": readings,
        "messages_per_s": calls / elapsed,
        "us_per_message": elapsed / calls * 1e6,
        "baseline_messages_per_s": None,
        "baseline_us_per_message": None,
        "ratio_to_baseline": None,
    }
    try:
        json.loads(payload)
    except ValueError:
        return outcome  # a binary format: json.loads is no baseline for it
    base_calls, base_elapsed = _time_calls(partial(json.loads, payload), seconds)
    outcome["baseline_messages_per_s"] = base_calls / base_elapsed
    outcome["baseline_us_per_message"] = base_elapsed / base_calls * 1e6
    outcome["ratio_to_baseline"] = outcome["us_per_message"] / outcome["baseline_us_per_message"]
    return outcome


def _bench_sample(name: str, decoder: Decoder) -> tuple[str, bytes] | None:
    sample = getattr(inspect.getmodule(decoder), "BENCH_SAMPLE", None)
    if isinstance(sample, Mapping):
        sample = sample.get(name)
    if isinstance(sample, tuple) and len(sample) == 2:
        topic, payload = sample
        if isinstance(topic, str) and isinstance(payload, bytes):
            return topic, payload
    return None


def _time_calls(call: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Call repeatedly for about ``seconds``; return the number of calls and the time they took."""
    # As timeit does, keep the collector out of the measurement; batches keep clock reads rare.
    collecting = gc.isenabled()
    gc.disable()
    try:
        calls, batch = 0, 1
        start = time.perf_counter()
        while True:
            for _ in range(batch):
                call()
            calls += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return calls, elapsed
            if elapsed < seconds / 20:
                batch *= 2
    finally:
        if collecting:
            gc.enable()


def _print_table(report: Mapping[str, Any]) -> None:
    click.echo(
        f"Decoding on one core, {report['seconds_per_measurement']:g} s per measurement,"
        f" Python {report['python']}; baseline: {report['baseline']}."
    )
    click.echo(f"{'source':<16}{'msg/s':>12}{'µs/msg':>10}{'json.loads µs':>15}{'x baseline':>12}{'readings':>10}")
    for row in report["formats"]:
        base = row["baseline_us_per_message"]
        click.echo(
            f"{row['source']:<16}{row['messages_per_s']:>12,.0f}{row['us_per_message']:>10.1f}"
            + (f"{base:>15.2f}{row['ratio_to_baseline']:>11.1f}x" if base is not None else f"{'n/a':>15}{'n/a':>12}")
            + f"{row['readings_per_message']:>10}"
        )
    for row in report["skipped"]:
        click.echo(f"skipped {row['source']}: {row['reason']}")
