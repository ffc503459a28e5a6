"""The orders database: one row per order, its status guarded in SQL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

PENDING, CONFIRMED, CANCELLED = "PENDING", "CONFIRMED", "CANCELLED"
MASK = "****"
SHOWN_TOKEN_TAIL = 4
"""Characters of a payment token shown after the mask, for tokens of 12 characters or more."""
TERMINAL = (CONFIRMED, CANCELLED)
_COLUMNS = (
    "order_id, customer_id, status, amount_cents, currency, lines, payment_token, reason,"
    " placed_at, updated_at"
)


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    status: str
    amount_cents: int | None
    """The amount captured, once confirmed; None before (inventory prices the order)."""
    currency: str
    lines: list[dict[str, Any]]
    payment_token: str
    reason: str | None
    placed_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The web-view representation; the payment token masked (it never leaves unmasked)."""
        return {
            **{k: v for k, v in self.__dict__.items() if k not in ("placed_at", "updated_at")},
            "payment_token": masked(self.payment_token),
            "placed_at": self.placed_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def masked(token: str) -> str:
    """``****`` and, for a token of 12 characters or more, its last 4 (``****4242``).

    A short token shows nothing: its last characters would be a large part of it.
    """
    if not token:
        return ""
    tail = token[-SHOWN_TOKEN_TAIL:] if len(token) >= 3 * SHOWN_TOKEN_TAIL else ""
    return MASK + tail


async def create(conn: asyncpg.Connection, order: Order) -> bool:
    """Insert a new order; False when the order id exists already."""
    return order.order_id in await create_many(conn, [order])


async def create_many(conn: asyncpg.Connection, new: list[Order]) -> set[str]:
    """Insert new orders in one statement; the ids of those that did not exist yet."""
    # lines go as JSON text: a list of lists would be read as a two-dimensional array
    rows = await conn.fetch(
        "INSERT INTO orders (order_id, customer_id, status, amount_cents, currency, lines,"
        " payment_token, reason, placed_at)"
        " SELECT o, c, s, a, cur, l::jsonb, t, r, p FROM unnest($1::uuid[], $2::text[],"
        " $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],"
        " $9::timestamptz[]) AS n(o, c, s, a, cur, l, t, r, p)"
        " ON CONFLICT (order_id) DO NOTHING RETURNING order_id::text",
        [o.order_id for o in new], [o.customer_id for o in new], [o.status for o in new],
        [o.amount_cents for o in new], [o.currency for o in new],
        [json.dumps(o.lines) for o in new], [o.payment_token for o in new],
        [o.reason for o in new], [o.placed_at for o in new],
    )
    return {row[0] for row in rows}


@dataclass(frozen=True)
class Transition:
    """One PENDING order to move: to what, why, and the amount charged if known."""

    order_id: str
    to: str
    reason: str | None = None
    amount_cents: int | None = None


async def transition_many(conn: asyncpg.Connection, moves: list[Transition]) -> set[str]:
    """:func:`transition` for many orders (each at most once) in one statement;
    the ids of those that were PENDING and moved."""
    rows = await conn.fetch(
        "UPDATE orders o SET status = m.to_status, reason = coalesce(m.reason, o.reason),"
        " amount_cents = coalesce(m.amount_cents, o.amount_cents), updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[])"
        "  AS m(order_id, to_status, reason, amount_cents)"
        " WHERE o.order_id = m.order_id AND o.status = 'PENDING' RETURNING o.order_id::text",
        [m.order_id for m in moves], [m.to for m in moves], [m.reason for m in moves],
        [m.amount_cents for m in moves],
    )
    return {row[0] for row in rows}


async def transition(conn: asyncpg.Connection, change: Transition) -> bool:
    """Move a PENDING order to ``change.to`` (recording the amount charged, if given);
    False when the order is missing or already terminal."""
    return change.order_id in await transition_many(conn, [change])


async def get(conn: asyncpg.Connection, order_id: str) -> Order | None:
    """One order by id."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM orders WHERE order_id = $1",
        order_id,
    )
    return _order(row) if row else None


async def count_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    """Orders per status."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def _order(row: asyncpg.Record) -> Order:
    data = dict(row)
    data["order_id"] = str(data["order_id"])
    return Order(**data)
