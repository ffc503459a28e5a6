"""Bad input: random and mutated bytes into every topic the services read.

Each topic gets random blobs (including empty ones) and bit-flipped copies of
valid envelopes that no longer decode. Every service that reads a topic must
park each such record on the dead-letter topic, with the headers needed to
re-drive it, and carry on: no worker crashes, no partition stalls, and the
good orders placed at the same time all finish.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.dev.stack import Stack
from agents.topology import DEAD_LETTERS, SERVICES
from config import Settings
from schemas.codec import DecodeError, decode, encode
from tests.faults.harness import all_ready, fault_stack, mixed_orders, record, run_scenario
from tests.helpers import eventually

pytestmark = pytest.mark.faults

PER_TOPIC = 20  # random blobs per topic, and as many mutated envelopes
READERS = {s.name: s.sources for s in SERVICES.values()}
DLQ_HEADERS = {"oms-dlq-reason", "oms-dlq-service", "oms-dlq-topic", "oms-dlq-partition",
               "oms-dlq-offset"}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with fault_stack(Path(tmp_path_factory.mktemp("fuzz")), saga_timeout_s=30.0) as running:
        yield running


def bad_values(settings: Settings, rng: random.Random) -> list[bytes]:
    """Random blobs and bit-flipped valid envelopes, all of which fail to decode."""
    values = [b""] + [rng.randbytes(rng.randint(1, 300)) for _ in range(PER_TOPIC - 1)]
    mutated: list[bytes] = []
    while len(mutated) < PER_TOPIC:
        good = bytearray(encode(mixed_orders(settings, 1)[0]))
        for _ in range(rng.randint(1, 4)):
            good[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        try:
            decode(bytes(good))
        except DecodeError:
            mutated.append(bytes(good))
    return [v for v in values if decode_fails(v)] + mutated


def decode_fails(value: bytes) -> bool:
    try:
        decode(value)
    except DecodeError:
        return True
    return False


async def send_garbage(settings: Settings) -> set[tuple[str, str, int, int]]:
    """Produce the bad records; return (service, topic, partition, offset) each must dead-letter."""
    rng = random.Random(1405)
    expected: set[tuple[str, str, int, int]] = set()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1)
    await producer.start()
    try:
        for source in {s for sources in READERS.values() for s in sources}:
            topic = settings.topic(source)
            for value in bad_values(settings, rng):
                key = str(uuid.uuid4()).encode() if rng.random() < 0.5 else rng.randbytes(8)
                meta = await producer.send_and_wait(topic, value, key=key)
                expected |= {(service, topic, meta.partition, meta.offset)
                             for service, sources in READERS.items() if source in sources}
    finally:
        await producer.stop()
    return expected


async def dead_letters(settings: Settings) -> dict[tuple[str, str, int, int], dict[str, bytes]]:
    """Every record on the dead-letter topic, by (service, topic, partition, offset)."""
    consumer = AIOKafkaConsumer(settings.topic(DEAD_LETTERS),
                                bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: dict[tuple[str, str, int, int], dict[str, bytes]] = {}
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for records in batches.values():
                for rec in records:
                    headers = dict(rec.headers)
                    key = (headers.get("oms-dlq-service", b"").decode(),
                           headers.get("oms-dlq-topic", b"").decode(),
                           int(headers.get("oms-dlq-partition", b"-1")),
                           int(headers.get("oms-dlq-offset", b"-1")))
                    found[key] = headers
    finally:
        await consumer.stop()
    return found


async def test_garbage_into_every_topic(stack: Stack) -> None:
    settings = stack.settings
    expected: set[tuple[str, str, int, int]] = set()

    async def inject() -> int:
        await asyncio.sleep(1.0)  # let the good load start first
        expected.update(await send_garbage(settings))
        return len({key[1:] for key in expected})

    line = await run_scenario(stack, "random and mutated bytes into every topic",
                              mixed_orders(settings, 300), inject, rate_per_s=50.0)
    found = await eventually(lambda: dead_letters(settings), lambda got: expected <= got.keys(),
                             60.0, "every bad record dead-lettered")
    for key in expected:
        assert DLQ_HEADERS <= found[key].keys(), (key, sorted(found[key]))
    record({"scenario": "fuzz: dead letters", "bad_records": line["faults_injected"],
            "dead_letters_expected": len(expected), "dead_letters_found": len(found)})
    await all_ready(stack)
