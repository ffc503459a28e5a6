"""The payments database: at most one payment per order, by primary key."""

from __future__ import annotations

from typing import Any

import asyncpg

CHARGED, DECLINED, UNKNOWN, REFUNDED, VOIDED = (
    "CHARGED", "DECLINED", "UNKNOWN", "REFUNDED", "VOIDED",
)


async def status_of(conn: asyncpg.Connection, order_id: str) -> str | None:
    """The order's payment status, locked for this transaction."""
    status = await conn.fetchval(
        "SELECT status FROM payments WHERE order_id = $1 FOR UPDATE", order_id
    )
    return str(status) if status is not None else None


async def record(
    conn: asyncpg.Connection,
    order_id: str,
    status: str,
    *,
    amount_cents: int = 0,
    charge_id: str | None = None,
    reason: str | None = None,
) -> None:
    """Insert or overwrite the order's payment row."""
    await conn.execute(
        "INSERT INTO payments (order_id, status, amount_cents, charge_id, reason)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (order_id) DO UPDATE SET status = excluded.status,"
        " amount_cents = excluded.amount_cents,"
        " charge_id = coalesce(excluded.charge_id, payments.charge_id),"
        " reason = coalesce(excluded.reason, payments.reason), updated_at = now()",
        order_id,
        status,
        amount_cents,
        charge_id,
        reason,
    )


async def get(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    """One payment by order id."""
    row = await conn.fetchrow(
        "SELECT order_id, status, amount_cents, charge_id, reason, created_at, updated_at"
        " FROM payments WHERE order_id = $1",
        order_id,
    )
    return dict(row) if row else None
