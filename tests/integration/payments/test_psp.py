"""The simulated PSP against real PostgreSQL: its ledger and the log of every request."""

from __future__ import annotations

import asyncpg
import pytest

from agents.payments.psp import GatewayTimeout, SimulatedGateway
from config import Settings
from tests.conftest import new_order_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(pools: dict[str, asyncpg.Pool], db_settings: Settings) -> SimulatedGateway:
    settings = db_settings.model_copy(update={"gateway_latency_ms": 0.0,
                                              "gateway_timeout_s": 0.05})
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
    await gateway.cancel(charged)
    with pytest.raises(GatewayTimeout):
        await gateway.charge(hung, 1000, "tok_timeout")
    assert first == again and first.approved
    assert await requests(pool, charged) == ["charge", "charge", "cancel"]
    assert await requests(pool, hung) == ["charge"]
