"""The saga tracker's Faust app: one agent over what it reads, the deadline timer, the views."""

from __future__ import annotations

import faust
from faust.types import StreamT

from agents.messaging.app import create_app
from agents.messaging.batching import take_batches
from agents.observability.health import add_health_views
from agents.orchestrator.dead_letter_views import add_dead_letter_views
from agents.orchestrator.table import SERVICE, SagaTracker
from agents.orchestrator.web import add_tracker_views
from agents.topology import ORCHESTRATOR
from config import Settings


def _recovered(app: faust.App) -> bool:
    """True once the sagas table has been rebuilt from its changelog."""
    return bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]


def build(settings: Settings) -> faust.App:
    """The tracker Faust app."""
    app = create_app(SERVICE, settings, fetch_max_wait_ms=settings.tracker_fetch_max_wait_ms,
                     handles=ORCHESTRATOR.handles)
    tracker = SagaTracker(app, settings)
    topic = app.topic(*(settings.topic(s) for s in ORCHESTRATOR.sources), key_type=bytes,
                      value_type=bytes, key_serializer="raw", value_serializer="raw")

    async def track(stream: StreamT) -> None:
        # acked after the batch's table writes, like the services' steps
        batches = take_batches(stream, settings.batch_max, settings.batch_wait_ms / 1000)
        async for events in batches:
            await tracker.on_batch([event.message for event in events])

    app.agent(topic, name="oms-orchestrator.track")(track)
    app.timer(interval=1.0)(tracker.tick)
    add_health_views(app, SERVICE, lambda: {
        "table_recovered": _recovered(app),
        "dead_letters_publishing": not tracker.dead_letters.failing})
    add_tracker_views(app, tracker, settings)
    add_dead_letter_views(app, settings)
    return app
