"""The payments Faust app: its step bound to the PSP, and its payment views."""

from __future__ import annotations

import asyncpg
import faust

from agents.messaging.app import service_app
from agents.messaging.unit_of_work import Handler
from agents.observability import metrics
from agents.payments.psp import (
    ChargeResult,
    GatewayTimeout,
    PaymentGateway,
    Refund,
    SimulatedGateway,
)
from agents.payments.step import PaymentsStep
from agents.payments.web import add_payment_views
from agents.topology import PAYMENTS
from config import Settings


class CountedGateway:
    """A :class:`PaymentGateway` that counts every call by its result (``oms_gateway_calls``)."""

    def __init__(self, gateway: PaymentGateway) -> None:
        self._gateway = gateway

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Charge through the wrapped gateway; count approved, declined or timeout."""
        try:
            result = await self._gateway.charge(idempotency_key, amount_cents, token)
        except GatewayTimeout:
            metrics.GATEWAY_CALLS.labels("charge", "timeout").inc()
            raise
        metrics.GATEWAY_CALLS.labels("charge", "approved" if result.approved else "declined").inc()
        return result

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Cancel through the wrapped gateway; count refunded or voided."""
        refund = await self._gateway.cancel(idempotency_key)
        metrics.GATEWAY_CALLS.labels("cancel", "refunded" if refund else "voided").inc()
        return refund


def build(settings: Settings) -> faust.App:
    """The payments Faust app."""

    def handler_factory(pool: asyncpg.Pool) -> Handler:
        return PaymentsStep(CountedGateway(SimulatedGateway(pool, settings)))

    app, runtime = service_app(PAYMENTS, settings, handler_factory)
    add_payment_views(app, runtime)
    return app
