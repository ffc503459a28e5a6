"""What does Faust itself cost per consumed event, before any handler runs?

Fills a topic on an embedded Tansu broker, then reads it twice and prints the
CPU microseconds per record: once with a plain aiokafka consumer, once with a
Faust worker whose agent takes batches (:func:`agents.messaging.batching.take_batches`,
as the services do) and does nothing else, with and without Faust's
Prometheus sensor. An order makes about 18 events reach some agent (the
tracker reads all of them, and orders and payments read topics of which they
ignore half), so the Faust figure times 18 is the framework's share of an
order's CPU whatever the services do.

Usage::

    python scripts/faust_floor.py [records]
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.dev.embedded import start_broker

TOPIC = "floor"
PARTITIONS = 4


def cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def fill(bootstrap: str, records: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(records):
            await producer.send(TOPIC, b"x" * 200, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def raw_us_per_record(bootstrap: str, records: int) -> float:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await consumer.start()
    try:
        started, seen = cpu_s(), 0
        while seen < records:
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(b) for b in batches.values())
        return (cpu_s() - started) / records * 1e6
    finally:
        await consumer.stop()


def faust_us_per_event(bootstrap: str, records: int, sensor: bool) -> float:
    """Run this file as a Faust worker (see :func:`worker`) and read its figure."""
    env = dict(os.environ, FLOOR_BOOTSTRAP=bootstrap, FLOOR_RECORDS=str(records),
               FLOOR_SENSOR="1" if sensor else "")
    with tempfile.TemporaryDirectory() as datadir:
        out = subprocess.run([sys.executable, __file__, "worker", "-l", "warn"], env=env,
                             cwd=datadir, capture_output=True, text=True, timeout=600)
    found = re.search(r"FLOOR_US_PER_EVENT ([0-9.]+)", out.stdout + out.stderr)
    if found:
        return float(found[1])
    raise RuntimeError(f"the Faust worker printed no figure:\n{out.stderr[-2000:]}")


def worker() -> None:
    """The Faust side: an agent that takes batches and counts them, then reports."""
    import faust
    import mode.loop
    from faust.sensors.prometheus import setup_prometheus_sensors

    from agents.messaging.batching import take_batches

    mode.loop.use("uvloop")  # as the services run
    records = int(os.environ["FLOOR_RECORDS"])
    app = faust.App(f"floor-{time.time_ns()}", broker=f"oms://{os.environ['FLOOR_BOOTSTRAP']}",
                    store="memory://", consumer_auto_offset_reset="earliest",
                    web_enabled=False, broker_session_timeout=6)
    if os.environ.get("FLOOR_SENSOR"):
        setup_prometheus_sensors(app)
    topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")

    @app.agent(topic)
    async def consume(stream: faust.StreamT) -> None:
        started, seen = 0.0, 0
        async for events in take_batches(stream, 200, 0.002):
            started = started or cpu_s()
            seen += len(events)
            if seen >= records:
                print(f"FLOOR_US_PER_EVENT {(cpu_s() - started) / records * 1e6:.1f}",
                      file=sys.stderr, flush=True)
                os._exit(0)

    app.main()


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory() as tmp, start_broker(Path(tmp)) as broker:
        asyncio.run(fill(broker.bootstrap, records))
        figures = {
            "aiokafka consumer": asyncio.run(raw_us_per_record(broker.bootstrap, records)),
            "Faust agent, take_batches": faust_us_per_event(broker.bootstrap, records, False),
            "... with the Prometheus sensor": faust_us_per_event(broker.bootstrap, records, True),
        }
    print(f"{records} records of 200 bytes, {PARTITIONS} partitions, CPU us per record:")
    for name, us in figures.items():
        print(f"  {name:32s} {us:6.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
    else:
        main()
