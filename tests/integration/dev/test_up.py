"""``oms up`` as a user runs it: a real process on the embedded default, killed for real.

Each ``oms up`` here starts its own Tansu broker, embedded PostgreSQL and four
workers in a data directory of its own (outside ``tmp_path``: see
``pg_safe_dir``). Every wait is a condition polled until a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest

from tests.conftest import free_port_block
from tests.helpers import eventually
from tests.integration.dev.conftest import pg_safe_dir

pytestmark = pytest.mark.integration

START_DEADLINE_S = 120.0  # four workers on a shared 2-core machine
_WORKER_LINE = re.compile(r"^(\w+-\d+)\s+(http://\S+)\s+\(pid (\d+)\)")


@dataclass
class Up:
    """A running ``oms up`` and what it printed until it said ready."""

    proc: asyncio.subprocess.Process
    data_dir: Path
    env: dict[str, str]
    stderr_path: Path
    stdout: list[str] = field(default_factory=list)
    stderr_at_ready: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def up_env(data_dir: Path) -> dict[str, str]:
    """The environment of a user running ``oms up`` with nothing configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env.update(OMS_DATA_DIR=str(data_dir), OMS_WEB_PORT_BASE=str(free_port_block()))
    return env


async def oms(
    env: dict[str, str], cwd: Path, *args: str, stderr: Path
) -> asyncio.subprocess.Process:
    """``oms ARGS`` in a process of its own, stdout piped, stderr appended to a file."""
    with stderr.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agents.cli", *args, env=env, cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err)


async def start_up(tmp: Path) -> Up:
    """Start ``oms up`` and read its output until ``ready``."""
    data_dir = tmp / "data"
    env = up_env(data_dir)
    proc = await oms(env, tmp, "up", stderr=tmp / "up.err")
    up = Up(proc, data_dir, env, tmp / "up.err")
    assert proc.stdout is not None
    async with asyncio.timeout(START_DEADLINE_S):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"oms up exited before ready:\n{''.join(up.stdout)}\n{up.stderr()}"
            up.stdout.append(line)
            if found := _WORKER_LINE.match(line):
                up.urls[found[1]] = found[2]
                up.pids[found[1]] = int(found[3])
            if line.startswith("ready"):
                up.stderr_at_ready = up.stderr()
                return up


def process_tree(up: Up) -> list[psutil.Process]:
    """Every process ``oms up`` started, and anything running on its data directory."""
    procs: list[psutil.Process] = []
    roots = [psutil.Process(up.proc.pid)] if up.proc.returncode is None else []
    roots += [proc for proc in psutil.process_iter(["cmdline"])
              if any(str(up.data_dir) in arg for arg in proc.info["cmdline"] or [])]
    for root in roots:
        try:
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return [proc for proc in procs if proc.pid != up.proc.pid]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The ones still running (``is_running`` also guards against a reused pid)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            continue
    return running


async def stop_up(up: Up) -> None:
    """Ctrl-C's equivalent, and make sure this test leaves no process behind."""
    procs = process_tree(up)
    if up.proc.returncode is None:
        up.proc.terminate()
        try:
            async with asyncio.timeout(60):
                await up.proc.wait()
        except TimeoutError:
            up.proc.kill()
            await up.proc.wait()
    for proc in alive(procs):  # only after a failed test: its own processes
        proc.kill()


async def ready_pid(http: aiohttp.ClientSession, url: str) -> tuple[int, int | None]:
    """``/ready/``'s status and the pid that answered (0, None when nothing answers)."""
    try:
        async with http.get(f"{url}/ready/") as resp:
            body = await resp.json(content_type=None)
            return resp.status, body.get("pid")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, None


# ------------------------------------------------------------------ one oms up for several tests


@pytest.fixture(scope="module")
async def up() -> AsyncIterator[Up]:
    with pg_safe_dir("up") as tmp:
        running = await start_up(tmp)
        try:
            yield running
        finally:
            await stop_up(running)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        yield session


