"""The outbox relay dies between publishing a batch and marking it sent.

Per database service, the worker is replaced by one started with
``OMS_FAULT_RELAY_CRASH_AFTER_PUBLISH=3``: its relay publishes its third batch
and exits with code 137 before ``mark_sent``. The restarted worker publishes
that batch again; the consumers' inboxes must absorb the duplicates.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agents.dev.stack import Stack, settings_env
from agents.dev.supervisor import ChildSpec
from config.settings import DATABASE_SERVICES
from tests.faults.harness import all_ready, fault_stack, mixed_orders, run_scenario
from tests.helpers import eventually

pytestmark = pytest.mark.faults

ORDERS = 300
CRASH_AFTER_BATCH = 3
_BATCH = re.compile(r"outbox ids (\d+)\.\.(\d+)\) before marking")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("relay")), saga_timeout_s=60.0) as running:
        yield running


async def crash_relay_once(stack: Stack, service: str) -> tuple[int, int]:
    """Swap ``<service>-0`` for a worker whose relay crashes; return the unmarked id range."""
    crasher = f"{service}-1"
    env = settings_env(stack.worker_settings(crasher))
    env["OMS_FAULT_RELAY_CRASH_AFTER_PUBLISH"] = str(CRASH_AFTER_BATCH)
    await stack.supervisor.kill(f"{service}-0")
    await stack.supervisor.start(
        [ChildSpec(crasher, [sys.executable, "-m", "agents.cli", "worker", service], env)])
    await eventually(lambda: _running(stack, crasher), lambda up: not up, 90.0,
                     f"{crasher}'s relay crash")
    await stack.supervisor.restart(f"{service}-0")
    assert stack.supervisor.exit_codes[crasher] == 137
    log = (Path(stack.settings.data_dir) / "logs" / f"{crasher}.log").read_text()
    found = _BATCH.search(log)
    assert found, f"{crasher} exited without the fault-injection line"
    return int(found[1]), int(found[2])


async def _running(stack: Stack, name: str) -> bool:
    return stack.supervisor.running(name)


async def test_relay_crash_between_publish_and_mark(stack: Stack) -> None:
    unmarked: dict[str, tuple[int, int]] = {}

    async def inject() -> int:
        for service in DATABASE_SERVICES:
            unmarked[service] = await crash_relay_once(stack, service)
        return len(unmarked)

    line = await run_scenario(stack, "relay crash between publish and mark",
                              mixed_orders(stack.settings, ORDERS), inject, rate_per_s=15.0)
    assert line["faults_injected"] == len(DATABASE_SERVICES)  # each verified by its exit code
    for service, (first, last) in unmarked.items():
        conn = await asyncpg.connect(stack.settings.dsn(service))
        try:
            unsent = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE id BETWEEN $1 AND $2 AND sent_at IS NULL",
                first, last)
        finally:
            await conn.close()
        assert unsent == 0, f"{service}: the crashed batch was never published again"
    await all_ready(stack)
