"""A saga's timeline: steps in the order they happened, the gap before each, the slow hop."""

from __future__ import annotations

from agents.orchestrator.saga import RUNNING, Saga, Step
from agents.orchestrator.timeline import saga_json, timeline

OID = "6f1c1c3e-8a6b-4d59-9d0a-2a0b5a1c9e10"


def step(kind: str, at_ms: int, producer: str) -> Step:
    return {"type": kind, "at_ms": at_ms, "producer": producer, "event_id": kind}


def test_steps_are_ordered_by_time_with_the_gap_since_the_previous_and_the_slowest_marked() -> None:
    read_order = [step("PlaceOrder", 1_000, "client"),
                  step("InventoryReserved", 1_030, "inventory"),
                  step("OrderCreated", 1_010, "orders"),
                  step("PaymentCompleted", 1_530, "payments")]
    entries = timeline(read_order)  # cross-topic: read in another order than it happened
    assert [(e["event"], e["service"], e["gap_ms"], e["since_first_ms"]) for e in entries] == [
        ("PlaceOrder", "client", None, 0), ("OrderCreated", "orders", 10, 10),
        ("InventoryReserved", "inventory", 20, 30), ("PaymentCompleted", "payments", 500, 530)]
    assert [e["slowest"] for e in entries] == [False, False, False, True]
    assert timeline([]) == []


def test_the_trace_link_is_built_from_the_template_only_when_both_are_there() -> None:
    saga = Saga(OID, RUNNING, 1, 31_000, 1, trace_id="ab" * 16)
    template = "http://localhost:16686/trace/{trace_id}"
    assert saga_json(saga, 2, template)["trace_url"] == f"http://localhost:16686/trace/{'ab' * 16}"
    assert saga_json(saga, 2, "")["trace_url"] is None
    saga.trace_id = ""
    assert saga_json(saga, 2, template)["trace_url"] is None
