"""An asyncio supervisor for the service workers started by ``oms up``.

Design choices, and why:

* Each child runs in its own process group. Ctrl-C at the terminal then
  reaches only the supervisor, which stops the children in order with one
  SIGTERM each, instead of every worker receiving SIGINT and SIGTERM at once.
  Signalling the group also reaches any grandchildren a worker forks.
* Each child gets ``PR_SET_PDEATHSIG`` (SIGTERM), so a supervisor killed with
  SIGKILL still leaves no orphaned workers.
* A child that exits on its own is started again after a backoff when its
  spec has a :class:`RestartPolicy` (the workers of ``oms up`` do), so one
  dead worker does not stop the system. Only a crash loop (more than
  ``max_crashes`` exits within ``window_s``), or the exit of a child without a
  policy, is a failure: ``wait()`` returns its name and the caller stops the
  rest. A child ended through ``kill``/``restart``/``stop`` is expected and
  never counts; those also cancel a restart still waiting for its backoff, so
  an explicit operation never races an automatic one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from asyncio.subprocess import Process
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from agents.dev.embedded import die_with_parent
from agents.messaging.retry import Backoff

_log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited on its own is started again, and when that stops."""

    first_delay_s: float = 0.5
    """Backoff before the first restart; doubled for each further one."""
    max_delay_s: float = 5.0
    healthy_after_s: float = 30.0
    """A child that ran this long before it exited starts again with the first delay."""
    max_crashes: int = 5
    """More exits than this within ``window_s`` are a crash loop: give up."""
    window_s: float = 60.0


class CrashHistory:
    """One child's recent exits: the backoff before its next start, and crash-loop detection."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.backoff = Backoff(policy.first_delay_s, policy.max_delay_s)
        self._exits: deque[float] = deque()

    @property
    def recent(self) -> int:
        """Exits within the last window."""
        return len(self._exits)

    def record(self, at: float, ran_s: float) -> bool:
        """Count an exit at monotonic time ``at`` after ``ran_s`` seconds; True for a crash loop."""
        if ran_s >= self.policy.healthy_after_s:
            self.backoff.reset()  # a long healthy run: this is a new failure
        self._exits.append(at)
        while at - self._exits[0] > self.policy.window_s:
            self._exits.popleft()
        return len(self._exits) > self.policy.max_crashes


@dataclass
class ChildSpec:
    """How to start one child. ``env`` is laid over the supervisor's environment.

    ``restart`` None: an exit nobody asked for ends ``wait()`` at once.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: RestartPolicy | None = None


@dataclass
class _Child:
    spec: ChildSpec
    process: Process
    started: float = field(default_factory=time.monotonic)
    expected_exit: bool = False
    restarting: bool = False
    """It exited on its own; its watcher waits out the backoff, then starts it again."""
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, watches and stops a fixed set of child processes.

    Typical use (the ``oms up`` loop)::

        sup = Supervisor(log_dir)
        sup.install_signal_handlers()
        await sup.start(specs)
        failed = await sup.wait()    # a crash loop, or Ctrl-C / SIGTERM
        await sup.stop()
        return 1 if failed else 0
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: dict[str, _Child] = {}
        self._history: dict[str, CrashHistory] = {}
        self._done = asyncio.Event()
        self.failed: str | None = None
        """The child whose exit made ``wait()`` return, if any."""
        self.failure: str | None = None
        """Why it failed, naming its log: what ``oms up`` prints before it stops."""
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

    def log_path(self, name: str) -> Path:
        """Where a child's stdout and stderr go."""
        return self.log_dir / f"{name}.log"

    async def _spawn(self, spec: ChildSpec) -> None:
        log_path = self.log_path(spec.name)
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
        """Restart a child that exited on its own, or make its exit the result of ``wait()``."""
        code = await child.process.wait()
        if child.expected_exit:
            return
        name, pid = child.spec.name, child.process.pid
        self.exit_codes[name] = code
        policy = child.spec.restart
        if policy is None:
            self._fail(name, f"{name} (pid {pid}) exited with code {code}; "
                             f"its log: {self.log_path(name)}")
            return
        history = self._history.setdefault(name, CrashHistory(policy))
        now = time.monotonic()
        if history.record(now, now - child.started):
            self._fail(name, f"{name} is crash-looping: {history.recent} exits within "
                             f"{policy.window_s:g}s, the last with code {code}; "
                             f"its log: {self.log_path(name)}")
            return
        _log.warning("%s (pid %d) exited with code %d; restarting it in %.1fs (log %s)",
                     name, pid, code, history.backoff.delay, self.log_path(name))
        child.restarting = True
        await history.backoff.wait()
        await self._spawn(child.spec)

    def _fail(self, name: str, reason: str) -> None:
        _log.error("%s", reason)
        if self.failed is None:
            self.failed, self.failure = name, reason
        self._done.set()

    # ------------------------------------------------------------ observe

    async def wait(self) -> str | None:
        """Return the first child that failed (see ``failure``), or None after stop/signal.

        A child that is restarted has not failed: only a crash loop, or the
        exit of a child without a restart policy, ends the wait.
        """
        await self._done.wait()
        return self.failed

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
        """Send ``sig`` to a child's process group and wait until it has exited.

        It stays down: a pending automatic restart is cancelled.
        """
        child = self._children[name]
        _expect_exit(child)
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
            _expect_exit(child)
        live = [child for child in children if _alive(child)]
        for child in live:
            _signal_group(child, sig)
        reaps = [asyncio.create_task(_reap(child)) for child in children]
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


def _expect_exit(child: _Child) -> None:
    """Its exit is asked for: no failure, and no automatic restart (a pending one is cancelled).

    Cancelling is clean at either await of a restart: during the backoff
    nothing has started yet, and asyncio kills a process it was starting.
    """
    child.expected_exit = True
    if child.restarting and child.watcher is not None:
        child.watcher.cancel()


def _signal_group(child: _Child, sig: signal.Signals) -> None:
    """Signal the child's whole process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, sig)


async def _reap(child: _Child) -> None:
    await child.process.wait()
    if child.watcher is not None:
        await asyncio.wait([child.watcher])  # done, or cancelled by _expect_exit
