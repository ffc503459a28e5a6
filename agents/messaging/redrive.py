"""Reading and re-driving the dead-letter topic (``oms dead-letters``, ``/dead-letters/``).

A dead letter is the original record (key, value, headers) plus ``oms-dlq-*``
headers saying who parked it, why, and where it came from
(:mod:`agents.messaging.dead_letters`). Listing reads the topic
from the start without a consumer group, so it never moves anything.

Re-driving produces the original bytes and headers (minus ``oms-dlq-*``) to
the original topic, keyed as before, then records the dead letter's
coordinates (``partition:offset``) in a ledger topic,
``oms.dead-letters-redriven``. Every redrive reads the ledger first and skips
what it lists, so re-driving the same dead letters twice is a no-op whatever
filters each run used (a consumer-group offset could not say which of the
filtered-out records are still to do). A crash between the produce and the
ledger write only re-drives one record twice, which the services' inboxes
absorb.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from agents.messaging import kafka
from agents.messaging.dead_letters import DLQ_HEADER_PREFIX as DLQ_PREFIX
from agents.topology import DEAD_LETTERS
from agents.topology import DEAD_LETTERS_REDRIVEN as LEDGER
from config import Settings

PREVIEW_BYTES = 32
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Filters:
    """Which dead letters to select; empty fields match everything."""

    service: str | None = None
    topic: str | None = None
    reason_contains: str | None = None
    limit: int | None = None

    def match(self, letter: DeadLetter) -> bool:
        if self.service and letter.service != self.service:
            return False
        if self.topic and letter.source_topic not in (self.topic, f"oms.{self.topic}"):
            return False
        return not (self.reason_contains and self.reason_contains not in letter.reason)


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, with its ``oms-dlq-*`` headers parsed."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == DLQ_PREFIX + name:
                return value.decode(errors="replace")
        return ""

    @property
    def service(self) -> str:
        return self.header("service")

    @property
    def reason(self) -> str:
        return self.header("reason")

    @property
    def source_topic(self) -> str:
        return self.header("topic")

    @property
    def ledger_key(self) -> bytes:
        return f"{self.partition}:{self.offset}".encode()

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was parked."""
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]

    def as_json(self) -> dict[str, Any]:
        value = self.value or b""
        return {
            "offset": self.offset, "partition": self.partition, "service": self.service,
            "source_topic": self.source_topic,
            "source_partition": _int_or_none(self.header("partition")),
            "source_offset": _int_or_none(self.header("offset")),
            "reason": self.reason,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "value_size": len(value), "value_hex": value[:PREVIEW_BYTES].hex(),
        }


def _int_or_none(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end offsets now, without a consumer group."""
    consumer = kafka.consumer(settings, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh client
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        return await _read_until(consumer, end)
    finally:
        await consumer.stop()


async def _read_until(
    consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]
) -> list[ConsumerRecord[bytes, bytes]]:
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while [tp for tp in end if await consumer.position(tp) < end[tp]]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read up to the end offsets {end} in {READ_TIMEOUT_S}s")
        batch = await consumer.getmany(timeout_ms=200)
        for tp, rows in batch.items():
            records += [r for r in rows if r.offset < end[tp]]
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def dead_letters(settings: Settings, filters: Filters) -> list[DeadLetter]:
    """The dead letters that match ``filters``, oldest first, at most ``limit``."""
    records = await read_topic(settings, settings.topic(DEAD_LETTERS))
    letters = (
        DeadLetter(r.partition, r.offset, r.key, r.value,
                   [(k, bytes(v)) for k, v in (r.headers or ())])
        for r in records
    )
    return list(_limited((x for x in letters if filters.match(x)), filters.limit))


def _limited(items: Iterator[DeadLetter], limit: int | None) -> Iterator[DeadLetter]:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item


async def redriven(settings: Settings) -> set[bytes]:
    """Coordinates (``partition:offset``) of the dead letters re-driven before."""
    return {r.key for r in await read_topic(settings, settings.topic(LEDGER)) if r.key}


async def redrive(settings: Settings, filters: Filters, *, dry_run: bool = False
                  ) -> list[dict[str, Any]]:
    """Re-produce matching dead letters not re-driven before; return what was (or would be)."""
    done = await redriven(settings)
    letters = [x for x in await dead_letters(settings, Filters(
        filters.service, filters.topic, filters.reason_contains)) if x.ledger_key not in done]
    letters = list(_limited(iter(letters), filters.limit))
    todo = [x for x in letters if x.source_topic]
    if dry_run or not todo:
        return [{**x.as_json(), "redriven": False} for x in todo]
    await _ensure_ledger(settings)
    producer = kafka.producer(settings, acks="all")
    await producer.start()
    try:
        for letter in todo:
            await producer.send_and_wait(letter.source_topic, letter.value, key=letter.key,
                                         headers=letter.original_headers())
            await producer.send_and_wait(settings.topic(LEDGER), b"", key=letter.ledger_key)
    finally:
        await producer.stop()
    return [{**x.as_json(), "redriven": True} for x in todo]


async def _ensure_ledger(settings: Settings) -> None:
    await kafka.ensure_topics(settings, {settings.topic(LEDGER): 1})
