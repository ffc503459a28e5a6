"""Reading a topic to its end sees every record, whatever end offset the broker reports.

Tansu reports a partition's end as its last batch's *base* offset + 1 (see
scripts/tansu_end_offsets.py), so a reader that stops at the reported end
offset misses the rest of the last batch: dead letters that ``oms dead-letters
list`` and redrive never saw.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.dev.embedded import EmbeddedBroker
from agents.messaging import kafka
from agents.messaging.redrive import read_topic
from config import Settings

pytestmark = pytest.mark.integration


async def test_every_record_of_a_multi_record_last_batch_is_read(
    broker: EmbeddedBroker, db_settings: Settings
) -> None:
    settings = db_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    topic = f"oms.test-read-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, {topic: 1})
    producer = kafka.producer(settings, linger_ms=200)  # one batch of several records
    await producer.start()
    try:
        sends = [await producer.send(topic, f"v{i}".encode(), partition=0) for i in range(5)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    records = await read_topic(settings, topic)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(5)]
