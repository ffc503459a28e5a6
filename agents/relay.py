"""The outbox relay: publish committed outbox rows to Kafka, in order.

Only the worker holding the service's advisory lock publishes, so two workers
never interleave; the other stands by and takes over when the holder's
connection dies. The relay wakes on the NOTIFY every step transaction sends at
commit, with a slow poll only as a safety net. A crash between publish and
``mark_sent`` republishes a few records, which the consumers' inboxes absorb.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable

import asyncpg

from stores import messaging
from stores.db import init_connection

log = logging.getLogger(__name__)

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
    ) -> None:
        self._dsn = dsn
        self._lock_key = zlib.crc32(f"oms-outbox-{service}".encode())
        self._publish = publish
        self._batch_size = batch_size
        self._safety_poll_s = safety_poll_s
        self._on_published = on_published or (lambda n: None)
        self._wake = asyncio.Event()
        self.is_leader = False
        self.connected = False

    def wake(self) -> None:
        """Publish now (called after an in-process commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Lead or stand by forever; reconnect with backoff when PostgreSQL goes away."""
        backoff = 0.1
        while True:
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay lost its connection (%s); retrying in %.1fs", exc, backoff)
                self.is_leader = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _session(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await init_connection(conn)
            self.connected = True
            await conn.add_listener(messaging.OUTBOX_CHANNEL, lambda *_: self._wake.set())
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                await self._sleep()
            self.is_leader = True
            while True:
                while await self._drain(conn):
                    pass
                await self._sleep()
        finally:
            self.is_leader = self.connected = False
            await conn.close()

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
        await messaging.mark_sent(conn, [m.id for m in batch])
        self._on_published(len(batch))
        return len(batch) == self._batch_size

