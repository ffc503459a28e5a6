"""The operators' web views on a running stack with two workers per service.

Every test leaves the stack whole (the one that stops the orders workers
starts them again), so each runs alone or in any order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack, wait_ready
from agents.messaging.client import OrderClient
from agents.orders.intake import LineRequest, PlaceOrderRequest
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import PlaceOrder
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration
TOKEN = "views-test-token"
SAGA_TIMEOUT_S = 10.0  # the stuck saga below is overdue this long after the tracker sees it


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("views"), admin_token=TOKEN,
                             saga_timeout_s=SAGA_TIMEOUT_S)
    async with running_stack(settings, workers_per_service=2) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def order(token: str = "tok_visa") -> PlaceOrderRequest:
    sku = REGULAR_SKUS[0]
    line = LineRequest(sku=sku, quantity=1, unit_price_cents=price_of(sku))
    return PlaceOrderRequest(order_id=uuid.uuid4(), customer_id="views", payment_token=token,
                             lines=[line])


async def place(stack: Stack, *requests: PlaceOrderRequest) -> list[str]:
    async with OrderClient(stack.settings) as client:
        for request in requests:
            await client.place(request)
    return [str(r.order_id) for r in requests]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


@pytest.fixture(scope="module")
async def finished(stack: Stack) -> list[str]:
    """Twelve orders, ten confirmed and two declined, all finished.

    Twelve, so that both tracker workers own some of them: the sagas spread
    over four partitions, two per worker; all on one worker's is a 1 in 2048 chance.
    """
    ids = await place(stack, *[order() for _ in range(10)], order("tok_decline"),
                      order("tok_decline"))
    assert await wait_terminal(stack.settings, ids, 60) == 0
    return ids


async def test_saga_by_order_id_answers_from_every_tracker_worker(
    stack: Stack, http: aiohttp.ClientSession, finished: list[str]
) -> None:
    for order_id in finished:
        for worker in stack.workers["orchestrator"]:
            status, saga = await eventually(
                lambda w=worker, o=order_id: get(http, f"{stack.web_url(w)}/sagas/{o}/"),
                lambda r: r[0] == 200 and r[1]["status"] != "RUNNING", 30, "saga routed")
            assert saga["order_id"] == order_id
            types = [step["type"] for step in saga["steps"]]
            assert types[0] == "PlaceOrder" and types[-1] in ("OrderConfirmed", "OrderCancelled")
            assert all(step["at"].startswith("20") for step in saga["steps"])
    statuses = {(await get(http, f"{stack.web_url('orchestrator-0')}/sagas/{o}/"))[1]["status"]
                for o in finished}
    assert statuses == {"CONFIRMED", "CANCELLED"}


async def test_counts_are_split_between_workers_and_add_up(
    stack: Stack, http: aiohttp.ClientSession, finished: list[str]
) -> None:
    """Each worker counts its own partitions' sagas; together they count every order once."""

    async def counts() -> tuple[list[dict[str, Any]], dict[str, int]]:
        bodies = [(await get(http, f"{stack.web_url(w)}/sagas/?scope=local"))[1]
                  for w in stack.workers["orchestrator"]]
        rows = await query(stack.settings, "orders", "SELECT status, count(*) FROM orders"
                           " WHERE status <> 'PENDING' GROUP BY 1")
        return bodies, {r[0]: int(r[1]) for r in rows}

    def agree(got: tuple[list[dict[str, Any]], dict[str, int]]) -> bool:
        bodies, ended = got
        return all(sum(b["counts"].get(status, 0) for b in bodies) == ended.get(status, 0)
                   for status in ("CONFIRMED", "CANCELLED"))

    # the tracker reads the last events after the orders database has them
    bodies, ended = await eventually(counts, agree, 30, "tracker counts = orders database")
    assert ended["CONFIRMED"] >= 10 and ended["CANCELLED"] >= 2
    assert all(b["scope"] == "this worker's partitions" for b in bodies)
    assert all(b["total"] == sum(b["counts"].values()) > 0 for b in bodies), bodies


