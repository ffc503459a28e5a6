"""The tracker's pure transition, without Kafka."""

from __future__ import annotations

import pytest

from agents.orchestrator.saga import (
    CANCELLED,
    CONFIRMED,
    MAX_STEPS,
    REASON_LABELS,
    RUNNING,
    InvalidSagaEvent,
    e2e_ms,
    expired,
    outcome_labels,
    overdue,
    transition,
)
from schemas.codec import new_envelope
from schemas.oms_pb2 import (
    CancelRejected,
    InventoryReserved,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    PlaceOrder,
    SagaTimedOut,
)

OID = "6f1c1c3e-8a6b-4d59-9d0a-2a0b5a1c9e10"
TIMEOUT = 30_000
TRACE = "0af7651916cd43dd8448eb211c80319c"


def env(body, placed_at_ms: int = 1_000):
    return new_envelope(OID, body, producer="t", placed_at_ms=placed_at_ms)


def test_first_event_starts_a_running_saga_with_deadline_from_first_seen() -> None:
    saga, commands = transition(None, env(OrderCreated()), now_ms=5_000, timeout_ms=TIMEOUT)
    assert saga.status == RUNNING and commands == []
    assert saga.started_at_ms == 5_000 and saga.deadline_ms == 5_000 + TIMEOUT
    assert saga.placed_at_ms == 1_000  # the client's word, kept for information
    assert [s["type"] for s in saga.steps] == ["OrderCreated"]


@pytest.mark.parametrize("skew_ms", [-3_600_000, 86_400_000, -1_000 + 1])
def test_a_skewed_client_clock_moves_neither_the_deadline_nor_the_latency_far(
    skew_ms: int,
) -> None:
    """placed_at_ms comes from the client: an hour behind, a day ahead, or the epoch."""
    now = 1_700_000_000_000
    saga, _ = transition(None, env(OrderCreated(), placed_at_ms=now + skew_ms), now, TIMEOUT)
    assert saga.deadline_ms == now + TIMEOUT
    assert not overdue(saga, now + TIMEOUT) and overdue(saga, now + TIMEOUT + 1)
    saga, _ = transition(saga, env(OrderConfirmed()), now + 2_000, TIMEOUT)
    assert 2_000 <= e2e_ms(saga, TIMEOUT) <= 2_000 + TIMEOUT


def test_confirmed_and_cancelled_are_terminal_and_first_wins() -> None:
    saga, _ = transition(None, env(OrderCreated()), 2_000, TIMEOUT)
    saga, _ = transition(saga, env(OrderConfirmed()), 3_000, TIMEOUT)
    saga, _ = transition(saga, env(OrderCancelled(reason="late")), 4_000, TIMEOUT)
    assert saga.status == CONFIRMED and saga.finished_at_ms == 3_000


def test_redelivered_event_is_recorded_once() -> None:
    event = env(InventoryReserved())
    saga, _ = transition(None, event, 2_000, TIMEOUT)
    saga, _ = transition(saga, event, 2_500, TIMEOUT)
    assert len(saga.steps) == 1


def test_every_timeout_of_a_running_saga_sends_the_same_cancel_again() -> None:
    """A CancelOrder can be lost: the tracker keeps at it until the order has ended."""
    saga, _ = transition(None, env(OrderCreated()), 2_000, TIMEOUT)
    assert overdue(saga, 2_000 + TIMEOUT + 1)
    saga, commands = transition(saga, env(SagaTimedOut()), 40_000, TIMEOUT)
    again, more = transition(saga, env(SagaTimedOut()), 45_000, TIMEOUT)
    assert [c.type for c in commands] == [c.type for c in more] == ["CancelOrder"]
    assert commands[0].event_id == more[0].event_id  # orders' inbox absorbs the repeats
    assert again.timed_out and overdue(again, 50_000)  # still running: the timer resends


def test_a_rejected_cancel_closes_the_saga_with_the_orders_own_status() -> None:
    """The order ended before the cancel reached it (and the tracker missed that event)."""
    saga, _ = transition(None, env(SagaTimedOut()), 40_000, TIMEOUT)
    saga, commands = transition(saga, env(CancelRejected(status="CONFIRMED")), 41_000, TIMEOUT)
    assert saga.status == CONFIRMED and commands == [] and not overdue(saga, 90_000)