async def test_up_prints_the_console_and_no_warning(up: Up, http: aiohttp.ClientSession) -> None:
    consoles = [line.split()[1] for line in up.stdout if line.startswith("console ")]
    assert consoles == [f"{up.urls['orchestrator-0']}/dashboard/"], "".join(up.stdout)
    async with http.get(consoles[0]) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    assert "warning" not in up.stderr_at_ready.lower(), up.stderr_at_ready


async def test_a_killed_worker_is_restarted(up: Up, http: aiohttp.ClientSession) -> None:
    """``kill -9`` of a worker restarts it; ``oms up`` and the other workers run on."""
    others = {name: pid for name, pid in up.pids.items() if name != "inventory-0"}
    old = up.pids["inventory-0"]
    os.kill(old, signal.SIGKILL)

    status, pid = await eventually(lambda: ready_pid(http, up.urls["inventory-0"]),
                                   lambda r: r[0] == 200 and r[1] not in (None, old), 90.0,
                                   "inventory-0 ready again under a new pid")
    up.pids["inventory-0"] = pid  # type: ignore[assignment]
    assert up.proc.returncode is None, f"oms up exited:\n{up.stderr()}"
    for name, pid in others.items():
        assert await ready_pid(http, up.urls[name]) == (200, pid), f"{name} was disturbed"
    assert re.search(r"inventory-0 \(pid \d+\) exited with code -9.*restart", up.stderr())


async def database_oids(up: Up) -> dict[str, int]:
    """The oid of every service database: a dropped and re-created database gets a new one."""
    url = f"postgresql://postgres@/postgres?host={up.data_dir / 'pg'}&port=5432"
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT datname, oid FROM pg_database WHERE datname LIKE 'oms_%'")
    finally:
        await conn.close()
    return {r["datname"]: int(r["oid"]) for r in rows}


@pytest.mark.parametrize("command", [["up"], ["demo", "--orders", "1"], ["bench", "--orders", "1"]])
async def test_a_second_run_in_the_same_data_dir_refuses(
    up: Up, http: aiohttp.ClientSession, command: list[str], tmp_path: Path
) -> None:
    """It says which directory and which pid, and the running system is left alone."""
    before = await database_oids(up)
    assert len(before) == 3
    second = await oms(up.env, tmp_path, *command, stderr=tmp_path / "second.err")
    try:
        async with asyncio.timeout(60):
            code = await second.wait()
    except TimeoutError:
        code = None
    finally:
        for proc in alive([*_descendants(second.pid), *([] if second.returncode is not None
                                                        else [psutil.Process(second.pid)])]):
            proc.kill()
    err = (tmp_path / "second.err").read_text()
    assert code not in (None, 0), f"oms {command[0]} did not refuse:\n{err[-2000:]}"
    assert f"{up.data_dir} is in use by another oms up/demo/bench (pid {up.proc.pid})" in err
    assert "Traceback" not in err
    assert await database_oids(up) == before, "the running system's databases were re-created"
    for name, pid in up.pids.items():
        assert await ready_pid(http, up.urls[name]) == (200, pid), f"{name} was disturbed"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# ------------------------------------------------------------------ an oms up of its own


async def test_kill_9_of_up_leaves_nothing_behind(pg_dir: Path) -> None:
    """Broker, workers, the postmaster and its backends all die with a ``kill -9``ed ``oms up``."""
    up = await start_up(pg_dir)
    try:
        procs = process_tree(up)
        names = {proc.name() for proc in procs}
        assert "postgres" in names and len(procs) > 8, f"unexpected tree: {names}"

        up.proc.kill()
        await up.proc.wait()

        async def left() -> list[str]:
            return [f"{p.pid} {p.name()}" for p in alive(procs + process_tree(up))]

        await eventually(left, lambda found: not found, 30.0, "nothing left of oms up")
    finally:
        await stop_up(up)
