"""The tracker's web views: the operator console's JSON and page.

Every list and count answers for the whole cluster by default: this worker
asks the others for their partitions' part (:mod:`agents.orchestrator.cluster`)
and the answer's ``coverage`` says which partitions it covers and which
worker did not answer. ``?scope=local`` answers for this worker's partitions
only: what the other workers ask, and what ``oms check`` inspects worker by
worker. ``/sagas/{order_id}/`` is routed by Faust to the worker that owns the
key, so it answers from any worker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka.errors import KafkaError
from faust.types import AppT
from faust.web import Request, Response, View

from agents.http import authorized
from agents.messaging import kafka
from agents.observability import metrics
from agents.orchestrator.cluster import CLUSTER, LOCAL, Body, Cluster, coverage, worker_status
from agents.orchestrator.history import SAMPLE_S, History, summarise
from agents.orchestrator.saga import RUNNING
from agents.orchestrator.search import BadQuery, Query, merge_pages
from agents.orchestrator.service_events import Services
from agents.orchestrator.table import SagaTracker
from agents.orchestrator.timeline import iso, saga_json, timeline_json
from config import Settings
from config.settings import DATABASE_SERVICES
from schemas.codec import deterministic_id, new_envelope
from schemas.oms_pb2 import CancelOrder

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).with_name("dashboard.html")
LOCAL_SCOPE = "this worker's partitions"
OVERDUE_SHOWN = 100
"""Overdue sagas a cluster-wide count lists at most (``stuck`` counts them all)."""
OPERATOR_CANCEL = "cancelled by operator"
PRESETS = {
    "/sagas/search/": Query(),
    "/sagas/in-flight/": Query(statuses=frozenset({RUNNING}), sort="oldest"),
    "/sagas/stuck/": Query(stuck=True, sort="oldest"),
    "/sagas/recent/": Query(sort="updated"),
}
"""Each list view and the query it starts from (the request's parameters refine it)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def scope_of(request: Request) -> str:
    """``?scope=``: cluster (the default) or local; BadQuery for anything else."""
    scope = request.query.get("scope") or CLUSTER
    if scope not in (CLUSTER, LOCAL):
        raise BadQuery(f"scope: {CLUSTER} or {LOCAL}, got {scope!r}")
    return scope


def add_tracker_views(app: AppT, tracker: SagaTracker, settings: Settings) -> None:
    """Register the ``/sagas/...`` views, the saga cancel action and the ``/dashboard/`` page."""
    cluster = Cluster.of(app, tracker.sagas, settings.console_peer_timeout_s)
    history = History()

    async def sample_history() -> None:
        history.sample()

    app.timer(interval=SAMPLE_S, name="oms-orchestrator.console_history")(sample_history)

    def status() -> Body:
        return worker_status(app, tracker.owned_partitions())

    async def answer(view: View, request: Request, local: Callable[[], Body],
                     merge: Callable[[list[Body]], Body]) -> Response:
        """This worker's answer, or the cluster's with its coverage; 400 for a bad parameter."""
        try:
            if scope_of(request) == LOCAL:
                return view.json(local())
            params = {k: v for k, v in request.query.items() if k != "scope"}
            answers = await cluster.gather(request.url.path, params, local)
        except BadQuery as exc:
            return view.json({"error": str(exc)}, status=400)
        body = merge([a.body for a in answers if a.body is not None])
        return view.json({**body, "scope": CLUSTER, "now": iso(now_ms()),
                          "coverage": coverage(answers, settings.partitions)})

    def local_counts() -> Body:
        by_partition, now = tracker.counts_by_partition(), now_ms()
        counts: dict[str, int] = {}
        for of_partition in by_partition.values():
            for state, n in of_partition.items():
                counts[state] = counts.get(state, 0) + n
        overdue = [{"order_id": s.order_id, "overdue_ms": now - s.deadline_ms}
                   for s in tracker.running_sagas() if now > s.deadline_ms]
        return {"counts": counts, "total": sum(counts.values()), "scope": LOCAL_SCOPE,
                "partitions": tracker.owned_partitions(), "settled": tracker.settled(),
                "overdue": overdue, "now": iso(now), "worker": status(),
                "by_partition": {str(p): c for p, c in by_partition.items()}}

    @app.page("/sagas/")
    class SagaCounts(View):
        """Counts by status: the cluster's (each partition counted once), or this worker's.

        The local answer is what ``oms check --tracker-url`` judges: the
        partitions this worker owns (every partition must be owned by exactly
        one worker), ``settled`` (false while a rebalance or the table's
        recovery is deciding them) and the running sagas past their deadline.
        """

        async def get(self, request: Request) -> Response:
            return await answer(self, request, local_counts, merge_counts)

    def list_view(path: str) -> None:
        preset = PRESETS[path]

        def local(query: Query) -> Body:
            now = now_ms()
            rows, more = query.page(tracker.owned_rows(), now)
            sagas = [saga_json(s, now, settings.trace_ui_url)
                     for row in rows if (s := tracker.read_row(dict(row))) is not None]
            return {"sagas": sagas, "more": more, "limit": query.limit, "scope": LOCAL_SCOPE,
                    "next": query.cursor_of(sagas[-1]) if more and sagas else None,
                    "now": iso(now), "worker": status()}

        @app.page(path)
        class Sagas(View):
            async def get(self, request: Request) -> Response:
                try:
                    query = Query.parse(dict(request.query), preset)
                except BadQuery as exc:
                    return self.json({"error": str(exc)}, status=400)
                return await answer(self, request, lambda: local(query),
                                    lambda bodies: merge_lists(query, bodies))

    for path in PRESETS:  # before /sagas/{order_id}/, or aiohttp takes "search" for an id
        list_view(path)

    @app.page("/sagas/throughput/")
    class Throughput(View):
        """Sagas finished per minute, per second, p50 and p99, over the last ten minutes."""

        async def get(self, request: Request) -> Response:
            return await answer(self, request, lambda: {**history.minutes(), "worker": status()},
                                summarise)

    @app.page("/sagas/{order_id}/cancel/")
    class Cancel(View):
        """Send ``CancelOrder`` for a saga (the operator's; bearer token)."""

        async def post(self, request: Request, order_id: str) -> Response:
            if not authorized(request, settings):
                return self.json({"error": "bearer token required"}, status=401)
            try:
                canonical = str(uuid.UUID(order_id))
            except ValueError:
                return self.json({"error": "order_id: not a UUID"}, status=400)
            try:
                await send_cancel(app, tracker, canonical)
            except KafkaError as exc:
                metrics.TRACKER_SEND_FAILURES.labels("CancelOrder").inc()
                log.warning("operator cancel of %s not sent: %s", canonical, exc)
                return self.json({"error": f"the broker did not take the cancel: {exc}"},
                                 status=503)
            return self.json({"order_id": canonical, "status": "CANCEL_REQUESTED"}, status=202)

    @app.page("/sagas/{order_id}/")
    @app.table_route(table=tracker.sagas, match_info="order_id")
    async def saga(web: View, request: Request, order_id: str) -> Response:
        found = tracker.saga(order_id)
        if found is None:
            return web.json({"error": "saga not found", "order_id": order_id}, status=404)
        return web.json(saga_json(found, now_ms(), settings.trace_ui_url))

    services = Services({service: settings.service_url(service) for service in DATABASE_SERVICES},
                        lambda: app.http_client, settings.console_peer_timeout_s)

    @app.page("/sagas/{order_id}/timeline/")
    @app.table_route(table=tracker.sagas, match_info="order_id")
    async def saga_timeline(web: View, request: Request, order_id: str) -> Response:
        """Every hop of a saga: the tracker's steps and what each service's outbox holds.

        Routed by the raw id like the saga view, so only the canonical form
        (which picked the partition) is taken.
        """
        if (problem := canonical_problem(order_id)) is not None:
            return web.json({"error": problem, "order_id": order_id}, status=400)
        found = await services.events(order_id)
        saga = tracker.saga(order_id)
        if saga is None and not found.events:
            return web.json({"error": "saga not found", "order_id": order_id,
                             "sources": found.sources, "complete": found.complete}, status=404)
        return web.json(timeline_json(order_id, saga, found, now_ms(), settings.trace_ui_url))

    @app.page("/dashboard/")
    class Dashboard(View):
        """The operator console: a self-contained page that polls the JSON views above."""

        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD.read_text(encoding="utf-8"))


