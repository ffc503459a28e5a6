"""Poison input goes to the dead-letter topic, complete, and never stalls a service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack, settings_env
from agents.messaging import redrive as deadletters
from agents.messaging.client import OrderClient
from agents.orders.intake import LineRequest, PlaceOrderRequest
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import InventoryReserved, OrderCreated, OrderLine, PlaceOrder
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually

pytestmark = pytest.mark.integration
READERS = {  # topic -> services that consume it
    "order-commands": ("orders", "orchestrator"),
    "order-events": ("inventory", "payments", "orchestrator"),
    "inventory-events": ("payments", "orders", "orchestrator"),
    "payment-events": ("orders", "orchestrator"),
}
REQUIRED = ("reason", "service", "topic", "partition", "offset")


@dataclass
class Sent:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    services: tuple[str, ...]


def mismatched(order_id: str) -> bytes:
    env = new_envelope(order_id, PlaceOrder(customer_id="c", payment_token="t"), producer="t")
    env.type = "OrderCreated"
    return encode(env)


def unknown_type(order_id: str) -> bytes:
    env = new_envelope(order_id, PlaceOrder(customer_id="c", payment_token="t"), producer="t")
    env.type = "Bogus"
    return encode(env)


def invalid(topic: str, order_id: str) -> tuple[bytes, str] | None:
    """A decodable event its consumer must refuse, and the service that refuses it."""
    line = OrderLine(sku=REGULAR_SKUS[0], quantity=-2, unit_price_cents=100)
    if topic == "order-commands":
        body = PlaceOrder(customer_id="c", lines=[line], payment_token="tok_visa")
        return encode(new_envelope(order_id, body, producer="t")), "orders"
    if topic == "order-events":
        body = OrderCreated(customer_id="c", lines=[line], payment_token="tok_visa")
        return encode(new_envelope(order_id, body, producer="t")), "inventory"
    if topic == "inventory-events":
        body = InventoryReserved(lines=[], amount_cents=-5, payment_token="tok_visa")
        return encode(new_envelope(order_id, body, producer="t")), "payments"
    return None


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(make_settings(tmp_path_factory.mktemp("dlq"))) as running:
        yield running


async def dead_letter_counts(stack: Stack) -> dict[str, float]:
    """``oms_dead_letters_total`` summed per service, from each worker's /metrics."""
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for service, names in stack.workers.items():
            async with http.get(stack.web_url(names[0]) + "/metrics") as resp:
                text = await resp.text()
            found = re.findall(rf'^oms_dead_letters_total{{[^}}]*service="{service}"[^}}]*}} (\S+)',
                               text, re.M)
            totals[service] = sum(float(x) for x in found)
    return totals


@pytest.fixture(scope="module")
async def poisoned(stack: Stack) -> tuple[list[Sent], dict[str, float]]:
    """Every kind of bad input on every input topic, each under its own order id."""
    before = await dead_letter_counts(stack)
    sent: list[Sent] = []
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap)
    await producer.start()
    try:
        for topic, readers in READERS.items():
            kinds: list[tuple[bytes, tuple[str, ...]]] = [
                (b"\xff\xfe not protobuf", readers), (b"", readers)]
            for make in (mismatched, unknown_type):
                kinds.append((make(str(uuid.uuid4())), readers))
            bad = invalid(topic, str(uuid.uuid4()))
            if bad:
                kinds.append((bad[0], (bad[1],)))
            for value, services in kinds:
                key = str(uuid.uuid4()).encode()
                meta = await producer.send_and_wait(stack.settings.topic(topic), value, key=key,
                                                    headers=[("x-test", b"kept")])
                sent.append(Sent(meta.topic, meta.partition, meta.offset, key, value, services))
    finally:
        await producer.stop()
    return sent, before


