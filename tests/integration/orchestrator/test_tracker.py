"""The saga tracker on a running stack: its decisions against a real broker and real services.

One system for the module, with a short saga timeout so deadlines pass
within a test. Each test uses orders of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.ops.audit import audit
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import Envelope, OrderLine, PlaceOrder
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration

SAGA_TIMEOUT_S = 8.0
RETENTION_S = 1.0  # finished sagas lose their steps a second after they end


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("tracker"), saga_timeout_s=SAGA_TIMEOUT_S,
                             saga_retention_s=RETENTION_S)
    async with running_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def place_order(token: str, placed_at_ms: int | None = None) -> Envelope:
    sku = REGULAR_SKUS[0]
    body = PlaceOrder(customer_id="tracker", payment_token=token, currency="EUR",
                      lines=[OrderLine(sku=sku, quantity=1, unit_price_cents=price_of(sku))])
    return new_envelope(str(uuid.uuid4()), body, producer="client", placed_at_ms=placed_at_ms)


async def send(stack: Stack, *envelopes: Envelope) -> None:
    async with OrderClient(stack.settings) as client:
        for envelope in envelopes:
            await client.send(envelope)


async def saga(stack: Stack, http: aiohttp.ClientSession, order_id: str) -> dict[str, Any]:
    url = f"{stack.web_url('orchestrator-0')}/sagas/{order_id}/"
    async with http.get(url) as resp:
        return {"http_status": resp.status, **await resp.json()}


async def order(stack: Stack, order_id: str) -> dict[str, Any]:
    rows = await query(stack.settings, "orders",
                       "SELECT status, reason FROM orders WHERE order_id = $1", order_id)
    return dict(rows[0]) if rows else {}


async def test_deadlines_count_on_the_trackers_clock_not_the_clients(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Two stalled orders from clients whose clocks are an hour behind and a day ahead."""
    now = int(time.time() * 1000)
    behind = place_order(stack.settings.gateway_timeout_token, placed_at_ms=now - 3_600_000)
    ahead = place_order(stack.settings.gateway_timeout_token, placed_at_ms=now + 86_400_000)
    await send(stack, behind, ahead)
    timeout_ms = int(SAGA_TIMEOUT_S * 1000)

    seen = await eventually(lambda: saga(stack, http, behind.order_id),
                            lambda s: s["http_status"] == 200, 10, "the tracker sees the order")
    assert seen["deadline_ms"] >= now + timeout_ms  # not cancelled on arrival
    for late in (behind, ahead):
        cancelled = await eventually(lambda o=late.order_id: order(stack, o),
                                     lambda o: o.get("status") == "CANCELLED",
                                     SAGA_TIMEOUT_S + 20, "cancelled at the deadline")
        assert cancelled["reason"] == "saga timed out"


async def test_a_late_event_for_a_finished_saga_starts_no_new_one(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A client retries its PlaceOrder after the saga ended and the retention passed."""
    first = place_order("tok_visa")
    await send(stack, first)
    await eventually(lambda: saga(stack, http, first.order_id),
                     lambda s: s.get("status") == "CONFIRMED", 30, "the saga ended")
    await eventually(lambda: saga(stack, http, first.order_id),
                     lambda s: s["http_status"] == 404 or s.get("steps") == [], 30,
                     "the saga past its retention")
    retry = new_envelope(first.order_id, first.place_order, producer="client")
    await send(stack, retry)
    after = await eventually(
        lambda: saga(stack, http, first.order_id),
        lambda s: any(step["event_id"] == retry.event_id for step in s.get("steps", [])),
        10, "the tracker applied the retry")
    assert after["status"] == "CONFIRMED"
    assert (await order(stack, first.order_id))["status"] == "CONFIRMED"


async def test_the_audit_counts_a_stray_saga_inside_its_deadline_as_in_flight(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """An event only the tracker reads names an order nobody placed: its saga runs until
    its deadline cancels it."""
    stray = new_envelope(str(uuid.uuid4()), PlaceOrder(customer_id="stray"), producer="test")
    async with OrderClient(stack.settings) as client:
        await client.send_raw(stack.settings.topic("saga-events"), stray.order_id.encode(),
                              encode(stray))
    await eventually(lambda: saga(stack, http, stray.order_id),
                     lambda s: s.get("status") == "RUNNING", 10, "the stray saga")
    report = await audit(stack.settings, settle_grace_s=0.0,
                         tracker_urls=(stack.web_url("orchestrator-0"),))
    [tracker] = [i for i in report.invariants if i.name.startswith("tracker")]
    assert tracker.ok, tracker.violations
    assert tracker.in_flight >= 1
    cancelled = await eventually(lambda: order(stack, stray.order_id),
                                 lambda o: o.get("status") == "CANCELLED",
                                 SAGA_TIMEOUT_S + 20, "the stray order cancelled at its deadline")
    assert cancelled["reason"] == "saga timed out"
