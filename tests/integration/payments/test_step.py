"""The payments step transaction against real PostgreSQL: it records intents, calls nobody.

Whatever the step records, the PSP caller asks the provider after the
commit (tests/integration/payments/test_caller.py); here no PSP exists at all,
so a step that tried to call one could not pass.
"""

from __future__ import annotations

import asyncpg
import pytest

from agents.messaging.errors import InvalidEvent
from agents.messaging.unit_of_work import apply_steps
from agents.payments.step import PaymentsStep
from schemas.codec import decode
from schemas.oms_pb2 import InventoryReserved, OrderCancelled
from tests.conftest import new_order_id
from tests.helpers import envelope, outbox_types, step

pytestmark = pytest.mark.integration

TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@pytest.fixture(scope="module")
def pay_step() -> PaymentsStep:
    return PaymentsStep(lambda: dict(TRACE))


def reserved(token: str = "tok_visa", amount: int = 1000) -> InventoryReserved:
    return InventoryReserved(amount_cents=amount, payment_token=token, currency="EUR")


async def payment(pool: asyncpg.Pool, oid: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT status, amount_cents, request, trace, lease_owner"
                               " FROM payments WHERE order_id = $1", oid)


async def test_a_reservation_records_a_charge_intent_and_emits_nothing(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep,
) -> None:
    pool, oid = pools["payments"], new_order_id()
    env = envelope(oid, reserved(amount=2500))
    result = await step(pool, pay_step, env)
    row = await payment(pool, oid)
    assert result.applied and result.emitted == []
    assert row is not None and (row["status"], row["amount_cents"]) == ("CHARGING", 2500)
    assert decode(row["request"]) == env and row["trace"] == TRACE
    assert row["lease_owner"] is None  # nobody works on it yet
    assert await outbox_types(pool, oid) == []


async def test_a_repeated_reservation_records_nothing_more(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep,
) -> None:
    """The same event is stopped by the inbox; another event for the order by its payment row."""
    pool, oid = pools["payments"], new_order_id()
    env = envelope(oid, reserved())
    first = await step(pool, pay_step, env)
    before = await payment(pool, oid)
    again = await step(pool, pay_step, env)
    other = await step(pool, pay_step, envelope(oid, reserved(amount=1)))
    assert first.applied and not again.applied and other.applied
    assert await payment(pool, oid) == before


async def test_a_negative_amount_is_invalid(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep,
) -> None:
    with pytest.raises(InvalidEvent, match="amount_cents"):
        await step(pools["payments"], pay_step, envelope(new_order_id(), reserved(amount=-1)))


async def test_a_cancel_before_the_reservation_records_a_cancel_that_blocks_the_charge(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep,
) -> None:
    pool, oid = pools["payments"], new_order_id()
    cancel = envelope(oid, OrderCancelled(reason="out of stock"))
    async with pool.acquire() as conn:
        await apply_steps(conn, [cancel, envelope(oid, reserved())], pay_step, "test-out")
    row = await payment(pool, oid)
    assert row is not None and row["status"] == "CANCELLING"
    assert decode(row["request"]) == cancel


@pytest.mark.parametrize("status", ["CHARGED", "UNKNOWN"])
async def test_a_cancel_after_a_charge_or_a_timeout_records_a_cancel(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep, status: str,
) -> None:
    pool, oid = pools["payments"], new_order_id()
    await pool.execute("INSERT INTO payments (order_id, status, amount_cents) VALUES ($1, $2, 700)",
                       oid, status)
    await step(pool, pay_step, envelope(oid, OrderCancelled(reason="saga timed out")))
    row = await payment(pool, oid)
    assert row is not None and (row["status"], row["amount_cents"]) == ("CANCELLING", 700)


@pytest.mark.parametrize("status", ["DECLINED", "REFUNDED", "VOIDED"])
async def test_a_cancel_with_nothing_to_cancel_records_nothing(
    pools: dict[str, asyncpg.Pool], pay_step: PaymentsStep, status: str,
) -> None:
    pool, oid = pools["payments"], new_order_id()
    await pool.execute("INSERT INTO payments (order_id, status) VALUES ($1, $2)", oid, status)
    await step(pool, pay_step, envelope(oid, OrderCancelled(reason="payment failed")))
    row = await payment(pool, oid)
    assert row is not None and (row["status"], row["request"]) == (status, None)
