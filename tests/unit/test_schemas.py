"""The message contract: generated code is fresh, field numbers are never reused."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from schemas import codec
from schemas.fields import live_fields, read_lock
from schemas.oms_pb2 import Envelope, OrderLine, PlaceOrder

ROOT = Path(__file__).resolve().parents[2]
ORDER_ID = "0c9a3a2e-4a43-4a53-8f7e-3d1f1b0d6a11"


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    from scripts.gen_protos import generate

    generate(tmp_path)
    for name in ("oms_pb2.py", "oms_pb2.pyi"):
        fresh, committed = tmp_path / "schemas" / name, ROOT / "schemas" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"schemas/{name} is stale: run `python scripts/gen_protos.py`"
        )


def test_no_field_number_is_reused_or_retyped() -> None:
    live, locked = live_fields(), read_lock()
    for message, fields in locked.items():
        for number, spec in fields.items():
            now = live.get(message, {}).get(number)
            if now is None:
                continue  # removed fields must be `reserved`; protoc enforces reuse then
            assert now == spec, f"{message} field {number} was {spec}, is now {now}"


def test_every_field_is_in_the_ledger() -> None:
    locked = read_lock()
    for message, fields in live_fields().items():
        missing = set(fields) - set(locked.get(message, {}))
        assert not missing, f"{message} fields {missing} not in fields.lock.json: run gen_protos"


def test_round_trip_keeps_every_field() -> None:
    body = PlaceOrder(customer_id="c-1", payment_token="tok_ok", currency="EUR")
    body.lines.append(OrderLine(sku="SKU-1", quantity=2, unit_price_cents=1250))
    envelope = codec.new_envelope(ORDER_ID, body, producer="test")
    decoded = codec.decode(codec.encode(envelope))
    assert decoded == envelope
    assert decoded.type == "PlaceOrder"
    assert codec.body_of(decoded) == body


def test_causation_and_placement_time_carry_forward() -> None:
    cause = codec.new_envelope(ORDER_ID, PlaceOrder(), producer="client", placed_at_ms=1234)
    effect = codec.new_envelope(ORDER_ID, PlaceOrder(), producer="orders", cause=cause)
    assert effect.causation_id == cause.event_id
    assert effect.placed_at_ms == 1234


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (b"\xff\xff\xff", "not an Envelope"),
        (Envelope(event_id=ORDER_ID, order_id=ORDER_ID, type="PlaceOrder").SerializeToString(),
         "no body"),
        (Envelope(event_id="nope", order_id=ORDER_ID, type="PlaceOrder",
                  place_order=PlaceOrder()).SerializeToString(), "event_id is not a UUID"),
        (Envelope(event_id=ORDER_ID, order_id=ORDER_ID, type="OrderCreated",
                  place_order=PlaceOrder()).SerializeToString(), "does not match body"),
    ],
)
def test_bad_bytes_raise_decode_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.DecodeError, match=reason):
        codec.decode(data)


def test_ids_in_another_form_are_made_canonical() -> None:
    """Upper-case, braced or unhyphenated UUIDs name the same order and event everywhere."""
    event_id = "5F0E3C1A-2B4D-4E6F-8A9B-0C1D2E3F4A5B"
    upper = Envelope(event_id=event_id, order_id="{" + ORDER_ID.upper() + "}",
                     type="PlaceOrder", place_order=PlaceOrder())
    decoded = codec.decode(upper.SerializeToString())
    assert decoded.order_id == ORDER_ID
    assert decoded.event_id == event_id.lower()
    codec.check_key(ORDER_ID.encode(), decoded)  # the canonical key is the order id


@pytest.mark.parametrize("key", [ORDER_ID.upper().encode(), b"other", None])
def test_a_key_that_is_not_the_canonical_order_id_says_what_to_send(key: bytes | None) -> None:
    """The key chooses the partition: in any other form the order's events would split."""
    envelope = codec.decode(codec.encode(codec.new_envelope(ORDER_ID, PlaceOrder(),
                                                            producer="t")))
    with pytest.raises(codec.WrongKey, match=f"send key = order_id .*{ORDER_ID}") as err:
        codec.check_key(key, envelope)
    assert err.value.reason.startswith("wrong key: ")


def test_faust_codec_is_registered() -> None:
    from faust.serializers import codecs

    envelope = codec.new_envelope(ORDER_ID, PlaceOrder(customer_id="c"), producer="t")
    data = codecs.dumps(codec.CODEC_NAME, envelope)
    assert codecs.loads(codec.CODEC_NAME, data) == envelope
