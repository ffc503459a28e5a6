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
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY
from pydantic import SecretStr

from agents.dev.embedded import EmbeddedBroker
from agents.messaging import kafka
from agents.messaging.relay import OutboxRelay
from agents.ops import audit
from config import Settings
from stores import messaging
from stores.db import create_pool, prepare_database
from tests.conftest import TEST_DATABASE_URL, drop_test_databases, make_settings
from tests.helpers import eventually
from tests.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.integration

T = TypeVar("T")
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
    opened = await create_pool(relay_db.dsn("orders"), relay_db)
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
        "SELECT count(*) FROM outbox WHERE key = $1 AND sent_at IS NULL AND parked_at IS NULL",
        key))


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
    relay = OutboxRelay(relay_db, "orders", recorder, safety_poll_s=safety_poll_s)
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
    leader = OutboxRelay(relay_db, "orders", leader_sent,
                         safety_poll_s=NO_SAFETY_POLL_S)
    leader_task = await started(leader)
    await until(lambda: leader.is_leader, "leader")
    standby = OutboxRelay(relay_db, "orders", standby_sent, safety_poll_s=0.2)
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
    relays = [OutboxRelay(relay_db, "orders", recorder, safety_poll_s=0.2)
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


async def test_a_leader_whose_connection_goes_half_open_gives_way_to_a_standby(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    """A dead path to the server must not keep the lock: the standby takes over.

    The leader's connection goes through a proxy that then stops forwarding
    without closing anything, so neither side hears of it. The leader's next
    statement must time out (and it stops leading), and the server must end
    the silent session, releasing the advisory lock for the standby.
    """
    quick = {"db_connect_timeout_s": 1.0, "db_command_timeout_s": 1.0,
             "relay_idle_timeout_s": 2.0}
    async with proxied(relay_db) as (proxy, through_proxy):
        recorder, key = Recorder(), uuid.uuid4().bytes
        hung = OutboxRelay(through_proxy.model_copy(update=quick), "orders", recorder,
                           safety_poll_s=0.2)
        tasks = [await started(hung)]
        try:
            await until(lambda: hung.is_leader, "the proxied relay leads")
            standby = OutboxRelay(relay_db.model_copy(update=quick), "orders", recorder,
                                  safety_poll_s=0.2)
            tasks.append(await started(standby))
            proxy.freeze()
            await enqueue(pool, key, [b"after"], notify=True)
            await eventually(lambda: _now(recorder.values(key)), lambda v: v == [b"after"], 30,
                             "the standby took over and published")
            assert standby.is_leader
            await until(lambda: not hung.is_leader, "the hung relay gave up leading")
        finally:
            for task in tasks:  # a relay hung on its connection would hang its stop too
                await asyncio.wait_for(stop(task), 10)


async def _now(value: T) -> T:
    return value


@asynccontextmanager
async def proxied(
    settings: Settings, reply_delay_s: float = 0.0
) -> AsyncIterator[tuple[TcpProxy, Settings]]:
    """A proxy to the test PostgreSQL, and ``settings`` whose connections go through it."""
    target = urlsplit(TEST_DATABASE_URL)
    async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 5432,
                         reply_delay_s) as proxy:
        user = target.netloc.rpartition("@")[0]
        url = target._replace(netloc=f"{user}{'@' if user else ''}127.0.0.1:{proxy.port}")
        yield proxy, settings.model_copy(update={"database_url": SecretStr(url.geturl())})


async def test_a_notify_that_arrives_while_the_relay_reads_the_table_is_not_lost(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    """Commits land while the relay reads (every answer takes 0.2 s); each is published.

    With no safety poll, only the NOTIFYs can get these rows published, so a
    NOTIFY lost during a read would leave its row waiting. (PostgreSQL sends a
    notification only between transactions, after the read's result, and a
    row committed before the read's snapshot is in the read.)
    """
    key = uuid.uuid4().bytes
    async with proxied(relay_db, reply_delay_s=0.2) as (_, slow):
        recorder = Recorder()
        relay = OutboxRelay(slow, "orders", recorder, safety_poll_s=NO_SAFETY_POLL_S)
        task = await started(relay)
        try:
            await until(lambda: relay.is_leader, "leader")
            for i in range(15):  # the first commit's NOTIFY starts a read; the second lands in it
                pair = [f"first-{i}".encode(), f"second-{i}".encode()]
                await enqueue(pool, key, pair[:1], notify=True)
                await asyncio.sleep(0.3)  # pacing: NOTIFY there (0.2 s), read sent, answer back
                await enqueue(pool, key, pair[1:], notify=True)
                await until(lambda p=pair: recorder.values(key)[-2:] == p,
                            f"pair {i} published")
            assert len(recorder.values(key)) == 30
        finally:
            await stop(task)


async def test_a_row_the_broker_refuses_for_good_is_parked_and_the_rest_flow(
    relay_db: Settings, pool: asyncpg.Pool, broker: EmbeddedBroker
) -> None:
    """One poison row must not stop the relay nor block every row after it.

    Published through a real producer to the real broker: a row larger than
    the producer accepts is set aside with its reason, counted and reported
    by ``oms check``; the rows around it are published in order and marked.
    """
    settings = relay_db.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    topic = f"oms-test-park-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, {topic: 1})
    producer = kafka.producer(settings)
    await producer.start()

    async def publish(message: messaging.OutboxMessage) -> asyncio.Future[object]:
        return asyncio.ensure_future(
            await producer.send(message.topic, message.value, key=message.key))

    key = uuid.uuid4().bytes
    huge = b"x" * (2 * 1024 * 1024)
    parked_before = parked_count()
    relay = OutboxRelay(settings, "orders", publish, safety_poll_s=NO_SAFETY_POLL_S)
    task = await started(relay)
    try:
        await until(lambda: relay.is_leader, "leader")
        async with pool.acquire() as conn, conn.transaction():
            rows = await messaging.enqueue(conn, [messaging.OutboxMessage(topic, key, v)
                                                  for v in (b"before", huge, b"after")])
        await all_marked(pool, key, "the rows around the poison one marked sent")
        assert not task.done() and relay.is_leader
        [parked] = await pool.fetch("SELECT id, park_reason FROM outbox"
                                    " WHERE key = $1 AND parked_at IS NOT NULL", key)
        assert parked["id"] == rows[1].id and "MessageSizeTooLargeError" in parked["park_reason"]
        assert parked_count() == parked_before + 1
        assert await messaging.backlog(pool) == 0  # parked is not waiting: it is set aside
        async with pool.acquire() as conn:
            found = await audit.parked_outbox_rows({"orders": conn})
        assert not found.ok and f"orders outbox row {rows[1].id}" in found.violations[0]
        assert "MessageSizeTooLargeError" in found.violations[0]
    finally:
        await stop(task)
        await producer.stop()
    assert await read_values(settings, topic) == [b"before", b"after"]


async def test_a_row_that_fails_for_now_is_retried_not_parked(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    """A broker that times out is a passing fault: the row waits and goes out later."""
    recorder, key = Recorder(), uuid.uuid4().bytes
    failed: list[bytes] = []

    async def flaky(message: messaging.OutboxMessage) -> asyncio.Future[None]:
        if message.value == b"flaky" and not failed:  # the broker times out, once
            failed.append(message.value)
            timed_out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            timed_out.set_exception(KafkaTimeoutError())
            return timed_out
        return await recorder(message)

    relay = OutboxRelay(relay_db, "orders", flaky, safety_poll_s=NO_SAFETY_POLL_S)
    task = await started(relay)
    try:
        await until(lambda: relay.is_leader, "leader")
        await enqueue(pool, key, [b"flaky"], notify=True)
        await until(lambda: recorder.values(key) == [b"flaky"], "published on the retry")
        await all_marked(pool, key)
        assert failed == [b"flaky"] and not relay.publish_failing
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE key = $1"
                                   " AND parked_at IS NOT NULL", key) == 0
    finally:
        await stop(task)


def parked_count() -> float:
    return REGISTRY.get_sample_value("oms_outbox_parked_total", {"service": "orders"}) or 0.0


async def read_values(settings: Settings, topic: str) -> list[bytes]:
    consumer = kafka.consumer(settings, topic, auto_offset_reset="earliest",
                              enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            values += [r.value for records in batches.values() for r in records if r.value]
        return values
    finally:
        await consumer.stop()


async def test_the_leader_purges_inbox_rows_older_than_the_retention(
    relay_db: Settings, pool: asyncpg.Pool
) -> None:
    """The inbox would grow forever (three rows per order per service): the relay trims it."""
    old = [uuid.uuid4() for _ in range(3)]
    recent = uuid.uuid4()
    await pool.execute(
        "INSERT INTO inbox (event_id, event_type, received_at)"
        " SELECT e, 'Old', now() - interval '2 hours' FROM unnest($1::uuid[]) AS e", old)
    await pool.execute("INSERT INTO inbox (event_id, event_type) VALUES ($1, 'Recent')", recent)
    settings = relay_db.model_copy(update={"inbox_retention_s": 3600.0})
    relay = OutboxRelay(settings, "orders", Recorder(), safety_poll_s=0.2)
    task = await started(relay)
    try:
        await eventually(lambda: pool.fetch("SELECT event_id FROM inbox WHERE event_id ="
                                            " ANY($1::uuid[])", [*old, recent]),
                         lambda rows: [r["event_id"] for r in rows] == [recent], 10,
                         "old inbox rows purged, the recent one kept")
    finally:
        await stop(task)


async def test_the_inbox_is_purged_in_batches_oldest_first(pool: asyncpg.Pool) -> None:
    """A large backlog is trimmed a batch at a time, never in one long statement."""
    ids = [uuid.uuid4() for _ in range(7)]
    await pool.execute(
        "INSERT INTO inbox (event_id, event_type, received_at) SELECT e, 'Old',"
        " now() - interval '1 day' - make_interval(secs => n) FROM unnest($1::uuid[])"
        " WITH ORDINALITY AS t(e, n)", ids)
    async with pool.acquire() as conn:
        counts = [await messaging.purge_inbox(conn, 3600.0, 3) for _ in range(4)]
    assert counts == [3, 3, 1, 0]
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])",
                               ids) == 0
