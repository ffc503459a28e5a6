"""A saga as the console shows it: readable times, a timeline with the gap before each step.

The timeline orders the steps by when they happened (``at_ms``, the
producer's clock) rather than by when the tracker read them: events of one
order arrive in order within a topic but not across topics. Each step
carries the gap since the one before, and the largest gap is marked, so the
slow hop of a slow saga is the first thing an operator sees.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.orchestrator.saga import Saga, Step
from agents.orchestrator.search import first_seen


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


def timeline(steps: list[Step]) -> list[dict[str, Any]]:
    """The steps in the order they happened, each with the gap since the previous one."""
    ordered = sorted(steps, key=lambda step: step.get("at_ms", 0))
    entries: list[dict[str, Any]] = []
    for i, step in enumerate(ordered):
        at_ms = step.get("at_ms", 0)
        entries.append({"service": step.get("producer", ""), "event": step.get("type", ""),
                        "at_ms": at_ms, "at": iso(at_ms),
                        "gap_ms": at_ms - ordered[i - 1].get("at_ms", 0) if i else None,
                        "since_first_ms": at_ms - ordered[0].get("at_ms", 0), "slowest": False})
    gaps = [e for e in entries if e["gap_ms"] is not None]
    if gaps:
        max(gaps, key=lambda e: e["gap_ms"])["slowest"] = True
    return entries


def trace_url(template: str, trace_id: str) -> str | None:
    """The tracing UI's page of the trace (``OMS_TRACE_UI_URL``), None without one."""
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", trace_id)
