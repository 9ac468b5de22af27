"""Decoders kept in step with the registry while ingest runs, and the Sparkplug births they ask for.

A worker polls one row (``registry_version``, 0101_decoder_options.sql) every few seconds; when it changed,
the worker reads every device's decoder options and site time zone and rebuilds its decoders, so that a
manifest applied or a device PUT takes effect in a running service within seconds, without a restart. The
poll costs one primary-key read; the hot path is untouched (the decoders look their device's options up by
id, as they always did).

The decoders built here share one Sparkplug ``BirthBook``. Every birth a worker ingests is stored with its
alias table (the birth status in ``device_events``, written in the batch's transaction), so when a Sparkplug
decoder meets data it cannot name, the consumer loads the latest birth stored for those ids into the book
and the decoder goes on with it; only if none is stored does it ask the edge node for a rebirth.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime
from typing import Any, Final

import psycopg

from devices.decoder_options import build_decoders
from devices.decoders.sparkplug import BirthBook, BirthsNotLoadedError, stored_birth
from devices.registry import arun, decoder_settings, registry_version
from ingest.routes import Router

log = logging.getLogger(__name__)

DEFAULT_POLL_S: Final = 2.0
# The newest birth of each id, by the primary key of device_events (device_id, antenna, observed_at, ...).
_LATEST_BIRTHS: Final = """
select i.id, b.received_at, b.extra
from unnest(%(ids)s::text[]) as i (id)
cross join lateral (
    select e.received_at, e.extra from device_events e
    where e.device_id = i.id and e.antenna = -1 and e.reason = 'birth'
    order by e.observed_at desc
    limit 1
) b
"""


class DecoderConfig:
    """Owns a router's decoders: builds them from the registry, rebuilds them when it changes, feeds births."""

    def __init__(self, dsn: str, router: Router, poll_s: float = DEFAULT_POLL_S) -> None:
        self._dsn = dsn
        self._router = router
        self._poll_s = poll_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loaded = False
        self._version: int | None = None
        self.births = BirthBook()

    async def ready(self, stop: asyncio.Event) -> bool:
        """Wait until the decoders have been built from the registry once; False if stopped first.

        Decoding with defaults what a device's options would name differently would store wrong readings, so
        nothing is decoded before that (nothing could be committed without the database anyway).
        """
        attempt = 0
        while not self._loaded:
            try:
                await self.refresh()
            except psycopg.Error as exc:
                await self._forget_connection()
                delay = random.uniform(0, min(10.0, 0.1 * 2**attempt))  # not for security
                log.warning("cannot read the device registry (%s); retrying in %.1f s", str(exc).strip()[:200], delay)
                attempt += 1
                if await _sleep_unless(stop, delay):
                    return False
        return True

    async def refresh(self) -> bool:
        """Rebuild the decoders if the registry changed since the last look; True if they were rebuilt."""
        conn = await self._connection()
        # The version first: a change committed between the two reads is then seen again at the next poll.
        version = await arun(conn, registry_version())
        if self._loaded and version == self._version:
            return False
        settings = await arun(conn, decoder_settings())
        built = build_decoders(settings, births=self.births, previous=self._router.decoders if self._loaded else None)
        for problem in built.problems:
            log.warning("%s; decoding it with the format's defaults", problem)
        self._router.use(built.decoders)
        self._version, self._loaded = version, True
        log.info("decoders built from the registry: %d devices with options or a site time zone", len(settings))
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the registry until ``stop``; a failed poll is logged and tried again at the next."""
        while not await _sleep_unless(stop, self._poll_s):
            try:
                await self.refresh()
            except psycopg.Error as exc:
                log.warning("cannot poll the device registry: %s", str(exc).strip()[:200])
                await self._forget_connection()

    async def close(self) -> None:
        await self._forget_connection()

    async def load_births(self, need: BirthsNotLoadedError, at: datetime) -> None:
        """Record in the decoder's book the newest birth stored for each id it asked for (none if unreadable)."""
        found = {}
        try:
            conn = await self._connection()
            cursor = await conn.execute(_LATEST_BIRTHS, {"ids": need.device_ids})
            found = {row[0]: stored_birth(row[2] or {}, row[1]) for row in await cursor.fetchall()}
        except psycopg.Error as exc:
            # The decoder then does what it did before births were shared: it asks for a rebirth.
            log.warning("cannot read stored Sparkplug births (%s)", str(exc).strip()[:200])
            await self._forget_connection()
        for device_id in need.device_ids:
            need.book.record(device_id, found.get(device_id), at)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=5)
        return self._conn

    async def _forget_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except psycopg.Error:
                log.debug("error closing a broken registry connection", exc_info=True)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early if ``stop`` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
