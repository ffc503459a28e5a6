"""The saga tracker's logic as a pure transition: ``(state, event) -> (state, commands)``.

No Kafka and no clock inside: the tracker agent feeds events and the current
time in, stores the returned state in its Faust table and sends the commands.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypedDict, get_origin, get_type_hints

from schemas.codec import deterministic_id, new_envelope
from schemas.oms_pb2 import CancelOrder, Envelope

RUNNING, CONFIRMED, CANCELLED = "RUNNING", "CONFIRMED", "CANCELLED"
FINISHED = (CONFIRMED, CANCELLED)
STATUSES = (RUNNING, *FINISHED)
MAX_STEPS = 32  # a duplicate storm must not grow a saga's row without bound
PRODUCER = "orchestrator"
TIMEOUT_REASON = "saga timed out"
REASON_LABELS = ("none", "timeout", "out of stock", "unknown sku", "payment failed",
                 "cancelled by operator", "other")
"""Every value the ``reason`` label of ``oms_saga_outcomes`` can take."""


class Step(TypedDict):
    """One event of a saga, as recorded in its row."""

    type: str
    at_ms: int
    producer: str
    event_id: str


class InvalidSagaEvent(ValueError):
    """An event the tracker cannot apply; ``str(err)`` is the dead-letter reason."""


class UnreadableSaga(ValueError):
    """A table row that cannot be read as a :class:`Saga`; ``str(err)`` says why."""


@dataclass
class Saga:
    """One order's saga as stored in the tracker's table.

    The fields are recorded in ``saga.lock.json`` (:mod:`agents.orchestrator.ledger`):
    rows outlive the code that wrote them, so a field is never renamed or
    retyped, and one added later has a default.
    """

    order_id: str
    status: str
    placed_at_ms: int
    """When the client says it placed the order (its clock): for information only."""
    deadline_ms: int
    """When the tracker cancels a saga still running: first seen + timeout, on its own clock."""
    updated_at_ms: int
    finished_at_ms: int = 0
    timed_out: bool = False
    reason: str = ""
    steps: list[Step] = field(default_factory=list)
    started_at_ms: int = 0
    """When the tracker first saw the saga, on its own clock (0: rows from before the field)."""
    customer_id: str = ""
    """Whose order it is, from ``PlaceOrder`` or ``OrderCreated`` ('' until one is seen)."""
    trace_id: str = ""
    """The order's trace (32 hex digits), from the first event that carried one."""

    @classmethod
    def from_dict(cls, data: Any) -> Saga:
        """Read a table row, whichever tracker version wrote it.

        Fields this version does not know are ignored and missing fields with a
        default take it; a missing required field, a value of the wrong type or
        an unknown status raise :class:`UnreadableSaga`.
        """
        if not isinstance(data, dict):
            raise UnreadableSaga(f"not a mapping: {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, (kind, required) in _FIELDS.items():
            if name not in data:
                if required:
                    raise UnreadableSaga(f"{name}: missing")
                continue
            value = data[name]
            if not isinstance(value, kind):
                raise UnreadableSaga(f"{name}: {type(value).__name__}, not {kind.__name__}")
            values[name] = value
        if values["status"] not in STATUSES:
            raise UnreadableSaga(f"status: unknown {values['status']!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The table value (a shallow copy: ``asdict`` deep-copies every step, per event)."""
        return {**self.__dict__, "steps": list(self.steps)}

    @property
    def finished(self) -> bool:
        return self.status != RUNNING


def record_fields(record: type) -> dict[str, tuple[Any, bool]]:
    """Each field of a dataclass or TypedDict: its type hint, and whether a row must have it."""
    hints = get_type_hints(record)
    if not hasattr(record, "__dataclass_fields__"):
        return {name: (hint, True) for name, hint in hints.items()}  # a total TypedDict
    return {f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(record)}


_FIELDS: dict[str, tuple[type, bool]] = {
    name: (get_origin(hint) or hint, required) for name, (hint, required)
    in record_fields(Saga).items()
}
"""What :meth:`Saga.from_dict` checks: each field's stored type, and whether it is required."""


def start(envelope: Envelope, now_ms: int, timeout_ms: int) -> Saga:
    """A new saga, first seen through ``envelope``; its deadline counts from now.

    ``placed_at_ms`` is the client's clock, carried forward by every service:
    a skewed or hostile client would otherwise have its order cancelled on
    arrival (a clock behind) or never (ahead). Deadlines use the tracker's clock.
    """
    return Saga(envelope.order_id, RUNNING, envelope.placed_at_ms or now_ms,
                now_ms + timeout_ms, now_ms, started_at_ms=now_ms)


def transition(
    saga: Saga | None, envelope: Envelope, now_ms: int, timeout_ms: int, trace_id: str = ""
) -> tuple[Saga, list[Envelope]]:
    """Record ``envelope`` in the saga; return the new state and commands to send.

    A finished saga stays finished. Every ``SagaTimedOut`` of a running saga
    (the timer repeats it until the saga ends) sends the same ``CancelOrder``:
    a lost one is sent again, and the orders inbox absorbs the repeats. The
    orders service answers a cancel of an order that had ended already with
    ``CancelRejected``, which closes the saga with the order's own status.
    ``trace_id`` is the trace the event's record carried (its ``traceparent``).
    """
    if envelope.type == "CancelRejected" and envelope.cancel_rejected.status not in FINISHED:
        raise InvalidSagaEvent(f"CancelRejected.status: {envelope.cancel_rejected.status!r}"
                               f" is not one of {', '.join(FINISHED)}")
    saga = saga or start(envelope, now_ms, timeout_ms)
    if any(step.get("event_id") == envelope.event_id for step in saga.steps):
        return saga, []  # redelivered
    if len(saga.steps) < MAX_STEPS:
        saga.steps.append({
            "type": envelope.type, "at_ms": envelope.occurred_at_ms or now_ms,
            "producer": envelope.producer, "event_id": envelope.event_id,
        })
    saga.updated_at_ms = now_ms
    saga.customer_id = saga.customer_id or _customer_of(envelope)
    saga.trace_id = saga.trace_id or trace_id
    if saga.finished:
        return saga, []
    if envelope.type == "OrderConfirmed":
        _finish(saga, CONFIRMED, "", now_ms)
    elif envelope.type == "OrderCancelled":
        _finish(saga, CANCELLED, envelope.order_cancelled.reason, now_ms)
    elif envelope.type == "CancelRejected":
        body = envelope.cancel_rejected
        _finish(saga, body.status, body.reason, now_ms)
    elif envelope.type == "SagaTimedOut":
        saga.timed_out = True
        return saga, [cancel_command(saga.order_id, envelope)]
    return saga, []


def _customer_of(envelope: Envelope) -> str:
    """The customer an event names: only the order's first two messages carry it."""
    if envelope.type == "PlaceOrder":
        return envelope.place_order.customer_id
    if envelope.type == "OrderCreated":
        return envelope.order_created.customer_id
    return ""


def _finish(saga: Saga, status: str, reason: str, now_ms: int) -> None:
    saga.status, saga.reason, saga.finished_at_ms = status, reason, now_ms


def cancel_command(order_id: str, cause: Envelope) -> Envelope:
    """The CancelOrder for a saga past its deadline; one id per order, so resends are no-ops."""
    body = CancelOrder(reason=TIMEOUT_REASON)
    return new_envelope(order_id, body, producer=PRODUCER, cause=cause,
                        event_id=deterministic_id(order_id, "saga-timeout"))


def outcome_labels(saga: Saga) -> tuple[str, str]:
    """A finished saga's ``(outcome, reason)`` metric labels, each from a closed set.

    A cancel's reason can be a client's free text (``CancelOrder.reason``); as
    a label every distinct text would be a new time series, so the reason is
    reduced to its class (the text before the first colon) when that class is
    in :data:`REASON_LABELS`, and to ``other`` when not.
    """
    outcome = saga.status.lower()
    if saga.status == CONFIRMED:
        return outcome, "none"
    if saga.timed_out or saga.reason == TIMEOUT_REASON:
        return outcome, "timeout"
    if not saga.reason:
        return outcome, "none"
    kind = saga.reason.split(":", 1)[0]
    return outcome, kind if kind in REASON_LABELS else "other"


def overdue(saga: Saga, now_ms: int) -> bool:
    """Running past its deadline: to be timed out (again, until it ends)."""
    return not saga.finished and now_ms > saga.deadline_ms


def finished_row(row: Any) -> bool:
    """A stored row of a finished saga (the timer's fast path: no :class:`Saga` built)."""
    return isinstance(row, dict) and row.get("status") in FINISHED


def expired(row: dict[str, Any], now_ms: int, retention_ms: int) -> bool:
    """A finished saga's row whose steps can go: finished ``retention_ms`` ago, steps kept.

    It takes the stored row rather than a :class:`Saga`: the timer checks every
    row every second, and most are finished sagas it only needs to skip.
    """
    return bool(row.get("steps")) and _finished_for(row, now_ms) > retention_ms


def forgettable(row: dict[str, Any], now_ms: int, memory_ms: int) -> bool:
    """A finished saga's row that can go altogether: finished ``memory_ms`` ago.

    Until then a late event for the order finds its saga finished. After it,
    one starts a new saga, which its deadline closes (orders answers the
    cancel with the order's status).
    """
    return _finished_for(row, now_ms) > memory_ms


def without_steps(row: dict[str, Any]) -> dict[str, Any]:
    """A finished saga's row as remembered after the retention: everything but its steps."""
    return {**row, "steps": []}


def _finished_for(row: dict[str, Any], now_ms: int) -> int:
    """How long ago a finished row's saga finished (-1 for a row that is not finished)."""
    if not finished_row(row):
        return -1
    return now_ms - (row.get("finished_at_ms") or row.get("updated_at_ms") or 0)


def e2e_ms(saga: Saga, timeout_ms: int) -> int:
    """Placement to finish, for the end-to-end latency histogram.

    Placement is the client's ``placed_at_ms``, clamped into the window the
    tracker can vouch for: not after it first saw the saga, and not more than
    one timeout before. A skewed client clock then gives neither a negative
    nor an absurd figure.
    """
    seen = saga.started_at_ms or saga.updated_at_ms
    placed = min(max(saga.placed_at_ms, seen - timeout_ms), seen)
    return max(saga.finished_at_ms - placed, 0)
