"""The payments Faust app: its step, the PSP caller beside it, and its payment views."""

from __future__ import annotations

import asyncpg
import faust

from agents.messaging.app import service_app
from agents.messaging.unit_of_work import Handler
from agents.observability import tracing
from agents.payments.caller import GuardedGateway, PspCaller
from agents.payments.psp import SimulatedGateway
from agents.payments.step import PaymentsStep
from agents.payments.web import add_payment_views
from agents.topology import PAYMENTS
from config import Settings


def build(settings: Settings) -> faust.App:
    """The payments Faust app: the step records intents, the PSP caller makes the calls."""

    def handler_factory(pool: asyncpg.Pool) -> Handler:
        return PaymentsStep(tracing.current_headers)

    app, runtime = service_app(PAYMENTS, settings, handler_factory,
                               readiness=lambda: caller.readiness())
    caller = PspCaller(runtime.relay, runtime.out_topic,
                       max_in_flight=settings.psp_max_in_flight, lease_s=settings.psp_lease_s)

    async def call_psp() -> None:
        await runtime.start()
        gateway = GuardedGateway(SimulatedGateway(runtime.pool, settings),
                                 settings.gateway_timeout_s)
        await caller.run(runtime.pool, gateway)

    app.task(call_psp)
    add_payment_views(app, runtime)
    return app
