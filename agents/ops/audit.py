"""``oms check``: prove the DESIGN invariants directly in the three databases.

Each invariant is one query (or one pass over decoded outbox rows) and
yields violations. On a live system, orders still inside their deadline and
settlements younger than ``settle_grace_s`` are reported as in flight, not as
violations. Given every tracker worker's web address, the tracker's view is
checked too: each partition of its table is owned by exactly one worker, and
no saga runs past its deadline by more than the grace (one inside it is in
flight, even for an order the databases do not know).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from config import Settings
from schemas.codec import DecodeError, decode
from stores import messaging
from stores.db import connect


@dataclass
class Invariant:
    name: str
    violations: list[str] = field(default_factory=list)
    in_flight: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class AuditReport:
    invariants: list[Invariant]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.invariants)

    @property
    def in_flight(self) -> int:
        return sum(i.in_flight for i in self.invariants)

    def summary(self) -> dict[str, Any]:
        return {
            **self.counts,
            "invariants": "ok" if self.ok else "violated",
            "violations": sum(len(i.violations) for i in self.invariants),
            "in_flight": self.in_flight,
        }


async def audit(
    settings: Settings, *, settle_grace_s: float = 10.0, tracker_urls: tuple[str, ...] = ()
) -> AuditReport:
    """Read the three databases (and the trackers at ``tracker_urls``); check every invariant."""
    conns = {s: await connect(settings.dsn(s), settings)
             for s in ("orders", "inventory", "payments")}
    try:
        orders = {str(r["order_id"]): r for r in await conns["orders"].fetch(
            "SELECT order_id, status, amount_cents, placed_at,"
            " extract(epoch FROM now() - updated_at) AS settled_s,"
            " extract(epoch FROM now() - placed_at) AS age_s FROM orders")}
        reservations = {str(r["order_id"]): r["status"] for r in await conns["inventory"].fetch(
            "SELECT order_id, status FROM reservations")}
        captures = {r["idempotency_key"]: r for r in await conns["payments"].fetch(
            "SELECT idempotency_key, status, amount_cents FROM psp_charges")}
        payments = {str(r["order_id"]): r["status"] for r in await conns["payments"].fetch(
            "SELECT order_id, status FROM payments")}
        ctx = _Context(orders, reservations, captures, payments, settings.saga_timeout_s,
                       settle_grace_s)
        invariants = [
            _terminal(ctx),
            await _confirmed_settled(ctx, conns["inventory"]),
            _cancelled_compensated(ctx),
            await _stock_conserved(conns["inventory"]),
            _no_double_charge(ctx),
            await _no_double_apply(conns),
            await parked_outbox_rows(conns),
        ]
    finally:
        for conn in conns.values():
            await conn.close()
    statuses = Counter(r["status"] for r in orders.values())
    counts = {"orders": len(orders), "confirmed": statuses["CONFIRMED"],
              "cancelled": statuses["CANCELLED"], "pending": statuses["PENDING"]}
    if tracker_urls:
        views = await tracker_views(tracker_urls)
        counts["tracker_running"] = sum(view["counts"].get("RUNNING", 0)
                                        for view in views.values() if isinstance(view, dict))
        invariants.append(check_tracker_views(views, settings.partitions, settle_grace_s))
    return AuditReport(invariants, counts)


TrackerView = dict[str, Any] | str
"""One tracker worker's ``/sagas/`` answer, or why it gave none."""


async def tracker_views(urls: tuple[str, ...]) -> dict[str, TrackerView]:
    """Each tracker worker's own ``/sagas/?scope=local`` (counts, partitions, overdue sagas)."""
    views: dict[str, TrackerView] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for url in urls:
            try:
                async with http.get(url.rstrip("/") + "/sagas/?scope=local") as resp:
                    resp.raise_for_status()
                    views[url] = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                views[url] = f"{type(exc).__name__}: {exc}"
    return views


