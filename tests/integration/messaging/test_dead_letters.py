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
from agents.topology import SERVICES
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import InventoryReserved, OrderCreated, OrderLine, PlaceOrder
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration
READERS = {  # topic -> services that consume it
    topic: tuple(s.name for s in SERVICES.values() if topic in s.sources)
    for topic in ("order-commands", "order-events", "inventory-events", "payment-events")
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
            order_id = str(uuid.uuid4())
            bad = invalid(topic, order_id)  # keyed by its order id: refused for its content
            if bad:
                kinds.append((bad[0], (bad[1],)))
            for value, services in kinds:
                key = (order_id if bad and value == bad[0] else str(uuid.uuid4())).encode()
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


async def test_upper_case_ids_confirm_the_order_and_a_key_in_another_form_is_refused(
    stack: Stack
) -> None:
    """No input is dropped silently: ids are made canonical, or the record says what to send.

    The key picks the partition, so only ids inside the envelope can be made
    canonical; a key in another form is dead-lettered by every reader with the
    key to send instead.
    """
    sku = REGULAR_SKUS[3]
    body = PlaceOrder(customer_id="upper", payment_token="tok_visa",
                      lines=[OrderLine(sku=sku, quantity=1, unit_price_cents=price_of(sku))])
    upper, misrouted = str(uuid.uuid4()), str(uuid.uuid4())
    async with OrderClient(stack.settings) as client:
        for order_id, key in ((upper, upper), (misrouted, misrouted.upper())):
            env = new_envelope(order_id.upper(), body, producer="another-language")
            env.event_id = env.event_id.upper()
            await client.send_raw(stack.settings.topic("order-commands"), key.encode(),
                                  encode(env))
    assert await wait_terminal(stack.settings, [upper], 60) == 0
    rows = await query(stack.settings, "orders", "SELECT status FROM orders WHERE order_id = $1",
                       uuid.UUID(upper))
    assert [r["status"] for r in rows] == ["CONFIRMED"]
    letters = await eventually(
        lambda: deadletters.dead_letters(stack.settings, deadletters.Filters(
            reason_contains=f"send key = order_id ({misrouted})")),
        lambda found: len(found) >= 2, 60, "wrong-key dead letters")
    assert {x.service for x in letters} == {"orders", "orchestrator"}
    assert all(x.key == misrouted.upper().encode() for x in letters)
    assert await query(stack.settings, "orders", "SELECT 1 FROM orders WHERE order_id = $1",
                       uuid.UUID(misrouted)) == []


async def test_a_record_too_large_to_dead_letter_whole_is_truncated_and_later_orders_finish(
    stack: Stack
) -> None:
    """The producer accepted it, but the dead letter (it plus our headers) is too large.

    It must not be retried forever, stalling the partition for orders and the
    tracker: it is parked with a prefix of its value and says so.
    """
    order_id = str(uuid.uuid4())
    garbage = b"\xff\xfe not protobuf" + b"x" * 1_040_000
    sku = REGULAR_SKUS[4]
    async with OrderClient(stack.settings) as client:
        await client.send_raw(stack.settings.topic("order-commands"), order_id.encode(), garbage)
        await client.place(PlaceOrderRequest(  # same key, so behind it on the same partition
            order_id=uuid.UUID(order_id), customer_id="after-a-huge-one",
            payment_token="tok_visa",
            lines=[LineRequest(sku=sku, quantity=1, unit_price_cents=price_of(sku))]))
    assert await wait_terminal(stack.settings, [order_id], 60) == 0
    letters = await eventually(
        lambda: deadletters.dead_letters(stack.settings, deadletters.Filters(
            topic="order-commands", reason_contains="undecodable")),
        lambda found: len([x for x in found if x.key == order_id.encode()]) >= 2, 60,
        "truncated dead letters")
    mine = [x for x in letters if x.key == order_id.encode()]
    assert {x.service for x in mine} == {"orders", "orchestrator"}
    for letter in mine:
        assert letter.value == garbage[:len(letter.value)] and len(letter.value) < len(garbage)
        assert letter.header("original-size") == str(len(garbage))
        assert "truncated" in letter.header("truncated")
    async with aiohttp.ClientSession() as http:
        for names in stack.workers.values():
            async with http.get(stack.web_url(names[0]) + "/ready/") as resp:
                assert resp.status == 200, (names[0], await resp.text())


async def test_an_order_whose_next_event_is_too_large_to_publish_stops_nothing(
    stack: Stack
) -> None:
    """A PlaceOrder the client's producer accepts (about 1 MB) whose OrderCreated is larger.

    Whether the orders service refuses it as invalid (a dead letter) or applies
    it and the broker refuses its OrderCreated (a parked outbox row), the
    worker stays up, the order is accounted for, and the next order behind it
    completes.
    """
    big, after = str(uuid.uuid4()), str(uuid.uuid4())
    sku = REGULAR_SKUS[5]
    line = [OrderLine(sku=sku, quantity=1, unit_price_cents=price_of(sku))]
    huge = PlaceOrder(customer_id="c" * 1_000_000, payment_token="tok_visa", lines=line)
    async with OrderClient(stack.settings) as client:
        await client.send(new_envelope(big, huge, producer="t"))
        await client.send(new_envelope(after, PlaceOrder(customer_id="next", lines=line,
                                                         payment_token="tok_visa"),
                                       producer="t"))
    assert await wait_terminal(stack.settings, [after], 60, stack.all_running) == 0
    assert stack.all_running()

    async def accounted_for() -> list[str]:
        parked = await query(stack.settings, "orders", "SELECT park_reason FROM outbox"
                             " WHERE key = $1 AND parked_at IS NOT NULL", big.encode())
        letters = await deadletters.dead_letters(
            stack.settings, deadletters.Filters(service="orders", topic="order-commands"))
        return ([r["park_reason"] for r in parked]
                + [x.reason for x in letters if x.key == big.encode()])

    [why] = await eventually(accounted_for, bool, 30, "the big order parked or dead-lettered")
    assert "TooLarge" in why or why.startswith("invalid PlaceOrder"), why


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


async def test_a_truncated_dead_letter_is_never_redriven(stack: Stack) -> None:
    """Its value is only a prefix of the original: re-producing it would send a broken record."""
    order_id = str(uuid.uuid4())
    headers = [("oms-dlq-reason", b"undecodable: simulated"), ("oms-dlq-service", b"orders"),
               ("oms-dlq-topic", b"oms.order-commands"), ("oms-dlq-partition", b"0"),
               ("oms-dlq-offset", b"0"),
               ("oms-dlq-truncated", b"truncated (MessageSizeTooLargeError): value"),
               ("oms-dlq-original-size", b"2000000")]
    async with OrderClient(stack.settings) as client:
        await client._producer.send_and_wait(stack.settings.topic("dead-letters"), b"\xff" * 10,
                                             key=order_id.encode(), headers=headers)
    only = deadletters.Filters(reason_contains="undecodable: simulated")
    [skipped] = await deadletters.redrive(stack.settings, only)
    assert skipped["redriven"] is False and "truncated" in skipped["skipped"]
    assert order_id.encode() not in {
        r.key for r in await deadletters.read_topic(stack.settings,
                                                    stack.settings.topic("order-commands"))}
