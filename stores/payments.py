"""The payments database: at most one payment per order, by primary key."""

from __future__ import annotations

from typing import Any

import asyncpg

CHARGED, DECLINED, UNKNOWN, REFUNDED, VOIDED = (
    "CHARGED", "DECLINED", "UNKNOWN", "REFUNDED", "VOIDED",
)


async def record_first(
    conn: asyncpg.Connection,
    order_id: str,
    status: str,
    *,
    amount_cents: int = 0,
    charge_id: str | None = None,
    reason: str | None = None,
) -> bool:
    """Record a charge's outcome unless the order has a payment row already.

    False means the order was charged, declined or voided before: the primary
    key makes a second payment for one order impossible.
    """
    inserted = await conn.fetchval(
        "INSERT INTO payments (order_id, status, amount_cents, charge_id, reason)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING RETURNING true",
        order_id, status, amount_cents, charge_id, reason,
    )
    return bool(inserted)


async def record_cancel(
    conn: asyncpg.Connection,
    order_id: str,
    status: str,
    *,
    amount_cents: int = 0,
    charge_id: str | None = None,
    reason: str | None = None,
) -> bool:
    """Record a refund or void; only a missing, CHARGED or UNKNOWN payment changes.

    False means the cancel changed nothing (declined, refunded or voided before).
    """
    changed = await conn.fetchval(
        "INSERT INTO payments (order_id, status, amount_cents, charge_id, reason)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE"
        " SET status = excluded.status, amount_cents = excluded.amount_cents,"
        " charge_id = coalesce(excluded.charge_id, payments.charge_id),"
        " reason = excluded.reason, updated_at = now()"
        " WHERE payments.status IN ('CHARGED', 'UNKNOWN') RETURNING true",
        order_id, status, amount_cents, charge_id, reason,
    )
    return bool(changed)


async def get(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    """One payment by order id."""
    row = await conn.fetchrow(
        "SELECT order_id, status, amount_cents, charge_id, reason, created_at, updated_at"
        " FROM payments WHERE order_id = $1",
        order_id,
    )
    return dict(row) if row else None
