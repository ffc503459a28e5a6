"""The Faust app factory: every service's app, and the wiring of a database-backed one.

A service's own ``app.py`` calls :func:`service_app` (or, the tracker,
:func:`create_app`) with its entry of :mod:`agents.topology` and its business
step; everything around the step (the consumer loop, the relay, health,
metrics, tracing) is wired here the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncpg
import faust
from faust.types import StreamT

from agents.messaging import kafka
from agents.messaging.batching import take_batches
from agents.messaging.consumer import ServiceConsumer
from agents.messaging.events_view import add_history_views
from agents.messaging.unit_of_work import Handler
from agents.observability import metrics, tracing
from agents.observability.health import add_health_views
from agents.topology import Service
from config import Settings
from schemas.codec import event_types
from schemas.oms_pb2 import Envelope


def create_app(
    service: str, settings: Settings, *, fetch_max_wait_ms: int | None = None,
    handles: frozenset[str] = frozenset(),
) -> faust.App:
    """A Faust app with the OMS defaults: its own consumer group, web port and /metrics.

    ``fetch_max_wait_ms`` (default ``settings.fetch_max_wait_ms``) is the
    consumer's long-poll; on Tansu it is also the time every fetch takes.
    ``handles`` are the envelope types its agent acts on: the transport skips
    records of the others by their type header (empty: deliver everything).
    """
    datadir = Path(settings.data_dir) / "faust" / service
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id(service),
        broker=kafka.faust_broker(settings),
        broker_credentials=kafka.faust_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.table_standby_replicas,
        recovery_consistency_check=settings.table_consistency_check,
        web_host=settings.web_host,
        web_bind=settings.web_bind or settings.web_host,
        web_port=settings.web_port(service),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=1,
        stream_wait_empty=False,
        datadir=str(datadir),
    )
    if fetch_max_wait_ms is None:
        fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.fetch_max_wait_ms = fetch_max_wait_ms  # type: ignore[attr-defined]
    app.fetch_idle_wait_ms = settings.fetch_idle_wait_ms  # type: ignore[attr-defined]
    app.fetch_idle_after_s = settings.fetch_idle_after_s  # type: ignore[attr-defined]
    app.oms_skips = frozenset(  # type: ignore[attr-defined]
        t.encode() for t in event_types() - handles) if handles else frozenset()
    metrics.install_faust_sensor(app)
    metrics.install_lag_gauge(app, service)
    tracing.setup_tracing(service, settings)
    return app


def service_app(
    service: Service,
    settings: Settings,
    handler_factory: Callable[[asyncpg.Pool], Handler],
    *,
    on_committed: Callable[[list[Envelope]], None] | None = None,
    readiness: Callable[[], dict[str, bool]] = dict,
) -> tuple[faust.App, ServiceConsumer]:
    """Wire a database-backed saga service: its agent, the relay, health and events views.

    ``/events/{order_id}/`` answers from the outbox for the console's timeline.

    ``readiness`` adds the service's own checks to ``/ready/``.
    """
    app = create_app(service.name, settings, handles=service.handles)
    (output,) = service.outputs
    runtime = ServiceConsumer(app, settings, service.name, handler_factory, output,
                              service.handles, on_committed)
    topic = app.topic(
        *(settings.topic(s) for s in service.sources),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    async def steps(stream: StreamT) -> None:
        # Events are acked (and their offsets committed) only after the batch's
        # transaction has committed: take_batches acks when the next batch is asked for.
        # The agent yields nothing: Faust formats a debug line for every value yielded.
        batches = take_batches(stream, settings.batch_max, settings.batch_wait_ms / 1000)
        async for events in batches:
            await runtime.process_batch([event.message for event in events])

    app.agent(topic, name=f"oms-{service.name}.steps")(steps)

    async def relay() -> None:
        await runtime.start()
        await runtime.relay.run()

    app.task(relay)
    metrics.install_backlog_gauge(app, service.name, runtime.outbox_backlog,
                                  lambda: runtime.readiness()["database_pool"])
    add_health_views(app, service.name, lambda: {**runtime.readiness(), **readiness()})
    add_history_views(app, service.name, lambda: runtime.pool)
    return app, runtime

