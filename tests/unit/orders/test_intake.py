"""Order intake validation: bad requests name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.orders.intake import PlaceOrderRequest, field_errors

GOOD = {"customer_id": "c1", "payment_token": "tok_visa",
        "lines": [{"sku": "SKU-0001", "quantity": 2, "unit_price_cents": 500}]}


def test_a_good_request_becomes_a_place_order_keyed_by_its_id() -> None:
    request = PlaceOrderRequest.model_validate(GOOD)
    envelope = request.to_envelope()
    assert envelope.type == "PlaceOrder" and envelope.order_id == str(request.order_id)
    assert envelope.place_order.lines[0].quantity == 2


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "bad sku!", "quantity": 1, "unit_price_cents": 1}]}, "lines.0.sku"),
        ({"payment_token": ""}, "payment_token"),
        ({"order_id": "not-a-uuid"}, "order_id"),
        ({"currency": "euro"}, "currency"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_requests_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlaceOrderRequest.model_validate({**GOOD, **patch})
    assert field in [e["field"] for e in field_errors(err.value)]
