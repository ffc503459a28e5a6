"""Throughput and p50/p99 over the last minutes, from the tracker's own metrics.

The tracker observes every finished saga in ``oms_order_e2e_seconds`` (a
histogram by outcome). :class:`History` snapshots its cumulative buckets
every few seconds into a ring of ten minutes, so the console can show per
minute how many sagas finished and how long they took without a Prometheus
server. A worker answers with bucket *counts* per minute (:meth:`History.minutes`),
not quantiles: counts from several workers add up, quantiles do not.
:func:`summarise` adds the workers' counts and only then estimates the
quantiles, the way Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram

from agents.observability import metrics

SAMPLE_S = 5.0
KEEP_S = 600.0
STEP_S = 60
"""The console's resolution: one row per minute."""


@dataclass(frozen=True)
class Snapshot:
    """The histogram at one moment: cumulative bucket counts (over every outcome) and counts."""

    at_ms: int
    buckets: tuple[float, ...]
    """Cumulative, one per bound of :attr:`History.bounds`, the last for +Inf."""
    outcomes: dict[str, float]


class History:
    """A ring of snapshots of one histogram; :meth:`sample` adds one (the tracker's timer)."""

    def __init__(self, histogram: Histogram = metrics.ORDER_E2E, keep_s: float = KEEP_S,
                 sample_s: float = SAMPLE_S, clock: Callable[[], float] = time.time) -> None:
        self._histogram = histogram
        self._clock = clock
        self._snapshots: deque[Snapshot] = deque(maxlen=int(keep_s / sample_s) + 2)
        self.bounds: list[float] = []
        self.sample()

    def sample(self) -> None:
        """Record the histogram as it is now."""
        buckets: dict[float, float] = {}
        outcomes: dict[str, float] = {}
        for family in self._histogram.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    outcomes[sample.labels["outcome"]] = sample.value
        if buckets:  # none before the first outcome: a labelled histogram has no children yet
            self.bounds = sorted(buckets)
        self._snapshots.append(Snapshot(int(self._clock() * 1000),
                                        tuple(buckets[b] for b in sorted(buckets)), outcomes))

    def minutes(self, count: int = int(KEEP_S // STEP_S)) -> dict[str, Any]:
        """Bucket counts for each of the last ``count`` minutes (the current one so far).

        Minutes start on multiples of 60 s of the epoch, so every worker's
        minutes line up. A minute's counts are the difference of the last
        snapshots at or before its two ends; ``seconds`` is the time those
        snapshots span (shorter for the current minute, or one the worker
        started in).
        """
        now = self._snapshots[-1].at_ms
        current = now - now % (STEP_S * 1000)
        rows = []
        for k in range(count - 1, -1, -1):
            start_ms = current - k * STEP_S * 1000
            first, last = self._at(start_ms), self._at(start_ms + STEP_S * 1000)
            rows.append({
                "start_ms": start_ms, "seconds": max(last.at_ms - first.at_ms, 0) / 1000,
                "buckets": _difference(first, last),
                "outcomes": {o: n - first.outcomes.get(o, 0.0) for o, n in last.outcomes.items()},
            })
        return {"step_s": STEP_S, "bounds": [b for b in self.bounds if math.isfinite(b)],
                "minutes": rows}

    def _at(self, at_ms: int) -> Snapshot:
        """The last snapshot taken at or before ``at_ms`` (the first one if none was)."""
        found = self._snapshots[0]
        for snapshot in self._snapshots:
            if snapshot.at_ms > at_ms:
                break
            found = snapshot
        return found


def _difference(first: Snapshot, last: Snapshot) -> list[float]:
    """Bucket counts added between two snapshots ([] while nothing was ever observed)."""
    if not last.buckets:
        return []
    base = first.buckets or (0.0,) * len(last.buckets)
    return [b - a for a, b in zip(base, last.buckets, strict=True)]


def summarise(answers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' :meth:`History.minutes` as one: per minute and over them all.

    Each row: sagas finished (by outcome), finished per second, p50 and p99 in
    milliseconds (None when nothing finished). The window is the newest minutes,
    as many as one worker answers.
    """
    given = list(answers)
    bounds: list[float] = next((a["bounds"] for a in given if a.get("bounds")), [])
    merged: dict[int, dict[str, Any]] = {}
    for answer in given:
        for row in answer.get("minutes", []):
            into = merged.setdefault(row["start_ms"], {"buckets": [0.0] * (len(bounds) + 1),
                                                       "outcomes": {}, "seconds": 0.0})
            if row["buckets"]:  # [] from a worker that never finished a saga
                into["buckets"] = [a + b for a, b in zip(into["buckets"], row["buckets"],
                                                         strict=True)]
            into["seconds"] = max(into["seconds"], row["seconds"])
            for outcome, n in row["outcomes"].items():
                into["outcomes"][outcome] = into["outcomes"].get(outcome, 0.0) + n
    # workers sampled on either side of a minute's start disagree on the newest minute:
    # keep as many minutes as one worker answers, the newest
    shown = max((len(a.get("minutes", [])) for a in given), default=0)
    kept = sorted(merged.items())[-shown:] if shown else []
    minutes = [{"start_ms": start, **_figures(bounds, row)} for start, row in kept]
    rows = [row for _, row in kept]
    total = {"buckets": [sum(col) for col in zip(*(r["buckets"] for r in rows), strict=True)]
             or [0.0] * (len(bounds) + 1),
             "seconds": sum(r["seconds"] for r in rows),
             "outcomes": _add(r["outcomes"] for r in rows)}
    return {"step_s": STEP_S, "minutes": minutes, "window": _figures(bounds, total)}


def _add(counts: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for count in counts:
        for key, n in count.items():
            total[key] = total.get(key, 0.0) + n
    return total


def _figures(bounds: list[float], row: dict[str, Any]) -> dict[str, Any]:
    finished = row["buckets"][-1] if row["buckets"] else 0.0
    p50, p99 = (quantile(q, bounds, row["buckets"]) for q in (0.5, 0.99))
    return {"finished": int(finished), "seconds": row["seconds"],
            "per_s": round(finished / row["seconds"], 2) if row["seconds"] else None,
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "outcomes": {o: int(n) for o, n in row["outcomes"].items() if n}}


def quantile(q: float, bounds: list[float], cumulative: list[float]) -> float | None:
    """The ``q`` quantile of cumulative bucket counts (the last for +Inf), interpolated.

    Linear inside the bucket the rank falls in, like Prometheus; a rank in the
    +Inf bucket gives the highest finite bound. None when the counts are empty.
    """
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[i - 1] if i else 0.0
            below = cumulative[i - 1] if i else 0.0
            inside = count - below
            return lower + (bounds[i] - lower) * ((rank - below) / inside if inside else 1.0)
    return bounds[-1] if bounds else None
