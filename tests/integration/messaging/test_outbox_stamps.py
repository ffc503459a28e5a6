"""The outbox's ``written_at``: when the step inserted the row, not when its transaction began.

``scripts/bench_breakdown.py`` times a step as ``created_at`` (transaction
start) -> ``written_at``; with both from ``now()`` every step would read 0 ms.
"""

from __future__ import annotations

import asyncpg
import pytest

from stores import messaging

pytestmark = pytest.mark.integration


async def test_written_at_is_the_insert_time_within_the_step_transaction(
    pools: dict[str, asyncpg.Pool],
) -> None:
    async with pools["orders"].acquire() as conn, conn.transaction():
        before_insert = await conn.fetchval("SELECT clock_timestamp()")
        [row] = await messaging.enqueue(conn, [messaging.OutboxMessage("t", b"k", b"v")],
                                        notify=False)
        created, written = await conn.fetchrow(
            "SELECT created_at, written_at FROM outbox WHERE id = $1", row.id)
        assert created < before_insert <= written
