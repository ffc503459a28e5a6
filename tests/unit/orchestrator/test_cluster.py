"""The tracker's fan-out: every worker asked, each failure named, coverage never overstated.

Peers here are real HTTP servers in this process (aiohttp); what is under
test is the asking, the timeouts and the judgement of what was covered.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agents.orchestrator.cluster import Cluster, WorkerAnswer, coverage

PARTITIONS = 4
ME = "http://127.0.0.1:1"


def status(partitions: list[int], generation: int = 3, settled: bool = True) -> dict[str, Any]:
    return {"worker": {"partitions": partitions, "generation": generation, "settled": settled}}


def answered(url: str, partitions: list[int], **kw: Any) -> WorkerAnswer:
    return WorkerAnswer(url, partitions, status(partitions, **kw))


def test_two_settled_workers_that_share_the_partitions_are_complete() -> None:
    result = coverage([answered("a", [0, 1]), answered("b", [2, 3])], PARTITIONS)
    assert result["complete"] and result["problems"] == [] and result["missing"] == []
    assert result["partitions"] == [0, 1, 2, 3]


def test_a_worker_that_did_not_answer_is_named_with_its_partitions() -> None:
    silent = WorkerAnswer("b", [2, 3], error="ClientConnectorError: refused")
    result = coverage([answered("a", [0, 1]), silent], PARTITIONS)
    assert not result["complete"] and result["missing"] == [2, 3]
    assert any("b did not answer (ClientConnectorError: refused)" in p and "[2, 3]" in p
               for p in result["problems"])
    [worker] = [w for w in result["workers"] if w["url"] == "b"]
    assert worker == {"url": "b", "answered": False, "error": "ClientConnectorError: refused",
                      "partitions": [2, 3], "elapsed_ms": 0.0}


@pytest.mark.parametrize(("answers", "problem"), [
    ([answered("a", [0, 1, 2]), answered("b", [2, 3])], "partition 2 is claimed by a and b"),
    ([answered("a", [0, 1]), answered("b", [2, 3], generation=4)], "generations [3, 4]"),
    ([answered("a", [0, 1]), answered("b", [2, 3], settled=False)], "b is rebalancing"),
    ([answered("a", [0, 1])], "partitions [2, 3] are covered by no worker"),
])
def test_every_doubt_makes_the_answer_incomplete(answers: list[WorkerAnswer],
                                                 problem: str) -> None:
    result = coverage(answers, PARTITIONS)
    assert not result["complete"]
    assert any(problem in p for p in result["problems"]), result["problems"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(handler: Callable[[web.Request], Any]) -> tuple[str, web.AppRunner]:
    app = web.Application()
    app.router.add_get("/sagas/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_gather_asks_peers_for_their_local_answer_and_times_out_the_hung_one(
    http: aiohttp.ClientSession,
) -> None:
    asked: list[dict[str, str]] = []
    release = asyncio.Event()

    async def peer(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response(status([2]))

    async def hung(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response(status([3]))

    good_url, good = await serve(peer)
    hung_url, stuck = await serve(hung)
    dead_url = f"http://127.0.0.1:{closed_port()}"
    assignment = {ME: [0], good_url: [2], hung_url: [3], dead_url: [1]}
    cluster = Cluster(ME, lambda: assignment, lambda: http, timeout_s=0.5)
    try:
        answers = await cluster.gather("/sagas/", {"status": "RUNNING"},
                                       lambda: status([0]))
    finally:
        release.set()
        await good.cleanup()
        await stuck.cleanup()

    by_url = {a.url: a for a in answers}
    assert asked == [{"status": "RUNNING", "scope": "local"}]  # no fan-out from the peer
    assert by_url[ME].body == status([0]) and by_url[good_url].body == status([2])
    assert by_url[hung_url].body is None and by_url[hung_url].error.startswith("TimeoutError")
    assert by_url[hung_url].elapsed_ms >= 500
    assert by_url[dead_url].body is None and "ClientConnectorError" in by_url[dead_url].error
    result = coverage(answers, PARTITIONS)
    assert result["partitions"] == [0, 2] and result["missing"] == [1, 3]


async def test_this_worker_is_asked_locally_even_when_listed_in_another_spelling(
    http: aiohttp.ClientSession,
) -> None:
    cluster = Cluster(ME, lambda: {ME + "/": [0, 1, 2, 3]}, lambda: http, timeout_s=0.5)
    answers = await cluster.gather("/sagas/", {}, lambda: status([0, 1, 2, 3]))
    assert [(a.url, a.assigned) for a in answers] == [(ME, [0, 1, 2, 3])]
    assert coverage(answers, PARTITIONS)["complete"]
