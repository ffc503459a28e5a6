"""Encode and decode the OMS Envelope, and register it as a Faust codec.

Library errors are wrapped in :class:`DecodeError` (with ``raise ... from``)
so callers can route any undecodable input to the dead-letter topic with one
``except`` clause and a reason a human can read.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from faust.serializers import codecs
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from schemas.oms_pb2 import Envelope

SCHEMA_VERSION = 1
CODEC_NAME = "oms_envelope"
_BODY_ONEOF = "body"
_FIELD_BY_TYPE: dict[str, str] = {
    field.message_type.name: field.name
    for field in Envelope.DESCRIPTOR.oneofs_by_name[_BODY_ONEOF].fields
}


class DecodeError(ValueError):
    """The bytes are not a usable Envelope; ``str(err)`` is the dead-letter reason."""


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
    _require_uuid("event_id", envelope.event_id)
    _require_uuid("order_id", envelope.order_id)
    return envelope


def _require_uuid(name: str, value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError as exc:
        raise DecodeError(f"{name} is not a UUID: {value!r}") from exc


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
