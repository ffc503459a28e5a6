"""After a rebalance each saga is tracked by exactly one worker: the owner of its partition.

Faust's memory store keeps the rows a worker wrote itself after their
partition moved to another worker. The tracker must neither time them out
nor count nor list them, and it drops them from its store without writing a
tombstone into the new owner's changelog.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import faust

from agents.orchestrator.ownership import Ownership
from agents.orchestrator.saga import RUNNING, Saga
from agents.orchestrator.table import RESEND_MS, SagaTracker, now_ms
from schemas.oms_pb2 import Envelope
from tests.conftest import make_settings
from tests.unit.orchestrator import fakes


def overdue_rows(ownership: Ownership) -> dict[int, tuple[bytes, dict[str, Any]]]:
    """One overdue running saga in each partition."""
    rows: dict[int, tuple[bytes, dict[str, Any]]] = {}
    while len(rows) < fakes.PARTITIONS:
        oid = str(uuid.uuid4())
        placed = now_ms() - 60_000
        saga = Saga(oid, RUNNING, placed, placed + 30_000, placed, started_at_ms=placed)
        rows.setdefault(ownership.partition(oid.encode()), (oid.encode(), saga.as_dict()))
    return rows


def timed_out(tracked: SagaTracker) -> list[bytes]:
    sent: list[bytes] = []

    async def send(key: bytes, event: Envelope) -> None:
        sent.append(key)

    tracked._send_timeout = send  # type: ignore[method-assign]
    return sent


async def test_the_timer_acts_on_owned_sagas_and_drops_copies_of_lost_partitions(
    tmp_path: Path,
) -> None:
    tracked = fakes.tracker(tmp_path, owned={0, 1})
    rows = overdue_rows(tracked.ownership)
    table = fakes.table(tracked)
    dict.update(table, dict(rows.values()))  # rows already in the store (no changelog)
    sent = timed_out(tracked)

    await tracked.tick()

    mine = {rows[0][0], rows[1][0]}
    assert set(sent) == mine  # lost partitions are the new owner's to time out
    assert set(table) == mine  # stale copies dropped from the store...
    assert table.changelog == []  # ...without a tombstone for the new owner's changelog


async def test_counts_and_views_cover_the_owned_partitions_only(tmp_path: Path) -> None:
    tracked = fakes.tracker(tmp_path, owned={2})
    rows = overdue_rows(tracked.ownership)
    dict.update(fakes.table(tracked), dict(rows.values()))
    assert tracked.counts() == {RUNNING: 1}
    assert [s.order_id.encode() for s in tracked.owned_sagas()] == [rows[2][0]]
    assert tracked.owned_partitions() == [2]


async def test_the_timer_waits_while_a_rebalance_decides_ownership(tmp_path: Path) -> None:
    tracked = fakes.tracker(tmp_path, owned={0})
    rows = overdue_rows(tracked.ownership)
    dict.update(fakes.table(tracked), dict(rows.values()))
    sent = timed_out(tracked)
    tracked.app.rebalancing = True
    await tracked.tick()
    assert sent == [] and len(fakes.table(tracked)) == fakes.PARTITIONS


async def test_standby_copies_are_kept_but_not_acted_on(tmp_path: Path) -> None:
    ownership = Ownership(fakes.PARTITIONS, lambda: {0}, lambda: {1})
    tracked = SagaTracker(faust.App("test-standby"), make_settings(tmp_path), ownership)
    tracked.sagas = fakes.FakeTable()  # type: ignore[assignment]
    rows = overdue_rows(ownership)
    dict.update(fakes.table(tracked), dict(rows.values()))
    sent = timed_out(tracked)
    await tracked.tick()
    assert sent == [rows[0][0]]
    assert set(fakes.table(tracked)) == {rows[0][0], rows[1][0]}
    assert tracked.counts() == {RUNNING: 1}


async def test_a_short_tick_leaves_the_sagas_of_a_partition_lost_since_the_full_scan(
    tmp_path: Path,
) -> None:
    """Between full scans ownership can move: the tick acts on what it owns now."""
    owned = {0, 1}
    tracked = fakes.tracker(tmp_path, owned=owned)
    rows = overdue_rows(tracked.ownership)
    dict.update(fakes.table(tracked), dict(rows.values()))
    sent = timed_out(tracked)
    await tracked.tick()  # the full scan: both owned sagas timed out and watched
    assert set(sent) == {rows[0][0], rows[1][0]}
    owned.discard(1)  # partition 1 moved to another worker
    for key in (rows[0][0], rows[1][0]):
        tracked._timeouts_sent[key] -= RESEND_MS + 1  # both due again
    await tracked.tick()  # a short tick
    assert sent[2:] == [rows[0][0]]
