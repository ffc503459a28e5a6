"""The console's JSON against a running stack with two tracker workers (issue 12).

Either tracker worker answers for the whole cluster, says what it covers, and
marks what it could not reach while the other worker restarts.
"""

from __future__ import annotations

import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack, settings_env
from agents.dev.supervisor import ChildSpec
from agents.messaging.client import OrderClient
from agents.observability.tracing import read_spans
from agents.orchestrator.ownership import Ownership
from agents.orders.intake import LineRequest, PlaceOrderRequest
from schemas.codec import encode
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually

pytestmark = pytest.mark.integration
TOKEN = "console-test-token"
TRACE_UI = "http://jaeger.example:16686/trace/{trace_id}"
TRACKERS = ("orchestrator-0", "orchestrator-1")


async def add_tracker(stack: Stack) -> None:
    """A second tracker worker (the stack starts one of each service: less load)."""
    name = f"orchestrator-{len(stack.workers['orchestrator'])}"
    argv = [sys.executable, "-m", "agents.cli", "worker", "orchestrator"]
    await stack.supervisor.start([ChildSpec(name, argv, settings_env(stack.worker_settings(name)))])
    stack.workers["orchestrator"].append(name)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


def complete_with_two_workers(result: tuple[int, Any]) -> bool:
    status, body = result
    workers = body.get("coverage", {}).get("workers", [])
    return (status == 200 and body["coverage"]["complete"] and len(workers) == 2
            and all(w["partitions"] for w in workers))


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory,
                http: aiohttp.ClientSession) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("console"), admin_token=TOKEN,
                             otel_exporter="jsonl", trace_ui_url=TRACE_UI,
                             saga_retention_s=3600.0)
    async with running_stack(settings) as running:
        await add_tracker(running)
        for name in TRACKERS:
            await eventually(lambda n=name: get(http, f"{running.web_url(n)}/sagas/"),
                             complete_with_two_workers, 90, f"{name} sees two trackers")
        yield running


def ids_per_partition(partitions: int, per_partition: int) -> list[str]:
    """Order ids that put ``per_partition`` sagas in every partition of the sagas table."""
    ownership = Ownership(partitions, frozenset)
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(ids) < per_partition for ids in found.values()):
        oid = str(uuid.uuid4())
        ids = found[ownership.partition(oid.encode())]
        if len(ids) < per_partition:
            ids.append(oid)
    return [oid for ids in found.values() for oid in ids]


def order(order_id: str, customer: str, token: str = "tok_visa") -> PlaceOrderRequest:
    sku = REGULAR_SKUS[1]
    line = LineRequest(sku=sku, quantity=1, unit_price_cents=price_of(sku))
    return PlaceOrderRequest(order_id=uuid.UUID(order_id), customer_id=customer,
                             payment_token=token, lines=[line])


async def place(stack: Stack, *requests: PlaceOrderRequest) -> list[str]:
    async with OrderClient(stack.settings) as client:
        for request in requests:
            await client.place(request)
    return [str(r.order_id) for r in requests]


@pytest.fixture(scope="module")
async def customer(stack: Stack, http: aiohttp.ClientSession) -> tuple[str, list[str], str]:
    """Eight finished orders of one customer, two in every partition; one declined."""
    name = f"console-{uuid.uuid4().hex[:8]}"
    ids = ids_per_partition(stack.settings.partitions, 2)
    declined = ids[-1]
    await place(stack, *[order(oid, name, "tok_decline" if oid == declined else "tok_visa")
                         for oid in ids])
    assert await wait_terminal(stack.settings, ids, 60) == 0
    # later writes in every partition, so none of the customer's rows is a changelog's
    # last batch (Tansu's end offset misses that batch when a worker takes a partition over)
    filler = ids_per_partition(stack.settings.partitions, 1)
    await place(stack, *[order(oid, "filler") for oid in filler])
    assert await wait_terminal(stack.settings, filler, 60) == 0
    finished = f"customer={name}&status=CONFIRMED,CANCELLED"  # the tracker reads after orders
    await eventually(lambda: search(http, stack, "orchestrator-0", finished),
                     lambda r: len(r[1]["sagas"]) == len(ids), 30, "the tracker saw them finish")
    return name, ids, declined


