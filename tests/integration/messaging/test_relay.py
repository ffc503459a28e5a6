"""The outbox relay against real PostgreSQL: wake-up, order, marking, one leader.

The publish callable is a recorder that acks at once (publishing to Kafka is
covered end to end); what is checked here is the relay's own contract.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from agents.messaging.relay import OutboxRelay
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


async def enqueue(pool: asyncpg.Pool, key: bytes, values: list[bytes], *,
                  notify: bool = True) -> list[messaging.OutboxMessage]:
    """Commit outbox rows as a step of some worker does: with a NOTIFY, or without."""
    async with pool.acquire() as conn, conn.transaction():
        return await messaging.enqueue(
            conn, [messaging.OutboxMessage("t", key, v) for v in values], notify=notify)


async def unsent(pool: asyncpg.Pool, key: bytes) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND sent_at IS NULL", key))


async def all_marked(pool: asyncpg.Pool, key: bytes, what: str = "rows marked sent") -> None:
    await eventually(lambda: unsent(pool, key), lambda n: n == 0, 10, what)


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


@asynccontextmanager
async def leading(
    relay_db: Settings, safety_poll_s: float = NO_SAFETY_POLL_S
) -> AsyncIterator[tuple[OutboxRelay, Recorder]]:
    """A running relay that leads (the only one), and what it publishes."""
    recorder = Recorder()
    relay = OutboxRelay(relay_db.dsn("orders"), "orders", recorder, safety_poll_s=safety_poll_s)
    task = await started(relay)
    try:
        await until(lambda: relay.is_leader, "leader")
        yield relay, recorder
    finally:
        await stop(task)


async def test_a_commit_in_another_worker_wakes_the_relay_which_publishes_in_order(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    key = uuid.uuid4().bytes
    async with leading(relay_db) as (_, recorder):
        values = [f"event-{i}".encode() for i in range(5)]
        await enqueue(pool, key, values[:2], notify=True)
        await enqueue(pool, key, values[2:], notify=True)
        await until(lambda: len(recorder.values(key)) == 5, "5 published")
        assert recorder.values(key) == values
        await all_marked(pool, key)


async def test_rows_handed_over_in_process_are_published_and_marked_without_a_notify(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    key = uuid.uuid4().bytes
    async with leading(relay_db) as (relay, recorder):
        rows = await enqueue(pool, key, [b"a", b"b"], notify=False)
        assert [r.id for r in rows] == sorted(r.id for r in rows) and all(r.id for r in rows)
        relay.committed(rows)
        await until(lambda: recorder.values(key) == [b"a", b"b"], "handed rows published")
        await all_marked(pool, key)


async def test_a_row_handed_over_and_also_read_from_the_table_is_published_once(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    key = uuid.uuid4().bytes
    async with leading(relay_db) as (relay, recorder):
        relay.committed(await enqueue(pool, key, [b"both"], notify=True))  # NOTIFY: a read
        await until(lambda: b"both" in recorder.values(key), "published")
        await enqueue(pool, key, [b"sentinel"], notify=True)  # one more read, after any repeat
        await until(lambda: b"sentinel" in recorder.values(key), "sentinel published")
        assert recorder.values(key) == [b"both", b"sentinel"]


async def test_the_safety_read_finds_a_row_whose_notify_was_lost_while_hand_overs_keep_it_busy(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    key, own = uuid.uuid4().bytes, uuid.uuid4().bytes
    async with leading(relay_db, safety_poll_s=0.2) as (relay, recorder):

        async def hand_over_forever() -> None:  # this process's own steps, one after another
            while True:
                relay.committed(await enqueue(pool, own, [b"own"], notify=False))

        busy = asyncio.create_task(hand_over_forever())
        try:
            await until(lambda: bool(recorder.values(own)), "hand-overs published")
            await enqueue(pool, key, [b"lost"], notify=False)  # another worker's, NOTIFY lost
            await until(lambda: recorder.values(key) == [b"lost"], "the lost row published")
        finally:
            await stop(busy)


async def test_a_relay_that_does_not_lead_ignores_rows_handed_to_it(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    """The step that committed them sent a NOTIFY, which wakes the leader wherever it runs.

    A standby that kept them would publish them again once it leads, long after
    the leader published them: the effect checked here.
    """
    key = uuid.uuid4().bytes
    leader_sent, standby_sent = Recorder(), Recorder()
    leader = OutboxRelay(relay_db.dsn("orders"), "orders", leader_sent,
                         safety_poll_s=NO_SAFETY_POLL_S)
    leader_task = await started(leader)
    await until(lambda: leader.is_leader, "leader")
    standby = OutboxRelay(relay_db.dsn("orders"), "orders", standby_sent, safety_poll_s=0.2)
    standby_task = await started(standby)
    try:
        standby.committed(await enqueue(pool, key, [b"handed"], notify=False))
        await enqueue(pool, key, [b"first"], notify=True)  # the leader reads the table
        await until(lambda: leader_sent.values(key) == [b"handed", b"first"], "leader published")
        await all_marked(pool, key)
        await stop(leader_task)  # the standby takes over
        await until(lambda: standby.is_leader, "standby leads")
        for value in (b"second", b"third"):  # the third: after any hand-over it still held
            await enqueue(pool, key, [value], notify=True)
            await until(lambda v=value: v in standby_sent.values(key), "new leader published")
        assert standby_sent.values(key) == [b"second", b"third"]  # nothing handed as a standby
    finally:
        await stop(leader_task)
        await stop(standby_task)


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
        await enqueue(pool, key, [b"first"], notify=True)
        await until(lambda: recorder.values(key) == [b"first"], "published once")
        # marked, so the standby has nothing to repeat (a stop before the mark would repeat it)
        await all_marked(pool, key, "first marked sent")

        leader = next(i for i, r in enumerate(relays) if r.is_leader)
        await stop(tasks[leader])  # its connection closes and the advisory lock with it
        survivor = relays[1 - leader]
        await enqueue(pool, key, [b"second"], notify=True)
        await until(lambda: recorder.values(key) == [b"first", b"second"],
                    "the standby published")
        assert survivor.is_leader
    finally:
        for task in tasks:
            await stop(task)
