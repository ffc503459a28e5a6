"""``GET /events/{order_id}/``: the events a service emitted for one order, from its outbox.

The saga tracker reads only what its decisions need, so its record of a saga
no longer holds the hops between the services. Every database service still
keeps each event it emitted in its outbox (until the outbox retention purges
the published rows), so the console's timeline asks each service for them.

Each event's time is the envelope's ``occurred_at_ms``: the time the tracker's
own steps carry for the events it reads too, so both sources line up and one
event reported by both has one time. The row's ``written_at`` and ``sent_at``
(the database server's clock) come along for the step/commit/relay breakdown.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import faust
from faust.web import Request, Response, View

from schemas.codec import TYPE_HEADER, DecodeError, decode
from stores import messaging

log = logging.getLogger(__name__)
EVENTS_SHOWN = 200
"""Rows one answer holds at most (an order has a handful; this bounds a bad key's answer)."""


def event_of(service: str, row: asyncpg.Record) -> dict[str, Any]:
    """One outbox row as a timeline event: who, what, when, and where it went."""
    headers = row["headers"] or {}
    try:
        envelope = decode(row["value"])
    except DecodeError as exc:  # staged by this service, so never expected; shown, not hidden
        log.warning("%s outbox row %s is not an envelope: %s", service, row["id"], exc)
        stamp = row["written_at"] or row["created_at"]
        event, event_id, at_ms = headers.get(TYPE_HEADER, ""), "", _ms(stamp)
    else:
        event, event_id, at_ms = envelope.type, envelope.event_id, envelope.occurred_at_ms
    return {"service": service, "event": event, "event_id": event_id, "topic": row["topic"],
            "at_ms": at_ms, "written_at": _iso(row["written_at"]),
            "sent_at": _iso(row["sent_at"]), "parked": row["parked_at"] is not None}


def add_history_views(app: faust.App, service: str, pool: Callable[[], asyncpg.Pool]) -> None:
    """Register ``/events/{order_id}/`` on a database service's web server."""

    @app.page("/events/{order_id}/")
    async def events(web: View, request: Request, order_id: str) -> Response:
        body, status = await read_events(service, pool, order_id)
        return web.json(body, status=status)


async def read_events(
    service: str, pool: Callable[[], asyncpg.Pool], order_id: str
) -> tuple[dict[str, Any], int]:
    """The view's answer and status: 400 for an id that is not a UUID, 503 when the
    database cannot be read (not started, closed, unreachable, or the query failed)."""
    try:
        canonical = str(uuid.UUID(order_id))
    except ValueError:
        return {"error": "order_id: not a UUID", "order_id": order_id}, 400
    try:
        async with pool().acquire() as conn:
            rows = await messaging.of_key(conn, canonical.encode(), EVENTS_SHOWN)
    except (RuntimeError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("%s: events of %s not read: %s", service, canonical, exc)
        return {"error": f"database not available: {type(exc).__name__}"}, 503
    return {"service": service, "order_id": canonical,
            "events": [event_of(service, row) for row in rows]}, 200


def _iso(stamp: datetime | None) -> str | None:
    return stamp.astimezone(UTC).isoformat() if stamp is not None else None


def _ms(stamp: datetime | None) -> int:
    return int(stamp.timestamp() * 1000) if stamp is not None else 0
