"""The payments database: at most one payment per order, by primary key, and its intents.

A payment row starts as an intent (CHARGING, CANCELLING) recorded by the step
transaction; the PSP caller leases it, asks the provider and settles the
answer into a final status (CHARGED, DECLINED, UNKNOWN, REFUNDED, VOIDED).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

CHARGING, CHARGED, DECLINED, UNKNOWN = "CHARGING", "CHARGED", "DECLINED", "UNKNOWN"
CANCELLING, REFUNDED, VOIDED = "CANCELLING", "REFUNDED", "VOIDED"
INTENTS = (CHARGING, CANCELLING)
"""Statuses that wait for the PSP: a call is still to be made (or answered)."""

INTENTS_CHANNEL = "oms_payment_intents"
"""NOTIFY channel: an intent was committed, a caller may claim it."""


@dataclass(frozen=True)
class Intent:
    """A leased intent: what to ask the PSP for one order, and for whom the answer is."""

    order_id: str
    status: str
    """CHARGING or CANCELLING."""
    request: bytes
    """The claimed event (an encoded envelope) that asked for the call."""
    trace: dict[str, str]
    lease_owner: uuid.UUID
    taken_over: bool = False
    """Leased before by a caller that stopped renewing it: it may have called the PSP."""


async def intend_charge(
    conn: asyncpg.Connection, order_id: str, amount_cents: int, request: bytes,
    trace: dict[str, str],
) -> bool:
    """Record a charge intent unless the order has a payment row already.

    False means the order was charged, declined, cancelled or is being
    charged: the primary key makes a second payment for one order impossible.
    The NOTIFY wakes the PSP callers when the transaction commits.
    """
    recorded = await conn.fetchval(
        "WITH recorded AS (INSERT INTO payments (order_id, status, amount_cents, request, trace)"
        " VALUES ($1, 'CHARGING', $2, $3, $4) ON CONFLICT (order_id) DO NOTHING"
        " RETURNING order_id)"
        " SELECT true, pg_notify($5, '') FROM recorded",
        order_id, amount_cents, request, trace, INTENTS_CHANNEL,
    )
    return bool(recorded)


async def intend_cancel(
    conn: asyncpg.Connection, order_id: str, request: bytes, trace: dict[str, str]
) -> bool:
    """Record a cancel intent: for a missing, CHARGING, CHARGED or UNKNOWN payment.

    A missing row becomes CANCELLING too: the PSP voids the key, and the row
    stops any later charge intent. A CHARGING row keeps its lease, so the
    caller whose charge is in flight cancels right after its answer. False
    means there is nothing to cancel (declined, cancelling, refunded or voided).
    """
    recorded = await conn.fetchval(
        "WITH recorded AS (INSERT INTO payments (order_id, status, request, trace)"
        " VALUES ($1, 'CANCELLING', $2, $3) ON CONFLICT (order_id) DO UPDATE"
        " SET status = 'CANCELLING', request = excluded.request, trace = excluded.trace,"
        " updated_at = now() WHERE payments.status IN ('CHARGING', 'CHARGED', 'UNKNOWN')"
        " RETURNING order_id)"
        " SELECT true, pg_notify($4, '') FROM recorded",
        order_id, request, trace, INTENTS_CHANNEL,
    )
    return bool(recorded)


async def claim(
    conn: asyncpg.Connection, owner: uuid.UUID, limit: int, lease_s: float
) -> list[Intent]:
    """Lease up to ``limit`` intents nobody holds (oldest first) for ``lease_s``.

    An intent whose lease ran out was held by a caller that stopped renewing
    it (a dead worker): it comes back ``taken_over``.
    """
    rows = await conn.fetch(
        "UPDATE payments p SET lease_owner = $1, lease_until = now() + make_interval(secs => $3)"
        " FROM (SELECT order_id, lease_owner FROM payments"
        "       WHERE status IN ('CHARGING', 'CANCELLING')"
        "       AND (lease_until IS NULL OR lease_until < now())"
        "       ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) free"
        " WHERE p.order_id = free.order_id"
        " RETURNING p.order_id::text, p.status, p.request, p.trace,"
        " free.lease_owner IS NOT NULL AS taken_over",
        owner, limit, lease_s,
    )
    return [Intent(r["order_id"], r["status"], r["request"], r["trace"], owner, r["taken_over"])
            for r in rows]


async def renew(
    conn: asyncpg.Connection, owner: uuid.UUID, order_ids: list[str], lease_s: float
) -> None:
    """Extend the leases this caller still works on.

    Rows a step transaction holds are skipped (renewed next time): waiting for
    them while holding others could deadlock with that transaction.
    """
    await conn.execute(
        "UPDATE payments SET lease_until = now() + make_interval(secs => $3)"
        " WHERE order_id IN (SELECT order_id FROM payments"
        "  WHERE order_id = ANY($2::uuid[]) AND lease_owner = $1 FOR UPDATE SKIP LOCKED)",
        owner, order_ids, lease_s,
    )


async def settle(
    conn: asyncpg.Connection,
    intent: Intent,
    status: str,
    *,
    amount_cents: int | None = None,
    charge_id: str | None = None,
    reason: str | None = None,
) -> bool:
    """Record the PSP's answer to ``intent`` and release its lease.

    False when the row is no longer that intent under that lease: a cancel
    turned the charge into a cancel intent (the caller goes on with it), or
    another caller took the intent over.
    """
    settled = await conn.fetchval(
        "UPDATE payments SET status = $4, amount_cents = coalesce($5, amount_cents),"
        " charge_id = coalesce($6, charge_id), reason = $7, request = NULL,"
        " lease_owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE order_id = $1 AND lease_owner = $2 AND status = $3 RETURNING true",
        intent.order_id, intent.lease_owner, intent.status, status, amount_cents, charge_id,
        reason,
    )
    return bool(settled)


async def next_intent(conn: asyncpg.Connection, intent: Intent, lease_s: float) -> Intent | None:
    """The order's intent still leased to the same caller (a cancel recorded during its
    charge call), with a fresh lease; None when the order waits for nothing."""
    row = await conn.fetchrow(
        "UPDATE payments SET lease_until = now() + make_interval(secs => $3)"
        " WHERE order_id = $1 AND lease_owner = $2 AND status IN ('CHARGING', 'CANCELLING')"
        " RETURNING status, request, trace",
        intent.order_id, intent.lease_owner, lease_s,
    )
    if row is None:
        return None
    return Intent(intent.order_id, row["status"], row["request"], row["trace"],
                  intent.lease_owner)


async def waiting(conn: asyncpg.Connection) -> int:
    """Intents recorded and not yet settled, leased or not."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM payments WHERE status IN ('CHARGING', 'CANCELLING')"))


async def get(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    """One payment by order id (never its request: that holds the payment token)."""
    row = await conn.fetchrow(
        "SELECT order_id, status, amount_cents, charge_id, reason, created_at, updated_at"
        " FROM payments WHERE order_id = $1",
        order_id,
    )
    return dict(row) if row else None
