"""A small Kafka client for placing orders and watching them finish.

This is what the README's producer example does, packaged for the demo,
the benchmark, the CLI and the tests.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from agents import tracing
from agents.intake import PlaceOrderRequest
from agents.topics import ORDER_COMMANDS
from config import Settings
from schemas.codec import encode
from schemas.oms_pb2 import Envelope


class OrderClient:
    """Produces ``PlaceOrder`` commands keyed by order id."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap, "OMS_KAFKA_BOOTSTRAP must be set"
        self._topic = settings.topic(ORDER_COMMANDS)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, acks=1
        )

    async def __aenter__(self) -> OrderClient:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def place(self, request: PlaceOrderRequest) -> Envelope:
        """Send one order and wait for the broker's ack."""
        envelope = request.to_envelope()
        await self.send(envelope)
        return envelope

    async def send(self, envelope: Envelope) -> None:
        """Send any envelope to the order-commands topic, starting (or continuing) its trace."""
        with tracing.publishing(self._topic, envelope) as trace_headers:
            await self._producer.send_and_wait(
                self._topic, encode(envelope), key=envelope.order_id.encode(),
                headers=tracing.kafka_headers(trace_headers) or None,
            )

    async def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send arbitrary bytes (tests, dead-letter re-drive)."""
        await self._producer.send_and_wait(topic, value, key=key)
