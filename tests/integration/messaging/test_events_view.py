"""``GET /events/{order_id}/``: each database service's outbox record of one order.

Against a running stack of the three database services (no tracker: the view
must not need it), real PostgreSQL and the broker. The console's timeline
reads this, because the tracker no longer reads the services' topics.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.messaging.events_view import read_events
from agents.orders.intake import LineRequest, PlaceOrderRequest
from agents.topology import SERVICES
from config import Settings
from config.settings import DATABASE_SERVICES
from stores import messaging
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration
EMITS = {"orders": ["OrderCreated", "OrderConfirmed"],
         "inventory": ["InventoryReserved", "InventoryCommitted"],
         "payments": ["PaymentCompleted"]}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("events"))
    async with running_stack(settings, services=DATABASE_SERVICES) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def place(stack: Stack) -> str:
    sku = REGULAR_SKUS[0]
    line = LineRequest(sku=sku, quantity=1, unit_price_cents=price_of(sku))
    request = PlaceOrderRequest(order_id=uuid.uuid4(), customer_id="events",
                                payment_token="tok_visa", lines=[line])
    async with OrderClient(stack.settings) as client:
        await client.place(request)
    return str(request.order_id)


def all_sent(emits: list[str]) -> Any:
    def ok(result: tuple[int, Any]) -> bool:
        status, body = result
        events = body.get("events", [])
        return (status == 200 and [e["event"] for e in events] == emits
                and all(e["sent_at"] for e in events))
    return ok


@dataclass
class Confirmed:
    order_id: str
    events: dict[str, list[dict[str, Any]]]
    """Each service's answer for the order."""


@pytest.fixture(scope="module")
async def confirmed(stack: Stack, http: aiohttp.ClientSession) -> Confirmed:
    """Two confirmed orders; every service's events of the first, once all are published."""
    first, _second = await place(stack), await place(stack)
    found = Confirmed(first, {})
    for service, emits in EMITS.items():
        url = f"{stack.web_url(service + '-0')}/events/{first}/"
        _, body = await eventually(lambda u=url: get(http, u), all_sent(emits), 60,
                                   f"{service}'s events of the order, published")
        assert body["order_id"] == first and body["service"] == service
        found.events[service] = body["events"]
    return found


async def test_each_service_shows_the_events_it_emitted_for_the_order_only(
    stack: Stack, confirmed: Confirmed
) -> None:
    for service, events in confirmed.events.items():
        (output,) = SERVICES[service].outputs
        for found in events:
            assert found["service"] == service and found["topic"] == stack.settings.topic(output)
            assert uuid.UUID(found["event_id"]) and found["written_at"] and not found["parked"]
    ids = [e["event_id"] for events in confirmed.events.values() for e in events]
    assert len(set(ids)) == len(ids) == 5
    [others] = await query(stack.settings, "orders",
                           "SELECT count(*) AS n FROM outbox WHERE key <> $1",
                           confirmed.order_id.encode())
    assert others["n"] >= 2  # the second order's rows are there, and were not shown


async def test_the_time_of_an_event_is_its_producer_clock_in_saga_order(
    confirmed: Confirmed,
) -> None:
    at = {e["event"]: e["at_ms"] for events in confirmed.events.values() for e in events}
    assert 0 < at["OrderCreated"] <= at["InventoryReserved"] <= at["PaymentCompleted"] \
        <= at["OrderConfirmed"] <= at["InventoryCommitted"]


async def test_any_spelling_of_the_id_answers_for_the_canonical_one(
    stack: Stack, http: aiohttp.ClientSession, confirmed: Confirmed
) -> None:
    upper = confirmed.order_id.upper()
    status, body = await get(http, f"{stack.web_url('orders-0')}/events/{upper}/")
    assert status == 200 and body["order_id"] == confirmed.order_id
    assert body["events"] == confirmed.events["orders"]


async def test_a_bad_id_is_refused_naming_the_field_and_an_unknown_one_has_no_events(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    base = stack.web_url("inventory-0")
    status, body = await get(http, f"{base}/events/not-a-uuid/")
    assert status == 400 and body["error"].startswith("order_id:")
    unknown = str(uuid.uuid4())
    assert await get(http, f"{base}/events/{unknown}/") == (
        200, {"service": "inventory", "order_id": unknown, "events": []})


async def test_the_outbox_is_read_by_key_through_an_index(stack: Stack) -> None:
    for service in DATABASE_SERVICES:
        rows = await query(stack.settings, service,
                           "SELECT indexdef FROM pg_indexes WHERE indexname = 'outbox_key'")
        assert [r["indexdef"] for r in rows] == [
            "CREATE INDEX outbox_key ON public.outbox USING btree (key)"], service


async def test_of_key_returns_one_keys_rows_oldest_first_up_to_the_limit(
    pools: dict[str, asyncpg.Pool],
) -> None:
    mine, other = uuid.uuid4().bytes, uuid.uuid4().bytes
    async with pools["payments"].acquire() as conn:
        staged = await messaging.enqueue(conn, [
            messaging.OutboxMessage("t", mine, b"1"), messaging.OutboxMessage("t", other, b"x"),
            messaging.OutboxMessage("t", mine, b"2"), messaging.OutboxMessage("t", mine, b"3")],
            notify=False)
        assert [r["value"] for r in await messaging.of_key(conn, mine, 10)] == [b"1", b"2", b"3"]
        assert [r["id"] for r in await messaging.of_key(conn, mine, 2)] == [
            staged[0].id, staged[2].id]


async def test_a_database_that_cannot_be_read_answers_503_not_an_error_page(
    db_settings: Settings, pools: dict[str, asyncpg.Pool],
) -> None:
    """Not started, closed (shutting down), or gone: each is a 503 that says why."""
    oid = str(uuid.uuid4())

    def not_started() -> asyncpg.Pool:
        raise RuntimeError("orders runtime is not started")

    body, status = await read_events("orders", not_started, oid)
    assert (status, body["error"]) == (503, "database not available: RuntimeError")

    closed = await asyncpg.create_pool(db_settings.dsn("orders"), min_size=1, max_size=1)
    await closed.close()
    body, status = await read_events("orders", lambda: closed, oid)
    assert (status, body["error"]) == (503, "database not available: InterfaceError")

    body, status = await read_events("orders", lambda: closed, "not-a-uuid")
    assert (status, body["error"]) == (400, "order_id: not a UUID")
