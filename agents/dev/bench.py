"""``oms bench``: drive the running system and measure what a client sees.

Two load shapes:

* **open loop** (``rate``): order *i* is produced at ``start + i / rate``
  whether or not earlier orders finished, so a slow system shows up as
  latency, never as a politely lowered offered load (no coordinated
  omission). When the producer itself falls behind schedule, that send lag is
  reported.
* **max throughput** (no ``rate``): a closed loop that keeps ``window``
  orders in flight. An unbounded burst would only measure queueing and let
  the tracker time sagas out; a window keeps every saga inside its deadline
  while still saturating the services.

Latency is client-observed: from just before producing ``PlaceOrder`` to the
moment this process reads the order's ``OrderConfirmed``/``OrderCancelled``
from ``oms.order-events`` with its own group-less consumer. With
``hung_every`` N, every N-th order pays with the gateway's hanging token (its
saga ends at the tracker's deadline); the percentiles are then those of the
other orders, which is what a hung provider must not slow down, and the hung
orders are reported apart. Alongside it the
run reports the PostgreSQL step rate of the same server (a micro-benchmark
of the step transaction's shape), so the throughput reads as a fraction of
the database limit, and CPU seconds and RSS per service process.

The figures the targets are judged by (CPU per order and its split, Kafka
deliveries per order per service, idle CPU, and the run in tenths) are
computed in :mod:`agents.dev.bench_figures`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.dev import bench_figures as figures
from agents.dev.bench_figures import Sent
from agents.dev.catalogue import REGULAR_SKUS
from agents.dev.demo import demo_order, percentile, place_order, settled_audit
from agents.dev.stack import Stack, start_stack
from agents.messaging import kafka
from agents.topology import ORDER_COMMANDS, ORDER_EVENTS
from config import SERVICES, Settings
from schemas.codec import DecodeError, decode, encode
from schemas.oms_pb2 import Envelope
from stores.db import connect
from stores.migrate import check_database_name, migrate

_log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"OrderConfirmed", "OrderCancelled"})
STEPS_PER_ORDER = 5
"""Step transactions one order costs across the services (for the PG-limit ratio)."""
TIMELINE_POINTS = 10
Mix = Literal["demo", "success"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run; ``rate=None`` selects max throughput."""

    orders: int | None = None
    rate: float | None = None
    duration_s: float | None = None
    workers: int = 1
    mix: Mix = "demo"
    window: int = 300
    audit: bool = True
    stall_timeout_s: float = 90.0
    pg_seconds: float = 3.0
    pg_connections: int = 8
    progress_every_s: float = 2.0
    hung_every: int = 0
    """Order ``i`` with ``i % hung_every == 0`` pays with the hanging token; 0 = none."""
    idle_s: float = 0.0
    """Seconds to sample the system's CPU with no orders before the load; 0 = skip."""

    def hung(self, i: int) -> bool:
        """Whether order ``i`` is one whose PSP call never answers."""
        return self.hung_every > 0 and i % self.hung_every == 0

    def total_orders(self) -> int:
        """``orders``, else ``rate * duration``, else 1000."""
        if self.orders is not None:
            return self.orders
        if self.rate is not None and self.duration_s is not None:
            return max(1, round(self.rate * self.duration_s))
        return 1000


def bench_order(i: int, settings: Settings, mix: Mix, *, hung: bool = False) -> Envelope:
    """Order ``i`` of the mix: the demo's (a quarter cancel) or regular SKUs that all succeed;
    ``hung`` makes it pay with the token the gateway never answers."""
    if mix == "demo":
        envelope = demo_order(i, settings, producer="bench")
    else:
        skus = [(REGULAR_SKUS[(i + j) % len(REGULAR_SKUS)], 1) for j in range(2)]
        envelope = place_order(skus, customer=f"bench-{i % 97}", producer="bench")
    if hung:
        envelope.place_order.payment_token = settings.gateway_timeout_token
    return envelope


# --------------------------------------------------------------- tracking


