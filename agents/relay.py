"""The outbox relay: publish committed outbox rows to Kafka, in order.

Only the worker holding the service's advisory lock publishes, so two workers
never interleave; the other stands by and takes over when the holder's
connection dies. The relay wakes on the NOTIFY every step transaction sends at
commit (or directly, for a commit in its own process), with a slow poll only
as a safety net. A crash between publish and ``mark_sent`` republishes a few
records, which the consumers' inboxes absorb.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable

import asyncpg

from stores import messaging
from stores.db import init_connection

log = logging.getLogger(__name__)

HEALTHY_SESSION_S = 10.0
PURGE_EVERY_S = 60.0

Publish = Callable[[messaging.OutboxMessage], Awaitable[Awaitable[object]]]
"""Schedule one record; the returned awaitable resolves once the broker acked it."""


class OutboxRelay:
    """Publishes one service's outbox; run :meth:`run` as a long-lived task."""

    def __init__(
        self,
        dsn: str,
        service: str,
        publish: Publish,
        *,
        batch_size: int = 500,
        safety_poll_s: float = 1.0,
        on_published: Callable[[int], None] | None = None,
        crash_after_batches: int = 0,
        retention_s: float = 3600.0,
    ) -> None:
        self._dsn = dsn
        self._lock_key = zlib.crc32(f"oms-outbox-{service}".encode())
        self._publish = publish
        self._batch_size = batch_size
        self._safety_poll_s = safety_poll_s
        self._on_published = on_published or (lambda n: None)
        self._wake = asyncio.Event()
        self.origin = uuid.uuid4().hex
        """Steps that :meth:`wake` this relay in-process pass this to ``enqueue``; its
        NOTIFY then wakes only the other workers' relays, not this one a second time."""
        self.is_leader = False
        self.connected = False
        self._crash_after = crash_after_batches  # test-only fault hook, 0 = off: _fault_point
        self._batches = 0
        self._retention_s = retention_s
        self._purged_at = 0.0

    def wake(self) -> None:
        """Publish now (called after an in-process commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Lead or stand by forever; reconnect with backoff when PostgreSQL goes away."""
        backoff = 0.1
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError) as exc:  # a killed backend can raise the last
                log.warning("outbox relay lost its connection (%s); retrying in %.1fs",
                            exc, backoff)
                self.is_leader = False
                if time.monotonic() - started > HEALTHY_SESSION_S:
                    backoff = 0.1  # a long healthy session: this is a new outage
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await init_connection(conn)
            self.connected = True
            await conn.add_listener(messaging.OUTBOX_CHANNEL, self._on_notify)
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                await self._sleep()
            self.is_leader = True
            while True:
                while await self._drain(conn):
                    pass
                await self._maybe_purge(conn)
                await self._sleep()
        finally:
            self.is_leader = self.connected = False
            await conn.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, origin: str) -> None:
        if origin != self.origin:
            self._wake.set()

    async def _maybe_purge(self, conn: asyncpg.Connection) -> None:
        """Drop published rows past the retention, at most once a minute (bounded table)."""
        if time.monotonic() - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = time.monotonic()
        purged = await messaging.purge(conn, self._retention_s)
        if purged:
            log.info("outbox relay purged %d published rows", purged)

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._safety_poll_s)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _drain(self, conn: asyncpg.Connection) -> bool:
        """Publish one batch; True when a full batch suggests more are waiting."""
        batch = await messaging.unsent(conn, self._batch_size)
        if not batch:
            return False
        acks = [await self._publish(message) for message in batch]
        await asyncio.gather(*acks)
        self._fault_point(batch)
        await messaging.mark_sent(conn, [m.id for m in batch])
        self._on_published(len(batch))
        return len(batch) == self._batch_size

    def _fault_point(self, batch: list[messaging.OutboxMessage]) -> None:
        """Test-only: die like ``kill -9`` after publishing the n-th batch, before marking it.

        The fault suite uses it to prove that the republished batch is absorbed
        by the consumers' inboxes. Off unless the fault setting is set.
        """
        self._batches += 1
        if self._crash_after and self._batches == self._crash_after:
            log.error("fault injection: exiting after publishing batch %d (outbox ids %d..%d)"
                      " before marking it sent", self._batches, batch[0].id, batch[-1].id)
            os._exit(137)
