"""``kill -9`` of every service's worker mid-load, repeatedly, each restarted at once.

The saga deadline is the product's default (30 s), not the suite's shorter
one: the second kill of a service can land on a worker still starting from the
first (a restart takes several seconds here: start-up, then a group join of
half the session timeout), leaving the service without a consumer for ~15 s.
An outage longer than the deadline makes the tracker cancel the waiting
sagas, as designed, which this scenario is not about; any timeout within the
deadline is a stalled or dropped event and fails the outcome check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.dev.stack import Stack
from config import SERVICES
from tests.faults.harness import (
    all_ready,
    fault_stack,
    kill_and_restart,
    mixed_orders,
    run_scenario,
)
from tests.helpers import query

pytestmark = pytest.mark.faults

ORDERS = 400
RATE_PER_S = 40.0  # the load lasts ~10 s, long enough to span every kill
ROUNDS = 2
KILL_EVERY_S = 1.2


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("kill")),
                           saga_timeout_s=30.0) as running:
        yield running


async def test_kill_each_worker_mid_load(stack: Stack) -> None:
    killed_at: list[datetime] = []

    async def inject() -> int:
        for _ in range(ROUNDS):
            for service in SERVICES:
                await asyncio.sleep(KILL_EVERY_S)  # spread the kills over the load
                await kill_and_restart(stack, f"{service}-0")  # fails unless it really died
                killed_at.append(datetime.now(UTC))
        return len(killed_at)

    requests = mixed_orders(stack.settings, ORDERS)
    line = await run_scenario(stack, "kill -9 each worker x2, restarted", requests, inject,
                              rate_per_s=RATE_PER_S)
    assert line["faults_injected"] == ROUNDS * len(SERVICES)
    # every kill landed while orders were still arriving, not on an idle system afterwards
    [last] = await query(stack.settings, "orders", "SELECT max(created_at) FROM orders"
                         " WHERE order_id = ANY($1::uuid[])", [r.order_id for r in requests])
    assert all(at < last[0] for at in killed_at), (killed_at, last[0])
    await all_ready(stack)
