"""A batch with one poison event: the rest commit, only the bad one is dead-lettered.

Runs ``ServiceConsumer.process_batch`` of the orders service against real
PostgreSQL. The dead-letter sink is a recording stand-in with the same
``publish`` method (publishing to Kafka is covered by test_dead_letters.py);
what is checked here is the runtime's batching, splitting and inbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import asyncpg
import pytest
from faust.types.tuples import Message
from prometheus_client import REGISTRY

from agents.messaging.app import create_app
from agents.messaging.consumer import ServiceConsumer
from agents.orders import step as orders
from agents.topology import ORDER_EVENTS, ORDERS
from config import Settings
from schemas.codec import DecodeError, decode, encode
from schemas.oms_pb2 import PlaceOrder
from stores.db import prepare_database
from tests.conftest import drop_test_databases, make_settings, new_order_id
from tests.helpers import envelope, eventually, lines, outbox_types, query

pytestmark = pytest.mark.integration
T = TypeVar("T")


class RecordingDeadLetters:
    """Records what :class:`~agents.messaging.dead_letters.DeadLetters` would publish."""

    def __init__(self) -> None:
        self.parked: list[tuple[bytes | None, str]] = []
        self.failing = False

    async def publish(self, message: Message, reason: str) -> None:
        self.parked.append((message.value, reason))


def kafka_message(value: bytes, offset: int, key: bytes | None = None) -> Message:
    """A record as Faust hands it over; keyed by its order id unless ``key`` is given."""
    if key is None:
        try:
            key = decode(value).order_id.encode()
        except DecodeError:
            key = b"k"
    return Message("oms.order-commands", 0, offset, time.time(), 0, [], key, value, None)


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


async def test_ids_in_upper_case_are_applied_under_their_canonical_form(
    runtime: ServiceConsumer, pools: dict[str, asyncpg.Pool]
) -> None:
    """An upper-case order and event id is one order, not a duplicate nor a drop."""
    oid = new_order_id()
    env = envelope(oid, PlaceOrder(customer_id="c", payment_token="tok_visa",
                                   lines=lines(("SKU-0001", 1))))
    env.order_id, env.event_id = oid.upper(), env.event_id.upper()
    await runtime.process_batch([kafka_message(encode(env), 0, key=oid.encode())])
    assert runtime.dead_letters.parked == []  # type: ignore[attr-defined]
    assert await outbox_types(pools["orders"], oid) == ["OrderCreated"]
    [staged] = await pools["orders"].fetch("SELECT value FROM outbox WHERE key = $1",
                                           oid.encode())
    assert decode(staged["value"]).order_id == oid


async def test_a_record_whose_key_is_not_its_canonical_order_id_is_dead_lettered(
    runtime: ServiceConsumer, pools: dict[str, asyncpg.Pool]
) -> None:
    """Its key chose another partition than the order's other events: refused, with why."""
    oid = new_order_id()
    await runtime.process_batch([kafka_message(place(oid), 0, key=oid.upper().encode())])
    [(value, reason)] = runtime.dead_letters.parked  # type: ignore[attr-defined]
    assert decode(value).order_id == oid
    assert reason.startswith("wrong key: ") and f"send key = order_id ({oid})" in reason
    assert await outbox_types(pools["orders"], oid) == []


@pytest.fixture(scope="module")
async def own_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """An orders database of its own, for faults that would disturb the shared one."""
    settings = make_settings(tmp_path_factory.mktemp("own"), kafka_bootstrap="127.0.0.1:1",
                             step_stuck_after_s=0.5)
    await prepare_database(settings, "orders")
    yield settings
    await drop_test_databases(settings)


async def set_read_only(settings: Settings, on: bool) -> None:
    """``default_transaction_read_only`` for the database, as after a failover to a standby.

    Connections opened before keep their default, so switching it on also ends them.
    """
    name = settings.database_name("orders")
    admin = await asyncpg.connect(settings.database_dsn("postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                            + ("on" if on else "off"))
        if on:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = $1", name)
    finally:
        await admin.close()


def retries(error: str) -> float:
    value = REGISTRY.get_sample_value("oms_step_retries_total",
                                      {"service": "orders", "error": error})
    return value or 0.0


async def test_a_read_only_database_is_retried_never_dead_lettered(
    runtime: ServiceConsumer, own_db: Settings
) -> None:
    """A failing dependency is retried with backoff; only bad input becomes a dead letter."""
    consumer = ServiceConsumer(runtime.app, own_db, "orders", lambda pool: orders.handle,
                               ORDER_EVENTS, ORDERS.handles)
    parked = RecordingDeadLetters()
    consumer.dead_letters = parked  # type: ignore[assignment]
    await consumer.process_batch([kafka_message(place(new_order_id()), 0)])  # pool open
    before = retries("ReadOnlySQLTransactionError")
    oid = new_order_id()
    await set_read_only(own_db, True)
    stuck = asyncio.create_task(consumer.process_batch([kafka_message(place(oid), 1)]))
    try:
        try:
            await eventually(lambda: _now(retries("ReadOnlySQLTransactionError")),
                             lambda n: n >= before + 2, 10, "retries counted")
            await eventually(lambda: _now(consumer.readiness()),
                             lambda checks: checks["step_not_stuck"] is False, 10, "not ready")
            assert not stuck.done() and parked.parked == []
        finally:
            await set_read_only(own_db, False)
        await asyncio.wait_for(stuck, 30)
        assert parked.parked == []
        rows = await query(own_db, "orders", "SELECT status FROM orders WHERE order_id = $1",
                           uuid.UUID(oid))
        assert [r["status"] for r in rows] == ["PENDING"]
        assert consumer.readiness()["step_not_stuck"] is True
    finally:
        stuck.cancel()
        consumer.pool.terminate()


async def _now(value: T) -> T:
    return value


def step_retries() -> float:
    """Transient failures the orders runtime of this process has retried (any error type)."""
    return sum(s.value for metric in REGISTRY.collect() if metric.name == "oms_step_retries"
               for s in metric.samples
               if s.name == "oms_step_retries_total" and s.labels["service"] == "orders")
