"""The alert evaluator: runs the rules against the data up to now, one process at a time, and records what
changed.

``run(dsn, stop, rules)`` loops like the presence resolver (tracking/resolver.py): it takes a PostgreSQL session
advisory lock, so that with several stocktrace processes exactly one evaluates; the others retry every
interval and take over within one when the leader's connection goes (the lock goes with it). Each tick is one
transaction:

1. the rules that are due run (each in a savepoint: a rule that fails is logged and skipped, and its alerts
   stay as they were); each reads the data it needs up to the clock's ``now``, by device time, so late data is
   judged on the next tick and nothing is remembered between ticks but the alerts table;
2. the lifecycle (alerts/lifecycle.py) turns the findings into alert states, holds back what offline devices
   cause, marks what silences match, decides what to tell, writes the alerts and the event log, and hands the
   changes to ``alerts.outbox.enqueue``, all in the same transaction.

Pending timers are stored times (``fires_at``), not timers in memory, so a restart or a new leader carries on
where the last one stopped. The clock is injected (``clock``): the wall clock by default, the devices' own time
with ``alerts.clock.DeviceClock`` (``STOCKTRACE_ALERT_CLOCK=device``, for backlogs and accelerated
simulations), and in tests a virtual clock that runs timelines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from prometheus_client import Counter, Gauge, Histogram

from alerts import outbox, wakeup
from alerts.clock import Clock, DeviceClock, utc_now
from alerts.lifecycle import (
    STORED_COLUMNS,
    Dedup,
    Enqueue,
    Inhibit,
    Notify,
    Record,
    Silence,
    Stage,
    Tracked,
    carry,
    keyed,
    stored_from_row,
    track,
)
from alerts.lifecycle import run as run_stages
from alerts.model import AlertChange, State
from alerts.rules import Conn, Finding, OpenAlert, Rule, Tick, load_topology
from alerts.rules_battery import BatteryLowRule
from alerts.rules_coldchain import LotExposureRule, TemperatureExcursionRule
from alerts.rules_config import RulesConfig
from alerts.rules_devices import DEVICE_OFFLINE, DeviceOfflineRule, SensorStaleRule
from alerts.rules_inventory import InventoryVarianceRule, LowStockRule
from alerts.rules_items import DwellRule, ExpiryRule, ShrinkRule
from alerts.silences import ACTIVE, from_row

log = logging.getLogger(__name__)

# Any 64-bit number unique to stocktrace's evaluator (the resolver's is 0x5E0C_7ACE_0200).
LOCK_KEY: Final = 0x5E0C_7ACE_0300
_RECONNECT_S: Final = 2.0
# Stored alerts resolved this recently are handed to their rule, so that late data can re-open them.
_RECENTLY_RESOLVED: Final = timedelta(days=1)

TICKS: Final = Counter("stocktrace_alerts_evaluator_ticks", "Evaluator ticks committed")
TICK_SECONDS: Final = Histogram(
    "stocktrace_alerts_tick_seconds", "Duration of one evaluation tick (all due rules and the lifecycle)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)  # fmt: skip
RULE_SECONDS: Final = Histogram(
    "stocktrace_alerts_rule_seconds", "Duration of one rule's run", ["rule"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)  # fmt: skip
CHANGES: Final = Counter("stocktrace_alerts_changes", "Alert changes handed to delivery", ["state"])
RULE_ERRORS: Final = Counter("stocktrace_alerts_rule_errors", "Rule runs that failed and were skipped", ["rule"])
LEADER: Final = Gauge("stocktrace_alerts_evaluator_leader", "1 while this process holds the evaluator lock")
_EPOCH: Final = datetime.fromtimestamp(0, UTC)


def all_rules() -> list[Rule]:
    """Every rule, device rules first (the others are held back by what they find)."""
    return [
        DeviceOfflineRule(),
        SensorStaleRule(),
        BatteryLowRule(),
        TemperatureExcursionRule(),
        LotExposureRule(),
        InventoryVarianceRule(),
        LowStockRule(),
        ShrinkRule(),
        DwellRule(),
        ExpiryRule(),
    ]


@dataclass(frozen=True, slots=True)
class RuleRun:
    rule: str
    duration_ms: float
    subjects: int
    findings: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TickReport:
    now: datetime
    duration_ms: float
    runs: list[RuleRun]
    changes: list[AlertChange]
    alerts: list[Tracked] = field(default_factory=list)
    skipped: str | None = None
    """Why nothing was evaluated (the device clock has no reading yet); ``now`` is then the epoch."""

    @property
    def subjects(self) -> int:
        return sum(r.subjects for r in self.runs)


class Evaluator:
    """One evaluation per ``tick``; holds no state between ticks but the configuration."""

    def __init__(
        self,
        config: RulesConfig,
        *,
        rules: Sequence[Rule] | None = None,
        enqueue: Enqueue | None = None,
        clock: Clock | DeviceClock = utc_now,
    ) -> None:
        self.config = config
        self.rules = list(rules) if rules is not None else all_rules()
        self.enqueue: Enqueue = enqueue if enqueue is not None else outbox.enqueue
        self.clock = clock

    async def tick(self, conn: Conn) -> TickReport:
        """Evaluate the due rules at the clock's now and commit the outcome (conn is in autocommit mode)."""
        started = time.perf_counter()
        on_device_time = isinstance(self.clock, DeviceClock)
        now = await self.clock.now(conn) if isinstance(self.clock, DeviceClock) else self.clock()
        if now is None:
            return TickReport(_EPOCH, 0.0, [], [], skipped="no reading with a device time has been ingested yet")
        async with conn.transaction():
            due = await self._due(conn, now)
            names = [name for rule in due for name in rule.alertnames]
            topology = await load_topology(conn)
            tick = Tick(now, self.config, topology, await _open_alerts(conn, names, now), device_time=on_device_time)
            runs, findings = [], []
            for rule in due:
                run, found = await self._evaluate(conn, rule, tick)
                runs.append(run)
                findings += found
            ran = {name for rule, r in zip(due, runs, strict=True) if r.error is None for name in rule.alertnames}
            ran |= {name for rule in self.rules if not _enabled(self.config, rule.name) for name in rule.alertnames}
            tracked = await self._track(conn, ran, findings, now)
            notify = Notify(conn, self.enqueue)
            stages: list[Stage] = [
                Inhibit(_offline(tracked)),
                Silence(await _silences(conn, now), now),
                Dedup(now),
                Record(conn, now, event_log=await _has_event_log(conn)),
                notify,
            ]
            await run_stages(stages, tracked)
            await _record_runs(conn, runs, now)
        duration_ms = (time.perf_counter() - started) * 1000
        TICKS.inc()
        TICK_SECONDS.observe(duration_ms / 1000)
        for change in notify.sent:
            CHANGES.labels(str(change.alert.state)).inc()
        return TickReport(now, duration_ms, runs, list(notify.sent), tracked)

    async def _due(self, conn: Conn, now: datetime) -> list[Rule]:
        cursor = await conn.execute("select rule, evaluated_at from alert_rule_runs")
        last = {row[0]: row[1] for row in await cursor.fetchall()}
        due = []
        for rule in self.rules:
            if not _enabled(self.config, rule.name):
                continue
            previous = last.get(rule.name)
            interval = timedelta(seconds=self.config.interval_s(rule.name))
            if previous is None or previous > now or now - previous >= interval:
                due.append(rule)
        return due

    async def _evaluate(self, conn: Conn, rule: Rule, tick: Tick) -> tuple[RuleRun, list[Finding]]:
        started = time.perf_counter()
        try:
            async with conn.transaction():  # a savepoint: a failing rule undoes only its own writes
                evaluation = await rule.evaluate(conn, tick)
        except Exception as exc:
            RULE_ERRORS.labels(rule.name).inc()
            log.exception("alert rule %s failed; its alerts stay as they were until it runs again", rule.name)
            duration = (time.perf_counter() - started) * 1000
            return RuleRun(rule.name, duration, 0, 0, error=f"{type(exc).__name__}: {str(exc)[:200]}"), []
        duration = (time.perf_counter() - started) * 1000
        RULE_SECONDS.labels(rule.name).observe(duration / 1000)
        return RuleRun(rule.name, duration, evaluation.subjects, len(evaluation.findings)), evaluation.findings

    async def _track(self, conn: Conn, ran: set[str], findings: list[Finding], now: datetime) -> list[Tracked]:
        """The new state of the alerts of the rules that ran, plus the open alerts of the others, unchanged."""
        found = keyed(findings)
        cursor = await conn.execute(
            f"select {STORED_COLUMNS} from alerts where state <> 'resolved' or fingerprint = any(%(keys)s)",
            {"keys": list(found)},
        )
        stored = [stored_from_row(row) for row in await cursor.fetchall()]
        url = self.config.defaults.external_url
        mine = {s.fingerprint: s for s in stored if s.alertname in ran}
        others = [carry(s, now, url) for s in stored if s.alertname not in ran and s.state is not State.RESOLVED]
        return track(found, mine, now, url) + others


