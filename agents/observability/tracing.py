"""OpenTelemetry for OMS: one order is one trace across the four services.

Where the spans come from, in causal order:

- intake (``OrderClient``, ``POST /orders/``): a PRODUCER ``{topic} publish``
  span; its context leaves in the record's W3C ``traceparent`` header.
- consuming (:func:`consuming`): for each event of a batch, a CONSUMER
  ``{topic} process`` span parented by that header, as faust's own
  ``faust.contrib.opentelemetry`` sensor makes it, and a child
  ``handle {type}`` span around the handler. The sensor itself is not used:
  every agent takes batches (:func:`agents.messaging.batching.take_batches`), and the
  sensor's span would end when an event is buffered, before it is handled.
- the step stores the handler span's context with each outbox row
  (``outbox.headers``); the relay opens a PRODUCER ``publish`` span under it
  and sends *its* context in place of the stored one.

Nothing injects at the aiokafka level (no aiokafka instrumentation), and the
relay replaces rather than appends, so every record carries one ``traceparent``.
With ``otel_exporter=none`` no SDK is installed and all of this is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from config import Settings
from schemas.codec import DecodeError, decode
from schemas.oms_pb2 import Envelope
from stores.messaging import OutboxMessage

log = logging.getLogger(__name__)

TRACER_NAME = "oms"
TRACE_HEADERS = ("traceparent", "tracestate")
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}(?P<extra>-.*)?")
KafkaHeaders = list[tuple[str, bytes]]

_provider: TracerProvider | None = None
_exporters: dict[str, SpanExporter] = {}  # exporter kind -> the one installed in this process


def setup_tracing(service: str, settings: Settings) -> TracerProvider | None:
    """Install the SDK with ``settings.otel_exporter`` for this process; idempotent.

    OpenTelemetry allows one global provider per process, so a later call with
    another exporter kind adds that exporter to the same provider (a pytest
    process may need both ``memory`` and ``jsonl``).
    """
    global _provider
    kind = settings.otel_exporter
    if kind == "none":
        return _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": f"oms-{service}"}))
        trace.set_tracer_provider(_provider)
    if kind not in _exporters:
        exporter = _make_exporter(kind, service, settings)
        _exporters[kind] = exporter
        _provider.add_span_processor(_processor(kind, exporter))
        log.info("%s: tracing to %s", service, kind)
    return _provider


def _make_exporter(kind: str, service: str, settings: Settings) -> SpanExporter:
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_endpoint
        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "memory":
        return InMemorySpanExporter()
    if kind == "jsonl":
        path = Path(settings.data_dir) / "spans" / f"{service}-{os.getpid()}.jsonl"
        return JsonlSpanExporter(path, service)
    raise ValueError(f"unknown otel_exporter {kind!r}")


def _processor(kind: str, exporter: SpanExporter) -> SimpleSpanProcessor | BatchSpanProcessor:
    """Memory exports synchronously (unit tests read it at once); the rest in batches."""
    if kind == "memory":
        return SimpleSpanProcessor(exporter)
    delay_ms = 100 if kind == "jsonl" else 2000  # jsonl is read by tests waiting on it
    return BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms)


def memory_exporter() -> InMemorySpanExporter:
    """The in-memory exporter installed by ``otel_exporter=memory`` (unit tests)."""
    exporter = _exporters.get("memory")
    if not isinstance(exporter, InMemorySpanExporter):
        raise RuntimeError("tracing is not set up with otel_exporter='memory'")
    return exporter


def force_flush() -> None:
    """Export finished spans now (tests, before reading an exporter's output)."""
    if _provider is not None:
        _provider.force_flush()


# --- propagation --------------------------------------------------------------


def current_headers() -> dict[str, str]:
    """The current trace context as W3C headers (empty when not tracing)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(headers: Mapping[str, str] | Iterable[tuple[str, bytes]] | None) -> Context:
    """The trace context carried by outbox headers or Kafka record headers."""
    if headers is None:
        return Context()
    if isinstance(headers, Mapping):
        return propagate.extract(dict(headers))
    carrier = {k: v.decode("utf-8", "replace") for k, v in headers if v is not None}
    return propagate.extract(carrier)


def trace_id_of(
    headers: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]] | None,
) -> str:
    """The trace id (32 hex digits) that headers carry; '' for none or a malformed one.

    Plain W3C parsing (what the propagator checks, without building a
    context), so it works with tracing off in this process too.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key == "traceparent" and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            match = _TRACEPARENT.fullmatch(text.strip())
            if match is None or match["version"] == "ff" or (
                    match["version"] == "00" and match["extra"]):
                return ""
            all_zeros = not match["trace"].strip("0") or not match["span"].strip("0")
            return "" if all_zeros else match["trace"]
    return ""


def kafka_headers(headers: Mapping[str, str]) -> KafkaHeaders:
    """String headers as Kafka record headers."""
    return [(k, v.encode()) for k, v in headers.items()]


def with_trace(headers: Mapping[str, str], trace_headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with their trace context replaced (never two ``traceparent``)."""
    kept = {k: v for k, v in headers.items() if k not in TRACE_HEADERS}
    return {**kept, **trace_headers}


# --- spans --------------------------------------------------------------------


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def event_attributes(envelope: Envelope, topic: str, operation: str) -> dict[str, Any]:
    """Messaging semantic-convention attributes plus the order id, for one event."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation": operation,
        "messaging.message.id": envelope.event_id,
        "order.id": envelope.order_id,
        "oms.event_type": envelope.type,
    }


@contextmanager
def handling(service: str, envelope: Envelope, topic: str) -> Iterator[Span]:
    """A span around one service's handler for ``envelope`` (child of the process span)."""
    attributes = event_attributes(envelope, topic, "process")
    attributes["oms.service"] = service
    with _tracer().start_as_current_span(f"handle {envelope.type}", kind=SpanKind.INTERNAL,
                                         attributes=attributes) as span:
        yield span


@contextmanager
def consuming(
    service: str, envelope: Envelope, topic: str, headers: Any, partition: int, offset: int
) -> Iterator[tuple[Span, dict[str, str]]]:
    """The CONSUMER ``process`` span of one event of a batch, then its ``handle`` span.

    Parented by the record's ``traceparent``, exactly like faust's own sensor
    does for one-at-a-time agents, so the order stays one trace. Yields the
    handle span and the trace headers for what the event causes. Without an
    SDK in this process no span could be recorded, so none is made: the
    record's own trace headers pass on unchanged, which is what the API's
    no-op spans would yield too, for a fraction of the work.
    """
    if _provider is None:
        yield INVALID_SPAN, passed_on(headers)
        return
    attributes = event_attributes(envelope, topic, "process")
    attributes["messaging.destination.partition.id"] = str(partition)
    attributes["messaging.kafka.message.offset"] = offset
    with _tracer().start_as_current_span(f"{topic} process", context=context_from(headers),
                                         kind=SpanKind.CONSUMER, attributes=attributes):
        with handling(service, envelope, topic) as span:
            yield span, current_headers()


def passed_on(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """A Kafka record's W3C trace headers, as strings: its trace context, unchanged."""
    return {k: v.decode("utf-8", "replace") for k, v in headers or ()
            if k in TRACE_HEADERS and v is not None}


@contextmanager
def publishing(
    topic: str, envelope: Envelope, parent: Context | None = None
) -> Iterator[dict[str, str]]:
    """A PRODUCER span for sending ``envelope``; yields the trace headers to send with it.

    ``parent`` defaults to the current context; the relay passes the context
    stored with the outbox row instead.
    """
    with _tracer().start_as_current_span(
        f"{topic} publish", context=parent, kind=SpanKind.PRODUCER,
        attributes=event_attributes(envelope, topic, "publish"),
    ):
        yield current_headers()


def start_publish(
    topic: str, envelope: Envelope | None, parent: Context
) -> tuple[Span, dict[str, str]]:
    """Start (not end) a PRODUCER span under ``parent``; returns it and its trace headers.

    For the relay, whose span should last until the broker acknowledges.
    """
    attributes = event_attributes(envelope, topic, "publish") if envelope is not None else {
        "messaging.system": "kafka", "messaging.destination.name": topic,
        "messaging.operation": "publish"}
    span = _tracer().start_span(f"{topic} publish", context=parent, kind=SpanKind.PRODUCER,
                                attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
    return span, carrier


def start_outbox_publish(message: OutboxMessage) -> tuple[Span, KafkaHeaders]:
    """The relay's span for one outbox row, under the context stored with it.

    Returns the span (end it on the broker's ack) and the record's headers,
    whose ``traceparent`` is now the publish span's.
    """
    if _provider is None:  # nothing is recorded: the stored trace context goes out as it is
        return INVALID_SPAN, kafka_headers(message.headers)
    envelope = None
    try:  # decoded only to name the event on the recorded span
        envelope = decode(message.value)
    except DecodeError as exc:
        log.warning("outbox row %s does not decode (%s); publishing it unnamed", message.id, exc)
    span, trace_headers = start_publish(message.topic, envelope, context_from(message.headers))
    return span, kafka_headers(with_trace(message.headers, trace_headers))


# --- a file exporter for multi-process tests ------------------------------------


class JsonlSpanExporter(SpanExporter):
    """Append finished spans as JSON lines (``otel_exporter=jsonl``).

    The workers are separate processes, so a test cannot read their in-memory
    exporters; each worker writes ``<data_dir>/spans/<service>-<pid>.jsonl``
    and the test reads them all with :func:`read_spans`.
    """

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self.service = service
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Runs on the batch processor's thread, so the blocking write is fine here."""
        lines = "".join(json.dumps(span_record(s, self.service)) + "\n" for s in spans)
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError as exc:
            log.warning("could not write spans to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open between exports."""


def span_record(span: ReadableSpan, service: str) -> dict[str, Any]:
    """The JSON form of one span: ids in hex, as trace viewers show them."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "service": service,
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def read_spans(data_dir: str | Path) -> list[dict[str, Any]]:
    """Every span the ``jsonl`` exporters of a system wrote under ``data_dir``."""
    spans: list[dict[str, Any]] = []
    for path in sorted((Path(data_dir) / "spans").glob("*.jsonl")):
        # a line still being written has no newline yet: split keeps it last
        complete = path.read_text(encoding="utf-8").split("\n")[:-1]
        spans.extend(json.loads(line) for line in complete if line.strip())
    return spans
