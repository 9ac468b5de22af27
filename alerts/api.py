"""REST endpoints for alerts and silences; the app mounts ``router`` under /api/v1.

- ``GET /alerts``: alerts, newest first, filtered by state, severity and label matchers (Alertmanager's syntax,
  ``filter=location=~"cold-room-.*"``; the regex is PostgreSQL's, anchored at both ends), a page at a time
  (``next_cursor``). Each shows whether it is held back (``inhibited_by``) or silenced (``silenced_by``).
- ``GET /alerts/{fingerprint}``: one alert and its recent changes (from the event log).
- ``POST /alerts/{fingerprint}/ack``: who acknowledges it and why; an acknowledged alert is not repeated. It
  lasts until the alert resolves. ``DELETE`` takes the acknowledgement back.
- ``POST /silences``, ``GET /silences``, ``GET /silences/{id}``, ``DELETE /silences/{id}`` (expires it now; it
  stays listed).

Unknown alerts and silences are 404; invalid input is 422 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from alerts.model import Severity, State
from alerts.routes import Matcher, parse_matcher
from alerts.silences import MatcherIn, SilenceIn, SilenceOut, matcher_json

router = APIRouter(tags=["alerts"])


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    """The app's connection pool, opened in its lifespan (stocktrace/db.py create_pool)."""
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]
FingerprintPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", examples=["5c38cc4209f73f11"])]

_ALERT_EXAMPLE: Final[dict[str, Any]] = {
    "fingerprint": "5c38cc4209f73f11",
    "alertname": "TemperatureExcursion",
    "subject": "cold-room-2",
    "severity": "critical",
    "state": "firing",
    "labels": {"alertname": "TemperatureExcursion", "severity": "critical", "subject": "cold-room-2",
               "location": "cold-room-2", "site": "hamburg"},
    "annotations": {"summary": "cold-room-2 has been above 8 °C for 15 minutes, 340 items of lot L-88 inside"},
    "starts_at": "2026-03-02T09:00:00Z",
    "fires_at": "2026-03-02T09:15:00Z",
    "ends_at": None,
    "updated_at": "2026-03-02T09:15:01Z",
    "group_key": '{alertname="TemperatureExcursion", site="hamburg"}',
    "inhibited_by": [],
    "silenced_by": [],
    "suppressed": False,
    "depends_on": ["probe-1"],
    "notified_at": "2026-03-02T09:15:01Z",
    "acknowledgement": None,
}  # fmt: skip


class Acknowledgement(BaseModel):
    by: str
    at: datetime
    comment: str


class AlertOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ALERT_EXAMPLE]})

    fingerprint: str
    alertname: str
    subject: str
    severity: Severity
    state: State
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime = Field(description="When the condition began")
    fires_at: datetime | None = Field(description="When it fired or fires (pending until then)")
    ends_at: datetime | None
    updated_at: datetime
    group_key: str = Field(description="The labels it is grouped by for delivery")
    inhibited_by: list[str] = Field(description="DeviceOffline alerts holding it back")
    silenced_by: list[int] = Field(description="Silences that match it")
    suppressed: bool = Field(description="Held back or silenced: nothing is sent for it")
    depends_on: list[str] = Field(description="Devices whose being offline holds it back")
    notified_at: datetime | None = Field(description="When delivery was last told it fires")
    acknowledgement: Acknowledgement | None


class Change(BaseModel):
    at: datetime
    state: str
    previous: str | None
    reason: str


class AlertDetail(AlertOut):
    history: list[Change] = Field(description="Its latest changes, newest first (from the event log)")


class AlertPage(BaseModel):
    alerts: list[AlertOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last one")


class AckIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"by": "j.doe", "comment": "door closed, watching it"}]}
    )

    by: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)


_COLUMNS: Final = sql.SQL(
    "fingerprint, alertname, subject, severity, state, labels, annotations, starts_at, fires_at, ends_at,"
    " updated_at, group_key, inhibited_by, silenced_by, depends_on, notified_at, acknowledged_at, acknowledged_by,"
    " ack_comment"
)


def _alert(row: dict[str, Any]) -> AlertOut:
    ack = None
    if row["acknowledged_at"] is not None:
        ack = Acknowledgement(by=row["acknowledged_by"], at=row["acknowledged_at"], comment=row["ack_comment"] or "")
    return AlertOut(
        **{k: v for k, v in row.items() if k not in ("acknowledged_at", "acknowledged_by", "ack_comment")},
        suppressed=bool(row["inhibited_by"] or row["silenced_by"]),
        acknowledgement=ack,
    )


# ----------------------------------------------------------------------------------------------------
# Alerts


