"""`stocktrace bench ingest`: the ingest path measured end to end, against baselines in the same run.

Every phase goes through the real broker. Publishers are Mosquitto's own C client (``mosquitto_pub -l``, one
message per line) in several processes, fed through pipes, so that Python is not what limits the offered load.
The phases:

- stocktrace: N single-read messages, QoS 1, acknowledged after commit, through the real consumer;
- latency: the same path at a fixed offered rate; each read's time is its publish time, so commit minus read time
  is publish → committed;
- naive: a paho-mqtt consumer doing one INSERT and commit per message (what a hand-built bridge does);
- bare: ``mosquitto_sub`` at QoS 1 with a receive maximum of 65535 that only receives (the broker's ceiling);
- batched: messages carrying 50 reads each.

With tracking on, the resolver runs beside the workers in a process of its own, as the service runs it, so its
folding of sighting deltas and presence work share the machine with ingest. Its ticks are timed: a read is
resolved by the first tick that starts after the read's batch committed, and the latency run reports read →
resolved (the end of that tick) as well; this counts a batch that commits while a tick is starting up one tick
late, so it is an upper bound. The throughput run reports how long after the last commit the resolver had
caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from queue import Empty
from typing import Final

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.consumer import BatchPolicy, Committed, Consumer, shared
from ingest.routes import Router
from ingest.wire import BrokerOptions
from ingest.writer import Writer
from stocktrace import db
from stocktrace.service import writer_steps
from tracking import resolver

_READS_PER_BATCHED_MESSAGE: Final = 50
_PHASE_TIMEOUT_S: Final = 300.0

# A resolver tick: wall-clock start and end, whether it left more to do, and the items it resolved.
_Tick = tuple[float, float, bool, int]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    messages: int = 300_000
    publishers: int = 2
    rate: int = 20_000
    latency_seconds: float = 5.0
    naive_messages: int = 10_000
    batched_messages: int = 10_000
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    workers: int = 1
    tracking: bool = True
    tags: int = 10_000
    resolver: bool = True
    """With tracking, run the resolver beside the workers (off: the ingest step alone; its deltas wait)."""


@dataclass(frozen=True, slots=True)
class BenchResult:
    messages: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    offered_rate: int
    naive_msgs_per_s: float
    bare_msgs_per_s: float
    vs_naive: float
    vs_bare: float
    reads_per_s: float
    batch_max_messages: int
    batch_max_wait_ms: float
    workers: int
    tracking: bool
    tags: int
    resolve_p50_ms: float | None = None
    """Read → resolved by the resolver (the end of the tick that folded it), in the latency run."""
    resolve_p99_ms: float | None = None
    caught_up_ms: float | None = None
    """From the last commit of the throughput run to the end of the resolver tick that had folded everything."""


def _lines(device: str, count: int, tags: int, reads: int = 1) -> Iterator[bytes]:
    """Native-format read messages, one per line. The reads cycle through a population of ``tags`` tags, as a
    reader's antennas see the same tags again and again (0 means every read is of a new tag: the worst case for
    tracking, which keeps one row per tag and location)."""
    tag = uuid.uuid4().int & 0xFFFF_FFFF
    for i in range(count):
        at = 1_700_000_000.0 + i / 1e6
        if reads == 1:
            n = i % tags if tags else i
            body: dict[str, object] = {"epc": f"30{tag:08X}{n:014X}", "antenna": 1, "rssi_dbm": -55.5, "at": at}
        else:
            numbers = [((i * reads + r) % tags if tags else i * reads + r) for r in range(reads)]
            body = {
                "at": at,
                "reads": [{"epc": f"31{tag:08X}{n:014X}", "antenna": 1, "rssi_dbm": -60.0} for n in numbers],
            }
        yield msgspec.json.encode(body) + b"\n"


class Publishers:
    """C publishers (``mosquitto_pub -l``) fed from threads; stdin stays open until `close`.

    mosquitto_pub exits at end of input without waiting for what it still has in flight, so its input is
    closed only once the consumer has everything.
    """

    def __init__(self, config: BenchConfig, topics: list[str]) -> None:
        binary = shutil.which("mosquitto_pub")
        if binary is None:
            raise RuntimeError("mosquitto_pub not found; `make demo` installs mosquitto-clients")
        self._processes = [
            subprocess.Popen(
                [
                    binary,
                    "-h",
                    config.mqtt_host,
                    "-p",
                    str(config.mqtt_port),
                    "-V",
                    "5",
                    "-q",
                    "1",
                    "-M",
                    "1000",
                    "-t",
                    topic,
                    "-l",
                ],
                stdin=subprocess.PIPE,
            )
            for topic in topics
        ]
        self._threads: list[threading.Thread] = []

    def feed(self, chunks_per_publisher: list[Iterator[bytes]]) -> None:
        for process, chunks in zip(self._processes, chunks_per_publisher, strict=True):
            thread = threading.Thread(target=self._write, args=(process, chunks), daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _write(process: subprocess.Popen[bytes], chunks: Iterator[bytes]) -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.flush()

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        for process in self._processes:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert process.stdin is not None
                process.stdin.close()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _chunked(lines: Iterator[bytes], size: int = 2000) -> Iterator[bytes]:
    buffer: list[bytes] = []
    for line in lines:
        buffer.append(line)
        if len(buffer) >= size:
            yield b"".join(buffer)
            buffer.clear()
    if buffer:
        yield b"".join(buffer)


def _paced(device: str, rate: float, seconds: float, tags: int) -> Iterator[bytes]:
    """Lines at ``rate`` per second for ``seconds``, each stamped with the time it is handed to the publisher."""
    started = time.time()
    sent = 0
    total = int(rate * seconds)
    tag = uuid.uuid4().int & 0xFFFF_FFFF
    while sent < total:
        due = min(total, int((time.time() - started) * rate) + 1)
        if due <= sent:
            time.sleep(0.002)
            continue
        now = time.time()
        yield b"".join(
            msgspec.json.encode(
                {"epc": f"32{tag:08X}{(i % tags if tags else i):014X}", "antenna": 1, "rssi_dbm": -55.5, "at": now}
            )
            + b"\n"
            for i in range(sent, due)
        )
        sent = due


class _Counter:
    """Counts committed messages and, optionally, keeps the read times of every commit."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.messages = 0
        self.reads = 0
        self.last_commit_at = 0.0
        self.commits: list[tuple[float, np.ndarray]] = []

    def add(self, messages: int, reads: int, committed_at: float, read_at: np.ndarray | None) -> bool:
        """Count one commit; True once the target is reached."""
        self.messages += messages
        self.reads += reads
        self.last_commit_at = max(self.last_commit_at, committed_at)
        if read_at is not None:
            self.commits.append((committed_at, read_at))
        return self.messages >= self.target

    def commit_latencies_ms(self) -> np.ndarray:
        return np.concatenate([at - read_at for at, read_at in self.commits]) * 1000

    def resolve_latencies_ms(self, ticks: list[_Tick]) -> np.ndarray:
        """Read → end of the first complete tick that started after the read's commit."""
        complete = [(start, end) for start, end, more, _ in ticks if not more]
        starts = np.array([start for start, _ in complete])
        ends = np.array([end for _, end in complete])
        latencies = []
        for at, read_at in self.commits:
            index = int(np.searchsorted(starts, at, side="right"))
            if index < len(ends):
                latencies.append(ends[index] - read_at)
        return np.concatenate(latencies) * 1000 if latencies else np.zeros(0)


