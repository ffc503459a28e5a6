"""Contention: many orders at once for the last units of a few SKUs, two workers each.

The scarce SKU has 10 units; 60 single-unit orders race for them, another 20
ask for the sold-out SKU. Exactly the available units may be sold, never more,
and every unit stays in exactly one of available / reserved / sold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.dev.catalogue import REGULAR_SKUS, SCARCE_SKU, SCARCE_UNITS, SOLD_OUT_SKU
from agents.dev.stack import Stack
from tests.faults.harness import all_ready, fault_stack, run_scenario, simple_order
from tests.helpers import query

pytestmark = pytest.mark.faults

SCARCE_ORDERS = 60
SOLD_OUT_ORDERS = 20


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("contention")), workers=2,
                           saga_timeout_s=30.0) as running:
        yield running


async def test_last_units_never_oversold(stack: Stack) -> None:
    scarce = [simple_order(SCARCE_SKU) for _ in range(SCARCE_ORDERS)]
    sold_out = [simple_order(SOLD_OUT_SKU) for _ in range(SOLD_OUT_ORDERS)]
    regular = [simple_order(REGULAR_SKUS[i % 3], 1 + i % 2) for i in range(100)]
    contended = scarce + sold_out
    requests = [r for pair in zip(contended, regular[: len(contended)], strict=True)
                for r in pair] + regular[len(contended):]
    assert len({r.order_id for r in requests}) == len(requests) == 180

    async def inject() -> int:
        await asyncio.sleep(0)
        return 0  # the fault is the race itself

    line = await run_scenario(stack, "contention for the last units", requests, inject)
    assert line["timeouts"] == 0
    stock = {r["sku"]: r for r in await query(
        stack.settings, "inventory",
        "SELECT sku, total, available, reserved, sold FROM stock WHERE sku = ANY($1)",
        [SCARCE_SKU, SOLD_OUT_SKU])}
    confirmed_scarce = await _confirmed(stack, [str(r.order_id) for r in scarce])
    # demand exceeds the units: every unit is sold, none twice, none left reserved
    assert stock[SCARCE_SKU]["sold"] == confirmed_scarce == SCARCE_UNITS
    assert stock[SCARCE_SKU]["reserved"] == stock[SCARCE_SKU]["available"] == 0
    assert stock[SOLD_OUT_SKU]["sold"] == 0
    assert await _confirmed(stack, [str(r.order_id) for r in sold_out]) == 0
    await all_ready(stack)


async def _confirmed(stack: Stack, ids: list[str]) -> int:
    rows = await query(stack.settings, "orders", "SELECT count(*) FROM orders"
                       " WHERE order_id = ANY($1::uuid[]) AND status = 'CONFIRMED'", ids)
    return int(rows[0][0])
