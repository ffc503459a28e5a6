"""Lost CancelOrders: the tracker must send them again until the order has ended.

Orders with the hung-gateway token stall until the tracker's deadline. The
tracker is started with ``OMS_FAULT_DROP_CANCEL_ORDERS``: it loses its first
CancelOrder sends, as if the broker never got them. Every stalled order must
still end CANCELLED ("saga timed out"), through the tracker's resends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents.dev.stack import Stack
from tests.faults.harness import (
    all_ready,
    fault_stack,
    mixed_orders,
    outcome_counts,
    run_scenario,
    simple_order,
)

pytestmark = pytest.mark.faults

SAGA_TIMEOUT_S = 8.0
HUNG = 4
DROPPED = HUNG  # every hung order's first CancelOrder is lost


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("lost-cancel")),
                           saga_timeout_s=SAGA_TIMEOUT_S,
                           fault_drop_cancel_orders=DROPPED) as running:
        yield running


async def timeouts_of(stack: Stack, order_id: str) -> int:
    """How many times the tracker timed the saga out (each one sent a CancelOrder)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        url = f"{stack.web_url('orchestrator-0')}/sagas/{order_id}/"
        async with http.get(url) as resp:
            saga: dict[str, Any] = await resp.json()
    assert resp.status == 200 and saga["status"] == "CANCELLED", saga
    return sum(1 for step in saga["steps"] if step["type"] == "SagaTimedOut")


async def test_lost_cancel_orders_are_sent_again(stack: Stack) -> None:
    hung = [simple_order(token=stack.settings.gateway_timeout_token) for _ in range(HUNG)]
    # the hung payments go last: the payments worker is busy while each one hangs
    requests = mixed_orders(stack.settings, 100) + hung

    async def inject() -> int:
        return DROPPED  # the tracker drops them itself, when the deadlines pass

    line = await run_scenario(stack, f"lost CancelOrder x{DROPPED} (sent again)", requests,
                              inject, rate_per_s=40.0)
    assert line["lost"] == 0 and line["violations"] == 0
    hung_ids = [str(r.order_id) for r in hung]
    assert (await outcome_counts(stack.settings, hung_ids)).get("why:saga timed out") == HUNG
    resends = sum([await timeouts_of(stack, order_id) - 1 for order_id in hung_ids])
    assert resends >= DROPPED, "every lost CancelOrder needs one more timeout"
    await all_ready(stack)
