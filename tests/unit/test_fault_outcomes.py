"""The fault suite's outcome check: each order's end against what its request implies.

"All terminal" cannot tell a dropped event from a business cancel (a dropped
event ends as a timeout cancellation), so the harness judges every order; these
tests show the judgement catches what the bare counts missed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.dev.catalogue import SCARCE_SKU, SCARCE_UNITS
from config import Settings
from schemas.oms_pb2 import Envelope
from tests.conftest import make_settings
from tests.faults.harness import (
    CANCELLED,
    CONFIRMED,
    TIMED_OUT,
    Outcome,
    expected_outcome,
    judge_rows,
    mixed_orders,
    simple_order,
)

Ended = dict[str, tuple[str, str | None]]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(Path(tmp_path_factory.mktemp("judge")), saga_timeout_s=5.0,
                         gateway_slow_ms=8_000.0)


def healthy(settings: Settings, requests: list[Envelope], scarce_left: int) -> Ended:
    """How a healthy system ends these orders: scarce units go to the first comers."""
    ended: Ended = {}
    for request in requests:
        want = expected_outcome(request, settings)
        if want.scarce_units and scarce_left < want.scarce_units:
            ended[request.order_id] = (CANCELLED, f"out of stock: {SCARCE_SKU}")
            continue
        scarce_left -= want.scarce_units
        ended[request.order_id] = (want.outcome.status, want.outcome.reason or None)
    return ended


def test_the_demo_mix_of_a_healthy_system_is_all_right(settings: Settings) -> None:
    requests = mixed_orders(settings, 300)
    verdict = judge_rows(settings, requests, healthy(settings, requests, SCARCE_UNITS),
                         SCARCE_UNITS)
    assert verdict.wrong == [] and verdict.timeouts == 0
    statuses = [s for s, _ in healthy(settings, requests, SCARCE_UNITS).values()]
    assert (statuses.count(CONFIRMED), statuses.count(CANCELLED)) == (220, 80)


def test_the_mix_with_the_scarce_units_gone_sells_none_of_them(settings: Settings) -> None:
    """A second scenario on one stack finds the scarce SKU sold out: 210/90 is right then."""
    requests = mixed_orders(settings, 300)
    ended = healthy(settings, requests, 0)
    assert judge_rows(settings, requests, ended, 0).wrong == []
    assert [s for s, _ in ended.values()].count(CONFIRMED) == 210
    assert judge_rows(settings, requests, ended, SCARCE_UNITS).wrong != []  # 10 were left


def test_a_dropped_event_ending_as_a_timeout_is_a_wrong_outcome(settings: Settings) -> None:
    requests = mixed_orders(settings, 20)
    ended = healthy(settings, requests, SCARCE_UNITS)
    ended[requests[0].order_id] = (CANCELLED, TIMED_OUT)  # was to be confirmed
    verdict = judge_rows(settings, requests, ended, SCARCE_UNITS)
    assert verdict.timeouts == 1
    assert [w.split(":")[0] for w in verdict.wrong] == [requests[0].order_id]


def test_a_declined_order_that_was_confirmed_is_wrong(settings: Settings) -> None:
    declined = simple_order(token=settings.gateway_decline_token)
    verdict = judge_rows(settings, [declined], {declined.order_id: (CONFIRMED, None)}, 0)
    assert len(verdict.wrong) == 1 and "expected CANCELLED (payment failed)" in verdict.wrong[0]


def test_hung_and_late_payments_are_expected_to_time_out(settings: Settings) -> None:
    hung = simple_order(token=settings.gateway_timeout_token)
    slow = simple_order(token=settings.gateway_slow_token)  # 8 s capture, 5 s deadline
    ended: Ended = {hung.order_id: (CANCELLED, TIMED_OUT), slow.order_id: (CANCELLED, TIMED_OUT)}
    verdict = judge_rows(settings, [hung, slow], ended, 0)
    assert verdict.wrong == [] and verdict.timeouts == 2


def test_scarce_units_left_unsold_or_oversold_are_wrong(settings: Settings) -> None:
    scarce = [simple_order(SCARCE_SKU) for _ in range(4)]
    all_rejected: Ended = {r.order_id: (CANCELLED, f"out of stock: {SCARCE_SKU}")
                           for r in scarce}
    assert len(judge_rows(settings, scarce, all_rejected, 3).wrong) == 3
    all_sold: Ended = {r.order_id: (CONFIRMED, None) for r in scarce}
    assert judge_rows(settings, scarce, all_sold, 4).wrong == []
    assert "4 units sold, only 3" in judge_rows(settings, scarce, all_sold, 3).wrong[0]


def test_pending_orders_are_left_to_the_lost_count(settings: Settings) -> None:
    request = simple_order()
    assert judge_rows(settings, [request], {}, 0).wrong == []


def test_an_expected_override_is_honoured(settings: Settings) -> None:
    request = simple_order()
    ended: Ended = {request.order_id: (CANCELLED, "cancelled by operator")}
    assert judge_rows(settings, [request], ended, 0).wrong != []
    assert judge_rows(settings, [request], ended, 0,
                      {request.order_id: Outcome(CANCELLED, "cancelled by operator")}).wrong == []
