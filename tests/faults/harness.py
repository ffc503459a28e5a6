"""What every fault scenario does: load, inject, wait for quiescence, audit, report.

A scenario places orders through Kafka (as clients do) while its fault runs,
waits until every order is terminal in the orders database and the audit
(the databases and every tracker worker's view) has nothing in flight, then
reports one JSON line:

    {"scenario", "orders", "faults_injected", "confirmed", "cancelled", "lost",
     "violations", "seconds_to_quiescence"}

``lost`` counts orders placed that never became terminal; both it and
``violations`` must be 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agents.dev.catalogue import REGULAR_SKUS
from agents.dev.demo import demo_order, place_order, wait_terminal
from agents.dev.stack import Stack, wait_ready
from agents.messaging.client import OrderClient
from agents.ops.audit import AuditReport, audit
from config import Settings
from schemas.oms_pb2 import Envelope
from tests.conftest import make_settings, running_stack
from tests.helpers import query

REPORTS: list[dict[str, Any]] = []
"""Every scenario's report line, printed again in the terminal summary."""

SETTLE_TIMEOUT_S = 120.0


@asynccontextmanager
async def fault_stack(tmp: Path, workers: int = 1, **overrides: Any) -> AsyncIterator[Stack]:
    """A whole system (own embedded broker, own databases) for one test module."""
    values: dict[str, Any] = {"saga_timeout_s": 15.0}
    values.update(overrides)
    async with running_stack(make_settings(tmp, **values), workers_per_service=workers) as stack:
        yield stack


def mixed_orders(settings: Settings, count: int) -> list[Envelope]:
    """The demo mix: mostly successful, some declined, sold out or scarce."""
    return [demo_order(i, settings) for i in range(count)]


def simple_order(sku: str = REGULAR_SKUS[0], quantity: int = 1,
                 token: str = "tok_visa") -> Envelope:
    """One order for one line."""
    return place_order([(sku, quantity)], token, customer="faults")


async def place(settings: Settings, requests: Sequence[Envelope],
                rate_per_s: float | None = None) -> list[str]:
    """Send the orders, at ``rate_per_s`` (or at once); return their ids."""
    started = time.monotonic()
    async with OrderClient(settings) as client:
        sends = []
        for i, request in enumerate(requests):
            if rate_per_s:
                delay = started + i / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            sends.append(asyncio.ensure_future(client.send(request)))
        await asyncio.gather(*sends)
    return [str(r.order_id) for r in requests]


async def outcome_counts(settings: Settings, order_ids: list[str]) -> dict[str, int]:
    """Orders per status among ``order_ids``, and cancellations per reason (``why:...``)."""
    rows = await query(
        settings, "orders",
        "SELECT status, split_part(coalesce(reason, ''), ':', 1) AS why, count(*) AS n"
        " FROM orders WHERE order_id = ANY($1::uuid[]) GROUP BY 1, 2", order_ids)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + int(r["n"])
        if r["status"] == "CANCELLED":
            counts[f"why:{r['why']}"] = int(r["n"])
    return counts


def tracker_urls(stack: Stack) -> tuple[str, ...]:
    """Every tracker worker's web address, for the audit of the tracker's view."""
    return tuple(stack.web_url(name) for name in stack.workers.get("orchestrator", []))


async def settle(settings: Settings, deadline_s: float,
                 trackers: tuple[str, ...] = ()) -> AuditReport:
    """Audit until nothing is in flight, then once more with no grace at all."""
    deadline = time.monotonic() + deadline_s
    while True:
        report = await audit(settings, settle_grace_s=deadline_s, tracker_urls=trackers)
        if (report.in_flight == 0 and report.ok) or time.monotonic() > deadline:
            return await audit(settings, settle_grace_s=0.0, tracker_urls=trackers)
        await asyncio.sleep(0.2)


async def run_scenario(
    stack: Stack,
    name: str,
    requests: Sequence[Envelope],
    inject: Callable[[], Awaitable[int]],
    *,
    rate_per_s: float | None = None,
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> dict[str, Any]:
    """Place ``requests`` while ``inject()`` runs (it returns how many faults it caused).

    Quiescence is timed from the end of the load: every order terminal and the
    audit with nothing in flight.
    """
    settings = stack.settings
    assert len({r.order_id for r in requests}) == len(requests), "order ids must be unique"

    async def load() -> tuple[list[str], float]:
        ids = await place(settings, requests, rate_per_s)
        return ids, time.monotonic()

    placing = asyncio.ensure_future(load())
    faults = await inject()
    ids, load_ended = await placing
    lost = await wait_terminal(settings, ids, timeout_s)
    report = await settle(settings, deadline_s=60.0, trackers=tracker_urls(stack))
    quiet_s = time.monotonic() - load_ended  # from the end of the load
    counts = await outcome_counts(settings, ids)
    line = {
        "scenario": name, "orders": len(ids), "faults_injected": faults,
        "confirmed": counts.get("CONFIRMED", 0), "cancelled": counts.get("CANCELLED", 0),
        "lost": lost, "violations": report.summary()["violations"],
        "seconds_to_quiescence": round(quiet_s, 1),
        "cancel_reasons": {k[4:]: v for k, v in counts.items() if k.startswith("why:")},
    }
    record(line)
    if not report.ok:
        details = [f"{i.name}: {i.violations[:5]}" for i in report.invariants if not i.ok]
        raise AssertionError(f"{name}: invariants violated: {details}")
    return line


def record(line: dict[str, Any]) -> None:
    """Print the report line now and keep it for the terminal summary (and OMS_FAULT_REPORT)."""
    text = json.dumps(line)
    print(text, flush=True)
    REPORTS.append(line)
    path = os.environ.get("OMS_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(text + "\n")


async def kill_and_restart(stack: Stack, name: str) -> None:
    """``kill -9`` one worker and start it again at once (no waiting for it to be ready)."""
    await stack.supervisor.kill(name)
    await stack.supervisor.restart(name)


async def all_ready(stack: Stack, timeout_s: float = 90.0) -> None:
    """Every worker runs and answers ``/ready/`` (a scenario must leave the stack whole)."""
    for names in stack.workers.values():
        for name in names:
            assert stack.supervisor.running(name), f"{name} is not running"
    await wait_ready(stack, timeout_s)
