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


def test_a_line_needs_no_price_and_a_given_one_goes_along() -> None:
    """Inventory prices the order; a client's price is only checked against the catalogue."""
    request = PlaceOrderRequest.model_validate(
        {**GOOD, "lines": [{"sku": "SKU-0001", "quantity": 1},
                           {"sku": "SKU-0002", "quantity": 1, "unit_price_cents": 0}]})
    unpriced, free = request.to_envelope().place_order.lines
    assert not unpriced.HasField("unit_price_cents")
    assert free.HasField("unit_price_cents") and free.unit_price_cents == 0


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "bad sku!", "quantity": 1, "unit_price_cents": 1}]}, "lines.0.sku"),
        ({"payment_token": ""}, "payment_token"),
        ({"order_id": "not-a-uuid"}, "order_id"),
        ({"currency": "euro"}, "currency"),
        ({"lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": -1}]},
         "lines.0.unit_price_cents"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_requests_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlaceOrderRequest.model_validate({**GOOD, **patch})
    assert field in [e["field"] for e in field_errors(err.value)]
