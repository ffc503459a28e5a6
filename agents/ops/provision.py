"""Bring a system to the point where workers can start: topics, databases, stock.

Used by ``oms init`` (compose's one-shot container), ``oms up``, the demo and
the tests, so every environment is prepared the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from agents.messaging import kafka
from agents.topology import TOPICS
from config import Settings
from config.settings import DATABASE_SERVICES
from stores import inventory
from stores.db import connect, prepare_database
from stores.migrate import check_database_name

Catalogue = Mapping[str, tuple[int, int]]
"""SKU -> (units, unit price in cents)."""


async def init_system(settings: Settings, catalogue: Catalogue | None = None) -> dict[str, object]:
    """Create topics and databases, migrate, seed ``catalogue`` if given; safe to repeat."""
    topics = await create_topics(settings)
    migrations = {s: await prepare_database(settings, s) for s in DATABASE_SERVICES}
    seeded = 0
    if catalogue is not None:
        conn = await connect(settings.dsn("inventory"), settings)
        try:
            seeded = await inventory.seed(conn, catalogue)
        finally:
            await conn.close()
    return {"topics_created": topics, "migrations": migrations, "skus_seeded": seeded}


async def create_topics(settings: Settings) -> list[str]:
    """Create every OMS topic that does not exist yet; return the ones created."""
    return await kafka.ensure_topics(settings, {settings.topic(t): settings.partitions
                                                for t in TOPICS})


async def drop_databases(settings: Settings) -> None:
    """Drop the service databases (embedded runs only: the in-memory broker forgets too)."""
    conn = await connect(settings.database_dsn("postgres"), settings)
    try:
        for service in DATABASE_SERVICES:
            name = check_database_name(settings.database_name(service))
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()

