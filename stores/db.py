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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (``RESET ALL; UNLISTEN *; ...``).

    Pooled connections never change session state: no SET, LISTEN, cursors or
    session advisory locks (the relay and migrations use their own connections).
    asyncpg still rolls back an open transaction itself. One round trip less per step.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python objects."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, reset=_keep_session
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
