"""A saga's timeline from every source: the tracker's steps and the services' outbox events.

The tracker reads only a few topics, so the hops between the services come
from each service's ``/events/{order_id}/``; merged, each event shows once,
in the order it happened, and the answer says which services did not answer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from agents.orchestrator.saga import RUNNING, Saga, Step
from agents.orchestrator.service_events import ServiceEvents, Services
from agents.orchestrator.timeline import merge_events, timeline, timeline_json

OID = "6f1c1c3e-8a6b-4d59-9d0a-2a0b5a1c9e10"


def step(kind: str, at_ms: int, producer: str) -> Step:
    return {"type": kind, "at_ms": at_ms, "producer": producer, "event_id": f"id-{kind}"}


def event(kind: str, at_ms: int, service: str, **extra: Any) -> dict[str, Any]:
    return {"service": service, "event": kind, "event_id": f"id-{kind}", "at_ms": at_ms,
            "topic": f"oms.{service}-events", "written_at": "w", "sent_at": "s", **extra}


TRACKER_STEPS = [step("PlaceOrder", 1_000, "shop"), step("OrderConfirmed", 1_900, "orders")]
SERVICE_EVENTS = [event("OrderCreated", 1_010, "orders"), event("OrderConfirmed", 1_900, "orders"),
                  event("InventoryReserved", 1_040, "inventory"),
                  event("PaymentCompleted", 1_840, "payments")]


def test_an_event_both_report_shows_once_and_every_hop_in_the_order_it_happened() -> None:
    entries = timeline(merge_events(TRACKER_STEPS, SERVICE_EVENTS))
    assert [(e["event"], e["service"], e["gap_ms"], e["since_first_ms"]) for e in entries] == [
        ("PlaceOrder", "shop", None, 0), ("OrderCreated", "orders", 10, 10),
        ("InventoryReserved", "inventory", 30, 40), ("PaymentCompleted", "payments", 800, 840),
        ("OrderConfirmed", "orders", 60, 900)]
    assert [e["slowest"] for e in entries] == [False, False, False, True, False]
    confirmed = entries[-1]
    assert confirmed["sources"] == ["tracker", "orders"]
    assert (confirmed["topic"], confirmed["sent_at"]) == ("oms.orders-events", "s")
    assert entries[0]["sources"] == ["tracker"] and "topic" not in entries[0]


def test_a_service_reporting_an_event_twice_still_shows_it_once() -> None:
    twice = [event("OrderCreated", 1_010, "orders")] * 2
    assert [e["event"] for e in timeline(merge_events([], twice))] == ["OrderCreated"]


def test_events_without_an_id_are_kept_apart() -> None:
    anonymous = [event("OrderCreated", 1_010, "orders", event_id=""),
                 event("InventoryReserved", 1_020, "inventory", event_id="")]
    assert len(merge_events([], anonymous)) == 2


def test_the_answer_says_which_services_did_not_answer() -> None:
    saga = Saga(OID, RUNNING, 1_000, 31_000, 1_000, steps=list(TRACKER_STEPS), trace_id="ab" * 16)
    found = ServiceEvents(SERVICE_EVENTS[:2], {"orders": "ok", "inventory": "error: timeout"})
    body = timeline_json(OID, saga, found, 2_000, "http://ui/{trace_id}")
    assert body["sources"] == {"orders": "ok", "inventory": "error: timeout"}
    assert body["complete"] is False and body["tracked"] is True
    assert body["trace_url"] == f"http://ui/{'ab' * 16}" and body["status"] == RUNNING
    assert [e["event"] for e in body["timeline"]] == ["PlaceOrder", "OrderCreated",
                                                      "OrderConfirmed"]
    assert sum(e["slowest"] for e in body["timeline"]) == 1


def test_an_order_the_tracker_no_longer_holds_shows_the_services_events() -> None:
    found = ServiceEvents(SERVICE_EVENTS[:1], {"orders": "ok"})
    body = timeline_json(OID, None, found, 2_000)
    assert body["tracked"] is False and body["complete"] is True and body["status"] is None
    assert [e["event"] for e in body["timeline"]] == ["OrderCreated"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(app: web.Application) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failures(service: str) -> float:
    return REGISTRY.get_sample_value("oms_console_service_failures_total",
                                     {"service": service}) or 0.0


async def test_every_service_is_asked_at_once_and_each_failure_is_named_and_counted(
    http: aiohttp.ClientSession,
) -> None:
    asked: list[str] = []
    release = asyncio.Event()

    async def orders(request: web.Request) -> web.Response:
        asked.append(request.match_info["order_id"])
        return web.json_response({"events": [event("OrderCreated", 1_010, "orders")]})

    async def hung(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"events": []})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "database not available"}, status=503)

    runners = []
    urls = {}
    for name, handler in (("orders", orders), ("inventory", hung), ("payments", broken)):
        app = web.Application()
        app.router.add_get("/events/{order_id}/", handler)
        urls[name], runner = await serve(app)
        runners.append(runner)
    urls["elsewhere"] = f"http://127.0.0.1:{closed_port()}/"
    before = {name: failures(name) for name in urls}
    try:
        found = await Services(urls, lambda: http, timeout_s=0.5).events(OID)
    finally:
        release.set()
        for runner in runners:
            await runner.cleanup()

    assert asked == [OID]
    assert [e["event"] for e in found.events] == ["OrderCreated"]
    assert found.sources["orders"] == "ok" and not found.complete
    assert found.sources["inventory"].startswith("error: TimeoutError")
    assert found.sources["payments"].startswith("error: ClientResponseError") \
        and "503" in found.sources["payments"]
    assert "ClientConnectorError" in found.sources["elsewhere"]
    assert {name: failures(name) - before[name] for name in urls} == {
        "orders": 0, "inventory": 1, "payments": 1, "elsewhere": 1}