@dataclass
class OrderWatch:
    """In-process record of every order this run sent and saw finish."""

    total: int
    window: asyncio.Semaphore | None = None
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    hung: set[str] = field(default_factory=set)
    """Orders whose PSP call never answers; their latencies go to ``hung_latencies_ms``."""
    hung_latencies_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TERMINAL_EVENTS, 0))
    finished_at: dict[str, float] = field(default_factory=dict)
    send_lag_ms: list[float] = field(default_factory=list)
    send_errors: int = 0
    undecodable: int = 0
    first_sent: float = 0.0
    last_seen: float = 0.0
    placing_done: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _finished: set[str] = field(default_factory=set)

    @property
    def placed(self) -> int:
        return len(self.sent_at)

    @property
    def finished(self) -> int:
        return len(self._finished)

    def record_sent(self, order_id: str, at: float, *, hung: bool = False) -> None:
        if not self.sent_at:
            self.first_sent = at
        self.sent_at[order_id] = at
        if hung:
            self.hung.add(order_id)

    def observe(self, key: bytes | None, value: bytes | None, at: float) -> None:
        """Count the first terminal event of one of our orders; ignore everything else."""
        order_id = key.decode() if key else ""
        if order_id not in self.sent_at or order_id in self._finished:
            return
        try:
            envelope = decode(value)
        except DecodeError:
            self.undecodable += 1  # someone else's garbage on the topic: counted, not ours
            return
        if envelope.type not in TERMINAL_EVENTS:
            return
        self._finished.add(order_id)
        self.finished_at[order_id] = at
        self.outcomes[envelope.type] += 1
        latencies = self.hung_latencies_ms if order_id in self.hung else self.latencies_ms
        latencies.append((at - self.sent_at[order_id]) * 1000.0)
        self.last_seen = at
        if self.window is not None:
            self.window.release()
        self._check_done()

    def sent_orders(self) -> list[Sent]:
        """Every order in send order, with when it finished (for the run's tenths)."""
        return [Sent(at, self.finished_at.get(order_id), order_id in self.hung)
                for order_id, at in self.sent_at.items()]

    def placing_finished(self) -> None:
        self.placing_done = True
        self._check_done()

    def _check_done(self) -> None:
        if self.placing_done and self.finished >= self.placed:
            self.done.set()

    def on_delivery(self, future: asyncio.Future[Any]) -> None:
        """Producer delivery callback: a failed send is counted (the order never existed)."""
        if future.cancelled() or future.exception() is not None:
            self.send_errors += 1


# --------------------------------------------------------------- Kafka I/O


