"""Throughput and p50/p99 per minute, from snapshots of the tracker's own histogram."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from agents.orchestrator.history import History, quantile, summarise

BUCKETS = (0.01, 0.1, 1.0)
MINUTE_MS = 60_000
T0 = 1_700_000_040_000  # on a minute boundary


class Clock:
    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def __call__(self) -> float:
        return self.at_ms / 1000


def histogram() -> Histogram:
    return Histogram("e2e_seconds", "test", ["outcome"], buckets=BUCKETS,
                     registry=CollectorRegistry())


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    bounds = [0.01, 0.1, 1.0]
    assert quantile(0.5, bounds, [0, 10, 10, 10]) == pytest.approx(0.055)
    assert quantile(0.99, bounds, [5, 5, 5, 10]) == 1.0  # in +Inf: the highest bound
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None


def test_each_minute_counts_what_finished_in_it() -> None:
    e2e, clock = histogram(), Clock(T0 + 1_000)
    history = History(e2e, clock=clock)  # a fresh process: the histogram is empty
    for seconds in (0.05, 0.05, 0.05, 0.5):  # first minute: three fast, one slow
        e2e.labels("confirmed").observe(seconds)
    clock.at_ms = T0 + 55_000
    history.sample()
    clock.at_ms = T0 + MINUTE_MS + 5_000
    e2e.labels("cancelled").observe(0.005)  # second minute, so far
    history.sample()

    merged = summarise([history.minutes(count=3)])
    previous, first, second = merged["minutes"]
    assert [m["start_ms"] for m in merged["minutes"]] == [T0 - MINUTE_MS, T0, T0 + MINUTE_MS]
    assert previous["finished"] == 0 and previous["p50_ms"] is None
    assert first["finished"] == 4 and first["outcomes"] == {"confirmed": 4}
    assert first["p50_ms"] == pytest.approx(70.0) and first["p99_ms"] == pytest.approx(964.0)
    assert first["seconds"] == 54.0 and first["per_s"] == pytest.approx(4 / 54, abs=0.01)
    assert second["finished"] == 1 and second["outcomes"] == {"cancelled": 1}
    assert merged["window"]["finished"] == 5


def test_two_workers_minutes_add_up_before_the_quantiles() -> None:
    """Quantiles of the sum, not the sum of quantiles: one fast worker, one slow."""
    answers = []
    for seconds in (0.005, 0.5):
        e2e, clock = histogram(), Clock(T0)
        history = History(e2e, clock=clock)
        for _ in range(10):
            e2e.labels("confirmed").observe(seconds)
        clock.at_ms = T0 + 30_000
        history.sample()
        answers.append(history.minutes(count=1))
    idle = History(histogram(), clock=Clock(T0 + 30_000)).minutes(count=1)  # never finished one
    [minute] = summarise([*answers, idle])["minutes"]
    assert minute["finished"] == 20 and minute["per_s"] == pytest.approx(20 / 30, abs=0.01)
    assert minute["p50_ms"] == pytest.approx(10.0)  # the edge between the two workers' buckets
    assert minute["p99_ms"] > 900


def test_the_ring_keeps_ten_minutes() -> None:
    clock = Clock(T0)
    history = History(histogram(), clock=clock)
    for _ in range(500):
        clock.at_ms += 5_000
        history.sample()
    assert len(history._snapshots) <= 600 / 5 + 2  # noqa: SLF001
    assert len(history.minutes()["minutes"]) == 10


def test_workers_sampled_on_either_side_of_a_minute_still_give_ten_minutes() -> None:
    """One worker's last snapshot is in the new minute, the other's still in the old one."""
    late, early = (History(histogram(), clock=Clock(at)) for at in (T0 + 1_000, T0 - 1_000))
    merged = summarise([late.minutes(), early.minutes()])
    assert len(merged["minutes"]) == 10
    assert merged["minutes"][-1]["start_ms"] == T0  # the newest minute any worker is in
