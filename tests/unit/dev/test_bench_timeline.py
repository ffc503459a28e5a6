"""The bench's RSS timeline: memory at the end of each tenth of the run."""

from __future__ import annotations

from agents.dev.bench import timeline


def test_the_timeline_takes_the_sample_at_the_end_of_each_tenth() -> None:
    assert timeline([float(i) for i in range(1, 101)]) == [10.0 * i for i in range(1, 11)]


def test_with_fewer_samples_than_points_earlier_samples_repeat() -> None:
    assert timeline([5.0, 7.0]) == [5.0] * 9 + [7.0]
