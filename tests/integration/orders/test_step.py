"""The orders step against real PostgreSQL: place, confirm, cancel, duplicates, reordering."""

from __future__ import annotations

import pytest

from agents.dev.catalogue import price_of
from agents.messaging.errors import InvalidEvent
from agents.messaging.unit_of_work import apply_steps
from agents.orders import step as orders
from schemas.oms_pb2 import (
    CancelOrder,
    InventoryRejected,
    PaymentCompleted,
    PaymentFailed,
    PlaceOrder,
)
from tests.conftest import new_order_id
from tests.helpers import envelope, eventually, lines, outbox_types, step

pytestmark = pytest.mark.integration


def place(order_id: str, token: str = "tok_visa", items=(("SKU-0001", 2),)) -> PlaceOrder:
    return PlaceOrder(customer_id="c1", payment_token=token, currency="EUR", lines=lines(*items))


async def test_place_order_creates_pending_and_emits_order_created(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    result = await step(pool, orders.handle, envelope(oid, place(oid)))
    assert [e.type for e in result.emitted] == ["OrderCreated"]
    assert result.emitted[0].order_created.lines[0].unit_price_cents == 500  # for inventory
    row = await pool.fetchrow("SELECT status, amount_cents FROM orders WHERE order_id = $1", oid)
    assert (row["status"], row["amount_cents"]) == ("PENDING", None)  # inventory prices it


async def test_a_line_without_a_price_is_passed_on_without_one(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    body = place(oid)
    body.lines[0].ClearField("unit_price_cents")
    result = await step(pool, orders.handle, envelope(oid, body))
    assert not result.emitted[0].order_created.lines[0].HasField("unit_price_cents")
    lines = await pool.fetchval("SELECT lines FROM orders WHERE order_id = $1", oid)
    assert lines == [{"sku": "SKU-0001", "quantity": 2}]


async def test_confirming_records_the_amount_payments_captured(seeded) -> None:
    """The order shows what was charged (the catalogue price), not what the client sent."""
    pool, oid = seeded["orders"], new_order_id()
    await step(pool, orders.handle, envelope(oid, place(oid)))
    done = await step(pool, orders.handle,
                      envelope(oid, PaymentCompleted(charge_id="ch", amount_cents=1234)))
    assert done.emitted[0].order_confirmed.amount_cents == 1234
    assert await pool.fetchval("SELECT amount_cents FROM orders WHERE order_id = $1", oid) == 1234


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


def _too_many_lines(body: PlaceOrder) -> None:
    body.lines.extend(lines(*[("SKU-0001", 1)] * 100))


def _set_line(**fields: object):
    def mutate(body: PlaceOrder) -> None:
        for name, value in fields.items():
            setattr(body.lines[0], name, value)
    return mutate


def _set(**fields: object):
    def mutate(body: PlaceOrder) -> None:
        for name, value in fields.items():
            setattr(body, name, value)
    return mutate


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_too_many_lines, "lines"),
        (lambda body: body.ClearField("lines"), "lines"),
        (_set_line(quantity=10_001), "lines[0].quantity"),
        (_set_line(quantity=0), "lines[0].quantity"),
        (_set_line(sku="x" * 65), "lines[0].sku"),
        (_set_line(sku="bad sku!"), "lines[0].sku"),
        (_set_line(sku=""), "lines[0].sku"),
        (_set(payment_token="t" * 65), "payment_token"),
        (_set(payment_token=""), "payment_token"),
        (_set(customer_id="c" * 65), "customer_id"),
        (_set(customer_id=""), "customer_id"),
        (_set(currency="euro"), "currency"),
    ],
)
async def test_a_place_order_over_kafka_is_held_to_the_http_bounds(seeded, mutate, field) -> None:
    """One validator: what HTTP and the CLI refuse, the step refuses too, naming the field."""
    oid = new_order_id()
    body = place(oid)
    mutate(body)
    with pytest.raises(InvalidEvent) as refused:
        await step(seeded["orders"], orders.handle, envelope(oid, body))
    assert str(refused.value).startswith(f"{field}: ") or f"; {field}: " in str(refused.value)
    assert body.payment_token not in str(refused.value) or not body.payment_token
    assert await seeded["orders"].fetchval(
        "SELECT count(*) FROM orders WHERE order_id = $1", oid) == 0


async def test_a_place_order_without_currency_gets_the_default(seeded) -> None:
    pool, oid = seeded["orders"], new_order_id()
    body = place(oid)
    body.ClearField("currency")
    result = await step(pool, orders.handle, envelope(oid, body))
    assert result.emitted[0].order_created.currency == "EUR"
    assert await pool.fetchval("SELECT currency FROM orders WHERE order_id = $1", oid) == "EUR"


async def test_an_envelope_with_only_the_required_fields_is_placed_now(seeded) -> None:
    """No placed_at_ms or occurred_at_ms (other languages' producers): the intake time."""
    from datetime import UTC, datetime, timedelta

    from schemas.oms_pb2 import Envelope

    pool, oid = seeded["orders"], new_order_id()
    bare = Envelope(event_id=new_order_id(), order_id=oid, type="PlaceOrder",
                    place_order=place(oid))
    before = datetime.now(UTC)
    result = await step(pool, orders.handle, bare)
    placed = await pool.fetchval("SELECT placed_at FROM orders WHERE order_id = $1", oid)
    assert before - timedelta(seconds=1) <= placed <= datetime.now(UTC)
    assert result.emitted[0].placed_at_ms == int(placed.timestamp() * 1000)


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




