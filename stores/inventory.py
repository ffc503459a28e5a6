"""The inventory database: stock per SKU and one reservation per order.

Reserving is all-or-nothing: the stock rows of an order are locked in SKU
order (so concurrent orders cannot deadlock), checked, then moved together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

RESERVED, REJECTED, SOLD, RELEASED, CANCELLED = (
    "RESERVED", "REJECTED", "SOLD", "RELEASED", "CANCELLED",
)


async def reservation_status(conn: asyncpg.Connection, order_id: str) -> str | None:
    """The order's reservation status, locked for this transaction."""
    status = await conn.fetchval(
        "SELECT status FROM reservations WHERE order_id = $1 FOR UPDATE", order_id
    )
    return str(status) if status is not None else None


async def try_reserve(
    conn: asyncpg.Connection, order_id: str, quantities: Mapping[str, int]
) -> list[str]:
    """Reserve every line or none; return the SKUs that blocked it (empty = reserved)."""
    skus = sorted(quantities)
    rows = await conn.fetch(
        "SELECT sku, available FROM stock WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
        skus,
    )
    available = {r["sku"]: r["available"] for r in rows}
    short = [sku for sku in skus if available.get(sku, 0) < quantities[sku]]
    if short:
        await _decide(conn, order_id, REJECTED, "out of stock: " + ", ".join(short))
        return short
    qty = [quantities[s] for s in skus]
    await conn.execute(
        "UPDATE stock s SET available = s.available - r.qty, reserved = s.reserved + r.qty"
        " FROM unnest($1::text[], $2::int[]) AS r(sku, qty) WHERE s.sku = r.sku",
        skus,
        qty,
    )
    await _decide(conn, order_id, RESERVED, None)
    await conn.execute(
        "INSERT INTO reservation_lines (order_id, sku, quantity)"
        " SELECT $1, sku, qty FROM unnest($2::text[], $3::int[]) AS r(sku, qty)",
        order_id,
        skus,
        qty,
    )
    return []


async def unknown_skus(conn: asyncpg.Connection, skus: list[str]) -> list[str]:
    """SKUs that are not in the catalogue."""
    known = await conn.fetch("SELECT sku FROM stock WHERE sku = ANY($1::text[])", skus)
    return sorted(set(skus) - {r["sku"] for r in known})


async def settle(conn: asyncpg.Connection, order_id: str, to: str) -> bool:
    """Move a RESERVED order's units to sold (``SOLD``) or back to available (``RELEASED``)."""
    moved = "sold = s.sold + l.quantity" if to == SOLD else "available = s.available + l.quantity"
    updated = await conn.execute(
        f"UPDATE stock s SET reserved = s.reserved - l.quantity, {moved}"
        " FROM reservation_lines l WHERE l.order_id = $1 AND s.sku = l.sku",
        order_id,
    )
    await conn.execute(
        "UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1",
        order_id,
        to,
    )
    return updated != "UPDATE 0"


async def record_rejected(conn: asyncpg.Connection, order_id: str, reason: str) -> None:
    """Remember a rejection decided before any stock was touched."""
    await _decide(conn, order_id, REJECTED, reason)


async def record_cancelled(conn: asyncpg.Connection, order_id: str) -> None:
    """Remember a cancel for an order never reserved, so a late create is not reserved."""
    await _decide(conn, order_id, CANCELLED, "cancelled before reservation")


async def _decide(conn: asyncpg.Connection, order_id: str, status: str, reason: str | None) -> None:
    await conn.execute(
        "INSERT INTO reservations (order_id, status, reason) VALUES ($1, $2, $3)",
        order_id,
        status,
        reason,
    )


async def stock_of(conn: asyncpg.Connection, sku: str) -> dict[str, Any] | None:
    """Stock levels of one SKU."""
    row = await conn.fetchrow(
        "SELECT sku, price_cents, total, available, reserved, sold FROM stock WHERE sku = $1", sku
    )
    return dict(row) if row else None


async def stock_levels(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Stock levels of every SKU, by SKU (the catalogue is small: tens of rows)."""
    rows = await conn.fetch(
        "SELECT sku, price_cents, total, available, reserved, sold FROM stock ORDER BY sku"
    )
    return [dict(r) for r in rows]


async def seed(conn: asyncpg.Connection, catalogue: Mapping[str, tuple[int, int]]) -> int:
    """Add SKUs (sku -> (units, price in cents)) that are not there yet; return how many."""
    status = await conn.execute(
        "INSERT INTO stock (sku, price_cents, total, available, reserved, sold)"
        " SELECT sku, price, units, units, 0, 0"
        " FROM unnest($1::text[], $2::int[], $3::bigint[]) AS c(sku, units, price)"
        " ON CONFLICT (sku) DO NOTHING",
        list(catalogue),
        [units for units, _ in catalogue.values()],
        [price for _, price in catalogue.values()],
    )
    return int(status.split()[-1])
