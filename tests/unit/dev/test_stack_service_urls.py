"""Every worker of ``oms up`` is told where the first worker of each database service listens."""

from __future__ import annotations

from pathlib import Path

from agents.dev.stack import Stack
from agents.dev.supervisor import Supervisor
from config.settings import Settings


def stack(tmp_path: Path, **settings: object) -> Stack:
    return Stack(Settings(_env_file=None, **settings),  # type: ignore[call-arg]
                 Supervisor(tmp_path))


def test_a_second_tracker_worker_asks_the_first_worker_of_each_service(tmp_path: Path) -> None:
    running = stack(tmp_path, web_port_base=7000)
    second = running.worker_settings("orchestrator-1")
    assert second.web_port("orchestrator") != running.settings.web_port("orchestrator")
    assert {s: second.service_url(s) for s in ("orders", "inventory", "payments")} == {
        "orders": running.web_url("orders-0"), "inventory": running.web_url("inventory-0"),
        "payments": running.web_url("payments-0")}


def test_urls_the_settings_name_are_kept(tmp_path: Path) -> None:
    running = stack(tmp_path, service_urls={"payments": "http://psp-side:9000"})
    assert running.worker_settings("orchestrator-1").service_url("payments") == \
        "http://psp-side:9000"
