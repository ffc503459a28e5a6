"""The whole system as processes: broker, PostgreSQL, and the service workers.

``oms up``, ``oms demo``, the benchmark and the end-to-end tests all start the
system through :func:`start_stack`, so they run exactly what production runs,
one process per worker. Unset broker or database settings select the embedded
Tansu broker and embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from agents.dev.catalogue import catalogue
from agents.dev.embedded import EmbeddedBroker, EmbeddedPostgres, start_broker, start_postgres
from agents.dev.lock import DataDirLock
from agents.dev.supervisor import ChildSpec, RestartPolicy, Supervisor
from agents.ops.provision import drop_databases, init_system
from config import SERVICES, Settings
from config.settings import DATABASE_SERVICES

WORKER_PORT_STRIDE = 10  # worker k of a service listens on base + 10k + index
WORKER_RESTARTS = RestartPolicy()  # a dead worker is started again; a crash loop stops all


@dataclass
class Stack:
    """A running system; ``settings`` point at its broker and database."""

    settings: Settings
    supervisor: Supervisor
    workers: dict[str, list[str]] = field(default_factory=dict)  # service -> child names
    broker: EmbeddedBroker | None = None
    postgres: EmbeddedPostgres | None = None
    lock: DataDirLock | None = None

    def all_running(self) -> bool:
        """True while every worker process is alive."""
        return all(self.supervisor.running(n) for names in self.workers.values() for n in names)

    def healthy(self) -> bool:
        """False once a worker has failed for good (a crash loop).

        A worker that died and is being restarted still counts as healthy:
        its work resumes from its committed offsets when it is back.
        """
        return self.supervisor.failed is None

    def worker_settings(self, child: str) -> Settings:
        """Settings of one worker (its web port differs from its siblings').

        Every worker is told where the first worker of each database service
        listens: the default would follow the worker's own shifted ports, where
        worker k of the tracker would look for worker k of each service.
        """
        k = int(child.rsplit("-", 1)[1])
        return self.settings.model_copy(
            update={"web_port_base": self.settings.web_port_base + WORKER_PORT_STRIDE * k,
                    "service_urls": self.service_urls()}
        )

    def service_urls(self) -> dict[str, str]:
        """Each database service's first worker's URL, unless the settings name one."""
        return {s: self.settings.service_url(s) for s in DATABASE_SERVICES}

    def web_url(self, child: str) -> str:
        """Base URL of a worker's Faust web server."""
        service = child.rsplit("-", 1)[0]
        port = self.worker_settings(child).web_port(service)
        return f"http://{self.settings.web_host}:{port}"

    async def stop(self) -> None:
        """Stop workers, then the embedded servers, then let go of the data directory."""
        await self.supervisor.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.lock is not None:
            self.lock.release()


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``OMS_*`` variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"OMS_{name.upper()}"] = str(value)
    return env


async def start_stack(
    settings: Settings,
    *,
    workers_per_service: int = 1,
    services: tuple[str, ...] = SERVICES,
    fresh: bool | None = None,
    ready_timeout_s: float = 90.0,
) -> Stack:
    """Start everything and return once every worker reports ready.

    First it locks the data directory (DataDirInUse if another system runs
    there), so it never touches a running system's servers or databases.
    ``fresh`` drops the service databases first. By default it does so only
    when both broker and PostgreSQL are embedded (an in-memory broker starts
    empty, so old database state would no longer match it); databases on a
    configured server are never dropped unless asked for. On any failure
    everything started so far is stopped again.
    """
    lock = DataDirLock.acquire(Path(settings.data_dir))
    settings = settings.model_copy(update={"data_dir": str(lock.data_dir)})
    stack = Stack(settings, Supervisor(lock.data_dir / "logs"), lock=lock)
    try:
        _start_embedded(stack)
        embedded = stack.broker is not None and stack.postgres is not None
        if fresh if fresh is not None else embedded:
            await drop_databases(stack.settings)
        await init_system(stack.settings, catalogue())
        await stack.supervisor.start(_worker_specs(stack, services, workers_per_service))
        await wait_ready(stack, ready_timeout_s)
    except BaseException:
        await stack.stop()
        raise
    return stack


def _worker_specs(stack: Stack, services: tuple[str, ...], per_service: int) -> list[ChildSpec]:
    """One restartable child per worker, named ``service-k``, recorded in ``stack.workers``."""
    specs = []
    for service in services:
        for k in range(per_service):
            name = f"{service}-{k}"
            stack.workers.setdefault(service, []).append(name)
            env = settings_env(stack.worker_settings(name))
            argv = [sys.executable, "-m", "agents.cli", "worker", service]
            specs.append(ChildSpec(name, argv, env, restart=WORKER_RESTARTS))
    return specs


def _start_embedded(stack: Stack) -> None:
    """Start the embedded broker and PostgreSQL for whatever is not configured.

    Synchronous on purpose: both take well under a second, and they must be
    spawned from this thread so they die with this process (PDEATHSIG).
    """
    data_dir = Path(stack.settings.data_dir)
    if not stack.settings.kafka_bootstrap:
        stack.broker = start_broker(data_dir)
        stack.settings = stack.settings.model_copy(
            update={"kafka_bootstrap": stack.broker.bootstrap})
    if not stack.settings.database_url:
        stack.postgres = start_postgres(data_dir)
        stack.settings = stack.settings.model_copy(
            update={"database_url": SecretStr(stack.postgres.url)})


async def wait_ready(stack: Stack, timeout_s: float) -> None:
    """Poll every worker's ``/ready/`` until all answer 200, or fail naming the laggards."""
    deadline = time.monotonic() + timeout_s
    pending = [name for names in stack.workers.values() for name in names]
    last: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while pending:
            for name in list(pending):
                if not stack.supervisor.running(name):
                    raise RuntimeError(f"worker {name} exited during start; see its log "
                                       f"{stack.supervisor.log_path(name)}")
                try:
                    async with http.get(stack.web_url(name) + "/ready/") as resp:
                        last[name] = await resp.text()
                        body = await resp.json(content_type=None)
                        ours = body.get("pid") == stack.supervisor.pids().get(name)
                        if resp.status == 200 and ours:
                            pending.remove(name)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    last[name] = repr(exc)
            if pending and time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {last.get(n, '')[:200]}" for n in pending)
                raise TimeoutError(f"workers not ready after {timeout_s}s: {detail}")
            if pending:
                await asyncio.sleep(0.2)
