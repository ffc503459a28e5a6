"""The consumer loop every database-backed service runs around its business step.

Decode, apply the step with retries, dead-letter what cannot be applied, time
and count it. Faust acknowledges a message even when the agent raises, so no
exception may escape :meth:`ServiceConsumer.process_batch`: input that is itself
bad (:data:`~agents.messaging.errors.BAD_INPUT_ERRORS`) goes to the dead-letter
topic, and every other failure is retried with backoff before the offset can
move, counted in ``oms_step_retries_total`` and shown by ``/ready/``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import asyncpg
from faust.types import AppT
from faust.types.tuples import Message

from agents.messaging.dead_letters import DeadLetters
from agents.messaging.errors import BAD_INPUT_ERRORS, TRANSIENT_ERRORS, InvalidEvent
from agents.messaging.relay import OutboxRelay
from agents.messaging.retry import Backoff
from agents.messaging.unit_of_work import Handler, StepResult, apply_steps
from agents.observability import metrics, tracing
from agents.topology import DEAD_LETTERS
from config import Settings
from schemas.codec import DecodeError, check_key, check_type_header, decode
from schemas.oms_pb2 import Envelope
from stores import messaging
from stores.db import create_pool

log = logging.getLogger(__name__)


class ServiceConsumer:
    """One service's pool, step handler, outbox relay and dead-letter path."""

    def __init__(
        self,
        app: AppT,
        settings: Settings,
        service: str,
        handler_factory: Callable[[asyncpg.Pool], Handler],
        out_topic: str,
        handled: frozenset[str],
        on_committed: Callable[[list[Envelope]], None] | None = None,
    ) -> None:
        self.app = app
        self._on_committed = on_committed  # e.g. count orders placed, only once committed
        self.handled = handled
        self.settings = settings
        self.service = service
        self._handler_factory = handler_factory
        self.out_topic = settings.topic(out_topic)
        self.dead_letters = DeadLetters(app, settings.topic(DEAD_LETTERS), service)
        self._pool: asyncpg.Pool | None = None
        self._step_conn: asyncpg.Connection | None = None
        self._handler: Handler | None = None
        self._started = asyncio.Lock()
        self._retrying_since: float | None = None  # a batch is failing and being retried
        self.relay = OutboxRelay(settings, service, self._publish,
                                 on_published=metrics.OUTBOX_PUBLISHED.labels(service).inc)

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's connection pool (after :meth:`start`)."""
        if self._pool is None:
            raise RuntimeError(f"{self.service} runtime is not started")
        return self._pool

    async def start(self) -> None:
        """Open the pool, retrying until the database answers; idempotent."""
        async with self._started:
            if self._pool is not None:
                return
            backoff = Backoff(0.1)
            while True:
                try:
                    self._pool = await create_pool(self.settings.dsn(self.service),
                                                   self.settings)
                    break
                except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                    log.warning("%s: database not reachable (%s), retrying", self.service, exc)
                    await backoff.wait()
            self._handler = self._handler_factory(self._pool)

    async def process_batch(self, messages: list[Message]) -> None:
        """Apply a batch of Kafka messages in one transaction (one commit, one fsync).

        Undecodable messages, and those of the events it handles whose key is
        not their order id, are dead-lettered first; events this service does
        not handle are skipped. Each event is still claimed in the inbox on its
        own, so duplicates inside or across batches are no-ops.
        """
        await self.start()
        metrics.BATCH_SIZE.labels(self.service).observe(len(messages))
        work: dict[str, tuple[Envelope, Message]] = {}  # by event id: a repeat is a duplicate
        for message in messages:
            try:
                envelope = decode(message.value)
                if envelope.type in self.handled:
                    check_key(message.key, envelope)
                check_type_header(message.headers, envelope)
            except DecodeError as exc:
                await self.dead_letter(message, exc.reason)
                self._count("unknown", "dead_letter")
                continue
            if envelope.type not in self.handled:
                self._count(envelope.type, "ignored")
            elif envelope.event_id in work:
                self._count(envelope.type, "duplicate")
            else:
                work[envelope.event_id] = (envelope, message)
        if work:
            await self._apply_or_split(list(work.values()))

    async def _apply_or_split(self, work: list[tuple[Envelope, Message]]) -> None:
        """Apply ``work``; if it cannot be applied, split it until the bad event stands alone.

        A lone event that still fails is dead-lettered, so one poison event
        costs its batch a retry one by one and never stalls the partition.
        """
        try:
            results = await self._apply_with_retry(work)
        except BAD_INPUT_ERRORS as exc:  # isolated below, then dead-lettered
            if len(work) > 1:
                log.info("%s: batch of %d failed (%s); applying its events one by one",
                         self.service, len(work), type(exc).__name__)
                for item in work:
                    await self._apply_or_split([item])
                return
            await self._dead_letter_failed(*work[0], exc)
            return
        self.relay.committed([row for step in results for row in step.outbox])
        for (envelope, _), step in zip(work, results, strict=True):
            self._count(envelope.type, "applied" if step.applied else "duplicate")
            if step.applied and self._on_committed is not None:
                self._on_committed(step.emitted)

    async def _apply_with_retry(self, work: list[tuple[Envelope, Message]]) -> list[StepResult]:
        """Apply ``work``, retrying every failure but bad input, with backoff, until it commits.

        A failure that is not the input's fault (the database down, read-only
        after a failover, out of disk; or a bug) must not turn valid events into
        dead letters; it is retried, counted and logged, and after
        ``step_stuck_after_s`` ``/ready/`` reports the consumer as stuck.
        """
        assert self._handler is not None
        messages = {envelope.event_id: message for envelope, message in work}
        backoff = Backoff(0.05)
        while True:
            try:
                conn = await self._step_connection()
                results = await apply_steps(
                    conn, [envelope for envelope, _ in work], self._handler,
                    self.out_topic, lambda envelope: self._handling(envelope, messages),
                    notify=not self.relay.is_leader,  # else handed over in-process
                )
            except BAD_INPUT_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - not the input's fault: counted, retried
                await self._retry_later(exc, len(work), backoff)
                continue
            self._retrying_since = None
            return results

    async def _retry_later(self, exc: Exception, size: int, backoff: Backoff) -> None:
        """Count and log a failed attempt, drop its connection, and wait before the next."""
        await self._drop_step_connection()
        metrics.STEP_RETRIES.labels(self.service, type(exc).__name__).inc()
        first = self._retrying_since is None
        if first:
            self._retrying_since = time.monotonic()
        log.warning("%s: %s on a batch of %d, retrying in %.2fs: %s", self.service,
                    type(exc).__name__, size, backoff.delay, exc,
                    exc_info=exc if first and not isinstance(exc, TRANSIENT_ERRORS) else None)
        await backoff.wait()

    async def _step_connection(self) -> asyncpg.Connection:
        """The pooled connection the steps keep between batches.

        Batches run one after another, so one connection serves them all; keeping
        it saves the pool's reset round trip on every release. It is dropped
        after a failure, or when a batch was interrupted and left it closed or
        inside its transaction.
        """
        conn = self._step_conn
        if conn is not None and (conn.is_closed() or conn.is_in_transaction()):
            await self._drop_step_connection()
        if self._step_conn is None:
            self._step_conn = await self.pool.acquire()
        return self._step_conn

    async def _drop_step_connection(self) -> None:
        """End the kept connection after a failure, and renew the pool's others.

        The connection is closed rather than reset: it may hang (half-open) or
        carry a session the server no longer allows (read-only defaults after a
        failover). Renewing the pool makes every connection reconnect once.
        """
        conn, self._step_conn = self._step_conn, None
        if conn is None:
            return
        try:
            conn.terminate()
            await self.pool.release(conn)
        except asyncpg.InterfaceError as exc:  # the pool took it back when its backend died
            log.info("%s: dropped a broken step connection (%s)", self.service, exc)
        await self.pool.expire_connections()

    @contextmanager
    def _handling(
        self, envelope: Envelope, messages: dict[str, Message]
    ) -> Iterator[dict[str, str]]:
        """One event's spans and handler timing; yields the trace context for its outbox rows."""
        message = messages[envelope.event_id]
        started = time.perf_counter()
        with tracing.consuming(self.service, envelope, message.topic, message.headers,
                               message.partition, message.offset) as (span, trace_headers):
            yield trace_headers
            span.set_attribute("oms.result", "applied")
        metrics.HANDLER_SECONDS.labels(self.service, envelope.type).observe(
            time.perf_counter() - started)

    async def _dead_letter_failed(
        self, envelope: Envelope, message: Message, exc: Exception
    ) -> None:
        if isinstance(exc, InvalidEvent):
            reason = f"invalid {envelope.type}: {exc}"
        else:
            reason = f"rejected by the database: {envelope.type}: {type(exc).__name__}: {exc}"
        await self.dead_letter(message, reason)
        self._count(envelope.type, "dead_letter")

    def _count(self, event_type: str, result: str) -> str:
        metrics.EVENTS.labels(self.service, event_type, result).inc()
        return result

    async def dead_letter(self, message: Message, reason: str) -> None:
        """Park a message on the dead-letter topic with everything needed to re-drive it."""
        await self.dead_letters.publish(message, reason)

    async def _publish(self, message: messaging.OutboxMessage) -> Awaitable[object]:
        """Send one outbox row under a publish span that ends when the broker acks."""
        span, headers = tracing.start_outbox_publish(message)
        try:
            fut = asyncio.ensure_future(await self.app.producer.send(
                message.topic, message.key, message.value, None, None, headers
            ))
        except BaseException:
            span.end()
            raise
        fut.add_done_callback(lambda _: span.end())
        return fut

    def readiness(self) -> dict[str, bool]:
        """Checks for ``/ready/``: False entries are the reasons a worker is not ready."""
        return {
            "database_pool": self._pool is not None,
            "outbox_relay_connected": self.relay.connected,
            "outbox_relay_publishing": not self.relay.publish_failing,
            "dead_letters_publishing": not self.dead_letters.failing,
            "step_not_stuck": not self.stuck(),
        }

    def stuck(self) -> bool:
        """True while one batch has been failing for longer than ``step_stuck_after_s``."""
        since = self._retrying_since
        return since is not None and time.monotonic() - since >= self.settings.step_stuck_after_s

    async def outbox_backlog(self) -> int:
        """Unpublished outbox rows (also exported as a gauge)."""
        async with self.pool.acquire() as conn:
            n = await messaging.backlog(conn)
        metrics.OUTBOX_BACKLOG.labels(self.service).set(n)
        return n
