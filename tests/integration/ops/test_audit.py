"""``oms check`` against a system with known state, then with each invariant broken on purpose.

The system runs for real (one stack for the module); each corruption is made
directly in a database (or, for the tracker, by an event only the tracker
reads), checked with the real CLI in a subprocess, and undone, so every test
runs alone or in any order. Every invariant, and every clause of it that the
databases do not already make impossible, has a corruption that breaks it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agents.dev.demo import place_orders, settled_audit, wait_terminal
from agents.dev.stack import Stack, settings_env, start_stack
from agents.messaging.client import OrderClient
from agents.ops.audit import audit, tracker_views
from agents.topology import SAGA_EVENTS
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import OrderCancelled, PaymentFailed, PlaceOrder
from tests.conftest import drop_test_databases, make_settings
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration
ORDERS = 40

INVARIANTS = {
    "terminal": "every order ends",
    "confirmed": "confirmed:",
    "cancelled": "cancelled:",
    "stock": "per SKU",
    "double_charge": "no order is charged twice",
    "double_apply": "no event applied twice",
    "parked": "no outbox row parked",
    "tracker": "tracker:",
}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = await start_stack(make_settings(tmp_path_factory.mktemp("audit")))
    try:
        ids = await place_orders(running.settings, ORDERS)
        assert await wait_terminal(running.settings, ids, 90.0) == 0
        assert (await settled_audit(running.settings, deadline_s=60.0)).ok
        yield running
    finally:
        await running.stop()
        await drop_test_databases(running.settings)


async def oms_check(stack: Stack, *args: str) -> tuple[int, list[str], dict[str, Any]]:
    """Run ``oms check`` as a process; return its exit code, invariant lines and summary."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", "check", "--grace", "0", *args,
        env={"PATH": "/usr/bin:/bin", **settings_env(stack.settings)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    lines = out.decode().splitlines()
    assert lines, err.decode()
    return proc.returncode or 0, lines[:-1], json.loads(lines[-1])


def status_of(lines: list[str], invariant: str) -> str:
    """``ok`` or ``FAIL`` for the invariant whose line contains ``INVARIANTS[invariant]``."""
    for line in lines:
        if INVARIANTS[invariant] in line:
            return line.split()[0]
    raise AssertionError(f"no line for {invariant}: {lines}")


async def assert_only_failing(stack: Stack, invariant: str, *args: str) -> dict[str, Any]:
    """``oms check`` fails on ``invariant`` alone, with exactly one violation."""
    code, lines, summary = await oms_check(stack, *args)
    assert code == 1, lines
    assert status_of(lines, invariant) == "FAIL", lines
    checked = set(INVARIANTS) if args else set(INVARIANTS) - {"tracker"}
    for other in checked - {invariant}:
        assert status_of(lines, other) == "ok", (other, lines)
    assert summary["invariants"] == "violated" and summary["violations"] == 1, lines
    return summary


async def one(stack: Stack, service: str, sql: str, *args: object) -> Any:
    rows = await query(stack.settings, service, sql, *args)
    return rows[0][0] if rows else None


async def order_with(stack: Stack, status: str, reason_like: str = "%") -> str:
    return str(await one(stack, "orders", "SELECT order_id FROM orders WHERE status = $1"
                         " AND coalesce(reason, '') LIKE $2 LIMIT 1", status, reason_like))


async def test_clean_system_passes_every_invariant(stack: Stack) -> None:
    code, lines, summary = await oms_check(stack)
    assert code == 0, lines
    assert all(line.startswith("ok") for line in lines if not line.startswith(" ")), lines
    assert summary["invariants"] == "ok" and summary["violations"] == 0
    assert summary["orders"] == ORDERS and summary["in_flight"] == 0


async def test_tracker_view_is_checked_when_given(stack: Stack) -> None:
    code, lines, summary = await oms_check(
        stack, "--tracker-url", stack.web_url("orchestrator-0"))
    assert code == 0, lines
    assert status_of(lines, "tracker") == "ok"
    assert summary["tracker_running"] == 0


async def test_pending_order_is_in_flight_then_a_violation(stack: Stack) -> None:
    order_id = str(uuid.uuid4())
    await one(stack, "orders",
              "INSERT INTO orders (order_id, customer_id, status, amount_cents, currency, lines,"
              " payment_token, placed_at) VALUES ($1, 'audit', 'PENDING', 100, 'EUR', '[]',"
              " 'tok_visa', now())", order_id)
    try:
        code, lines, summary = await oms_check(stack)
        assert code == 0, lines
        assert summary["in_flight"] == 1 and summary["pending"] == 1
        assert "(in flight: 1)" in next(x for x in lines if INVARIANTS["terminal"] in x)
        await one(stack, "orders", "UPDATE orders SET placed_at = now() - interval '1 hour'"
                  " WHERE order_id = $1", order_id)
        await assert_only_failing(stack, "terminal")
    finally:
        await one(stack, "orders", "DELETE FROM orders WHERE order_id = $1", order_id)


async def test_confirmed_order_without_capture(stack: Stack) -> None:
    order_id = await order_with(stack, "CONFIRMED")
    await one(stack, "payments", "UPDATE psp_charges SET status = 'VOIDED'"
              " WHERE idempotency_key = $1", order_id)
    try:
        await assert_only_failing(stack, "confirmed")
    finally:
        await one(stack, "payments", "UPDATE psp_charges SET status = 'CAPTURED'"
                  " WHERE idempotency_key = $1", order_id)


async def test_cancelled_order_still_captured(stack: Stack) -> None:
    order_id = await order_with(stack, "CANCELLED", "payment failed%")
    await one(stack, "payments", "UPDATE psp_charges SET status = 'CAPTURED'"
              " WHERE idempotency_key = $1", order_id)
    try:
        await assert_only_failing(stack, "cancelled")
    finally:
        await one(stack, "payments", "UPDATE psp_charges SET status = 'DECLINED'"
                  " WHERE idempotency_key = $1", order_id)


async def test_reserved_units_disagree_with_reservation_lines(stack: Stack) -> None:
    sku = "SKU-0001"
    await one(stack, "inventory", "UPDATE stock SET reserved = reserved + 1,"
              " available = available - 1 WHERE sku = $1", sku)
    try:
        await assert_only_failing(stack, "stock")
    finally:
        await one(stack, "inventory", "UPDATE stock SET reserved = reserved - 1,"
                  " available = available + 1 WHERE sku = $1", sku)


async def test_duplicated_outbox_event(stack: Stack) -> None:
    copy = await one(stack, "orders",
                     "INSERT INTO outbox (topic, key, value, headers, sent_at)"
                     " SELECT topic, key, value, headers, now() FROM outbox"
                     " ORDER BY id LIMIT 1 RETURNING id")
    try:
        await assert_only_failing(stack, "double_apply")
    finally:
        await one(stack, "orders", "DELETE FROM outbox WHERE id = $1", copy)


async def test_parked_outbox_row(stack: Stack) -> None:
    """A row the broker refused for good is an event nobody got: a violation, with why."""
    order_id = str(uuid.uuid4())
    value = encode(new_envelope(order_id, PaymentFailed(reason="x"), producer="payments"))
    parked = await one(stack, "payments",
                       "INSERT INTO outbox (topic, key, value, headers, parked_at, park_reason)"
                       " VALUES ('oms.payment-events', $1, $2, '{}', now(),"
                       " 'MessageSizeTooLargeError: too large') RETURNING id",
                       order_id.encode(), value)
    try:
        await assert_only_failing(stack, "parked")
        _, lines, _ = await oms_check(stack)
        assert any(f"payments outbox row {parked}" in x and "MessageSizeTooLargeError" in x
                   for x in lines), lines
    finally:
        await one(stack, "payments", "DELETE FROM outbox WHERE id = $1", parked)


async def broken(stack: Stack, invariant: str, service: str, do: str, undo: str,
                 *args: object) -> None:
    """Break one invariant with ``do``, check only it fails, then ``undo``."""
    await one(stack, service, do, *args)
    try:
        await assert_only_failing(stack, invariant)
    finally:
        await one(stack, service, undo, *args)


@asynccontextmanager
async def units_moved(stack: Stack, order_id: str, source: str, target: str
                      ) -> AsyncIterator[None]:
    """Move an order's units between stock columns (so only the order looks wrong), and back."""
    lines = await query(stack.settings, "inventory", "SELECT sku, quantity FROM"
                        " reservation_lines WHERE order_id = $1", order_id)
    move = "UPDATE stock SET {0} = {0} - $2, {1} = {1} + $2 WHERE sku = $1"
    for line in lines:
        await one(stack, "inventory", move.format(source, target), line["sku"], line["quantity"])
    try:
        yield
    finally:
        for line in lines:
            await one(stack, "inventory", move.format(target, source), line["sku"],
                      line["quantity"])


async def test_confirmed_order_charged_a_different_amount(stack: Stack) -> None:
    change = "UPDATE psp_charges SET amount_cents = amount_cents {} 1 WHERE idempotency_key = $1"
    await broken(stack, "confirmed", "payments", change.format("+"), change.format("-"),
                 await order_with(stack, "CONFIRMED"))


async def test_confirmed_order_whose_reservation_was_released(stack: Stack) -> None:
    """Released instead of sold, its units back on the shelf: only the order is wrong."""
    order_id = await order_with(stack, "CONFIRMED")
    async with units_moved(stack, order_id, "sold", "available"):
        await broken(stack, "confirmed", "inventory",
                     "UPDATE reservations SET status = 'RELEASED' WHERE order_id = $1",
                     "UPDATE reservations SET status = 'SOLD' WHERE order_id = $1", order_id)


async def test_confirmed_order_without_a_charged_payment(stack: Stack) -> None:
    await broken(stack, "confirmed", "payments",
                 "UPDATE payments SET status = 'UNKNOWN' WHERE order_id = $1",
                 "UPDATE payments SET status = 'CHARGED' WHERE order_id = $1",
                 await order_with(stack, "CONFIRMED"))


async def test_cancelled_order_whose_payment_was_never_refunded(stack: Stack) -> None:
    await broken(stack, "cancelled", "payments",
                 "UPDATE payments SET status = 'CHARGED' WHERE order_id = $1",
                 "UPDATE payments SET status = 'DECLINED' WHERE order_id = $1",
                 await order_with(stack, "CANCELLED", "payment failed%"))


async def test_cancelled_order_whose_reservation_is_still_held(stack: Stack) -> None:
    """Held stock is counted per SKU too, so its units move to reserved with it."""
    order_id = await order_with(stack, "CANCELLED", "payment failed%")
    async with units_moved(stack, order_id, "available", "reserved"):
        await broken(stack, "cancelled", "inventory",
                     "UPDATE reservations SET status = 'RESERVED' WHERE order_id = $1",
                     "UPDATE reservations SET status = 'RELEASED' WHERE order_id = $1", order_id)


async def test_units_sold_without_a_sold_reservation(stack: Stack) -> None:
    """Conserved (available + reserved + sold = total) yet a unit is sold for no order."""
    await broken(stack, "stock", "inventory",
                 "UPDATE stock SET sold = sold + 1, available = available - 1 WHERE sku = $1",
                 "UPDATE stock SET sold = sold - 1, available = available + 1 WHERE sku = $1",
                 "SKU-0001")


async def test_units_not_conserved(stack: Stack) -> None:
    """The database refuses this (a CHECK); the audit must see it if the CHECK is ever lost."""
    await one(stack, "inventory", "ALTER TABLE stock DROP CONSTRAINT stock_check")
    try:
        await broken(stack, "stock", "inventory",
                     "UPDATE stock SET total = total + 1 WHERE sku = $1",
                     "UPDATE stock SET total = total - 1 WHERE sku = $1", "SKU-0002")
    finally:
        await one(stack, "inventory", "ALTER TABLE stock ADD CONSTRAINT stock_check"
                  " CHECK (available + reserved + sold = total)")


async def test_order_charged_twice(stack: Stack) -> None:
    """A second capture for a confirmed order, under another idempotency key."""
    order_id = await order_with(stack, "CONFIRMED")
    await broken(stack, "double_charge", "payments",
                 "INSERT INTO psp_charges (idempotency_key, charge_id, amount_cents, status)"
                 " SELECT idempotency_key || ':again', charge_id || '-again', amount_cents,"
                 " 'CAPTURED' FROM psp_charges WHERE idempotency_key = $1",
                 "DELETE FROM psp_charges WHERE idempotency_key = $1 || ':again'", order_id)


async def test_charge_for_an_order_never_created(stack: Stack) -> None:
    await broken(stack, "double_charge", "payments",
                 "INSERT INTO psp_charges (idempotency_key, charge_id, amount_cents, status)"
                 " VALUES ($1, 'ch-' || $1, 500, 'CAPTURED')",
                 "DELETE FROM psp_charges WHERE idempotency_key = $1", str(uuid.uuid4()))


async def test_saga_of_an_unknown_order_is_in_flight_until_its_deadline(stack: Stack) -> None:
    """An event only the tracker reads starts a saga there that no database knows of.

    Inside its deadline (which counts on the tracker's clock, whatever the
    event claims) it is in flight, not a violation; the tracker's own deadline
    then ends it. Past the deadline and the grace it is a violation:
    tests/unit/ops/test_audit_tracker.py breaks that clause and the others.
    """
    url = stack.web_url("orchestrator-0")
    order_id = str(uuid.uuid4())
    long_ago = 1  # a client clock in 1970 must not make it overdue

    async def running() -> int:
        view = (await tracker_views((url,)))[url]
        assert not isinstance(view, str), view
        return int(view["counts"].get("RUNNING", 0))

    async with OrderClient(stack.settings) as client:
        topic = stack.settings.topic(SAGA_EVENTS)
        await client.send_raw(topic, order_id.encode(), encode(new_envelope(
            order_id, PlaceOrder(customer_id="audit"), producer="test",
            placed_at_ms=long_ago)))
        try:
            await eventually(running, lambda n: n == 1, 30, "the tracker runs the saga")
            code, lines, summary = await oms_check(stack, "--tracker-url", url)
            assert code == 0 and status_of(lines, "tracker") == "ok", lines
            assert summary["in_flight"] >= 1
        finally:
            await client.send_raw(topic, order_id.encode(), encode(new_envelope(
                order_id, OrderCancelled(reason="audit test"), producer="test")))
            await eventually(running, lambda n: n == 0, 30, "the tracker ended the saga")


async def test_audit_api_matches_the_cli(stack: Stack) -> None:
    report = await audit(stack.settings, settle_grace_s=0.0)
    assert report.ok and report.in_flight == 0
    assert len(report.invariants) == len(INVARIANTS) - 1  # the tracker needs its URL
