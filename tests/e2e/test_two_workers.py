"""Two workers per service at once: the load is shared, nothing applied twice, nothing lost."""

from __future__ import annotations

import pytest

from agents.dev.demo import place_orders, settled_audit, wait_terminal
from agents.dev.stack import Stack
from config import SERVICES
from tests.conftest import make_settings, running_stack
from tests.helpers import scrape, total

pytestmark = pytest.mark.e2e

ORDERS = 300


async def handled(stack: Stack, worker: str) -> float:
    """Events a worker handled: steps it applied, or (the tracker) messages Faust gave it."""
    service = worker.rsplit("-", 1)[0]
    samples = await scrape(stack.web_url(worker))
    if service == "orchestrator":
        prefix = stack.settings.app_id(service).replace("-", "_").replace(".", "_")
        return total(samples, f"{prefix}_messages_received_total")
    return total(samples, "oms_events_total", result="applied")


async def test_two_workers_per_service_share_the_load_without_double_apply(
    broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("two"), kafka_bootstrap=broker.bootstrap,
                             topic_prefix="two.")
    async with running_stack(settings, workers_per_service=2, fresh=True) as stack:
        ids = await place_orders(stack.settings, ORDERS)
        assert await wait_terminal(stack.settings, ids, timeout_s=90) == 0
        report = await settled_audit(stack.settings, deadline_s=30)
        assert report.ok, [v for i in report.invariants for v in i.violations][:5]
        assert report.counts["orders"] == ORDERS
        assert report.counts["confirmed"] + report.counts["cancelled"] == ORDERS
        assert stack.all_running()
        # shared: every worker of every service did part of the work
        for service in SERVICES:
            work = {w: await handled(stack, w) for w in stack.workers[service]}
            assert all(n > 0 for n in work.values()), (service, work)
        placed = [total(await scrape(stack.web_url(w)), "oms_events_total",
                        event_type="PlaceOrder", result="applied")
                  for w in stack.workers["orders"]]
        assert sum(placed) == ORDERS, placed  # each order created once, by one of the two
