"""A saga as the console shows it: readable times, a timeline with the gap before each step.

The timeline orders the steps by when they happened (``at_ms``, the
producer's clock) rather than by when the tracker read them: events of one
order arrive in order within a topic but not across topics. Each step
carries the gap since the one before, and the largest gap is marked, so the
slow hop of a slow saga is the first thing an operator sees.

The tracker reads only what its decisions need, so its own steps miss the
hops between the services; :func:`merge_events` adds what each service's
outbox says it emitted (:mod:`agents.orchestrator.service_events`), each event
once. Both carry the producer's ``occurred_at_ms``, so they line up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agents.orchestrator.saga import Saga
from agents.orchestrator.search import first_seen
from agents.orchestrator.service_events import ServiceEvents

PASSED_THROUGH = ("event_id", "topic", "written_at", "sent_at", "sources")
"""What :func:`timeline` keeps of a step besides its service, event and time."""


def iso(ms: int) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (None for 0, 'not yet')."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat() if ms else None


def saga_json(saga: Saga, now_ms: int, trace_ui_url: str = "") -> dict[str, Any]:
    """A saga with readable timestamps, its age, timeline and trace link."""
    data = saga.as_dict()
    data.update(placed_at=iso(saga.placed_at_ms), started_at=iso(saga.started_at_ms),
                deadline=iso(saga.deadline_ms), finished_at=iso(saga.finished_at_ms),
                age_ms=now_ms - first_seen(data),
                overdue_ms=max(0, now_ms - saga.deadline_ms) if not saga.finished else 0,
                trace_url=trace_url(trace_ui_url, saga.trace_id))
    data["steps"] = [{**step, "at": iso(step.get("at_ms", 0))} for step in saga.steps]
    data["timeline"] = timeline(saga.steps)
    return data


def timeline(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The steps in the order they happened, each with the gap since the previous one.

    What a merged step adds (its event id, topic, sources, when it was
    written and sent) is passed through.
    """
    ordered = sorted(steps, key=lambda step: step.get("at_ms", 0))
    entries: list[dict[str, Any]] = []
    for i, step in enumerate(ordered):
        at_ms = step.get("at_ms", 0)
        extras = {key: step[key] for key in PASSED_THROUGH if key in step}
        entries.append({**extras, "service": step.get("producer", ""),
                        "event": step.get("type", ""),
                        "at_ms": at_ms, "at": iso(at_ms),
                        "gap_ms": at_ms - ordered[i - 1].get("at_ms", 0) if i else None,
                        "since_first_ms": at_ms - ordered[0].get("at_ms", 0), "slowest": False})
    gaps = [e for e in entries if e["gap_ms"] is not None]
    if gaps:
        max(gaps, key=lambda e: e["gap_ms"])["slowest"] = True
    return entries


def merge_events(steps: Iterable[Mapping[str, Any]],
                 events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tracker's steps and the services' events as one list of steps, each event once.

    An event both report (``OrderConfirmed``: orders emitted it, the tracker
    read it) is one step, by its event id; ``sources`` says who reported it,
    and the service's record adds where it went and when it was sent.
    """
    merged: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(steps):
        merged[step.get("event_id") or f"tracker-{i}"] = {**step, "sources": ["tracker"]}
    for i, event in enumerate(events):
        service = str(event.get("service", ""))
        entry = merged.setdefault(event.get("event_id") or f"{service}-{i}", {
            "type": event.get("event", ""), "at_ms": event.get("at_ms", 0),
            "producer": service, "event_id": event.get("event_id", ""), "sources": []})
        entry.update({key: event[key] for key in ("topic", "written_at", "sent_at")
                      if key in event})
        entry["sources"].append(service)
    return list(merged.values())


def timeline_json(order_id: str, saga: Saga | None, found: ServiceEvents, now_ms: int,
                  trace_ui_url: str = "") -> dict[str, Any]:
    """A saga with the timeline of every hop: its own steps and what the services emitted.

    ``sources`` says which services answered (``ok`` or ``error: ...``), and
    ``complete`` is true only when all did. An order the tracker no longer
    (or not yet) holds still shows the services' events, with ``tracked`` false.
    """
    if saga is not None:
        data = saga_json(saga, now_ms, trace_ui_url)
    else:
        data = {"order_id": order_id, "status": None, "steps": [], "trace_id": "",
                "trace_url": None}
    data["timeline"] = timeline(merge_events(saga.steps if saga else [], found.events))
    data.update(tracked=saga is not None, sources=found.sources, complete=found.complete)
    return data


def trace_url(template: str, trace_id: str) -> str | None:
    """The tracing UI's page of the trace (``OMS_TRACE_UI_URL``), None without one."""
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", trace_id)