def test_a_rejected_cancel_with_an_unknown_status_is_invalid() -> None:
    saga, _ = transition(None, env(SagaTimedOut()), 40_000, TIMEOUT)
    with pytest.raises(InvalidSagaEvent, match="status"):
        transition(saga, env(CancelRejected(status="PENDING")), 41_000, TIMEOUT)


def test_cancel_command_id_is_stable_so_resends_are_absorbed() -> None:
    a, first = transition(None, env(SagaTimedOut()), 40_000, TIMEOUT)
    b, second = transition(None, env(SagaTimedOut()), 41_000, TIMEOUT)
    assert first[0].event_id == second[0].event_id


def test_timeout_after_finish_sends_nothing() -> None:
    saga, _ = transition(None, env(OrderCancelled(reason="x")), 2_000, TIMEOUT)
    saga, commands = transition(saga, env(SagaTimedOut()), 40_000, TIMEOUT)
    assert commands == [] and saga.status == CANCELLED


def test_steps_are_bounded_under_a_storm() -> None:
    saga = None
    for i in range(MAX_STEPS + 10):
        saga, _ = transition(saga, env(PaymentCompleted()), 2_000 + i, TIMEOUT)
    assert saga is not None and len(saga.steps) == MAX_STEPS


def test_finished_sagas_expire_after_retention() -> None:
    saga, _ = transition(None, env(OrderConfirmed()), 2_000, TIMEOUT)
    assert not expired(saga.as_dict(), 2_000 + 500, retention_ms=1_000)
    assert expired(saga.as_dict(), 2_000 + 1_001, retention_ms=1_000)


@pytest.mark.parametrize(("body", "labels"), [
    (OrderConfirmed(), ("confirmed", "none")),
    (OrderCancelled(reason="out of stock: SKU-0001, SKU-0002"), ("cancelled", "out of stock")),
    (OrderCancelled(reason="unknown sku: NOPE"), ("cancelled", "unknown sku")),
    (OrderCancelled(reason="payment failed: card declined"), ("cancelled", "payment failed")),
    (OrderCancelled(reason="saga timed out"), ("cancelled", "timeout")),
    (OrderCancelled(reason="cancelled by operator"), ("cancelled", "cancelled by operator")),
    (OrderCancelled(reason="changed my mind, order 4711"), ("cancelled", "other")),
    (OrderCancelled(reason="x" * 10_000), ("cancelled", "other")),
])
def test_outcome_labels_come_from_a_closed_set(body, labels: tuple[str, str]) -> None:
    """A CancelOrder's reason is client text: it must not become a metric label."""
    saga, _ = transition(None, env(body), 2_000, TIMEOUT)
    assert outcome_labels(saga) == labels
    assert labels[1] in REASON_LABELS


def test_a_timed_out_saga_is_labelled_timeout_whatever_the_cancel_says() -> None:
    saga, _ = transition(None, env(SagaTimedOut()), 40_000, TIMEOUT)
    saga, _ = transition(saga, env(OrderCancelled(reason="cancelled")), 41_000, TIMEOUT)
    assert outcome_labels(saga) == ("cancelled", "timeout")


def test_the_saga_records_its_customer_from_the_order() -> None:
    """The console searches by customer: PlaceOrder and OrderCreated both carry it."""
    saga, _ = transition(None, env(InventoryReserved()), 5_000, TIMEOUT)
    assert saga.customer_id == ""  # not known yet: a cross-topic event came first
    saga, _ = transition(saga, env(OrderCreated(customer_id="c-42")), 5_001, TIMEOUT)
    assert saga.customer_id == "c-42"
    saga, _ = transition(saga, env(PlaceOrder(customer_id="c-other")), 5_002, TIMEOUT)
    assert saga.customer_id == "c-42"  # the first one seen stays


def test_the_saga_records_the_trace_of_the_first_event_that_has_one() -> None:
    saga, _ = transition(None, env(OrderCreated()), 5_000, TIMEOUT)
    assert saga.trace_id == ""  # tracing off where the event came from
    saga, _ = transition(saga, env(InventoryReserved()), 5_001, TIMEOUT, trace_id=TRACE)
    saga, _ = transition(saga, env(PaymentCompleted()), 5_002, TIMEOUT, trace_id="f" * 32)
    assert saga.trace_id == TRACE
