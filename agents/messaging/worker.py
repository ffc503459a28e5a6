"""Run one service's Faust worker in this process (``oms worker orders``)."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable

import faust
import mode.loop

from agents.topology import service as service_named
from config import Settings
from stores.db import prepare_database


def app_builder(service: str) -> Callable[[Settings], faust.App]:
    """The service's app factory, imported by the path :mod:`agents.topology` gives.

    Imported lazily, so a worker loads only its own service.
    """
    module, _, function = service_named(service).app.partition(":")
    build: Callable[[Settings], faust.App] = getattr(importlib.import_module(module), function)
    return build


def run_worker(service: str, settings: Settings, loglevel: str = "info") -> None:
    """Migrate the service's database, then run its Faust worker until stopped."""
    mode.loop.use(settings.event_loop)  # before any loop exists, as `faust worker --loop`
    if service_named(service).database:
        applied = asyncio.run(prepare_database(settings, service))
        if applied:
            logging.getLogger(__name__).info("%s: applied migrations %s", service, applied)
    app = app_builder(service)(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
