"""The ``oms`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from config import SERVICES, Settings, get_settings


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


@click.group()
def main() -> None:
    """OMS: an order-management saga on Kafka, Faust and PostgreSQL."""


@main.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--loglevel", default="info",
              type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def worker(service: str, loglevel: str) -> None:
    """Run one service's worker against the configured broker and database."""
    from agents.worker import run_worker

    run_worker(service, get_settings(), loglevel)


@main.command()
def init() -> None:
    """Create topics and databases, apply migrations, seed the catalogue (idempotent)."""
    from agents.system import init_system

    _print_json(asyncio.run(init_system(get_settings())))


@main.command()
@click.option("--workers", default=1, show_default=True, help="workers per service")
def up(workers: int) -> None:
    """Start the whole system (embedded broker and PostgreSQL unless configured)."""
    sys.exit(asyncio.run(_up(get_settings(), workers)))


async def _up(settings: Settings, workers: int) -> int:
    from agents.stack import start_stack

    stack = await start_stack(settings, workers_per_service=workers)
    stack.supervisor.install_signal_handlers()
    click.echo(f"broker   {stack.settings.kafka_bootstrap}")
    click.echo(f"database {stack.settings.redacted_database_url()}")
    for names in stack.workers.values():
        for name in names:
            click.echo(f"{name:<16} {stack.web_url(name)}  (pid {stack.supervisor.pids()[name]})")
    click.echo("ready; Ctrl-C stops everything")
    died = await stack.supervisor.wait()
    if died:
        click.echo(f"worker {died} exited; stopping everything", err=True)
    await stack.stop()
    return 1 if died else 0


@main.command()
@click.option("--orders", "count", default=500, show_default=True)
@click.option("--workers", default=1, show_default=True, help="workers per service")
@click.option("--timeout", default=300.0, show_default=True, help="seconds to wait for sagas")
def demo(count: int, workers: int, timeout: float) -> None:
    """Start the system, run COUNT orders through it, audit, print one JSON line."""
    result = asyncio.run(_demo(get_settings(), count, workers, wait_s=timeout))
    _print_json(result)
    sys.exit(0 if result["pending"] == 0 and result["invariants"] == "ok" else 1)


async def _demo(settings: Settings, count: int, workers: int, wait_s: float) -> dict[str, Any]:
    from agents.demo import run_demo
    from agents.stack import start_stack

    click.echo("starting the stack ...", err=True)
    stack = await start_stack(settings, workers_per_service=workers)
    try:
        click.echo(f"placing {count} orders ...", err=True)
        return await run_demo(stack, count, wait_s)
    finally:
        await stack.stop()


@main.command()
@click.option("--grace", default=10.0, show_default=True,
              help="seconds a settlement may lag before it counts as a violation")
@click.option("--tracker-url", "tracker_urls", multiple=True,
              help="a tracker worker's web URL (repeat per worker) to check its view too")
def check(grace: float, tracker_urls: tuple[str, ...]) -> None:
    """Prove the DESIGN invariants in the databases; exit 0 only when all hold."""
    from agents.audit import audit

    report = asyncio.run(audit(get_settings(), settle_grace_s=grace, tracker_urls=tracker_urls))
    for inv in report.invariants:
        mark = "ok  " if inv.ok else "FAIL"
        click.echo(f"{mark} {inv.name} (in flight: {inv.in_flight})")
        for violation in inv.violations[:20]:
            click.echo(f"     {violation}")
    _print_json(report.summary())
    sys.exit(0 if report.ok else 1)


@main.group()
def order() -> None:
    """Place and inspect orders."""


@order.command("place")
@click.option("--sku", "skus", multiple=True, required=True, help="SKU:QTY[:PRICE_CENTS]")
@click.option("--customer", default="cli", show_default=True)
@click.option("--token", default="tok_visa", show_default=True, help="payment token")
@click.option("--order-id", default=None, help="UUID; a repeat with the same id is a no-op")
def order_place(skus: tuple[str, ...], customer: str, token: str, order_id: str | None) -> None:
    """Produce one PlaceOrder to oms.order-commands."""
    from pydantic import ValidationError

    from agents.intake import PlaceOrderRequest

    lines = []
    for spec in skus:
        sku, _, rest = spec.partition(":")
        qty, _, price = rest.partition(":")
        lines.append({"sku": sku, "quantity": qty or 1, "unit_price_cents": price or 0})
    data: dict[str, Any] = {"customer_id": customer, "lines": lines, "payment_token": token}
    if order_id:
        data["order_id"] = order_id
    try:
        request = PlaceOrderRequest.model_validate(data)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    envelope = asyncio.run(_place(get_settings(), request))
    _print_json({"order_id": envelope.order_id, "event_id": envelope.event_id})


async def _place(settings: Settings, request: Any) -> Any:
    from agents.client import OrderClient

    async with OrderClient(settings) as client:
        return await client.place(request)


@main.command()
@click.option("--orders", "count", type=int, default=None, help="orders to place (default 1000)")
@click.option("--rate", type=float, default=None, help="orders/s (open loop); omit for max")
@click.option("--duration", type=float, default=None, help="seconds at --rate, not --orders")
@click.option("--workers", default=1, show_default=True, help="workers per service")
@click.option("--partitions", type=int, default=None, help="partitions per topic (new topics)")
@click.option("--mix", type=click.Choice(["demo", "success"]), default="demo", show_default=True)
@click.option("--window", default=300, show_default=True, help="orders in flight at max throughput")
@click.option("--no-audit", is_flag=True, help="skip the invariant audit at the end")
@click.option("--external", is_flag=True, help="drive the configured running system; start nothing")
def bench(count: int | None, rate: float | None, duration: float | None, workers: int,
          partitions: int | None, mix: str, window: int, no_audit: bool, external: bool) -> None:
    """Measure throughput and client-observed latency; print one JSON line."""
    from agents.bench import BenchConfig, bench_with_stack

    if duration is not None and rate is None:
        raise click.BadParameter("--duration needs --rate")
    settings = get_settings()
    if partitions is not None:
        settings = settings.model_copy(update={"partitions": partitions})
    cfg = BenchConfig(orders=count, rate=rate, duration_s=duration, workers=workers,
                      mix=mix, window=window, audit=not no_audit)  # type: ignore[arg-type]
    result = asyncio.run(bench_with_stack(settings, cfg, external=external))
    _print_json(result)
    sys.exit(0 if result["unfinished"] == 0 and result["audit"] != "violated" else 1)


# --- operator commands: oms replay, oms dead-letters (logic in agents.replay / deadletters)
from agents.operator_cli import dead_letters_group, replay_command  # noqa: E402

main.add_command(replay_command)
main.add_command(dead_letters_group)


if __name__ == "__main__":
    main()
