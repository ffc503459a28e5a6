"""A batch with one poison event: the rest commit, only the bad one is dead-lettered.

Runs ``ServiceConsumer.process_batch`` of the orders service against real
PostgreSQL. The dead-letter sink is a recording stand-in with the same
``publish`` method (publishing to Kafka is covered by test_dead_letters.py);
what is checked here is the runtime's batching, splitting and inbox.
"""

from __future__ import annotations

import time

import asyncpg
import pytest
from faust.types.tuples import Message
from prometheus_client import REGISTRY

from agents.messaging.app import create_app
from agents.messaging.consumer import ServiceConsumer
from agents.orders import step as orders
from agents.topology import ORDER_EVENTS, ORDERS
from config import Settings
from schemas.codec import encode
from schemas.oms_pb2 import PlaceOrder
from tests.conftest import new_order_id
from tests.helpers import envelope, lines, outbox_types

pytestmark = pytest.mark.integration


class RecordingDeadLetters:
    def __init__(self) -> None:
        self.parked: list[tuple[bytes | None, str]] = []

    async def publish(self, message: Message, reason: str) -> None:
        self.parked.append((message.value, reason))


def kafka_message(value: bytes, offset: int) -> Message:
    return Message("oms.order-commands", 0, offset, time.time(), 0, [], b"k", value, None)


def place(order_id: str, quantity: int = 1) -> bytes:
    body = PlaceOrder(customer_id="c", payment_token="tok_visa", lines=lines(("SKU-0001", 1)))
    body.lines[0].quantity = quantity
    return encode(envelope(order_id, body))


@pytest.fixture(scope="module")  # one Faust app per process: its Prometheus metrics are global
async def runtime(pools: dict[str, asyncpg.Pool], db_settings: Settings) -> ServiceConsumer:
    app = create_app("orders", db_settings)
    runtime = ServiceConsumer(app, db_settings, "orders", lambda pool: orders.handle,
                              ORDER_EVENTS, ORDERS.handles)
    return runtime


@pytest.fixture(autouse=True)
def fresh_dead_letters(runtime: ServiceConsumer) -> None:
    runtime.dead_letters = RecordingDeadLetters()  # type: ignore[assignment]


async def test_a_poison_event_is_isolated_and_the_rest_of_its_batch_commits(
    runtime: ServiceConsumer, pools: dict[str, asyncpg.Pool]
) -> None:
    good, other, poison = new_order_id(), new_order_id(), new_order_id()
    first = place(good)
    batch = [first, place(poison, quantity=-2), b"\xff not protobuf", place(other), first]
    await runtime.process_batch([kafka_message(v, i) for i, v in enumerate(batch)])

    parked = runtime.dead_letters.parked  # type: ignore[attr-defined]
    assert [reason.split(":")[0] for _, reason in parked] == ["undecodable", "invalid PlaceOrder"]
    assert "lines[0].quantity" in parked[1][1] and parked[1][0] == batch[1]
    statuses = await pools["orders"].fetch(
        "SELECT order_id::text AS id FROM orders WHERE order_id = ANY($1::uuid[])",
        [good, other, poison])
    assert {r["id"] for r in statuses} == {good, other}
    assert await outbox_types(pools["orders"], good) == ["OrderCreated"]  # once, not twice


async def test_a_redelivered_batch_changes_nothing(
    runtime: ServiceConsumer, pools: dict[str, asyncpg.Pool]
) -> None:
    oid = new_order_id()
    batch = [kafka_message(place(oid), 0)]
    await runtime.process_batch(batch)
    await runtime.process_batch(batch)
    assert await outbox_types(pools["orders"], oid) == ["OrderCreated"]
    assert runtime.dead_letters.parked == []  # type: ignore[attr-defined]


async def test_a_batch_after_the_kept_connection_was_killed_commits(
    runtime: ServiceConsumer, pools: dict[str, asyncpg.Pool]
) -> None:
    """The runtime keeps one connection between batches; a killed backend costs a retry."""
    await runtime.process_batch([kafka_message(place(new_order_id()), 0)])
    kept = runtime._step_conn
    assert kept is not None
    killer = pools["orders"]
    await killer.execute("SELECT pg_terminate_backend($1)", kept.get_server_pid())
    retried = step_retries()

    oid = new_order_id()
    await runtime.process_batch([kafka_message(place(oid), 1)])
    assert await outbox_types(pools["orders"], oid) == ["OrderCreated"]
    assert step_retries() == retried + 1  # one retry on a fresh connection, then committed
    assert runtime.dead_letters.parked == []  # type: ignore[attr-defined]


def step_retries() -> float:
    """Transient failures the orders runtime of this process has retried (any error type)."""
    return sum(s.value for metric in REGISTRY.collect() if metric.name == "oms_step_retries"
               for s in metric.samples
               if s.name == "oms_step_retries_total" and s.labels["service"] == "orders")
