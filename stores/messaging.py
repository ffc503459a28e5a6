"""Inbox and outbox: the two tables that make a saga step exactly-once.

The inbox row and the outbox rows are written in the same transaction as the
business change, so "applied" and "emitted" can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import asyncpg

OUTBOX_CHANNEL = "oms_outbox"


@dataclass(frozen=True)
class OutboxMessage:
    """One Kafka record waiting in the outbox."""

    topic: str
    key: bytes
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    id: int = 0


async def claim_many(conn: asyncpg.Connection, events: Sequence[tuple[str, str]]) -> set[str]:
    """Record a batch of (event id, type); return the ids not applied before."""
    rows = await conn.fetch(
        "INSERT INTO inbox (event_id, event_type)"
        " SELECT * FROM unnest($1::uuid[], $2::text[]) ON CONFLICT (event_id) DO NOTHING"
        " RETURNING event_id",
        [e for e, _ in events],
        [t for _, t in events],
    )
    return {str(r["event_id"]) for r in rows}


async def enqueue(
    conn: asyncpg.Connection, messages: Sequence[OutboxMessage], *, notify: bool = True
) -> list[OutboxMessage]:
    """Add outgoing records; return them with their ids, in list (= publish) order.

    One statement inserts the rows and, with ``notify``, queues the NOTIFY that
    wakes the relays of every worker on commit (PostgreSQL delivers identical
    notifications of one transaction once). A step whose own process runs the
    publishing relay hands it the returned rows instead (no NOTIFY needed).
    """
    if not messages:
        return []
    rows = await conn.fetch(
        "WITH added AS (INSERT INTO outbox (topic, key, value, headers)"
        " SELECT t, k, v, h FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])"
        " WITH ORDINALITY AS m(t, k, v, h, n) ORDER BY n RETURNING id)"
        " SELECT id, CASE WHEN $5 THEN pg_notify($6, '') END FROM added ORDER BY id",
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.value for m in messages],
        [m.headers for m in messages],
        notify,
        OUTBOX_CHANNEL,
    )
    return [replace(m, id=r["id"]) for m, r in zip(messages, rows, strict=True)]


async def unsent(conn: asyncpg.Connection, limit: int) -> list[OutboxMessage]:
    """The oldest records waiting to be published (not parked), in commit-id order."""
    rows = await conn.fetch(
        "SELECT id, topic, key, value, headers FROM outbox"
        " WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT $1",
        limit,
    )
    return [
        OutboxMessage(r["topic"], r["key"], r["value"], r["headers"], r["id"]) for r in rows
    ]


async def mark_sent(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    """Mark records as published; a crash before this only causes a duplicate."""
    await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids)


async def park(conn: asyncpg.Connection, row_id: int, reason: str) -> None:
    """Set aside a record the broker refuses for good; it is kept, and no longer published."""
    await conn.execute("UPDATE outbox SET parked_at = now(), park_reason = $2 WHERE id = $1",
                       row_id, reason)


async def parked(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Parked records: id, topic, key, value size, when and why (oldest first)."""
    return await conn.fetch(
        "SELECT id, topic, key, length(value) AS size, parked_at, park_reason FROM outbox"
        " WHERE parked_at IS NOT NULL ORDER BY id")


async def of_key(conn: asyncpg.Connection, key: bytes, limit: int) -> list[asyncpg.Record]:
    """The records staged under ``key`` (an order's events), oldest first, still in the table.

    Published rows are purged after the outbox retention, so this is an
    order's recent history, not all of it.
    """
    return await conn.fetch(
        "SELECT id, topic, value, headers, created_at, written_at, sent_at, parked_at"
        " FROM outbox WHERE key = $1 ORDER BY id LIMIT $2",
        key, limit)


async def backlog(conn: asyncpg.Connection) -> int:
    """How many records wait to be published (parked ones do not wait)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"))


async def purge(conn: asyncpg.Connection, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` outbox rows published longer ago than ``older_than_s``.

    Parked rows are never purged: an operator has to see them.
    """
    done = await conn.execute(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
        " WHERE sent_at < now() - make_interval(secs => $1) ORDER BY sent_at LIMIT $2)",
        older_than_s, limit)
    return int(done.split()[-1])


async def purge_inbox(conn: asyncpg.Connection, older_than_s: float, limit: int) -> int:
    """Delete up to ``limit`` inbox rows received longer ago than ``older_than_s``.

    The retention must exceed the topics' retention: an event re-read after
    its inbox row is gone (a replay from the earliest offset) is applied again.
    """
    done = await conn.execute(
        "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox"
        " WHERE received_at < now() - make_interval(secs => $1) ORDER BY received_at LIMIT $2)",
        older_than_s, limit)
    return int(done.split()[-1])
