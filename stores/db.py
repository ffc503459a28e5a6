"""asyncpg pools, one per service database."""

from __future__ import annotations

import json

import asyncpg

from config import Settings
from stores.migrate import ensure_database, migrate

Connection = asyncpg.Connection
Pool = asyncpg.Pool


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns read and write Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python objects.

    asyncpg's reset query on release stays on although pooled connections keep
    no session state: it is also the only check that drops a connection a
    killed backend left mid-operation but not closed (``InternalClientError``).
    Without it such a connection would go back to the pool and fail every
    step that draws it.
    """
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection
    )
    assert pool is not None
    return pool


async def prepare_database(settings: Settings, service: str) -> list[str]:
    """Create the service's database if needed and apply its migrations."""
    await ensure_database(settings.database_dsn("postgres"), settings.database_name(service))
    conn = await asyncpg.connect(settings.dsn(service))
    try:
        return await migrate(conn, service)
    finally:
        await conn.close()
