"""What every fault scenario does: load, inject, wait for quiescence, audit, report.

A scenario places orders through Kafka (as clients do) while its fault runs,
waits until every order is terminal in the orders database and the audit
(the databases and every tracker worker's view) has nothing in flight, then
reports one JSON line:

    {"scenario", "orders", "faults_injected", "confirmed", "cancelled", "lost",
     "timeouts", "wrong_outcome", "violations", "seconds_to_quiescence", "cancel_reasons"}

Counting terminal orders is not enough: a dropped event ends as a timeout
cancellation, which is terminal. So every order's outcome is also checked
against what its request implies (:func:`expected_outcome`: its token, its
SKUs and, for the scarce SKU, the units left when the scenario started).
``lost`` counts orders that never became terminal, ``timeouts`` the "saga timed
out" cancellations, ``wrong_outcome`` the orders whose outcome differs from
the expected one (an unexpected timeout is one of them). ``lost``,
``wrong_outcome`` and ``violations`` must be 0, or :func:`run_scenario` fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.dev.catalogue import REGULAR_SKUS, SCARCE_SKU, catalogue
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
CONFIRMED, CANCELLED = "CONFIRMED", "CANCELLED"
TIMED_OUT = "saga timed out"
OUT_OF_STOCK = "out of stock"


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
    """Send the orders, at ``rate_per_s`` (or at once); return their ids.

    Each request is stamped as placed when it is sent, as a client would: the
    requests are built before the load, and the saga deadline counts from
    placement, so a stamp from building time would shorten the deadline of
    the last order of a paced load by the whole load's duration.
    """
    started = time.monotonic()
    async with OrderClient(settings) as client:
        sends = []
        for i, request in enumerate(requests):
            if rate_per_s:
                delay = started + i / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            request.placed_at_ms = request.occurred_at_ms = int(time.time() * 1000)
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


# ------------------------------------------------------------ expected outcomes


@dataclass(frozen=True)
class Outcome:
    """An order's final state: its status and, when cancelled, its reason (or its prefix)."""

    status: str
    reason: str = ""

    def matches(self, status: str, reason: str | None) -> bool:
        return status == self.status and (reason or "").startswith(self.reason)

    def __str__(self) -> str:
        return f"{self.status} ({self.reason})" if self.reason else self.status


@dataclass(frozen=True)
class Expectation:
    """What a request must end as.

    ``scarce_units`` > 0: the order competes for the scarce SKU, so it ends as
    ``outcome`` if it got the units and ``CANCELLED (out of stock: SKU-SCARCE)``
    if not; :func:`judge` checks how many got them against the units left.
    """

    outcome: Outcome
    scarce_units: int = 0


def expected_outcome(request: Envelope, settings: Settings) -> Expectation:
    """The outcome a ``PlaceOrder`` implies on a healthy system, from its SKUs and its token.

    An unknown or sold-out SKU is rejected by inventory before any payment;
    then the token decides: declined, never answered (the saga times out), a
    slow capture that lands after the saga deadline, or a capture.
    """
    body = request.place_order
    stock = catalogue()
    skus = [line.sku for line in body.lines]
    unknown = [s for s in skus if s not in stock]
    if unknown:
        return Expectation(Outcome(CANCELLED, f"unknown sku: {unknown[0]}"))
    if any(stock[s][0] == 0 for s in skus):
        return Expectation(Outcome(CANCELLED, OUT_OF_STOCK))
    token = body.payment_token
    slow_times_out = settings.gateway_slow_ms / 1000 >= settings.saga_timeout_s
    if token == settings.gateway_decline_token:
        outcome = Outcome(CANCELLED, "payment failed")
    elif token == settings.gateway_timeout_token or (
            token == settings.gateway_slow_token and slow_times_out):
        outcome = Outcome(CANCELLED, TIMED_OUT)
    else:
        outcome = Outcome(CONFIRMED)
    scarce = sum(line.quantity for line in body.lines if line.sku == SCARCE_SKU)
    return Expectation(outcome, scarce)


@dataclass
class Judgement:
    """How a scenario's orders ended against what their requests imply."""

    timeouts: int
    wrong: list[str]
    """One line per order whose outcome is not the expected one."""


async def scarce_available(settings: Settings) -> int:
    """Units of the scarce SKU still available (read before a scenario places its orders)."""
    rows = await query(settings, "inventory", "SELECT available FROM stock WHERE sku = $1",
                       SCARCE_SKU)
    return int(rows[0]["available"])


async def judge(settings: Settings, requests: Sequence[Envelope], scarce_before: int,
                expect: Mapping[str, Outcome] | None = None) -> Judgement:
    """Read the orders' final states and :func:`judge_rows` them."""
    rows = await query(settings, "orders", "SELECT order_id::text AS id, status, reason"
                       " FROM orders WHERE order_id = ANY($1::uuid[])",
                       [str(r.order_id) for r in requests])
    ended = {r["id"]: (r["status"], r["reason"]) for r in rows}
    return judge_rows(settings, requests, ended, scarce_before, expect)


