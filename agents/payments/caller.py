"""The PSP caller: after the commit, make the calls the payments step recorded.

One per payments worker (an app task). It wakes on the NOTIFY of a committed
intent, when one of its orders is done, and every quarter lease; it leases the
intents nobody holds, at most ``psp_max_in_flight`` orders at a time, and
works each order on a task of its own: ask the PSP (every call bounded by
``gateway_timeout_s``), have the answer and its outgoing event settled, then
go on with the order's next intent (a cancel recorded meanwhile). One settler
task records the answers that arrived together in one short transaction. So
a hung call holds up its own order and nobody else's, and one order's calls
stay in order. The leases of the orders in work are renewed
every quarter lease; a dead worker's run out and another caller takes them
over, asking the PSP what it made of the request before charging again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from agents.messaging.relay import OutboxRelay
from agents.messaging.retry import Backoff
from agents.observability import metrics
from agents.payments import step
from agents.payments.psp import (
    ChargeResult,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentGateway,
    Refund,
)
from schemas.codec import encode
from stores import messaging, payments
from stores.payments import Intent

log = logging.getLogger(__name__)

T = TypeVar("T")


class GuardedGateway:
    """A :class:`PaymentGateway` whose every call ends within ``timeout_s``, counted.

    ``oms_gateway_calls`` counts each call by its result, and
    ``oms_gateway_in_flight`` the calls waiting for an answer.
    """

    def __init__(self, gateway: PaymentGateway, timeout_s: float) -> None:
        self._gateway = gateway
        self._timeout_s = timeout_s

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Charge: approved, declined, timeout or unavailable."""
        return await self._call("charge", self._gateway.charge(idempotency_key, amount_cents,
                                                                token),
                                lambda r: "approved" if r.approved else "declined")

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Cancel: refunded, voided, timeout or unavailable."""
        return await self._call("cancel", self._gateway.cancel(idempotency_key),
                                lambda r: "refunded" if r else "voided")

    async def find(self, idempotency_key: str) -> ChargeResult | None:
        """Look a charge up: found, unknown, timeout or unavailable."""
        return await self._call("find", self._gateway.find(idempotency_key),
                                lambda r: "found" if r else "unknown")

    async def _call(self, operation: str, call: Awaitable[T], result: Callable[[T], str]) -> T:
        metrics.GATEWAY_IN_FLIGHT.inc()
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await call
        except (TimeoutError, GatewayTimeout) as exc:
            metrics.GATEWAY_CALLS.labels(operation, "timeout").inc()
            raise GatewayTimeout(f"PSP did not answer within {self._timeout_s}s") from exc
        except GatewayUnavailable:
            metrics.GATEWAY_CALLS.labels(operation, "unavailable").inc()
            raise
        finally:
            metrics.GATEWAY_IN_FLIGHT.dec()
        metrics.GATEWAY_CALLS.labels(operation, result(answer)).inc()
        return answer


@dataclass(frozen=True)
class Answered:
    """A PSP answer waiting to be settled, and the future its order's task awaits."""

    intent: Intent
    answer: step.Answer
    settled: asyncio.Future[Intent | None]


class _SettleAlone(Exception):
    """The batch an answer was in failed: its order's task settles it on its own."""


