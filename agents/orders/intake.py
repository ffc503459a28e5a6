"""Order intake: the validated request every entry point turns into ``PlaceOrder``.

The HTTP view and ``oms order place`` go through
:class:`PlaceOrderRequest`, so a bad request is refused the same way
everywhere, with the offending field named.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.codec import new_envelope
from schemas.oms_pb2 import Envelope, OrderLine, PlaceOrder

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class LineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    quantity: int = Field(gt=0, le=10_000)
    unit_price_cents: int = Field(ge=0, le=100_000_000)


class PlaceOrderRequest(BaseModel):
    """What a client sends to place an order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    customer_id: str = Field(min_length=1, max_length=64)
    lines: list[LineRequest] = Field(min_length=1, max_length=100)
    payment_token: str = Field(min_length=1, max_length=64)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")

    def to_envelope(self, producer: str = "client") -> Envelope:
        """The ``PlaceOrder`` command for ``oms.order-commands`` (key: the order id)."""
        body = PlaceOrder(
            customer_id=self.customer_id,
            payment_token=self.payment_token,
            currency=self.currency,
            lines=[OrderLine(sku=x.sku, quantity=x.quantity,
                             unit_price_cents=x.unit_price_cents) for x in self.lines],
        )
        return new_envelope(str(self.order_id), body, producer=producer)
