"""Does the embedded broker answer a pending fetch when a record arrives?

Starts an embedded Tansu broker, produces records at random intervals and
prints how long each waited until an aiokafka consumer saw it, for each fetch
wait given. A broker that answers early shows the same few milliseconds
whatever the wait; Tansu's figures grow with it (about a quarter of the wait
at p50, half of it at p99), which is why ``OMS_FETCH_MAX_WAIT_MS`` is short.

Usage::

    python scripts/fetch_latency.py 500 100 20 5
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.dev.embedded import start_broker

RECORDS = 200


async def probe(bootstrap: str, wait_ms: int) -> list[float]:
    """Milliseconds from send to receipt of RECORDS records on a fresh topic."""
    topic = f"latency-{wait_ms}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms,
                                auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    waited: list[float] = []
    try:
        receiving = asyncio.create_task(_receive(consumer, waited))
        for i in range(RECORDS):
            await asyncio.sleep(random.uniform(0.005, 0.03))
            await producer.send(topic, str(time.perf_counter()).encode(), key=str(i).encode())
        await asyncio.wait_for(receiving, timeout=10 + wait_ms / 1000 * 4)
    finally:
        await consumer.stop()
        await producer.stop()
    return sorted(waited)


async def _receive(consumer: AIOKafkaConsumer, waited: list[float]) -> None:
    async for record in consumer:
        waited.append((time.perf_counter() - float(record.value or b"0")) * 1000)
        if len(waited) == RECORDS:
            return


async def main(bootstrap: str, waits: list[int]) -> None:
    for wait_ms in waits:
        ms = await probe(bootstrap, wait_ms)
        print(f"fetch wait {wait_ms:4d} ms: p50 {ms[len(ms) // 2]:6.1f}"
              f"  p90 {ms[int(len(ms) * 0.9)]:6.1f}  p99 {ms[int(len(ms) * 0.99)]:6.1f} ms")


if __name__ == "__main__":
    waits = [int(a) for a in sys.argv[1:]] or [500, 20]
    with tempfile.TemporaryDirectory() as tmp, start_broker(Path(tmp)) as broker:
        asyncio.run(main(broker.bootstrap, waits))