async def open_terminal_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less consumer on every order-events partition, positioned at the current end.

    The end offsets are taken before the first order is placed, so no
    terminal event of this run can be missed and none of an older run is read.
    """
    topic = settings.topic(ORDER_EVENTS)
    consumer = kafka.consumer(settings, group_id=None, enable_auto_commit=False,
                              fetch_max_wait_ms=20)
    await consumer.start()
    await consumer.topics()  # loads cluster metadata so the partitions are known
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        await consumer.stop()
        raise RuntimeError(f"topic {topic} has no partitions; was the system initialised?")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    for tp, offset in (await consumer.end_offsets(tps)).items():
        consumer.seek(tp, offset)
    return consumer


async def watch_terminals(consumer: AIOKafkaConsumer, tracker: OrderWatch) -> None:
    """Feed every fetched record to the tracker, stamped with the time it was read."""
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        now = time.monotonic()
        for records in batches.values():
            for record in records:
                tracker.observe(record.key, record.value, now)


async def place_orders(producer: AIOKafkaProducer, settings: Settings, cfg: BenchConfig,
                       tracker: OrderWatch) -> None:
    """Produce every order: on schedule (open loop) or whenever the window has room."""
    topic = settings.topic(ORDER_COMMANDS)
    start = time.monotonic()
    for i in range(tracker.total):
        if cfg.rate is not None:
            delay = start + i / cfg.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                tracker.send_lag_ms.append(-delay * 1000.0)
        elif tracker.window is not None:
            await tracker.window.acquire()
        envelope = bench_order(i, settings, cfg.mix, hung=cfg.hung(i))
        value, key = encode(envelope), envelope.order_id.encode()
        tracker.record_sent(envelope.order_id, time.monotonic(), hung=cfg.hung(i))
        delivery = await producer.send(topic, value, key=key)
        delivery.add_done_callback(tracker.on_delivery)
    await producer.flush()
    tracker.placing_finished()


# --------------------------------------------------------------- processes


@dataclass
class _Sampled:
    first_cpu: dict[int, float] = field(default_factory=dict)
    last_cpu: dict[int, float] = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)


class ProcessSampler:
    """CPU seconds and RSS per named group of processes, sampled every ``interval_s``.

    A group is a list of root pids; roots listed with ``children=True`` count
    their descendants too (a worker's forks, PostgreSQL's backends). CPU is the
    user+system delta of each pid between its first and last sample.
    """

    def __init__(self, roots: dict[str, list[tuple[int, bool]]], interval_s: float = 0.5,
                 rss: frozenset[str] | None = None) -> None:
        self._roots = {name: [(psutil.Process(pid), kids) for pid, kids in pids]
                       for name, pids in roots.items()}
        self._rss = rss if rss is not None else frozenset(roots)
        self._interval_s = interval_s
        self._data = {name: _Sampled() for name in roots}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run(), name="bench-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.sample()

    def sample(self) -> None:
        for name, roots in self._roots.items():
            data, rss = self._data[name], 0
            for proc in _expand(roots):
                try:
                    with proc.oneshot():
                        cpu = proc.cpu_times()
                        rss += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue  # exited between listing and reading: its last sample stands
                data.first_cpu.setdefault(proc.pid, cpu.user + cpu.system)
                data.last_cpu[proc.pid] = cpu.user + cpu.system
            data.rss_mb.append(rss / 2**20)

    def report(self) -> dict[str, dict[str, Any]]:
        """``cpu_s``, ``peak_rss_mb``, ``rss_mb_start``, ``rss_mb_end`` and
        ``rss_mb_timeline``, each by group.

        The timeline is RSS at the end of each tenth of the run: flat memory
        shows as a flat line, a plateau (e.g. the tracker's retention) as a
        rise that stops, a leak as a rise that does not.
        """
        out: dict[str, dict[str, Any]] = {
            "cpu_s": {}, "peak_rss_mb": {}, "rss_mb_start": {}, "rss_mb_end": {},
            "rss_mb_timeline": {}}
        for name, data in self._data.items():
            cpu = sum(data.last_cpu[p] - data.first_cpu[p] for p in data.last_cpu)
            out["cpu_s"][name] = round(cpu, 2)
            if name in self._rss and data.rss_mb:
                out["peak_rss_mb"][name] = round(max(data.rss_mb), 1)
                out["rss_mb_start"][name] = round(data.rss_mb[0], 1)
                out["rss_mb_end"][name] = round(data.rss_mb[-1], 1)
                out["rss_mb_timeline"][name] = timeline(data.rss_mb)
        return out


def timeline(samples: list[float], points: int = TIMELINE_POINTS) -> list[float]:
    """The samples at the end of each of ``points`` equal parts of the run."""
    n = len(samples)
    return [round(samples[max(n * i // points - 1, 0)], 1) for i in range(1, points + 1)]


def _expand(roots: list[tuple[psutil.Process, bool]]) -> list[psutil.Process]:
    procs = []
    for proc, children in roots:
        procs.append(proc)
        if children:
            try:
                procs += proc.children(recursive=True)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # the root is gone; nothing below it to count
    return procs


async def process_roots(stack: Stack | None) -> dict[str, list[tuple[int, bool]]]:
    """Pids to sample: each service's workers, the broker, PostgreSQL when local, this client."""
    roots: dict[str, list[tuple[int, bool]]] = {}
    if stack is not None:
        pids = stack.supervisor.pids()
        for service, names in stack.workers.items():
            roots[service] = [(pids[n], True) for n in names if n in pids]
        if stack.broker is not None:
            roots["broker"] = [(stack.broker.pid, True)]
        postmaster = stack.postgres.pid if stack.postgres is not None else None
        if postmaster is None:
            postmaster = await _local_postmaster(stack.settings)
        if postmaster is not None:
            roots["postgres"] = [(postmaster, True)]
    roots["bench"] = [(os.getpid(), False)]
    return roots


async def _local_postmaster(settings: Settings) -> int | None:
    """The PostgreSQL server's pid when it runs on this machine (else None)."""
    conn = await connect(settings.database_dsn("postgres"), settings)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            proc = psutil.Process(backend)
            parent = proc.parent()
            if "postgres" in proc.name() and parent is not None and "postgres" in parent.name():
                return parent.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None  # a server in another container or namespace: not ours to sample
        return None
    finally:
        await conn.close()


# --------------------------------------------------------------- PostgreSQL limit

_PAYLOAD = b"x" * 200  # about the size of an encoded envelope


async def pg_step_rates(settings: Settings, seconds: float, connections: int) -> dict[str, float]:
    """Steps/s of the step transaction's shape on this server: one per commit, and ten."""
    name = check_database_name(f"{settings.database_prefix}bench")
    admin = await connect(settings.database_dsn("postgres"), settings)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            dsn = settings.database_dsn(name)
            await _prepare_scratch(dsn, settings, connections)
            single = await _step_rate(dsn, settings, seconds, connections, batch=1)
            batched = await _step_rate(dsn, settings, seconds, connections, batch=10)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    return {"pg_step_rate_per_s": round(single, 1), "pg_batched_step_rate_per_s": round(batched, 1)}


async def _prepare_scratch(dsn: str, settings: Settings, connections: int) -> None:
    """The services' real inbox/outbox tables (common migrations) plus one row per connection."""
    conn = await connect(dsn, settings)
    try:
        await migrate(conn, "bench")  # no "bench" folder: applies exactly the common migrations
        await conn.execute("CREATE TABLE bench_rows (id int PRIMARY KEY, n bigint NOT NULL)")
        await conn.executemany("INSERT INTO bench_rows VALUES ($1, 0)",
                               [(i,) for i in range(connections)])
    finally:
        await conn.close()


async def _step_rate(dsn: str, settings: Settings, seconds: float, connections: int,
                     batch: int) -> float:
    conns = [await connect(dsn, settings) for _ in range(connections)]
    try:
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        counts = await asyncio.gather(*(_steps_until(c, i, batch, deadline)
                                        for i, c in enumerate(conns)))
        return sum(counts) / (time.monotonic() - started)
    finally:
        for conn in conns:
            await conn.close()


async def _steps_until(conn: asyncpg.Connection, row: int, batch: int, deadline: float) -> int:
    """Inbox insert, row update, outbox insert; ``batch`` of them per commit."""
    steps = 0
    while time.monotonic() < deadline:
        async with conn.transaction():
            for _ in range(batch):
                await conn.execute("INSERT INTO inbox (event_id, event_type) VALUES ($1, $2)"
                                   " ON CONFLICT (event_id) DO NOTHING", uuid.uuid4(), "Bench")
                await conn.execute("UPDATE bench_rows SET n = n + 1 WHERE id = $1", row)
                await conn.execute("INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)",
                                   "bench", b"k", _PAYLOAD)
        steps += batch
    return steps


# --------------------------------------------------------------- the run


async def report_progress(tracker: OrderWatch, every_s: float, emit: Progress) -> None:
    """Every ``every_s``: placed, finished, finish rate over the interval, in flight."""
    last_finished, last_t = 0, time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        now, finished = time.monotonic(), tracker.finished
        rate = (finished - last_finished) / (now - last_t)
        emit(f"placed {tracker.placed}/{tracker.total}  finished {finished}"
             f"  {rate:.0f} orders/s  in flight {tracker.placed - finished}")
        last_finished, last_t = finished, now


async def drive_load(settings: Settings, cfg: BenchConfig, emit: Progress,
                     healthy: Callable[[], bool] = lambda: True) -> OrderWatch:
    """Place the orders and wait until each is terminal or nothing finishes for a while.

    ``healthy`` false (a worker crash-looping) ends the wait at once.
    """
    window = asyncio.Semaphore(cfg.window) if cfg.rate is None else None
    tracker = OrderWatch(total=cfg.total_orders(), window=window)
    consumer = await open_terminal_consumer(settings)
    producer = kafka.producer(settings, acks=1)
    await producer.start()
    tasks = [asyncio.create_task(watch_terminals(consumer, tracker), name="bench-watch"),
             asyncio.create_task(report_progress(tracker, cfg.progress_every_s, emit))]
    placer = asyncio.create_task(place_orders(producer, settings, cfg, tracker))
    try:
        await _wait_done(tracker, placer, cfg.stall_timeout_s, emit, healthy)
    finally:
        for task in [*tasks, placer]:
            task.cancel()
        await asyncio.gather(*tasks, placer, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    if placer.done() and not placer.cancelled() and placer.exception() is not None:
        raise RuntimeError("placing orders failed") from placer.exception()
    return tracker


async def _wait_done(tracker: OrderWatch, placer: asyncio.Task[None], stall_s: float,
                     emit: Progress, healthy: Callable[[], bool]) -> None:
    """Return when every order finished, after ``stall_s`` without a single finish,
    or as soon as the system is no longer ``healthy``."""
    last_count, last_change = -1, time.monotonic()
    while not tracker.done.is_set():
        if placer.done() and placer.exception() is not None:
            return
        if not healthy():
            emit("a worker failed for good; giving up")
            return
        if tracker.finished != last_count:
            last_count, last_change = tracker.finished, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            emit(f"no order finished for {stall_s:.0f}s; giving up")
            return
        try:
            await asyncio.wait_for(tracker.done.wait(), timeout=0.5)
        except TimeoutError:
            continue


def load_summary(tracker: OrderWatch, cfg: BenchConfig) -> dict[str, Any]:
    """Throughput, latency percentiles, outcomes and send lag of a finished load.

    The percentiles leave out the hung orders (``hung_every``): they are
    reported apart, as ``hung_orders`` and the latency of the slowest.
    """
    lat = sorted(tracker.latencies_ms)
    seconds = max(tracker.last_seen - tracker.first_sent, 1e-9) if lat else 0.0
    lag = sorted(tracker.send_lag_ms)
    return {
        "mode": "max" if cfg.rate is None else "rate",
        "rate": cfg.rate,
        "mix": cfg.mix,
        "orders": tracker.placed,
        "finished": tracker.finished,
        "unfinished": tracker.placed - tracker.finished,
        "seconds": round(seconds, 2),
        "orders_per_s": round(tracker.finished / seconds, 1) if seconds else 0.0,
        "p50_ms": percentile(lat, 0.50),
        "p95_ms": percentile(lat, 0.95),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": round(lat[-1], 1) if lat else 0.0,
        "mean_ms": round(statistics.fmean(lat), 1) if lat else 0.0,
        "confirmed": tracker.outcomes["OrderConfirmed"],
        "cancelled": tracker.outcomes["OrderCancelled"],
        "send_errors": tracker.send_errors,
        "send_lag_p99_ms": percentile(lag, 0.99),
        "send_lag_max_ms": round(lag[-1], 1) if lag else 0.0,
        "hung_every": cfg.hung_every,
        "hung_orders": len(tracker.hung),
        "hung_max_ms": round(max(tracker.hung_latencies_ms), 1) if tracker.hung_latencies_ms
        else 0.0,
        "tenths": figures.tenths(tracker.sent_orders()),
    }


async def run_bench(settings: Settings, cfg: BenchConfig, stack: Stack | None = None,
                    emit: Progress | None = None) -> dict[str, Any]:
    """Measure the PostgreSQL limit and the idle CPU, drive the load while sampling
    processes and counting deliveries, then audit."""
    emit = emit or _stderr
    emit(f"measuring the PostgreSQL step rate ({2 * cfg.pg_seconds:.0f}s) ...")
    pg = await pg_step_rates(settings, cfg.pg_seconds, cfg.pg_connections)
    emit(f"pg: {pg}")
    roots = await process_roots(stack)
    idle = await measure_idle(roots, cfg.idle_s, emit)
    urls = worker_urls(stack)
    events_before = await figures.scrape_events(urls) if urls else {}
    sampler = ProcessSampler(roots, rss=_rss_groups(stack))
    sampler.start()
    mode = f"{cfg.rate:g} orders/s" if cfg.rate else f"max throughput (window {cfg.window})"
    emit(f"placing {cfg.total_orders()} orders at {mode} ...")
    try:
        tracker = await drive_load(settings, cfg, emit,
                                   stack.healthy if stack is not None else lambda: True)
    finally:
        await sampler.stop()
    result = {**load_summary(tracker, cfg), "workers": cfg.workers,
              "partitions": settings.partitions, **pg}
    limit = pg["pg_step_rate_per_s"] / STEPS_PER_ORDER
    result["orders_per_s_of_pg_limit"] = round(result["orders_per_s"] / limit, 3) if limit else 0.0
    result.update(sampler.report())
    result.update(cpu_figures(result["cpu_s"], tracker.finished, stack is not None))
    result.update(await _audit(settings, cfg, emit))
    result["deliveries_per_order"] = await deliveries(urls, events_before, tracker.finished, emit)
    result.update({"idle_s": cfg.idle_s, "idle_cpu_percent_of_core": idle})
    return result


def cpu_figures(cpu_s: dict[str, float], finished: int, whole_system: bool) -> dict[str, Any]:
    """``cpu_ms_per_order`` and ``cpu_share``; None without a stack (``--external``), whose
    broker and services this process cannot see."""
    if not whole_system:
        return {"cpu_ms_per_order": None, "cpu_share": None}
    return {"cpu_ms_per_order": figures.cpu_ms_per_order(cpu_s, finished),
            "cpu_share": figures.cpu_share(cpu_s)}


async def measure_idle(roots: dict[str, list[tuple[int, bool]]], seconds: float,
                       emit: Progress) -> dict[str, float] | None:
    """The system's CPU over ``seconds`` with no orders, as percent of one core (None if 0 s,
    or with no system process to sample).

    Work that does not scale with orders (timers, fetch polls, the relay's
    wake-ups) shows here; under load it hides inside CPU per order.
    """
    system = {group: pids for group, pids in roots.items() if group != figures.CLIENT_GROUP}
    if seconds <= 0 or not system:
        if seconds > 0:
            emit("idle CPU: no system processes to sample (--external), not measured")
        return None
    emit(f"sampling the idle system for {seconds:g}s ...")
    sampler = ProcessSampler(system, rss=frozenset())
    sampler.start()
    started = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window, not a wait for anything
    await sampler.stop()
    return figures.idle_percent_of_core(sampler.report()["cpu_s"], time.monotonic() - started)


def worker_urls(stack: Stack | None) -> list[str]:
    """Every worker's web URL (none without a stack)."""
    if stack is None:
        return []
    return [stack.web_url(name) for names in stack.workers.values() for name in names]


async def deliveries(urls: list[str], before: dict[str, float], finished: int,
                     emit: Progress) -> dict[str, float] | None:
    """Records delivered to each service's agents per finished order (None without a stack).

    Read once the counters stop moving: an order's last events (inventory
    committing, the tracker reading ``InventoryCommitted``) arrive after the
    client saw it finish.
    """
    if not urls:
        emit("deliveries per order: no stack (--external), not measured")
        return None
    try:
        after = await settled_events(urls)
    except (aiohttp.ClientError, TimeoutError) as exc:
        emit(f"deliveries per order not measured: a worker's /metrics failed: {exc!r}")
        return None
    return figures.deliveries_per_order(before, after, SERVICES, finished)


async def settled_events(urls: list[str], deadline_s: float = 30.0,
                         every_s: float = 0.5) -> dict[str, float]:
    """Per-service ``oms_events_total`` once two scrapes ``every_s`` apart agree."""
    last = await figures.scrape_events(urls)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        await asyncio.sleep(every_s)
        now = await figures.scrape_events(urls)
        if now == last:
            break
        last = now
    return last


def _rss_groups(stack: Stack | None) -> frozenset[str]:
    """Groups with RSS: not PostgreSQL, whose shared buffers count once per backend."""
    services = frozenset(stack.workers) if stack is not None else frozenset()
    return services | {"broker", "bench"}


async def _audit(settings: Settings, cfg: BenchConfig, emit: Progress) -> dict[str, Any]:
    if not cfg.audit:
        return {"audit": "skipped", "violations": 0}
    emit("auditing after quiescence ...")
    report = await settled_audit(settings, deadline_s=60.0)
    return {"audit": "ok" if report.ok else "violated",
            "violations": report.summary()["violations"]}


async def bench_with_stack(settings: Settings, cfg: BenchConfig, *, external: bool = False,
                           emit: Progress | None = None) -> dict[str, Any]:
    """``oms bench``: start the stack (unless ``external``), run, and stop it again."""
    emit = emit or _stderr
    if external:
        return await run_bench(settings, cfg, None, emit)
    emit(f"starting the stack ({cfg.workers} worker(s) per service,"
         f" {settings.partitions} partitions) ...")
    stack = await start_stack(settings, workers_per_service=cfg.workers)
    try:
        return await run_bench(stack.settings, cfg, stack, emit)
    finally:
        await stack.stop()


def _stderr(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