async def test_in_flight_lists_a_saga_waiting_on_the_gateway(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    [waiting] = await place(stack, order(stack.settings.gateway_timeout_token))

    async def in_flight() -> list[str]:
        ids = []
        for worker in stack.workers["orchestrator"]:
            url = f"{stack.web_url(worker)}/sagas/in-flight/?limit=50&scope=local"
            _, body = await get(http, url)
            ids += [s["order_id"] for s in body["sagas"]]
        return ids

    await eventually(in_flight, lambda ids: waiting in ids, 20, "in-flight saga")
    status, body = await get(http, f"{stack.web_url('orchestrator-0')}/sagas/in-flight/?limit=x")
    assert status == 400


async def test_stock_lists_every_sku_and_one_sku(stack: Stack, http: aiohttp.ClientSession) -> None:
    base = stack.web_url("inventory-0")
    status, body = await get(http, f"{base}/stock/")
    assert status == 200
    skus = {row["sku"]: row for row in body["stock"]}
    assert set(REGULAR_SKUS) <= set(skus) and body["skus"] == len(skus)
    assert all(r["available"] + r["reserved"] + r["sold"] == r["total"] for r in skus.values())
    status, one = await get(http, f"{base}/stock/{REGULAR_SKUS[0]}/")
    assert status == 200 and one["sku"] == REGULAR_SKUS[0]
    assert (await get(http, f"{base}/stock/NOPE/"))[0] == 404


async def test_payment_and_order_by_id(
    stack: Stack, http: aiohttp.ClientSession, finished: list[str]
) -> None:
    status, payment = await get(http, f"{stack.web_url('payments-0')}/payments/{finished[0]}/")
    assert status == 200 and payment["status"] == "CHARGED"
    status, found = await get(http, f"{stack.web_url('orders-1')}/orders/{finished[0]}/")
    assert status == 200 and found["status"] == "CONFIRMED"


async def test_health_and_ready_say_why(stack: Stack, http: aiohttp.ClientSession) -> None:
    for names in stack.workers.values():
        for name in names:
            assert (await get(http, f"{stack.web_url(name)}/health/"))[1]["alive"] is True
            status, ready = await get(http, f"{stack.web_url(name)}/ready/")
            assert status == 200 and ready["not_ready"] == [] and ready["checks"]


async def test_mutating_endpoints_need_the_token(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    [order_id] = await place(stack, order(stack.settings.gateway_timeout_token))
    cancel = f"{stack.web_url('orders-0')}/orders/{order_id}/cancel/"
    redrive = f"{stack.web_url('orchestrator-0')}/dead-letters/redrive/"
    for url in (cancel, redrive):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.post(url, headers=headers, json={"dry_run": True}) as resp:
                assert resp.status == 401, (url, headers)
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(redrive, headers=good, json={"dry_run": True}) as resp:
        assert resp.status == 200 and (await resp.json())["dry_run"] is True
    async with http.post(cancel, headers=good) as resp:
        assert resp.status == 202
    status, found = await eventually(
        lambda: get(http, f"{stack.web_url('orders-0')}/orders/{order_id}/"),
        lambda r: r[0] == 200 and r[1]["status"] == "CANCELLED", 30, "operator cancel")
    assert found["reason"] == "cancelled by operator"


async def test_stuck_lists_a_saga_nobody_can_cancel(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """With the orders workers down, an overdue saga stays stuck; back up, it is cancelled.

    The event claims the order was placed in 1970: the deadline still counts
    from when the tracker first saw it, on the tracker's clock.
    """
    order_id = str(uuid.uuid4())
    skewed = new_envelope(order_id, PlaceOrder(customer_id="stuck"), producer="test",
                          placed_at_ms=1)  # on the topic only the tracker reads

    async def stuck() -> list[dict[str, Any]]:
        found = []
        for worker in stack.workers["orchestrator"]:
            url = f"{stack.web_url(worker)}/sagas/stuck/?scope=local"
            found += (await get(http, url))[1]["sagas"]
        return [s for s in found if s["order_id"] == order_id]

    for name in stack.workers["orders"]:
        await stack.supervisor.kill(name)
    try:
        async with OrderClient(stack.settings) as client:
            await client.send_raw(stack.settings.topic("saga-events"), order_id.encode(),
                                  encode(skewed))
        [mine] = await eventually(stuck, bool, SAGA_TIMEOUT_S + 15, "stuck saga")
        assert mine["status"] == "RUNNING" and mine["overdue_ms"] > 0
    finally:
        for name in stack.workers["orders"]:
            await stack.supervisor.restart(name)
        await wait_ready(stack, 90)
    # the tracker resends its CancelOrder until the order has ended: now it is applied
    await eventually(stuck, lambda s: s == [], 60, "the stuck saga cancelled")
