"""``scripts/bench_breakdown.py``: the stages of a hop, from inbox and outbox stamps."""

from __future__ import annotations

import uuid

from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import Envelope, InventoryReserved, OrderCreated
from scripts.bench_breakdown import Stamps, add_outbox, hops


def row(event: Envelope, created: float, written: float | None) -> dict:
    return {"value": encode(event), "c": created, "w": written}


def test_each_hop_splits_into_the_consuming_step_and_the_wait_before_it() -> None:
    order_id = str(uuid.uuid4())
    created = new_envelope(order_id, OrderCreated(), producer="orders")
    reserved = new_envelope(order_id, InventoryReserved(), producer="inventory")
    stamps = Stamps()
    # orders' step started at 100.000 and wrote OrderCreated at .004
    add_outbox(stamps, "orders", [row(created, 100.000, 100.004)])
    # inventory's step started at .030 (claiming OrderCreated) and wrote its reply at .036
    add_outbox(stamps, "inventory", [row(reserved, 100.030, 100.036)])
    stamps.received = {created.event_id: [("inventory", 100.030)],
                       reserved.event_id: [("payments", 100.060)]}

    found = hops(stamps)

    assert found["orders:OrderCreated -> inventory"] == {
        "n": 1, "step_ms": 6.0, "step_n": 1, "relay_broker_and_batch_ms": 26.0,
        "hop_ms": 30.0, "hop_p95_ms": 30.0}
    # payments emitted nothing in this run: its step cannot be timed, the rest can
    assert found["inventory:InventoryReserved -> payments"] == {
        "n": 1, "step_ms": None, "step_n": 0, "relay_broker_and_batch_ms": 24.0,
        "hop_ms": 30.0, "hop_p95_ms": 30.0}


def test_rows_from_before_the_written_at_stamp_count_only_in_the_whole_hop() -> None:
    order_id = str(uuid.uuid4())
    created = new_envelope(order_id, OrderCreated(), producer="orders")
    stamps = Stamps()
    add_outbox(stamps, "orders", [row(created, 100.0, None)])
    stamps.received = {created.event_id: [("inventory", 100.03)]}
    [hop] = hops(stamps).values()
    assert hop["relay_broker_and_batch_ms"] is None and hop["hop_ms"] == 30.0
    assert stamps.step_end == {}


def test_a_batch_step_ends_at_its_last_outbox_insert() -> None:
    order_id = str(uuid.uuid4())
    stamps = Stamps()
    add_outbox(stamps, "inventory", [
        row(new_envelope(order_id, InventoryReserved(), producer="inventory"), 5.0, 5.002),
        row(new_envelope(order_id, InventoryReserved(), producer="inventory"), 5.0, 5.004)])
    assert stamps.step_end == {("inventory", 5.0): 5.004}
