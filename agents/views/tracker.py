"""Tracker views: a saga by order id (routed to its owner), and counts by status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faust.types import AppT
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from agents.orchestrator import Tracker


def add_tracker_views(app: AppT, tracker: Tracker) -> None:
    """Register ``/sagas/`` and ``/sagas/{order_id}/``."""

    @app.page("/sagas/")
    class SagaCounts(View):
        async def get(self, request: Request) -> Response:
            return self.json({"counts": tracker.counts(), "scope": "this worker's partitions"})

    @app.page("/sagas/{order_id}/")
    @app.table_route(table=tracker.sagas, match_info="order_id")
    async def saga(web: View, request: Request, order_id: str) -> Response:
        found = tracker.saga(order_id)
        if found is None:
            return web.json({"error": "saga not found", "order_id": order_id}, status=404)
        return web.json(found.as_dict())
