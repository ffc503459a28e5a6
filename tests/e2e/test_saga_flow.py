"""The full saga through the multi-process stack: real broker, real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.ops.audit import audit
from agents.orders.intake import LineRequest, PlaceOrderRequest
from config import Settings
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        tmp_path_factory.mktemp("saga"), kafka_bootstrap=broker.bootstrap,
        topic_prefix="saga.", saga_timeout_s=4.0, gateway_timeout_s=0.3,
    )
    async with running_stack(settings, fresh=True) as running:
        yield running


def order(token: str = "tok_visa", sku: str = "SKU-0003", qty: int = 2) -> PlaceOrderRequest:
    line = LineRequest(sku=sku, quantity=qty, unit_price_cents=1000)
    return PlaceOrderRequest(customer_id="c-e2e", lines=[line], payment_token=token)


async def place(settings: Settings, request: PlaceOrderRequest) -> str:
    async with OrderClient(settings) as client:
        return (await client.place(request)).order_id


async def terminal(settings: Settings, order_id: str) -> asyncpg.Record:
    async def probe() -> asyncpg.Record | None:
        rows = await query(settings, "orders",
                           "SELECT status, reason FROM orders WHERE order_id = $1", order_id)
        return rows[0] if rows else None

    return await eventually(probe, lambda r: r is not None and r["status"] != "PENDING",
                            timeout_s=30, what=f"order {order_id} terminal")


async def fetchval(settings: Settings, service: str, sql: str, *args: object) -> object:
    rows = await query(settings, service, sql, *args)
    return rows[0][0] if rows else None


async def settled(settings: Settings, service: str, sql: str, order_id: str, want: object) -> None:
    await eventually(lambda: fetchval(settings, service, sql, order_id), lambda v: v == want,
                     timeout_s=30, what=f"{service}: {sql} == {want}")


RESERVATION = "SELECT status FROM reservations WHERE order_id = $1"
PSP = "SELECT status FROM psp_charges WHERE idempotency_key = $1"


async def test_successful_order_is_confirmed_charged_and_sold(stack: Stack) -> None:
    oid = await place(stack.settings, order())
    assert (await terminal(stack.settings, oid))["status"] == "CONFIRMED"
    await settled(stack.settings, "inventory", RESERVATION, oid, "SOLD")
    assert await fetchval(stack.settings, "payments", PSP, oid) == "CAPTURED"


async def test_out_of_stock_is_cancelled_without_charge(stack: Stack) -> None:
    oid = await place(stack.settings, order(sku="SKU-SOLDOUT", qty=1))
    row = await terminal(stack.settings, oid)
    assert (row["status"], row["reason"]) == ("CANCELLED", "out of stock: SKU-SOLDOUT")
    await settled(stack.settings, "payments", PSP, oid, "VOIDED")  # the cancel blocks any charge


async def test_declined_payment_cancels_and_releases_stock(stack: Stack) -> None:
    oid = await place(stack.settings, order(token="tok_decline"))
    row = await terminal(stack.settings, oid)
    assert row["status"] == "CANCELLED" and row["reason"].startswith("payment failed")
    await settled(stack.settings, "inventory", RESERVATION, oid, "RELEASED")


async def test_hung_gateway_times_out_and_is_compensated(stack: Stack) -> None:
    oid = await place(stack.settings, order(token="tok_timeout"))
    row = await terminal(stack.settings, oid)
    assert (row["status"], row["reason"]) == ("CANCELLED", "saga timed out")
    await settled(stack.settings, "inventory", RESERVATION, oid, "RELEASED")
    await settled(stack.settings, "payments", PSP, oid, "VOIDED")


async def test_http_intake_accepts_valid_and_names_the_bad_field(stack: Stack) -> None:
    url = stack.web_url("orders-0") + "/orders/"
    good = {"customer_id": "web", "payment_token": "tok_visa",
            "lines": [{"sku": "SKU-0004", "quantity": 1, "unit_price_cents": 1250}]}
    bad = {**good, "lines": [{"sku": "SKU-0004", "quantity": -1, "unit_price_cents": 1}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=good) as accepted:
            assert accepted.status == 202
            oid = (await accepted.json())["order_id"]
        async with http.post(url, json=bad) as refused:
            assert refused.status == 422
            fields = [f["field"] for f in (await refused.json())["fields"]]
            assert fields == ["lines.0.quantity"]
        assert (await terminal(stack.settings, oid))["status"] == "CONFIRMED"
        async with http.get(stack.web_url("orders-0") + f"/orders/{oid}/") as got:
            assert (await got.json())["status"] == "CONFIRMED"


async def test_all_invariants_hold_after_the_flows(stack: Stack) -> None:
    """Its own flows too, so it audits something when it runs alone."""
    ids = [await place(stack.settings, order()), await place(stack.settings, order("tok_decline")),
           await place(stack.settings, order(sku="SKU-SOLDOUT", qty=1))]
    assert [(await terminal(stack.settings, oid))["status"] for oid in ids] == [
        "CONFIRMED", "CANCELLED", "CANCELLED"]

    async def clean() -> object:
        return await audit(stack.settings, settle_grace_s=0)

    report = await eventually(clean, lambda r: r.ok and r.in_flight == 0, timeout_s=30,
                              what="clean audit")
    assert report.counts["pending"] == 0 and report.counts["orders"] >= len(ids)
