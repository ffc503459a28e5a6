"""The payment service provider: the port the payments service calls, and a simulator.

The simulator keeps its own ledger (``psp_charges``) and commits it on its own
connection, outside any transaction of the payments service, exactly as a
remote PSP would: a crash after the charge and before the caller settles it
leaves a capture that :meth:`PaymentGateway.find` reports under the
idempotency key. It also logs every request it receives (``psp_requests``), so
tests can count how often it was asked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn, Protocol

import asyncpg

from agents.messaging.errors import TRANSIENT_ERRORS
from config import Settings

log = logging.getLogger(__name__)


class GatewayTimeout(Exception):
    """The PSP did not answer in time; the charge may or may not exist."""


class GatewayUnavailable(Exception):
    """The PSP could not be reached; the request may or may not have arrived."""


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
    """What the payments service needs from a PSP. Every call is idempotent by key."""

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Capture ``amount_cents``; the same key always gives the same result."""
        ...

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Refund the capture under this key, or void the key so it never captures.

        Returns the refund, or None when nothing had been captured.
        """
        ...

    async def find(self, idempotency_key: str) -> ChargeResult | None:
        """What the PSP made of a charge under this key; None if it never saw one.

        A caller that cannot know whether an earlier charge request arrived
        (its worker died, the network failed) asks this before charging, so
        an expired idempotency key can never capture twice.
        """
        ...


class SimulatedGateway:
    """A deterministic PSP: latency, a declining token, a hanging token and a slow token.

    The hanging token never gets an answer (the caller's timeout ends the
    wait). The slow token captures after ``gateway_slow_ms`` whether or not
    the caller still waits, like a remote PSP finishing a request its client
    gave up on: with a saga deadline shorter than that, the charge lands after
    the tracker cancelled the order, which is the race the refund path has to win.
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._latency_s = settings.gateway_latency_ms / 1000
        self._decline_token = settings.gateway_decline_token
        self._timeout_token = settings.gateway_timeout_token
        self._slow_token = settings.gateway_slow_token
        self._slow_s = settings.gateway_slow_ms / 1000
        self._landing: set[asyncio.Task[ChargeResult]] = set()

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        """Capture unless the token declines; the hanging token never answers, the slow
        one captures late."""
        if token == self._timeout_token:
            await self._never_answer(idempotency_key)
        if token == self._slow_token:
            landing = asyncio.ensure_future(
                self._capture(idempotency_key, amount_cents, token, after_s=self._slow_s))
            self._landing.add(landing)
            landing.add_done_callback(self._landed)
            return await asyncio.shield(landing)
        return await self._capture(idempotency_key, amount_cents, token, after_s=self._latency_s)

    async def cancel(self, idempotency_key: str) -> Refund | None:
        """Refund a capture, or leave a VOIDED mark that blocks any later capture."""
        async with self._connection() as conn:
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

    async def find(self, idempotency_key: str) -> ChargeResult | None:
        """The ledger's answer for this key, if it has one."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "WITH logged AS (INSERT INTO psp_requests (idempotency_key, operation)"
                " VALUES ($1, 'find'))"
                " SELECT charge_id, status FROM psp_charges WHERE idempotency_key = $1",
                idempotency_key,
            )
        return None if row is None else _charge_result(row)

    async def _capture(self, idempotency_key: str, amount_cents: int, token: str, *,
                       after_s: float) -> ChargeResult:
        if after_s:
            await asyncio.sleep(after_s)
        status = "DECLINED" if token == self._decline_token else "CAPTURED"
        async with self._connection() as conn:
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
        return _charge_result(row)

    async def _never_answer(self, idempotency_key: str) -> NoReturn:
        """Receive the request (it is logged) and never answer it."""
        async with self._connection() as conn:
            await conn.execute("INSERT INTO psp_requests (idempotency_key, operation)"
                               " VALUES ($1, 'charge')", idempotency_key)
        await asyncio.Event().wait()  # nobody sets it
        raise AssertionError("unreachable: the hanging token is never answered")

    def _landed(self, landing: asyncio.Task[ChargeResult]) -> None:
        """A late capture ended; if it failed with nobody waiting any more, say so."""
        self._landing.discard(landing)
        if not landing.cancelled() and landing.exception() is not None:
            log.warning("simulated PSP: a late capture failed: %s", landing.exception())

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A ledger connection; a database failure is the PSP being unreachable."""
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except TRANSIENT_ERRORS as exc:
            raise GatewayUnavailable(f"simulated PSP unreachable: {type(exc).__name__}: {exc}"
                                     ) from exc


def _charge_result(row: asyncpg.Record) -> ChargeResult:
    if row["status"] == "CAPTURED":
        return ChargeResult(True, row["charge_id"])
    return ChargeResult(False, row["charge_id"], f"card {row['status'].lower()}")

