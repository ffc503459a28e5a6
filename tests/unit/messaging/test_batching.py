"""take_batches: batches of up to max_ events, acked only after the body has run.

Driven through Faust's agent test context (an in-memory channel, no broker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types import StreamT

from agents.messaging.batching import take_batches

DEADLINE_S = 5.0


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
def app() -> faust.App:
    return faust.App("test-batching", store="memory://")


async def test_events_come_in_batches_of_at_most_max_and_in_order(app: faust.App) -> None:
    batches: list[list[int]] = []

    async def collect(stream: StreamT) -> AsyncIterator[None]:
        async for batch in take_batches(stream, 3, within=0.05):
            batches.append([event.value for event in batch])
            yield None

    agent = app.agent()(collect)
    async with agent.test_context() as test_agent:
        for i in range(7):
            await test_agent.put(i, wait=False)
        await wait_until(lambda: sum(map(len, batches)) == 7, "7 events")
    assert [v for batch in batches for v in batch] == list(range(7))
    assert max(map(len, batches)) == 3 and len(batches) >= 3
    assert any(len(batch) > 1 for batch in batches)


async def test_a_batch_is_acked_only_after_the_body_has_run(app: faust.App) -> None:
    acked_in_body: list[bool] = []
    batches: list[list[Any]] = []
    release = asyncio.Event()

    async def hold(stream: StreamT) -> AsyncIterator[None]:
        async for batch in take_batches(stream, 10, within=0.01):
            acked_in_body.extend(event.message.acked for event in batch)
            batches.append(batch)
            await release.wait()
            yield None

    agent = app.agent()(hold)
    async with agent.test_context() as test_agent:
        await test_agent.put("a", wait=False)
        await wait_until(lambda: batches, "the first batch")
        first = batches[0]
        assert not any(event.message.acked for event in first)
        release.set()
        await test_agent.put("b", wait=False)
        await wait_until(lambda: all(event.message.acked for event in first), "the ack")
    assert acked_in_body and not any(acked_in_body)


async def test_a_batch_whose_handling_failed_is_not_acked(app: faust.App) -> None:
    """Its transaction rolled back: acking it would let its offsets be committed."""
    batches: list[list[Any]] = []

    async def fail(stream: StreamT) -> AsyncIterator[None]:
        async for batch in take_batches(stream, 10, within=0.01):
            batches.append(batch)
            raise RuntimeError("the step failed")
        yield None

    agent = app.agent()(fail)
    async with agent.test_context() as test_agent:
        await test_agent.put("a", wait=False)
        await wait_until(lambda: batches, "the batch")
        await wait_until(lambda: test_agent._crash_reason is not None, "the agent to crash")
    assert not batches[0][0].message.acked
