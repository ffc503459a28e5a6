"""One order, one trace: the spans of all four services, linked by cause.

The services run as separate processes, so an in-memory exporter in this
process could not see their spans. The stack runs with ``otel_exporter=jsonl``
instead: every worker appends its finished spans to
``<data_dir>/spans/<service>-<pid>.jsonl``, and this process (the client) does
the same, so the test reads one file set holding the whole system's spans.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.observability import tracing
from agents.orders.intake import LineRequest, PlaceOrderRequest
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

Span = dict[str, Any]


@pytest.fixture(scope="module")
async def stack(broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        tmp_path_factory.mktemp("tracing"), kafka_bootstrap=broker.bootstrap,
        topic_prefix="trace.", otel_exporter="jsonl",
    )
    async with running_stack(settings, fresh=True) as running:
        tracing.setup_tracing("client", running.settings)
        yield running


async def place(stack: Stack, token: str) -> str:
    line = LineRequest(sku="SKU-0004", quantity=1, unit_price_cents=1250)
    request = PlaceOrderRequest(customer_id="c-trace", lines=[line], payment_token=token)
    async with OrderClient(stack.settings) as client:
        await client.place(request)
    tracing.force_flush()
    return str(request.order_id)


def handled(spans: list[Span], service: str, event_type: str) -> Span | None:
    """The ``handle <type>`` span of ``service``, if it has been written yet."""
    for span in spans:
        if span["service"] == service and span["name"] == f"handle {event_type}":
            return span
    return None


async def trace_of(stack: Stack, order_id: str, *last: tuple[str, str]) -> list[Span]:
    """Every span of the order's trace, once each of ``last`` (service, event type) is handled."""

    async def probe() -> list[Span]:
        spans = tracing.read_spans(stack.settings.data_dir)
        ours = [s for s in spans if s["attributes"].get("order.id") == order_id]
        trace_ids = {s["trace_id"] for s in ours}
        assert len(trace_ids) <= 1, f"order {order_id} spans {len(trace_ids)} traces"
        return [s for s in spans if s["trace_id"] in trace_ids]

    def complete(spans: list[Span]) -> bool:
        ids = {s["span_id"] for s in spans}
        linked = all(s["parent_id"] is None or s["parent_id"] in ids for s in spans)
        return linked and all(handled(spans, *step) is not None for step in last)

    return await eventually(probe, complete, timeout_s=30,
                            what=f"{last} handled for {order_id}, every parent exported")


def ancestry(spans: list[Span], leaf: Span) -> list[Span]:
    """``leaf`` and its ancestors up to the root, root first."""
    by_id = {s["span_id"]: s for s in spans}
    chain = [leaf]
    while chain[-1]["parent_id"] is not None:
        parent = by_id.get(chain[-1]["parent_id"])
        assert parent is not None, f"parent of {chain[-1]['name']} is not in the trace"
        chain.append(parent)
    return chain[::-1]


def hops(chain: list[Span]) -> list[tuple[str, str, str]]:
    """(service, span kind, event type) per span: the causal path as the saga reads it."""
    return [(s["service"], s["kind"], s["attributes"].get("oms.event_type", "")) for s in chain]


def path(*steps: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """Expand (producer, event, consumer) steps into publish -> process -> handle hops."""
    out: list[tuple[str, str, str]] = []
    for producer, event, consumer in steps:
        out += [(producer, "PRODUCER", event), (consumer, "CONSUMER", event),
                (consumer, "INTERNAL", event)]
    return out


def assert_one_well_formed_trace(spans: list[Span], order_id: str) -> None:
    assert len({s["trace_id"] for s in spans}) == 1
    roots = [s for s in spans if s["parent_id"] is None]
    assert [(r["service"], r["kind"]) for r in roots] == [("client", "PRODUCER")]
    by_id = {s["span_id"]: s for s in spans}
    for span in spans:
        if span["parent_id"] is not None:
            parent = by_id[span["parent_id"]]
            assert parent["start_ns"] <= span["start_ns"], (parent["name"], span["name"])
        if span["kind"] in ("PRODUCER", "CONSUMER") or span["name"].startswith("handle "):
            attrs = span["attributes"]
            assert attrs["order.id"] == order_id
            assert attrs["messaging.system"] == "kafka"
            assert attrs["messaging.message.id"]
    assert {"client", "orders", "inventory", "payments", "orchestrator"} <= {
        s["service"] for s in spans
    }


async def test_confirmed_order_is_one_trace_across_all_services(stack: Stack) -> None:
    oid = await place(stack, "tok_visa")
    spans = await trace_of(stack, oid, ("orchestrator", "OrderConfirmed"),
                           ("inventory", "OrderConfirmed"))
    assert_one_well_formed_trace(spans, oid)

    leaf = handled(spans, "orchestrator", "OrderConfirmed")
    assert leaf is not None
    assert hops(ancestry(spans, leaf)) == path(
        ("client", "PlaceOrder", "orders"),
        ("orders", "OrderCreated", "inventory"),
        ("inventory", "InventoryReserved", "payments"),
        ("payments", "PaymentCompleted", "orders"),
        ("orders", "OrderConfirmed", "orchestrator"),
    )
    # the stock commit hangs off the same OrderConfirmed: a sibling of the tracker's branch
    commit = handled(spans, "inventory", "OrderConfirmed")
    assert commit is not None
    assert hops(ancestry(spans, commit))[-3:] == path(("orders", "OrderConfirmed", "inventory"))
    publish = [s for s in spans if s["kind"] == "PRODUCER"]
    assert all(s["attributes"]["messaging.operation"] == "publish" for s in publish)
    consumed = handled(spans, "inventory", "OrderCreated")
    assert consumed is not None and consumed["attributes"]["messaging.operation"] == "process"
    assert consumed["attributes"]["messaging.destination.name"] == "trace.order-events"


async def test_declined_order_compensation_is_in_the_same_trace(stack: Stack) -> None:
    oid = await place(stack, "tok_decline")
    spans = await trace_of(stack, oid, ("orchestrator", "OrderCancelled"),
                           ("inventory", "OrderCancelled"))
    assert_one_well_formed_trace(spans, oid)

    leaf = handled(spans, "orchestrator", "OrderCancelled")
    assert leaf is not None
    assert hops(ancestry(spans, leaf)) == path(
        ("client", "PlaceOrder", "orders"),
        ("orders", "OrderCreated", "inventory"),
        ("inventory", "InventoryReserved", "payments"),
        ("payments", "PaymentFailed", "orders"),
        ("orders", "OrderCancelled", "orchestrator"),
    )
    release = handled(spans, "inventory", "OrderCancelled")
    assert release is not None
    assert hops(ancestry(spans, release))[-3:] == path(("orders", "OrderCancelled", "inventory"))
    failed = handled(spans, "orders", "PaymentFailed")
    assert failed is not None and failed["attributes"]["oms.result"] == "applied"