def _enabled(config: RulesConfig, name: str) -> bool:
    section: Any = getattr(config, name, None)
    return section is None or section.params.enabled is not False


async def _open_alerts(conn: Conn, alertnames: Sequence[str], now: datetime) -> dict[str, list[OpenAlert]]:
    cursor = await conn.execute(
        """
        select fingerprint, alertname, subject, state, starts_at, ends_at, labels from alerts
        where alertname = any(%(names)s) and (state <> 'resolved' or ends_at >= %(since)s)
        """,
        {"names": list(alertnames), "since": now - _RECENTLY_RESOLVED},
    )
    found: dict[str, list[OpenAlert]] = {}
    for key, name, subject, state, starts_at, ends_at, labels in await cursor.fetchall():
        found.setdefault(name, []).append(OpenAlert(key, subject, state, starts_at, ends_at, labels))
    return found


def _offline(tracked: Iterable[Tracked]) -> Mapping[str, str]:
    """Devices with a DeviceOffline alert pending or firing after this tick, to that alert's fingerprint."""
    return {
        t.alert.labels["device"]: t.alert.fingerprint
        for t in tracked
        if t.alert.name == DEVICE_OFFLINE and t.alert.state is not State.RESOLVED and "device" in t.alert.labels
    }


async def _silences(conn: Conn, now: datetime) -> list[Any]:
    cursor = await conn.execute(ACTIVE, {"now": now})
    return [from_row(*row) for row in await cursor.fetchall()]


