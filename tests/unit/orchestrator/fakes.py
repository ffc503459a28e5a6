"""The tracker's Faust table as a dict, and a tracker that owns the partitions a test says.

The Faust table's changelog is not what these tests check, but which writes
would reach it is: item writes and deletes are changelog records (kept in
``changelog``), while ``data`` is the local store, whose deletes write none.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import faust
from faust.types.tuples import Message

from agents.orchestrator.ownership import Ownership
from agents.orchestrator.table import SagaTracker
from tests.conftest import make_settings

PARTITIONS = 4


class FakeTable(dict[bytes, Any]):
    """A sagas table: ``table[key] = row`` and ``del table[key]`` are changelog records."""

    def __init__(self, rows: dict[bytes, Any] | None = None) -> None:
        super().__init__(rows or {})
        self.changelog: list[tuple[bytes, Any]] = []

    def __setitem__(self, key: bytes, value: Any) -> None:
        self.changelog.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.changelog.append((key, None))  # a tombstone
        super().__delitem__(key)

    @property
    def data(self) -> _Store:
        return _Store(self)


class _Store:
    """The table's local store: deleting here writes nothing to the changelog."""

    def __init__(self, table: FakeTable) -> None:
        self._table = table

    def __delitem__(self, key: bytes) -> None:
        dict.__delitem__(self._table, key)


class DeadLetterTopic:
    """The dead-letter port of :class:`~agents.messaging.dead_letters.DeadLetters`, in memory."""

    failing = False

    def __init__(self) -> None:
        self.published: list[tuple[Message, str]] = []

    async def publish(self, message: Message, reason: str) -> None:
        self.published.append((message, reason))


def tracker(tmp_path: Path, rows: dict[bytes, Any] | None = None,
            owned: Collection[int] = range(PARTITIONS), **settings: Any) -> SagaTracker:
    """A tracker over a :class:`FakeTable` of ``rows`` that owns the ``owned`` partitions."""
    config = make_settings(tmp_path, partitions=PARTITIONS, **settings)
    tracked = SagaTracker(faust.App(f"test-tracker-{tmp_path.name}"), config,
                          Ownership(PARTITIONS, lambda: frozenset(owned)))
    tracked.sagas = FakeTable(rows)  # type: ignore[assignment]
    return tracked


def table(tracked: SagaTracker) -> FakeTable:
    assert isinstance(tracked.sagas, FakeTable)
    return tracked.sagas
