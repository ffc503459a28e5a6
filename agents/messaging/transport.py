"""Faust's aiokafka transport with a short fetch long-poll.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Tansu does
not answer a pending fetch when new records arrive (probed with aiokafka: a
record waited p50 131 ms / p99 250 ms with a 500 ms wait, 5 / 13 ms with
20 ms), so a saga hop could wait up to 1.5 s; measured on the embedded stack,
one order took ~1.5 s end to end with the default and ~0.1 s with a 20 ms wait.
The wait is a setting (``OMS_FETCH_MAX_WAIT_MS``); on real Kafka a longer one
costs nothing.

Registered as the ``oms://`` scheme through the ``faust.transports`` entry
point, Faust's own extension mechanism, so nothing else is patched.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

DEFAULT_FETCH_MAX_WAIT_MS = 20


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The worker consumer, with the app's fetch wait instead of Faust's 1500 ms."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """``oms://host:port``: Faust's Kafka transport with :class:`Consumer`."""

    Consumer = Consumer
