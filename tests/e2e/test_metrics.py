"""The ``oms_`` metrics move as the saga runs: scrape ``/metrics`` of the running workers.

Each worker is a fresh process, so every counter starts at zero and the
values below are exactly what this module's orders caused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.orders.intake import LineRequest, PlaceOrderRequest
from agents.topology import SERVICES
from config import Settings
from schemas.codec import decode
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.e2e

CONFIRMED, DECLINED = 4, 2
PLACED = CONFIRMED + DECLINED
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
async def stack(broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        tmp_path_factory.mktemp("metrics"), kafka_bootstrap=broker.bootstrap,
        topic_prefix="metrics.",
    )
    async with running_stack(settings, fresh=True) as running:
        yield running


@pytest.fixture(scope="module")
async def settled(stack: Stack) -> Stack:
    """The stack after CONFIRMED good orders and DECLINED declined ones have finished."""
    tokens = ["tok_visa"] * CONFIRMED + [stack.settings.gateway_decline_token] * DECLINED
    line = LineRequest(sku="SKU-0005", quantity=1, unit_price_cents=1500)
    requests = [PlaceOrderRequest(customer_id="c-metrics", lines=[line], payment_token=t)
                for t in tokens]
    async with OrderClient(stack.settings) as client:
        await asyncio.gather(*(client.place(r) for r in requests))
    left = await wait_terminal(stack.settings, [str(r.order_id) for r in requests], 60)
    assert left == 0, f"{left} orders still pending"
    return stack


async def scrape(stack: Stack, service: str) -> Samples:
    """Every sample of a worker's ``/metrics``, keyed by name and labels."""
    url = stack.web_url(f"{service}-0") + "/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def settles(stack: Stack, worker: str, name: str, want: float, **labels: str) -> None:
    """Wait until a (periodically sampled) metric of ``worker`` shows ``want``."""
    await eventually(lambda: scrape(stack, worker), lambda s: value(s, name, **labels) == want,
                     timeout_s=20, what=f"{worker} {name}{labels} == {want}")


async def test_orders_counts_each_committed_order_once(settled: Stack) -> None:
    samples = await scrape(settled, "orders")
    assert value(samples, "oms_orders_placed_total") == PLACED
    assert value(samples, "oms_handler_seconds_count",
                 service="orders", event_type="PlaceOrder") == PLACED
    assert value(samples, "oms_handler_seconds_count",
                 service="orders", event_type="PaymentFailed") == DECLINED


def finished_sagas(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "oms_saga_outcomes_total")


async def test_tracker_records_outcomes_and_end_to_end_time(settled: Stack) -> None:
    # the orders database is terminal before the tracker has read the last events
    samples = await eventually(lambda: scrape(settled, "orchestrator"),
                               lambda s: finished_sagas(s) >= PLACED, timeout_s=20,
                               what="tracker saw every saga finish")
    assert finished_sagas(samples) == PLACED
    assert value(samples, "oms_saga_outcomes_total", outcome="confirmed", reason="none") \
        == CONFIRMED
    assert value(samples, "oms_saga_outcomes_total", outcome="cancelled",
                 reason="payment failed") == DECLINED
    assert value(samples, "oms_order_e2e_seconds_count", outcome="confirmed") == CONFIRMED
    assert value(samples, "oms_order_e2e_seconds_count", outcome="cancelled") == DECLINED
    everything = value(samples, "oms_order_e2e_seconds_bucket", outcome="confirmed", le="30.0")
    assert everything == CONFIRMED
    assert (value(samples, "oms_order_e2e_seconds_sum", outcome="confirmed") or 0) > 0


async def test_payments_counts_gateway_calls_by_result(settled: Stack) -> None:
    samples = await scrape(settled, "payments")
    assert value(samples, "oms_gateway_calls_total", operation="charge", result="approved") \
        == CONFIRMED
    assert value(samples, "oms_gateway_calls_total", operation="charge", result="declined") \
        == DECLINED
    assert value(samples, "oms_handler_seconds_count",
                 service="payments", event_type="InventoryReserved") == PLACED


