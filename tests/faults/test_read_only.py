"""A failover's aftermath: the databases turn read-only for seconds while orders flow.

``ALTER DATABASE ... SET default_transaction_read_only = on`` plus ending the
connections makes every write fail with ``ReadOnlySQLTransactionError``, as
on a standby the connections reached after a failover. That is the
dependency failing, not the input: no event may be dead-lettered, the steps
are retried with backoff (counted in ``oms_step_retries_total``), ``/ready/``
says a consumer is stuck while it lasts, and once the databases accept
writes again every order completes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agents.dev.stack import Stack
from config.settings import DATABASE_SERVICES
from stores.db import connect
from stores.migrate import check_database_name
from tests.faults.harness import all_ready, fault_stack, mixed_orders, run_scenario

pytestmark = pytest.mark.faults

ORDERS = 240
RATE_PER_S = 30.0
READ_ONLY_S = 5.0


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("ro")), saga_timeout_s=30.0,
                           step_stuck_after_s=1.0) as running:
        yield running


async def metric_sum(stack: Stack, name: str) -> float:
    """A counter summed over every label and every database-backed service's worker."""
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for service in DATABASE_SERVICES:
            async with http.get(stack.web_url(stack.workers[service][0]) + "/metrics") as resp:
                text = await resp.text()
            total += sum(float(x) for x in re.findall(rf"^{name}{{[^}}]*}} (\S+)", text, re.M))
    return total


async def stuck_services(stack: Stack) -> set[str]:
    """Services whose ``/ready/`` answers 503 naming ``step_not_stuck``."""
    stuck = set()
    async with aiohttp.ClientSession() as http:
        for service in DATABASE_SERVICES:
            async with http.get(stack.web_url(stack.workers[service][0]) + "/ready/") as resp:
                body = await resp.json()
                if resp.status == 503 and "step_not_stuck" in body["not_ready"]:
                    stuck.add(service)
    return stuck


async def test_read_only_databases_are_waited_out_never_dead_lettered(stack: Stack) -> None:
    dead_before = await metric_sum(stack, "oms_dead_letters_total")
    retries_before = await metric_sum(stack, "oms_step_retries_total")
    seen_stuck: set[str] = set()
    settings = stack.settings
    names = [check_database_name(settings.database_name(s)) for s in DATABASE_SERVICES]

    async def inject() -> int:
        admin = await connect(settings.database_dsn("postgres"), settings)
        try:
            await asyncio.sleep(2.0)  # let the load get going first
            for name in names:
                await admin.execute(
                    f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = ANY($1::text[])", names)
            ends = time.monotonic() + READ_ONLY_S
            while time.monotonic() < ends:  # the outage itself, watching /ready/
                seen_stuck.update(await stuck_services(stack))
                await asyncio.sleep(0.2)
        finally:
            for name in names:  # the connections opened meanwhile stay: the services renew them
                await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            await admin.close()
        return len(names)

    line = await run_scenario(stack, f"databases read-only for {READ_ONLY_S:.0f}s",
                              mixed_orders(settings, ORDERS), inject, rate_per_s=RATE_PER_S)
    assert line["lost"] == 0 and line["violations"] == 0
    assert await metric_sum(stack, "oms_dead_letters_total") == dead_before
    assert await metric_sum(stack, "oms_step_retries_total") > retries_before
    assert "orders" in seen_stuck, seen_stuck  # every PlaceOrder needs a write
    await all_ready(stack)
