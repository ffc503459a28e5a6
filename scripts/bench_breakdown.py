"""Where an order's time goes, hop by hop, from the databases after ``oms bench``.

Stamps, all from the one PostgreSQL clock:

* inbox ``received_at`` (``now()``): the consuming step's transaction start;
* outbox ``created_at`` (``now()``): the producing step's transaction start,
  so equal to the ``received_at`` of the events that transaction claimed;
* outbox ``written_at`` (``clock_timestamp()``): when the step inserted its
  outbox rows, its last statement before the commit;
* outbox ``sent_at``: when the relay marked the row sent. It marks in batches,
  up to ``mark_every_s`` (0.1 s) after the publish, so it is NOT the publish
  time and is not used here: a consumer often has the record before it.

For each hop (producing service, event type -> consuming service), p50s of:

* ``step_ms``, the step transaction: the consuming step from its transaction
  start to its outbox insert (``received_at`` -> the ``written_at`` of the rows
  that transaction emitted). It leaves out the commit, which falls in the next
  hop's second stage. A batch of events is one transaction, so this is the
  batch's work, not one event's. A step that emits nothing in the transaction
  that claimed the event cannot be timed: payments, which emits after the
  provider's answer in a later transaction, and the tracker, which has no
  database (``step_n`` counts the timed ones).
* ``relay_broker_and_batch_ms``, everything between two steps: the producing
  step's commit, the relay's wake-up and publish, the broker, the consumer's
  fetch wait, Faust's dispatch, the wait for the batch ahead of it, and the
  start of the consuming transaction (``written_at`` -> ``received_at``). No
  stamp is taken when a record is published or fetched, so the relay, the
  broker's wait and the batch wait cannot be told apart here
  (``scripts/fetch_latency.py`` measures the broker's fetch cycle alone).
* ``hop_ms``, the whole hop (also p95): producing transaction start ->
  consuming transaction start, i.e. the producing step's work plus the
  previous stage. Medians of parts need not add up to the median of a sum.

The client's ``PlaceOrder`` (sent by the bench, not from an outbox) and hops
into the tracker are not in the databases; rows from before the ``written_at``
column count only in ``hop_ms``.

Usage, with the settings of the run (the databases must still exist, so use a
real PostgreSQL with ``OMS_DATABASE_URL`` and an ``OMS_DATABASE_PREFIX`` of its
own), prints JSON::

    OMS_DATABASE_URL=postgresql://root@127.0.0.1:5432 OMS_DATABASE_PREFIX=oms_b1_ \\
        python scripts/bench_breakdown.py
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from config import Settings
from config.settings import DATABASE_SERVICES
from schemas.codec import DecodeError, decode

NAN = float("nan")


@dataclass(frozen=True)
class Produced:
    """One outbox row: who wrote it, what it is, and its stamps (epoch seconds; NaN = none)."""

    service: str
    event_type: str
    created_at: float
    written_at: float


@dataclass
class Stamps:
    """Everything the databases say about a run's events."""

    produced: dict[str, Produced] = field(default_factory=dict)  # by event id
    received: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    """Event id -> (consuming service, its transaction start) for every inbox row."""
    step_end: dict[tuple[str, float], float] = field(default_factory=dict)
    """(service, transaction start) -> its last outbox insert, for transactions that emitted."""


def _pct(values: list[float], q: float) -> float | None:
    ordered = sorted(v for v in values if not math.isnan(v))
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def _epoch(value: Any) -> float:
    return float(value) if value is not None else NAN


def add_outbox(stamps: Stamps, service: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Record a service's outbox rows (``value`` and the epochs ``c`` and ``w``), and when
    each of its emitting transactions ended."""
    for row in rows:
        try:
            env = decode(row["value"])
        except DecodeError:
            continue  # the audit reports undecodable rows; here they have no hop to time
        produced = Produced(service, env.type, float(row["c"]), _epoch(row["w"]))
        stamps.produced[env.event_id] = produced
        key = (service, produced.created_at)
        if not math.isnan(produced.written_at):
            stamps.step_end[key] = max(stamps.step_end.get(key, produced.written_at),
                                       produced.written_at)


def hops(stamps: Stamps) -> dict[str, dict[str, float | int | None]]:
    """Per hop ("producer:EventType -> consumer"): the p50 of each stage, in ms."""
    stages: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for event_id, made in stamps.produced.items():
        for consumer, received in stamps.received.get(event_id, []):
            hop = stages[f"{made.service}:{made.event_type} -> {consumer}"]
            hop["hop"].append((received - made.created_at) * 1000)
            hop["between"].append((received - made.written_at) * 1000)
            end = stamps.step_end.get((consumer, received))
            if end is not None:
                hop["step"].append((end - received) * 1000)
    return {name: _summary(hop) for name, hop in sorted(stages.items())}


def _summary(hop: dict[str, list[float]]) -> dict[str, float | int | None]:
    return {"n": len(hop["hop"]), "step_ms": _pct(hop["step"], .5), "step_n": len(hop["step"]),
            "relay_broker_and_batch_ms": _pct(hop["between"], .5),
            "hop_ms": _pct(hop["hop"], .5), "hop_p95_ms": _pct(hop["hop"], .95)}


async def read_stamps(settings: Settings) -> Stamps:
    """Every service database's outbox and inbox stamps."""
    stamps = Stamps()
    for service in DATABASE_SERVICES:
        conn = await asyncpg.connect(settings.dsn(service))
        try:
            add_outbox(stamps, service, await conn.fetch(
                "SELECT value, extract(epoch FROM created_at) AS c,"
                " extract(epoch FROM written_at) AS w FROM outbox"))
            for row in await conn.fetch("SELECT event_id::text AS id,"
                                        " extract(epoch FROM received_at) AS r FROM inbox"):
                stamps.received.setdefault(row["id"], []).append((service, float(row["r"])))
        finally:
            await conn.close()
    return stamps


async def breakdown(settings: Settings) -> dict[str, Any]:
    """The per-hop stages of the run whose databases ``settings`` name."""
    return {"hops": hops(await read_stamps(settings))}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(breakdown(Settings())), indent=1))
