"""The one factory for PostgreSQL connections: pools and single connections.

Every connection OMS opens is made here, so each gets the same limits. On
the client, a connect timeout and a command timeout: a connection whose path
died raises instead of hanging. On the server (``server_settings``), TCP
keepalives and ``tcp_user_timeout``: the server ends the session of a client
that vanished, and with it any advisory lock the session held. Credentials
and TLS come from the URL (``sslmode=``, ``sslrootcert=``).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from config import Settings
from stores.migrate import ensure_database, migrate

Connection = asyncpg.Connection
Pool = asyncpg.Pool


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns read and write Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def connect_options(settings: Settings) -> dict[str, Any]:
    """asyncpg keyword arguments every connection gets (timeouts and keepalives)."""
    return {
        "timeout": settings.db_connect_timeout_s,
        "command_timeout": settings.db_command_timeout_s,
        "server_settings": {
            "tcp_keepalives_idle": str(settings.db_keepalives_idle_s),
            "tcp_keepalives_interval": str(settings.db_keepalives_interval_s),
            "tcp_keepalives_count": str(settings.db_keepalives_count),
            "tcp_user_timeout": str(int(settings.db_tcp_user_timeout_s * 1000)),
        },
    }


async def connect(
    dsn: str, settings: Settings, *, idle_session_timeout_s: float | None = None
) -> asyncpg.Connection:
    """One connection, with jsonb as Python objects.

    ``idle_session_timeout_s`` asks the server to end the session once the
    client has been silent that long: for a holder of an advisory lock that
    speaks regularly (the outbox relay), so that a path that died without a
    reset, which keepalives cannot notice when something still answers them,
    releases the lock.
    """
    options = connect_options(settings)
    if idle_session_timeout_s is not None:
        options["server_settings"]["idle_session_timeout"] = str(
            int(idle_session_timeout_s * 1000))
    conn = await asyncpg.connect(dsn, **options)
    try:
        await init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def create_pool(
    dsn: str, settings: Settings, *, min_size: int | None = None, max_size: int | None = None
) -> asyncpg.Pool:
    """A pool whose connections speak jsonb as Python objects (sizes default to the settings).

    asyncpg's reset query on release stays on although pooled connections keep
    no session state: it is also the only check that drops a connection a
    killed backend left mid-operation but not closed (``InternalClientError``).
    Without it such a connection would go back to the pool and fail every
    step that draws it.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.pool_min_size if min_size is None else min_size,
        max_size=settings.pool_max_size if max_size is None else max_size,
        init=init_connection,
        **connect_options(settings),
    )
    assert pool is not None
    return pool


async def prepare_database(settings: Settings, service: str) -> list[str]:
    """Create the service's database if needed and apply its migrations."""
    server = await connect(settings.database_dsn("postgres"), settings)
    try:
        await ensure_database(server, settings.database_name(service))
    finally:
        await server.close()
    conn = await connect(settings.dsn(service), settings)
    try:
        return await migrate(conn, service)
    finally:
        await conn.close()
