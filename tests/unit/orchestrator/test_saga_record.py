"""The saga record's ledger, and reading rows written by another version of the tracker.

The tracker's table outlives its code: rows in the changelog were written by
whatever version ran before. A committed ledger of the record's fields makes
a rename or retype fail here instead of in a running timer; rows with a
missing or an extra field are read without crashing the timer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.orchestrator.ledger import live_fields, read_lock
from agents.orchestrator.saga import RUNNING, Saga, UnreadableSaga
from agents.orchestrator.table import now_ms
from tests.unit.orchestrator import fakes

OID = "6f1c1c3e-8a6b-4d59-9d0a-2a0b5a1c9e10"


def test_no_field_of_the_record_is_renamed_or_retyped() -> None:
    live, locked = live_fields(), read_lock()
    for record, fields in locked.items():
        for name, spec in fields.items():
            if spec.get("retired"):
                continue  # removed on purpose; old rows still carry it and are read anyway
            assert name in live.get(record, {}), (
                f"{record}.{name} is in saga.lock.json but not in the code: a rename makes"
                " every stored row unreadable; keep the name or mark it retired")
            assert live[record][name]["type"] == spec["type"], (
                f"{record}.{name} was {spec['type']}, is now {live[record][name]['type']}")


def test_every_field_is_in_the_ledger() -> None:
    locked = read_lock()
    for record, fields in live_fields().items():
        missing = set(fields) - set(locked.get(record, {}))
        assert not missing, (f"{record} fields {missing} not in saga.lock.json:"
                             " run python -m agents.orchestrator.ledger")


def test_a_field_added_later_has_a_default() -> None:
    """Rows written before a field existed lack it; only a default lets them load."""
    locked = read_lock()
    for record, fields in live_fields().items():
        for name, spec in fields.items():
            if spec["required"]:
                assert locked[record][name]["required"], (
                    f"{record}.{name} is required but older rows do not have it: give it a"
                    " default")


def row(**changes: Any) -> dict[str, Any]:
    placed = now_ms() - 60_000
    data = Saga(OID, RUNNING, placed, placed + 30_000, placed).as_dict()
    data.update(changes)
    return data


def test_extra_fields_are_ignored_and_missing_optional_ones_take_defaults() -> None:
    data = row(renamed_in_a_later_version=1)
    del data["reason"]
    saga = Saga.from_dict(data)
    assert saga.order_id == OID and saga.reason == ""


@pytest.mark.parametrize(("change", "why"), [
    ({"deadline_ms": None}, "deadline_ms"),
    ({"status": "PAUSED"}, "status"),
    ({"steps": "none"}, "steps"),
])
def test_a_row_that_cannot_be_a_saga_says_why(change: dict[str, Any], why: str) -> None:
    data = row(**change)
    if change.get("deadline_ms", 0) is None:
        del data["deadline_ms"]
    with pytest.raises(UnreadableSaga, match=why):
        Saga.from_dict(data)


async def test_the_timer_survives_rows_of_another_version(tmp_path: Path) -> None:
    renamed = row(deadline_at_ms=1)  # a later version renamed deadline_ms
    del renamed["deadline_ms"]
    extra = row(order_id="0c9a3a2e-4a43-4a53-8f7e-3d1f1b0d6a11", priority="high")
    tracker = fakes.tracker(tmp_path, {b"renamed": renamed, b"extra": extra})
    sent: list[bytes] = []

    async def send(key: bytes, event: Any) -> None:
        sent.append(key)

    tracker._send_timeout = send  # type: ignore[method-assign]
    await tracker.tick()  # must not raise
    assert sent == [b"extra"]  # the readable overdue row is still timed out
    assert b"renamed" in tracker.sagas  # the unreadable one is kept (and counted), not lost
