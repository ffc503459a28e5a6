"""The Faust app factory shared by the four services."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import StreamT
from faust.web import Request, Response, View

from agents import metrics, tracing
from agents.batching import take_batches
from agents.runtime import ServiceRuntime
from agents.step import Handler
from config import Settings
from schemas.oms_pb2 import Envelope


def broker_url(settings: Settings) -> str:
    """Faust broker URL for ``OMS_KAFKA_BOOTSTRAP`` (``host:port[,host:port]``)."""
    if not settings.kafka_bootstrap:
        raise RuntimeError("OMS_KAFKA_BOOTSTRAP is not set; start the stack with `oms up`")
    hosts = settings.kafka_bootstrap.split(",")
    return ";".join(f"oms://{h.strip()}" for h in hosts)  # agents/kafka_transport.py


def create_app(
    service: str, settings: Settings, *, fetch_max_wait_ms: int | None = None
) -> faust.App:
    """A Faust app with the OMS defaults: its own consumer group, web port and /metrics.

    ``fetch_max_wait_ms`` (default ``settings.fetch_max_wait_ms``) is the
    consumer's long-poll; on Tansu it is also the time every fetch takes.
    """
    datadir = Path(settings.data_dir) / "faust" / service
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id(service),
        broker=broker_url(settings),
        broker_credentials=_credentials(settings),
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
    setup_prometheus_sensors(app, pattern="/metrics")
    metrics.install_lag_gauge(app, service)
    tracing.setup_tracing(service, settings)
    return app


def _credentials(settings: Settings) -> Any:
    """SASL/TLS credentials when configured; None on a plaintext broker."""
    ssl_context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def service_app(
    service: str,
    settings: Settings,
    *,
    sources: tuple[str, ...],
    output: str,
    handled: frozenset[str],
    handler_factory: Callable[[asyncpg.Pool], Handler],
    on_committed: Callable[[list[Envelope]], None] | None = None,
) -> tuple[faust.App, ServiceRuntime]:
    """Wire a database-backed saga service: one agent over its sources, the relay, health."""
    app = create_app(service, settings)
    runtime = ServiceRuntime(app, settings, service, handler_factory, output, handled,
                             on_committed)
    topic = app.topic(
        *(settings.topic(s) for s in sources),
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

    app.agent(topic, name=f"oms-{service}.steps")(steps)

    async def relay() -> None:
        await runtime.start()
        await runtime.relay.run()

    app.task(relay)
    metrics.install_backlog_gauge(app, service, runtime.outbox_backlog,
                                  lambda: runtime.readiness()["database_pool"])
    add_health_views(app, service, lambda: runtime.readiness())
    return app, runtime


def add_health_views(
    app: faust.App, service: str, readiness: Callable[[], dict[str, Any]]
) -> None:
    """``/health/`` (alive) and ``/ready/`` (503 with the reasons until ready)."""

    @app.page("/health/")
    async def health(web: View, request: Request) -> Response:
        return web.json({"service": service, "alive": True})

    @app.page("/ready/")
    async def ready(web: View, request: Request) -> Response:
        checks = dict(readiness())
        checks["consumer_assigned"] = bool(app.consumer.assignment()) if app.started else False
        reasons = [name for name, ok in checks.items() if ok is False]
        body = {"service": service, "pid": os.getpid(), "ready": not reasons, "checks": checks,
                "not_ready": reasons}
        return web.json(body, status=200 if not reasons else 503)
