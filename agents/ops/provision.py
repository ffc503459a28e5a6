"""Bring a system to the point where workers can start: topics, databases, stock.

Used by ``oms init`` (compose's one-shot container), ``oms up``, the demo and
the tests, so every environment is prepared the same way.
"""

from __future__ import annotations

import asyncpg

from agents.catalogue import catalogue
from agents.topics import create_topics
from config import Settings
from config.settings import DATABASE_SERVICES
from stores import inventory
from stores.db import prepare_database
from stores.migrate import check_database_name, ensure_database


async def init_system(settings: Settings, *, seed: bool = True) -> dict[str, object]:
    """Create topics and databases, migrate, seed the catalogue; safe to repeat."""
    assert settings.kafka_bootstrap is not None
    topics = await create_topics(settings, settings.kafka_bootstrap)
    migrations = {s: await prepare_database(settings, s) for s in DATABASE_SERVICES}
    seeded = 0
    if seed:
        conn = await asyncpg.connect(settings.dsn("inventory"))
        try:
            seeded = await inventory.seed(conn, catalogue())
        finally:
            await conn.close()
    return {"topics_created": topics, "migrations": migrations, "skus_seeded": seeded}


async def drop_databases(settings: Settings) -> None:
    """Drop the service databases (embedded runs only: the in-memory broker forgets too)."""
    conn = await asyncpg.connect(settings.database_dsn("postgres"))
    try:
        for service in DATABASE_SERVICES:
            name = check_database_name(settings.database_name(service))
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def ensure_databases(settings: Settings) -> None:
    """Create the service databases without migrating (for tools that only read)."""
    for service in DATABASE_SERVICES:
        await ensure_database(settings.database_dsn("postgres"), settings.database_name(service))