def canonical_problem(order_id: str) -> str | None:
    """Why ``order_id`` is not a canonical (lower-case, hyphenated) UUID, None when it is."""
    try:
        canonical = str(uuid.UUID(order_id))
    except ValueError:
        return "order_id: not a UUID"
    if canonical != order_id:
        return f"order_id: not canonical; ask for {canonical}"
    return None


async def send_cancel(app: AppT, tracker: SagaTracker, order_id: str) -> None:
    """The operator's ``CancelOrder``, with the orders view's event id: both applied once."""
    envelope = new_envelope(order_id, CancelOrder(reason=OPERATOR_CANCEL),
                            producer="orchestrator-console",
                            event_id=deterministic_id(order_id, "operator-cancel"))
    await kafka.send_envelope(kafka.faust_send(app), tracker.commands.get_topic_name(), envelope)


def merge_counts(bodies: list[Body]) -> Body:
    """The workers' counts as the cluster's: each partition counted once, overdue merged."""
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for body in bodies:
        for partition, of_partition in body.get("by_partition", {}).items():
            if partition in seen:  # claimed twice mid-rebalance: coverage says so
                continue
            seen.add(partition)
            for status, n in of_partition.items():
                counts[status] = counts.get(status, 0) + n
    overdue = {o["order_id"]: o for body in bodies for o in body.get("overdue", [])}
    ranked = sorted(overdue.values(), key=lambda o: -o["overdue_ms"])
    return {"counts": counts, "total": sum(counts.values()), "stuck": len(ranked),
            "overdue": ranked[:OVERDUE_SHOWN]}


def merge_lists(query: Query, bodies: list[Body]) -> Body:
    """The workers' pages as the cluster's page, and where the next one starts."""
    sagas, cursor = merge_pages(query, [(b.get("sagas", []), bool(b.get("more")))
                                        for b in bodies])
    return {"sagas": sagas, "next": cursor, "limit": query.limit, "query": query.params()}
