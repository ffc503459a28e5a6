"""Consumer lag sampling against a stand-in for Faust's consumer (the broker is not the point)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP
from prometheus_client import REGISTRY

from agents.observability import metrics

SOURCE, CHANGELOG = "lagtest.order-events", "lagtest-sagas-changelog"


@dataclass
class FakeConsumer:
    """What :func:`metrics.sample_consumer_lag` reads from Faust's consumer."""

    owned: set[TP]
    ends: dict[TP, int]
    _committed_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return self.owned

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps}


@dataclass
class FakeApp:
    consumer: FakeConsumer
    topics: Any


def lag(partition: int, topic: str = SOURCE) -> float | None:
    return REGISTRY.get_sample_value("oms_consumer_lag", {"service": "lagtest", "topic": topic,
                                                          "partition": str(partition)})


async def test_lag_is_highwater_minus_committed_and_forgets_revoked_partitions() -> None:
    p0, p1, changelog = TP(SOURCE, 0), TP(SOURCE, 1), TP(CHANGELOG, 0)
    consumer = FakeConsumer({p0, p1, changelog}, {p0: 10, p1: 4, changelog: 99},
                            {p0: 7, p1: None})
    app = FakeApp(consumer, type("Topics", (), {"acking_topics": {SOURCE}})())
    shown: set[tuple[str, str]] = set()

    await metrics.sample_consumer_lag(app, "lagtest", shown)  # type: ignore[arg-type]
    assert (lag(0), lag(1), lag(0, CHANGELOG)) == (3, 4, None)

    consumer.owned = {p0}  # p1 revoked in a rebalance
    consumer._committed_offset[p0] = 10
    await metrics.sample_consumer_lag(app, "lagtest", shown)  # type: ignore[arg-type]
    assert (lag(0), lag(1)) == (0, None)
