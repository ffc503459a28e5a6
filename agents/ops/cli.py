"""The operators' commands: ``oms init``, ``oms check``, ``oms replay``, ``oms dead-letters``.

Thin click wrappers: the logic lives in :mod:`agents.ops.provision`,
:mod:`agents.ops.audit`, :mod:`agents.ops.replay` and
:mod:`agents.messaging.redrive`; this module parses options and prints one
JSON line per result.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

import click

from config import SERVICES, get_settings


def echo_json(data: Any) -> None:
    """One JSON line on stdout (what every command prints, for scripts to read)."""
    click.echo(json.dumps(data, default=str))


@click.command("init")
def init_command() -> None:
    """Create topics and databases, apply migrations, seed the catalogue (idempotent)."""
    from agents.dev.catalogue import catalogue
    from agents.ops.provision import init_system

    echo_json(asyncio.run(init_system(get_settings(), catalogue())))


@click.command("check")
@click.option("--grace", default=10.0, show_default=True,
              help="seconds a settlement may lag before it counts as a violation")
@click.option("--tracker-url", "tracker_urls", multiple=True,
              help="a tracker worker's web URL (repeat per worker) to check its view too")
def check_command(grace: float, tracker_urls: tuple[str, ...]) -> None:
    """Prove the DESIGN invariants in the databases; exit 0 only when all hold."""
    from agents.ops.audit import audit

    report = asyncio.run(audit(get_settings(), settle_grace_s=grace, tracker_urls=tracker_urls))
    for inv in report.invariants:
        mark = "ok  " if inv.ok else "FAIL"
        click.echo(f"{mark} {inv.name} (in flight: {inv.in_flight})")
        for violation in inv.violations[:20]:
            click.echo(f"     {violation}")
    echo_json(report.summary())
    sys.exit(0 if report.ok else 1)


@click.command("replay")
@click.option("--service", required=True, type=click.Choice(SERVICES))
@click.option("--topic", "topics", multiple=True, help="source topic (default: all of them)")
@click.option("--partition", "partitions", multiple=True, type=int, help="default: all")
@click.option("--to-earliest", is_flag=True, help="re-read everything still in the topics")
@click.option("--to-offset", type=int, default=None, help="this offset in every partition")
@click.option("--to-time", default=None, help="first record at or after this ISO 8601 time")
@click.option("--dry-run", is_flag=True, help="print the plan, change nothing")
@click.option("--evict-stale-members", is_flag=True,
              help="the workers are stopped but the broker still lists them (Tansu)")
def replay_command(service: str, topics: tuple[str, ...], partitions: tuple[int, ...],
                   to_earliest: bool, to_offset: int | None, to_time: str | None,
                   dry_run: bool, evict_stale_members: bool) -> None:
    """Move SERVICE's consumer group so it re-reads its input (harmless: inbox)."""
    from agents.ops.replay import ReplayRefused, Target, plan, replay

    if sum((to_earliest, to_offset is not None, to_time is not None)) != 1:
        raise click.UsageError("choose exactly one of --to-earliest, --to-offset, --to-time")
    try:
        when = datetime.fromisoformat(to_time) if to_time else None
    except ValueError as exc:
        raise click.BadParameter(f"--to-time: {exc}") from exc
    if when is not None and when.tzinfo is None:
        raise click.BadParameter("--to-time needs a UTC offset, e.g. 2025-01-31T12:00:00+00:00")
    target = Target(earliest=to_earliest, offset=to_offset, time=when)
    settings = get_settings()
    try:
        if dry_run:
            plans = asyncio.run(plan(settings, service, target, topics, partitions))
        else:
            plans = asyncio.run(replay(settings, service, target, topics, partitions,
                                       evict_stale=evict_stale_members))
    except ReplayRefused as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(2)
    for p in plans:
        echo_json({**p.as_json(), "dry_run": dry_run})
    echo_json({"service": service, "partitions": len(plans),
           "reread": sum(p.reread for p in plans), "dry_run": dry_run})


@click.group("dead-letters")
def dead_letters_group() -> None:
    """Inspect and re-drive the dead-letter topic."""


def _filters(func: Any) -> Any:
    for option in reversed([
        click.option("--service", default=None, help="the service that parked it"),
        click.option("--topic", default=None, help="its original topic"),
        click.option("--reason-contains", default=None),
        click.option("--limit", type=int, default=None),
    ]):
        func = option(func)
    return func


@dead_letters_group.command("list")
@_filters
@click.option("--after", default=None, help="PARTITION:OFFSET to start at (default: the start)")
def dead_letters_list(service: str | None, topic: str | None, reason_contains: str | None,
                      limit: int | None, after: str | None) -> None:
    """One JSON line per dead letter, as it is read (commits nothing)."""
    from agents.messaging.redrive import Filters, Position

    try:
        start = Position.parse(after) if after else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--after") from exc
    asyncio.run(_print_dead_letters(Filters(service, topic, reason_contains, limit), start))


async def _print_dead_letters(filters: Any, start: Any) -> None:
    from contextlib import aclosing

    from agents.messaging.redrive import iter_dead_letters

    printed = 0
    async with aclosing(iter_dead_letters(get_settings(), filters, start)) as letters:
        async for letter in letters:
            if filters.limit is not None and printed >= filters.limit:
                return
            echo_json(letter.as_json())
            printed += 1


@dead_letters_group.command("redrive")
@_filters
@click.option("--dry-run", is_flag=True)
def dead_letters_redrive(service: str | None, topic: str | None, reason_contains: str | None,
                         limit: int | None, dry_run: bool) -> None:
    """Re-produce dead letters to their original topics (once each)."""
    from agents.messaging.redrive import Filters, redrive

    filters = Filters(service, topic, reason_contains, limit)
    done = asyncio.run(redrive(get_settings(), filters, dry_run=dry_run))
    for item in done:
        echo_json(item)
    echo_json({"redriven": 0 if dry_run else len(done), "selected": len(done), "dry_run": dry_run})
