"""The payments service: charge once, refund on cancel, never charge after a cancel.

| on | does | emits |
|---|---|---|
| InventoryReserved | charge, order id as idempotency key | PaymentCompleted / PaymentFailed |
| OrderCancelled | refund if charged; else void, so a late charge never happens | PaymentRefunded |

The two inputs come from different topics, so either may arrive first.
"""

from __future__ import annotations

import asyncpg
import faust

from agents import metrics
from agents.app import service_app
from agents.gateway import GatewayTimeout, PaymentGateway, SimulatedGateway
from agents.step import Handler, InvalidEvent
from agents.topics import INVENTORY_EVENTS, ORDER_EVENTS, PAYMENT_EVENTS
from config import Settings
from schemas.codec import new_envelope
from schemas.oms_pb2 import Envelope, PaymentCompleted, PaymentFailed, PaymentRefunded
from stores import payments
from stores.payments import CHARGED, DECLINED, REFUNDED, UNKNOWN, VOIDED

SERVICE = "payments"
SOURCES = (INVENTORY_EVENTS, ORDER_EVENTS)
HANDLED = frozenset({"InventoryReserved", "OrderCancelled"})


def make_handler(gateway: PaymentGateway) -> Handler:
    """The payments step, bound to a gateway."""

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
        if envelope.type == "InventoryReserved":
            return await charge(conn, envelope, gateway)
        if envelope.type == "OrderCancelled":
            return await refund(conn, envelope, gateway)
        return []

    return handle


async def charge(
    conn: asyncpg.Connection, envelope: Envelope, gateway: PaymentGateway
) -> list[Envelope]:
    """Charge unless the order already has a payment row (charged, declined or voided)."""
    body = envelope.inventory_reserved
    if body.amount_cents < 0:
        raise InvalidEvent(f"amount_cents: must not be negative, got {body.amount_cents}")
    if await payments.status_of(conn, envelope.order_id) is not None:
        return []
    try:
        result = await gateway.charge(envelope.order_id, body.amount_cents, body.payment_token)
    except GatewayTimeout as exc:
        metrics.GATEWAY_CALLS.labels("charge", "timeout").inc()
        await payments.record(conn, envelope.order_id, UNKNOWN, reason=str(exc))
        return []  # the tracker's deadline cancels the order; the cancel voids or refunds
    if not result.approved:
        metrics.GATEWAY_CALLS.labels("charge", "declined").inc()
        await payments.record(conn, envelope.order_id, DECLINED, reason=result.reason)
        out = PaymentFailed(reason=result.reason)
        return [new_envelope(envelope.order_id, out, producer=SERVICE, cause=envelope)]
    metrics.GATEWAY_CALLS.labels("charge", "approved").inc()
    await payments.record(conn, envelope.order_id, CHARGED, amount_cents=body.amount_cents,
                          charge_id=result.charge_id)
    done = PaymentCompleted(charge_id=result.charge_id, amount_cents=body.amount_cents)
    return [new_envelope(envelope.order_id, done, producer=SERVICE, cause=envelope)]


async def refund(
    conn: asyncpg.Connection, envelope: Envelope, gateway: PaymentGateway
) -> list[Envelope]:
    """Refund a capture, or void the order at the PSP so it can never be captured."""
    row = await payments.get(conn, envelope.order_id)
    status = row["status"] if row else None
    if status in (DECLINED, REFUNDED, VOIDED):
        return []
    refunded = await gateway.cancel(envelope.order_id)
    metrics.GATEWAY_CALLS.labels("cancel", "refunded" if refunded else "voided").inc()
    if refunded is None:
        await payments.record(conn, envelope.order_id, VOIDED, reason="cancelled before charge")
        return []
    await payments.record(conn, envelope.order_id, REFUNDED,
                          amount_cents=refunded.amount_cents, charge_id=refunded.charge_id)
    out = PaymentRefunded(charge_id=refunded.charge_id, amount_cents=refunded.amount_cents)
    return [new_envelope(envelope.order_id, out, producer=SERVICE, cause=envelope)]


def build(settings: Settings) -> faust.App:
    """The payments Faust app."""

    def handler_factory(pool: asyncpg.Pool) -> Handler:
        return make_handler(SimulatedGateway(pool, settings))

    app, runtime = service_app(
        SERVICE, settings, sources=SOURCES, output=PAYMENT_EVENTS, handled=HANDLED,
        handler_factory=handler_factory,
    )
    from agents.views.payments import add_payment_views

    add_payment_views(app, runtime)
    return app
