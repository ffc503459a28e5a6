"""The saga step: inbox, business change and outbox in one PostgreSQL transaction.

This is the only place that opens a step transaction, so every service gets
the same guarantee: an event is applied at most once, and the events it
causes are published if and only if its change committed. Several events may
share one transaction (a batch); each is still claimed in the inbox on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from schemas.codec import encode
from schemas.oms_pb2 import Envelope
from stores import messaging

Handler = Callable[[asyncpg.Connection, Envelope], Awaitable[list[Envelope]]]
"""A service's business step: reads and writes through ``conn``, returns the events to emit."""


class InvalidEvent(Exception):
    """A well-formed envelope whose content the service cannot apply (dead letter)."""


@dataclass(frozen=True)
class StepResult:
    """What a step did: ``applied`` is False for a duplicate delivery."""

    applied: bool
    emitted: list[Envelope] = field(default_factory=list)
    outbox: list[messaging.OutboxMessage] = field(default_factory=list)


async def lock_rows(conn: asyncpg.Connection, handler: Handler, envelopes: list[Envelope]) -> None:
    """Let the handler lock every row the transaction will touch, in one global order.

    Two workers' batch transactions that lock shared rows (inventory's stock)
    in different orders deadlock, and PostgreSQL only notices after
    ``deadlock_timeout`` (1 s). Locking up front, sorted, makes them queue instead.
    """
    lock = getattr(handler, "lock", None)
    if lock is not None and envelopes:
        await lock(conn, envelopes)


async def run_step(
    conn: asyncpg.Connection,
    envelope: Envelope,
    handler: Handler,
    out_topic: str,
    headers: dict[str, str] | None = None,
    *,
    claimed: bool = False,
) -> StepResult:
    """Inside an open transaction: claim the event, apply it, return what to stage.

    ``claimed`` says the caller already inserted the inbox row (a batch claims
    all its events in one statement).
    """
    if not claimed and not await messaging.claim(conn, envelope.event_id, envelope.type):
        return StepResult(applied=False)
    emitted = await handler(conn, envelope)
    outbox = [
        messaging.OutboxMessage(out_topic, e.order_id.encode(), encode(e), headers or {})
        for e in emitted
    ]
    return StepResult(True, emitted, outbox)


async def apply_step(
    pool: asyncpg.Pool,
    envelope: Envelope,
    handler: Handler,
    out_topic: str,
    headers: dict[str, str] | None = None,
) -> StepResult:
    """Apply ``envelope`` exactly once in its own transaction and stage what it emits."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_rows(conn, handler, [envelope])
        result = await run_step(conn, envelope, handler, out_topic, headers)
        await messaging.enqueue(conn, result.outbox)
    return result
