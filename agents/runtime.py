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
from collections.abc import Callable

import asyncpg
from faust.types import AppT
from faust.types.tuples import Message

from agents import metrics
from agents.relay import OutboxRelay
from agents.step import Handler, InvalidEvent, StepResult, apply_step
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
    ) -> None:
        self.app = app
        self.handled = handled
        self.settings = settings
        self.service = service
        self._handler_factory = handler_factory
        self.out_topic = settings.topic(out_topic)
        self.dead_letter_topic = settings.topic(DEAD_LETTERS)
        self._pool: asyncpg.Pool | None = None
        self._handler: Handler | None = None
        self._started = asyncio.Lock()
        self.relay = OutboxRelay(
            settings.dsn(service),
            service,
            self._publish,
            on_published=metrics.OUTBOX_PUBLISHED.labels(service).inc,
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
        result = await self._apply(envelope, message)
        metrics.HANDLER_SECONDS.labels(self.service, envelope.type).observe(
            time.perf_counter() - started
        )
        return self._count(envelope.type, result)

    async def _apply(self, envelope: Envelope, message: Message) -> str:
        assert self._handler is not None
        delay = 0.05
        while True:
            try:
                step: StepResult = await apply_step(
                    self.pool, envelope, self._handler, self.out_topic
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
                return "applied"
            return "duplicate"

    def _count(self, event_type: str, result: str) -> str:
        metrics.EVENTS.labels(self.service, event_type, result).inc()
        return result

    async def dead_letter(self, message: Message, reason: str) -> None:
        """Park a message on the dead-letter topic with everything needed to re-drive it."""
        metrics.DEAD_LETTERS.labels(self.service, reason.split(":", 1)[0]).inc()
        log.warning("%s: dead letter from %s[%s]@%s: %s", self.service, message.topic,
                    message.partition, message.offset, reason)
        headers = [(k, v) for k, v in (message.headers or []) if not k.startswith("oms-dlq-")]
        headers += [
            ("oms-dlq-reason", reason.encode()),
            ("oms-dlq-service", self.service.encode()),
            ("oms-dlq-topic", message.topic.encode()),
            ("oms-dlq-partition", str(message.partition).encode()),
            ("oms-dlq-offset", str(message.offset).encode()),
            ("oms-dlq-at-ms", str(int(time.time() * 1000)).encode()),
        ]
        await self._send_with_retry(self.dead_letter_topic, message.key, message.value, headers)

    async def _send_with_retry(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        delay = 0.1
        while True:
            try:
                await self.app.producer.send_and_wait(topic, key, value, None, None, headers)
                return
            except Exception as exc:  # noqa: BLE001 - the broker's errors vary by client version
                log.warning("%s: dead-letter publish failed (%s), retrying", self.service, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _publish(self, message: messaging.OutboxMessage) -> asyncio.Future[object]:
        headers = [(k, v.encode()) for k, v in message.headers.items()]
        fut = await self.app.producer.send(
            message.topic, message.key, message.value, None, None, headers
        )
        return fut  # type: ignore[return-value]

    def readiness(self) -> dict[str, bool]:
        """Checks for ``/ready/``: False entries are the reasons a worker is not ready."""
        return {"database_pool": self._pool is not None, "outbox_relay_connected": self.relay.connected}

    async def outbox_backlog(self) -> int:
        """Unpublished outbox rows (also exported as a gauge)."""
        async with self.pool.acquire() as conn:
            n = await messaging.backlog(conn)
        metrics.OUTBOX_BACKLOG.labels(self.service).set(n)
        return n