@router.get("/alerts", summary="Alerts, newest first, filtered")
async def list_alerts(
    pool: Pool,
    state: Annotated[list[State] | None, Query(description="Default: pending and firing")] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    alertname: Annotated[str | None, Query(max_length=200)] = None,
    matcher: Annotated[
        list[str] | None,
        Query(alias="filter", description='Label matchers, all must match: site="hamburg", location=~"cold-.*"'),
    ] = None,
    suppressed: Annotated[bool | None, Query(description="Only held back or silenced ones (true), or not")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> AlertPage:
    conditions = [
        sql.SQL("state = any({})").format(sql.Literal([str(s) for s in state or (State.PENDING, State.FIRING)])),
        *_matchers(_parse_filters(matcher or [])),
    ]
    if severity:
        conditions.append(sql.SQL("severity = any({})").format(sql.Literal([str(s) for s in severity])))
    if alertname is not None:
        conditions.append(sql.SQL("alertname = {}").format(sql.Literal(alertname)))
    if suppressed is not None:
        held = sql.SQL("(cardinality(inhibited_by) > 0 or cardinality(silenced_by) > 0)")
        conditions.append(held if suppressed else sql.SQL("not ") + held)
    if cursor is not None:
        at, key = _decode(cursor)
        conditions.append(sql.SQL("(starts_at, fingerprint) < ({}, {})").format(sql.Literal(at), sql.Literal(key)))
    query = sql.SQL("select {} from alerts where {} order by starts_at desc, fingerprint desc limit {}").format(
        _COLUMNS, sql.SQL(" and ").join(conditions), sql.Literal(limit + 1)
    )
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query)
        rows = await cur.fetchall()
    page = [_alert(row) for row in rows[:limit]]
    following = _encode(page[-1].starts_at, page[-1].fingerprint) if len(rows) > limit and page else None
    return AlertPage(alerts=page, next_cursor=following)


@router.get("/alerts/{fingerprint}", summary="One alert and its latest changes")
async def read_alert(fingerprint: FingerprintPath, pool: Pool) -> AlertDetail:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        found = await _one(cur, fingerprint)
        history: list[Change] = []
        if await _has_event_log(cur):
            await cur.execute(
                "select event_time, payload from event_log where kind = 'alert' and subject = %s"
                " order by seq desc limit 50",
                (fingerprint,),
            )
            history = [_change(row) for row in await cur.fetchall()]
    return AlertDetail(**found.model_dump(), history=history)


@router.post("/alerts/{fingerprint}/ack", summary="Acknowledge an alert: it is not repeated while it fires")
async def acknowledge(fingerprint: FingerprintPath, ack: AckIn, pool: Pool) -> AlertOut:
    async with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        found = await _one(cur, fingerprint, lock=True)
        if found.state is State.RESOLVED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"alert {fingerprint} is resolved: nothing to acknowledge")
        await cur.execute(
            "update alerts set acknowledged_at = now(), acknowledged_by = %s, ack_comment = %s, updated_at = now()"
            " where fingerprint = %s",
            (ack.by, ack.comment, fingerprint),
        )
        await _log(cur, found, "acknowledged", f"acknowledged by {ack.by}: {ack.comment}".rstrip(": "))
        return await _one(cur, fingerprint)


@router.delete("/alerts/{fingerprint}/ack", summary="Take an acknowledgement back: repeats resume")
async def unacknowledge(fingerprint: FingerprintPath, pool: Pool) -> AlertOut:
    async with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        found = await _one(cur, fingerprint, lock=True)
        await cur.execute(
            "update alerts set acknowledged_at = null, acknowledged_by = null, ack_comment = null,"
            " updated_at = now() where fingerprint = %s",
            (fingerprint,),
        )
        await _log(cur, found, "unacknowledged", "acknowledgement taken back")
        return await _one(cur, fingerprint)


async def _one(cur: Any, fingerprint: str, *, lock: bool = False) -> AlertOut:
    await cur.execute(
        sql.SQL("select {} from alerts where fingerprint = %s{}").format(
            _COLUMNS, sql.SQL(" for update") if lock else sql.SQL("")
        ),
        (fingerprint,),
    )
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert with fingerprint {fingerprint}")
    return _alert(row)


async def _has_event_log(cur: Any) -> bool:
    await cur.execute(
        "select to_regprocedure('event_log_append(text, text, timestamp with time zone, jsonb)') is not null as found"
    )
    row = await cur.fetchone()
    return bool(row and row["found"])


async def _log(cur: Any, alert: AlertOut, what: str, reason: str) -> None:
    if not await _has_event_log(cur):
        return
    payload = {"alertname": alert.alertname, "subject": alert.subject, "state": str(alert.state),
               "previous": str(alert.state), "reason": reason, "event": what, "labels": alert.labels}  # fmt: skip
    await cur.execute(
        "select event_log_append('alert', %s, now(), %s::jsonb)", (alert.fingerprint, json.dumps(payload))
    )


