"""Secrets come only from settings and never show up in logs, errors or metrics.

The system runs with a database role that has a password (in the database
URL) and an admin token. After orders and admin calls, neither secret may
appear in any worker log, any ``/metrics`` page, the ``oms check`` output or
the redacted database URL that ``oms up`` prints.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from agents.dev.demo import place_orders, wait_terminal
from agents.dev.stack import Stack, settings_env, start_stack
from tests.conftest import TEST_DATABASE_URL, drop_test_databases, make_settings

pytestmark = pytest.mark.integration

PASSWORD = "pw" + secrets.token_hex(12)
TOKEN = "tok" + secrets.token_hex(12)
ROLE = f"oms_secret_{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    admin = await asyncpg.connect(f"{TEST_DATABASE_URL}/postgres")
    await admin.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    host = TEST_DATABASE_URL.split("@", 1)[1]
    settings = make_settings(tmp_path_factory.mktemp("secrets"),
                             database_url=f"postgresql://{ROLE}:{PASSWORD}@{host}",
                             admin_token=TOKEN)
    running = await start_stack(settings)
    try:
        yield running
    finally:
        await running.stop()
        await drop_test_databases(running.settings)
        await admin.execute(f"DROP ROLE IF EXISTS {ROLE}")
        await admin.close()


async def test_secrets_never_leak(stack: Stack) -> None:
    settings = stack.settings
    ids = await place_orders(settings, 20)
    assert await wait_terminal(settings, ids, 60.0) == 0
    orders_url = stack.web_url("orders-0")
    seen: list[str] = []
    async with aiohttp.ClientSession() as http:
        cancel = f"{orders_url}/orders/{ids[0]}/cancel/"
        async with http.post(cancel) as resp:
            assert resp.status == 401
        async with http.post(cancel, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
            seen.append(await resp.text())
        async with http.post(cancel, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 202
            seen.append(await resp.text())
        for names in stack.workers.values():
            for name in names:
                async with http.get(stack.web_url(name) + "/metrics") as resp:
                    assert resp.status == 200
                    seen.append(await resp.text())
    seen.append(await _oms_check_output(stack))
    seen.append(str(settings.redacted_database_url()))
    logs = {p.stem: p.read_text(errors="replace")
            for p in (Path(settings.data_dir) / "logs").glob("*.log")}
    assert set(logs) == {n for names in stack.workers.values() for n in names}  # all read
    assert all(logs.values()), "a worker log is empty"
    seen += logs.values()
    for text in seen:
        assert PASSWORD not in text, "database password leaked"
        assert TOKEN not in text, "admin token leaked"
    assert "***" in str(settings.redacted_database_url())


async def _oms_check_output(stack: Stack) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", "check",
        env={"PATH": "/usr/bin:/bin", **settings_env(stack.settings)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()
