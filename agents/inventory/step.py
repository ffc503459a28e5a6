"""The inventory step: reserve all lines or none, then sell or release.

| on | does | emits |
|---|---|---|
| OrderCreated | reserve all or none, at catalogue prices | InventoryReserved / InventoryRejected |
| OrderConfirmed | reservation becomes sold | InventoryCommitted |
| OrderCancelled | release the reservation if held | InventoryReleased |

All three arrive on ``oms.order-events``, so they reach this service in order.
Inventory owns the catalogue, so it prices the order: InventoryReserved
carries the catalogue price of every line and their total, which is what
payments charges. A client's price that differs rejects the order.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import asyncpg

from agents.messaging.errors import InvalidEvent
from schemas.codec import new_envelope
from schemas.oms_pb2 import (
    Envelope,
    InventoryCommitted,
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    OrderCreated,
    OrderLine,
)
from stores import inventory
from stores.inventory import RELEASED, SOLD

SERVICE = "inventory"


class InventoryStep:
    """The inventory step; a transaction first locks all the stock rows it will touch."""

    async def prepare(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        """Lock, in SKU order, the rows of every line being reserved, sold or released."""
        skus = {line.sku for e in envelopes if e.type == "OrderCreated"
                for line in e.order_created.lines}
        settling = [e.order_id for e in envelopes if e.type != "OrderCreated"]
        await inventory.lock_stock(conn, sorted(skus), settling)

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
        return await handle(conn, envelope)


async def handle(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """The inventory step for one event (inside the step transaction)."""
    if envelope.type == "OrderCreated":
        return await reserve(conn, envelope)
    if envelope.type == "OrderConfirmed":
        return await settle(conn, envelope, SOLD, InventoryCommitted())
    if envelope.type == "OrderCancelled":
        return await release(conn, envelope)
    return []


def quantities(body: OrderCreated) -> Counter[str]:
    """Units per SKU, summing repeated SKUs; invalid lines are dead letters."""
    if not body.lines:
        raise InvalidEvent("lines: at least one line is required")
    wanted: Counter[str] = Counter()
    for i, line in enumerate(body.lines):
        if not line.sku or line.quantity <= 0:
            raise InvalidEvent(f"lines[{i}]: sku must be set and quantity positive")
        wanted[line.sku] += line.quantity
    return wanted


def quoted_prices(body: OrderCreated) -> dict[str, set[int]]:
    """The unit prices the client sent, per SKU (lines without one quote nothing)."""
    quoted: defaultdict[str, set[int]] = defaultdict(set)
    for line in body.lines:
        if line.HasField("unit_price_cents"):
            quoted[line.sku].add(line.unit_price_cents)
    return quoted


async def reserve(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Reserve every line or none at catalogue prices; an order seen before is left alone."""
    body = envelope.order_created
    outcome = await inventory.reserve(conn, envelope.order_id, quantities(body),
                                      quoted_prices(body))
    if outcome.decided_before:
        return []
    if outcome.reason:
        return [_rejected(envelope, outcome.reason, outcome.blocking)]
    lines = [OrderLine(sku=x.sku, quantity=x.quantity, unit_price_cents=outcome.prices[x.sku])
             for x in body.lines]
    reserved = InventoryReserved(
        lines=lines,
        amount_cents=sum(x.quantity * x.unit_price_cents for x in lines),
        currency=body.currency,
        payment_token=body.payment_token,
    )
    return [new_envelope(envelope.order_id, reserved, producer=SERVICE, cause=envelope)]


def _rejected(envelope: Envelope, reason: str, skus: list[str]) -> Envelope:
    body = InventoryRejected(reason=reason, skus=skus)
    return new_envelope(envelope.order_id, body, producer=SERVICE, cause=envelope)


async def settle(
    conn: asyncpg.Connection,
    envelope: Envelope,
    to: str,
    event: InventoryCommitted | InventoryReleased,
) -> list[Envelope]:
    """Sell or release a held reservation; anything else is already settled."""
    if not await inventory.settle(conn, envelope.order_id, to):
        return []
    return [new_envelope(envelope.order_id, event, producer=SERVICE, cause=envelope)]


async def release(conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
    """Release a held reservation, or remember the cancel so nothing is reserved later."""
    if await inventory.settle(conn, envelope.order_id, RELEASED):
        return [new_envelope(envelope.order_id, InventoryReleased(), producer=SERVICE,
                             cause=envelope)]
    if await inventory.reservation_status(conn, envelope.order_id) is None:
        await inventory.record_cancelled(conn, envelope.order_id)
    return []

