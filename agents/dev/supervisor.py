"""An asyncio supervisor for the service workers started by ``oms up``.

Design choices, and why:

* Each child runs in its own process group. Ctrl-C at the terminal then
  reaches only the supervisor, which stops the children in order with one
  SIGTERM each, instead of every worker receiving SIGINT and SIGTERM at once.
  Signalling the group also reaches any grandchildren a worker forks.
* Each child gets ``PR_SET_PDEATHSIG`` (SIGTERM), so a supervisor killed with
  SIGKILL still leaves no orphaned workers.
* A child that exits on its own is a failure: ``wait()`` returns its name and
  the caller stops the rest. A child ended through ``kill``/``restart``/``stop``
  is expected and never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from asyncio.subprocess import Process
from dataclasses import dataclass, field
from pathlib import Path

from agents.dev.embedded import die_with_parent

_log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class ChildSpec:
    """How to start one child. ``env`` is laid over the supervisor's environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Child:
    spec: ChildSpec
    process: Process
    expected_exit: bool = False
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, watches and stops a fixed set of child processes.

    Typical use (the ``oms up`` loop)::

        sup = Supervisor(log_dir)
        sup.install_signal_handlers()
        await sup.start(specs)
        died = await sup.wait()      # a child died, or Ctrl-C / SIGTERM
        await sup.stop()
        return 1 if died else 0
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: dict[str, _Child] = {}
        self._done = asyncio.Event()
        self._died: str | None = None
        self.exit_codes: dict[str, int] = {}
        """Return code of each child's last unexpected exit."""
        self.signalled: signal.Signals | None = None
        """The signal that made ``wait()`` return, if any."""

    # ------------------------------------------------------------------ start

    async def start(self, specs: list[ChildSpec]) -> None:
        """Start every child; names must be unique."""
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names) or set(names) & self._children.keys():
            raise ValueError(f"child names must be unique: {names}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            await self._spawn(spec)

    async def _spawn(self, spec: ChildSpec) -> None:
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open("ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"--- {stamp} starting {spec.argv}\n".encode())
            log_file.flush()
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                env={**os.environ, **spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_parent(),
            )
        child = _Child(spec=spec, process=process)
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{spec.name}")
        self._children[spec.name] = child
        _log.info("started %s pid %d (log %s)", spec.name, process.pid, log_path)

    async def _watch(self, child: _Child) -> None:
        """Turn an exit nobody asked for into the result of ``wait()``."""
        code = await child.process.wait()
        if child.expected_exit:
            return
        name = child.spec.name
        _log.error("%s (pid %d) exited with code %d", name, child.process.pid, code)
        self.exit_codes[name] = code
        if self._died is None:
            self._died = name
        self._done.set()

    # ------------------------------------------------------------ observe

    async def wait(self) -> str | None:
        """Return the name of the first child that died, or None after stop/signal."""
        await self._done.wait()
        return self._died

    def pids(self) -> dict[str, int]:
        """Process id of every child that is still running."""
        return {name: c.process.pid for name, c in self._children.items() if _alive(c)}

    def running(self, name: str) -> bool:
        """Whether the named child is running now."""
        child = self._children.get(name)
        return child is not None and _alive(child)

    # ------------------------------------------------------------ control

    def install_signal_handlers(self) -> None:
        """Make SIGINT, SIGTERM and SIGHUP end ``wait()`` (the caller then stops)."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove_signal_handlers(self) -> None:
        """Give the stop signals back to their default handlers."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        _log.info("received %s; stopping", sig.name)
        self.signalled = sig
        self._done.set()

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to a child's process group and wait until it has exited."""
        child = self._children[name]
        child.expected_exit = True
        _signal_group(child, sig)
        await _reap(child)

    async def restart(
        self, name: str, sig: signal.Signals = signal.SIGTERM, grace: float = DEFAULT_GRACE_S
    ) -> int:
        """Stop a child (``sig``, SIGKILL after ``grace``) and start it again; return its pid."""
        child = self._children[name]
        await self._terminate([child], sig, grace)
        await self._spawn(child.spec)
        return self._children[name].process.pid

    async def stop(self, grace: float = DEFAULT_GRACE_S) -> None:
        """Stop every child: SIGTERM, SIGKILL after ``grace`` seconds, reap all.

        Also makes ``wait()`` return. Safe to call more than once.
        """
        await self._terminate(list(self._children.values()), signal.SIGTERM, grace)
        self._done.set()

    async def _terminate(self, children: list[_Child], sig: signal.Signals, grace: float) -> None:
        for child in children:
            child.expected_exit = True
        live = [child for child in children if _alive(child)]
        for child in live:
            _signal_group(child, sig)
        reaps = [asyncio.create_task(_reap(child)) for child in live]
        if not reaps:
            return
        _finished, late = await asyncio.wait(reaps, timeout=grace)
        for child in live:
            if _alive(child):
                _log.warning("%s ignored %s for %.1fs; killing", child.spec.name, sig.name, grace)
            # Even when the leader is gone, grandchildren may remain in its group.
            _signal_group(child, signal.SIGKILL)
        await asyncio.gather(*late)


def _alive(child: _Child) -> bool:
    return child.process.returncode is None


def _signal_group(child: _Child, sig: signal.Signals) -> None:
    """Signal the child's whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, sig)


async def _reap(child: _Child) -> None:
    await child.process.wait()
    if child.watcher is not None:
        await child.watcher
