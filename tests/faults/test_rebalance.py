"""Two workers per service; one of each is killed mid-load, forcing a rebalance.

That the rebalance happened is read from the survivors themselves: Faust's
sensor counts every completed rebalance (``<app>_rebalance_done_latency``), and
each surviving worker must complete at least one more after the kills. The
saga deadline is the product's default (30 s): the survivor takes over only
once the killed member's session has expired and the group has re-formed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from tests.helpers import eventually, scrape, total

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("rebalance")), workers=2,
                           saga_timeout_s=30.0) as running:
        yield running


async def rebalances(stack: Stack, worker: str) -> float:
    """Rebalances the worker has completed since it started (Faust's own sensor)."""
    service = worker.rsplit("-", 1)[0]
    prefix = stack.settings.app_id(service).replace("-", "_").replace(".", "_")
    return total(await scrape(stack.web_url(worker)), f"{prefix}_rebalance_done_latency_count")


async def test_rebalance_mid_load(stack: Stack) -> None:
    survivors = [f"{service}-0" for service in SERVICES]
    before = {w: await rebalances(stack, w) for w in survivors}

    async def inject() -> int:
        kills = 0
        for service in SERVICES:
            await asyncio.sleep(1.5)  # spread the kills over the load
            await kill_and_restart(stack, f"{service}-1")  # fails unless it really died
            kills += 1
        return kills

    line = await run_scenario(stack, "2 workers/service, one killed each (rebalance)",
                              mixed_orders(stack.settings, 300), inject, rate_per_s=30.0)
    assert line["faults_injected"] == len(SERVICES)
    for worker in survivors:
        await eventually(lambda w=worker: rebalances(stack, w), lambda n, w=worker: n > before[w],
                         60.0, f"{worker} rebalanced after its sibling was killed")
    await all_ready(stack)
