"""The inventory database: the catalogue (stock and price per SKU) and one reservation per order.

Reserving is all-or-nothing: the stock rows of an order are locked in SKU
order (so concurrent orders cannot deadlock), checked, then moved together.
Each reserved line records the catalogue's unit price at that moment: it is
what the order is charged, whatever the client sent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

RESERVED, REJECTED, SOLD, RELEASED, CANCELLED = (
    "RESERVED", "REJECTED", "SOLD", "RELEASED", "CANCELLED",
)


@dataclass(frozen=True)
class Mispriced:
    """A line whose client price is not the catalogue's."""

    sku: str
    price_cents: int
    quoted_cents: int

    def __str__(self) -> str:
        return f"{self.sku} costs {self.price_cents} cents, the order says {self.quoted_cents}"


@dataclass(frozen=True)
class ReserveOutcome:
    """What :func:`reserve` decided; ``decided_before`` means the order was seen already."""

    decided_before: bool = False
    unknown: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    mispriced: list[Mispriced] = field(default_factory=list)
    prices: dict[str, int] = field(default_factory=dict)
    """Catalogue unit price of every SKU reserved (empty unless reserved now)."""

    @property
    def blocking(self) -> list[str]:
        """The SKUs a rejection names: unknown ones, else those short, else mispriced ones.

        Missing stock comes before a wrong price: the order cannot be had at any price.
        """
        return self.unknown or self.short or [m.sku for m in self.mispriced]

    @property
    def reason(self) -> str:
        """The rejection's reason, recorded and sent; empty unless rejected now."""
        if self.unknown:
            return "unknown sku: " + ", ".join(self.unknown)
        if self.short:
            return "out of stock: " + ", ".join(self.short)
        return "price mismatch: " + "; ".join(map(str, self.mispriced)) if self.mispriced else ""


async def reservation_status(conn: asyncpg.Connection, order_id: str) -> str | None:
    """The order's reservation status."""
    status = await conn.fetchval("SELECT status FROM reservations WHERE order_id = $1", order_id)
    return str(status) if status is not None else None


async def lock_stock(conn: asyncpg.Connection, skus: list[str], settling: list[str]) -> None:
    """Lock the stock rows of ``skus`` and of the orders in ``settling``, in SKU order."""
    await conn.execute(
        "SELECT 1 FROM stock WHERE sku = ANY($1::text[])"
        " OR sku IN (SELECT sku FROM reservation_lines WHERE order_id = ANY($2::uuid[]))"
        " ORDER BY sku FOR UPDATE",
        skus,
        settling,
    )


async def reserve(
    conn: asyncpg.Connection,
    order_id: str,
    quantities: Mapping[str, int],
    quoted: Mapping[str, Collection[int]],
) -> ReserveOutcome:
    """Reserve every line or none at catalogue prices, in two round trips; a rejection too.

    ``quoted`` holds the unit prices the client sent per SKU (SKUs without one
    are left out); an order quoting any other price than the catalogue's is
    rejected, so nobody is charged other than what they were shown. The first
    statement locks the order's stock rows in SKU order and reads their
    prices and whether the order was decided before; the second moves the
    units and records the reservation and its priced lines in one statement.
    """
    skus = sorted(quantities)
    rows = await conn.fetch(
        "SELECT s.sku, s.available, s.price_cents,"
        " (SELECT status FROM reservations WHERE order_id = $2) AS decided"
        " FROM stock s WHERE s.sku = ANY($1::text[]) ORDER BY s.sku FOR UPDATE OF s",
        skus,
        order_id,
    )
    decided = rows[0]["decided"] if rows else await reservation_status(conn, order_id)
    if decided is not None:
        return ReserveOutcome(decided_before=True)
    available = {r["sku"]: r["available"] for r in rows}
    price = {r["sku"]: int(r["price_cents"]) for r in rows}
    unknown = [sku for sku in skus if sku not in available]
    mispriced = [Mispriced(sku, price[sku], q) for sku in skus if sku in price
                 for q in sorted(quoted.get(sku, ())) if q != price[sku]]
    short = [sku for sku in skus if sku in available and available[sku] < quantities[sku]]
    if unknown or mispriced or short:
        rejected = ReserveOutcome(unknown=unknown, short=short, mispriced=mispriced)
        await _decide(conn, order_id, REJECTED, rejected.reason)
        return rejected
    await conn.execute(
        "WITH moved AS (UPDATE stock s SET available = s.available - r.qty,"
        "   reserved = s.reserved + r.qty"
        "   FROM unnest($2::text[], $3::int[]) AS r(sku, qty) WHERE s.sku = r.sku),"
        " decided AS (INSERT INTO reservations (order_id, status) VALUES ($1, 'RESERVED'))"
        " INSERT INTO reservation_lines (order_id, sku, quantity, unit_price_cents)"
        " SELECT $1, sku, qty, price"
        " FROM unnest($2::text[], $3::int[], $4::bigint[]) AS r(sku, qty, price)",
        order_id,
        skus,
        [quantities[sku] for sku in skus],
        [price[sku] for sku in skus],
    )
    return ReserveOutcome(prices=price)


async def settle(conn: asyncpg.Connection, order_id: str, to: str) -> bool:
    """Move a RESERVED order's units to sold (``SOLD``) or back (``RELEASED``), in one statement.

    Returns False when the order holds no reservation (already settled, rejected or unknown).
    """
    moved = "sold = s.sold + l.quantity" if to == SOLD else "available = s.available + l.quantity"
    settled = await conn.fetchval(
        "WITH r AS (UPDATE reservations SET status = $2, updated_at = now()"
        "   WHERE order_id = $1 AND status = 'RESERVED' RETURNING order_id),"
        f" s AS (UPDATE stock s SET reserved = s.reserved - l.quantity, {moved}"
        "   FROM reservation_lines l JOIN r USING (order_id) WHERE s.sku = l.sku)"
        " SELECT count(*) FROM r",
        order_id,
        to,
    )
    return bool(settled)


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
