"""Each service's step against real PostgreSQL: success, rejection, duplicates, reordering."""

from __future__ import annotations

import asyncpg
import pytest

from agents import inventory, orders, payments
from agents.gateway import SimulatedGateway
from agents.step import InvalidEvent, apply_steps
from config import Settings
from schemas.oms_pb2 import (
    CancelOrder,
    InventoryRejected,
    InventoryReserved,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    PaymentFailed,
    PlaceOrder,
)
from stores import inventory as stock_store
from tests.conftest import new_order_id
from tests.helpers import envelope, lines, outbox_types, step

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def seeded(pools: dict[str, asyncpg.Pool]) -> dict[str, asyncpg.Pool]:
    async with pools["inventory"].acquire() as conn:
        await stock_store.seed(conn, {"SKU-0001": (1000, 500), "SKU-0002": (1000, 750),
                                      "SKU-SCARCE": (10, 9900), "SKU-SOLDOUT": (0, 1500)})
    return pools


def place(order_id: str, token: str = "tok_visa", items=(("SKU-0001", 2),)) -> PlaceOrder:
    return PlaceOrder(customer_id="c1", payment_token=token, currency="EUR", lines=lines(*items))


# --- orders ---------------------------------------------------------------


async def test_place_order_creates_pending_and_emits_order_created(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    result = await step(pool, orders.handle, envelope(oid, place(oid)))
    assert [e.type for e in result.emitted] == ["OrderCreated"]
    assert result.emitted[0].order_created.amount_cents == 2 * 500
    assert await pool.fetchval("SELECT status FROM orders WHERE order_id = $1", oid) == "PENDING"


async def test_duplicate_delivery_is_applied_once(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    env = envelope(oid, place(oid))
    first, second = await step(pool, orders.handle, env), await step(pool, orders.handle, env)
    assert (first.applied, second.applied) == (True, False)
    assert await outbox_types(pool, oid) == ["OrderCreated"]


async def test_a_second_place_order_with_the_same_id_changes_nothing(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    await step(pool, orders.handle, envelope(oid, place(oid)))
    again = await step(pool, orders.handle, envelope(oid, place(oid, items=(("SKU-0002", 9),))))
    assert again.applied and again.emitted == []
    assert await outbox_types(pool, oid) == ["OrderCreated"]


async def test_invalid_place_order_is_refused_with_the_field(seeded) -> None:
    oid = new_order_id()
    bad = PlaceOrder(customer_id="c", payment_token="t", lines=lines(("SKU-0001", 1)))
    bad.lines[0].quantity = -3
    with pytest.raises(InvalidEvent, match=r"lines\[0\].quantity"):
        await step(seeded["orders"], orders.handle, envelope(oid, bad))
    assert await seeded["orders"].fetchval(
        "SELECT count(*) FROM orders WHERE order_id = $1", oid) == 0


async def test_payment_completed_confirms_once_and_late_failures_are_ignored(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    await step(pool, orders.handle, envelope(oid, place(oid)))
    done = await step(pool, orders.handle, envelope(oid, PaymentCompleted(charge_id="ch")))
    late = await step(pool, orders.handle, envelope(oid, PaymentFailed(reason="x")))
    assert [e.type for e in done.emitted] == ["OrderConfirmed"]
    assert late.emitted == []
    assert await pool.fetchval("SELECT status FROM orders WHERE order_id = $1", oid) == "CONFIRMED"


async def test_rejection_cancels_with_reason(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    await step(pool, orders.handle, envelope(oid, place(oid)))
    result = await step(pool, orders.handle,
                        envelope(oid, InventoryRejected(reason="out of stock: SKU-1")))
    assert [e.type for e in result.emitted] == ["OrderCancelled"]
    row = await pool.fetchrow("SELECT status, reason FROM orders WHERE order_id = $1", oid)
    assert (row["status"], row["reason"]) == ("CANCELLED", "out of stock: SKU-1")


async def test_cancel_before_place_leaves_a_tombstone_and_place_is_ignored(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    cancelled = await step(pool, orders.handle, envelope(oid, CancelOrder(reason="client")))
    placed = await step(pool, orders.handle, envelope(oid, place(oid)))
    assert [e.type for e in cancelled.emitted] == ["OrderCancelled"]
    assert placed.emitted == []
    assert await pool.fetchval("SELECT status FROM orders WHERE order_id = $1", oid) == "CANCELLED"


# --- inventory ----------------------------------------------------------------


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


# --- payments ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pay_handler(seeded, db_settings: Settings):
    settings = db_settings.model_copy(update={"gateway_latency_ms": 0.0,
                                              "gateway_timeout_s": 0.05})
    return payments.make_handler(SimulatedGateway(seeded["payments"], settings))


def reserved(token: str = "tok_visa", amount: int = 1000) -> InventoryReserved:
    return InventoryReserved(amount_cents=amount, payment_token=token, currency="EUR")


async def psp(pool: asyncpg.Pool, oid: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT status, amount_cents FROM psp_charges"
                               " WHERE idempotency_key = $1", oid)


async def test_charge_captures_once_even_when_redelivered(seeded, pay_handler) -> None:
    pool, oid = seeded["payments"], new_order_id()
    env = envelope(oid, reserved())
    first = await step(pool, pay_handler, env)
    second = await step(pool, pay_handler, env)
    third = await step(pool, pay_handler, envelope(oid, reserved()))
    assert [e.type for e in first.emitted] == ["PaymentCompleted"]
    assert second.applied is False and third.emitted == []
    assert (await psp(pool, oid))["status"] == "CAPTURED"


async def test_declining_token_fails_the_payment(seeded, pay_handler) -> None:
    pool, oid = seeded["payments"], new_order_id()
    result = await step(pool, pay_handler, envelope(oid, reserved(token="tok_decline")))
    assert [e.type for e in result.emitted] == ["PaymentFailed"]
    assert (await psp(pool, oid))["status"] == "DECLINED"


async def test_cancel_after_charge_refunds(seeded, pay_handler) -> None:
    pool, oid = seeded["payments"], new_order_id()
    await step(pool, pay_handler, envelope(oid, reserved(amount=2500)))
    result = await step(pool, pay_handler, envelope(oid, OrderCancelled(reason="timeout")))
    assert [e.type for e in result.emitted] == ["PaymentRefunded"]
    assert result.emitted[0].payment_refunded.amount_cents == 2500
    assert (await psp(pool, oid))["status"] == "REFUNDED"


async def test_cancel_before_reserved_means_never_charged(seeded, pay_handler) -> None:
    pool, oid = seeded["payments"], new_order_id()
    cancel = await step(pool, pay_handler, envelope(oid, OrderCancelled(reason="timeout")))
    late = await step(pool, pay_handler, envelope(oid, reserved()))
    assert cancel.emitted == [] and late.emitted == []
    assert (await psp(pool, oid))["status"] == "VOIDED"
    assert await pool.fetchval("SELECT status FROM payments WHERE order_id = $1", oid) == "VOIDED"


async def test_gateway_timeout_leaves_unknown_and_cancel_voids(seeded, pay_handler) -> None:
    pool, oid = seeded["payments"], new_order_id()
    hung = await step(pool, pay_handler, envelope(oid, reserved(token="tok_timeout")))
    assert hung.emitted == []
    assert await pool.fetchval("SELECT status FROM payments WHERE order_id = $1", oid) == "UNKNOWN"
    await step(pool, pay_handler, envelope(oid, OrderCancelled(reason="saga timed out")))
    assert await pool.fetchval("SELECT status FROM payments WHERE order_id = $1", oid) == "VOIDED"


async def test_two_charges_of_one_order_in_one_batch_capture_once(seeded, pay_handler) -> None:
    """prepare() starts one PSP call per order; the second event makes its own call."""
    pool, oid = seeded["payments"], new_order_id()
    async with pool.acquire() as conn:
        results = await apply_steps(conn, [envelope(oid, reserved()), envelope(oid, reserved())],
                                    pay_handler, "test-out")
    assert [[e.type for e in r.emitted] for r in results] == [["PaymentCompleted"], []]
    assert all(r.applied for r in results)
    assert (await psp(pool, oid))["status"] == "CAPTURED"
