"""The outbox relay: publish committed outbox rows to Kafka, in order.

Only the worker holding the service's advisory lock publishes, so two workers
never interleave; the other stands by and takes over when the holder's
connection dies. Rows committed in the leader's own process are handed to it
in memory (:meth:`OutboxRelay.committed`) and published without being read
back; a NOTIFY from another worker's commit, a new leadership or the slow
safety poll make it read the table instead. Published rows are marked sent in
batches, at most ``mark_every_s`` late. A crash between publish and mark
republishes a few records, which the consumers' inboxes absorb.

A row the broker refuses for good (too large, unknown topic, not authorised)
is parked: kept with its reason, counted, reported by ``oms check``, and the
rows after it go on. A row that fails otherwise (the broker unreachable after
the client's own retries) stays unsent and is read again after a backoff;
rows behind it that the broker already took are not recalled, so such a
failure can reorder that one row after them, as with any producer that is
not idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from agents.messaging import kafka
from agents.messaging.retry import Backoff
from agents.observability import metrics
from config import Settings
from stores import db, messaging

log = logging.getLogger(__name__)

HEALTHY_SESSION_S = 10.0
PURGE_EVERY_S = 60.0
PURGE_BATCH = 5000

Publish = Callable[[messaging.OutboxMessage], Awaitable[Awaitable[object]]]
"""Schedule one record; the returned awaitable resolves once the broker acked it."""


class OutboxRelay:
    """Publishes one service's outbox; run :meth:`run` as a long-lived task."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        publish: Publish,
        *,
        batch_size: int = 500,
        safety_poll_s: float = 1.0,
        mark_every_s: float = 0.1,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._dsn = settings.dsn(service)
        self._service = service
        self._lock_key = zlib.crc32(f"oms-outbox-{service}".encode())
        self._publish = publish
        self._batch_size = batch_size
        self._safety_poll_s = safety_poll_s
        self._mark_every_s = mark_every_s
        self._on_published = on_published or (lambda n: None)
        self._wake = asyncio.Event()
        self._handed: list[messaging.OutboxMessage] = []  # committed here, not yet published
        self._read_table = True  # rows may wait that were not handed over: read them
        self._read_at = 0.0
        self._last_read: set[int] = set()  # ids the last table read published
        self._unmarked: list[int] = []  # published, not yet marked sent
        self._unmarked_since = 0.0
        self.is_leader = False
        self.connected = False
        self.publish_failing = False
        """True while the last rows this relay tried to publish failed (and wait for a retry)."""
        self._retry_backoff = Backoff(0.1)
        self._crash_after = settings.fault_relay_crash_after_publish  # test-only: _fault_point
        self._batches = 0
        self._purge_due = 0.0

    def committed(self, rows: Sequence[messaging.OutboxMessage]) -> None:
        """Rows a step of this process has just committed: publish them without a read.

        Ignored unless this relay leads; the step then sent a NOTIFY that wakes
        the leader, whichever process holds it.
        """
        if rows and self.is_leader:
            self._handed.extend(r for r in rows if r.id not in self._last_read)
            self._wake.set()

    async def run(self) -> None:
        """Lead or stand by forever; reconnect with backoff when PostgreSQL goes away."""
        backoff = Backoff(0.1)
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    asyncpg.InternalClientError) as exc:  # a killed backend can raise the last
                if time.monotonic() - started > HEALTHY_SESSION_S:
                    backoff.reset()  # a long healthy session: this is a new outage
                log.warning("outbox relay lost its connection (%s); retrying in %.1fs",
                            exc, backoff.delay)
                await backoff.wait()

    async def _session(self) -> None:
        """One connection: stand by until the lock is ours, then publish until it fails.

        The server ends the session once it has been silent for
        ``relay_idle_timeout_s`` (this loop speaks at least every
        ``safety_poll_s``), so a relay whose network path died gives the lock up
        even if the server never hears of it; the relay itself notices through
        the command timeout.
        """
        conn = await db.connect(self._dsn, self._settings,
                                idle_session_timeout_s=self._settings.relay_idle_timeout_s)
        try:
            self.connected = True
            await conn.add_listener(messaging.OUTBOX_CHANNEL, self._on_notify)
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                await self._sleep(self._safety_poll_s)
            self._read_table = True  # whatever was committed before we led
            self.is_leader = True
            while True:
                published = await self._drain(conn)
                await self._maybe_mark(conn)
                await self._maybe_purge(conn)
                if not published:
                    await self._sleep(self._until_due())
        except asyncio.CancelledError:
            await self._mark_on_stop(conn)
            raise
        finally:
            self.is_leader = self.connected = self.publish_failing = False
            self._handed.clear()  # still unsent in the table: the next leader reads them
            self._unmarked.clear()  # republished by the next leader: a few duplicates
            conn.terminate()  # closing politely could wait forever on a dead path

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._read_table = True
        self._wake.set()

    async def _maybe_purge(self, conn: asyncpg.Connection) -> None:
        """Keep the outbox and the inbox bounded: drop rows past their retention.

        Once a minute, a batch of each; while a batch comes back full, again
        on the next pass of the loop, so a large backlog is trimmed between
        publishes rather than in one long statement.
        """
        if time.monotonic() < self._purge_due:
            return
        settings = self._settings
        outbox = await messaging.purge(conn, settings.outbox_retention_s, PURGE_BATCH)
        inbox = await messaging.purge_inbox(conn, settings.inbox_retention_s, PURGE_BATCH)
        more = PURGE_BATCH in (outbox, inbox)
        self._purge_due = time.monotonic() + (0.0 if more else PURGE_EVERY_S)
        if outbox or inbox:
            log.info("%s: purged %d published outbox rows and %d inbox rows", self._service,
                     outbox, inbox)

    def _until_due(self) -> float:
        """Seconds until the next safety read or mark deadline, whichever comes first."""
        due = self._read_at + self._safety_poll_s
        if self._unmarked:
            due = min(due, self._unmarked_since + self._mark_every_s)
        return due - time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up (a hand-over or a NOTIFY), at most ``seconds``."""
        try:
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))
        except TimeoutError:
            pass
        self._wake.clear()

    async def _drain(self, conn: asyncpg.Connection) -> bool:
        """Publish one batch; False when there was nothing to publish.

        A row the broker refuses for good is parked (kept, with its reason,
        never published) and the rest go on. A row that failed otherwise stays
        unsent: the table is read again after a backoff, in order.
        """
        batch = await self._next_batch(conn)
        if not batch:
            return False
        failures = await self._send(batch)
        self._fault_point(batch)
        published = [m.id for m in batch if m.id not in failures]
        if published and not self._unmarked:
            self._unmarked_since = time.monotonic()
        self._unmarked.extend(published)
        self._on_published(len(published))
        retry = []
        for message in (m for m in batch if m.id in failures):
            if not await self._parked(conn, message, failures[message.id]):
                retry.append(message)
        if retry:
            await self._retry_later(retry, failures)
        else:
            self.publish_failing = False
            self._retry_backoff.reset()
        return True

    async def _send(self, batch: list[messaging.OutboxMessage]) -> dict[int, Exception]:
        """Publish every row of ``batch``; the errors of those that failed, by row id."""
        acks: dict[int, Awaitable[object]] = {}
        failures: dict[int, Exception] = {}
        for message in batch:
            try:
                acks[message.id] = await self._publish(message)
            except Exception as exc:  # noqa: BLE001 - classified by the caller: park or retry
                failures[message.id] = exc
        results = await asyncio.gather(*acks.values(), return_exceptions=True)
        for row_id, result in zip(acks, results, strict=True):
            if isinstance(result, Exception):
                failures[row_id] = result
            elif isinstance(result, BaseException):
                raise result  # cancelled: the relay is stopping
        return failures

    async def _parked(self, conn: asyncpg.Connection, message: messaging.OutboxMessage,
                      exc: Exception) -> bool:
        """Park ``message`` if the broker refused it for good; False if it is worth a retry."""
        refusal = kafka.permanent_send_error(exc)
        if refusal is None:
            return False
        reason = f"{type(refusal).__name__}: {refusal}"
        await messaging.park(conn, message.id, reason)
        metrics.OUTBOX_PARKED.labels(self._service).inc()
        log.error("%s: outbox row %d (%s, key %r, %d bytes) parked, the broker refuses it: %s",
                  self._service, message.id, message.topic, message.key[:64],
                  len(message.value), reason)
        return True

    async def _retry_later(self, rows: list[messaging.OutboxMessage],
                           failures: dict[int, Exception]) -> None:
        """Count the rows that failed for now, then wait and read them again from the table."""
        for message in rows:
            metrics.OUTBOX_PUBLISH_RETRIES.labels(
                self._service, type(failures[message.id]).__name__).inc()
        first = failures[rows[0].id]
        log.warning("%s: %d outbox rows not published (%s: %s); retrying in %.1fs",
                    self._service, len(rows), type(first).__name__, first,
                    self._retry_backoff.delay)
        self.publish_failing = True
        self._read_table = True
        await self._retry_backoff.wait()

    async def _next_batch(self, conn: asyncpg.Connection) -> list[messaging.OutboxMessage]:
        """Rows handed over in memory or, when others may wait, the oldest unsent ones.

        The table is also read every ``safety_poll_s`` however busy the hand-over
        keeps the relay, in case a NOTIFY was lost. A read also returns rows of
        this process committed before it, handed over before or after it
        returns: :meth:`committed` and this drop them from the hand-over, so
        each is published once here. Published rows are marked first, so the
        read does not return them again.

        A NOTIFY that reaches us while the read is in flight cannot be lost by
        resetting ``_read_table`` after it: PostgreSQL delivers notifications
        only between transactions, so one that arrives before the read's result
        was sent before the read began, and its rows are in the read; one for a
        later commit arrives after the result and sets the flag again.
        """
        if self._read_table or time.monotonic() - self._read_at >= self._safety_poll_s:
            await self._mark(conn)
            self._read_at = time.monotonic()
            batch = await messaging.unsent(conn, self._batch_size)
            self._read_table = len(batch) == self._batch_size
            self._last_read = {m.id for m in batch}
            self._handed = [m for m in self._handed if m.id not in self._last_read]
            return batch
        batch, self._handed = self._handed[:self._batch_size], self._handed[self._batch_size:]
        return batch

    async def _maybe_mark(self, conn: asyncpg.Connection) -> None:
        """Mark published rows sent once the oldest has waited ``mark_every_s`` (or many wait)."""
        if not self._unmarked:
            return
        due = time.monotonic() - self._unmarked_since >= self._mark_every_s
        if due or len(self._unmarked) >= self._batch_size:
            await self._mark(conn)

    async def _mark_on_stop(self, conn: asyncpg.Connection) -> None:
        """A clean stop marks what it published, so the next leader repeats nothing."""
        try:
            await self._mark(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.info("outbox relay stopped with %d rows unmarked (%s); they will be"
                     " published again", len(self._unmarked), exc)

    async def _mark(self, conn: asyncpg.Connection) -> None:
        if self._unmarked:
            await messaging.mark_sent(conn, self._unmarked)
            self._unmarked = []

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
