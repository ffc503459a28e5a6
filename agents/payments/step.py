"""The payments step: charge once, refund on cancel, never charge after a cancel.

| on | does | emits |
|---|---|---|
| InventoryReserved | charge, order id as idempotency key | PaymentCompleted / PaymentFailed |
| OrderCancelled | refund if charged; else void, so a late charge never happens | PaymentRefunded |

The two inputs come from different topics, so either may arrive first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from agents.messaging.errors import InvalidEvent
from agents.payments.psp import ChargeResult, GatewayTimeout, PaymentGateway, Refund
from schemas.codec import new_envelope
from schemas.oms_pb2 import Envelope, PaymentCompleted, PaymentFailed, PaymentRefunded
from stores import payments
from stores.payments import CHARGED, DECLINED, REFUNDED, UNKNOWN, VOIDED

T = TypeVar("T")
SERVICE = "payments"


class PaymentsStep:
    """The payments step; a batch's PSP calls go out concurrently.

    A real PSP answers in tens to hundreds of milliseconds, so calling it for
    one order after another would cap the service at a few orders per second.
    :meth:`prepare` starts every charge and cancel of a batch before its
    transaction. That is safe because both are idempotent by order id, a
    cancel voids the order at the PSP so a later charge can never capture, and
    the transaction records each answer only if the order has no conflicting
    payment row.
    """

    def __init__(self, gateway: PaymentGateway) -> None:
        self._gateway = gateway
        self._calls: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def prepare(self, envelopes: list[Envelope]) -> None:
        """Start the PSP calls of a batch; the step awaits their answers."""
        for stale in self._calls.values():
            stale.cancel()
        self._calls = {}
        for e in envelopes:
            if e.type == "InventoryReserved" and e.inventory_reserved.amount_cents >= 0:
                body = e.inventory_reserved
                call = self._gateway.charge(e.order_id, body.amount_cents, body.payment_token)
                self._calls[(e.type, e.order_id)] = _background(call)
            elif e.type == "OrderCancelled":
                self._calls[(e.type, e.order_id)] = _background(self._gateway.cancel(e.order_id))

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
        """The step for one event (inside the step transaction)."""
        order_id = envelope.order_id
        if envelope.type == "InventoryReserved":
            body = envelope.inventory_reserved
            if body.amount_cents < 0:
                raise InvalidEvent(f"amount_cents: must not be negative, got {body.amount_cents}")
            try:
                outcome: ChargeResult | GatewayTimeout = await self._answer(
                    envelope,
                    lambda: self._gateway.charge(order_id, body.amount_cents, body.payment_token),
                )
            except GatewayTimeout as exc:
                outcome = exc
            return await charge(conn, envelope, outcome)
        if envelope.type == "OrderCancelled":
            refunded = await self._answer(envelope, lambda: self._gateway.cancel(order_id))
            return await refund(conn, envelope, refunded)
        return []

    async def _answer(self, envelope: Envelope, call: Callable[[], Awaitable[T]]) -> T:
        """The answer :meth:`prepare` started, or a call made now (a second event of
        the same type and order in one batch: prepare kept one call per order)."""
        started = self._calls.pop((envelope.type, envelope.order_id), None)
        if started is not None and not started.cancelled():
            return await started  # type: ignore[no-any-return]
        return await call()


def _background(call: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    future = asyncio.ensure_future(call)
    # An answer nobody waits for (its event turned out to be a duplicate) must not
    # log "exception never retrieved"; the PSP calls themselves are idempotent.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def charge(
    conn: asyncpg.Connection, envelope: Envelope, outcome: ChargeResult | GatewayTimeout
) -> list[Envelope]:
    """Record the PSP's answer unless the order has a payment already (then emit nothing)."""
    order_id, amount = envelope.order_id, envelope.inventory_reserved.amount_cents
    if isinstance(outcome, GatewayTimeout):
        await payments.record_first(conn, order_id, UNKNOWN, reason=str(outcome))
        return []  # the tracker's deadline cancels the order; the cancel voids or refunds
    out: PaymentFailed | PaymentCompleted
    if outcome.approved:
        first = await payments.record_first(conn, order_id, CHARGED, amount_cents=amount,
                                            charge_id=outcome.charge_id)
        out = PaymentCompleted(charge_id=outcome.charge_id, amount_cents=amount)
    else:
        first = await payments.record_first(conn, order_id, DECLINED, reason=outcome.reason)
        out = PaymentFailed(reason=outcome.reason)
    if not first:
        return []  # charged, declined or voided before: this delivery is a repeat
    return [new_envelope(order_id, out, producer=SERVICE, cause=envelope)]


async def refund(
    conn: asyncpg.Connection, envelope: Envelope, refunded: Refund | None
) -> list[Envelope]:
    """Record the cancel at the PSP: a refund of the capture, or a void before any charge."""
    if refunded is None:
        await payments.record_cancel(conn, envelope.order_id, VOIDED,
                                     reason="cancelled before charge")
        return []
    if not await payments.record_cancel(conn, envelope.order_id, REFUNDED,
                                        amount_cents=refunded.amount_cents,
                                        charge_id=refunded.charge_id):
        return []  # refunded before: this cancel is a repeat
    out = PaymentRefunded(charge_id=refunded.charge_id, amount_cents=refunded.amount_cents)
    return [new_envelope(envelope.order_id, out, producer=SERVICE, cause=envelope)]

