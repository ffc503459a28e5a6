"""The inventory Faust app: its step and its stock views."""

from __future__ import annotations

import asyncpg
import faust

from agents.inventory.step import InventoryStep
from agents.inventory.web import add_inventory_views
from agents.messaging.app import service_app
from agents.messaging.unit_of_work import Handler
from agents.topology import INVENTORY
from config import Settings


def build(settings: Settings) -> faust.App:
    """The inventory Faust app."""

    def handler_factory(pool: asyncpg.Pool) -> Handler:
        return InventoryStep()

    app, runtime = service_app(INVENTORY, settings, handler_factory)
    add_inventory_views(app, runtime)
    return app