@asynccontextmanager
async def unmarkable_row(settings: Settings, service: str, event_type: str
                         ) -> AsyncIterator[int]:
    """A new copy of one of the service's ``event_type`` outbox rows, held unsent.

    The relay publishes it (a duplicate the consumers' inboxes absorb) but cannot
    mark it sent while this holds its row lock, so it stays in the backlog until
    the context exits. A relay quick enough to mark it before the lock is taken
    gets another copy.
    """
    conn = await asyncpg.connect(settings.dsn(service))
    try:
        rows = await conn.fetch("SELECT id, value FROM outbox ORDER BY id")
        [source, *_] = [r["id"] for r in rows if decode(r["value"]).type == event_type]
        for _ in range(5):
            row_id = await conn.fetchval(
                "INSERT INTO outbox (topic, key, value, headers) SELECT topic, key, value,"
                " headers FROM outbox WHERE id = $1 RETURNING id", source)
            held = conn.transaction()
            await held.start()
            if await conn.fetchval("SELECT sent_at IS NULL FROM outbox WHERE id = $1"
                                   " FOR UPDATE", row_id):
                break
            await held.rollback()
        else:
            raise AssertionError(f"{service}: the relay marked every copy before the lock")
        try:
            yield row_id
        finally:
            await held.rollback()  # releases the lock: the relay's mark goes through
    finally:
        await conn.close()


@pytest.mark.parametrize(("service", "event_type"), [
    ("orders", "OrderConfirmed"), ("inventory", "InventoryCommitted"),
    ("payments", "PaymentCompleted")])
async def test_outbox_backlog_counts_unpublished_rows_and_drains(
    settled: Stack, service: str, event_type: str
) -> None:
    """0 alone would also be what a gauge nobody sets shows: make it count a row first."""
    await settles(settled, service, "oms_outbox_backlog", 0, service=service)
    async with unmarkable_row(settled.settings, service, event_type):
        await settles(settled, service, "oms_outbox_backlog", 1, service=service)
    await settles(settled, service, "oms_outbox_backlog", 0, service=service)
    published = value(await scrape(settled, service), "oms_outbox_published_total",
                      service=service)
    [rows] = await query(settled.settings, service, "SELECT count(*) FROM outbox")
    assert published == rows[0]  # every row published once, the held one included


async def test_consumer_lag_is_reported_per_owned_partition_and_drains(settled: Stack) -> None:
    prefix = settled.settings.topic_prefix
    sources = {name: set(service.sources) for name, service in SERVICES.items()}
    for service, topics in sources.items():

        async def lags(service: str = service) -> dict[tuple[str, str], float]:
            samples = await scrape(settled, service)
            return {(dict(labels)["topic"], dict(labels)["partition"]): v
                    for (name, labels), v in samples.items() if name == "oms_consumer_lag"}

        want = {(prefix + t, str(p)) for t in topics for p in range(settled.settings.partitions)}
        await eventually(lags, lambda got, want=want: set(got) == want
                         and all(v == 0 for v in got.values()),
                         timeout_s=20, what=f"{service} lag reported for {want} and 0")
    # lag 0 is highwater == committed; faust's own gauge shows what was committed is real
    faust_prefix = settled.settings.app_id("orders").replace("-", "_").replace(".", "_")
    samples = await scrape(settled, "orders")
    committed = sum(v for (name, labels), v in samples.items()
                    if name == f"{faust_prefix}_topic_partition_offset_commited"
                    and dict(labels)["topic"] == prefix + "order-commands")
    assert committed == PLACED


async def test_nothing_was_dead_lettered(settled: Stack) -> None:
    for service in ("orders", "inventory", "payments", "orchestrator"):
        samples = await scrape(settled, service)
        assert not any(name == "oms_dead_letters_total" and v > 0
                       for (name, _), v in samples.items())
