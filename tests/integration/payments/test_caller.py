"""The PSP caller against real PostgreSQL: every call after the commit, each order on its own.

The PSP is :class:`FakePsp` (it counts every call and can hold one) or the
simulator; intents are recorded by the real step transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from prometheus_client import REGISTRY

from agents.messaging.relay import OutboxRelay
from agents.messaging.unit_of_work import apply_steps
from agents.payments.caller import GuardedGateway, PspCaller
from agents.payments.psp import PaymentGateway, SimulatedGateway
from agents.payments.step import PaymentsStep
from config import Settings
from schemas.oms_pb2 import Envelope, InventoryReserved, OrderCancelled
from tests.conftest import new_order_id
from tests.helpers import envelope, eventually, outbox_types
from tests.integration.payments.fake_psp import FakePsp

pytestmark = pytest.mark.integration

TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
OUT = "test-payment-events"

Start = Callable[..., Awaitable[tuple[PspCaller, "asyncio.Task[None]"]]]


@pytest.fixture
async def start(pools: dict[str, asyncpg.Pool], db_settings: Settings) -> AsyncIterator[Start]:
    """Start PSP callers on the payments database; all stopped after the test."""
    running: list[asyncio.Task[None]] = []

    async def start_caller(gateway: PaymentGateway, *, lease_s: float = 5.0,
                           timeout_s: float = 5.0) -> tuple[PspCaller, asyncio.Task[None]]:
        relay = OutboxRelay(db_settings, "payments", _unpublished)
        caller = PspCaller(relay, OUT, max_in_flight=16, lease_s=lease_s)
        task = asyncio.create_task(caller.run(pools["payments"],
                                              GuardedGateway(gateway, timeout_s)))
        running.append(task)
        await eventually(lambda: _now(caller.readiness()), lambda r: r["psp_caller"], 10.0,
                         "PSP caller listening")
        return caller, task

    yield start_caller
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def _unpublished(message: object) -> Awaitable[object]:
    raise AssertionError("the relay is not running in these tests")


async def _now(value: dict[str, bool]) -> dict[str, bool]:
    return value


def reserved(token: str = "tok_visa", amount: int = 1000) -> InventoryReserved:
    return InventoryReserved(amount_cents=amount, payment_token=token, currency="EUR")


async def record(pool: asyncpg.Pool, *envelopes: Envelope) -> None:
    """Apply events through the real step transaction (one batch)."""
    async with pool.acquire() as conn:
        await apply_steps(conn, list(envelopes), PaymentsStep(lambda: dict(TRACE)), "unused")


async def status(pool: asyncpg.Pool, oid: str) -> str | None:
    return await pool.fetchval("SELECT status FROM payments WHERE order_id = $1", oid)


async def settled(pool: asyncpg.Pool, oid: str, want: str) -> None:
    await eventually(lambda: status(pool, oid), lambda s: s == want, 15.0, f"{oid} {want}")


async def test_a_duplicate_or_replayed_reservation_never_reaches_the_psp(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    await start(psp)
    env = envelope(oid, reserved())
    for _ in range(3):
        await record(pool, env)  # redelivered: the inbox stops it
    await record(pool, envelope(oid, reserved()), env)  # another event for the order, a replay
    await settled(pool, oid, "CHARGED")
    await record(pool, env)  # replayed after the settlement
    barrier = new_order_id()  # once this one is charged, the caller has claimed everything
    await record(pool, envelope(barrier, reserved()))
    await settled(pool, barrier, "CHARGED")
    assert psp.calls_of(oid) == ["charge"]
    assert await outbox_types(pool, oid) == ["PaymentCompleted"]


async def test_no_transaction_is_open_while_the_psp_answers(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.hold(oid)
    await start(psp)
    await record(pool, envelope(oid, reserved()))  # returns although the PSP does not answer
    await eventually(lambda: _now(set(psp.waiting)), lambda w: oid in w, 10.0, "charge asked")
    open_transactions = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%'")
    assert open_transactions == 0
    psp.release(oid)
    await settled(pool, oid, "CHARGED")


async def test_a_hung_call_holds_up_only_its_own_order(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, hung = pools["payments"], FakePsp(), new_order_id()
    others = [new_order_id() for _ in range(5)]
    psp.hold(hung)
    await start(psp)
    await record(pool, envelope(hung, reserved()), *(envelope(o, reserved()) for o in others))
    for oid in others:
        await settled(pool, oid, "CHARGED")
    assert hung in psp.waiting and await status(pool, hung) == "CHARGING"
    psp.release(hung)
    await settled(pool, hung, "CHARGED")


async def test_answers_that_arrive_together_settle_in_one_transaction(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp = pools["payments"], FakePsp()
    orders = [new_order_id() for _ in range(8)]
    for oid in orders:
        psp.hold(oid)
    await start(psp)
    await record(pool, *(envelope(o, reserved()) for o in orders))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: w == set(orders), 10.0,
                     "every charge asked")
    for oid in orders:
        psp.release(oid)  # all answer in one turn of the event loop
    for oid in orders:
        await settled(pool, oid, "CHARGED")
    for oid in orders:
        assert await outbox_types(pool, oid) == ["PaymentCompleted"]
    # created_at is now(), the transaction's start: one value per settling transaction
    transactions = await pool.fetchval(
        "SELECT count(DISTINCT created_at) FROM outbox WHERE key = ANY($1::bytea[])",
        [o.encode() for o in orders])
    assert transactions < len(orders) / 2


async def test_an_answer_the_database_refuses_holds_up_only_its_own_order(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    """Settled together, one refused answer must not keep the others from settling."""
    pool, psp = pools["payments"], FakePsp()
    poisoned, others = new_order_id(), [new_order_id() for _ in range(5)]
    psp.charge_ids[poisoned] = "ch_\x00"  # PostgreSQL text cannot hold a NUL: refused every time
    for oid in [poisoned, *others]:
        psp.hold(oid)
    await start(psp)
    await record(pool, *(envelope(o, reserved()) for o in [poisoned, *others]))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: w == {poisoned, *others}, 10.0,
                     "every charge asked")
    for oid in [poisoned, *others]:
        psp.release(oid)  # all answer in one turn: one batch
    for oid in others:
        await settled(pool, oid, "CHARGED")
    assert await status(pool, poisoned) == "CHARGING"  # still retried, on its own


async def test_a_cancel_during_the_charge_call_refunds_right_after_its_answer(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.hold(oid, after_capture=True)  # the PSP captured; its answer is not back yet
    await start(psp)
    await record(pool, envelope(oid, reserved(amount=1800)))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: oid in w, 10.0, "charge asked")
    await record(pool, envelope(oid, OrderCancelled(reason="saga timed out")))
    assert await status(pool, oid) == "CANCELLING"
    psp.release(oid)
    await settled(pool, oid, "REFUNDED")
    assert psp.calls_of(oid) == ["charge", "cancel"]
    assert psp.ledger[oid].status == "REFUNDED"
    assert await outbox_types(pool, oid) == ["PaymentRefunded"]  # never PaymentCompleted


async def test_a_crash_after_the_psp_charged_loses_no_charge_and_makes_no_second(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    taken_over = REGISTRY.get_sample_value("oms_payment_intents_taken_over_total") or 0.0
    psp.hold(oid, after_capture=True)
    _, first = await start(psp, lease_s=0.5)
    await record(pool, envelope(oid, reserved()))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: oid in w, 10.0, "charge asked")
    first.cancel()  # the worker dies between the PSP's capture and the settlement
    await asyncio.gather(first, return_exceptions=True)
    assert await status(pool, oid) == "CHARGING" and psp.ledger[oid].status == "CAPTURED"
    psp.release(oid)
    await start(psp, lease_s=0.5)
    await settled(pool, oid, "CHARGED")
    assert psp.calls_of(oid) == ["charge", "find"]
    assert await outbox_types(pool, oid) == ["PaymentCompleted"]
    assert REGISTRY.get_sample_value("oms_payment_intents_taken_over_total") == taken_over + 1


async def test_a_crash_before_the_psp_saw_the_charge_charges_once(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.hold(oid)
    _, first = await start(psp, lease_s=0.5)
    await record(pool, envelope(oid, reserved()))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: oid in w, 10.0, "charge asked")
    first.cancel()  # the request never reached the PSP's ledger
    await asyncio.gather(first, return_exceptions=True)
    psp.release(oid)
    await start(psp, lease_s=0.5)
    await settled(pool, oid, "CHARGED")
    assert psp.calls_of(oid) == ["charge", "find", "charge"]
    assert await outbox_types(pool, oid) == ["PaymentCompleted"]


async def test_an_unreachable_psp_is_retried_and_asked_before_charging_again(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.unreachable = 2
    await start(psp)
    await record(pool, envelope(oid, reserved()))
    await settled(pool, oid, "CHARGED")
    assert psp.calls_of(oid) == ["find", "charge"]


async def test_a_timeout_is_unknown_and_the_cancel_voids_it(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.hold(oid)  # never answers
    await start(psp, timeout_s=0.2)
    await record(pool, envelope(oid, reserved()))
    await settled(pool, oid, "UNKNOWN")
    await record(pool, envelope(oid, OrderCancelled(reason="saga timed out")))
    await settled(pool, oid, "VOIDED")
    assert psp.ledger[oid].status == "VOIDED" and psp.calls_of(oid) == ["charge", "cancel"]
    assert await outbox_types(pool, oid) == []


async def test_with_the_simulator_charge_decline_refund_and_void(
    pools: dict[str, asyncpg.Pool], db_settings: Settings, start: Start,
) -> None:
    pool = pools["payments"]
    settings = db_settings.model_copy(update={"gateway_latency_ms": 0.0})
    await start(SimulatedGateway(pool, settings))
    charged, declined, refunded, voided = (new_order_id() for _ in range(4))
    await record(pool, envelope(charged, reserved()), envelope(declined, reserved("tok_decline")),
                 envelope(refunded, reserved(amount=2500)),
                 envelope(voided, OrderCancelled(reason="out of stock")))
    for oid, want in ((charged, "CHARGED"), (declined, "DECLINED"), (refunded, "CHARGED"),
                      (voided, "VOIDED")):
        await settled(pool, oid, want)
    await record(pool, envelope(refunded, OrderCancelled(reason="operator")))
    await settled(pool, refunded, "REFUNDED")
    assert await outbox_types(pool, charged) == ["PaymentCompleted"]
    assert await outbox_types(pool, declined) == ["PaymentFailed"]
    assert await outbox_types(pool, refunded) == ["PaymentCompleted", "PaymentRefunded"]
    assert await outbox_types(pool, voided) == []
    ledger = {r["idempotency_key"]: r["status"] for r in await pool.fetch(
        "SELECT idempotency_key, status FROM psp_charges WHERE idempotency_key = ANY($1)",
        [charged, declined, refunded, voided])}
    assert ledger == {charged: "CAPTURED", declined: "DECLINED", refunded: "REFUNDED",
                      voided: "VOIDED"}
    headers = await pool.fetchval("SELECT headers FROM outbox WHERE key = $1", charged.encode())
    assert headers == TRACE  # published under the trace of the step that recorded the intent


async def test_a_long_call_keeps_its_lease_so_nobody_takes_it_over(
    pools: dict[str, asyncpg.Pool], start: Start,
) -> None:
    pool, psp, oid = pools["payments"], FakePsp(), new_order_id()
    psp.hold(oid)
    await start(psp, lease_s=0.4)
    await record(pool, envelope(oid, reserved()))
    await eventually(lambda: _now(set(psp.waiting)), lambda w: oid in w, 10.0, "charge asked")
    await start(psp, lease_s=0.4)  # a second worker, ready to take over an expired lease
    first = await pool.fetchval("SELECT lease_until FROM payments WHERE order_id = $1", oid)
    await eventually(lambda: pool.fetchval("SELECT lease_until - $2::timestamptz > interval"
                                           " '1.2 s' FROM payments WHERE order_id = $1",
                                           oid, first),
                     bool, 15.0, "the lease renewed past three lease periods")
    assert psp.calls_of(oid) == ["charge"]  # never taken over: no find, no second charge
    psp.release(oid)
    await settled(pool, oid, "CHARGED")
