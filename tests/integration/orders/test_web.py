"""The orders web views over real HTTP, against the real orders database.

The views run on the aiohttp application Faust serves them from, in a Faust
app that is never started: every request here is answered before anything is
sent to Kafka (placing an accepted order over HTTP is covered, with a broker,
by tests/integration/test_edge.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.messaging.consumer import ServiceConsumer
from agents.orders import step as orders
from agents.orders.web import add_order_views
from agents.topology import ORDER_EVENTS, ORDERS
from config import Settings
from schemas.oms_pb2 import PlaceOrder
from tests.conftest import new_order_id
from tests.helpers import envelope, lines, step

pytestmark = pytest.mark.integration
GOOD = {"customer_id": "web", "payment_token": "tok_visa",
        "lines": [{"sku": "SKU-0001", "quantity": 1}]}


@pytest.fixture(scope="module")
async def client(pools: dict[str, asyncpg.Pool], db_settings: Settings
                 ) -> AsyncIterator[TestClient]:
    app = faust.App(f"oms-test-web-{uuid.uuid4().hex[:8]}", broker="memory://",
                    store="memory://")
    runtime = ServiceConsumer(app, db_settings, "orders", lambda pool: orders.handle,
                              ORDER_EVENTS, ORDERS.handles)
    add_order_views(app, runtime, db_settings)
    timeout = aiohttp.ClientTimeout(total=10)
    async with TestClient(TestServer(app.web.web_app), timeout=timeout) as http:
        yield http
    if runtime._pool is not None:  # noqa: SLF001 - opened by the first GET
        await runtime.pool.close()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/octet-stream", "multipart/form-data"])
async def test_a_body_that_is_not_declared_json_gets_415(client: TestClient,
                                                         content_type: str) -> None:
    resp = await client.post("/orders/", data=json.dumps(GOOD).encode(),
                             headers={"Content-Type": content_type})
    assert resp.status == 415
    body = await resp.json()
    assert body["error"] == "unsupported media type" and body["content_type"] == content_type
    assert body["expected"] == "application/json"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "body is empty"),
        (b"  \n", "body is empty"),
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe\x00", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object, not an array"),
        (b"42", "body must be a JSON object, not a number"),
        (b"null", "body must be a JSON object, not null"),
        (b'"order"', "body must be a JSON object, not a string"),
    ],
)
async def test_a_body_that_is_not_a_json_object_gets_400_saying_so(
    client: TestClient, raw: bytes, problem: str
) -> None:
    resp = await client.post("/orders/", data=raw,
                             headers={"Content-Type": "application/json; charset=utf-8"})
    text = await resp.text()
    assert resp.status == 400, text
    assert (await resp.json())["error"] == problem
    assert "PlaceOrderRequest" not in text  # no internal class names


async def test_an_invalid_field_gets_422_naming_it(client: TestClient) -> None:
    bad = {**GOOD, "lines": [{"sku": "SKU-0001", "quantity": 0}], "payment_token": "x" * 65}
    resp = await client.post("/orders/", json=bad)
    assert resp.status == 422
    body = await resp.json()
    assert {f["field"] for f in body["fields"]} == {"lines.0.quantity", "payment_token"}
    assert "x" * 65 not in await resp.text()


async def test_a_body_too_large_gets_413(client: TestClient) -> None:
    resp = await client.post("/orders/", data=b"{" + b" " * 70_000 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413


async def test_an_order_id_that_is_not_a_uuid_gets_400(client: TestClient) -> None:
    resp = await client.get("/orders/nope/")
    assert resp.status == 400 and "order_id" in (await resp.json())["error"]


async def test_an_unknown_order_gets_404(client: TestClient) -> None:
    assert (await client.get(f"/orders/{new_order_id()}/")).status == 404
@pytest.mark.parametrize(("token", "shown"), [("tok_live_4242424242424242", "****4242"),
                                              ("tok_visa", "****"), ("Zq9", "****")])
async def test_the_order_view_never_shows_the_payment_token(
    client: TestClient, pools: dict[str, asyncpg.Pool], token: str, shown: str
) -> None:
    oid = new_order_id()
    body = PlaceOrder(customer_id="c", payment_token=token, lines=lines(("SKU-0001", 1)))
    await step(pools["orders"], orders.handle, envelope(oid, body))
    resp = await client.get(f"/orders/{oid}/")
    assert resp.status == 200
    assert token not in await resp.text()
    assert (await resp.json())["payment_token"] == shown
