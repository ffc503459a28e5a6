"""One running system per data directory: the lock ``oms up``, ``demo`` and ``bench`` hold.

A second run in the same directory would take over the first one's embedded
PostgreSQL and drop its databases under its running workers. The lock is an
``flock`` on ``<data_dir>/oms.lock``: the kernel releases it when its holder
dies, so even ``kill -9`` never leaves a stale lock behind. The file holds
the holder's pid, for the message that refuses the second run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "oms.lock"


class DataDirInUse(RuntimeError):
    """Another process runs a system in this data directory."""


class DataDirLock:
    """An exclusive lock on a data directory, held until ``release`` or the process ends."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Lock ``data_dir`` (created if missing), or raise DataDirInUse naming the holder.

        ``data_dir`` of the lock is the absolute path.
        """
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited by children (O_CLOEXEC): the lock must end with this process.
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"{data_dir} is in use by another oms up/demo/bench (pid {holder}); "
                "stop that one first, or set OMS_DATA_DIR to another directory"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(data_dir, fd)

    def release(self) -> None:
        """Unlock (closing the file does); safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
