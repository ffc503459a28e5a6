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

from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

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
Step = Callable[[asyncpg.Connection, Envelope], Awaitable[list[Envelope]]]


class OrdersStep:
    """The orders step, with a batch's independent writes made one statement each.

    Within one transaction, the events of orders that appear once in the
    batch do not depend on each other's order, so their creations and their
    transitions are written together (:func:`write_batch`) and each event's
    step only reads the outcome; an order with several events in the batch,
    and every CancelOrder, goes statement by statement, in order.
    """

    async def prepare(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> Step:
        """Write the batch's independent changes; the handler that reads their outcome."""
        written = await write_batch(conn, envelopes)
        return partial(handle, written=written)

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
        return await handle(conn, envelope)


async def handle(
    conn: asyncpg.Connection, envelope: Envelope, written: Written | None = None
) -> list[Envelope]:
    """The orders step for one event (inside the step transaction).

    What :func:`write_batch` already did for this event (``written``) is
    read, not done again.
    """
    event_id = envelope.event_id
    if envelope.type == "PlaceOrder":
        if written is not None and event_id in written.placed:
            order = written.placed[event_id]
            return [] if order is None else [_created(envelope, order)]
        return await place(conn, envelope)
    change = transition_of(envelope)
    if change is None:
        return []
    moved = written.moved.get(event_id) if written is not None else None
    if moved is None:
        moved = await orders.transition(conn, change)
    if moved:
        return [_moved(envelope, change)]
    if envelope.type == "CancelOrder":
        return await _cancel_unknown_or_ended(conn, envelope, change)
    return []  # already ended: a late payment for a cancelled order is refunded by payments


@dataclass(frozen=True)
class Written:
    """What :func:`write_batch` did, by event id."""

    placed: dict[str, Order | None]
    """The order each PlaceOrder created; None when the order existed already."""
    moved: dict[str, bool]
    """Whether each transition found its order PENDING and moved it."""


async def write_batch(conn: asyncpg.Connection, envelopes: list[Envelope]) -> Written:
    """Create and transition, one statement each, the orders with one event in the batch.

    A PlaceOrder that is not valid is left out: its own step raises the reason.
    """
    once = Counter(e.order_id for e in envelopes)
    placing: dict[str, Order] = {}
    changing: dict[str, orders.Transition] = {}
    for envelope in envelopes:
        if once[envelope.order_id] != 1:
            continue
        if envelope.type == "PlaceOrder":
            with suppress(InvalidEvent):
                placing[envelope.event_id] = new_order(envelope)
        elif envelope.type != "CancelOrder" and (change := transition_of(envelope)):
            changing[envelope.event_id] = change
    created = await orders.create_many(conn, list(placing.values())) if placing else set()
    moved = await orders.transition_many(conn, list(changing.values())) if changing else set()
    return Written(
        placed={event_id: order if order.order_id in created else None
                for event_id, order in placing.items()},
        moved={event_id: change.order_id in moved for event_id, change in changing.items()})


def validate_place_order(envelope: Envelope) -> PlaceOrderRequest:
    """The order a PlaceOrder asks for, within the bounds HTTP and the CLI apply too.

    An order outside them is a dead letter whose reason names each field.
    """
    try:
        return check_place_order(envelope.order_id, envelope.place_order)
    except InvalidOrder as exc:
        raise InvalidEvent(str(exc)) from exc


def new_order(envelope: Envelope) -> Order:
    """The PENDING order a valid PlaceOrder creates; InvalidEvent names what is wrong."""
    request = validate_place_order(envelope)
    placed_at = _placed_at(envelope)
    return Order(
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


async def place(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Create the order once; a repeated PlaceOrder for the same id changes nothing."""
    order = new_order(envelope)
    if not await orders.create(conn, order):
        return []
    return [_created(envelope, order)]


def _created(envelope: Envelope, order: Order) -> Envelope:
    body = OrderCreated(
        customer_id=order.customer_id,
        lines=envelope.place_order.lines,  # a client's price goes along, for inventory to check
        currency=order.currency,
        payment_token=order.payment_token,
    )
    return new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope,
                        placed_at_ms=int(order.placed_at.timestamp() * 1000))


def transition_of(envelope: Envelope) -> orders.Transition | None:
    """What an event asks of a PENDING order: confirm it with the amount charged, or
    cancel it with a reason (None for an event that asks nothing)."""
    oid, kind = envelope.order_id, envelope.type
    if kind == "PaymentCompleted":
        return orders.Transition(oid, CONFIRMED,
                                 amount_cents=envelope.payment_completed.amount_cents)
    if kind == "InventoryRejected":
        return orders.Transition(oid, CANCELLED, envelope.inventory_rejected.reason)
    if kind == "PaymentFailed":
        return orders.Transition(oid, CANCELLED,
                                 f"payment failed: {envelope.payment_failed.reason}")
    if kind == "CancelOrder":
        return orders.Transition(oid, CANCELLED, envelope.cancel_order.reason or "cancelled")
    return None


def _moved(envelope: Envelope, change: orders.Transition) -> Envelope:
    body: OrderConfirmed | OrderCancelled
    if change.to == CONFIRMED:
        body = OrderConfirmed(amount_cents=change.amount_cents or 0)
    else:
        body = OrderCancelled(reason=change.reason or "")
    return new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope)


async def _cancel_unknown_or_ended(
    conn: asyncpg.Connection, envelope: Envelope, change: orders.Transition
) -> list[Envelope]:
    """A CancelOrder for an order that is not PENDING.

    One that does not exist yet leaves a CANCELLED tombstone (its PlaceOrder
    then changes nothing); one that has ended is answered with CancelRejected,
    since the tracker resends its cancel until it learns the order has ended.
    """
    tombstone = Order(envelope.order_id, "", CANCELLED, None, "EUR", [], "", change.reason,
                      _placed_at(envelope), _placed_at(envelope))
    if await orders.create(conn, tombstone):
        return [_moved(envelope, change)]
    return await _reject_cancel(conn, envelope)


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

