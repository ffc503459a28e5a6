"""The figures ``oms bench`` judges the performance targets by, computed from raw samples.

Kept apart from :mod:`agents.dev.bench` (which drives the load) so each is a
pure function of what was measured and can be tested on exact numbers:

* CPU per finished order of the system under test (broker, PostgreSQL, the
  services; never the bench client, which a real client would not share a
  machine with), and each group's share of it: throughput here is CPU-bound,
  so this is what a change must lower.
* Deliveries per order per service, from the workers' ``oms_events_total``
  before and after the load: Faust costs CPU per record it hands an agent,
  whether or not the agent uses it.
* Idle CPU, as percent of one core: what the system burns with no orders.
* The run in tenths by send order: a system that slows with history shows it
  as a last tenth slower than the first, in a single run.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agents.dev.demo import percentile

CLIENT_GROUP = "bench"
"""The sampler's group for this process: measured, but not part of the system's cost."""
EVENTS_METRIC = "oms_events"
"""Every record an agent receives is counted here (service, event_type, result)."""
TENTHS = 10


def system_cpu_s(cpu_s: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds of the system's groups: every sampled group but the bench client."""
    return {group: s for group, s in cpu_s.items() if group != CLIENT_GROUP}


def cpu_ms_per_order(cpu_s: Mapping[str, float], finished: int) -> float | None:
    """CPU-ms of the system per finished order; None with nothing finished or sampled."""
    total = sum(system_cpu_s(cpu_s).values())
    if finished <= 0 or total <= 0:
        return None
    return round(total * 1000.0 / finished, 2)


def cpu_share(cpu_s: Mapping[str, float]) -> dict[str, float]:
    """Each system group's fraction of the system's CPU (they sum to 1, give or take rounding)."""
    system = system_cpu_s(cpu_s)
    total = sum(system.values())
    if total <= 0:
        return {}
    return {group: round(s / total, 3) for group, s in system.items()}


def idle_percent_of_core(cpu_s: Mapping[str, float], seconds: float) -> dict[str, float]:
    """CPU over ``seconds`` of wall time as percent of one core (100 = one core busy),
    per system group and as ``total``."""
    if seconds <= 0:
        raise ValueError(f"idle window must be positive, got {seconds}")
    system = system_cpu_s(cpu_s)
    out = {group: round(s / seconds * 100.0, 1) for group, s in system.items()}
    out["total"] = round(sum(system.values()) / seconds * 100.0, 1)
    return out


# --------------------------------------------------------------- deliveries


def events_by_service(exposition: str) -> dict[str, float]:
    """Sum of ``oms_events_total`` per ``service`` label in one Prometheus text exposition."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != EVENTS_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{EVENTS_METRIC}_total":
                service = sample.labels.get("service", "")
                totals[service] = totals.get(service, 0.0) + sample.value
    return totals


def sum_by_service(scrapes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per-service totals over several workers' scrapes."""
    totals: dict[str, float] = {}
    for scrape in scrapes:
        for service, value in scrape.items():
            totals[service] = totals.get(service, 0.0) + value
    return totals


def deliveries_per_order(before: Mapping[str, float], after: Mapping[str, float],
                         services: Sequence[str], finished: int) -> dict[str, float] | None:
    """Records each service's agents received during the load, per finished order.

    A service missing from a scrape counted nothing yet (0). A worker restarted
    during the run resets its counter, which would make the difference
    negative; that is clamped to 0 rather than reported as a figure.
    """
    if finished <= 0:
        return None
    return {s: round(max(after.get(s, 0.0) - before.get(s, 0.0), 0.0) / finished, 2)
            for s in services}


async def scrape_events(urls: Sequence[str]) -> dict[str, float]:
    """``oms_events_total`` per service, summed over the workers at ``urls`` (base URLs)."""
    scrapes = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for url in urls:
            async with http.get(url + "/metrics") as resp:
                resp.raise_for_status()
                scrapes.append(events_by_service(await resp.text()))
    return sum_by_service(scrapes)


# --------------------------------------------------------------- tenths


@dataclass(frozen=True)
class Sent:
    """One order in send order: when it was sent, when its terminal event was seen (None =
    never), and whether it is a hung order (left out of the percentiles)."""

    sent_at: float
    finished_at: float | None
    hung: bool = False


def tenths(orders: Sequence[Sent], parts: int = TENTHS) -> list[dict[str, float]]:
    """Throughput and p50/p99 of each tenth of the orders, by send order.

    A tenth's throughput is the system's: all orders that finished while that
    tenth's orders were finishing (between its 10th and 90th percentile finish
    times, so one straggler does not set the window), per second. The tenth's
    own finish rate would read low whenever tenths overlap, as they do at
    maximum throughput, where a window of orders is in flight at once. There,
    the first tenth finishes in the burst of the window's first wave (sent at
    once, applied in large batches) and reads high when a tenth is shorter than
    the window; compare first and last tenths of runs much longer than it.
    """
    finishes = sorted(o.finished_at for o in orders if o.finished_at is not None)
    n = len(orders)
    return [_tenth(orders[n * k // parts:n * (k + 1) // parts], finishes) for k in range(parts)]


def _tenth(part: Sequence[Sent], all_finishes: Sequence[float]) -> dict[str, float]:
    finishes = sorted(o.finished_at for o in part if o.finished_at is not None)
    latencies = sorted((o.finished_at - o.sent_at) * 1000.0 for o in part
                       if o.finished_at is not None and not o.hung)
    return {"orders_per_s": finish_rate(finishes, all_finishes),
            "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99)}


def finish_rate(finishes: Sequence[float], all_finishes: Sequence[float] | None = None) -> float:
    """Orders/s of ``all_finishes`` (default: ``finishes``) between the 10th and the 90th
    percentile of ascending ``finishes`` (0 if that window is empty).

    Counts finishes after the window opens up to and including when it closes.
    """
    n = len(finishes)
    if n < 2:
        return 0.0
    low, high = finishes[n // 10], finishes[n - 1 - n // 10]
    every = finishes if all_finishes is None else all_finishes
    count = bisect_right(every, high) - bisect_right(every, low)
    return round(count / (high - low), 1) if high > low else 0.0
