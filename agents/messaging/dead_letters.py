"""Parking: how every service puts a message it cannot apply on ``oms.dead-letters``.

A dead letter keeps the original key, value and headers, plus ``oms-dlq-*``
headers that say why and where from, so it can be inspected and re-driven to
its source topic after a fix (:mod:`agents.messaging.redrive`, ``oms dead-letters``).
One the broker refuses whole is published truncated, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from faust.types import AppT
from faust.types.tuples import Message

from agents.messaging import kafka
from agents.messaging.retry import Backoff
from agents.observability import metrics

log = logging.getLogger(__name__)
DLQ_HEADER_PREFIX = "oms-dlq-"
KEPT_VALUE_BYTES = 64 * 1024
"""A truncated dead letter keeps this much of the value: far below any broker's limit."""
KEPT_KEY_BYTES = 1024
MAX_REASON_CHARS = 2000
KEPT_HEADER_BYTES = 16 * 1024


def original_headers(message: Message) -> list[tuple[str, bytes]]:
    """The message's own headers as (str, bytes) pairs, minus earlier dead-letter marks."""
    raw = message.headers or []
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return [
        (str(k), v if isinstance(v, bytes) else str(v).encode())
        for k, v in pairs
        if not str(k).startswith(DLQ_HEADER_PREFIX)
    ]


def dead_letter_headers(message: Message, reason: str, service: str) -> list[tuple[str, bytes]]:
    """Original headers plus where the message came from and why it was parked."""
    return original_headers(message) + [
        ("oms-dlq-reason", reason[:MAX_REASON_CHARS].encode()),
        ("oms-dlq-service", service.encode()),
        ("oms-dlq-topic", message.topic.encode()),
        ("oms-dlq-partition", str(message.partition).encode()),
        ("oms-dlq-offset", str(message.offset).encode()),
        ("oms-dlq-at-ms", str(int(time.time() * 1000)).encode()),
    ]


class DeadLetters:
    """Publishes one service's dead letters, retrying until the broker takes them.

    A dead letter the broker refuses for good (most often: the original was
    already near the size limit, and our headers push it over) is published
    truncated instead: a prefix of the value, the key and headers if small,
    and headers saying what was cut. Any other failure is retried with
    backoff, the partition waits (nothing is lost), and :attr:`failing` makes
    ``/ready/`` say so.
    """

    def __init__(self, app: AppT, topic: str, service: str) -> None:
        self._app = app
        self._topic = topic
        self._service = service
        self.failing = False
        """True while a dead letter could not be published and waits for a retry."""

    async def publish(self, message: Message, reason: str) -> None:
        """Park ``message``; counted by reason class (the text before the first colon)."""
        log.warning("%s: dead letter from %s[%s]@%s: %s", self._service, message.topic,
                    message.partition, message.offset, reason)
        letter = Letter(message.key, message.value,
                        dead_letter_headers(message, reason, self._service))
        backoff = Backoff(0.1)
        while True:
            try:
                await self._app.producer.send_and_wait(
                    self._topic, letter.key, letter.value, None, None, letter.headers)
                break
            except Exception as exc:  # noqa: BLE001 - classified: truncated, or retried
                refusal = kafka.permanent_send_error(exc)
                if refusal is not None and not letter.truncated:
                    letter = truncated(message, reason, self._service, refusal)
                    metrics.DEAD_LETTERS_TRUNCATED.labels(self._service).inc()
                    log.error("%s: dead letter refused (%s); publishing it truncated",
                              self._service, refusal)
                    continue
                self.failing = True
                metrics.DEAD_LETTER_PUBLISH_RETRIES.labels(self._service,
                                                           type(exc).__name__).inc()
                log.warning("%s: dead-letter publish failed (%s), retrying in %.1fs",
                            self._service, exc, backoff.delay)
                await backoff.wait()
        self.failing = False
        metrics.DEAD_LETTERS.labels(self._service, reason.split(":", 1)[0]).inc()


@dataclass(frozen=True)
class Letter:
    """What goes on the dead-letter topic for one message."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    truncated: bool = False


def truncated(message: Message, reason: str, service: str, refusal: Exception) -> Letter:
    """The dead letter cut down to what the broker surely takes, saying what was cut.

    It keeps the first :data:`KEPT_VALUE_BYTES` of the value, the key and the
    original headers unless they are large themselves, and adds
    ``oms-dlq-truncated`` (what was cut and why) and ``oms-dlq-original-size``.
    Such a letter is for inspection; the original cannot be re-driven from it.
    """
    value = message.value or b""
    cut = [f"value: kept the first {min(len(value), KEPT_VALUE_BYTES)} of {len(value)} bytes"]
    key = message.key
    if key is not None and len(key) > KEPT_KEY_BYTES:
        key = None
        cut.append(f"key of {len(message.key or b'')} bytes dropped")
    headers = dead_letter_headers(message, reason, service)
    if sum(len(k) + len(v) for k, v in original_headers(message)) > KEPT_HEADER_BYTES:
        headers = [(k, v) for k, v in headers if k.startswith(DLQ_HEADER_PREFIX)]
        cut.append("original headers dropped")
    note = f"truncated ({type(refusal).__name__}): " + "; ".join(cut)
    headers += [(f"{DLQ_HEADER_PREFIX}truncated", note.encode()),
                (f"{DLQ_HEADER_PREFIX}original-size", str(len(value)).encode())]
    return Letter(key, value[:KEPT_VALUE_BYTES], headers, truncated=True)
