"""Order intake: the one definition of a valid order, for every way one arrives.

The HTTP view and ``oms order place`` validate a client's request with
:class:`PlaceOrderRequest`; the orders step validates a ``PlaceOrder`` that
came over Kafka with :func:`check_place_order`, which applies the same model.
So the bounds (lines, quantities, SKUs, token, customer id, currency) are
written once, and a bad order is refused the same way everywhere, with the
offending field named. This module imports no Faust and no web code, so the
business step may use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.codec import new_envelope
from schemas.oms_pb2 import Envelope, OrderLine, PlaceOrder

DEFAULT_CURRENCY = "EUR"
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class LineRequest(BaseModel):
    """One line. The price is optional: inventory prices every line from its catalogue,
    and refuses the order if a price given here differs (the client was shown another)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    quantity: int = Field(gt=0, le=10_000)
    unit_price_cents: int | None = Field(default=None, ge=0, le=100_000_000)


class PlaceOrderRequest(BaseModel):
    """What a client sends to place an order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    customer_id: str = Field(min_length=1, max_length=64)
    lines: list[LineRequest] = Field(min_length=1, max_length=100)
    payment_token: str = Field(min_length=1, max_length=64)
    currency: str = Field(default=DEFAULT_CURRENCY, pattern=r"^[A-Z]{3}$")

    def to_envelope(self, producer: str = "client") -> Envelope:
        """The ``PlaceOrder`` command for ``oms.order-commands`` (key: the order id)."""
        body = PlaceOrder(
            customer_id=self.customer_id,
            payment_token=self.payment_token,
            currency=self.currency,
            lines=[OrderLine(sku=x.sku, quantity=x.quantity, unit_price_cents=x.unit_price_cents)
                   for x in self.lines],
        )
        return new_envelope(str(self.order_id), body, producer=producer)


class InvalidOrder(ValueError):
    """An order outside the bounds; the message names each field and problem, never a value."""


def check_place_order(order_id: str, body: PlaceOrder) -> PlaceOrderRequest:
    """The validated request behind a ``PlaceOrder`` from Kafka, or InvalidOrder.

    An empty ``currency`` is the proto3 default of a field the producer left
    out, so it means the default currency, as it does over HTTP.
    """
    data: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": body.customer_id,
        "payment_token": body.payment_token,
        "currency": body.currency or DEFAULT_CURRENCY,
        "lines": [_line(x) for x in body.lines],
    }
    try:
        return PlaceOrderRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidOrder("; ".join(f"{_path(e['loc'])}: {e['msg']}"
                                     for e in exc.errors())) from exc


def _line(line: OrderLine) -> dict[str, Any]:
    data: dict[str, Any] = {"sku": line.sku, "quantity": line.quantity}
    if line.HasField("unit_price_cents"):
        data["unit_price_cents"] = line.unit_price_cents
    return data


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field": "lines.0.quantity", "error": "..."}`` (no input values)."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()
    ]


def _path(loc: Sequence[int | str]) -> str:
    """``("lines", 0, "quantity")`` -> ``lines[0].quantity``, as dead-letter reasons say it."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text
