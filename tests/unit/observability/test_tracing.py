"""Trace propagation helpers: outbox headers, Kafka headers, the jsonl exporter."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.observability import tracing
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import OrderCreated
from stores.messaging import OutboxMessage
from tests.conftest import make_settings, new_order_id


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> InMemorySpanExporter:
    tracing.setup_tracing("unit", make_settings(tmp_path_factory.mktemp("otel"),
                                                otel_exporter="memory"))
    return tracing.memory_exporter()


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    matches = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(matches) == 1, [s.name for s in exporter.get_finished_spans()]
    return matches[0]


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def test_outbox_publish_continues_the_stored_context_with_one_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    event = new_envelope(new_order_id(), OrderCreated(amount_cents=100), producer="orders")
    with tracing.handling("orders", event, "oms.order-commands"):
        stored = tracing.current_headers()  # what the step writes to outbox.headers
    row = OutboxMessage("oms.order-events", event.order_id.encode(), encode(event),
                        {**stored, "x-other": "kept"})

    span, headers = tracing.start_outbox_publish(row)
    span.end()

    names = [k for k, _ in headers]
    assert names.count("traceparent") == 1 and ("x-other", b"kept") in headers
    handle = finished(exporter, "handle OrderCreated")
    publish = finished(exporter, "oms.order-events publish")
    assert publish.parent is not None and publish.parent.span_id == span_id(handle)
    assert publish.attributes is not None
    assert publish.attributes["messaging.message.id"] == event.event_id
    assert publish.attributes["order.id"] == event.order_id
    sent = dict(headers)["traceparent"].decode()
    assert sent != stored["traceparent"] and f"{span_id(publish):016x}" in sent


def test_a_consumer_of_the_record_is_a_child_of_the_publish_span(
    exporter: InMemorySpanExporter,
) -> None:
    exporter.clear()
    event = new_envelope(new_order_id(), OrderCreated(), producer="client")
    with tracing.publishing("oms.order-commands", event) as trace_headers:
        pass
    record_headers = tracing.kafka_headers(trace_headers)
    parent = tracing.context_from(record_headers)
    with trace.get_tracer("test").start_as_current_span("consume", context=parent):
        pass
    publish = finished(exporter, "oms.order-commands publish")
    consume = finished(exporter, "consume")
    assert consume.parent is not None and consume.parent.span_id == span_id(publish)
    assert consume.context is not None and publish.context is not None
    assert consume.context.trace_id == publish.context.trace_id


def test_jsonl_exporter_round_trips_and_skips_a_half_written_line(
    exporter: InMemorySpanExporter, tmp_path: Path,
) -> None:
    exporter.clear()
    event = new_envelope(new_order_id(), OrderCreated(), producer="client")
    with tracing.publishing("oms.order-commands", event):
        pass
    path = tmp_path / "spans" / "unit-1.jsonl"
    jsonl = tracing.JsonlSpanExporter(path, "unit")
    assert jsonl.export(exporter.get_finished_spans()).name == "SUCCESS"
    with path.open("a") as out:
        out.write('{"service": "unit", "name": "half')  # a writer caught mid-line

    [span] = tracing.read_spans(tmp_path)
    assert span["service"] == "unit" and span["kind"] == "PRODUCER"
    assert span["parent_id"] is None and len(span["trace_id"]) == 32
    assert span["attributes"]["order.id"] == event.order_id


def test_the_trace_id_of_kafka_or_outbox_headers() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.trace_id_of([("traceparent", parent.encode())]) == parent[3:35]
    assert tracing.trace_id_of({"traceparent": parent}) == parent[3:35]
    assert tracing.trace_id_of([]) == ""
    assert tracing.trace_id_of(None) == ""
    assert tracing.trace_id_of([("traceparent", b"00-nonsense")]) == ""
    assert tracing.trace_id_of({"traceparent": parent.encode()}) == parent[3:35]


TRACEPARENTS = [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
    "not a traceparent",
]


@pytest.mark.parametrize("traceparent", TRACEPARENTS)
def test_trace_id_of_agrees_with_the_w3c_propagator(traceparent: str) -> None:
    from opentelemetry import propagate
    context = trace.get_current_span(propagate.extract({"traceparent": traceparent}))
    span = context.get_span_context()
    expected = format(span.trace_id, "032x") if span.is_valid else ""
    assert tracing.trace_id_of([("traceparent", traceparent.encode())]) == expected
    assert tracing.trace_id_of({"traceparent": traceparent}) == expected


def test_without_an_sdk_the_record_trace_passes_through_without_spans(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SDK in the process: no span is made, the causing record's context goes on."""
    exporter.clear()
    monkeypatch.setattr(tracing, "_provider", None)
    event = new_envelope(new_order_id(), OrderCreated(), producer="orders")
    record = [("traceparent", TRACEPARENTS[0].encode()), ("tracestate", b"k=v"),
              ("oms-type", b"OrderCreated")]
    with tracing.consuming("inventory", event, "oms.order-events", record, 0, 7) as (
            span, trace_headers):
        assert not span.is_recording()
    assert trace_headers == {"traceparent": TRACEPARENTS[0], "tracestate": "k=v"}
    row = OutboxMessage("oms.inventory-events", event.order_id.encode(), encode(event),
                        {**trace_headers, "oms-type": "InventoryReserved"})
    span, headers = tracing.start_outbox_publish(row)
    span.end()
    assert dict(headers)["traceparent"] == TRACEPARENTS[0].encode()
    assert exporter.get_finished_spans() == ()
