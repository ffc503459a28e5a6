"""Shared fixtures: real PostgreSQL (127.0.0.1:5432 or OMS_TEST_DATABASE_URL) and a real broker.

Every test session uses its own database prefix, so runs never see each
other's rows; each test uses fresh random order ids.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agents.dev.embedded import EmbeddedBroker, start_broker
from agents.dev.stack import Stack, start_stack
from config import Settings
from config.settings import DATABASE_SERVICES
from stores.db import create_pool, prepare_database

TEST_DATABASE_URL = os.environ.get("OMS_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (proves they are independent)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--reverse``: a test that needs another to run first fails this way."""
    if config.getoption("--reverse"):
        items.reverse()


def make_settings(tmp: Path, **overrides: object) -> Settings:
    """Settings for a test system: its own databases, data dir and web ports."""
    values: dict[str, object] = {
        "database_url": TEST_DATABASE_URL,
        "database_prefix": f"oms_t{uuid.uuid4().hex[:8]}_",
        "data_dir": str(tmp),
        "web_port_base": free_port_block(),
        "saga_timeout_s": 30.0,
        # Tansu's group joins take about half the session timeout, and every test
        # stack joins four groups (more on each restart and rebalance): 4 s instead
        # of the default 6 saves over a minute of the suite and still leaves four
        # heartbeats (1 s) per session on a busy two-core machine.
        "session_timeout_s": 4.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def free_port_block(size: int = 40) -> int:
    """A base port with ``size`` free ports above it (two workers of four services).

    Chosen below the kernel's ephemeral range (32768+), so outgoing client
    connections can never take a worker's web port between choice and bind.
    """
    rng = random.Random()
    while True:
        base = rng.randrange(20_000, 32_000 - size)
        if all(_bindable(port) for port in range(base, base + size)):
            return base


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the whole session (or the one in OMS_TEST_KAFKA_BOOTSTRAP)."""
    with start_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="session")
def db_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings with migrated databases of their own (no broker needed)."""
    return make_settings(tmp_path_factory.mktemp("db"), kafka_bootstrap="127.0.0.1:1")


@pytest.fixture(scope="session")
async def pools(db_settings: Settings) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """Migrated databases of the three services, dropped after the session."""
    for service in DATABASE_SERVICES:
        await prepare_database(db_settings, service)
    opened = {s: await create_pool(db_settings.dsn(s), db_settings) for s in DATABASE_SERVICES}
    yield opened
    for pool in opened.values():
        await pool.close()
    await drop_test_databases(db_settings)


async def drop_test_databases(settings: Settings) -> None:
    """Remove a test system's databases."""
    conn = await asyncpg.connect(settings.database_dsn("postgres"))
    try:
        for service in DATABASE_SERVICES:
            await conn.execute(
                f'DROP DATABASE IF EXISTS "{settings.database_name(service)}" WITH (FORCE)'
            )
    finally:
        await conn.close()


@asynccontextmanager
async def running_stack(settings: Settings, **options: Any) -> AsyncIterator[Stack]:
    """A whole system for a test module; stopped and its databases dropped afterwards."""
    stack = await start_stack(settings, **options)
    try:
        yield stack
    finally:
        await stack.stop()
        await drop_test_databases(stack.settings)


def new_order_id() -> str:
    return str(uuid.uuid4())
