"""``oms bench`` on a tiny load: the report is complete and self-consistent.

No timing thresholds here: the targets are measured by ``oms bench`` on a
known machine, not asserted by tests on a busy one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.dev.bench import BenchConfig, run_bench
from agents.dev.stack import Stack
from config import SERVICES
from tests.conftest import make_settings, running_stack

pytestmark = pytest.mark.e2e

KEYS = {
    "mode", "orders", "finished", "unfinished", "seconds", "orders_per_s", "p50_ms", "p95_ms",
    "p99_ms", "max_ms", "confirmed", "cancelled", "workers", "partitions", "pg_step_rate_per_s",
    "pg_batched_step_rate_per_s", "orders_per_s_of_pg_limit", "cpu_s", "peak_rss_mb",
    "rss_mb_start", "rss_mb_end", "rss_mb_timeline", "audit", "send_lag_p99_ms",
    "send_lag_max_ms", "send_errors",
}


@pytest.fixture(scope="module")
async def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("bench"), kafka_bootstrap=broker.bootstrap,
                             topic_prefix=f"b{uuid.uuid4().hex[:6]}.")
    async with running_stack(settings, fresh=True) as running:
        yield running


def assert_consistent(result: dict[str, Any], orders: int) -> None:
    assert KEYS <= result.keys(), KEYS - result.keys()
    assert result["orders"] == result["finished"] == orders
    assert result["confirmed"] + result["cancelled"] == orders
    assert result["cancelled"] > 0 and result["confirmed"] > 0  # the demo mix has both
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["orders_per_s"] > 0 and result["send_errors"] == 0
    assert result["pg_step_rate_per_s"] > 0 and result["pg_batched_step_rate_per_s"] > 0
    for service in SERVICES:
        assert result["cpu_s"][service] > 0  # every worker handled orders
        assert result["peak_rss_mb"][service] >= result["rss_mb_start"][service] > 0
        assert result["rss_mb_end"][service] > 0
        line = result["rss_mb_timeline"][service]
        assert len(line) == 10 and line[-1] == result["rss_mb_end"][service]
    assert result["audit"] == "ok"


async def test_open_loop_at_a_fixed_rate_reports_every_order(stack: Stack) -> None:
    cfg = BenchConfig(orders=40, rate=20.0, pg_seconds=0.5, pg_connections=2)
    result = await run_bench(stack.settings, cfg, stack)
    assert_consistent(result, 40)
    assert result["mode"] == "rate"
    assert result["seconds"] >= 39 / 20.0  # the schedule, not the system, set the pace


async def test_max_throughput_reports_every_order(stack: Stack) -> None:
    cfg = BenchConfig(orders=40, window=10, pg_seconds=0.5, pg_connections=2)
    result = await run_bench(stack.settings, cfg, stack)
    assert_consistent(result, 40)
    assert result["mode"] == "max" and result["send_lag_max_ms"] == 0.0