async def test_every_dead_letter_is_complete(
    stack: Stack, poisoned: tuple[list[Sent], dict[str, float]]
) -> None:
    sent, _ = poisoned
    expected = sum(len(s.services) for s in sent)
    letters = await eventually(
        lambda: deadletters.dead_letters(stack.settings, deadletters.Filters()),
        lambda found: len(found) >= expected, 60, "dead letters")
    index = {(x.service, x.source_topic, x.header("offset"), x.header("partition")): x
             for x in letters}
    for s in sent:
        for service in s.services:
            letter = index[(service, s.topic, str(s.offset), str(s.partition))]
            assert letter.value == s.value and letter.key == s.key
            assert ("x-test", b"kept") in letter.original_headers()
            assert all(letter.header(name) for name in REQUIRED), letter.headers


async def test_services_stay_up_and_process_later_orders(
    stack: Stack, poisoned: tuple[list[Sent], dict[str, float]]
) -> None:
    sent, before = poisoned
    sku = REGULAR_SKUS[1]
    async with OrderClient(stack.settings) as client:  # same keys, so the same partitions
        for s in sent:
            await client.place(PlaceOrderRequest(
                order_id=uuid.UUID(s.key.decode()), customer_id="dlq", payment_token="tok_visa",
                lines=[LineRequest(sku=sku, quantity=1, unit_price_cents=price_of(sku))]))
    ids = [s.key.decode() for s in sent]
    assert await wait_terminal(stack.settings, ids, 60) == 0
    async with aiohttp.ClientSession() as http:
        for names in stack.workers.values():
            for path in ("/health/", "/ready/"):
                async with http.get(stack.web_url(names[0]) + path) as resp:
                    assert resp.status == 200, (names[0], path, await resp.text())
    # each service counted every record it parked, once (the tracker may still be reading)
    wanted = {service: sum(1 for s in sent if service in s.services) for service in stack.workers}
    await eventually(lambda: dead_letter_counts(stack), lambda after: all(
        after[s] - before.get(s, 0) == n for s, n in wanted.items()), 30,
        f"dead letters counted per service: {wanted}")


async def test_redrive_reproduces_once_and_the_list_cli(stack: Stack) -> None:
    """A dead letter whose cause was fixed (here: a valid order) is re-driven exactly once."""
    order_id = str(uuid.uuid4())
    sku = REGULAR_SKUS[2]
    body = PlaceOrder(customer_id="redrive", payment_token="tok_visa",
                      lines=[OrderLine(sku=sku, quantity=1, unit_price_cents=price_of(sku))])
    value = encode(new_envelope(order_id, body, producer="t"))
    headers = [("x-trace", b"abc"), ("oms-dlq-reason", b"simulated: bug since fixed"),
               ("oms-dlq-service", b"orders"), ("oms-dlq-topic", b"oms.order-commands"),
               ("oms-dlq-partition", b"0"), ("oms-dlq-offset", b"0")]
    async with OrderClient(stack.settings) as client:
        await client._producer.send_and_wait(stack.settings.topic("dead-letters"), value,
                                             key=order_id.encode(), headers=headers)
    only = deadletters.Filters(reason_contains="simulated")
    listed = await cli(stack, "dead-letters", "list", "--reason-contains", "simulated")
    assert [x["key"] for x in listed] == [order_id]
    assert listed[0]["value_size"] == len(value) and listed[0]["service"] == "orders"
    dry = await deadletters.redrive(stack.settings, only, dry_run=True)
    assert len(dry) == 1 and await deadletters.redriven(stack.settings) == set()
    done = await deadletters.redrive(stack.settings, only)
    assert [x["key"] for x in done] == [order_id]
    assert await wait_terminal(stack.settings, [order_id], 30) == 0
    records = await deadletters.read_topic(stack.settings, stack.settings.topic("order-commands"))
    [again] = [r for r in records if r.key == order_id.encode()]
    assert again.value == value and list(again.headers) == [("x-trace", b"abc")]
    assert await deadletters.redrive(stack.settings, only) == []
    assert await deadletters.redrive(stack.settings, deadletters.Filters(service="orders",
                                     reason_contains="simulated", limit=5)) == []


async def cli(stack: Stack, *args: str) -> list[dict[str, object]]:
    env = {**os.environ, **settings_env(stack.settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]
