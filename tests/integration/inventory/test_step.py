"""The inventory step against real PostgreSQL: reserve all or nothing, sell, release."""

from __future__ import annotations

import asyncpg
import pytest

from agents.inventory import step as inventory
from agents.messaging.errors import InvalidEvent
from schemas.oms_pb2 import OrderCancelled, OrderConfirmed, OrderCreated
from tests.conftest import new_order_id
from tests.helpers import envelope, lines, step

pytestmark = pytest.mark.integration


def created(items=(("SKU-0001", 2),), token: str = "tok_visa") -> OrderCreated:
    ls = lines(*items)
    return OrderCreated(customer_id="c", lines=ls, currency="EUR", payment_token=token,
                        amount_cents=sum(x.quantity * x.unit_price_cents for x in ls))


async def stock(pool: asyncpg.Pool, sku: str) -> tuple[int, int, int]:
    row = await pool.fetchrow("SELECT available, reserved, sold FROM stock WHERE sku = $1", sku)
    return row["available"], row["reserved"], row["sold"]


async def test_reserve_then_commit_moves_units_to_sold(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    before = await stock(pool, "SKU-0002")
    reserved = await step(pool, inventory.handle, envelope(oid, created((("SKU-0002", 3),))))
    assert [e.type for e in reserved.emitted] == ["InventoryReserved"]
    assert await stock(pool, "SKU-0002") == (before[0] - 3, before[1] + 3, before[2])
    committed = await step(pool, inventory.handle, envelope(oid, OrderConfirmed()))
    assert [e.type for e in committed.emitted] == ["InventoryCommitted"]
    assert await stock(pool, "SKU-0002") == (before[0] - 3, before[1], before[2] + 3)


async def test_lines_are_priced_from_the_catalogue_and_the_price_recorded(seeded) -> None:
    """Inventory prices an order that carries no prices: that amount is what gets charged."""
    pool, oid = seeded["inventory"], new_order_id()
    body = created((("SKU-0001", 2), ("SKU-0002", 1), ("SKU-0001", 1)))
    for line in body.lines:
        line.ClearField("unit_price_cents")
    body.amount_cents = 0
    result = await step(pool, inventory.handle, envelope(oid, body))
    reserved = result.emitted[0].inventory_reserved
    assert [(x.sku, x.quantity, x.unit_price_cents) for x in reserved.lines] == [
        ("SKU-0001", 2, 500), ("SKU-0002", 1, 750), ("SKU-0001", 1, 500)]
    assert reserved.amount_cents == 3 * 500 + 750
    rows = await pool.fetch("SELECT sku, quantity, unit_price_cents FROM reservation_lines"
                            " WHERE order_id = $1 ORDER BY sku", oid)
    assert [tuple(r) for r in rows] == [("SKU-0001", 3, 500), ("SKU-0002", 1, 750)]


async def test_a_client_price_that_matches_the_catalogue_is_accepted(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    body = created((("SKU-0002", 2),))
    body.amount_cents = 1  # not what anyone is charged
    result = await step(pool, inventory.handle, envelope(oid, body))
    assert [e.type for e in result.emitted] == ["InventoryReserved"]
    assert result.emitted[0].inventory_reserved.amount_cents == 2 * 750


@pytest.mark.parametrize("quoted", [0, 499, 501])
async def test_a_client_price_other_than_the_catalogue_rejects_the_order(seeded, quoted) -> None:
    """The customer is never charged other than what they saw, and never what they chose."""
    pool, oid = seeded["inventory"], new_order_id()
    before = await stock(pool, "SKU-0001")
    body = created((("SKU-0002", 1), ("SKU-0001", 2)))
    body.lines[1].unit_price_cents = quoted
    result = await step(pool, inventory.handle, envelope(oid, body))
    [rejected] = result.emitted
    assert rejected.type == "InventoryRejected"
    reason = f"price mismatch: SKU-0001 costs 500 cents, the order says {quoted}"
    assert rejected.inventory_rejected.reason == reason
    assert list(rejected.inventory_rejected.skus) == ["SKU-0001"]
    assert await stock(pool, "SKU-0001") == before
    row = await pool.fetchrow("SELECT status, reason FROM reservations WHERE order_id = $1", oid)
    assert (row["status"], row["reason"]) == ("REJECTED", reason)


async def test_missing_stock_is_the_reason_before_a_wrong_price(seeded) -> None:
    """The order cannot be had at any price: say so, rather than ask for another price."""
    pool, oid = seeded["inventory"], new_order_id()
    body = created((("SKU-SOLDOUT", 1), ("SKU-0001", 1)))
    body.lines[0].unit_price_cents = 1000
    body.lines[1].unit_price_cents = 1
    result = await step(pool, inventory.handle, envelope(oid, body))
    assert result.emitted[0].inventory_rejected.reason == "out of stock: SKU-SOLDOUT"


async def test_reservation_is_all_or_nothing(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    before = await stock(pool, "SKU-0001")
    result = await step(pool, inventory.handle,
                        envelope(oid, created((("SKU-0001", 1), ("SKU-SOLDOUT", 1)))))
    assert [e.type for e in result.emitted] == ["InventoryRejected"]
    assert list(result.emitted[0].inventory_rejected.skus) == ["SKU-SOLDOUT"]
    assert await stock(pool, "SKU-0001") == before


async def test_unknown_sku_is_rejected_not_reserved(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    result = await step(pool, inventory.handle, envelope(oid, OrderCreated(
        lines=[*lines(("SKU-0001", 1)), *[_line("NOPE", 1)]], payment_token="t")))
    assert result.emitted[0].inventory_rejected.reason == "unknown sku: NOPE"


def _line(sku: str, qty: int):
    from schemas.oms_pb2 import OrderLine

    return OrderLine(sku=sku, quantity=qty, unit_price_cents=1)


async def test_cancel_releases_a_held_reservation_once(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    before = await stock(pool, "SKU-0001")
    await step(pool, inventory.handle, envelope(oid, created((("SKU-0001", 4),))))
    cancel = envelope(oid, OrderCancelled(reason="payment failed"))
    first, again = await step(pool, inventory.handle, cancel), await step(pool, inventory.handle,
                                                                          cancel)
    other = await step(pool, inventory.handle, envelope(oid, OrderCancelled(reason="again")))
    assert [e.type for e in first.emitted] == ["InventoryReleased"]
    assert again.applied is False and other.emitted == []
    assert await stock(pool, "SKU-0001") == before


async def test_duplicate_order_created_reserves_once(seeded) -> None:
    pool, oid = seeded["inventory"], new_order_id()
    before = await stock(pool, "SKU-0002")
    env = envelope(oid, created((("SKU-0002", 2),)))
    await step(pool, inventory.handle, env)
    await step(pool, inventory.handle, env)
    redelivered_copy = envelope(oid, created((("SKU-0002", 2),)))  # same order, new event id
    assert (await step(pool, inventory.handle, redelivered_copy)).emitted == []
    assert await stock(pool, "SKU-0002") == (before[0] - 2, before[1] + 2, before[2])


async def test_invalid_quantity_is_a_dead_letter(seeded) -> None:
    bad = created()
    bad.lines[0].quantity = 0
    with pytest.raises(InvalidEvent):
        await step(seeded["inventory"], inventory.handle, envelope(new_order_id(), bad))


