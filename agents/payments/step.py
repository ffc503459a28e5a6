"""The payments step: claim, record the intent, call the PSP, settle.

| on | records | the PSP is asked to | settled as | emits |
|---|---|---|---|---|
| InventoryReserved | CHARGING | charge (order id as key) | CHARGED | PaymentCompleted |
| | | | DECLINED | PaymentFailed |
| | | | UNKNOWN (timeout) | nothing: the deadline cancels |
| OrderCancelled | CANCELLING | refund, else void the key | REFUNDED | PaymentRefunded |
| | | | VOIDED | nothing |

An order has one payment row: a charge is recorded only if the order has
none, a cancel only if there is something to cancel (not declined, not
cancelled before). The two inputs come from different topics, so either may
arrive first.

The step transaction (:class:`PaymentsStep`) only records the intent and
awaits nothing external, so a slow PSP holds no transaction and no lock, and
a duplicate or replayed event, stopped by the inbox before the step, never
reaches the PSP. After the commit the PSP caller (``caller.py``) leases each
intent, makes its call (:func:`ask`) and settles the answer in a short
transaction (:func:`settle`; answers that arrive together share one). A
crash between the call and the settlement leaves the intent in place:
whoever takes it over asks the PSP what it made of the request before
charging, so the fact of a charge is never lost and never doubled. A cancel
recorded while the charge call is in flight turns the intent into a cancel,
made right after the charge's answer: a capture that lands after the cancel
is refunded, and a void stops any later capture.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from agents.messaging.errors import InvalidEvent
from agents.payments.psp import ChargeResult, GatewayTimeout, PaymentGateway, Refund
from schemas.codec import decode, encode, new_envelope
from schemas.oms_pb2 import Envelope, PaymentCompleted, PaymentFailed, PaymentRefunded
from stores import payments
from stores.payments import CANCELLING, CHARGED, DECLINED, REFUNDED, UNKNOWN, VOIDED, Intent

SERVICE = "payments"

Answer = ChargeResult | GatewayTimeout | Refund | None
"""What the PSP said: to a charge (a timeout is an answer too), or to a cancel."""


class PaymentsStep:
    """The step transaction's part: validate the event and record its intent."""

    def __init__(self, trace_headers: Callable[[], dict[str, str]] = dict) -> None:
        self._trace_headers = trace_headers  # the answer's event is published under this trace

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> list[Envelope]:
        """Record what to ask the PSP (inside the step transaction); emit nothing yet."""
        order_id = envelope.order_id
        if envelope.type == "InventoryReserved":
            body = envelope.inventory_reserved
            if body.amount_cents < 0:
                raise InvalidEvent(f"amount_cents: must not be negative, got {body.amount_cents}")
            await payments.intend_charge(conn, order_id, body.amount_cents, encode(envelope),
                                         self._trace_headers())
        elif envelope.type == "OrderCancelled":
            await payments.intend_cancel(conn, order_id, encode(envelope), self._trace_headers())
        return []


async def ask(gateway: PaymentGateway, intent: Intent, *, uncertain: bool) -> Answer:
    """Make the intent's PSP call (outside any transaction).

    A charge whose earlier request may have reached the PSP (``uncertain``:
    taken over from a dead worker, or retried after the PSP was unreachable)
    first asks what the PSP made of it, and charges only if it never saw it.
    A charge's timeout is its answer (UNKNOWN: the saga deadline will cancel);
    a cancel's timeout is raised, to be retried, since a cancel must happen.
    """
    order_id = intent.order_id
    if intent.status == CANCELLING:
        return await gateway.cancel(order_id)
    if uncertain and (known := await gateway.find(order_id)) is not None:
        return known
    body = decode(intent.request).inventory_reserved
    try:
        return await gateway.charge(order_id, body.amount_cents, body.payment_token)
    except GatewayTimeout as exc:
        return exc


async def settle(conn: asyncpg.Connection, intent: Intent, answer: Answer) -> list[Envelope]:
    """Record the PSP's answer (inside the settlement's transaction); return what to emit.

    Nothing is emitted when the intent changed meanwhile (a cancel replaced
    the charge, or another caller took it over): that one settles instead.
    """
    cause = decode(intent.request)
    if isinstance(answer, GatewayTimeout):
        await payments.settle(conn, intent, UNKNOWN, reason=str(answer))
        return []  # the tracker's deadline cancels the order; the cancel voids or refunds
    if isinstance(answer, ChargeResult):
        return await _charged(conn, intent, cause, answer)
    return await _cancelled(conn, intent, cause, answer)


async def _charged(
    conn: asyncpg.Connection, intent: Intent, cause: Envelope, answer: ChargeResult
) -> list[Envelope]:
    amount = cause.inventory_reserved.amount_cents
    out: PaymentCompleted | PaymentFailed
    if answer.approved:
        settled = await payments.settle(conn, intent, CHARGED, amount_cents=amount,
                                        charge_id=answer.charge_id)
        out = PaymentCompleted(charge_id=answer.charge_id, amount_cents=amount)
    else:
        settled = await payments.settle(conn, intent, DECLINED, amount_cents=0,
                                        reason=answer.reason)
        out = PaymentFailed(reason=answer.reason)
    if not settled:
        return []
    return [new_envelope(intent.order_id, out, producer=SERVICE, cause=cause)]


async def _cancelled(
    conn: asyncpg.Connection, intent: Intent, cause: Envelope, refund: Refund | None
) -> list[Envelope]:
    if refund is None:
        await payments.settle(conn, intent, VOIDED, amount_cents=0,
                              reason="cancelled before charge")
        return []
    if not await payments.settle(conn, intent, REFUNDED, amount_cents=refund.amount_cents,
                                 charge_id=refund.charge_id):
        return []
    out = PaymentRefunded(charge_id=refund.charge_id, amount_cents=refund.amount_cents)
    return [new_envelope(intent.order_id, out, producer=SERVICE, cause=cause)]
