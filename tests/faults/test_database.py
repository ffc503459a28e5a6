"""Database trouble: backends killed mid-transaction, and databases closed for seconds.

Both faults hit the shared PostgreSQL only through this system's own
databases: ``pg_terminate_backend`` on their backends, and ``ALTER DATABASE
... ALLOW_CONNECTIONS false`` (plus terminating what is connected) for a few
seconds. The services must retry with backoff and resume; the inbox makes
sure nothing is applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agents.dev.stack import Stack
from config.settings import DATABASE_SERVICES
from stores.migrate import check_database_name
from tests.faults.harness import all_ready, fault_stack, mixed_orders, run_scenario
from tests.helpers import scrape, total

pytestmark = pytest.mark.faults

ORDERS = 300
RATE_PER_S = 30.0
UNAVAILABLE_S = 4.0


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("db")), saga_timeout_s=30.0) as running:
        yield running


def _databases(stack: Stack) -> list[str]:
    return [check_database_name(stack.settings.database_name(s)) for s in DATABASE_SERVICES]


async def terminate_backends(admin: asyncpg.Connection, databases: list[str]) -> int:
    """Kill every backend connected to ``databases``; return how many."""
    return int(await admin.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()", databases))


async def step_retries(stack: Stack) -> float:
    """Transient step failures the database services have retried so far."""
    return sum([total(await scrape(stack.web_url(f"{s}-0")), "oms_step_retries_total")
                for s in DATABASE_SERVICES])


async def test_backends_terminated_mid_transaction(stack: Stack) -> None:
    async def inject() -> int:
        admin = await asyncpg.connect(stack.settings.database_dsn("postgres"))
        killed = 0
        try:
            for _ in range(8):
                await asyncio.sleep(1.0)  # spread the faults over the load
                killed += await terminate_backends(admin, _databases(stack))
        finally:
            await admin.close()
        return killed

    line = await run_scenario(stack, "pg_terminate_backend x8 mid-load",
                              mixed_orders(stack.settings, ORDERS), inject, rate_per_s=RATE_PER_S)
    assert line["faults_injected"] > 0
    await all_ready(stack)


async def test_database_unavailable_for_seconds(stack: Stack) -> None:
    """The outage must be felt: connections cut, and steps failing and retried meanwhile."""
    retried_before = await step_retries(stack)

    async def inject() -> int:
        admin = await asyncpg.connect(stack.settings.database_dsn("postgres"))
        databases = _databases(stack)
        try:
            await asyncio.sleep(3.0)  # let the load get going first
            for name in databases:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cut = await terminate_backends(admin, databases)
            await asyncio.sleep(UNAVAILABLE_S)  # the outage itself
        finally:
            for name in databases:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
        return cut

    line = await run_scenario(stack, f"databases closed for {UNAVAILABLE_S:.0f}s",
                              mixed_orders(stack.settings, ORDERS), inject, rate_per_s=RATE_PER_S)
    assert line["faults_injected"] > 0, "no connection was open when the databases closed"
    assert await step_retries(stack) > retried_before, "no step met the closed databases"
    await all_ready(stack)
