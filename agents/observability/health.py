"""``/health/`` and ``/ready/`` on every worker's web server.

``/ready/`` answers 503 with the failing checks named under ``not_ready``
until the worker can do its job; ``oms up`` and the tests wait on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import faust
from faust.web import Request, Response, View


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
