"""The orders Faust app: its step, its web views, and the count of placed orders."""

from __future__ import annotations

import asyncpg
import faust

from agents.messaging.app import service_app
from agents.messaging.unit_of_work import Handler
from agents.observability import metrics
from agents.orders.step import OrdersStep
from agents.orders.web import add_order_views
from agents.topology import ORDERS
from config import Settings
from schemas.oms_pb2 import Envelope


def count_placed(emitted: list[Envelope]) -> None:
    """After a step committed: each ``OrderCreated`` it emitted is a newly placed order.

    Counting here rather than at intake means a redelivered or rejected
    ``PlaceOrder`` is never counted, and neither is a rolled-back step.
    """
    created = sum(1 for e in emitted if e.type == "OrderCreated")
    if created:
        metrics.ORDERS_PLACED.inc(created)


def build(settings: Settings) -> faust.App:
    """The orders Faust app."""

    def handler_factory(pool: asyncpg.Pool) -> Handler:
        return OrdersStep()

    app, runtime = service_app(ORDERS, settings, handler_factory, on_committed=count_placed)
    add_order_views(app, runtime, settings)
    return app
