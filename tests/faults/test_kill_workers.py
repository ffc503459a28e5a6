"""``kill -9`` of every service's worker mid-load, repeatedly, each restarted at once."""

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

pytestmark = pytest.mark.faults

ORDERS = 400
RATE_PER_S = 40.0  # the load lasts ~10 s, long enough to span every kill
ROUNDS = 2
KILL_EVERY_S = 1.2


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("kill"))) as running:
        yield running


async def test_kill_each_worker_mid_load(stack: Stack) -> None:
    async def inject() -> int:
        kills = 0
        for _ in range(ROUNDS):
            for service in SERVICES:
                await asyncio.sleep(KILL_EVERY_S)  # spread the kills over the load
                await kill_and_restart(stack, f"{service}-0")
                kills += 1
        return kills

    line = await run_scenario(stack, "kill -9 each worker x2, restarted",
                              mixed_orders(stack.settings, ORDERS), inject,
                              rate_per_s=RATE_PER_S)
    assert line["faults_injected"] == ROUNDS * len(SERVICES)
    assert line["lost"] == 0
    assert line["violations"] == 0
    assert line["confirmed"] > 0
    await all_ready(stack)
