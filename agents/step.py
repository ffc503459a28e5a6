"""The saga step: inbox, business change and outbox in one PostgreSQL transaction.

This is the only place that opens a step transaction, so every service gets
the same guarantee: an event is applied at most once, and the events it
causes are published if and only if its change committed.
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


async def apply_step(
    pool: asyncpg.Pool,
    envelope: Envelope,
    handler: Handler,
    out_topic: str,
    headers: dict[str, str] | None = None,
) -> StepResult:
    """Apply ``envelope`` exactly once and stage what it emits in the outbox."""
    async with pool.acquire() as conn, conn.transaction():
        if not await messaging.claim(conn, envelope.event_id, envelope.type):
            return StepResult(applied=False)
        emitted = await handler(conn, envelope)
        await messaging.enqueue(
            conn,
            [
                messaging.OutboxMessage(out_topic, e.order_id.encode(), encode(e), headers or {})
                for e in emitted
            ],
        )
    return StepResult(applied=True, emitted=emitted)
