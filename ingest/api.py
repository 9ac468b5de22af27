"""HTTP endpoints of the ingest stage: throughput and the dead letters."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

router = APIRouter(tags=["ingest"])


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool, Depends(get_pool)]


class DeadLetter(BaseModel):
    id: int
    received_at: datetime
    topic: str
    error: str = Field(description="Why the payload could not be stored")
    payload_base64: str = Field(description="The payload as received (the first 1 KiB if it was oversized)")


class IngestStats(BaseModel):
    rfid_reads_last_minute: int
    telemetry_last_minute: int
    dead_letters_last_hour: int
    devices_seen_last_5_minutes: int
    newest_read_at: datetime | None


@router.get("/ingest/stats", response_model=IngestStats, summary="What arrived recently")
async def ingest_stats(pool: Pool) -> IngestStats:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            select (select count(*) from rfid_reads where read_at > now() - interval '1 minute'),
                   (select count(*) from telemetry where observed_at > now() - interval '1 minute'),
                   (select count(*) from dead_letters where received_at > now() - interval '1 hour'),
                   (select count(*) from device_activity where last_seen_at > now() - interval '5 minutes'),
                   (select max(read_at) from rfid_reads where read_at > now() - interval '1 hour')
            """
        )
        row = await cursor.fetchone()
    assert row is not None
    return IngestStats(
        rfid_reads_last_minute=row[0],
        telemetry_last_minute=row[1],
        dead_letters_last_hour=row[2],
        devices_seen_last_5_minutes=row[3],
        newest_read_at=row[4],
    )


@router.get(
    "/dead-letters",
    response_model=list[DeadLetter],
    summary="Payloads that could not be decoded, newest first",
)
async def list_dead_letters(
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(description="Page: only letters with a smaller id")] = None,
    topic_prefix: Annotated[str | None, Query(max_length=512)] = None,
) -> list[DeadLetter]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            select id, received_at, topic, error, payload from dead_letters
            where (%(before)s::bigint is null or id < %(before)s)
              and (%(prefix)s::text is null or starts_with(topic, %(prefix)s))
            order by id desc limit %(limit)s
            """,
            {"before": before_id, "prefix": topic_prefix, "limit": limit},
        )
        rows = await cursor.fetchall()
    return [
        DeadLetter(id=r[0], received_at=r[1], topic=r[2], error=r[3], payload_base64=base64.b64encode(r[4]).decode())
        for r in rows
    ]
