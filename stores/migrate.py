"""Forward-only SQL migrations, applied on start and recorded per database.

Each service database gets ``migrations/common/*.sql`` plus its own folder,
in file-name order. An advisory lock lets two workers start at once safely.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x0_0355_4D49  # arbitrary, constant: "one migrator at a time"


def migration_files(service: str) -> list[Path]:
    """The ordered migrations of one service database."""
    common = MIGRATIONS.joinpath("common").glob("*.sql")
    files = [*common, *MIGRATIONS.joinpath(service).glob("*.sql")]
    return sorted(files, key=lambda p: p.name)


async def migrate(conn: asyncpg.Connection, service: str) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for path in migration_files(service):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.name)
            applied.append(path.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


def check_database_name(name: str) -> str:
    """Database names are interpolated into DDL, so only plain identifiers pass."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits, underscores")
    return name


async def ensure_database(server: asyncpg.Connection, name: str) -> bool:
    """Create database ``name`` if missing; return True when it was created.

    ``server`` is connected to any existing database of the server (``postgres``).
    """
    check_database_name(name)
    exists = await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    if exists:
        return False
    try:
        await server.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    return True
