"""Replay through consumer-group offsets is harmless and rebuilds lost state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.ops import replay
from agents.orders.intake import LineRequest, PlaceOrderRequest
from schemas.codec import body_of, decode
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually

pytestmark = pytest.mark.integration
SERVICE = "inventory"
WORKER = "inventory-0"
TABLES = {  # table -> columns that a replay must reproduce exactly (no wall-clock columns)
    "stock": "sku, price_cents, total, available, reserved, sold",
    "reservations": "order_id, status, reason",
    "reservation_lines": "order_id, sku, quantity",
    "inbox": "event_id, event_type",
    "outbox": "id, topic, key, value, headers::text",
}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # A non-default prefix: the consumer groups are namespaced like the topics.
    settings = make_settings(tmp_path_factory.mktemp("replay"), topic_prefix="replay.")
    async with running_stack(settings) as running:
        yield running


async def run_orders(stack: Stack, count: int) -> list[str]:
    """Orders without contention (plenty of stock), so any replay order gives one result."""
    requests = []
    for i in range(count):
        sku = REGULAR_SKUS[i % 5]
        token = "tok_decline" if i % 4 == 3 else "tok_visa"
        requests.append(PlaceOrderRequest(
            order_id=uuid.uuid4(), customer_id="replay", payment_token=token,
            lines=[LineRequest(sku=sku, quantity=1 + i % 3, unit_price_cents=price_of(sku))]))
    async with OrderClient(stack.settings) as client:
        for request in requests:
            await client.place(request)
    ids = [str(r.order_id) for r in requests]
    assert await wait_terminal(stack.settings, ids, 60) == 0
    await caught_up(stack)
    return ids


async def caught_up(stack: Stack) -> None:
    """Wait until the inventory group has committed everything (settlements included)."""
    await eventually(lambda: replay.lag(stack.settings, SERVICE),
                     lambda lag: all(n <= 0 for n in lag.values()), 30, "inventory caught up")


async def dump(stack: Stack) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(stack.settings.dsn(SERVICE))
    try:
        return {t: [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {t} ORDER BY 1, 2")]
                for t, cols in TABLES.items()}
    finally:
        await conn.close()


async def events(stack: Stack) -> list[tuple[object, ...]]:
    """The outbox as the events it holds: what was emitted, for which cause, ignoring the
    fresh event ids and timestamps a re-emission gets."""
    conn = await asyncpg.connect(stack.settings.dsn(SERVICE))
    try:
        rows = await conn.fetch("SELECT topic, key, value FROM outbox")
    finally:
        await conn.close()
    found = []
    for row in rows:
        event = decode(row["value"])
        found.append((row["topic"], row["key"], event.type, event.causation_id,
                      body_of(event).SerializeToString(deterministic=True)))
    return sorted(found)


async def stop_worker(stack: Stack) -> None:
    await stack.supervisor.kill(WORKER)


async def restart_worker(stack: Stack) -> None:
    await stack.supervisor.restart(WORKER)
    await caught_up(stack)


async def test_replay_refuses_while_the_worker_runs(stack: Stack) -> None:
    with pytest.raises(replay.ReplayRefused, match="replay-inventory has 1 member"):
        await replay.replay(stack.settings, SERVICE, replay.Target(earliest=True))
    with pytest.raises(replay.ReplayRefused, match="rejoined after eviction"):
        await replay.replay(stack.settings, SERVICE, replay.Target(earliest=True),
                            evict_stale=True)


async def test_dry_run_shows_what_would_be_reread(stack: Stack) -> None:
    await run_orders(stack, 8)
    plans = await replay.plan(stack.settings, SERVICE, replay.Target(earliest=True))
    assert {p.topic for p in plans} == {stack.settings.topic("order-events")}
    assert sum(p.reread for p in plans) == sum(p.end for p in plans) > 0
    future = replay.Target(time=datetime(2999, 1, 1, tzinfo=UTC))
    assert all(p.target == p.end for p in await replay.plan(stack.settings, SERVICE, future))
    one = await replay.plan(stack.settings, SERVICE, replay.Target(offset=1), partitions=[0])
    assert [(p.partition, p.target) for p in one] == [(0, min(1, one[0].end))]


async def test_replaying_the_whole_history_changes_nothing(stack: Stack) -> None:
    await run_orders(stack, 8)
    before = await dump(stack)
    await stop_worker(stack)
    plans = await replay.replay(stack.settings, SERVICE, replay.Target(earliest=True),
                                evict_stale=True)
    assert sum(p.reread for p in plans) > 0
    assert all(p.current == p.target == 0 for p in
               await replay.plan(stack.settings, SERVICE, replay.Target(earliest=True)))
    await restart_worker(stack)
    assert await dump(stack) == before


async def test_replay_rebuilds_a_restored_backup(stack: Stack) -> None:
    """Restore an older copy of the database (inbox and outbox included); replay brings the
    rest back. The re-emitted events are new rows (new ids and event ids) for the same
    causes with the same content."""
    await run_orders(stack, 4)
    backup = await dump(stack)
    started = datetime.now(UTC)
    await run_orders(stack, 8)
    latest, latest_events = await dump(stack), await events(stack)
    assert latest != backup
    await stop_worker(stack)
    await restore(stack, backup)
    assert await dump(stack) == backup
    await replay.replay(stack.settings, SERVICE, replay.Target(time=started), evict_stale=True)
    await restart_worker(stack)
    rebuilt = await dump(stack)
    assert {t: rows for t, rows in rebuilt.items() if t != "outbox"} == {
        t: rows for t, rows in latest.items() if t != "outbox"}
    assert await events(stack) == latest_events


async def restore(stack: Stack, backup: dict[str, list[tuple[object, ...]]]) -> None:
    conn = await asyncpg.connect(stack.settings.dsn(SERVICE))
    try:
        async with conn.transaction():
            await conn.execute("TRUNCATE reservation_lines, reservations, inbox, outbox")
            for table in ("reservations", "reservation_lines", "inbox"):
                cols = TABLES[table]
                marks = ", ".join(f"${i + 1}" for i in range(len(cols.split(","))))
                await conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                                       backup[table])
            await conn.executemany(  # published long before the backup was taken
                "INSERT INTO outbox (id, topic, key, value, headers, sent_at)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, now())", backup["outbox"])
            await conn.executemany(
                "UPDATE stock SET available = $2, reserved = $3, sold = $4 WHERE sku = $1",
                [(row[0], *row[3:]) for row in backup["stock"]])
    finally:
        await conn.close()
