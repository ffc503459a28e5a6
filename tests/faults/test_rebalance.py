"""Two workers per service; one of each is killed mid-load, forcing a rebalance."""

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


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("rebalance")), workers=2) as running:
        yield running


async def test_rebalance_mid_load(stack: Stack) -> None:
    async def inject() -> int:
        for service in SERVICES:
            await asyncio.sleep(1.5)  # spread the kills over the load
            await kill_and_restart(stack, f"{service}-1")
        return len(SERVICES)

    line = await run_scenario(stack, "2 workers/service, one killed each (rebalance)",
                              mixed_orders(stack.settings, 300), inject, rate_per_s=30.0)
    assert line["lost"] == 0 and line["violations"] == 0
    assert line["confirmed"] > 0
    await all_ready(stack)
