"""Encode and decode the OMS Envelope, and register it as a Faust codec.

Library errors are wrapped in :class:`DecodeError` (with ``raise ... from``)
so callers can route any undecodable input to the dead-letter topic with one
``except`` clause and a reason a human can read.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from faust.serializers import codecs
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from schemas.oms_pb2 import Envelope

SCHEMA_VERSION = 1
CODEC_NAME = "oms_envelope"
_BODY_ONEOF = "body"
TYPE_HEADER = "oms-type"
"""Record header naming the envelope's type (its body's message name), e.g. ``PlaceOrder``.

A consumer that does not handle the type skips the record without decoding
it (``agents.messaging.transport``). Optional for producers outside OMS; when
present it must name the value's type, or the record is dead-lettered.
"""
_FIELD_BY_TYPE: dict[str, str] = {
    field.message_type.name: field.name
    for field in Envelope.DESCRIPTOR.oneofs_by_name[_BODY_ONEOF].fields
}


class DecodeError(ValueError):
    """The bytes are not a usable Envelope; :attr:`reason` is the dead-letter reason."""

    label = "undecodable"
    """The reason's class: the dead-letter metric's label."""

    @property
    def reason(self) -> str:
        """What the dead letter says: its class, then what is wrong."""
        return f"{self.label}: {self}"


class WrongKey(DecodeError):
    """A usable envelope under a key that is not its canonical order id."""

    label = "wrong key"


def event_types() -> frozenset[str]:
    """Every message type an Envelope can carry, e.g. ``"OrderCreated"``."""
    return frozenset(_FIELD_BY_TYPE)


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope for Kafka or the outbox."""
    return envelope.SerializeToString()


def decode(data: bytes | None) -> Envelope:
    """Parse and structurally validate an envelope.

    Raises DecodeError for bytes that are not protobuf, an envelope without a
    body, ids that are not UUIDs, or a ``type`` that disagrees with the body.
    The ids come back canonical (lower-case, hyphenated), whatever form of
    UUID was sent, so the inbox, the tables and every emitted event name one
    order and one event the same way.
    """
    if not data:
        raise DecodeError("empty value")
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except (ProtobufDecodeError, RuntimeWarning) as exc:
        raise DecodeError(f"not an Envelope: {exc}") from exc
    body_field = envelope.WhichOneof(_BODY_ONEOF)
    if body_field is None:
        raise DecodeError(f"envelope has no body (type={envelope.type!r})")
    body_type = type(getattr(envelope, body_field)).DESCRIPTOR.name
    if envelope.type != body_type:
        raise DecodeError(f"type {envelope.type!r} does not match body {body_type!r}")
    envelope.event_id = _canonical_uuid("event_id", envelope.event_id)
    envelope.order_id = _canonical_uuid("order_id", envelope.order_id)
    return envelope


def check_key(key: bytes | None, envelope: Envelope) -> None:
    """Raise :class:`WrongKey` unless ``key`` is the envelope's canonical order id.

    The producer picks the partition from the key's bytes, so a key in any
    other form (upper case, another order) puts this record on another
    partition than the order's other events: another tracker row, no order
    between its commands. It cannot be put right after the fact; the dead
    letter says which key to send.
    """
    if key != envelope.order_id.encode():
        shown = "missing" if key is None else repr(key[:80])
        raise WrongKey(f"key {shown} is not the order id; send key = order_id"
                       f" ({envelope.order_id}) as UTF-8: the key chooses the partition,"
                       " and every event of an order must share one")


class WrongTypeHeader(DecodeError):
    """An envelope whose ``oms-type`` header names another type than its body."""

    label = "wrong type header"


Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None
"""Record headers as aiokafka (pairs) or Faust (pairs or a mapping) hand them over."""


def type_header(headers: Headers) -> bytes | None:
    """The record's :data:`TYPE_HEADER` value, None when it has none."""
    if isinstance(headers, Mapping):
        return headers.get(TYPE_HEADER)
    for key, value in headers or ():
        if key == TYPE_HEADER:
            return value
    return None


def check_type_header(headers: Headers, envelope: Envelope) -> None:
    """Raise :class:`WrongTypeHeader` when the record's type header names another type.

    Consumers skip records by this header without decoding them, so a wrong
    one would make a service miss an event it handles; the services that do
    decode it dead-letter it instead.
    """
    named = type_header(headers)
    if named is not None and named != envelope.type.encode():
        raise WrongTypeHeader(f"header {TYPE_HEADER} {named[:40]!r} names another type than"
                              f" the value's {envelope.type}; send the value's type or no header")


def _canonical_uuid(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise DecodeError(f"{name} is not a UUID: {value[:80]!r}") from exc


def body_of(envelope: Envelope) -> Message:
    """The message inside the envelope's ``oneof body``."""
    return getattr(envelope, _FIELD_BY_TYPE[envelope.type])  # type: ignore[no-any-return]


def new_envelope(
    order_id: str,
    body: Message,
    *,
    producer: str,
    cause: Envelope | None = None,
    event_id: str | None = None,
    placed_at_ms: int | None = None,
) -> Envelope:
    """Wrap ``body`` in a fresh envelope.

    ``cause`` is the envelope being reacted to: its id becomes the causation id
    and its placement time is carried forward for end-to-end latency.
    """
    type_name = body.DESCRIPTOR.name
    now_ms = int(time.time() * 1000)
    envelope = Envelope(
        event_id=event_id or str(uuid.uuid4()),
        order_id=order_id,
        type=type_name,
        occurred_at_ms=now_ms,
        producer=producer,
        schema_version=SCHEMA_VERSION,
        placed_at_ms=placed_at_ms or (cause.placed_at_ms if cause else 0) or now_ms,
        causation_id=cause.event_id if cause else "",
    )
    getattr(envelope, _FIELD_BY_TYPE[type_name]).CopyFrom(body)
    return envelope


def deterministic_id(*parts: str) -> str:
    """A UUID derived from ``parts``, so a retried emission keeps its event id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "oms:" + ":".join(parts)))


def snake(type_name: str) -> str:
    """``OrderCreated`` -> ``order_created`` (metric and log labels)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).lower()


class EnvelopeCodec(codecs.Codec):
    """Faust codec: ``value_serializer='oms_envelope'`` reads and writes Envelopes."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, Envelope):
            return encode(obj)
        if isinstance(obj, bytes):
            return obj
        raise TypeError(f"cannot encode {type(obj).__name__} as an Envelope")

    def _loads(self, s: bytes) -> Envelope:
        return decode(s)


codecs.register(CODEC_NAME, EnvelopeCodec())
