"""One system per data directory: the lock behind ``oms up``, ``demo`` and ``bench``."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from agents.dev.lock import DataDirInUse, DataDirLock
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def test_a_second_holder_is_refused_with_the_dir_and_the_pid(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path)
    try:
        with pytest.raises(DataDirInUse) as refused:
            DataDirLock.acquire(tmp_path)
        assert str(tmp_path) in str(refused.value)
        assert f"pid {os.getpid()}" in str(refused.value)
    finally:
        first.release()
    DataDirLock.acquire(tmp_path).release()  # free again once released


async def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(
            """
            import sys, threading
            from pathlib import Path
            from agents.dev.lock import DataDirLock
            DataDirLock.acquire(Path(sys.argv[1]))
            print("locked", flush=True)
            threading.Event().wait()
            """), str(tmp_path), stdout=asyncio.subprocess.PIPE)
    assert holder.stdout is not None
    async with asyncio.timeout(20):
        assert await holder.stdout.readline() == b"locked\n"
    with pytest.raises(DataDirInUse, match=f"pid {holder.pid}"):
        DataDirLock.acquire(tmp_path)

    holder.kill()
    async with asyncio.timeout(20):
        await holder.wait()
    DataDirLock.acquire(tmp_path).release()


async def test_start_stack_refuses_a_data_dir_in_use(tmp_path: Path) -> None:
    """What ``oms up``, ``demo`` and ``bench`` all go through; nothing is started."""
    from agents.dev.stack import start_stack

    held = DataDirLock.acquire(tmp_path)
    try:
        with pytest.raises(DataDirInUse, match=str(tmp_path)):
            await start_stack(make_settings(tmp_path))
        assert not (tmp_path / "tansu.log").exists(), "a broker was started"
    finally:
        held.release()
