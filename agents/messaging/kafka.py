"""Every Kafka client OMS builds, and sending one envelope inside its trace.

One factory applies the bootstrap servers and the ``OMS_KAFKA_SECURITY_*``
settings (SASL, TLS) to every client: the Faust apps, ``oms init``, replay,
dead letters, the order client and the benchmark. Nothing else constructs a
Kafka client, so a secured cluster is reached the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faust.types import AppT
from opentelemetry.context import Context

from agents.observability import tracing
from config import Settings
from schemas.codec import TYPE_HEADER, encode
from schemas.oms_pb2 import Envelope

Send = Callable[[str, bytes, bytes, tracing.KafkaHeaders], Awaitable[object]]
"""Send one record: (topic, key, value, headers) -> awaitable."""


PERMANENT_SEND_ERRORS: tuple[type[kafka_errors.KafkaError], ...] = (
    kafka_errors.MessageSizeTooLargeError,  # the client's own size check, or the broker's
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.InvalidTopicError,
    kafka_errors.UnknownTopicOrPartitionError,  # raised only after the client waited for it
    kafka_errors.CorruptRecordException,
    kafka_errors.UnsupportedForMessageFormatError,
    kafka_errors.PolicyViolationError,
)
"""Refusals of one record that no retry can change: the record must be set aside."""


def permanent_send_error(exc: BaseException) -> kafka_errors.KafkaError | None:
    """The error that refuses this record for good, if ``exc`` is (or wraps) one.

    Faust's producer wraps the client's errors in its own ``ProducerSendError``
    (``raise ... from``), so the cause chain is searched.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, PERMANENT_SEND_ERRORS):
            return cause
        cause = cause.__cause__
    return None


def bootstrap(settings: Settings) -> str:
    """``OMS_KAFKA_BOOTSTRAP``; a clear error where nothing started a broker."""
    if not settings.kafka_bootstrap:
        raise RuntimeError("OMS_KAFKA_BOOTSTRAP is not set; start the stack with `oms up`")
    return settings.kafka_bootstrap


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return options


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer for the configured cluster (start it before use)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap(settings),
                            **security_options(settings), **options)


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer for the configured cluster (start it before use)."""
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap(settings),
                            **security_options(settings), **options)


def admin(settings: Settings) -> AIOKafkaAdminClient:
    """An aiokafka admin client for the configured cluster (start it before use)."""
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings),
                               **security_options(settings))


async def ensure_topics(settings: Settings, partitions: dict[str, int]) -> list[str]:
    """Create the topics (full name -> partitions) that do not exist yet; return those created.

    A topic another process creates at the same moment counts as existing.
    """
    client = admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        wanted = [name for name in partitions if name not in existing]
        if wanted:
            try:
                await client.create_topics([NewTopic(name, partitions[name],
                                                     settings.replication_factor)
                                            for name in wanted])
            except TopicAlreadyExistsError:
                pass  # created concurrently: what we wanted exists
        return wanted
    finally:
        await client.close()


def metadata_client(bootstrap_servers: str, **options: Any) -> AIOKafkaClient:
    """A bare client for probing a broker that no settings describe yet (plaintext)."""
    return AIOKafkaClient(bootstrap_servers=bootstrap_servers, **options)


def faust_broker(settings: Settings) -> str:
    """Faust's broker URL: every bootstrap host under the ``oms://`` transport."""
    hosts = bootstrap(settings).split(",")
    return ";".join(f"oms://{h.strip()}" for h in hosts)  # agents/messaging/transport.py


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the configured security protocol (None: plaintext)."""
    options = security_options(settings)
    ssl_context = options.get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"], ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


async def send_envelope(
    send: Send, topic: str, envelope: Envelope, parent: Context | None = None
) -> None:
    """Send ``envelope`` keyed by its order id with its type header, inside a PRODUCER span.

    The span's context travels in the record's ``traceparent`` header, so the
    consumers' spans join the order's trace; ``parent`` defaults to the
    current context.
    """
    with tracing.publishing(topic, envelope, parent) as trace_headers:
        headers = {**trace_headers, TYPE_HEADER: envelope.type}
        await send(topic, envelope.order_id.encode(), encode(envelope),
                   tracing.kafka_headers(headers))


def faust_send(app: AppT) -> Send:
    """:data:`Send` through a Faust app's producer, waiting for the broker's ack."""

    async def send(topic: str, key: bytes, value: bytes, headers: tracing.KafkaHeaders) -> None:
        await app.producer.send_and_wait(topic, key, value, None, None, headers)

    return send
