"""The outbox relay against real PostgreSQL: wake-up, order, marking, one leader.

The publish callable is a recorder that acks at once (publishing to Kafka is
covered end to end); what is checked here is the relay's own contract.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from agents.relay import OutboxRelay
from config import Settings
from stores import messaging
from stores.db import create_pool, prepare_database
from tests.conftest import drop_test_databases, make_settings
from tests.helpers import eventually

pytestmark = pytest.mark.integration

NO_SAFETY_POLL_S = 60.0  # longer than any deadline here: only a wake-up can publish


class Recorder:
    """A publish callable that records each message and acks it at once."""

    def __init__(self) -> None:
        self.sent: list[messaging.OutboxMessage] = []

    async def __call__(self, message: messaging.OutboxMessage) -> asyncio.Future[None]:
        self.sent.append(message)
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    def values(self, key: bytes) -> list[bytes]:
        return [m.value for m in self.sent if m.key == key]


@pytest.fixture(scope="module")
async def relay_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """An orders database of its own: a relay publishes every unsent row it finds."""
    settings = make_settings(Path(tmp_path_factory.mktemp("relay")), kafka_bootstrap="127.0.0.1:1")
    await prepare_database(settings, "orders")
    yield settings
    await drop_test_databases(settings)


@pytest.fixture
async def pool(relay_db: Settings) -> AsyncIterator[asyncpg.Pool]:
    opened = await create_pool(relay_db.dsn("orders"))
    yield opened
    await opened.close()


async def enqueue(pool: asyncpg.Pool, key: bytes, values: list[bytes], origin: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await messaging.enqueue(conn, [messaging.OutboxMessage("t", key, v) for v in values],
                                origin)


async def unsent(pool: asyncpg.Pool, key: bytes) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND sent_at IS NULL", key))


async def until(condition: Callable[[], bool], what: str) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, bool, 10, what)


async def started(relay: OutboxRelay) -> asyncio.Task[None]:
    task = asyncio.create_task(relay.run())
    await until(lambda: relay.connected, "relay connected")
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_commit_in_another_worker_wakes_the_relay_which_publishes_in_order(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    recorder, key = Recorder(), uuid.uuid4().bytes
    relay = OutboxRelay(relay_db.dsn("orders"), "orders", recorder,
                        safety_poll_s=NO_SAFETY_POLL_S)
    task = await started(relay)
    try:
        values = [f"event-{i}".encode() for i in range(5)]
        await enqueue(pool, key, values[:2], origin="another-worker")
        await enqueue(pool, key, values[2:], origin="another-worker")
        await until(lambda: len(recorder.values(key)) == 5, "5 published")
        assert recorder.values(key) == values
        await eventually(lambda: unsent(pool, key), lambda n: n == 0, 10, "rows marked sent")
    finally:
        await stop(task)


def test_the_relay_ignores_a_notify_from_its_own_process_and_wakes_on_others() -> None:
    """Its own commits wake it in-process (``wake``); their NOTIFY would be a second wake-up."""
    relay = OutboxRelay("postgresql://unused", "orders", Recorder())
    relay._on_notify(None, 0, messaging.OUTBOX_CHANNEL, relay.origin)
    assert not relay._wake.is_set()
    relay._on_notify(None, 0, messaging.OUTBOX_CHANNEL, "another-worker")
    assert relay._wake.is_set()


async def test_only_one_of_two_relays_publishes_and_the_other_takes_over(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    recorder, key = Recorder(), uuid.uuid4().bytes
    # the standby retries the lock on its safety poll: the old leader's backend
    # may still hold it for a moment after its connection closed
    relays = [OutboxRelay(relay_db.dsn("orders"), "orders", recorder, safety_poll_s=0.2)
              for _ in range(2)]
    tasks = [await started(r) for r in relays]
    try:
        await until(lambda: any(r.is_leader for r in relays), "a leader")
        assert sum(r.is_leader for r in relays) == 1
        await enqueue(pool, key, [b"first"], origin="another-worker")
        await until(lambda: recorder.values(key) == [b"first"], "published once")

        leader = next(i for i, r in enumerate(relays) if r.is_leader)
        await stop(tasks[leader])  # its connection closes and the advisory lock with it
        survivor = relays[1 - leader]
        await enqueue(pool, key, [b"second"], origin="another-worker")
        await until(lambda: recorder.values(key) == [b"first", b"second"],
                    "the standby published")
        assert survivor.is_leader
    finally:
        for task in tasks:
            await stop(task)
