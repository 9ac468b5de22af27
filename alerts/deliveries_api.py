"""HTTP endpoints of alert delivery: what was owed to whom, every attempt, retrying what failed, and the alert
groups whose next message is waiting."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from alerts.outbox import NOTIFY_CHANNEL

router = APIRouter(tags=["alerts"])

DeliveryState = Literal["pending", "sent", "failed"]


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool, Depends(get_pool)]
DeliveryId = Annotated[int, Path(ge=1)]


class Delivery(BaseModel):
    id: int
    receiver: str
    seq: int = Field(description="Position in the receiver's queue; deliveries leave in this order")
    kind: str = Field(description="webhook, slack, teams, pagerduty or grafana")
    state: DeliveryState
    status: Literal["firing", "resolved"]
    group_key: str
    fingerprints: list[str] = Field(description="The alerts it tells about")
    idempotency_key: str = Field(description="The same on every attempt; receivers can drop repeats by it")
    created_at: datetime
    due_at: datetime = Field(description="When the next attempt is due (pending deliveries)")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    sent_at: datetime | None
    failed_at: datetime | None


class Attempt(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = Field(description="None when no response came (timeout, connection refused)")
    outcome: Literal["sent", "retry", "failed"]
    error: str | None
    retry_at: datetime | None


class DeliveryDetail(Delivery):
    payload: Any = Field(description="The body as rendered (secrets such as routing keys are added when sent)")
    attempt_log: list[Attempt]


_COLUMNS = """
    id, receiver, seq, kind, state, status, group_key, fingerprints, idempotency_key::text as idempotency_key,
    created_at, due_at, attempts, last_status_code, last_error, sent_at, failed_at
"""


class AlertGroup(BaseModel):
    receiver: str
    group_key: str = Field(description="Alertmanager's groupKey: the route and the group labels")
    group_labels: dict[str, str]
    alerts: int = Field(description="Alerts in the group: firing, or resolved and not yet told")
    waiting: int = Field(description="Alerts whose change is not yet sent; they go out at flush_at")
    flush_at: datetime | None = Field(
        description="When the group's next message is due (group_wait, group_interval or a repeat); null: none"
    )
    notified_at: datetime | None = Field(description="When the group's last message was made")


@router.get(
    "/alert-groups",
    response_model=list[AlertGroup],
    summary="Alert groups, the next due first",
    description=(
        "The groups of the routes file (group_by, group_wait, group_interval, repeat_interval): which alerts each "
        "receiver is told about together, and when each group's next message is made. A message, once made, is "
        "a delivery (GET /deliveries)."
    ),
)
async def list_alert_groups(
    pool: Pool,
    receiver: Annotated[str | None, Query(max_length=200)] = None,
    due: Annotated[bool, Query(description="Only groups with a message due")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertGroup]:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            """
            select g.receiver, g.group_key, g.group_labels, count(m.fingerprint) as alerts,
                   count(m.fingerprint) filter (where m.changed) as waiting, g.flush_at, g.notified_at
            from alert_groups g
            left join alert_group_alerts m on m.receiver = g.receiver and m.group_key = g.group_key
            where (%(receiver)s::text is null or g.receiver = %(receiver)s)
              and (not %(due)s or g.flush_at is not null)
            group by g.receiver, g.group_key
            order by g.flush_at nulls last, g.receiver, g.group_key
            limit %(limit)s
            """,
            {"receiver": receiver, "due": due, "limit": limit},
        )
        return [AlertGroup(**row) for row in await cursor.fetchall()]


@router.get("/deliveries", response_model=list[Delivery], summary="Alert deliveries, newest first")
async def list_deliveries(
    pool: Pool,
    state: DeliveryState | None = None,
    receiver: Annotated[str | None, Query(max_length=200)] = None,
    fingerprint: Annotated[str | None, Query(max_length=64, description="Only deliveries about this alert")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(description="Page: only deliveries with a smaller id")] = None,
) -> list[Delivery]:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            f"""
            select {_COLUMNS} from deliveries
            where (%(state)s::text is null or state = %(state)s)
              and (%(receiver)s::text is null or receiver = %(receiver)s)
              and (%(fingerprint)s::text is null or fingerprints @> array[%(fingerprint)s::text])
              and (%(before)s::bigint is null or id < %(before)s)
            order by id desc limit %(limit)s
            """,
            {"state": state, "receiver": receiver, "fingerprint": fingerprint, "before": before_id, "limit": limit},
        )
        return [Delivery(**row) for row in await cursor.fetchall()]


@router.get(
    "/deliveries/{delivery_id}", response_model=DeliveryDetail, summary="One delivery, its payload and attempts"
)
async def get_delivery(pool: Pool, delivery_id: DeliveryId) -> DeliveryDetail:
    async with pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(f"select {_COLUMNS}, payload from deliveries where id = %s", (delivery_id,))
        row = await cursor.fetchone()
        if row is None:
            raise HTTPException(404, f"no delivery {delivery_id}")
        await cursor.execute(
            "select attempt, started_at, duration_ms, status_code, outcome, error, retry_at"
            " from delivery_attempts where delivery_id = %s order by attempt",
            (delivery_id,),
        )
        attempts = [Attempt(**attempt) for attempt in await cursor.fetchall()]
    return DeliveryDetail(**row, attempt_log=attempts)


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=Delivery,
    summary="Send a failed delivery again",
    description=(
        "Puts a failed delivery back in its receiver's queue, due now, with a fresh retry budget (max_age and "
        "max_attempts count again from now). It goes out before the receiver's other pending deliveries, since "
        "it is older than they are. 409 if the delivery is not failed."
    ),
)
async def retry_delivery(pool: Pool, delivery_id: DeliveryId) -> Delivery:
    async with pool.connection() as conn, conn.transaction():
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            f"""
            update deliveries set state = 'pending', due_at = now(), retry_since = now(), budget_attempts = 0,
                   failed_at = null
            where id = %s and state = 'failed'
            returning {_COLUMNS}
            """,
            (delivery_id,),
        )
        row = await cursor.fetchone()
        if row is None:
            await cursor.execute("select state from deliveries where id = %s", (delivery_id,))
            found = await cursor.fetchone()
            if found is None:
                raise HTTPException(404, f"no delivery {delivery_id}")
            raise HTTPException(409, f"delivery {delivery_id} is {found['state']}; only failed deliveries are retried")
        await cursor.execute("select pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return Delivery(**row)
