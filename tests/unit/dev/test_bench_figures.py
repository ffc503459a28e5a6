"""The figures the performance targets are judged by, on exact inputs."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from agents.dev.bench import BenchConfig, OrderWatch, cpu_figures, load_summary, measure_idle
from agents.dev.bench_figures import (
    Sent,
    cpu_ms_per_order,
    cpu_share,
    deliveries_per_order,
    events_by_service,
    finish_rate,
    idle_percent_of_core,
    sum_by_service,
    tenths,
)
from config import SERVICES
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import OrderConfirmed

CPU = {"broker": 2.0, "postgres": 3.0, "orders": 1.5, "inventory": 1.0, "payments": 1.0,
       "orchestrator": 1.5, "bench": 40.0}


def test_cpu_per_order_is_the_systems_cpu_without_the_client() -> None:
    assert cpu_ms_per_order(CPU, finished=1000) == 10.0  # 10 CPU-s of the system / 1000


def test_cpu_per_order_is_none_when_nothing_finished_or_nothing_was_sampled() -> None:
    assert cpu_ms_per_order(CPU, finished=0) is None
    assert cpu_ms_per_order({"bench": 5.0}, finished=10) is None


def test_the_shares_split_the_systems_cpu_and_leave_the_client_out() -> None:
    share = cpu_share(CPU)
    assert "bench" not in share
    assert share["postgres"] == 0.3 and share["broker"] == 0.2 and share["orders"] == 0.15
    assert sum(share.values()) == pytest.approx(1.0)


def test_without_a_stack_the_cpu_figures_are_not_given() -> None:
    assert cpu_figures(CPU, 1000, whole_system=False) == {"cpu_ms_per_order": None,
                                                          "cpu_share": None}
    assert cpu_figures(CPU, 1000, whole_system=True)["cpu_ms_per_order"] == 10.0


def test_idle_cpu_is_percent_of_one_core_per_group_and_in_total() -> None:
    idle = idle_percent_of_core({"broker": 0.5, "postgres": 0.2, "bench": 9.0}, seconds=10.0)
    assert idle == {"broker": 5.0, "postgres": 2.0, "total": 7.0}


async def test_without_system_processes_idle_cpu_is_not_measured() -> None:
    said: list[str] = []
    idle = measure_idle({"bench": [(os.getpid(), False)]}, 3600.0, said.append)
    assert await asyncio.wait_for(idle, timeout=5.0) is None  # returns at once, no hour-long wait
    assert said == ["idle CPU: no system processes to sample (--external), not measured"]


def test_an_empty_idle_window_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        idle_percent_of_core({"broker": 0.5}, seconds=0.0)


EXPOSITION = """\
# HELP oms_events_total Events consumed, by result
# TYPE oms_events_total counter
oms_events_total{event_type="OrderCreated",result="applied",service="inventory"} 120.0
oms_events_total{event_type="OrderConfirmed",result="applied",service="inventory"} 80.0
oms_events_total{event_type="PaymentCompleted",result="ignored",service="inventory"} 3.0
# HELP oms_events_created Events consumed, by result
# TYPE oms_events_created gauge
oms_events_created{event_type="OrderCreated",result="applied",service="inventory"} 1.7e9
# HELP oms_batch_size Events per step transaction
# TYPE oms_batch_size histogram
oms_batch_size_count{service="inventory"} 50.0
"""


def test_a_scrape_sums_the_events_counter_by_service_and_nothing_else() -> None:
    assert events_by_service(EXPOSITION) == {"inventory": 203.0}


def test_workers_of_one_service_add_up() -> None:
    assert sum_by_service([{"orders": 3.0}, {"orders": 4.0, "payments": 1.0}]) == {
        "orders": 7.0, "payments": 1.0}


def test_deliveries_are_the_difference_per_finished_order_for_every_service() -> None:
    before = {"orders": 100.0, "inventory": 50.0, "orchestrator": 10.0}
    after = {"orders": 500.0, "inventory": 250.0, "payments": 300.0, "orchestrator": 810.0}
    assert deliveries_per_order(before, after, SERVICES, finished=100) == {
        "orders": 4.0, "inventory": 2.0, "payments": 3.0, "orchestrator": 8.0}
    assert deliveries_per_order(before, after, SERVICES, finished=0) is None


def test_a_counter_reset_by_a_restart_gives_zero_not_a_negative_figure() -> None:
    assert deliveries_per_order({"orders": 900.0}, {"orders": 100.0}, ["orders"], 10) == {
        "orders": 0.0}


def test_the_finish_rate_ignores_the_slowest_and_fastest_tenth() -> None:
    steady = [i * 0.01 for i in range(100)]  # 100 orders/s
    assert finish_rate(steady) == 100.0
    assert finish_rate([*steady[:-1], 60.0]) == 100.0  # one straggler changes nothing
    assert finish_rate([1.0]) == 0.0 and finish_rate([]) == 0.0


def test_tenths_go_by_send_order_and_show_a_slowing_run() -> None:
    # 100 orders; the first half take 10 ms, the second half 100 ms; one finishes every 10 ms
    orders = [Sent(i * 0.01, i * 0.01 + (0.01 if i < 50 else 0.1)) for i in range(100)]
    parts = tenths(orders)
    assert len(parts) == 10
    assert [p["p50_ms"] for p in parts] == [10.0] * 5 + [100.0] * 5
    assert all(p["orders_per_s"] == 100.0 for p in parts)


def test_a_tenths_throughput_is_the_systems_while_it_finished_not_its_own_share() -> None:
    # 20 orders sent at once, one finishing every 10 ms, the two halves interleaved: each half
    # finishes at 50/s, while the system finishes 100 orders/s all along
    orders = [Sent(0.0, (2 * (i % 10) + i // 10) * 0.01) for i in range(20)]
    assert sorted(o.finished_at or 0 for o in orders) == [i * 0.01 for i in range(20)]
    first, second = tenths(orders, parts=2)
    assert first["orders_per_s"] == second["orders_per_s"] == 100.0


def test_a_tenth_leaves_hung_and_unfinished_orders_out_of_its_percentiles() -> None:
    orders = [Sent(0.0, 0.02), Sent(0.0, 30.0, hung=True), Sent(0.0, None)]
    [part] = tenths(orders, parts=1)
    assert part["p99_ms"] == 20.0


def test_fewer_orders_than_tenths_give_empty_tenths() -> None:
    parts = tenths([Sent(0.0, 0.05)])
    assert parts[-1]["p50_ms"] == 50.0
    assert parts[0] == {"orders_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}


def test_the_summary_has_the_tenths_of_the_orders_watched() -> None:
    watch = OrderWatch(total=20)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for i, order_id in enumerate(ids):
        watch.record_sent(order_id, i * 0.1)
    for i, order_id in enumerate(reversed(ids)):  # the last sent finishes first
        confirmed = encode(new_envelope(order_id, OrderConfirmed(), producer="t"))
        watch.observe(order_id.encode(), confirmed, 2.0 + i * 0.1)
    parts = load_summary(watch, BenchConfig(rate=10.0))["tenths"]
    assert parts[0]["p99_ms"] == 3900.0  # order 0: sent at 0, finished at 3.9 s
    assert parts[-1]["p99_ms"] == 300.0  # order 18: sent at 1.8 s, finished at 2.1 s
