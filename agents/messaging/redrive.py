"""Reading and re-driving the dead-letter topic (``oms dead-letters``, ``/dead-letters/``).

A dead letter is the original record (key, value, headers) plus ``oms-dlq-*``
headers saying who parked it, why, and where it came from
(:mod:`agents.messaging.dead_letters`). Reading uses no consumer group, so it
never moves anything. It goes partition by partition, oldest first, and
streams: :func:`read_page` (the web view) reads only what one page needs,
at most ``scan_max`` records, and says where the next page starts
(``partition:offset``); :func:`iter_dead_letters` (the CLI, redrive) holds
one fetch at a time, never the whole topic.

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
from collections.abc import AsyncGenerator
from contextlib import aclosing
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
PAGE_LIMIT = 50
"""Dead letters per page unless asked otherwise."""
PAGE_LIMIT_MAX = 500
SCAN_MAX = 5_000
"""Records one page reads at most, matching or not: a narrow filter pages on, not longer."""


@dataclass(frozen=True)
class Filters:
    """Which dead letters to select; empty fields match everything."""

    service: str | None = None
    topic: str | None = None
    reason_contains: str | None = None
    limit: int | None = None
    at: Position | None = None
    """One dead letter by its place in the topic (the console's re-drive button)."""

    def match(self, letter: DeadLetter) -> bool:
        if self.at is not None and Position(letter.partition, letter.offset) != self.at:
            return False
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
    def truncated(self) -> str:
        """Why the letter holds only part of the original ('' when it is whole)."""
        return self.header("truncated")

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
            "reason": self.reason, "truncated": self.truncated or None,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "value_size": len(value), "value_hex": value[:PREVIEW_BYTES].hex(),
        }


def _int_or_none(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


@dataclass(frozen=True, order=True)
class Position:
    """Where reading starts: this offset of this partition, then the later partitions."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """``"2:120"`` -> Position(2, 120); ValueError for anything else."""
        partition, sep, offset = text.partition(":")
        if not (sep and partition.isdigit() and offset.isdigit()):
            raise ValueError(f"expected PARTITION:OFFSET, e.g. 0:120, got {text!r}")
        return cls(int(partition), int(offset))


@dataclass(frozen=True)
class Page:
    """One page of dead letters and where the next one starts (None: the end was reached)."""

    letters: list[DeadLetter]
    next: Position | None
    scanned: int


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end offsets now (small topics: the ledger)."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        async with aclosing(_scan(consumer, topic, None)) as records:
            return [r async for r in records]
    finally:
        await consumer.stop()


def _reader(settings: Settings) -> AIOKafkaConsumer:
    return kafka.consumer(settings, group_id=None, enable_auto_commit=False,
                          auto_offset_reset="earliest")


async def _scan(
    consumer: AIOKafkaConsumer, topic: str, start: Position | None
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """The records of ``topic`` from ``start`` (else the beginning) up to the end offsets,
    partition by partition, one fetch in memory at a time.

    Every record a fetch returns is kept, also past the reported end: Tansu
    reports a partition's end as its last batch's base offset + 1, and the rest
    of that batch arrives in the fetch that reaches it.
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh client
        partitions = consumer.partitions_for_topic(topic) or set()
    for partition in sorted(p for p in partitions if start is None or p >= start.partition):
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        if start is not None and partition == start.partition:
            consumer.seek(tp, start.offset)  # below the log start: reset to the earliest
        else:
            await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + READ_TIMEOUT_S
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {tp} up to offset {end} in {READ_TIMEOUT_S}s")
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=500)
            for record in batch.get(tp, ()):
                yield record


def _letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(record.partition, record.offset, record.key, record.value,
                      [(k, bytes(v)) for k, v in (record.headers or ())])


async def iter_dead_letters(
    settings: Settings, filters: Filters, start: Position | None = None
) -> AsyncGenerator[DeadLetter, None]:
    """Every dead letter that matches ``filters`` (ignoring its limit), oldest first."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        async with aclosing(_scan(consumer, settings.topic(DEAD_LETTERS), start)) as records:
            async for record in records:
                letter = _letter(record)
                if filters.match(letter):
                    yield letter
    finally:
        await consumer.stop()


async def read_page(
    settings: Settings, filters: Filters, start: Position | None = None, *,
    limit: int = PAGE_LIMIT, scan_max: int = SCAN_MAX,
) -> Page:
    """Up to ``limit`` matching dead letters from ``start``, reading at most ``scan_max``."""
    letters: list[DeadLetter] = []
    scanned = 0
    consumer = _reader(settings)
    await consumer.start()
    try:
        async with aclosing(_scan(consumer, settings.topic(DEAD_LETTERS), start)) as records:
            async for record in records:
                scanned += 1
                letter = _letter(record)
                if filters.match(letter):
                    letters.append(letter)
                if len(letters) >= limit or scanned >= scan_max:
                    return Page(letters, Position(record.partition, record.offset + 1), scanned)
    finally:
        await consumer.stop()
    return Page(letters, None, scanned)


async def dead_letters(settings: Settings, filters: Filters) -> list[DeadLetter]:
    """The dead letters that match ``filters``, oldest first, at most ``limit``."""
    found: list[DeadLetter] = []
    async with aclosing(iter_dead_letters(settings, filters)) as letters:
        async for letter in letters:
            if filters.limit is not None and len(found) >= filters.limit:
                break
            found.append(letter)
    return found


async def redriven(settings: Settings) -> set[bytes]:
    """Coordinates (``partition:offset``) of the dead letters re-driven before."""
    return {r.key for r in await read_topic(settings, settings.topic(LEDGER)) if r.key}


async def redrive(settings: Settings, filters: Filters, *, dry_run: bool = False
                  ) -> list[dict[str, Any]]:
    """Re-produce matching dead letters not re-driven before; return what was (or would be)."""
    done = await redriven(settings)
    letters: list[DeadLetter] = []
    async with aclosing(iter_dead_letters(settings, filters)) as found:
        async for letter in found:
            if filters.limit is not None and len(letters) >= filters.limit:
                break
            if letter.ledger_key not in done:
                letters.append(letter)
    todo = [x for x in letters if x.source_topic and not x.truncated]
    skipped = [{**x.as_json(), "redriven": False,
                "skipped": f"{x.truncated}: only a prefix was kept; produce the original again"}
               for x in letters if x.truncated]
    if dry_run or not todo:
        return [{**x.as_json(), "redriven": False} for x in todo] + skipped
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
    return [{**x.as_json(), "redriven": True} for x in todo] + skipped


async def _ensure_ledger(settings: Settings) -> None:
    await kafka.ensure_topics(settings, {settings.topic(LEDGER): 1})
