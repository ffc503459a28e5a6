"""Where an order's time goes, hop by hop, from the databases after ``oms bench``.

Every step stamps its inbox row (``received_at`` = the consuming step's
transaction start) and its outbox rows (``created_at`` = the producing step's
transaction start, ``sent_at`` = when the relay marked the batch published).
Joining them by event id gives, per hop (event type -> consuming service):

* ``relay``: outbox ``created_at`` -> ``sent_at`` (commit wait + relay wake +
  publish + ack of the whole batch);
* ``hop``: producer ``created_at`` -> consumer ``received_at`` (everything
  between two steps: relay, broker, consumer fetch, Faust dispatch).

All timestamps come from the one PostgreSQL clock. Usage, with the settings
of the run (the databases must still exist, so use a real PostgreSQL with
``OMS_DATABASE_URL`` and an ``OMS_DATABASE_PREFIX`` of its own)::

    OMS_DATABASE_URL=postgresql://root@127.0.0.1:5432 OMS_DATABASE_PREFIX=oms_b1_ \\
        python scripts/bench_breakdown.py
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import asyncpg

from config import Settings
from config.settings import DATABASE_SERVICES
from schemas.codec import DecodeError, decode

Stamp = tuple[str, float, float]  # producing service, created_at, sent_at (epoch seconds)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else 0.0


async def _outbox(conn: asyncpg.Connection, service: str) -> dict[str, tuple[str, Stamp]]:
    rows = await conn.fetch("SELECT value, extract(epoch FROM created_at) AS c,"
                            " extract(epoch FROM sent_at) AS s FROM outbox")
    out = {}
    for row in rows:
        try:
            env = decode(row["value"])
        except DecodeError:
            continue  # the audit reports undecodable rows; here they have no hop to time
        sent = float(row["s"]) if row["s"] is not None else float("nan")
        out[env.event_id] = (env.type, (service, float(row["c"]), sent))
    return out


async def breakdown(settings: Settings) -> dict[str, Any]:
    """Per-hop p50/p95 in ms: relay delay and producer-step to consumer-step time."""
    produced: dict[str, tuple[str, Stamp]] = {}
    received: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for service in DATABASE_SERVICES:
        conn = await asyncpg.connect(settings.dsn(service))
        try:
            produced.update(await _outbox(conn, service))
            for row in await conn.fetch("SELECT event_id::text AS id,"
                                        " extract(epoch FROM received_at) AS r FROM inbox"):
                received[row["id"]].append((service, float(row["r"])))
        finally:
            await conn.close()
    relay: dict[str, list[float]] = defaultdict(list)
    hops: dict[str, list[float]] = defaultdict(list)
    for event_id, (etype, (producer, created, sent)) in produced.items():
        relay[producer].append((sent - created) * 1000)
        for consumer, at in received.get(event_id, []):
            hops[f"{producer}:{etype} -> {consumer}"].append((at - created) * 1000)
    return {
        "relay_ms": {k: {"p50": _pct(v, .5), "p95": _pct(v, .95), "n": len(v)}
                     for k, v in relay.items()},
        "hop_ms": {k: {"p50": _pct(v, .5), "p95": _pct(v, .95), "n": len(v)}
                   for k, v in sorted(hops.items())},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(breakdown(Settings())), indent=1))
