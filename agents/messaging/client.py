"""A small Kafka client that sends commands to ``oms.order-commands``.

This is what the README's producer example does, packaged for ``oms order
place``, the demo, the benchmark and the tests.
"""

from __future__ import annotations

from typing import Protocol

from agents.messaging import kafka
from agents.topology import ORDER_COMMANDS
from config import Settings
from schemas.oms_pb2 import Envelope


class Command(Protocol):
    """A validated request that knows its envelope (e.g. ``PlaceOrderRequest``)."""

    def to_envelope(self, producer: str = ...) -> Envelope:
        """The command's envelope."""
        ...


class OrderClient:
    """Produces commands (``PlaceOrder``, ``CancelOrder``) keyed by order id."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.topic(ORDER_COMMANDS)
        self._producer = kafka.producer(settings, linger_ms=2, acks=1)

    async def __aenter__(self) -> OrderClient:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def place(self, request: Command) -> Envelope:
        """Send a validated request's command; return the envelope sent."""
        return await self.send(request.to_envelope())

    async def send(self, envelope: Envelope) -> Envelope:
        """Send a command and wait for the broker's ack, starting (or continuing) its trace."""
        await kafka.send_envelope(self._send, self._topic, envelope)
        return envelope

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send arbitrary bytes (tests, dead-letter re-drive)."""
        await self._producer.send_and_wait(topic, value, key=key)

    async def _send(self, topic: str, key: bytes, value: bytes,
                    headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(topic, value, key=key, headers=headers or None)
