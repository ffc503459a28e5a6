"""Building envelopes and applying steps in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import asyncpg
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from agents.dev.catalogue import price_of
from agents.messaging.unit_of_work import Handler, StepResult, apply_step
from config import Settings
from schemas.codec import decode, new_envelope
from schemas.oms_pb2 import Envelope, OrderLine

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Prometheus samples keyed by (name, labels)."""


def envelope(order_id: str, body: Message, producer: str = "test") -> Envelope:
    return new_envelope(order_id, body, producer=producer)


def lines(*items: tuple[str, int]) -> list[OrderLine]:
    return [OrderLine(sku=s, quantity=q, unit_price_cents=price_of(s)) for s, q in items]


async def step(pool: asyncpg.Pool, handler: Handler, env: Envelope) -> StepResult:
    return await apply_step(pool, env, handler, "test-out")


async def outbox_types(pool: asyncpg.Pool, order_id: str) -> list[str]:
    """Types of the events a service has staged for ``order_id``, oldest first."""
    rows = await pool.fetch("SELECT value FROM outbox WHERE key = $1 ORDER BY id",
                            order_id.encode())
    return [decode(r["value"]).type for r in rows]


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float = 30.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``ok(result)``; fail with the last result after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s}s; last: {result!r}")
        await asyncio.sleep(0.05)


async def query(settings: Settings, service: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """Rows of one statement on a service's database, over a connection of its own."""
    conn = await asyncpg.connect(settings.dsn(service))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def scrape(url: str) -> Samples:
    """Every sample of one worker's ``/metrics`` (``url`` is the worker's base URL)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(url + "/metrics") as resp:
        assert resp.status == 200, (url, resp.status)
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)
