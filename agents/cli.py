"""The ``oms`` command line: one group; the operators' and the development commands join it.

``oms worker`` runs one service; ``oms order place`` is a client. The
operators' commands (``init``, ``check``, ``replay``, ``dead-letters``) come
from :mod:`agents.ops.cli`, the whole-system ones (``up``, ``demo``,
``bench``) from :mod:`agents.dev.cli`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from agents.dev.cli import bench_command, demo_command, up_command
from agents.ops.cli import (
    check_command,
    dead_letters_group,
    echo_json,
    init_command,
    replay_command,
)
from config import SERVICES, Settings, get_settings


@click.group()
def main() -> None:
    """OMS: an order-management saga on Kafka, Faust and PostgreSQL."""


@main.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option("--loglevel", default="info",
              type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def worker(service: str, loglevel: str) -> None:
    """Run one service's worker against the configured broker and database."""
    from agents.messaging.worker import run_worker

    run_worker(service, get_settings(), loglevel)


@main.group()
def order() -> None:
    """Place and inspect orders."""


@order.command("place")
@click.option("--sku", "skus", multiple=True, required=True,
              help="SKU:QTY[:PRICE_CENTS]; the catalogue prices every line, and a price given"
                   " here that differs from it gets the order rejected")
@click.option("--customer", default="cli", show_default=True)
@click.option("--token", default="tok_visa", show_default=True, help="payment token")
@click.option("--order-id", default=None, help="UUID; a repeat with the same id is a no-op")
def order_place(skus: tuple[str, ...], customer: str, token: str, order_id: str | None) -> None:
    """Produce one PlaceOrder to oms.order-commands."""
    from pydantic import ValidationError

    from agents.orders.intake import PlaceOrderRequest, field_errors

    lines = []
    for spec in skus:
        sku, _, rest = spec.partition(":")
        qty, _, price = rest.partition(":")
        line: dict[str, Any] = {"sku": sku, "quantity": qty or 1}
        if price:
            line["unit_price_cents"] = price
        lines.append(line)
    data: dict[str, Any] = {"customer_id": customer, "lines": lines, "payment_token": token}
    if order_id:
        data["order_id"] = order_id
    try:
        request = PlaceOrderRequest.model_validate(data)
    except ValidationError as exc:  # its str() quotes the input, payment token included
        problems = "; ".join(f"{e['field']}: {e['error']}" for e in field_errors(exc))
        raise click.BadParameter(problems) from exc
    envelope = asyncio.run(_place(get_settings(), request))
    echo_json({"order_id": envelope.order_id, "event_id": envelope.event_id})


async def _place(settings: Settings, request: Any) -> Any:
    from agents.messaging.client import OrderClient

    async with OrderClient(settings) as client:
        return await client.place(request)


for command in (init_command, check_command, replay_command, dead_letters_group,
                up_command, demo_command, bench_command):
    main.add_command(command)


if __name__ == "__main__":
    main()