def _change(row: dict[str, Any]) -> Change:
    payload = row["payload"]
    return Change(at=row["event_time"], state=payload.get("state", ""), previous=payload.get("previous"),
                  reason=payload.get("reason", ""))  # fmt: skip


def _parse_filters(texts: list[str]) -> list[Matcher]:
    found = []
    for index, text in enumerate(texts):
        try:
            found.append(parse_matcher(text))
        except ValueError as exc:
            detail = [{"loc": ["query", "filter", index], "msg": str(exc), "type": "value_error"}]
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from exc
    return found


def _matchers(matchers: list[Matcher]) -> list[sql.Composable]:
    """Matchers as SQL over the labels column; a missing label is the empty string, as in Alertmanager."""
    found: list[sql.Composable] = []
    for m in matchers:
        value = sql.SQL("coalesce(labels ->> {}, '')").format(sql.Literal(m.name))
        if m.op == "=" and m.value:
            found.append(sql.SQL("labels @> {}::jsonb").format(sql.Literal(json.dumps({m.name: m.value}))))
        elif m.op in ("=", "!="):
            found.append(
                sql.SQL("{} {} {}").format(value, sql.SQL(m.op if m.op == "=" else "<>"), sql.Literal(m.value))
            )
        else:
            pattern = sql.Literal(f"^(?:{m.value})$")
            found.append(sql.SQL("{} {} {}").format(value, sql.SQL("~" if m.op == "=~" else "!~"), pattern))
    return found


def _encode(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode()


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        at, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), key
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        detail = [{"loc": ["query", "cursor"], "msg": "not a cursor this API gave out", "type": "value_error"}]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from exc


# ----------------------------------------------------------------------------------------------------
# Silences

_SILENCE_COLUMNS: Final = "id, matchers, starts_at, ends_at, created_by, comment, created_at"


def _silence(row: dict[str, Any], now: datetime) -> SilenceOut:
    status_: Literal["pending", "active", "expired"] = (
        "pending" if row["starts_at"] > now else ("active" if row["ends_at"] > now else "expired")
    )
    return SilenceOut(**{**row, "matchers": [MatcherIn(**m) for m in row["matchers"]]}, status=status_)


@router.post("/silences", status_code=status.HTTP_201_CREATED, summary="Silence the alerts its matchers match")
async def create_silence(silence: SilenceIn, pool: Pool) -> SilenceOut:
    now = datetime.now(UTC)
    starts_at = silence.starts_at or now
    if silence.ends_at <= max(starts_at, now):
        detail = [
            {"loc": ["body", "ends_at"], "msg": "must be after starts_at and in the future", "type": "value_error"}
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)
    matchers = json.dumps([matcher_json(m) for m in silence.parsed()])
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"insert into silences (matchers, starts_at, ends_at, created_by, comment)"
            f" values (%s::jsonb, %s, %s, %s, %s) returning {_SILENCE_COLUMNS}",
            (matchers, starts_at, silence.ends_at, silence.created_by, silence.comment),
        )
        row = await cur.fetchone()
    assert row is not None
    return _silence(row, now)


@router.get("/silences", summary="Silences, newest first")
async def list_silences(
    pool: Pool,
    state: Annotated[Literal["pending", "active", "expired"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SilenceOut]:
    now = datetime.now(UTC)
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""
            select {_SILENCE_COLUMNS} from silences
            where %(state)s::text is null
               or (%(state)s = 'pending' and starts_at > %(now)s)
               or (%(state)s = 'active' and starts_at <= %(now)s and ends_at > %(now)s)
               or (%(state)s = 'expired' and ends_at <= %(now)s)
            order by id desc limit %(limit)s
            """,
            {"state": state, "now": now, "limit": limit},
        )
        return [_silence(row, now) for row in await cur.fetchall()]


@router.get("/silences/{silence_id}", summary="One silence")
async def read_silence(silence_id: Annotated[int, Path(ge=1)], pool: Pool) -> SilenceOut:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"select {_SILENCE_COLUMNS} from silences where id = %s", (silence_id,))
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no silence {silence_id}")
    return _silence(row, datetime.now(UTC))


@router.delete("/silences/{silence_id}", summary="Expire a silence now (it stays listed)")
async def expire_silence(silence_id: Annotated[int, Path(ge=1)], pool: Pool) -> SilenceOut:
    now = datetime.now(UTC)
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"update silences set ends_at = least(ends_at, %(now)s), starts_at = least(starts_at, %(now)s),"
            f" updated_at = %(now)s where id = %(id)s returning {_SILENCE_COLUMNS}",
            {"now": now, "id": silence_id},
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no silence {silence_id}")
    return _silence(row, now)
