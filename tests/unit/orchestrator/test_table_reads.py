"""The tracker's read methods for the console: only owned rows, counted per partition."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from agents.orchestrator.saga import CONFIRMED, RUNNING, Saga
from tests.unit.orchestrator import fakes


def rows_in(tracked: Any, partition: int, *statuses: str) -> dict[bytes, dict[str, Any]]:
    """A row of each status whose key falls in ``partition``."""
    rows: dict[bytes, dict[str, Any]] = {}
    for status in statuses:
        while True:
            oid = str(uuid.uuid4())
            if tracked.ownership.partition(oid.encode()) == partition:
                rows[oid.encode()] = Saga(oid, status, 1, 2, 1).as_dict()
                break
    return rows


def test_counts_by_partition_cover_owned_partitions_only_even_empty_ones(tmp_path: Path) -> None:
    tracked = fakes.tracker(tmp_path, owned={0, 1, 2})
    table = fakes.table(tracked)
    dict.update(table, rows_in(tracked, 0, RUNNING, CONFIRMED, CONFIRMED))
    dict.update(table, rows_in(tracked, 3, RUNNING))  # a lost partition's stale copy
    assert tracked.counts_by_partition() == {0: {RUNNING: 1, CONFIRMED: 2}, 1: {}, 2: {}}
    owned = tracked.owned_rows()
    assert len(owned) == 3
    assert {s.order_id for row in owned if (s := tracked.read_row(row))} == {
        row["order_id"] for row in owned}
    assert tracked.read_row({"order_id": "x", "status": "LOST"}) is None  # unreadable
