"""What end offset does the embedded broker report after a batch of several records?

Starts an embedded Tansu broker, produces batches of 1, 5, 1 and 3 records
to one partition and prints the offsets the broker assigned next to the end
offset ``ListOffsets`` reports. Kafka reports the last offset + 1. Tansu was
measured to report the last batch's *base* offset + 1:

    sent 1 offsets [0] end_offsets 1
    sent 5 offsets [1, 2, 3, 4, 5] end_offsets 2
    sent 1 offsets [6] end_offsets 7
    sent 3 offsets [7, 8, 9] end_offsets 8

Faust recovers a table up to that end offset, so a worker that takes over a
changelog partition misses the rest of the partition's last batch: the
tracker's rows of those sagas are not recovered (the rebalance fault scenario
counts them).

Usage::

    python scripts/tansu_end_offsets.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiokafka import TopicPartition

from agents.dev.embedded import start_broker
from agents.messaging import kafka
from config import Settings

TOPIC = "end-offsets"


async def probe(settings: Settings) -> None:
    await kafka.ensure_topics(settings, {TOPIC: 1})
    producer = kafka.producer(settings, linger_ms=50)
    consumer = kafka.consumer(settings, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(TOPIC, 0)
    try:
        for size in (1, 5, 1, 3):
            sends = [await producer.send(TOPIC, b"v", key=b"k%d" % i) for i in range(size)]
            offsets = [meta.offset for meta in await asyncio.gather(*sends)]
            end = (await consumer.end_offsets([tp]))[tp]
            print(f"sent {size} offsets {offsets} end_offsets {end}")
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as data, start_broker(Path(data)) as broker:
        settings = Settings(_env_file=None, kafka_bootstrap=broker.bootstrap)  # type: ignore[call-arg]
        asyncio.run(probe(settings))


if __name__ == "__main__":
    main()
