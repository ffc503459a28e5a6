"""The orders step: create, confirm or cancel an order; the saga's entry and exit.

| on | does | emits |
|---|---|---|
| PlaceOrder | create PENDING (idempotent on order id) | OrderCreated |
| PaymentCompleted | confirm if still PENDING, recording the amount charged | OrderConfirmed |
| InventoryRejected, PaymentFailed, CancelOrder | cancel if not terminal | OrderCancelled |
| CancelOrder for an order that has ended | answer with its status | CancelRejected |

Orders does not price an order: inventory does, from its catalogue, and
payments charges that amount. An order's amount is unknown until it is
confirmed, and is then the amount PaymentCompleted says was captured.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from agents.messaging.errors import InvalidEvent
from agents.orders.intake import InvalidOrder, PlaceOrderRequest, check_place_order
from schemas.codec import new_envelope
from schemas.oms_pb2 import (
    CancelRejected,
    Envelope,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
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


def validate_place_order(envelope: Envelope) -> PlaceOrderRequest:
    """The order a PlaceOrder asks for, within the bounds HTTP and the CLI apply too.

    An order outside them is a dead letter whose reason names each field.
    """
    try:
        return check_place_order(envelope.order_id, envelope.place_order)
    except InvalidOrder as exc:
        raise InvalidEvent(str(exc)) from exc


async def place(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Create the order once; a repeated PlaceOrder for the same id changes nothing."""
    request = validate_place_order(envelope)
    placed_at = _placed_at(envelope)
    order = Order(
        order_id=envelope.order_id,
        customer_id=request.customer_id,
        status=PENDING,
        amount_cents=None,
        currency=request.currency,
        lines=[line.model_dump(exclude_none=True) for line in request.lines],
        payment_token=request.payment_token,
        reason=None,
        placed_at=placed_at,
        updated_at=placed_at,
    )
    if not await orders.create(conn, order):
        return []
    created = OrderCreated(
        customer_id=request.customer_id,
        lines=envelope.place_order.lines,  # a client's price goes along, for inventory to check
        currency=request.currency,
        payment_token=request.payment_token,
    )
    return [new_envelope(envelope.order_id, created, producer=SERVICE, cause=envelope,
                         placed_at_ms=int(placed_at.timestamp() * 1000))]


async def confirm(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Confirm a PENDING order; a late payment for a cancelled order is refunded by payments."""
    charged = envelope.payment_completed.amount_cents
    order = await orders.transition(conn, envelope.order_id, CONFIRMED, amount_cents=charged)
    if order is None:
        return []
    body = OrderConfirmed(amount_cents=charged)
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
        tombstone = Order(envelope.order_id, "", CANCELLED, None, "EUR", [], "", reason,
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
    """When the client placed the order; the intake time if its envelope does not say.

    ``placed_at_ms`` and ``occurred_at_ms`` are optional (the README names
    the fields a producer must set), and proto3 reads a missing one as 0:
    the epoch, which no order was placed at.
    """
    ms = envelope.placed_at_ms or envelope.occurred_at_ms
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms > 0 else datetime.now(UTC)

