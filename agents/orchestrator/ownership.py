"""Which sagas a tracker worker owns: the rows of the table partitions Faust assigned to it.

The tracker's table is partitioned like its source topics, and after each
rebalance every partition has one active owner. The local store is not that
set of rows: Faust's memory store keeps the rows a worker wrote itself after
a rebalance moved their partition to another worker (only rows replayed from
the changelog are dropped, at the next recovery), and with standby replicas
it also holds copies of other workers' partitions. So the timer, the counts
and the views go by the partition of each key, computed as Faust's producer
computes it for the changelog (``use_partitioner=True``) and as
``app.table_route`` does to find a key's owner.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP, TableT

Partitions = Callable[[], Collection[int]]
"""Returns partition numbers of the sagas table (e.g. this worker's active ones)."""


class Ownership:
    """The partition of each saga key, and the partitions this worker owns or keeps."""

    def __init__(self, partitions: int, actives: Partitions,
                 standbys: Partitions = frozenset) -> None:
        self._all = list(range(partitions))
        self._actives = actives
        self._standbys = standbys
        self._partitioner = DefaultPartitioner()
        self._of_key: dict[bytes, int] = {}  # murmur2 costs ~14 us a key; the timer asks often

    @classmethod
    def assigned(cls, app: faust.App, table: TableT, partitions: int) -> Ownership:
        """What Faust's assignor gave this worker, for ``table``'s changelog topic."""
        topic = table.changelog_topic.get_topic_name()

        def of(tps: Collection[TP]) -> frozenset[int]:
            return frozenset(tp.partition for tp in tps if tp.topic == topic)

        return cls(partitions, lambda: of(app.assignor.assigned_actives()),
                   lambda: of(app.assignor.assigned_standbys()))

    def partition(self, key: bytes) -> int:
        """The table partition of ``key`` (aiokafka's default partitioner, as Faust's producer)."""
        found = self._of_key.get(key)
        if found is None:
            found = self._of_key[key] = self._partitioner(key, self._all, self._all)
        return found

    def owned(self) -> frozenset[int]:
        """The partitions this worker is the active owner of."""
        return frozenset(self._actives())

    def kept(self) -> frozenset[int]:
        """The partitions whose rows this worker keeps: its own and its standby copies."""
        return self.owned() | frozenset(self._standbys())

    def forget(self, key: bytes) -> None:
        """Drop the cached partition of a key no longer in the table."""
        self._of_key.pop(key, None)
