"""The orders step answers every CancelOrder, so the tracker can close its saga.

The tracker resends its CancelOrder (same event id) until the saga ends. A
cancel of an order that has already ended used to change nothing and emit
nothing, so the tracker could not tell "lost" from "too late".
"""

from __future__ import annotations

import pytest

from agents.orders import step as orders
from schemas.oms_pb2 import CancelOrder, InventoryRejected, PaymentCompleted, PlaceOrder
from tests.conftest import new_order_id
from tests.helpers import envelope, lines, outbox_types, step

pytestmark = pytest.mark.integration


async def placed(pool, oid: str) -> None:
    body = PlaceOrder(customer_id="c1", payment_token="tok_visa", currency="EUR",
                      lines=lines(("SKU-0001", 1)))
    await step(pool, orders.handle, envelope(oid, body))


async def test_a_cancel_of_a_confirmed_order_is_rejected_with_its_status(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    await placed(pool, oid)
    await step(pool, orders.handle, envelope(oid, PaymentCompleted(charge_id="ch")))
    result = await step(pool, orders.handle, envelope(oid, CancelOrder(reason="saga timed out")))
    [answer] = result.emitted
    assert answer.type == "CancelRejected"
    assert (answer.cancel_rejected.status, answer.cancel_rejected.reason) == ("CONFIRMED", "")
    assert await pool.fetchval("SELECT status FROM orders WHERE order_id = $1", oid) == "CONFIRMED"


async def test_a_cancel_of_a_cancelled_order_is_rejected_with_the_first_reason(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    await placed(pool, oid)
    await step(pool, orders.handle, envelope(oid, InventoryRejected(reason="out of stock: X")))
    result = await step(pool, orders.handle, envelope(oid, CancelOrder(reason="saga timed out")))
    [answer] = result.emitted
    assert (answer.cancel_rejected.status, answer.cancel_rejected.reason) == (
        "CANCELLED", "out of stock: X")


async def test_a_resent_cancel_is_answered_once(seeded) -> None:
    """The tracker's resends share one event id: the inbox absorbs them."""
    pool, oid = seeded["orders"], new_order_id()
    await placed(pool, oid)
    await step(pool, orders.handle, envelope(oid, PaymentCompleted(charge_id="ch")))
    cancel = envelope(oid, CancelOrder(reason="saga timed out"))
    first, again = await step(pool, orders.handle, cancel), await step(pool, orders.handle, cancel)
    assert [e.type for e in first.emitted] == ["CancelRejected"] and not again.applied
    assert await outbox_types(pool, oid) == ["OrderCreated", "OrderConfirmed", "CancelRejected"]
