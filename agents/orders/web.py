"""The orders web views: place an order over HTTP, read one, cancel one (token required)."""

from __future__ import annotations

import json
import uuid

from faust.types import AppT
from faust.web import Request, Response, View
from pydantic import ValidationError

from agents.http import authorized
from agents.messaging import kafka
from agents.messaging.consumer import ServiceConsumer
from agents.orders.intake import PlaceOrderRequest, field_errors
from agents.topology import ORDER_COMMANDS
from config import Settings
from schemas.codec import deterministic_id, new_envelope
from schemas.oms_pb2 import CancelOrder
from stores import orders

MAX_BODY_BYTES = 64 * 1024


def add_order_views(app: AppT, runtime: ServiceConsumer, settings: Settings) -> None:
    """Register the orders endpoints."""
    commands = settings.topic(ORDER_COMMANDS)
    send = kafka.faust_send(app)

    @app.page("/orders/")
    class OrdersView(View):
        async def post(self, request: Request) -> Response:
            raw = await request.read()
            if len(raw) > MAX_BODY_BYTES:
                return self.json({"error": "body too large", "limit": MAX_BODY_BYTES}, status=413)
            try:
                body = PlaceOrderRequest.model_validate(json.loads(raw or b"null"))
            except json.JSONDecodeError as exc:
                return self.json({"error": "body is not JSON", "detail": str(exc)}, status=400)
            except ValidationError as exc:
                return self.json({"error": "invalid order", "fields": field_errors(exc)},
                                 status=422)
            envelope = body.to_envelope(producer="orders-http")
            # oms_orders_placed_total counts in the orders step, once the order is committed
            await kafka.send_envelope(send, commands, envelope)
            return self.json({"order_id": envelope.order_id, "status": "ACCEPTED"}, status=202)

    @app.page("/orders/{order_id}/")
    class OrderView(View):
        async def get(self, request: Request, order_id: str) -> Response:
            if not _is_uuid(order_id):
                return self.json({"error": "order_id: not a UUID"}, status=400)
            await runtime.start()
            async with runtime.pool.acquire() as conn:
                order = await orders.get(conn, order_id)
            if order is None:
                return self.json({"error": "order not found", "order_id": order_id}, status=404)
            return self.json(order.as_json())

    @app.page("/orders/{order_id}/cancel/")
    class CancelView(View):
        async def post(self, request: Request, order_id: str) -> Response:
            if not authorized(request, settings):
                return self.json({"error": "bearer token required"}, status=401)
            if not _is_uuid(order_id):
                return self.json({"error": "order_id: not a UUID"}, status=400)
            envelope = new_envelope(order_id, CancelOrder(reason="cancelled by operator"),
                                    producer="orders-http",
                                    event_id=deterministic_id(order_id, "operator-cancel"))
            await kafka.send_envelope(send, commands, envelope)
            return self.json({"order_id": order_id, "status": "CANCEL_REQUESTED"}, status=202)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
