"""The payment service provider: the port the step calls, and a simulator that behaves like one.

The simulator keeps its own ledger (``psp_charges``) and commits it on its own
connection, outside the saga step's transaction, exactly as a remote PSP would:
a crash after the charge and before the step commits leaves a capture that the
redelivered step finds again through the idempotency key. It also logs every
request it receives (``psp_requests``), so tests can count how often it was asked.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from config import Settings


class GatewayTimeout(Exception):
    """The PSP did not answer in time; the charge may or may not exist."""


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    charge_id: str
    reason: str = ""


@dataclass(frozen=True)
class Refund:
    charge_id: str
    amount_cents: int


class PaymentGateway(Protocol):
    """What the payments step needs from a PSP."""

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Capture ``amount_cents``; the same key always gives the same result."""
        ...

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Refund the capture under this key, or void the key so it never captures.

        Returns the refund, or None when nothing had been captured.
        """
        ...


class SimulatedGateway:
    """A deterministic PSP: latency, a declining token, a hanging token and a slow token.

    The slow token captures, but only after ``gateway_slow_ms``: with a saga
    deadline shorter than that, the charge lands after the tracker cancelled
    the order, which is the race the refund path has to win.
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._latency_s = settings.gateway_latency_ms / 1000
        self._decline_token = settings.gateway_decline_token
        self._timeout_token = settings.gateway_timeout_token
        self._timeout_s = settings.gateway_timeout_s
        self._slow_token = settings.gateway_slow_token
        self._slow_s = settings.gateway_slow_ms / 1000

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Capture unless the token declines; the hanging token never answers in time,
        the slow one answers (and captures) late."""
        if token == self._timeout_token:
            await self._log(idempotency_key, "charge")
            await asyncio.sleep(self._timeout_s)
            raise GatewayTimeout(f"PSP did not answer within {self._timeout_s}s")
        delay = self._slow_s if token == self._slow_token else self._latency_s
        if delay:
            await asyncio.sleep(delay)
        status = "DECLINED" if token == self._decline_token else "CAPTURED"
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "WITH logged AS (INSERT INTO psp_requests (idempotency_key, operation)"
                " VALUES ($1, 'charge'))"
                " INSERT INTO psp_charges (idempotency_key, charge_id, amount_cents, status)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key)"
                " DO UPDATE SET idempotency_key = excluded.idempotency_key"
                " RETURNING charge_id, status, amount_cents",
                idempotency_key,
                f"ch_{uuid.uuid4().hex[:20]}",
                amount_cents,
                status,
            )
        assert row is not None
        if row["status"] == "CAPTURED":
            return ChargeResult(True, row["charge_id"])
        return ChargeResult(False, row["charge_id"], f"card {row['status'].lower()}")

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Refund a capture, or leave a VOIDED mark that blocks any later capture."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "WITH logged AS (INSERT INTO psp_requests (idempotency_key, operation)"
                " VALUES ($1, 'cancel'))"
                " INSERT INTO psp_charges (idempotency_key, charge_id, amount_cents, status)"
                " VALUES ($1, $2, 0, 'VOIDED') ON CONFLICT (idempotency_key) DO UPDATE"
                " SET status = CASE WHEN psp_charges.status = 'CAPTURED' THEN 'REFUNDED'"
                " ELSE psp_charges.status END, updated_at = now()"
                " RETURNING charge_id, status, amount_cents",
                idempotency_key,
                f"ch_{uuid.uuid4().hex[:20]}",
            )
        assert row is not None
        if row["status"] != "REFUNDED":
            return None
        return Refund(str(row["charge_id"]), int(row["amount_cents"]))

    async def _log(self, idempotency_key: str, operation: str) -> None:
        """Log a request that changes nothing in the ledger (one that never answers)."""
        async with self._pool.acquire() as conn:
            await conn.execute("INSERT INTO psp_requests (idempotency_key, operation)"
                               " VALUES ($1, $2)", idempotency_key, operation)

