"""The tracker applies a batch of events and writes each saga's row once.

A table write is a changelog record, so the number of writes is what a batch
saves. The table here is a dict that counts writes (the Faust table's own
changelog is not what is under test); the events and the transitions are real.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from faust.types.tuples import Message
from prometheus_client import REGISTRY

from agents.orchestrator.saga import CONFIRMED, RUNNING
from agents.orchestrator.table import SagaTracker
from schemas.codec import TYPE_HEADER, encode
from schemas.oms_pb2 import (
    Envelope,
    InventoryReserved,
    OrderConfirmed,
    OrderCreated,
    PlaceOrder,
)
from tests.helpers import envelope
from tests.unit.orchestrator import fakes
from tests.unit.orchestrator.fakes import FakeTable


def message(event: Envelope, offset: int) -> Message:
    return Message("oms.order-events", 0, offset, 0.0, 0, [], event.order_id.encode(),
                   encode(event), None)


def tracker(tmp_path: Path) -> tuple[SagaTracker, FakeTable]:
    tracked = fakes.tracker(tmp_path)
    return tracked, fakes.table(tracked)


def writes(table: FakeTable) -> dict[bytes, int]:
    """Changelog records per key."""
    return dict(Counter(key for key, _ in table.changelog))


async def test_a_batch_writes_each_saga_once_with_every_step(tmp_path: Path) -> None:
    tracked, table = tracker(tmp_path)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    events = [envelope(first, PlaceOrder(customer_id="c1")),
              envelope(second, PlaceOrder(customer_id="c2")),
              envelope(first, OrderConfirmed(amount_cents=500))]
    await tracked.on_batch([message(e, i) for i, e in enumerate(events)])

    assert writes(table) == {first.encode(): 1, second.encode(): 1}
    done = table[first.encode()]
    assert done["status"] == CONFIRMED
    assert [s["type"] for s in done["steps"]] == ["PlaceOrder", "OrderConfirmed"]
    assert table[second.encode()]["status"] == RUNNING


async def test_events_the_tracker_does_not_read_leave_the_table_alone(tmp_path: Path) -> None:
    """Records without a type header reach it too; only what its decisions need counts."""
    tracked, table = tracker(tmp_path)
    oid = str(uuid.uuid4())
    events = [envelope(oid, OrderCreated(amount_cents=500)),
              envelope(oid, InventoryReserved(amount_cents=500))]
    await tracked.on_batch([message(e, i) for i, e in enumerate(events)])
    assert writes(table) == {}


async def test_a_type_header_that_names_another_type_is_dead_lettered(tmp_path: Path) -> None:
    tracked, table = tracker(tmp_path)
    oid = str(uuid.uuid4())
    lying = message(envelope(oid, OrderConfirmed(amount_cents=500)), 0)
    lying.headers = [(TYPE_HEADER, b"OrderCreated")]
    parked = fakes.DeadLetterTopic()
    tracked.dead_letters = parked  # type: ignore[assignment]
    await tracked.on_batch([lying])
    assert writes(table) == {}
    assert [(m.offset, reason.split(":")[0]) for m, reason in parked.published] == [
        (0, "wrong type header")]


async def test_a_redelivered_batch_adds_no_step(tmp_path: Path) -> None:
    tracked, table = tracker(tmp_path)
    oid = str(uuid.uuid4())
    batch = [message(envelope(oid, PlaceOrder(customer_id="c")), 0)]
    await tracked.on_batch(batch)
    await tracked.on_batch(batch)
    assert len(table[oid.encode()]["steps"]) == 1


async def test_a_saga_keeps_the_trace_id_of_its_events(tmp_path: Path) -> None:
    tracked, table = tracker(tmp_path)
    oid = str(uuid.uuid4())
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = message(envelope(oid, PlaceOrder(customer_id="c")), 0)
    traced.headers = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode())]
    await tracked.on_batch([traced])
    assert table[oid.encode()]["trace_id"] == trace_id


def events_counted(result: str) -> float:
    """The tracker's ``oms_events_total`` of ``result``, over every event type."""
    return sum(s.value for family in REGISTRY.collect() if family.name == "oms_events"
               for s in family.samples if s.name == "oms_events_total"
               and s.labels["service"] == "orchestrator" and s.labels["result"] == result)


async def test_every_record_it_receives_is_counted_once(tmp_path: Path) -> None:
    """``oms bench`` reads deliveries per order from this counter, as it does for the steps."""
    tracked, _ = tracker(tmp_path)
    tracked.dead_letters = fakes.DeadLetterTopic()  # type: ignore[assignment]
    oid = str(uuid.uuid4())
    placed = message(envelope(oid, PlaceOrder(customer_id="c")), 0)
    created = message(envelope(oid, OrderCreated(amount_cents=500)), 1)  # sent without header
    garbage = Message("oms.order-events", 0, 2, 0.0, 0, [], oid.encode(), b"\xff", None)
    counted = {result: events_counted(result) for result in ("recorded", "ignored", "dead_letter")}
    await tracked.on_batch([placed, created, garbage])
    await tracked.on_batch([placed])  # redelivered: received, so counted again
    assert events_counted("recorded") - counted["recorded"] == 2
    assert events_counted("ignored") - counted["ignored"] == 1
    assert events_counted("dead_letter") - counted["dead_letter"] == 1