def check_tracker_views(views: dict[str, TrackerView], partitions: int,
                        grace_s: float) -> Invariant:
    """Every partition tracked by exactly one worker; no saga running past deadline + grace.

    A running saga inside its deadline is in flight whether or not the
    orders database knows its order (an event for an unknown order starts a
    saga, which its deadline cancels). While a worker is rebalancing or
    recovering, who owns what is being decided: in flight, not a violation.
    """
    inv = Invariant("tracker: each saga tracked by one worker, none running past its deadline")
    owners: dict[int, list[str]] = {}
    settled = True
    for url, view in views.items():
        if isinstance(view, str):
            inv.violations.append(f"{url} did not answer: {view}")
            continue
        settled = settled and bool(view.get("settled"))
        for partition in view.get("partitions", []):
            owners.setdefault(partition, []).append(url)
        late = [o for o in view.get("overdue", []) if o["overdue_ms"] > grace_s * 1000]
        inv.violations += [f"{o['order_id']} RUNNING {o['overdue_ms'] / 1000:.0f}s past its"
                           f" deadline ({url})" for o in late]
        inv.in_flight += view["counts"].get("RUNNING", 0) - len(late)
    ownership = [f"partition {p} tracked by both {' and '.join(urls)}"
                 for p, urls in sorted(owners.items()) if len(urls) > 1]
    missing = sorted(set(range(partitions)) - owners.keys())
    if missing:
        ownership.append(f"partitions {missing} tracked by none of the given workers")
    silent = any(isinstance(view, str) for view in views.values())
    if ownership and not silent:  # a silent worker is a violation already, and explains gaps
        if settled:
            inv.violations += ownership
        else:
            inv.in_flight += 1
    return inv


@dataclass
class _Context:
    orders: dict[str, asyncpg.Record]
    reservations: dict[str, str]
    captures: dict[str, asyncpg.Record]
    payments: dict[str, str]
    timeout_s: float
    grace_s: float

    def settling(self, order: asyncpg.Record) -> bool:
        return float(order["settled_s"]) < self.grace_s


def _terminal(ctx: _Context) -> Invariant:
    inv = Invariant("every order ends CONFIRMED or CANCELLED")
    for order_id, order in ctx.orders.items():
        if order["status"] != "PENDING":
            continue
        if float(order["age_s"]) <= ctx.timeout_s + ctx.grace_s:
            inv.in_flight += 1
        else:
            inv.violations.append(f"{order_id} PENDING for {float(order['age_s']):.0f}s")
    return inv


async def _confirmed_settled(ctx: _Context, inventory: asyncpg.Connection) -> Invariant:
    """One capture of exactly the catalogue-priced amount inventory recorded, reservation sold.

    The order's own amount (what ``GET /orders/{id}/`` shows) must be that
    capture too. Reservations made before prices were recorded have none;
    their capture is compared with the order's amount only.
    """
    inv = Invariant("confirmed: exactly one capture of the catalogue price, reservation sold")
    priced = {str(r["order_id"]): r["amount"] for r in await inventory.fetch(
        "SELECT order_id, CASE WHEN count(unit_price_cents) = count(*)"
        " THEN sum(quantity * unit_price_cents) END AS amount"
        " FROM reservation_lines GROUP BY order_id")}
    for order_id, order in ctx.orders.items():
        if order["status"] != "CONFIRMED":
            continue
        capture = ctx.captures.get(order_id)
        problems = []
        if capture is None or capture["status"] != "CAPTURED":
            problems.append(f"capture {capture['status'] if capture else 'missing'}")
        else:
            catalogue = priced.get(order_id)
            if catalogue is not None and capture["amount_cents"] != catalogue:
                problems.append(f"captured {capture['amount_cents']} != catalogue {catalogue}")
            if capture["amount_cents"] != order["amount_cents"]:
                problems.append(f"captured {capture['amount_cents']} != order"
                                f" {order['amount_cents']}")
        if ctx.reservations.get(order_id) != "SOLD":
            problems.append(f"reservation {ctx.reservations.get(order_id)}")
        if ctx.payments.get(order_id) != "CHARGED":
            problems.append(f"payment {ctx.payments.get(order_id)}")
        _classify(inv, ctx, order, order_id, problems)
    return inv


