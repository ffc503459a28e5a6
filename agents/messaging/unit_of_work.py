"""The saga step: inbox, business change and outbox in one PostgreSQL transaction.

This is the only place that opens a step transaction, so every service gets
the same guarantee: an event is applied at most once, and the events it
causes are published if and only if its change committed. Several events may
share one transaction (a batch); each is still claimed in the inbox on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace

import asyncpg

from schemas.codec import TYPE_HEADER, encode
from schemas.oms_pb2 import Envelope
from stores import messaging

Handler = Callable[[asyncpg.Connection, Envelope], Awaitable[list[Envelope]]]
"""A service's business step: reads and writes through ``conn``, returns the events to emit."""


@dataclass(frozen=True)
class StepResult:
    """What a step did: ``applied`` is False for a duplicate delivery."""

    applied: bool
    emitted: list[Envelope] = field(default_factory=list)
    outbox: list[messaging.OutboxMessage] = field(default_factory=list)


Tracing = Callable[[Envelope], AbstractContextManager[dict[str, str]]]
"""Wraps one event's handling (e.g. in its spans); yields the headers its outbox rows carry."""


@contextmanager
def _untraced(envelope: Envelope) -> Iterator[dict[str, str]]:
    yield {}


async def apply_steps(
    conn: asyncpg.Connection,
    envelopes: list[Envelope],
    handler: Handler,
    out_topic: str,
    around: Tracing = _untraced,
    *,
    notify: bool = True,
) -> list[StepResult]:
    """Apply events exactly once in ONE transaction on ``conn`` and stage what they emit.

    Every event is claimed in the inbox (one statement for the batch); one
    already claimed is a duplicate and is skipped. The handler may define
    ``prepare(conn, envelopes)`` (see :func:`_prepare`).
    The staged outbox rows come back with their ids; ``notify`` wakes the
    relays of other processes at commit (see ``messaging.enqueue``).
    """
    results: list[StepResult] = []
    async with conn.transaction():
        fresh = await messaging.claim_many(conn, [(e.event_id, e.type) for e in envelopes])
        step = await _prepare(conn, handler, [e for e in envelopes if e.event_id in fresh])
        for envelope in envelopes:
            if envelope.event_id not in fresh:
                results.append(StepResult(applied=False))
                continue
            with around(envelope) as headers:
                results.append(await _run_step(conn, envelope, step, out_topic, headers))
        staged = iter(await messaging.enqueue(conn, [m for r in results for m in r.outbox],
                                              notify=notify))
    return [replace(r, outbox=[next(staged) for _ in r.outbox]) if r.outbox else r
            for r in results]


async def apply_step(
    pool: asyncpg.Pool, envelope: Envelope, handler: Handler, out_topic: str
) -> StepResult:
    """Apply one event in its own transaction (:func:`apply_steps` with one event)."""
    async with pool.acquire() as conn:
        return (await apply_steps(conn, [envelope], handler, out_topic))[0]


async def _prepare(conn: asyncpg.Connection, handler: Handler,
                   envelopes: list[Envelope]) -> Handler:
    """Run the handler's ``prepare`` once for the transaction's fresh events, if it has one.

    It runs before any of them and returns the handler for this batch (None:
    the handler itself). Inventory locks every stock row the batch touches,
    in one global order: two workers' batches that lock shared rows in
    different orders deadlock, and PostgreSQL only notices after
    ``deadlock_timeout`` (1 s). Orders writes what does not depend on the
    events' order in one statement each, and its batch handler reads the
    outcome instead of making a round trip per event.
    """
    prepare = getattr(handler, "prepare", None)
    if prepare is None or not envelopes:
        return handler
    prepared: Handler | None = await prepare(conn, envelopes)
    return prepared or handler


async def _run_step(
    conn: asyncpg.Connection,
    envelope: Envelope,
    handler: Handler,
    out_topic: str,
    headers: dict[str, str],
) -> StepResult:
    """Apply one claimed event inside the open transaction; return what to stage."""
    emitted = await handler(conn, envelope)
    outbox = [
        messaging.OutboxMessage(out_topic, e.order_id.encode(), encode(e),
                                {**headers, TYPE_HEADER: e.type})
        for e in emitted
    ]
    return StepResult(True, emitted, outbox)
