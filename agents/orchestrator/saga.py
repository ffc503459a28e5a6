"""The saga tracker's logic as a pure transition: ``(state, event) -> (state, commands)``.

No Kafka and no clock inside: the tracker agent feeds events and the current
time in, stores the returned state in its Faust table and sends the commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.codec import deterministic_id, new_envelope
from schemas.oms_pb2 import CancelOrder, Envelope

RUNNING, CONFIRMED, CANCELLED = "RUNNING", "CONFIRMED", "CANCELLED"
MAX_STEPS = 32  # a duplicate storm must not grow a saga's row without bound
PRODUCER = "orchestrator"


@dataclass
class Saga:
    """One order's saga as stored in the tracker's table."""

    order_id: str
    status: str
    placed_at_ms: int
    deadline_ms: int
    updated_at_ms: int
    finished_at_ms: int = 0
    timed_out: bool = False
    reason: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Saga:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """The table value (a shallow copy: ``asdict`` deep-copies every step, per event)."""
        return {**self.__dict__, "steps": list(self.steps)}

    @property
    def finished(self) -> bool:
        return self.status != RUNNING


def start(envelope: Envelope, now_ms: int, timeout_ms: int) -> Saga:
    """A new saga, first seen through ``envelope``; its deadline counts from placement."""
    placed = envelope.placed_at_ms or now_ms
    return Saga(envelope.order_id, RUNNING, placed, placed + timeout_ms, now_ms)


def transition(
    saga: Saga | None, envelope: Envelope, now_ms: int, timeout_ms: int
) -> tuple[Saga, list[Envelope]]:
    """Record ``envelope`` in the saga; return the new state and commands to send."""
    saga = saga or start(envelope, now_ms, timeout_ms)
    if any(step["event_id"] == envelope.event_id for step in saga.steps):
        return saga, []  # redelivered
    if len(saga.steps) < MAX_STEPS:
        saga.steps.append({
            "type": envelope.type, "at_ms": envelope.occurred_at_ms or now_ms,
            "producer": envelope.producer, "event_id": envelope.event_id,
        })
    saga.updated_at_ms = now_ms
    commands: list[Envelope] = []
    if envelope.type == "OrderConfirmed" and not saga.finished:
        _finish(saga, CONFIRMED, "", now_ms)
    elif envelope.type == "OrderCancelled" and not saga.finished:
        _finish(saga, CANCELLED, envelope.order_cancelled.reason, now_ms)
    elif envelope.type == "SagaTimedOut" and not saga.finished and not saga.timed_out:
        saga.timed_out = True
        commands.append(cancel_command(saga.order_id, envelope))
    return saga, commands


def _finish(saga: Saga, status: str, reason: str, now_ms: int) -> None:
    saga.status, saga.reason, saga.finished_at_ms = status, reason, now_ms


def cancel_command(order_id: str, cause: Envelope) -> Envelope:
    """The CancelOrder for a saga past its deadline; its id is fixed so resends are no-ops."""
    body = CancelOrder(reason="saga timed out")
    return new_envelope(order_id, body, producer=PRODUCER, cause=cause,
                        event_id=deterministic_id(order_id, "saga-timeout"))


def overdue(saga: Saga, now_ms: int) -> bool:
    """Running past its deadline and not yet told to cancel."""
    return not saga.finished and not saga.timed_out and now_ms > saga.deadline_ms


def expired(row: dict[str, Any], now_ms: int, retention_ms: int) -> bool:
    """A table row finished long enough ago to drop (bounded memory).

    It takes the stored row rather than a :class:`Saga`: the timer checks every
    row every second, and most are finished sagas it only needs to skip.
    """
    return row["status"] != RUNNING and now_ms - row["finished_at_ms"] > retention_ms
