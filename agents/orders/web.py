"""The orders web views: place an order over HTTP, read one, cancel one (token required)."""

from __future__ import annotations

import json
import uuid
from typing import Any

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
JSON = "application/json"
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


class BadBody(ValueError):
    """A request body that is not one JSON object; ``str()`` says what it is instead."""

    def __init__(self, problem: str, detail: str | None = None) -> None:
        super().__init__(problem)
        self.detail = detail


def media_type(request: Request) -> str | None:
    """The request's media type without parameters (``charset``), lower-case; None if unset."""
    value = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return value or None


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object a request body holds, or BadBody naming the problem."""
    if not raw.strip():
        raise BadBody("body is empty")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # bytes json cannot decode
        raise BadBody("body is not JSON", str(exc)) from exc
    if not isinstance(data, dict):
        raise BadBody(f"body must be a JSON object, not {_JSON_TYPES[type(data)]}")
    return data


def add_order_views(app: AppT, runtime: ServiceConsumer, settings: Settings) -> None:
    """Register the orders endpoints."""
    commands = settings.topic(ORDER_COMMANDS)
    send = kafka.faust_send(app)

    @app.page("/orders/")
    class OrdersView(View):
        async def post(self, request: Request) -> Response:
            content_type = media_type(request)
            if content_type != JSON:
                return self.json({"error": "unsupported media type", "expected": JSON,
                                  "content_type": content_type}, status=415)
            raw = await request.read()
            if len(raw) > MAX_BODY_BYTES:
                return self.json({"error": "body too large", "limit": MAX_BODY_BYTES}, status=413)
            try:
                body = PlaceOrderRequest.model_validate(json_object(raw))
            except BadBody as exc:
                return self.json({"error": str(exc), "detail": exc.detail}, status=400)
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
