"""The orders step: create, confirm or cancel an order; the saga's entry and exit.

| on | does | emits |
|---|---|---|
| PlaceOrder | create PENDING (idempotent on order id) | OrderCreated |
| PaymentCompleted | confirm if still PENDING | OrderConfirmed |
| InventoryRejected, PaymentFailed, CancelOrder | cancel if not terminal | OrderCancelled |
| CancelOrder for an order that has ended | answer with its status | CancelRejected |
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from agents.messaging.errors import InvalidEvent
from schemas.codec import new_envelope
from schemas.oms_pb2 import (
    CancelRejected,
    Envelope,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PlaceOrder,
)
from stores import orders
from stores.orders import CANCELLED, CONFIRMED, PENDING, Order

SERVICE = "orders"


async def handle(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """The orders step for one event (inside the step transaction)."""
    kind = envelope.type
    if kind == "PlaceOrder":
        return await place(conn, envelope)
    if kind == "PaymentCompleted":
        return await confirm(conn, envelope)
    if kind == "InventoryRejected":
        return await cancel(conn, envelope, envelope.inventory_rejected.reason)
    if kind == "PaymentFailed":
        return await cancel(conn, envelope, f"payment failed: {envelope.payment_failed.reason}")
    if kind == "CancelOrder":
        return await cancel(conn, envelope, envelope.cancel_order.reason or "cancelled")
    return []


def validate_place_order(body: PlaceOrder) -> None:
    """Reject content no order can be made of (the message goes to dead letters)."""
    if not body.lines:
        raise InvalidEvent("lines: at least one line is required")
    for i, line in enumerate(body.lines):
        if not line.sku:
            raise InvalidEvent(f"lines[{i}].sku: must not be empty")
        if line.quantity <= 0:
            raise InvalidEvent(f"lines[{i}].quantity: must be positive, got {line.quantity}")
        if line.unit_price_cents < 0:
            raise InvalidEvent(f"lines[{i}].unit_price_cents: must not be negative")
    if not body.payment_token:
        raise InvalidEvent("payment_token: must not be empty")


async def place(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Create the order once; a repeated PlaceOrder for the same id changes nothing."""
    body = envelope.place_order
    validate_place_order(body)
    amount = sum(line.quantity * line.unit_price_cents for line in body.lines)
    order = Order(
        order_id=envelope.order_id,
        customer_id=body.customer_id,
        status=PENDING,
        amount_cents=amount,
        currency=body.currency or "EUR",
        lines=[
            {"sku": x.sku, "quantity": x.quantity, "unit_price_cents": x.unit_price_cents}
            for x in body.lines
        ],
        payment_token=body.payment_token,
        reason=None,
        placed_at=_placed_at(envelope),
        updated_at=_placed_at(envelope),
    )
    if not await orders.create(conn, order):
        return []
    created = OrderCreated(
        customer_id=body.customer_id,
        lines=body.lines,
        amount_cents=amount,
        currency=order.currency,
        payment_token=body.payment_token,
    )
    return [new_envelope(envelope.order_id, created, producer=SERVICE, cause=envelope)]


async def confirm(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Confirm a PENDING order; a late payment for a cancelled order is refunded by payments."""
    order = await orders.transition(conn, envelope.order_id, CONFIRMED)
    if order is None:
        return []
    body = OrderConfirmed(amount_cents=order.amount_cents)
    return [new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope)]


async def cancel(conn: asyncpg.Connection, envelope: Envelope, reason: str) -> list[Envelope]:
    """Cancel unless terminal; a cancel before the order exists leaves a CANCELLED tombstone.

    A CancelOrder for an order that has ended is answered with CancelRejected:
    the tracker resends its cancel until it learns the order has ended.
    """
    order = await orders.transition(conn, envelope.order_id, CANCELLED, reason)
    if order is None:
        if envelope.type != "CancelOrder":
            return []
        tombstone = Order(envelope.order_id, "", CANCELLED, 0, "EUR", [], "", reason,
                          _placed_at(envelope), _placed_at(envelope))
        if not await orders.create(conn, tombstone):
            return await _reject_cancel(conn, envelope)
    body = OrderCancelled(reason=reason)
    return [new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope)]


async def _reject_cancel(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Tell whoever cancelled an order that has ended how it ended."""
    order = await orders.get(conn, envelope.order_id)
    if order is None or order.status == PENDING:
        # placed by a step that committed after this one's UPDATE: retrying cancels it
        raise asyncpg.SerializationError(f"order {envelope.order_id} placed concurrently")
    body = CancelRejected(status=order.status, reason=order.reason or "")
    return [new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope)]


def _placed_at(envelope: Envelope) -> datetime:
    ms = envelope.placed_at_ms or envelope.occurred_at_ms
    return datetime.fromtimestamp(ms / 1000, tz=UTC)

