"""The commands that run the whole system on one machine: ``oms up``, ``demo``, ``bench``.

Thin click wrappers over :mod:`agents.dev.stack`, :mod:`agents.dev.demo` and
:mod:`agents.dev.bench`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from agents.dev.lock import DataDirInUse
from agents.ops.cli import echo_json
from config import Settings, get_settings

T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, with a data directory in use reported as a one-line error (exit 1)."""
    try:
        return asyncio.run(main)
    except DataDirInUse as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("up")
@click.option("--workers", default=1, show_default=True, help="workers per service")
def up_command(workers: int) -> None:
    """Start the whole system (embedded broker and PostgreSQL unless configured)."""
    sys.exit(_run(_up(get_settings(), workers)))


async def _up(settings: Settings, workers: int) -> int:
    from agents.dev.stack import start_stack

    _log_to_stderr()
    stack = await start_stack(settings, workers_per_service=workers)
    stack.supervisor.install_signal_handlers()
    click.echo(f"broker   {stack.settings.kafka_bootstrap}")
    click.echo(f"database {stack.settings.redacted_database_url()}")
    for names in stack.workers.values():
        for name in names:
            click.echo(f"{name:<16} {stack.web_url(name)}  (pid {stack.supervisor.pids()[name]})")
    for tracker in stack.workers.get("orchestrator", [])[:1]:
        click.echo(f"console  {stack.web_url(tracker)}/dashboard/")
    click.echo("ready; a worker that dies is restarted; Ctrl-C stops everything")
    failed = await stack.supervisor.wait()
    if failed:
        click.echo(f"{stack.supervisor.failure}; stopping everything", err=True)
    await stack.stop()
    return 1 if failed else 0


def _log_to_stderr() -> None:
    """Show the supervisor's restarts and failures (``agents.dev`` at INFO, the rest at WARNING)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("agents.dev").setLevel(logging.INFO)


@click.command("demo")
@click.option("--orders", "count", default=500, show_default=True)
@click.option("--workers", default=1, show_default=True, help="workers per service")
@click.option("--timeout", default=300.0, show_default=True, help="seconds to wait for sagas")
def demo_command(count: int, workers: int, timeout: float) -> None:
    """Start the system, run COUNT orders through it, audit, print one JSON line."""
    result = _run(_demo(get_settings(), count, workers, wait_s=timeout))
    echo_json(result)
    sys.exit(0 if result["pending"] == 0 and result["invariants"] == "ok" else 1)


async def _demo(settings: Settings, count: int, workers: int, wait_s: float) -> dict[str, Any]:
    from agents.dev.demo import run_demo
    from agents.dev.stack import start_stack

    click.echo("starting the stack ...", err=True)
    stack = await start_stack(settings, workers_per_service=workers)
    try:
        click.echo(f"placing {count} orders ...", err=True)
        return await run_demo(stack, count, wait_s)
    finally:
        await stack.stop()


@click.command("bench")
@click.option("--orders", "count", type=int, default=None, help="orders to place (default 1000)")
@click.option("--rate", type=float, default=None, help="orders/s (open loop); omit for max")
@click.option("--duration", type=float, default=None, help="seconds at --rate, not --orders")
@click.option("--workers", default=1, show_default=True, help="workers per service")
@click.option("--partitions", type=int, default=None, help="partitions per topic (new topics)")
@click.option("--mix", type=click.Choice(["demo", "success"]), default="demo", show_default=True)
@click.option("--window", default=300, show_default=True, help="orders in flight at max throughput")
@click.option("--hung-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="every N-th order pays with the token the PSP never answers; the"
              " percentiles are then the other orders'")
@click.option("--idle-s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="before the load, sample the system's CPU this long with no orders; 0 = skip")
@click.option("--no-audit", is_flag=True, help="skip the invariant audit at the end")
@click.option("--external", is_flag=True, help="drive the configured running system; start nothing")
def bench_command(count: int | None, rate: float | None, duration: float | None, workers: int,
                  partitions: int | None, mix: str, window: int, hung_every: int,
                  idle_s: float, no_audit: bool, external: bool) -> None:
    """Measure throughput and client-observed latency; print one JSON line."""
    from agents.dev.bench import BenchConfig, bench_with_stack

    if duration is not None and rate is None:
        raise click.BadParameter("--duration needs --rate")
    settings = get_settings()
    if partitions is not None:
        settings = settings.model_copy(update={"partitions": partitions})
    cfg = BenchConfig(orders=count, rate=rate, duration_s=duration, workers=workers,
                      mix=mix, window=window, audit=not no_audit,  # type: ignore[arg-type]
                      hung_every=hung_every, idle_s=idle_s)
    result = _run(bench_with_stack(settings, cfg, external=external))
    echo_json(result)
    sys.exit(0 if result["unfinished"] == 0 and result["audit"] != "violated" else 1)