def judge_rows(settings: Settings, requests: Sequence[Envelope],
               ended: Mapping[str, tuple[str, str | None]], scarce_before: int,
               expect: Mapping[str, Outcome] | None = None) -> Judgement:
    """Check every terminal order's (status, reason); PENDING or missing ones are ``lost``.

    The scarce SKU's orders may each get their units or be cancelled out of
    stock, but together they must sell exactly ``min(left, asked)`` units when
    every one of them asks for one unit and would otherwise be confirmed (with
    larger quantities or other cancels the allocation depends on timing, so
    only overselling is checked then). ``expect`` overrides the expectation of
    particular order ids (a scenario that cancels some orders on purpose).
    """
    wrong: list[str] = []
    timeouts = sold = asked = 0
    exact = True
    rejected_scarce: list[str] = []
    no_stock = Outcome(CANCELLED, f"{OUT_OF_STOCK}: {SCARCE_SKU}")
    for request in requests:
        order_id = str(request.order_id)
        status, reason = ended.get(order_id, ("PENDING", None))
        if status not in (CONFIRMED, CANCELLED):
            continue
        timeouts += status == CANCELLED and reason == TIMED_OUT
        want = expected_outcome(request, settings)
        if expect and order_id in expect:
            want = Expectation(expect[order_id])
        if want.scarce_units:
            asked += want.scarce_units
            exact = exact and want.scarce_units == 1 and want.outcome.status == CONFIRMED
            if no_stock.matches(status, reason):
                rejected_scarce.append(order_id)
                continue
            sold += want.scarce_units if status == CONFIRMED else 0
        if not want.outcome.matches(status, reason):
            wrong.append(f"{order_id}: {status} ({reason}), expected {want.outcome}")
    if sold > scarce_before:
        wrong.append(f"{SCARCE_SKU}: {sold} units sold, only {scarce_before} were left")
    elif exact and sold < min(scarce_before, asked):
        short = min(scarce_before, asked) - sold
        wrong += [f"{order_id}: out of stock although {scarce_before - sold} units were left"
                  for order_id in rejected_scarce[:short]]
    return Judgement(timeouts, wrong)


# ------------------------------------------------------------------ scenario


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
    expect: Mapping[str, Outcome] | None = None,
) -> dict[str, Any]:
    """Place ``requests`` while ``inject()`` runs (it returns how many faults it caused).

    Quiescence is timed from the end of the load: every order terminal and the
    audit with nothing in flight. Fails when an order is lost, an order ended
    otherwise than its request implies (``expect`` overrides that for some
    order ids), or an invariant is violated; the report line is recorded first.
    """
    settings = stack.settings
    assert len({r.order_id for r in requests}) == len(requests), "order ids must be unique"
    scarce_before = await scarce_available(settings)

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
    verdict = await judge(settings, requests, scarce_before, expect)
    line = {
        "scenario": name, "orders": len(ids), "faults_injected": faults,
        "confirmed": counts.get(CONFIRMED, 0), "cancelled": counts.get(CANCELLED, 0),
        "lost": lost, "timeouts": verdict.timeouts, "wrong_outcome": len(verdict.wrong),
        "violations": report.summary()["violations"],
        "seconds_to_quiescence": round(quiet_s, 1),
        "cancel_reasons": {k[4:]: v for k, v in counts.items() if k.startswith("why:")},
    }
    record(line)
    problems = []
    if lost:
        problems.append(f"{lost} order(s) never became terminal")
    if verdict.wrong:
        problems.append(f"{len(verdict.wrong)} order(s) ended wrongly "
                        f"({verdict.timeouts} timed out): {verdict.wrong[:5]}")
    if not report.ok:
        problems += [f"invariant violated: {i.name}: {i.violations[:5]}"
                     for i in report.invariants if not i.ok]
    if problems:
        raise AssertionError(f"{name}: " + "; ".join(problems))
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


async def kill_and_restart(stack: Stack, name: str) -> int:
    """``kill -9`` one worker and start it again at once (no waiting for it to be ready).

    Returns the new pid; fails unless the old process is really gone and a new
    one runs, so a scenario counts faults that happened, not calls it made.
    """
    old = stack.supervisor.pids().get(name)
    assert old is not None, f"{name} was not running before its kill"
    await stack.supervisor.kill(name)
    assert not pid_alive(old), f"{name} (pid {old}) survived kill -9"
    new = await stack.supervisor.restart(name)
    assert new != old and stack.supervisor.running(name), f"{name} did not come back"
    return new


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def all_ready(stack: Stack, timeout_s: float = 90.0) -> None:
    """Every worker runs and answers ``/ready/`` (a scenario must leave the stack whole)."""
    for names in stack.workers.values():
        for name in names:
            assert stack.supervisor.running(name), f"{name} is not running"
    await wait_ready(stack, timeout_s)
