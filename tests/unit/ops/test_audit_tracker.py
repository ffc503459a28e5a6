"""``oms check --tracker-url``: judging the tracker workers' own answers.

Each worker answers ``/sagas/`` for the partitions it owns. The check is a
pure function of those answers, so every case is built here as data; the
real views answer it in tests/integration/orchestrator/test_tracker.py and in
every fault scenario.
"""

from __future__ import annotations

from typing import Any

from agents.ops.audit import check_tracker_views

A, B = "http://a:1", "http://b:2"


def answer(partitions: list[int], running: int = 0, overdue: tuple[int, ...] = (),
           settled: bool = True) -> dict[str, Any]:
    return {"counts": {"RUNNING": running, "CONFIRMED": 3}, "partitions": partitions,
            "settled": settled,
            "overdue": [{"order_id": f"o{i}", "overdue_ms": ms} for i, ms in enumerate(overdue)]}


def test_sagas_inside_their_deadline_are_in_flight_not_violations() -> None:
    """Stray events for unknown orders start sagas; their deadline has not passed."""
    inv = check_tracker_views({A: answer([0, 1]), B: answer([2, 3], running=2)}, 4, grace_s=0)
    assert inv.ok and inv.in_flight == 2


def test_a_saga_running_past_its_deadline_and_the_grace_is_a_violation() -> None:
    inv = check_tracker_views({A: answer([0, 1, 2, 3], running=2, overdue=(500, 20_000))}, 4,
                              grace_s=10)
    assert inv.violations == [f"o1 RUNNING 20s past its deadline ({A})"]
    assert inv.in_flight == 1  # the one 0.5 s overdue is being cancelled


def test_every_partition_is_tracked_by_exactly_one_worker() -> None:
    twice = check_tracker_views({A: answer([0, 1, 2]), B: answer([2, 3])}, 4, grace_s=0)
    assert twice.violations == [f"partition 2 tracked by both {A} and {B}"]
    nobody = check_tracker_views({A: answer([0, 1])}, 4, grace_s=0)
    assert nobody.violations == ["partitions [2, 3] tracked by none of the given workers"]


def test_while_a_worker_is_rebalancing_ownership_is_in_flight() -> None:
    inv = check_tracker_views({A: answer([0, 1, 2, 3]), B: answer([2, 3], settled=False)}, 4,
                              grace_s=0)
    assert inv.ok and inv.in_flight == 1


def test_a_worker_that_does_not_answer_is_a_violation() -> None:
    inv = check_tracker_views({A: answer([0, 1]), B: "ClientConnectorError: refused"}, 4,
                              grace_s=0)
    assert inv.violations == [f"{B} did not answer: ClientConnectorError: refused"]