async def _has_event_log(conn: Conn) -> bool:
    cursor = await conn.execute(
        "select to_regprocedure('event_log_append(text, text, timestamp with time zone, jsonb)') is not null"
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _record_runs(conn: Conn, runs: Sequence[RuleRun], now: datetime) -> None:
    done = [r for r in runs if r.error is None]
    if not done:
        return
    await conn.execute(
        """
        insert into alert_rule_runs (rule, evaluated_at, duration_ms, subjects, findings)
        select * from unnest(%s::text[], %s::timestamptz[], %s::real[], %s::int[], %s::int[])
        on conflict (rule) do update set evaluated_at = excluded.evaluated_at, duration_ms = excluded.duration_ms,
            subjects = excluded.subjects, findings = excluded.findings
        """,
        (
            [r.rule for r in done],
            [now] * len(done),
            [r.duration_ms for r in done],
            [r.subjects for r in done],
            [r.findings for r in done],
        ),
    )


# ----------------------------------------------------------------------------------------------------
# The loop with leader election


async def run(
    dsn: str,
    stop: asyncio.Event,
    rules: RulesConfig,
    interval_s: float = 1.0,
    *,
    clock: Clock | DeviceClock = utc_now,
    enqueue: Enqueue | None = None,
    evaluator: Evaluator | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
) -> None:
    """Evaluate every ``interval_s`` while this process holds the lock; wait for it otherwise. Returns when
    ``stop`` is set."""
    evaluator = evaluator or Evaluator(rules, enqueue=enqueue, clock=clock)
    if isinstance(evaluator.clock, DeviceClock):
        log.info("alert rules judge the data on the device clock: now is the newest device time ingested")
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                if await _lead(conn, stop, interval_s):
                    await _evaluate(conn, evaluator, stop, interval_s, on_tick, dsn)
        except psycopg.Error as exc:
            LEADER.set(0)
            log.warning("alert evaluator lost its database connection (%s); retrying", str(exc).strip()[:200])
            await _wait(stop, _RECONNECT_S)
        except Exception:
            # A tick that fails rolled back; the evaluator must outlive one bad row, so it starts over.
            LEADER.set(0)
            log.exception("alert evaluation failed; starting over")
            await _wait(stop, _RECONNECT_S)
    LEADER.set(0)


async def _lead(conn: Conn, stop: asyncio.Event, interval_s: float) -> bool:
    """Wait until this connection holds the evaluator lock (True) or ``stop`` is set (False)."""
    while not stop.is_set():
        cursor = await conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,))
        row = await cursor.fetchone()
        if row is not None and row[0]:
            LEADER.set(1)
            log.info("evaluating alert rules (this process holds the evaluator lock)")
            return True
        await _wait(stop, interval_s)
    return False


async def _evaluate(
    conn: Conn, evaluator: Evaluator, stop: asyncio.Event, interval_s: float,
    on_tick: Callable[[TickReport], None] | None, dsn: str,
) -> None:  # fmt: skip
    # Newly stored telemetry or device status cuts the wait short (alerts/wakeup.py).
    async with wakeup.listening(dsn, stop) as news:
        while not stop.is_set():
            report = await evaluator.tick(conn)
            if on_tick is not None:
                on_tick(report)
            await news.wait(stop, max(0.0, interval_s - report.duration_ms / 1000))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
