"""Two workers per service at once: nothing applied twice, nothing lost."""

from __future__ import annotations

import pytest

from agents.dev.demo import place_orders, settled_audit, wait_terminal
from tests.conftest import make_settings, running_stack

pytestmark = pytest.mark.e2e


async def test_two_workers_per_service_share_the_load_without_double_apply(
    broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("two"), kafka_bootstrap=broker.bootstrap,
                             topic_prefix="two.")
    async with running_stack(settings, workers_per_service=2, fresh=True) as stack:
        ids = await place_orders(stack.settings, 300)
        assert await wait_terminal(stack.settings, ids, timeout_s=90) == 0
        report = await settled_audit(stack.settings, deadline_s=30)
        assert report.ok, [v for i in report.invariants for v in i.violations][:5]
        assert report.counts["orders"] == 300
        assert report.counts["confirmed"] + report.counts["cancelled"] == 300
        assert stack.all_running()
