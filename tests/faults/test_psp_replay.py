"""A replay of the payments service never reaches the payment provider.

Orders of the demo mix run to the end; then the payments consumer group is
moved back to the earliest offset of its topics, so the service re-reads every
``InventoryReserved`` and ``OrderCancelled`` it ever applied. The inbox must
stop each of them before the PSP: the provider's own request log
(``psp_requests``, one row per request it receives) holds as many rows after
the replay as before, and no payment row or outbox row changes.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack
from agents.ops import replay
from tests.faults.harness import (
    SETTLE_TIMEOUT_S,
    all_ready,
    fault_stack,
    mixed_orders,
    run_scenario,
    settle,
)
from tests.helpers import eventually, query

pytestmark = pytest.mark.faults

ORDERS = 200


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("psp-replay"))) as running:
        yield running


async def psp_state(stack: Stack) -> dict[str, object]:
    """The provider's request count and the payments service's own rows."""
    settings = stack.settings
    requests = await query(settings, "payments", "SELECT count(*) AS n FROM psp_requests")
    payments = await query(settings, "payments", "SELECT order_id::text, status, amount_cents,"
                           " charge_id FROM payments ORDER BY order_id")
    outbox = await query(settings, "payments", "SELECT count(*) AS n FROM outbox")
    return {"psp_requests": int(requests[0]["n"]), "payments": [tuple(r) for r in payments],
            "outbox": int(outbox[0]["n"])}


async def test_a_replay_of_payments_asks_the_psp_nothing(stack: Stack) -> None:
    settings = stack.settings
    requests = mixed_orders(settings, ORDERS)
    ids = [str(r.order_id) for r in requests]
    seen: dict[str, dict[str, object]] = {}

    async def inject() -> int:
        """Once every saga has settled, replay the payments service from the start."""
        await wait_terminal(settings, ids, SETTLE_TIMEOUT_S)
        await settle(settings, deadline_s=60.0)
        seen["before"] = await psp_state(stack)
        names = stack.workers["payments"]
        for name in names:
            await stack.supervisor.kill(name, sig=signal.SIGTERM)
        plans = await replay.replay(settings, "payments", replay.Target(earliest=True),
                                    evict_stale=True)
        for name in names:
            await stack.supervisor.restart(name)
        await all_ready(stack)
        await eventually(lambda: replay.lag(settings, "payments"),
                         # <= 0: Tansu sometimes reports an end offset one below the commit
                         lambda lags: all(n <= 0 for n in lags.values()), 120.0,
                         "payments replay done")
        await settle(settings, deadline_s=60.0)
        seen["after"] = await psp_state(stack)
        return sum(p.reread for p in plans)

    line = await run_scenario(stack, "payments replayed from earliest: PSP asked nothing",
                              requests, inject, rate_per_s=50.0)
    before, after = seen["before"], seen["after"]
    print({"psp_requests_before": before["psp_requests"],
           "psp_requests_after": after["psp_requests"], "reread": line["faults_injected"]})
    assert line["faults_injected"] >= ORDERS, "the replay re-read less than one event per order"
    assert before["psp_requests"] >= ORDERS * 0.7, "the PSP saw fewer charges than the mix has"
    assert after["psp_requests"] == before["psp_requests"], "the replay reached the PSP"
    assert after == before, "the replay changed a payment or emitted again"
    assert line["lost"] == 0 and line["violations"] == 0
    await all_ready(stack)
