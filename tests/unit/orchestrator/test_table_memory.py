"""A finished saga stays finished, even after the tracker has dropped its steps.

Late events keep arriving for finished sagas: a compensation after a slow
PSP, a re-driven dead letter, a replay, a client retrying its PlaceOrder.
The table here is a dict (the Faust table's changelog is not under test);
the events, the transitions and the timer are real.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from faust.types.tuples import Message

from agents.orchestrator.saga import CONFIRMED, Saga
from agents.orchestrator.table import SagaTracker, now_ms
from schemas.codec import encode
from schemas.oms_pb2 import Envelope, PaymentRefunded, PlaceOrder
from tests.helpers import envelope
from tests.unit.orchestrator import fakes

RETENTION_S, MEMORY_S = 60.0, 3600.0


def message(event: Envelope) -> Message:
    return Message("oms.order-commands", 0, 0, 0.0, 0, [], event.order_id.encode(),
                   encode(event), None)


def tracker(tmp_path: Path, rows: dict[bytes, Any]) -> SagaTracker:
    return fakes.tracker(tmp_path, rows, saga_retention_s=RETENTION_S, saga_memory_s=MEMORY_S)


def confirmed(oid: str, finished_s_ago: float) -> dict[str, Any]:
    finished = now_ms() - int(finished_s_ago * 1000)
    saga = Saga(oid, CONFIRMED, finished - 900, finished + 30_000, finished, finished,
                steps=[{"type": "OrderConfirmed", "at_ms": finished, "producer": "orders",
                        "event_id": str(uuid.uuid4())}], started_at_ms=finished - 900)
    return saga.as_dict()


async def test_a_late_event_after_the_retention_finds_the_saga_finished(tmp_path: Path) -> None:
    oid = str(uuid.uuid4())
    tracked = tracker(tmp_path, {oid.encode(): confirmed(oid, finished_s_ago=RETENTION_S + 1)})
    rows = fakes.table(tracked)
    await tracked.tick()
    kept = rows[oid.encode()]
    assert kept["status"] == CONFIRMED and kept["steps"] == []  # remembered, steps dropped

    for late in (PlaceOrder(customer_id="retry"), PaymentRefunded(charge_id="late")):
        await tracked.on_batch([message(envelope(oid, late))])
        assert rows[oid.encode()]["status"] == CONFIRMED, late.DESCRIPTOR.name


async def test_a_finished_saga_is_forgotten_after_the_memory(tmp_path: Path) -> None:
    oid, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    tracked = tracker(tmp_path, {oid.encode(): confirmed(oid, finished_s_ago=MEMORY_S + 1),
                                 fresh.encode(): confirmed(fresh, finished_s_ago=1)})
    await tracked.tick()
    rows = fakes.table(tracked)
    assert list(rows) == [fresh.encode()] and rows[fresh.encode()]["steps"]