async def _batch_outcome(pool, handler) -> list[tuple[list[str], str | None]]:
    """One batch of every kind of event, after a setup: per order, what it emitted and its
    final status, in a fixed order of roles (the ids differ from run to run)."""
    ids = {role: new_order_id() for role in (
        "placed", "invalid", "confirmed", "late_failure", "rejected", "placed_and_cancelled",
        "cancelled_unknown", "cancelled_ended", "twice_paid")}
    for role in ("confirmed", "late_failure", "rejected", "cancelled_ended", "twice_paid"):
        await step(pool, handler, envelope(ids[role], place(ids[role])))
    for role in ("late_failure", "cancelled_ended"):
        await step(pool, handler, envelope(ids[role], PaymentCompleted(amount_cents=1000)))
    bad = place(ids["invalid"])
    bad.customer_id = ""
    several = (("SKU-0001", 1), ("SKU-0002", 3), ("SKU-0003", 1))
    batch = [
        envelope(ids["placed"], place(ids["placed"], items=several)),
        envelope(ids["confirmed"], PaymentCompleted(charge_id="c", amount_cents=1000)),
        envelope(ids["late_failure"], PaymentFailed(reason="declined")),
        envelope(ids["rejected"], InventoryRejected(reason="out of stock")),
        envelope(ids["placed_and_cancelled"], place(ids["placed_and_cancelled"])),
        envelope(ids["placed_and_cancelled"], CancelOrder(reason="changed mind")),
        envelope(ids["cancelled_unknown"], CancelOrder(reason="never placed")),
        envelope(ids["cancelled_ended"], CancelOrder(reason="too late")),
        envelope(ids["twice_paid"], PaymentCompleted(amount_cents=1000)),
        envelope(ids["twice_paid"], PaymentFailed(reason="second answer")),
    ]
    async with pool.acquire() as conn:
        results = await apply_steps(conn, batch, handler, "test-out")
    with pytest.raises(InvalidEvent):
        async with pool.acquire() as conn:
            await apply_steps(conn, [envelope(ids["invalid"], bad)], handler, "test-out")
    by_order: dict[str, list[str]] = {}
    for env, result in zip(batch, results, strict=True):
        by_order.setdefault(env.order_id, []).extend(e.type for e in result.emitted)
    assert await pool.fetchval("SELECT lines FROM orders WHERE order_id = $1", ids["placed"]) == [
        {"sku": sku, "quantity": quantity, "unit_price_cents": price_of(sku)}
        for sku, quantity in several]
    return [(by_order.get(oid, []), await pool.fetchval(
        "SELECT status FROM orders WHERE order_id = $1", oid)) for oid in ids.values()]


async def test_a_batch_written_up_front_ends_as_event_by_event(seeded) -> None:
    """OrdersStep writes a batch's independent changes in one statement each; the events,
    the outbox and the orders end exactly as the plain step, event by event, leaves them."""
    batched = await _batch_outcome(seeded["orders"], orders.OrdersStep())
    plain = await _batch_outcome(seeded["orders"], orders.handle)
    assert batched == plain
    assert plain == [
        (["OrderCreated"], "PENDING"), ([], None), (["OrderConfirmed"], "CONFIRMED"),
        ([], "CONFIRMED"), (["OrderCancelled"], "CANCELLED"),
        (["OrderCreated", "OrderCancelled"], "CANCELLED"), (["OrderCancelled"], "CANCELLED"),
        (["CancelRejected"], "CONFIRMED"), (["OrderConfirmed"], "CONFIRMED"),
    ]


async def test_a_batch_makes_one_statement_per_kind_of_change(seeded) -> None:
    """The round trips of a batch do not grow with its size."""
    pool = seeded["orders"]
    placed = [new_order_id() for _ in range(20)]
    statements: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda record: statements.append(record.query.strip()))
        await apply_steps(conn, [envelope(o, place(o)) for o in placed], orders.OrdersStep(),
                          "test-out")
        paid = [envelope(o, PaymentCompleted(amount_cents=1000)) for o in placed]
        await apply_steps(conn, paid, orders.OrdersStep(), "test-out")
    # the logger is called soon after each statement, not during it
    await eventually(lambda: _now(statements.count("COMMIT;")), lambda n: n == 2, 5.0,
                     "both transactions logged")
    begins = [i for i, q in enumerate(statements) if q == "BEGIN;"]
    commits = [i for i, q in enumerate(statements) if q == "COMMIT;"]
    for begin, commit in zip(begins, commits, strict=True):
        # BEGIN, inbox, the batch's one write, outbox, COMMIT: whatever the batch's size
        assert commit - begin + 1 == 5, statements[begin:commit + 1]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE order_id = ANY($1::uuid[])"
                               " AND status = 'CONFIRMED'", placed) == 20


async def _now(value: int) -> int:
    return value
