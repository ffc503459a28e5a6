"""The payments web views: payment by order id."""

from __future__ import annotations

import uuid

from faust.types import AppT
from faust.web import Request, Response, View

from agents.messaging.consumer import ServiceConsumer
from stores import payments


def add_payment_views(app: AppT, runtime: ServiceConsumer) -> None:
    """Register ``/payments/{order_id}/``."""

    @app.page("/payments/{order_id}/")
    class PaymentView(View):
        async def get(self, request: Request, order_id: str) -> Response:
            try:
                uuid.UUID(order_id)
            except ValueError:
                return self.json({"error": "order_id: not a UUID"}, status=400)
            await runtime.start()
            async with runtime.pool.acquire() as conn:
                payment = await payments.get(conn, order_id)
            if payment is None:
                return self.json({"error": "no payment for order", "order_id": order_id},
                                 status=404)
            payment["order_id"] = str(payment["order_id"])
            for key in ("created_at", "updated_at"):
                payment[key] = payment[key].isoformat()
            return self.json(payment)
