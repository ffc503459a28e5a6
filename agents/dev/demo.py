"""``oms demo``: run the whole saga on N orders and prove the result.

The order mix is deterministic (by index): most orders succeed, every tenth
is declined by the payment gateway, every tenth asks for a sold-out SKU, and
every tenth competes for the last units of a scarce SKU.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from agents.dev.catalogue import REGULAR_SKUS, SCARCE_SKU, SOLD_OUT_SKU, price_of
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.ops.audit import audit
from config import Settings
from schemas.codec import new_envelope
from schemas.oms_pb2 import Envelope, OrderLine, PlaceOrder
from stores.db import connect


def demo_order(i: int, settings: Settings, producer: str = "client") -> Envelope:
    """The ``PlaceOrder`` of order number ``i`` of the deterministic mix."""
    kind = i % 10
    token = settings.gateway_decline_token if kind == 7 else "tok_visa"
    if kind == 8:
        skus = [(SCARCE_SKU, 1)]
    elif kind == 9:
        skus = [(SOLD_OUT_SKU, 1)]
    else:
        skus = [(REGULAR_SKUS[(i + j) % len(REGULAR_SKUS)], 1 + (i + j) % 3) for j in range(2)]
    return place_order(skus, token, customer=f"cust-{i % 97}", producer=producer)


def place_order(skus: list[tuple[str, int]], token: str = "tok_visa", *,
                customer: str = "demo", producer: str = "client") -> Envelope:
    """A new order's ``PlaceOrder`` for (SKU, quantity) lines at catalogue prices."""
    lines = [OrderLine(sku=s, quantity=q, unit_price_cents=price_of(s)) for s, q in skus]
    body = PlaceOrder(customer_id=customer, payment_token=token, currency="EUR", lines=lines)
    return new_envelope(str(uuid.uuid4()), body, producer=producer)


async def place_orders(
    settings: Settings, count: int, rate_per_s: float | None = None
) -> list[str]:
    """Place ``count`` orders, as fast as possible or at a fixed rate; return their ids."""
    ids: list[str] = []
    started = time.monotonic()
    async with OrderClient(settings) as client:
        pending: list[asyncio.Task[Any]] = []
        for i in range(count):
            if rate_per_s:
                delay = started + i / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            envelope = demo_order(i, settings)
            ids.append(envelope.order_id)
            pending.append(asyncio.ensure_future(client.send(envelope)))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return ids


async def wait_terminal(
    settings: Settings,
    order_ids: list[str],
    timeout_s: float,
    healthy: Callable[[], bool] = lambda: True,
) -> int:
    """Wait until none of ``order_ids`` is PENDING or missing; return how many still are.

    ``healthy`` is polled too, so a worker that failed for good (a crash
    loop) ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    conn = await connect(settings.dsn("orders"), settings)
    try:
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE order_id = ANY($1::uuid[])"
                " AND status <> 'PENDING'", order_ids)
            left = len(order_ids) - done
            if left == 0 or time.monotonic() > deadline:
                return int(left)
            if not healthy():
                raise RuntimeError("a worker failed while orders were in flight; see its log")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def latencies_ms(settings: Settings, order_ids: list[str]) -> list[float]:
    """Placement to terminal state per order, from the orders database."""
    conn = await connect(settings.dsn("orders"), settings)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM updated_at - placed_at) * 1000 AS ms FROM orders"
            " WHERE order_id = ANY($1::uuid[]) AND status <> 'PENDING'", order_ids)
    finally:
        await conn.close()
    return sorted(float(r["ms"]) for r in rows)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[rank], 1)


async def run_demo(stack: Stack, count: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Place ``count`` orders, wait for every saga to end, audit, and report."""
    settings = stack.settings
    started = time.monotonic()
    ids = await place_orders(settings, count)
    pending = await wait_terminal(settings, ids, timeout_s, stack.healthy)
    seconds = time.monotonic() - started
    report = await settled_audit(settings, deadline_s=60.0)
    lat = await latencies_ms(settings, ids)
    return {
        **report.summary(),
        "orders": count,
        "pending": pending,
        "seconds": round(seconds, 2),
        "orders_per_s": round(count / seconds, 1),
        "p50_ms": percentile(lat, 0.50),
        "p95_ms": percentile(lat, 0.95),
        "p99_ms": percentile(lat, 0.99),
        "mean_ms": round(statistics.fmean(lat), 1) if lat else 0.0,
    }


async def settled_audit(settings: Settings, deadline_s: float) -> Any:
    """Audit until nothing is in flight (compensations finish after the order is terminal)."""
    deadline = time.monotonic() + deadline_s
    while True:
        report = await audit(settings, settle_grace_s=deadline_s)
        if report.in_flight == 0 and report.ok or time.monotonic() > deadline:
            return await audit(settings, settle_grace_s=0.0)
        await asyncio.sleep(0.2)
