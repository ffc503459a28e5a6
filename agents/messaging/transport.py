"""Faust's aiokafka transport, tuned for a saga hop: shorter polls, cheaper dispatch.

Registered as the ``oms://`` scheme through the ``faust.transports`` entry
point, Faust's own extension mechanism, so nothing else is patched. Three
changes to faust-streaming 0.15's consumer:

* **Fetch wait.** Faust hard-codes ``fetch_max_wait_ms=1500``. Tansu does not
  answer a pending fetch when records arrive (probed with aiokafka: a record
  waited p50 131 ms / p99 250 ms with a 500 ms wait, 5 / 13 ms with 20 ms), so
  a hop could wait up to 1.5 s. The wait is ``OMS_FETCH_MAX_WAIT_MS`` (20 ms);
  after ``OMS_FETCH_IDLE_AFTER_S`` without a record it grows to
  ``OMS_FETCH_IDLE_WAIT_MS``, so an idle worker asks the broker a few times a
  second instead of fifty: the first order after a quiet spell pays that wait
  once, a busy system never does.
* **Skip what the app does not handle.** A record whose ``oms-type`` header
  names a type the app ignores is marked read, never dispatched, and
  acknowledged as soon as every message delivered before it is: Faust costs
  tens of microseconds per delivered event (message, conductor, channel,
  stream, event, ack), and without this a confirmed order reaches services
  that ignore it five times. Records without
  the header (other producers, table changelogs) are delivered as before.
* **Dispatch without tasks.** Faust hands each message to the conductor through
  ``wait_first(callback(message), suspend_flow.wait())``: four tasks and an
  ``asyncio.wait`` per message, so a rebalance can interrupt a callback that
  blocks on a full stream buffer. Almost every callback finishes without
  blocking, so :func:`deliver` runs its first step inline and falls back to
  Faust's race only when it would block. Written to be offered upstream
  (faust-streaming has no issue or PR for it; robinhood/faust#563 reports the
  per-message cost). ``tests/unit/messaging/test_transport.py`` pins the Faust
  loop this copies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import aiokafka
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from faust.types.tuples import ack_lock
from mode import Service, ServiceT

from schemas.codec import type_header

DEFAULT_FETCH_MAX_WAIT_MS = 20
DEFAULT_IDLE_WAIT_MS = 500
DEFAULT_IDLE_AFTER_S = 2.0


def skipper(app: Any) -> Callable[[Message], bool] | None:
    """Whether a message is one the app ignores, by its type header; None: deliver all.

    ``app.oms_skips`` holds the encoded type names the app does not handle.
    """
    skips: frozenset[bytes] = getattr(app, "oms_skips", frozenset())
    if not skips:
        return None

    def skip(message: Message) -> bool:
        return type_header(message.headers) in skips

    return skip


async def deliver(consumer: Any, callback: Callable[[Message], Awaitable[Any]],
                  message: Message) -> None:
    """Hand ``message`` to the conductor as Faust does, without tasks when nothing blocks.

    The callback's first step runs inline. If it completes there, it was
    delivered exactly as Faust's race would have delivered it (nothing else
    ran in between). If it blocks (a full stream buffer), the rest of it runs
    under Faust's own ``wait_first`` against ``suspend_flow``, so a rebalance
    still interrupts it.
    """
    if not consumer.flow_active:
        await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
        return
    coro = cast(Coroutine[Any, Any, Any], callback(message))
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    await consumer.wait_first(_finish(coro, yielded), consumer.suspend_flow.wait())


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Run ``coro`` on from where it yielded ``yielded``, as its task would have.

    Like ``asyncio.Task``: wait for the future it yielded (None: it only gave
    way), resume it, and on cancellation cancel that future and throw the
    cancellation into it.
    """
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False
                await asyncio.wait((yielded,))
        except asyncio.CancelledError as exc:
            if yielded is not None:
                yielded.cancel()
            thrown: BaseException | None = exc
        else:
            thrown = None
        try:
            yielded = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as stop:
            return stop.value


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The worker consumer, with the app's fetch wait instead of Faust's 1500 ms."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = busy_wait_ms(self.app)
        return consumer


