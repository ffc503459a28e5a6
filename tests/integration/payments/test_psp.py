"""The simulated PSP against real PostgreSQL: its ledger and the log of every request."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from agents.payments.psp import SimulatedGateway
from config import Settings
from tests.conftest import new_order_id
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(db_settings: Settings) -> Settings:
    return db_settings.model_copy(update={"gateway_latency_ms": 0.0, "gateway_slow_ms": 300.0})


@pytest.fixture(scope="module")
def gateway(pools: dict[str, asyncpg.Pool], settings: Settings) -> SimulatedGateway:
    return SimulatedGateway(pools["payments"], settings)


async def requests(pool: asyncpg.Pool, key: str) -> list[str]:
    rows = await pool.fetch("SELECT operation FROM psp_requests WHERE idempotency_key = $1"
                            " ORDER BY id", key)
    return [r["operation"] for r in rows]


async def test_every_request_is_logged_even_a_repeat_or_one_never_answered(
    pools: dict[str, asyncpg.Pool], gateway: SimulatedGateway,
) -> None:
    pool, charged, hung = pools["payments"], new_order_id(), new_order_id()
    first = await gateway.charge(charged, 1000, "tok_visa")
    again = await gateway.charge(charged, 1000, "tok_visa")
    await gateway.find(charged)
    await gateway.cancel(charged)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):  # the caller's timeout: the PSP itself never answers
            await gateway.charge(hung, 1000, "tok_timeout")
    assert first == again and first.approved
    assert await requests(pool, charged) == ["charge", "charge", "find", "cancel"]
    assert await requests(pool, hung) == ["charge"]


async def test_find_reports_what_the_psp_made_of_a_key(gateway: SimulatedGateway) -> None:
    charged, declined, unseen = new_order_id(), new_order_id(), new_order_id()
    captured = await gateway.charge(charged, 1000, "tok_visa")
    await gateway.charge(declined, 1000, "tok_decline")
    refused = await gateway.find(declined)
    assert await gateway.find(charged) == captured
    assert refused is not None and (refused.approved, refused.reason) == (False, "card declined")
    assert await gateway.find(unseen) is None


async def test_a_slow_capture_lands_although_the_caller_gave_up(
    pools: dict[str, asyncpg.Pool], gateway: SimulatedGateway,
) -> None:
    pool, slow = pools["payments"], new_order_id()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await gateway.charge(slow, 1200, "tok_slow")
    found = await eventually(lambda: gateway.find(slow), lambda r: r is not None, 10.0,
                             "late capture")
    assert found is not None and found.approved
    assert await pool.fetchval("SELECT amount_cents FROM psp_charges WHERE idempotency_key = $1",
                               slow) == 1200