class PspCaller:
    """Leases intents, calls the PSP per order, settles each answer; run :meth:`run`."""

    def __init__(
        self, relay: OutboxRelay, out_topic: str, *, max_in_flight: int, lease_s: float
    ) -> None:
        self.owner = uuid.uuid4()
        """This caller's lease id: whatever it leases, only it settles."""
        self._relay = relay
        self._out_topic = out_topic
        self._max_in_flight = max_in_flight
        self._lease_s = lease_s
        self._working: dict[str, asyncio.Task[None]] = {}  # by order id
        self._wake = asyncio.Event()
        self._answered: list[Answered] = []  # waiting for the settler
        self._settle_wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None  # set by run()
        self.connected = False

    def readiness(self) -> dict[str, bool]:
        """For ``/ready/``: the caller is listening for intents and can claim them."""
        return {"psp_caller": self.connected}

    async def run(self, pool: asyncpg.Pool, gateway: PaymentGateway) -> None:
        """Claim and work intents forever; a lost database connection is retried."""
        backoff = Backoff(0.1)
        self._pool = pool
        settler = asyncio.create_task(self._settle_forever(pool), name="psp settler")
        try:
            while True:
                try:
                    async with pool.acquire() as conn:
                        try:
                            await conn.add_listener(payments.INTENTS_CHANNEL, self._on_notify)
                            # a killed backend ends the listening silently: wake, fail, reconnect
                            conn.add_termination_listener(lambda _conn: self._wake.set())
                            self.connected = True
                            backoff.reset()
                            await self._claim_forever(conn, gateway)
                        finally:
                            conn.terminate()  # it listens: never hand it back to the pool
                except Exception as exc:  # noqa: BLE001 - no input to blame: counted, retried
                    self.connected = False
                    self._retrying("claim", exc, backoff)
                    await backoff.wait()
        finally:  # stopping: the leases run out and whoever starts next takes them over
            self.connected = False
            settler.cancel()
            for task in self._working.values():
                task.cancel()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _claim_forever(self, conn: asyncpg.Connection, gateway: PaymentGateway) -> None:
        """Lease what there is room for, start each order, renew, wait for news."""
        tick_s = self._lease_s / 4
        renewed = 0.0
        while True:
            self._wake.clear()  # before the claim: a NOTIFY during it wakes the next round
            if time.monotonic() - renewed >= tick_s:
                await payments.renew(conn, self.owner, list(self._working), self._lease_s)
                metrics.PAYMENT_INTENTS.set(await payments.waiting(conn))
                renewed = time.monotonic()
            room = self._max_in_flight - len(self._working)
            if room > 0:
                for intent in await payments.claim(conn, self.owner, room, self._lease_s):
                    self._start(intent, gateway)
            try:
                await asyncio.wait_for(self._wake.wait(), tick_s)
            except TimeoutError:
                pass  # time to renew the leases

    def _start(self, intent: Intent, gateway: PaymentGateway) -> None:
        if intent.order_id in self._working:
            return  # re-leased after a lapse in renewing: the running task settles it
        if intent.taken_over:
            metrics.PAYMENT_INTENTS_TAKEN_OVER.inc()
            log.warning("payments: took over the %s intent of %s from a caller that stopped"
                        " renewing it", intent.status, intent.order_id)
        task = asyncio.create_task(self._work(intent, gateway),
                                   name=f"psp {intent.order_id}")
        self._working[intent.order_id] = task
        task.add_done_callback(lambda t: self._done(intent.order_id, t))

    def _done(self, order_id: str, task: asyncio.Task[None]) -> None:
        """An order needs no more calls, or its task failed (its lease then runs out and
        the intent is taken over)."""
        self._working.pop(order_id, None)
        self._wake.set()  # room for another order
        if not task.cancelled() and (exc := task.exception()) is not None:
            metrics.PSP_CALLER_RETRIES.labels("order", type(exc).__name__).inc()
            log.error("payments: the PSP calls of %s failed; its intent is taken over once"
                      " its lease runs out", order_id, exc_info=exc)

    async def _work(self, first: Intent, gateway: PaymentGateway) -> None:
        """One order's calls, one after another, until it waits for nothing."""
        intent: Intent | None = first
        while intent is not None:
            answer = await self._ask(intent, gateway)
            intent = await self._settle(intent, answer)

    async def _ask(self, intent: Intent, gateway: PaymentGateway) -> step.Answer:
        """The PSP's answer; an unreachable PSP (or a cancel's timeout) is retried."""
        backoff = Backoff(0.1)
        uncertain = intent.taken_over
        while True:
            try:
                return await step.ask(gateway, intent, uncertain=uncertain)
            except Exception as exc:  # noqa: BLE001 - unavailable, timed out, or unknown
                uncertain = True  # the request may have arrived: ask before charging again
                self._retrying("psp", exc, backoff, intent)
                await backoff.wait()

    async def _settle(self, intent: Intent, answer: step.Answer) -> Intent | None:
        """Hand the answer to the settler; the order's next intent once it is committed.

        If the batch it was in failed, the answer is settled alone, retried in
        this order's task: an answer the database refuses holds up its own
        order and nobody else's.
        """
        settled: asyncio.Future[Intent | None] = asyncio.get_running_loop().create_future()
        self._answered.append(Answered(intent, answer, settled))
        self._settle_wake.set()
        try:
            return await settled
        except _SettleAlone:
            return await self._settle_alone(Answered(intent, answer, settled))

    async def _settle_alone(self, answered: Answered) -> Intent | None:
        assert self._pool is not None
        backoff = Backoff(0.05)
        while True:
            try:
                return (await self._settle_batch(self._pool, [answered]))[0]
            except Exception as exc:  # noqa: BLE001 - a read-only or lost database: retried
                self._retrying("settle", exc, backoff, answered.intent)
                await backoff.wait()

    async def _settle_forever(self, pool: asyncpg.Pool) -> None:
        """Settle every answer that has arrived, together, in one transaction at a time.

        Answers arrive one per order from many orders' tasks; settling each in
        a transaction of its own cost a connection reset, BEGIN, COMMIT and
        the outbox insert per answer. When a batch fails (nothing of it
        committed), each answer goes back to its order's task to be settled
        alone (:meth:`_settle`).
        """
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            batch, self._answered = self._answered, []
            try:
                following = await self._settle_batch(pool, batch)
            except Exception as exc:  # noqa: BLE001 - each order's task settles its own
                metrics.PSP_CALLER_RETRIES.labels("settle", type(exc).__name__).inc()
                log.warning("payments: settling %d answers together failed (%s: %s); each"
                            " is settled alone", len(batch), type(exc).__name__, exc)
                for answered in batch:
                    if not answered.settled.done():  # its order's task may have been cancelled
                        answered.settled.set_exception(_SettleAlone())
                continue
            for answered, intent in zip(batch, following, strict=True):
                if not answered.settled.done():
                    answered.settled.set_result(intent)

    async def _settle_batch(self, pool: asyncpg.Pool, batch: list[Answered]) -> list[Intent | None]:
        """Record the answers and their events; return each order's next intent."""
        messages: list[messaging.OutboxMessage] = []
        following: list[Intent | None] = []
        async with pool.acquire() as conn, conn.transaction():
            for answered in batch:
                intent = answered.intent
                emitted = await step.settle(conn, intent, answered.answer)
                messages += [messaging.OutboxMessage(self._out_topic, e.order_id.encode(),
                                                     encode(e), intent.trace) for e in emitted]
                # an event means the intent settled and its lease is gone: nothing follows
                following.append(None if emitted else
                                  await payments.next_intent(conn, intent, self._lease_s))
            rows = await messaging.enqueue(conn, messages,
                                           notify=not self._relay.is_leader)  # else in-process
        self._relay.committed(rows)
        return following

    def _retrying(self, stage: str, exc: Exception, backoff: Backoff,
                  intent: Intent | None = None) -> None:
        metrics.PSP_CALLER_RETRIES.labels(stage, type(exc).__name__).inc()
        what = f" ({intent.status} {intent.order_id})" if intent else ""
        log.warning("payments: PSP caller %s failed%s: %s: %s; retrying in %.2fs",
                    stage, what, type(exc).__name__, exc, backoff.delay)