def _cancelled_compensated(ctx: _Context) -> Invariant:
    """No net charge and no held stock; both services must also have settled the cancel.

    Every cancel reaches inventory and payments, and each records its decision
    (a released or never-made reservation; a declined, refunded or voided
    payment). A missing decision means the cancel is still on its way, or a
    charge is still being made (a slow PSP): in flight within the grace period,
    lost after it.
    """
    inv = Invariant("cancelled: no net charge, reservation released or never made")
    for order_id, order in ctx.orders.items():
        if order["status"] != "CANCELLED":
            continue
        problems = []
        capture = ctx.captures.get(order_id)
        if capture is not None and capture["status"] == "CAPTURED":
            problems.append("still captured")
        if ctx.reservations.get(order_id) not in _CANCEL_SETTLED_RESERVATION:
            problems.append(f"reservation {ctx.reservations.get(order_id)}")
        if ctx.payments.get(order_id) not in _CANCEL_SETTLED_PAYMENT:
            problems.append(f"payment {ctx.payments.get(order_id)}")
        _classify(inv, ctx, order, order_id, problems)
    return inv


_CANCEL_SETTLED_RESERVATION = ("REJECTED", "RELEASED", "CANCELLED")
_CANCEL_SETTLED_PAYMENT = ("DECLINED", "REFUNDED", "VOIDED")


def _classify(inv: Invariant, ctx: _Context, order: asyncpg.Record, order_id: str,
              problems: list[str]) -> None:
    if not problems:
        return
    if ctx.settling(order):
        inv.in_flight += 1
    else:
        inv.violations.append(f"{order_id} {order['status']}: {', '.join(problems)}")


async def _stock_conserved(conn: asyncpg.Connection) -> Invariant:
    inv = Invariant("per SKU: total = available + reserved + sold, held = reservations")
    rows = await conn.fetch(
        "SELECT s.sku, s.total, s.available, s.reserved, s.sold,"
        " coalesce(sum(l.quantity) FILTER (WHERE r.status = 'RESERVED'), 0) AS held,"
        " coalesce(sum(l.quantity) FILTER (WHERE r.status = 'SOLD'), 0) AS sold_lines"
        " FROM stock s LEFT JOIN reservation_lines l ON l.sku = s.sku"
        " LEFT JOIN reservations r ON r.order_id = l.order_id GROUP BY s.sku")
    for r in rows:
        if r["available"] < 0 or r["available"] + r["reserved"] + r["sold"] != r["total"]:
            inv.violations.append(f"{r['sku']}: units not conserved {dict(r)}")
        if r["reserved"] != r["held"] or r["sold"] != r["sold_lines"]:
            inv.violations.append(
                f"{r['sku']}: reserved {r['reserved']} vs held {r['held']},"
                f" sold {r['sold']} vs sold lines {r['sold_lines']}")
    return inv


def _no_double_charge(ctx: _Context) -> Invariant:
    inv = Invariant("no order is charged twice or for an unknown order")
    for key, capture in ctx.captures.items():
        if capture["status"] in ("CAPTURED", "REFUNDED") and key not in ctx.orders:
            inv.violations.append(f"{key}: charge for an order the orders service never created")
    return inv


_ANSWERS = frozenset({"CancelRejected"})
"""Events that answer a command rather than change state: one per command, not per order."""


async def _no_double_apply(conns: dict[str, asyncpg.Connection]) -> Invariant:
    """Every (order, event type) is emitted at most once by its service (answers aside)."""
    inv = Invariant("no event applied twice (each order emits each event type once)")
    for service, conn in conns.items():
        seen: Counter[tuple[str, str]] = Counter()
        for row in await conn.fetch("SELECT value FROM outbox"):
            try:
                envelope = decode(row["value"])
            except DecodeError as exc:
                inv.violations.append(f"{service} outbox holds an undecodable row: {exc}")
                continue
            if envelope.type not in _ANSWERS:
                seen[(envelope.order_id, envelope.type)] += 1
        inv.violations += [f"{service}: {t} emitted {n} times for {o}"
                           for (o, t), n in seen.items() if n > 1]
    return inv


async def parked_outbox_rows(conns: dict[str, asyncpg.Connection]) -> Invariant:
    """No outbox row is parked: each is an event the broker refused and no consumer got."""
    inv = Invariant("no outbox row parked (refused by the broker for good)")
    for service, conn in conns.items():
        inv.violations += [
            f"{service} outbox row {r['id']} ({r['topic']}, {r['size']} bytes) parked at"
            f" {r['parked_at']:%Y-%m-%d %H:%M:%S}: {r['park_reason']}"
            for r in await messaging.parked(conn)]
    return inv
