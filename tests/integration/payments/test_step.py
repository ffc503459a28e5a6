"""The payments step against real PostgreSQL and the simulated PSP: charge once, refund, void."""

from __future__ import annotations

import asyncpg
import pytest

from agents.messaging.unit_of_work import apply_steps
from agents.payments.psp import SimulatedGateway
from agents.payments.step import PaymentsStep
from config import Settings
from schemas.oms_pb2 import InventoryReserved, OrderCancelled
from tests.conftest import new_order_id
from tests.helpers import envelope, step

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pay_handler(seeded, db_settings: Settings):
    settings = db_settings.model_copy(update={"gateway_latency_ms": 0.0,
                                              "gateway_timeout_s": 0.05})
    return PaymentsStep(SimulatedGateway(seeded["payments"], settings))


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
