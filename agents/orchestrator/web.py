"""The tracker web views: sagas by id (routed to their owner), counts, in-flight, stuck, dashboard.

Every list view covers the sagas of the partitions this worker owns (the
table is partitioned like its source topics); ``/sagas/{order_id}/`` is routed
by Faust to the worker that owns the key, so it answers from any worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faust.types import AppT
from faust.web import Request, Response, View

from agents.orchestrator.saga import Saga
from agents.orchestrator.table import SagaTracker

DASHBOARD = Path(__file__).with_name("dashboard.html")
DEFAULT_LIMIT = 20
MAX_LIMIT = 500
SCOPE = "this worker's partitions"


def iso(ms: int) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (None for 0, 'not yet')."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat() if ms else None


def saga_json(saga: Saga, now_ms: int) -> dict[str, Any]:
    """A saga with readable timestamps and its age; steps in the order they were seen."""
    data = saga.as_dict()
    data.update(placed_at=iso(saga.placed_at_ms), started_at=iso(saga.started_at_ms),
                deadline=iso(saga.deadline_ms), finished_at=iso(saga.finished_at_ms),
                age_ms=now_ms - first_seen(saga),
                overdue_ms=max(0, now_ms - saga.deadline_ms) if not saga.finished else 0)
    data["steps"] = [{**step, "at": iso(step.get("at_ms", 0))} for step in saga.steps]
    return data


def first_seen(saga: Saga) -> int:
    """When the tracker first saw the saga (its own clock; placement for rows from before)."""
    return saga.started_at_ms or saga.placed_at_ms


def select(sagas: Iterable[Saga], keep: Callable[[Saga], bool], order: Callable[[Saga], int],
           limit: int) -> list[Saga]:
    """The first ``limit`` sagas that ``keep`` accepts, sorted by ``order``."""
    return sorted((s for s in sagas if keep(s)), key=order)[:limit]


def limit_of(request: Request) -> int:
    """``?limit=N`` clamped to 1..MAX_LIMIT; ValueError for a non-number."""
    return max(1, min(int(request.query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT))


def add_tracker_views(app: AppT, tracker: SagaTracker) -> None:
    """Register the ``/sagas/...`` JSON views and the ``/dashboard/`` page."""

    def listing(view: View, request: Request, keep: Callable[[Saga], bool],
                order: Callable[[Saga], int], sagas: Callable[[], list[Saga]]) -> Response:
        try:
            limit = limit_of(request)
        except ValueError:
            return view.json({"error": "limit: not an integer"}, status=400)
        now = int(time.time() * 1000)
        found = select(sagas(), keep, order, limit)
        return view.json({"sagas": [saga_json(s, now) for s in found], "limit": limit,
                          "scope": SCOPE, "now": iso(now)})

    @app.page("/sagas/")
    class SagaCounts(View):
        """Counts by status, and what ``oms check --tracker-url`` needs to judge the view.

        ``partitions`` are the ones this worker owns (every partition must be
        owned by exactly one worker); ``settled`` is false while a rebalance or
        the table's recovery is deciding them; ``overdue`` lists the running
        sagas past their deadline.
        """

        async def get(self, request: Request) -> Response:
            counts = tracker.counts()
            now = int(time.time() * 1000)
            overdue = [{"order_id": s.order_id, "overdue_ms": now - s.deadline_ms}
                       for s in tracker.running_sagas() if now > s.deadline_ms]
            return self.json({"counts": counts, "total": sum(counts.values()), "scope": SCOPE,
                              "partitions": tracker.owned_partitions(),
                              "settled": tracker.settled(), "overdue": overdue, "now": iso(now)})

    @app.page("/sagas/in-flight/")
    class InFlight(View):
        """Running sagas, oldest first: the ones an operator looks at first."""

        async def get(self, request: Request) -> Response:
            return listing(self, request, lambda s: True, first_seen, tracker.running_sagas)

    @app.page("/sagas/stuck/")
    class Stuck(View):
        """Running sagas past their deadline (the tracker is cancelling them, or failed to)."""

        async def get(self, request: Request) -> Response:
            now = int(time.time() * 1000)
            return listing(self, request, lambda s: now > s.deadline_ms,
                           lambda s: s.deadline_ms, tracker.running_sagas)

    @app.page("/sagas/recent/")
    class Recent(View):
        """Most recently updated sagas first (the dashboard's table)."""

        async def get(self, request: Request) -> Response:
            return listing(self, request, lambda s: True, lambda s: -s.updated_at_ms,
                           tracker.owned_sagas)

    @app.page("/sagas/{order_id}/")
    @app.table_route(table=tracker.sagas, match_info="order_id")
    async def saga(web: View, request: Request, order_id: str) -> Response:
        found = tracker.saga(order_id)
        if found is None:
            return web.json({"error": "saga not found", "order_id": order_id}, status=404)
        return web.json(saga_json(found, int(time.time() * 1000)))

    @app.page("/dashboard/")
    class Dashboard(View):
        """A self-contained HTML page that polls the JSON views above."""

        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD.read_text(encoding="utf-8"))
