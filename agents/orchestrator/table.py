"""The saga tracker's table: every event updates its saga's row; a timer enforces deadlines.

The table is keyed by order id and co-partitioned with every topic it reads,
so each worker owns the sagas of its partitions. A timer turns a saga past
its deadline into a ``SagaTimedOut`` event on ``oms.saga-events`` (again every
``RESEND_MS`` until the saga ends); the agent reads it like any other event
and sends ``CancelOrder``, so the decision is made in one place
(:func:`agents.orchestrator.saga.transition`) and recorded in the table.

A finished saga keeps its steps for ``OMS_SAGA_RETENTION_S``, is remembered
without them for ``OMS_SAGA_MEMORY_S`` (a late event then finds it finished),
and is forgotten after that.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.types.tuples import Message

from agents.messaging import kafka
from agents.messaging.dead_letters import DeadLetters
from agents.observability import metrics, tracing
from agents.orchestrator.ownership import Ownership
from agents.orchestrator.saga import (
    InvalidSagaEvent,
    Saga,
    UnreadableSaga,
    e2e_ms,
    expired,
    finished_row,
    forgettable,
    outcome_labels,
    overdue,
    transition,
    without_steps,
)
from agents.topology import DEAD_LETTERS, ORCHESTRATOR, ORDER_COMMANDS, SAGA_EVENTS
from config import Settings
from schemas.codec import DecodeError, check_key, check_type_header, decode, new_envelope
from schemas.oms_pb2 import Envelope, SagaTimedOut

log = logging.getLogger(__name__)
SERVICE = "orchestrator"
RESEND_MS = 5000  # time a running saga out again (and resend its CancelOrder) this often
FULL_SCAN_S = 10.0
"""The timer reads every row this often: rows restored from the changelog, aging
finished sagas, copies of partitions lost in a rebalance. The ticks in between read
only the sagas this worker has seen running, so a tick's cost does not grow with
the sagas the table remembers."""


def now_ms() -> int:
    return int(time.time() * 1000)


class SagaTracker:
    """The tracker's table and the glue between Kafka and :func:`transition`."""

    def __init__(self, app: faust.App, settings: Settings,
                 ownership: Ownership | None = None) -> None:
        self.app = app
        self.settings = settings
        self.timeout_ms = int(settings.saga_timeout_s * 1000)
        self.retention_ms = int(settings.saga_retention_s * 1000)
        self.memory_ms = int(settings.saga_memory_s * 1000)
        self.sagas = app.Table(
            "sagas",
            default=None,
            key_type=bytes,  # raw order-id keys: the changelog partitions like the sources
            partitions=settings.partitions,
            use_partitioner=True,  # the timer deletes expired rows outside the stream
        )
        self.commands = app.topic(settings.topic(ORDER_COMMANDS), key_type=bytes,
                                  value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.saga_events = app.topic(settings.topic(SAGA_EVENTS), key_type=bytes,
                                     value_type=bytes, key_serializer="raw",
                                     value_serializer="raw")
        self.dead_letters = DeadLetters(app, settings.topic(DEAD_LETTERS), SERVICE)
        self.ownership = ownership or Ownership.assigned(app, self.sagas, settings.partitions)
        self._timeouts_sent: dict[bytes, int] = {}  # order -> when SagaTimedOut was sent
        # order -> trace context of its last event, so a timeout continues the order's trace
        self._traces: dict[bytes, dict[str, str]] = {}
        self._unreadable: set[bytes] = set()  # rows already counted and logged as unreadable
        self._cancels_to_drop = settings.fault_drop_cancel_orders
        self._running: set[bytes] = set()  # sagas seen running: what a short tick checks
        self._scanned_at: float | None = None  # monotonic time of the last full scan

    def saga(self, order_id: str) -> Saga | None:
        """The locally held saga of an order (``table_route`` sends the request to its owner)."""
        key = order_id.encode()
        return self._read(key, self.sagas.get(key))

    def owned_sagas(self) -> list[Saga]:
        """The sagas this worker owns: the rows of its active table partitions.

        Every view, count and the timer go by this, never by the local store
        as a whole (see :mod:`agents.orchestrator.ownership`).
        """
        return [saga for key, row in self._owned_rows()
                if (saga := self._read(key, row)) is not None]

    def running_sagas(self) -> list[Saga]:
        """The running sagas this worker owns (finished rows are skipped without reading them)."""
        return [saga for key, row in self._owned_rows()
                if not finished_row(row) and (saga := self._read(key, row)) is not None]

    def owned_rows(self) -> list[dict[str, Any]]:
        """The stored rows of the sagas this worker owns, unread: a search filters and sorts
        these, then reads only the page it shows (:meth:`read_row`)."""
        return [row for _, row in self._owned_rows() if isinstance(row, dict)]

    def read_row(self, row: dict[str, Any]) -> Saga | None:
        """A row of :meth:`owned_rows` as a :class:`Saga` (None if unreadable)."""
        return self._read(str(row.get("order_id", "")).encode(), row)

    def counts_by_partition(self) -> dict[int, dict[str, int]]:
        """Sagas per status in each partition this worker owns (every owned one listed)."""
        counts: dict[int, dict[str, int]] = {p: {} for p in self.ownership.owned()}
        for key, row in self._owned_rows():
            status = str(row.get("status")) if isinstance(row, dict) else "UNREADABLE"
            of_partition = counts.setdefault(self.ownership.partition(key), {})
            of_partition[status] = of_partition.get(status, 0) + 1
        return counts

    def owned_partitions(self) -> list[int]:
        """The table partitions this worker owns, in order."""
        return sorted(self.ownership.owned())

    def settled(self) -> bool:
        """Ownership is settled: not rebalancing, and the table recovered from its changelog."""
        recovered = self.app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        return not self.app.rebalancing and bool(recovered)

    def _owned_rows(self) -> list[tuple[bytes, Any]]:
        owned = self.ownership.owned()
        partition = self.ownership.partition
        return [(key, row) for key, row in list(self.sagas.items()) if partition(key) in owned]

    def _read(self, key: bytes, row: Any) -> Saga | None:
        """A table row as a :class:`Saga`; None for no row or one this version cannot read.

        An unreadable row (written by another version of the tracker) is
        counted and logged once, and left as it is: the timer skips it, and the
        order's next event starts its saga afresh.
        """
        if row is None:
            return None
        try:
            return Saga.from_dict(row)
        except UnreadableSaga as exc:
            if key not in self._unreadable:
                self._unreadable.add(key)
                metrics.TRACKER_UNREADABLE_ROWS.inc()
                log.error("saga row %s is unreadable (%s); skipped", key.decode(errors="replace"),
                          exc)
            return None

    async def on_batch(self, messages: list[Message]) -> None:
        """Apply a batch of events to their sagas; each saga's row is written once.

        A table write is a changelog record, so a saga that several events of
        the batch touch costs one record, not one per event.
        """
        touched: dict[bytes, Saga] = {}
        for message in messages:
            try:
                envelope = decode(message.value)
                check_type_header(message.headers, envelope)
                if envelope.type not in ORCHESTRATOR.handles:  # sent without a type header
                    metrics.EVENTS.labels(SERVICE, envelope.type, "ignored").inc()
                    continue
                check_key(message.key, envelope)
            except DecodeError as exc:
                await self._dead_letter(message, exc.reason)
                continue
            with tracing.consuming(SERVICE, envelope, message.topic, message.headers,
                                   message.partition, message.offset) as (_, trace_headers):
                try:
                    await self._apply(envelope, touched, trace_headers,
                                      tracing.trace_id_of(message.headers))
                except InvalidSagaEvent as exc:
                    await self._dead_letter(message, f"invalid {envelope.type}: {exc}")
        for key, saga in touched.items():
            self.sagas[key] = saga.as_dict()
            # watched once written: a tick between would find no row and stop watching
            (self._running.discard if saga.finished else self._running.add)(key)

    async def _apply(self, envelope: Envelope, touched: dict[bytes, Saga],
                     trace_headers: dict[str, str], trace_id: str = "") -> None:
        """Run one event through :func:`transition` and send the commands it decided."""
        key = envelope.order_id.encode()
        before = touched.get(key)
        if before is None:
            before = self._read(key, self.sagas.get(key))
        was_finished = before.finished if before else False
        saga, commands = transition(before, envelope, now_ms(), self.timeout_ms, trace_id)
        metrics.EVENTS.labels(SERVICE, envelope.type, "recorded").inc()  # deliveries, like steps'
        touched[key] = saga
        for command in commands:
            await self._send_command(command)
        if saga.finished:
            self._forget(key)
        else:
            self._traces[key] = trace_headers
        # a saga closed by CancelRejected had ended before: its outcome is not a new one
        if saga.finished and not was_finished and envelope.type != "CancelRejected":
            self._observe_outcome(saga)

    async def _send_command(self, command: Envelope) -> None:
        """Send a command and wait for the broker's ack; a failure waits for the timer's resend.

        The timer times a running saga out again every ``RESEND_MS`` until it
        ends, so a command the broker did not take is sent again then.
        """
        if self._cancels_to_drop and command.type == "CancelOrder":
            self._cancels_to_drop -= 1  # fault injection (tests): as if the broker lost it
            log.warning("fault injection: dropped CancelOrder for %s", command.order_id)
            return
        try:
            await kafka.send_envelope(kafka.faust_send(self.app),
                                      self.commands.get_topic_name(), command)
        except KafkaError as exc:
            metrics.TRACKER_SEND_FAILURES.labels(command.type).inc()
            log.warning("%s for %s not sent (%s); sent again within %d ms", command.type,
                        command.order_id, exc, RESEND_MS)

    def _observe_outcome(self, saga: Saga) -> None:
        outcome, reason = outcome_labels(saga)
        metrics.SAGA_OUTCOMES.labels(outcome, reason).inc()
        metrics.ORDER_E2E.labels(outcome).observe(e2e_ms(saga, self.timeout_ms) / 1000)

    async def tick(self) -> None:
        """Time out overdue sagas (again every ``RESEND_MS`` until they end); drop old ones.

        Only the sagas this worker owns: during a rebalance it owns none for
        sure, so it waits. Every ``FULL_SCAN_S`` it reads every row (and drops
        rows of partitions now owned elsewhere from the local store); in
        between, only the sagas it has seen running.
        """
        if self.app.rebalancing:
            return
        now = now_ms()
        if self._scanned_at is None or time.monotonic() - self._scanned_at >= FULL_SCAN_S:
            self._scanned_at = time.monotonic()
            await self._scan(now)
        else:
            await self._check_running(now)

    async def _scan(self, now: int) -> None:
        """Every row: time out, age, drop stale copies, and note what runs."""
        owned, kept = self.ownership.owned(), self.ownership.kept()
        stale = []
        for key, data in list(self.sagas.items()):
            partition = self.ownership.partition(key)
            if partition not in owned:
                if partition not in kept:
                    stale.append(key)
                continue
            if finished_row(data):  # most rows: judged without building a Saga
                self._age(key, data, now)
                continue
            saga = self._read(key, data)
            if saga is not None:
                self._running.add(key)
                await self._time_out_if_due(key, saga, now)
        if stale:
            self._drop_stale(stale)

    async def _check_running(self, now: int) -> None:
        """The sagas seen running: time out the overdue, stop watching the rest that ended."""
        owned = self.ownership.owned()
        for key in list(self._running):
            data = self.sagas.get(key) if self.ownership.partition(key) in owned else None
            saga = None if data is None or finished_row(data) else self._read(key, data)
            if saga is None:
                self._running.discard(key)
            else:
                await self._time_out_if_due(key, saga, now)

    async def _time_out_if_due(self, key: bytes, saga: Saga, now: int) -> None:
        if overdue(saga, now) and now - self._timeouts_sent.get(key, 0) > RESEND_MS:
            self._timeouts_sent[key] = now
            await self._time_out(key, saga)

    def _age(self, key: bytes, row: dict[str, Any], now: int) -> None:
        """Drop a finished saga's steps after the retention, and the saga after the memory.

        Memory stays bounded, and until the memory passes a late event for the
        order finds its saga finished rather than starting a new one.
        """
        if forgettable(row, now, self.memory_ms):
            del self.sagas[key]
            self._forget(key)
            self.ownership.forget(key)
        elif expired(row, now, self.retention_ms):
            self.sagas[key] = without_steps(row)

    async def _time_out(self, key: bytes, saga: Saga) -> None:
        body = SagaTimedOut(deadline_ms=saga.deadline_ms)
        event = new_envelope(saga.order_id, body, producer=SERVICE,
                             placed_at_ms=saga.placed_at_ms)
        try:
            await self._send_timeout(key, event)
        except KafkaError as exc:  # an exception out of a timer crashes the worker
            metrics.TRACKER_SEND_FAILURES.labels(event.type).inc()
            log.warning("SagaTimedOut for %s not sent (%s); retrying in %d ms",
                        saga.order_id, exc, RESEND_MS)

    def _drop_stale(self, keys: list[bytes]) -> None:
        """Drop rows of partitions other workers own now, from the local store only.

        A table delete would write a tombstone into the new owner's changelog
        partition; this worker's copies are merely out of date, not deleted.
        """
        for key in keys:
            del self.sagas.data[key]
            self._forget(key)
            self.ownership.forget(key)
            self._unreadable.discard(key)
        log.info("dropped %d sagas of partitions other workers own now", len(keys))

    def _forget(self, key: bytes) -> None:
        """Drop what the timer keeps for a saga it no longer has to time out."""
        self._running.discard(key)
        self._timeouts_sent.pop(key, None)
        self._traces.pop(key, None)

    async def _send_timeout(self, key: bytes, event: Envelope) -> None:
        """Send ``SagaTimedOut`` as part of the order's trace (a root span after a restart)."""
        parent = tracing.context_from(self._traces.get(key))
        await kafka.send_envelope(self._send, self.saga_events.get_topic_name(), event, parent)

    async def _send(self, topic: str, key: bytes, value: bytes,
                    headers: tracing.KafkaHeaders) -> None:
        """Hand a record to the app's producer (buffered, not awaited to the broker's ack)."""
        await self.app.producer.send(topic, key, value, None, None, headers)

    async def _dead_letter(self, message: Message, reason: str) -> None:
        await self.dead_letters.publish(message, reason)
        metrics.EVENTS.labels(SERVICE, "unknown", "dead_letter").inc()

    def counts(self) -> dict[str, int]:
        """Sagas per status among the partitions this worker owns."""
        counts: dict[str, int] = {}
        for _, row in self._owned_rows():
            status = str(row.get("status")) if isinstance(row, dict) else "UNREADABLE"
            counts[status] = counts.get(status, 0) + 1
        return counts
