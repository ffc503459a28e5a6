"""Run one service's Faust worker in this process (``oms worker orders``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import faust
import mode.loop

from config import Settings
from config.settings import DATABASE_SERVICES
from stores.db import prepare_database


def builders() -> dict[str, Callable[[Settings], faust.App]]:
    """Service name -> app factory (imported lazily: each worker loads one service)."""
    from agents import inventory, orchestrator, orders, payments

    return {
        "orders": orders.build,
        "inventory": inventory.build,
        "payments": payments.build,
        "orchestrator": orchestrator.build,
    }


def run_worker(service: str, settings: Settings, loglevel: str = "info") -> None:
    """Migrate the service's database, then run its Faust worker until stopped."""
    mode.loop.use(settings.event_loop)  # before any loop exists, as `faust worker --loop`
    if service in DATABASE_SERVICES:
        applied = asyncio.run(prepare_database(settings, service))
        if applied:
            logging.getLogger(__name__).info("%s: applied migrations %s", service, applied)
    app = builders()[service](settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
