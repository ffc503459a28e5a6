"""Fixtures the integration tests share."""

from __future__ import annotations

import asyncpg
import pytest

from stores import inventory as stock_store


@pytest.fixture(scope="module")
async def seeded(pools: dict[str, asyncpg.Pool]) -> dict[str, asyncpg.Pool]:
    async with pools["inventory"].acquire() as conn:
        await stock_store.seed(conn, {"SKU-0001": (1000, 500), "SKU-0002": (1000, 750),
                                      "SKU-SCARCE": (10, 9900), "SKU-SOLDOUT": (0, 1500)})
    return pools
