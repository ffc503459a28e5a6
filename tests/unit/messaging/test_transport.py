"""The transport's changes to Faust's consumer, pinned to the Faust they were written for.

``Consumer._drain_messages`` is Faust's loop with the lines marked ``OMS``
changed; if faust-streaming's own loop changes, the first test fails and says
to carry the change over. The rest run the real Faust consumer and mode's
``wait_first``: what is delivered, what is skipped and acknowledged, and what
a suspended flow interrupts.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP, Message
from mode import Service

from agents.messaging.transport import Consumer, deliver, skipper
from schemas.codec import TYPE_HEADER

FAUST_VERSION = "0.15.3"
TOPIC = "oms.order-events"


def _body(function: Callable[..., Any]) -> list[str]:
    return textwrap.dedent(inspect.getsource(function)).splitlines()


def test_the_drain_loop_is_fausts_but_for_the_lines_marked_oms() -> None:
    assert faust.__version__ == FAUST_VERSION, "re-read Consumer._drain_messages of this Faust"
    theirs = _body(faust_consumer.Consumer._drain_messages)
    ours = _body(Consumer._drain_messages)
    changed = [line for line in difflib.unified_diff(theirs, ours, lineterm="", n=0)
               if line[:1] == "+" and not line.startswith("+++")]
    unmarked = [line for line in changed if "OMS" not in line]
    assert len(changed) >= 4 and not unmarked, unmarked


class Host(Service):
    """The part of Faust's consumer that :func:`deliver` uses, with mode's real wait_first."""

    def __init__(self) -> None:
        super().__init__()
        self.flow_active = True
        self.suspend_flow = asyncio.Event()


def counting_tasks() -> list[asyncio.Task[Any]]:
    """Every task the running loop creates from now on."""
    loop = asyncio.get_running_loop()
    created: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    return created


def putting(queue: asyncio.Queue[str]) -> Callable[[Any], Any]:
    async def callback(message: Any) -> None:
        await queue.put(message)

    return callback


async def test_a_callback_that_does_not_block_is_delivered_without_a_task() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    created = counting_tasks()
    await deliver(Host(), putting(queue), "m1")
    assert queue.get_nowait() == "m1"
    assert created == []


async def test_a_blocked_callback_finishes_once_the_buffer_has_room() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    queue.put_nowait("earlier")
    delivering = asyncio.create_task(deliver(Host(), putting(queue), "m2"))
    await asyncio.sleep(0)
    assert not delivering.done()
    assert queue.get_nowait() == "earlier"
    await asyncio.wait_for(delivering, 5)
    assert queue.get_nowait() == "m2"


async def test_a_suspended_flow_interrupts_a_blocked_callback() -> None:
    host = Host()
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    queue.put_nowait("earlier")
    delivering = asyncio.create_task(deliver(host, putting(queue), "m3"))
    await asyncio.sleep(0)
    host.suspend_flow.set()  # a rebalance
    await asyncio.wait_for(delivering, 5)
    assert queue.get_nowait() == "earlier"
    assert queue.empty()  # the message was not delivered, as in Faust


async def test_a_callback_that_blocks_while_the_flow_is_suspended_is_abandoned() -> None:
    host = Host()
    host.flow_active = False
    host.suspend_flow.set()
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    queue.put_nowait("earlier")
    await asyncio.wait_for(deliver(host, putting(queue), "m4"), 5)
    assert queue.get_nowait() == "earlier"
    assert queue.empty()


async def test_a_callback_error_reaches_the_drain_loop() -> None:
    async def failing(message: Any) -> None:
        raise ValueError(message)

    with pytest.raises(ValueError, match="m5"):
        await deliver(Host(), failing, "m5")


def message(offset: int, event_type: bytes | None) -> Message:
    headers = [(TYPE_HEADER, event_type)] if event_type is not None else []
    return Message(TOPIC, 0, offset, 0.0, 0, headers, b"k", b"v", None)


def test_only_a_header_naming_a_skipped_type_is_skipped() -> None:
    app = faust.App("transport-test", broker="oms://127.0.0.1:9", store="memory://")
    assert skipper(app) is None  # nothing to skip: deliver everything
    app.oms_skips = frozenset({b"OrderCreated"})  # type: ignore[attr-defined]
    skip = skipper(app)
    assert skip is not None
    assert skip(message(0, b"OrderCreated"))
    assert not skip(message(1, b"OrderCancelled"))
    assert not skip(message(2, None))  # no header (another producer, a changelog)


def consumer_of(app: faust.App) -> Consumer:
    async def callback(message: Message) -> None:
        return None

    async def rebalanced(tps: set[TP]) -> None:
        return None

    consumer = app.transport.create_consumer(callback=callback,
                                             on_partitions_revoked=rebalanced,
                                             on_partitions_assigned=rebalanced)
    assert isinstance(consumer, Consumer)
    app.topics._acking_topics.add(TOPIC)  # as the conductor does when an agent subscribes
    return consumer


def delivered(consumer: Consumer, offset: int) -> Message:
    """A message the drain loop handed to the agent (Faust tracks it until acked)."""
    msg = message(offset, b"OrderCancelled")
    consumer._delivered(msg.tp, offset)
    consumer.track_message(msg)
    return msg


def test_a_skipped_offset_is_not_committed_past_a_message_still_in_the_agent() -> None:
    consumer = consumer_of(faust.App("transport-test", broker="oms://127.0.0.1:9"))
    tp = TP(TOPIC, 0)
    in_flight = delivered(consumer, 0)
    consumer._skip(tp, 1)
    consumer._skip(tp, 2)
    assert consumer._new_offset(tp) is None  # offset 0 is not done: nothing to commit
    consumer.ack(in_flight)
    assert consumer._new_offset(tp) == 3


def test_skipped_offsets_with_nothing_in_flight_commit_at_once() -> None:
    consumer = consumer_of(faust.App("transport-test", broker="oms://127.0.0.1:9"))
    tp = TP(TOPIC, 0)
    consumer.ack(delivered(consumer, 4))
    consumer._skip(tp, 5)
    assert consumer._new_offset(tp) == 6


async def test_a_revoked_partition_forgets_what_it_held() -> None:
    consumer = consumer_of(faust.App("transport-test", broker="oms://127.0.0.1:9"))
    tp = TP(TOPIC, 0)
    delivered(consumer, 0)
    consumer._skip(tp, 1)
    await consumer.on_partitions_revoked({tp})
    assert consumer._held == {} and consumer._last_delivered == {}