def busy_wait_ms(app: Any) -> int:
    """The fetch long-poll while records flow (the app's ``fetch_max_wait_ms``)."""
    return int(getattr(app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS))


class Consumer(faust_aiokafka.Consumer):
    """Faust's consumer with the idle long-poll, type skipping and task-free dispatch."""

    _last_records_at: float = 0.0
    _idle: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_delivered: dict[TP, int] = {}
        self._held: dict[TP, list[int]] = {}

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None,
                       timeout: float) -> Any:  # noqa: ASYNC109 - Faust's signature
        records = await super()._getmany(active_partitions, timeout)
        self._adjust_fetch_wait(bool(records))
        return records

    def _adjust_fetch_wait(self, got_records: bool) -> None:
        """Long-poll once nothing has arrived for a while; short again on the first record."""
        now = time.monotonic()
        if got_records:
            self._last_records_at = now
        idle_after = float(getattr(self.app, "fetch_idle_after_s", DEFAULT_IDLE_AFTER_S))
        idle = not got_records and now - self._last_records_at > idle_after
        if idle == self._idle:
            return
        fetcher = getattr(self._thread._consumer, "_fetcher", None)
        if fetcher is None:  # not started yet
            return
        self._idle = idle
        idle_wait = int(getattr(self.app, "fetch_idle_wait_ms", DEFAULT_IDLE_WAIT_MS))
        fetcher._fetch_max_wait_ms = idle_wait if idle else busy_wait_ms(self.app)

    def _skip(self, tp: TP, offset: int) -> None:
        """Acknowledge a skipped record, once every message delivered before it is acked.

        Faust commits the first run of consecutive acked offsets, so an offset
        acked ahead of a message still in the agent's batch could be committed
        past it, and a crash would lose that message. Until the last message
        delivered from ``tp`` is acked, skipped offsets wait in ``_held``.
        """
        last = self._last_delivered.get(tp)
        if last is None or self._is_acked(tp, last):
            self._ack_in_place(tp, offset)
        else:
            self._held.setdefault(tp, []).append(offset)

    def _delivered(self, tp: TP, offset: int) -> None:
        self._last_delivered[tp] = offset

    def ack(self, message: Message) -> bool:
        """Faust's ack; acking the last message delivered from its partition frees the held."""
        acked = super().ack(message)
        held = self._held.get(message.tp)
        if held and message.offset == self._last_delivered.get(message.tp):
            for offset in held:
                self._ack_in_place(message.tp, offset)
            held.clear()
        return acked

    def _is_acked(self, tp: TP, offset: int) -> bool:
        committed = self._committed_offset[tp]
        return offset in self._acked_index[tp] or (committed is not None and offset < committed)

    def _ack_in_place(self, tp: TP, offset: int) -> None:
        """Acknowledge a skipped record's offset as :meth:`ack` does a delivered message's."""
        with ack_lock:
            committed = self._committed_offset[tp]
            if committed is not None and offset < committed:
                return
            acked_index = self._acked_index[tp]
            if offset not in acked_index:
                acked_index.add(offset)
                self._acked[tp].append(offset)
                self._n_acked += 1

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust forgets the revoked partitions' acks; so does the skipping."""
        for tp in revoked:
            self._held.pop(tp, None)
            self._last_delivered.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        # faust-streaming 0.15.3's Consumer._drain_messages; changed lines say OMS.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING  # OMS: module named
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        skip = skipper(self.app)  # OMS: types the app ignores

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)  # OMS: no cast

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            if skip is not None and skip(message):  # OMS: not dispatched
                                self._skip(tp, offset)  # OMS
                            else:  # OMS
                                self._delivered(tp, offset)  # OMS
                                await deliver(self, callback, message)  # OMS: no tasks
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


class Transport(faust_aiokafka.Transport):
    """``oms://host:port``: Faust's Kafka transport with :class:`Consumer`."""

    Consumer = Consumer
