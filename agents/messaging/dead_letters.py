"""Parking: how every service puts a message it cannot apply on ``oms.dead-letters``.

A dead letter keeps the original key, value and headers, plus ``oms-dlq-*``
headers that say why and where from, so it can be inspected and re-driven to
its source topic after a fix (:mod:`agents.messaging.redrive`, ``oms dead-letters``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from faust.types import AppT
from faust.types.tuples import Message

from agents.messaging.retry import Backoff
from agents.observability import metrics

log = logging.getLogger(__name__)
DLQ_HEADER_PREFIX = "oms-dlq-"


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
        ("oms-dlq-reason", reason.encode()),
        ("oms-dlq-service", service.encode()),
        ("oms-dlq-topic", message.topic.encode()),
        ("oms-dlq-partition", str(message.partition).encode()),
        ("oms-dlq-offset", str(message.offset).encode()),
        ("oms-dlq-at-ms", str(int(time.time() * 1000)).encode()),
    ]


class DeadLetters:
    """Publishes one service's dead letters, retrying until the broker takes them."""

    def __init__(self, app: AppT, topic: str, service: str) -> None:
        self._app = app
        self._topic = topic
        self._service = service

    async def publish(self, message: Message, reason: str) -> None:
        """Park ``message``; counted by reason class (the text before the first colon)."""
        metrics.DEAD_LETTERS.labels(self._service, reason.split(":", 1)[0]).inc()
        log.warning("%s: dead letter from %s[%s]@%s: %s", self._service, message.topic,
                    message.partition, message.offset, reason)
        headers = dead_letter_headers(message, reason, self._service)
        backoff = Backoff(0.1)
        while True:
            try:
                await self._app.producer.send_and_wait(
                    self._topic, message.key, message.value, None, None, headers
                )
                return
            except Exception as exc:  # noqa: BLE001 - retried; the partition must not move on
                log.warning("%s: dead-letter publish failed (%s), retrying", self._service, exc)
                await backoff.wait()