class _TimedResolver(resolver.Resolver):
    """The resolver, reporting the wall-clock span of every tick."""

    def __init__(self, ticks: multiprocessing.Queue[_Tick]) -> None:
        super().__init__()
        self._ticks = ticks

    async def tick(self, conn: resolver.Conn) -> resolver.TickReport:
        started = time.time()
        report = await super().tick(conn)
        self._ticks.put((started, time.time(), report.more, report.items))
        return report


def _resolve(database_url: str, ticks: multiprocessing.Queue[_Tick], stop: EventType) -> None:
    """The bench's resolver process, as the service runs it beside the workers."""

    async def run() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(resolver.run(database_url, stopping, resolver=_TimedResolver(ticks)))
        await asyncio.to_thread(stop.wait)
        stopping.set()
        await task

    asyncio.run(run())


def _consume(
    config: BenchConfig, client_id: str, topics: list[str], keep_latency: bool,
    commits: multiprocessing.Queue[tuple[int, int, float, np.ndarray | None]], ready: EventType, stop: EventType,
) -> None:  # fmt: skip
    """A bench worker process: the service's consumer, reporting every commit to the parent."""

    def on_commit(committed: Committed) -> None:
        reads = committed.rows.rfid_reads
        read_at = None
        if keep_latency and reads:
            read_at = np.fromiter((row[0].timestamp() for row in reads), dtype=np.float64, count=len(reads))
        commits.put((committed.messages, len(reads), committed.committed_at.timestamp(), read_at))

    async def consume() -> None:
        consumer = Consumer(
            BrokerOptions(config.mqtt_host, config.mqtt_port, client_id, clean_start=True, session_expiry_s=300),
            topics,
            Router([]),
            Writer(config.database_url, writer_steps() if config.tracking else ()),
            config.batch,
            on_commit=on_commit,
            registry_url=config.database_url,
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(consumer.run(stopping))
        await asyncio.wait_for(consumer.connected.wait(), 10)
        ready.set()
        await asyncio.to_thread(stop.wait)
        stopping.set()
        await task

    asyncio.run(consume())


async def _through_stocktrace(
    config: BenchConfig, run: str, lines_for: Callable[[int], Iterator[bytes]], counter: _Counter,
    keep_latency: bool = False, ticks: list[_Tick] | None = None,
) -> float:  # fmt: skip
    """Publish through the C publishers into the real consumer in worker processes of its own (as the
    service runs it), with the resolver beside them when tracking; seconds from the first byte published to the
    last commit. The resolver's ticks go into ``ticks`` until one has caught up with the last commit."""
    topics = [f"stocktrace/bench-{run}-{p}/reads" for p in range(config.publishers)]
    _register_readers(config.database_url, topics)
    context = multiprocessing.get_context("spawn")
    commits: multiprocessing.Queue[tuple[int, int, float, np.ndarray | None]] = context.Queue()
    stop = context.Event()
    tick_queue: multiprocessing.Queue[_Tick] = context.Queue()
    resolving = context.Event()
    resolver_process = None
    if config.tracking and config.resolver:
        resolver_process = context.Process(target=_resolve, args=(config.database_url, tick_queue, resolving))
        resolver_process.start()
    workers = []
    for index in range(config.workers):
        ready = context.Event()
        process = context.Process(
            target=_consume,
            args=(config, f"stocktrace-bench-{run}-{index}", shared(topics, f"bench-{run}"), keep_latency, commits,
                  ready, stop),
        )  # fmt: skip
        process.start()
        workers.append((process, ready))
    for process, ready in workers:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError(f"bench worker {process.name} did not connect (exit code {process.exitcode})")
    publishers = Publishers(config, topics)
    started = time.perf_counter()
    publishers.feed([lines_for(p) for p in range(config.publishers)])
    try:
        deadline = started + _PHASE_TIMEOUT_S
        while not counter.add(*await asyncio.to_thread(commits.get, True, max(0.1, deadline - time.perf_counter()))):
            pass
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        for process, _ in workers:
            await asyncio.to_thread(process.join, 30)
        await asyncio.to_thread(publishers.close)
        if resolver_process is not None:
            await _until_caught_up(tick_queue, counter.last_commit_at, ticks if ticks is not None else [])
            resolving.set()
            await asyncio.to_thread(resolver_process.join, 30)
    return elapsed


async def _until_caught_up(queue: multiprocessing.Queue[_Tick], last_commit_at: float, ticks: list[_Tick]) -> None:
    """Collect ticks until a complete one started after the last commit (or the phase's time is up)."""
    deadline = time.monotonic() + _PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            tick = await asyncio.to_thread(queue.get, True, 1.0)
        except Empty:
            continue
        ticks.append(tick)
        started, _, more, _ = tick
        if started > last_commit_at and not more:
            return


def _naive(config: BenchConfig, run: str) -> float:
    """One INSERT and commit per message, acknowledged by paho after the callback returns."""
    topic = f"stocktrace/naive-{run}/reads"
    count = config.naive_messages
    received = threading.Event()
    state = {"n": 0}
    conn = psycopg.connect(config.database_url, autocommit=True)

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        body = msgspec.json.decode(message.payload)
        conn.execute(
            "insert into rfid_reads (read_at, device_id, antenna, epc, rssi_dbm, received_at)"
            " values (to_timestamp(%s), %s, %s, %s, %s, now()) on conflict do nothing",
            (body["at"], "naive", body["antenna"], body["epc"], body["rssi_dbm"]),
        )
        state["n"] += 1
        if state["n"] >= count:
            received.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{run}", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # untyped in paho
    properties.ReceiveMaximum = 65535
    client.connect(config.mqtt_host, config.mqtt_port, properties=properties)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(0.3)
    publishers = Publishers(config, [topic])
    started = time.perf_counter()
    publishers.feed([_chunked(_lines("naive", count, 0))])
    received.wait(_PHASE_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    publishers.close()
    client.loop_stop()
    client.disconnect()
    conn.close()
    return state["n"] / elapsed


def _bare(config: BenchConfig, run: str) -> float:
    """The broker's delivery rate to a C subscriber that does nothing with the messages."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise RuntimeError("mosquitto_sub not found; `make demo` installs mosquitto-clients")
    count = config.messages
    topics = [f"stocktrace/bare-{run}-{p}/reads" for p in range(config.publishers)]
    subscriber = subprocess.Popen(
        [binary, "-h", config.mqtt_host, "-p", str(config.mqtt_port), "-V", "5", "-q", "1",
         "-D", "connect", "receive-maximum", "65535", *[a for t in topics for a in ("-t", t)], "-C", str(count)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    publishers = Publishers(config, topics)
    started = time.perf_counter()
    per = count // config.publishers
    publishers.feed(
        [
            _chunked(_lines("bare", per + (count - per * config.publishers if p == 0 else 0), config.tags))
            for p in range(config.publishers)
        ]
    )
    try:
        subscriber.wait(_PHASE_TIMEOUT_S)
    finally:
        elapsed = time.perf_counter() - started
        subscriber.kill()
        publishers.close()
    return count / elapsed


def _reset(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute(
            "select string_agg(quote_ident(tablename), ', ') from pg_tables where schemaname = 'public'"
            " and tablename <> 'schema_migrations'"
        ).fetchone()
        assert tables is not None
        conn.execute(f"truncate {tables[0]} restart identity cascade")


def _register_readers(database_url: str, topics: list[str]) -> None:
    """Register the publishers as readers whose antenna 1 covers one zone, so that tracking places their reads."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into locations (id, site_id, kind) values ('bench-site', 'bench-site', 'site')"
            " on conflict do nothing"
        )
        conn.execute(
            "insert into locations (id, site_id, parent_id, kind)"
            " values ('bench-zone', 'bench-site', 'bench-site', 'zone')"
            " on conflict do nothing"
        )
        for topic in topics:
            device = topic.split("/")[1]
            conn.execute(
                "insert into devices (id, kind, source, location_id) values (%s, 'rfid_reader', 'native', 'bench-zone')"
                " on conflict do nothing",
                (device,),
            )
            conn.execute(
                "insert into antennas (device_id, antenna, location_id) values (%s, 1, 'bench-zone')"
                " on conflict do nothing",
                (device,),
            )


def prepare_database(server_url: str, name: str) -> str:
    """A database of its own for the benchmark (it truncates tables), created and migrated if needed."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
            conn.execute(f'create database "{name}"')
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    db.migrate(url)
    return url


async def run_benchmark(config: BenchConfig, progress: Callable[[str], None]) -> BenchResult:
    run = uuid.uuid4().hex[:8]
    per = config.messages // config.publishers

    progress(
        f"stocktrace: {config.messages:,} single-read messages from {config.publishers} C publishers"
        f" into {config.workers} worker process(es) ..."
    )
    _reset(config.database_url)
    counter = _Counter(per * config.publishers)
    throughput_ticks: list[_Tick] = []
    elapsed = await _through_stocktrace(
        config, f"{run}t", lambda p: _chunked(_lines(f"t{p}", per, config.tags)), counter, ticks=throughput_ticks
    )
    msgs_per_s = counter.messages / elapsed
    progress(f"  {msgs_per_s:,.0f} msg/s")
    caught_up_ms = None
    if config.tracking and throughput_ticks:
        caught_up_ms = (throughput_ticks[-1][1] - counter.last_commit_at) * 1000
        progress(
            f"  resolver: {_tick_summary(throughput_ticks)}; caught up {caught_up_ms:,.0f} ms after the last commit"
        )

    progress(f"latency: {config.rate:,} msg/s offered for {config.latency_seconds:g} s ...")
    _reset(config.database_url)
    rate_each = config.rate / config.publishers
    latency = _Counter(int(rate_each * config.latency_seconds) * config.publishers)
    latency_ticks: list[_Tick] = []
    await _through_stocktrace(
        config,
        f"{run}l",
        lambda p: _paced(f"l{p}", rate_each, config.latency_seconds, config.tags),
        latency,
        keep_latency=True,
        ticks=latency_ticks,
    )
    p50, p99 = (float(v) for v in np.percentile(latency.commit_latencies_ms(), [50, 99]))
    progress(f"  publish → committed: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    resolve_p50 = resolve_p99 = None
    resolved = latency.resolve_latencies_ms(latency_ticks)
    if config.tracking and len(resolved):
        resolve_p50, resolve_p99 = (float(v) for v in np.percentile(resolved, [50, 99]))
        progress(f"  resolver: {_tick_summary(latency_ticks)}")
        progress(f"  read → resolved: p50 {resolve_p50:.0f} ms, p99 {resolve_p99:.0f} ms")

    progress(f"batched: {config.batched_messages:,} messages of {_READS_PER_BATCHED_MESSAGE} reads ...")
    _reset(config.database_url)
    per_batched = config.batched_messages // config.publishers
    batched = _Counter(per_batched * config.publishers)
    elapsed = await _through_stocktrace(
        config,
        f"{run}b",
        lambda p: _chunked(_lines(f"b{p}", per_batched, config.tags, _READS_PER_BATCHED_MESSAGE), 200),
        batched,
    )
    reads_per_s = batched.reads / elapsed
    progress(f"  {reads_per_s:,.0f} reads/s")

    progress(f"naive: {config.naive_messages:,} messages, one INSERT and commit each ...")
    _reset(config.database_url)
    naive = await asyncio.to_thread(_naive, config, run)
    progress(f"  {naive:,.0f} msg/s")

    progress(f"bare: {config.messages:,} messages to mosquitto_sub ...")
    bare = await asyncio.to_thread(_bare, config, run)
    progress(f"  {bare:,.0f} msg/s")
    _reset(config.database_url)

    return BenchResult(
        messages=config.messages,
        msgs_per_s=round(msgs_per_s, 1),
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        offered_rate=config.rate,
        naive_msgs_per_s=round(naive, 1),
        bare_msgs_per_s=round(bare, 1),
        vs_naive=round(msgs_per_s / naive, 2),
        vs_bare=round(msgs_per_s / bare, 3),
        reads_per_s=round(reads_per_s, 1),
        batch_max_messages=config.batch.max_messages,
        batch_max_wait_ms=config.batch.max_wait_s * 1000,
        workers=config.workers,
        tracking=config.tracking,
        tags=config.tags,
        resolve_p50_ms=None if resolve_p50 is None else round(resolve_p50, 1),
        resolve_p99_ms=None if resolve_p99 is None else round(resolve_p99, 1),
        caught_up_ms=None if caught_up_ms is None else round(caught_up_ms, 1),
    )


def _tick_summary(ticks: list[_Tick]) -> str:
    seconds = np.array([end - start for start, end, _, _ in ticks])
    items = sum(tick[3] for tick in ticks)
    mean_ms, max_ms = seconds.mean() * 1000, seconds.max() * 1000
    return f"{len(ticks)} ticks of {mean_ms:,.0f} ms on average (max {max_ms:,.0f}), {items:,} items"


def result_json(result: BenchResult) -> str:
    return msgspec.json.encode({**asdict(result), "measured_at": datetime.now(UTC).isoformat()}).decode()
