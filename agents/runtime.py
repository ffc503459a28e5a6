"""What every service does around its business step.

Decode, apply the step with retries, dead-letter what cannot be applied, time
and count it. Faust acknowledges a message even when the agent raises, so no
exception may escape :meth:`ServiceRuntime.process`: transient failures are
retried before the offset can move, permanent ones go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from faust.types import AppT
from faust.types.tuples import Message

from agents import metrics, tracing
from agents.dlq import DeadLetters
from agents.relay import OutboxRelay
from agents.step import (
    Handler,
    InvalidEvent,
    StepResult,
    apply_step,
    lock_rows,
    run_step,
)
from agents.topics import DEAD_LETTERS
from config import Settings
from schemas.codec import DecodeError, decode
from schemas.oms_pb2 import Envelope
from stores import messaging
from stores.db import create_pool

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    # "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false during
    # maintenance) and lock_not_available: both clear by themselves.
    asyncpg.ObjectNotInPrerequisiteStateError,
    # asyncpg's protocol can be left mid-operation by a backend killed under it
    # ("cannot switch to state ..."); a fresh pooled connection works.
    asyncpg.InternalClientError,
)
"""Failures that go away by themselves: database restarts, killed backends, conflicts."""

MAX_BACKOFF_S = 5.0


class ServiceRuntime:
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
        self._handler: Handler | None = None
        self._started = asyncio.Lock()
        self.relay = OutboxRelay(
            settings.dsn(service),
            service,
            self._publish,
            on_published=metrics.OUTBOX_PUBLISHED.labels(service).inc,
            crash_after_batches=settings.fault_relay_crash_after_publish,
            retention_s=settings.outbox_retention_s,
        )

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
            delay = 0.1
            while True:
                try:
                    self._pool = await create_pool(
                        self.settings.dsn(self.service),
                        min_size=self.settings.pool_min_size,
                        max_size=self.settings.pool_max_size,
                    )
                    break
                except TRANSIENT_ERRORS as exc:
                    log.warning("%s: database not reachable (%s), retrying", self.service, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
            self._handler = self._handler_factory(self._pool)

    async def process(self, message: Message) -> str:
        """Apply one Kafka message; returns ``applied``, ``duplicate`` or ``dead_letter``."""
        await self.start()
        try:
            envelope = decode(message.value)
        except DecodeError as exc:
            await self.dead_letter(message, f"undecodable: {exc}")
            return self._count("unknown", "dead_letter")
        if envelope.type not in self.handled:
            return "ignored"  # e.g. orders reads InventoryReserved but has nothing to do
        started = time.perf_counter()
        with tracing.consuming(self.service, envelope, message.topic, message.headers,
                               message.partition, message.offset) as span:
            result = await self._apply(envelope, message)
            span.set_attribute("oms.result", result)
        metrics.HANDLER_SECONDS.labels(self.service, envelope.type).observe(
            time.perf_counter() - started
        )
        return self._count(envelope.type, result)

    async def process_batch(self, messages: list[Message]) -> None:
        """Apply a batch of Kafka messages in one transaction (one commit, one fsync).

        Each event is still claimed in the inbox on its own, so duplicates inside
        or across batches are skipped. If any event cannot be applied, the batch
        is rolled back and replayed one event at a time, so only that event is
        dead-lettered and the rest commit normally.
        """
        await self.start()
        metrics.BATCH_SIZE.labels(self.service).observe(len(messages))
        work: list[tuple[Envelope, Message]] = []
        seen: set[str] = set()
        for message in messages:
            try:
                envelope = decode(message.value)
            except DecodeError as exc:
                await self.dead_letter(message, f"undecodable: {exc}")
                self._count("unknown", "dead_letter")
                continue
            if envelope.type not in self.handled:
                self._count(envelope.type, "ignored")
                continue
            if envelope.event_id in seen:  # the same event twice in one batch
                self._count(envelope.type, "duplicate")
                continue
            seen.add(envelope.event_id)
            work.append((envelope, message))
        if len(work) == 1:
            await self.process(work[0][1])
        elif work:
            await self._apply_batch_or_split(work)

    async def _apply_batch_or_split(self, work: list[tuple[Envelope, Message]]) -> None:
        delay = 0.05
        while True:
            try:
                results = await self._apply_batch(work)
                break
            except TRANSIENT_ERRORS as exc:
                metrics.STEP_RETRIES.labels(self.service, type(exc).__name__).inc()
                log.warning("%s: %s on a batch of %d, retrying in %.2fs", self.service,
                            type(exc).__name__, len(work), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            except Exception:  # noqa: BLE001 - one bad event: replay singly to isolate it
                log.info("%s: batch of %d failed; applying its events one by one",
                         self.service, len(work))
                for _, message in work:
                    await self.process(message)
                return
        self.relay.wake()
        for (envelope, _), step in zip(work, results, strict=True):
            self._count(envelope.type, "applied" if step.applied else "duplicate")
            if step.applied and self._on_committed is not None:
                self._on_committed(step.emitted)

    async def _apply_batch(self, work: list[tuple[Envelope, Message]]) -> list[StepResult]:
        """One transaction: claim all, apply each under its own spans, stage all."""
        assert self._handler is not None
        prepare = getattr(self._handler, "prepare", None)
        if prepare is not None:  # e.g. payments starts the batch's PSP calls concurrently
            await prepare([envelope for envelope, _ in work])
        results: list[StepResult] = []
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await messaging.claim_many(conn, [(e.event_id, e.type) for e, _ in work])
            await lock_rows(conn, self._handler, [e for e, _ in work if e.event_id in fresh])
            for envelope, message in work:
                if envelope.event_id not in fresh:
                    results.append(StepResult(applied=False))
                    continue
                started = time.perf_counter()
                with tracing.consuming(self.service, envelope, message.topic, message.headers,
                                       message.partition, message.offset) as span:
                    step = await run_step(conn, envelope, self._handler, self.out_topic,
                                          tracing.current_headers(), claimed=True)
                    span.set_attribute("oms.result", "applied")
                metrics.HANDLER_SECONDS.labels(self.service, envelope.type).observe(
                    time.perf_counter() - started)
                results.append(step)
            await messaging.enqueue(conn, [m for r in results for m in r.outbox])
        return results

    async def _apply(self, envelope: Envelope, message: Message) -> str:
        assert self._handler is not None
        delay = 0.05
        while True:
            try:
                step: StepResult = await apply_step(
                    self.pool, envelope, self._handler, self.out_topic,
                    headers=tracing.current_headers(),  # the outbox rows continue this trace
                )
            except InvalidEvent as exc:
                await self.dead_letter(message, f"invalid {envelope.type}: {exc}")
                return "dead_letter"
            except TRANSIENT_ERRORS as exc:
                metrics.STEP_RETRIES.labels(self.service, type(exc).__name__).inc()
                log.warning("%s: %s on %s, retrying in %.2fs", self.service,
                            type(exc).__name__, envelope.type, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stall the partition
                log.exception("%s: handler failed on %s", self.service, envelope.type)
                await self.dead_letter(message, f"handler error: {type(exc).__name__}: {exc}")
                return "dead_letter"
            if step.applied:
                self.relay.wake()
                if self._on_committed is not None:
                    self._on_committed(step.emitted)
                return "applied"
            return "duplicate"

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
        }

    async def outbox_backlog(self) -> int:
        """Unpublished outbox rows (also exported as a gauge)."""
        async with self.pool.acquire() as conn:
            n = await messaging.backlog(conn)
        metrics.OUTBOX_BACKLOG.labels(self.service).set(n)
        return n
