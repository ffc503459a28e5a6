"""``oms bench`` on a tiny load: the report is complete and self-consistent.

No timing thresholds here: the targets are measured by ``oms bench`` on a
known machine, not asserted by tests on a busy one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from agents.dev.bench import BenchConfig, run_bench
from agents.dev.catalogue import SCARCE_SKU
from agents.dev.demo import demo_order
from agents.dev.stack import Stack
from config import SERVICES
from tests.conftest import make_settings, running_stack
from tests.faults.harness import expected_outcome
from tests.helpers import query, scrape, total

pytestmark = pytest.mark.e2e

KEYS = {
    "mode", "orders", "finished", "unfinished", "seconds", "orders_per_s", "p50_ms", "p95_ms",
    "p99_ms", "max_ms", "confirmed", "cancelled", "workers", "partitions", "pg_step_rate_per_s",
    "pg_batched_step_rate_per_s", "orders_per_s_of_pg_limit", "cpu_s", "peak_rss_mb",
    "rss_mb_start", "rss_mb_end", "rss_mb_timeline", "audit", "send_lag_p99_ms",
    "send_lag_max_ms", "send_errors", "cpu_ms_per_order", "cpu_share", "deliveries_per_order",
    "idle_s", "idle_cpu_percent_of_core", "tenths",
}


@pytest.fixture(scope="module")
async def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("bench"), kafka_bootstrap=broker.bootstrap,
                             topic_prefix=f"b{uuid.uuid4().hex[:6]}.")
    async with running_stack(settings, fresh=True) as running:
        yield running


def assert_consistent(result: dict[str, Any], orders: int, expected_confirmed: int) -> None:
    assert KEYS <= result.keys(), KEYS - result.keys()
    assert result["orders"] == result["finished"] == orders
    assert result["confirmed"] == expected_confirmed  # the demo mix and the stock left say so
    assert result["cancelled"] == orders - expected_confirmed
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["orders_per_s"] > 0 and result["send_errors"] == 0
    assert result["pg_step_rate_per_s"] > 0 and result["pg_batched_step_rate_per_s"] > 0
    for service in SERVICES:
        assert result["peak_rss_mb"][service] >= result["rss_mb_start"][service] > 0
        assert result["rss_mb_end"][service] > 0
        line = result["rss_mb_timeline"][service]
        assert len(line) == 10 and line[-1] == result["rss_mb_end"][service]
    assert result["audit"] == "ok"
    assert_judged_figures(result)


def assert_judged_figures(result: dict[str, Any]) -> None:
    """The figures the targets are judged by are there and add up."""
    assert result["cpu_ms_per_order"] > 0
    share = result["cpu_share"]
    assert set(SERVICES) <= share.keys() and "bench" not in share  # the test's broker is shared
    assert sum(share.values()) == pytest.approx(1.0, abs=0.01)
    delivered = result["deliveries_per_order"]
    assert set(delivered) == set(SERVICES)
    assert all(delivered[s] > 0 for s in SERVICES), delivered
    assert delivered["orchestrator"] >= 2  # it reads a saga's start and its end, no step between
    assert len(result["tenths"]) == 10
    assert all(t["p50_ms"] <= t["p99_ms"] for t in result["tenths"])
    assert any(t["orders_per_s"] > 0 for t in result["tenths"])


async def expected_confirmed(stack: Stack, orders: int) -> int:
    """Confirmed orders the demo mix implies: not declined or sold out, and the scarce SKU's
    orders only while its units last."""
    [row] = await query(stack.settings, "inventory", "SELECT available FROM stock"
                        " WHERE sku = $1", SCARCE_SKU)
    wanted = [expected_outcome(demo_order(i, stack.settings), stack.settings)
              for i in range(orders)]
    confirmable = [w for w in wanted if w.outcome.status == "CONFIRMED"]
    scarce = sum(1 for w in confirmable if w.scarce_units)
    return len(confirmable) - scarce + min(scarce, int(row[0]))


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU each service's workers (and their children) have used since they started."""
    used: dict[str, float] = {}
    pids = stack.supervisor.pids()
    for service, names in stack.workers.items():
        used[service] = 0.0
        for name in names:
            root = psutil.Process(pids[name])
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                used[service] += times.user + times.system
    return used


async def applied_steps(stack: Stack) -> dict[str, float]:
    """Events each database service has applied (its workers' oms_events_total)."""
    return {s: sum([total(await scrape(stack.web_url(w)), "oms_events_total", result="applied")
                    for w in stack.workers[s]]) for s in ("orders", "inventory", "payments")}


async def measured_run(stack: Stack, cfg: BenchConfig) -> dict[str, Any]:
    """Run the bench and check its CPU figures against the workers' own CPU clocks.

    The bench samples CPU only while the load runs, so each service's figure
    must be positive and at most what its processes used over the whole call.
    """
    expected = await expected_confirmed(stack, cfg.total_orders())
    cpu_before, steps_before = cpu_seconds(stack), await applied_steps(stack)
    result = await run_bench(stack.settings, cfg, stack)
    cpu_after, steps_after = cpu_seconds(stack), await applied_steps(stack)
    assert_consistent(result, cfg.total_orders(), expected)
    for service in SERVICES:
        used = cpu_after[service] - cpu_before[service]
        assert 0 < result["cpu_s"][service] <= used + 0.02, (service, result["cpu_s"], used)
    for service, applied in steps_after.items():
        assert applied > steps_before[service], f"{service} handled none of the bench's orders"
    return result


async def test_open_loop_at_a_fixed_rate_reports_every_order(stack: Stack) -> None:
    cfg = BenchConfig(orders=40, rate=20.0, pg_seconds=0.5, pg_connections=2)
    result = await measured_run(stack, cfg)
    assert result["mode"] == "rate"
    assert result["idle_s"] == 0 and result["idle_cpu_percent_of_core"] is None
    assert result["seconds"] >= 39 / 20.0  # the schedule, not the system, set the pace


async def test_max_throughput_reports_every_order(stack: Stack) -> None:
    cfg = BenchConfig(orders=40, window=10, pg_seconds=0.5, pg_connections=2, idle_s=1.0)
    result = await measured_run(stack, cfg)
    assert result["mode"] == "max" and result["send_lag_max_ms"] == 0.0
    idle = result["idle_cpu_percent_of_core"]
    assert set(SERVICES) | {"total"} <= idle.keys() and "bench" not in idle
    assert idle["total"] == pytest.approx(sum(v for k, v in idle.items() if k != "total"),
                                          abs=0.5)