async def search(http: aiohttp.ClientSession, stack: Stack, worker: str,
                 query: str) -> tuple[int, Any]:
    return await get(http, f"{stack.web_url(worker)}/sagas/search/?{query}")


async def test_either_worker_finds_every_saga_of_a_customer(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    name, ids, _ = customer
    for worker in TRACKERS:
        status, body = await eventually(
            lambda w=worker: search(http, stack, w, f"customer={name}"),
            lambda r: len(r[1]["sagas"]) == len(ids), 30, "the customer's sagas")
        assert status == 200 and body["coverage"]["complete"], body["coverage"]
        assert body["coverage"]["partitions"] == list(range(stack.settings.partitions))
        assert {s["order_id"] for s in body["sagas"]} == set(ids)
        assert all(s["customer_id"] == name for s in body["sagas"])
        local = (await search(http, stack, worker, f"customer={name}&scope=local"))[1]
        mine = {s["order_id"] for s in local["sagas"]}
        assert mine and mine < set(ids)  # the rest are the other worker's


async def test_counts_add_up_to_the_workers_own_counts(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    async def snapshot() -> tuple[Any, list[Any]]:
        """The cluster answer and each worker's own, read one after the other."""
        cluster = (await get(http, f"{stack.web_url('orchestrator-1')}/sagas/"))[1]
        locals_ = [(await get(http, f"{stack.web_url(w)}/sagas/?scope=local"))[1]
                   for w in TRACKERS]
        return cluster, locals_

    def added_up(result: tuple[Any, list[Any]]) -> bool:
        cluster, locals_ = result
        return all(cluster["counts"].get(status, 0) == sum(b["counts"].get(status, 0)
                                                           for b in locals_)
                   for status in ("RUNNING", "CONFIRMED", "CANCELLED")) and (
            cluster["total"] == sum(b["total"] for b in locals_))

    # sagas of earlier tests may still finish between the reads: the sums must meet
    # once they have, and never disagree for good
    cluster, locals_ = await eventually(snapshot, added_up, 30, "cluster counts = sums")
    assert cluster["coverage"]["complete"] and cluster["scope"] == "cluster"
    assert sorted(p for body in locals_ for p in body["partitions"]) == [0, 1, 2, 3]
    assert cluster["total"] >= len(customer[1])


async def test_search_filters_and_pages_across_both_workers(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    name, ids, declined = customer
    status, body = await search(http, stack, "orchestrator-0",
                                f"customer={name}&reason=payment%20failed")
    assert status == 200 and [s["order_id"] for s in body["sagas"]] == [declined]
    status, body = await search(http, stack, "orchestrator-0",
                                f"customer={name}&status=CONFIRMED")
    assert {s["order_id"] for s in body["sagas"]} == set(ids) - {declined}
    status, body = await search(http, stack, "orchestrator-0", f"customer={name}&until=1000")
    assert body["sagas"] == []

    shown: list[str] = []
    cursor = ""
    while True:
        _, page = await search(http, stack, "orchestrator-1",
                               f"customer={name}&limit=3&sort=oldest&cursor={cursor}")
        assert len(page["sagas"]) <= 3 and page["coverage"]["complete"]
        shown += [s["order_id"] for s in page["sagas"]]
        if page["next"] is None:
            break
        cursor = page["next"]
    assert sorted(shown) == sorted(ids) and len(shown) == len(ids)

    for query, field in (("status=LOST", "status"), ("since=soon", "since"),
                         ("limit=x", "limit"), ("scope=all", "scope"), ("colour=red", "colour")):
        status, body = await search(http, stack, "orchestrator-0", query)
        assert status == 400 and body["error"].startswith(f"{field}: "), body


async def test_a_timeline_shows_every_hop_with_its_gap_and_the_trace(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    _, ids, _ = customer
    for order_id in ids[:2]:  # the tracker holds few of the hops: the services' outboxes add them
        status, saga = await get(http, f"{stack.web_url('orchestrator-0')}"
                                       f"/sagas/{order_id}/timeline/")
        assert status == 200
        assert saga["complete"] and saga["sources"] == {
            "orders": "ok", "inventory": "ok", "payments": "ok"}
        timeline = saga["timeline"]
        assert [e["event"] for e in timeline][:1] == ["PlaceOrder"]
        assert {"orders", "inventory", "payments"} <= {e["service"] for e in timeline}
        assert len({e["event_id"] for e in timeline}) == len(timeline)
        assert timeline[0]["gap_ms"] is None
        assert all(e["gap_ms"] >= 0 for e in timeline[1:])
        assert sum(e["slowest"] for e in timeline) == 1
        assert re.fullmatch(r"[0-9a-f]{32}", saga["trace_id"])
        assert saga["trace_url"] == TRACE_UI.replace("{trace_id}", saga["trace_id"])

        async def services_in_trace(trace_id: str = saga["trace_id"],
                                    oid: str = order_id) -> set[str]:
            return {s["service"] for s in read_spans(stack.settings.data_dir)
                    if s["trace_id"] == trace_id and s["attributes"].get("order.id") == oid}

        # the client here does not trace: the order's trace starts at the orders service
        await eventually(services_in_trace, lambda found: {"orders", "inventory", "payments"}
                         <= found, 10, "the saga's trace holds every service's spans")


async def test_a_timeline_of_a_wrong_id_is_refused_naming_the_field(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    base = f"{stack.web_url('orchestrator-1')}/sagas"
    status, body = await get(http, f"{base}/not-a-uuid/timeline/")
    assert status == 400 and body["error"] == "order_id: not a UUID"
    order_id = customer[1][0]  # upper case would pick another partition than the saga's
    status, body = await get(http, f"{base}/{order_id.upper()}/timeline/")
    assert status == 400 and body["error"] == f"order_id: not canonical; ask for {order_id}"
    status, body = await get(http, f"{base}/{uuid.uuid4()}/timeline/")
    assert status == 404 and body["complete"] and set(body["sources"]) == {
        "orders", "inventory", "payments"}


async def test_throughput_counts_the_finished_sagas_of_the_last_minutes(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    url = f"{stack.web_url('orchestrator-0')}/sagas/throughput/"
    status, body = await eventually(lambda: get(http, url),
                                    lambda r: r[1]["window"]["finished"] >= len(customer[1]),
                                    20, "finished sagas in the throughput window")
    assert body["coverage"]["complete"] and len(body["minutes"]) == 10
    assert 0 < body["window"]["p50_ms"] <= body["window"]["p99_ms"]
    assert body["window"]["outcomes"]["cancelled"] >= 1


async def test_an_operator_cancels_a_saga_with_the_token_only(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    [hung] = await place(stack, order(str(uuid.uuid4()), "console-cancel",
                                      stack.settings.gateway_timeout_token))
    base = stack.web_url("orchestrator-1")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.post(f"{base}/sagas/{hung}/cancel/", headers=headers) as resp:
            assert resp.status == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(f"{base}/sagas/not-a-uuid/cancel/", headers=good) as resp:
        assert resp.status == 400 and (await resp.json())["error"].startswith("order_id:")
    async with http.post(f"{base}/sagas/{hung.upper()}/cancel/", headers=good) as resp:
        assert resp.status == 202 and (await resp.json())["order_id"] == hung
    _, saga = await eventually(lambda: get(http, f"{base}/sagas/{hung}/"),
                               lambda r: r[0] == 200 and r[1]["status"] == "CANCELLED", 30,
                               "the cancelled saga")
    assert saga["reason"] == "cancelled by operator"


async def park(stack: Stack, tag: str) -> str:
    """A valid PlaceOrder parked as a dead letter (its cause since fixed); its order id."""
    order_id = str(uuid.uuid4())
    value = encode(order(order_id, "console-redrive").to_envelope("test"))
    headers = [("oms-dlq-reason", f"simulated: {tag}".encode()),
               ("oms-dlq-service", b"orders"), ("oms-dlq-topic", b"oms.order-commands"),
               ("oms-dlq-partition", b"0"), ("oms-dlq-offset", b"0")]
    async with OrderClient(stack.settings) as client:
        await client._producer.send_and_wait(stack.settings.topic("dead-letters"), value,
                                             key=order_id.encode(), headers=headers)
    return order_id


async def test_an_operator_redrives_one_dead_letter_by_its_position(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tag = uuid.uuid4().hex
    kept, chosen = await park(stack, tag), await park(stack, tag)
    base, good = stack.web_url("orchestrator-0"), {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{base}/dead-letters/?reason_contains={tag}", headers=good) as resp:
        letters = {x["key"]: x for x in (await resp.json())["dead_letters"]}
    assert set(letters) == {kept, chosen}
    at = f"{letters[chosen]['partition']}:{letters[chosen]['offset']}"
    redrive = f"{base}/dead-letters/redrive/"
    async with http.post(redrive, json={"at": "first"}, headers=good) as resp:
        assert resp.status == 400 and "at: " in (await resp.json())["error"]
    async with http.post(redrive, json={"at": at}) as resp:
        assert resp.status == 401
    async with http.post(redrive, json={"at": at}, headers=good) as resp:
        done = await resp.json()
    assert [(x["key"], x["redriven"]) for x in done["items"]] == [(chosen, True)]
    assert await wait_terminal(stack.settings, [chosen], 30) == 0
    async with http.post(redrive, json={"at": at}, headers=good) as resp:
        assert (await resp.json())["items"] == []  # once only
    assert await wait_terminal(stack.settings, [kept], 0.5) == 1  # the other one stays parked


async def test_lists_mark_what_they_miss_while_a_tracker_worker_restarts(
    stack: Stack, http: aiohttp.ClientSession, customer: tuple[str, list[str], str]
) -> None:
    """Last test: kill -9 one tracker worker and restart it; ask the other all along."""
    name, ids, _ = customer
    ownership = Ownership(stack.settings.partitions, frozenset)
    answers: list[dict[str, Any]] = []

    async def ask() -> dict[str, Any]:
        body = (await search(http, stack, "orchestrator-0", f"customer={name}"))[1]
        answers.append(body)
        return body

    await stack.supervisor.restart("orchestrator-1", signal.SIGKILL)
    await eventually(ask, lambda b: not b["coverage"]["complete"], 10, "an incomplete answer")
    await eventually(ask, lambda b: b["coverage"]["complete"]
                     and len(b["coverage"]["workers"]) == 2, 90, "both workers answering again")

    for body in answers:
        shown = {s["order_id"] for s in body["sagas"]}
        cover = body["coverage"]
        assert shown <= set(ids)
        if cover["complete"]:
            assert shown == set(ids), "a complete answer showed less"
            continue
        assert cover["problems"]  # it says why
        assert set(cover["partitions"]) | set(cover["missing"]) == {0, 1, 2, 3}
        assert all(ownership.partition(oid.encode()) in cover["partitions"] for oid in shown)
    incomplete = [b["coverage"] for b in answers if not b["coverage"]["complete"]]
    assert any(w["url"] == stack.web_url("orchestrator-1") and not w.get("settled", False)
               for c in incomplete for w in c["workers"]), incomplete[:3]
