"""An in-memory PSP for tests: the simulator's rules, every call counted, calls held at will."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from agents.payments.psp import ChargeResult, GatewayUnavailable, Refund


@dataclass
class Charge:
    status: str  # CAPTURED, DECLINED, REFUNDED or VOIDED, as in the simulator's ledger
    charge_id: str
    amount_cents: int


class FakePsp:
    """A :class:`PaymentGateway` that keeps its ledger in memory and counts every call.

    ``hold(key)`` makes the next charges of that key wait before the ledger
    changes (a hung or slow PSP); ``hold(key, after_capture=True)`` waits after
    it (the PSP captured, the answer is not back yet). ``release(key)`` lets
    them answer. ``unreachable`` fails that many next calls with
    :class:`GatewayUnavailable` before they arrive.
    """

    def __init__(self, decline_token: str = "tok_decline") -> None:
        self.calls: list[tuple[str, str]] = []
        self.ledger: dict[str, Charge] = {}
        self.waiting: set[str] = set()
        self._decline_token = decline_token
        self._held: dict[str, tuple[asyncio.Event, bool]] = {}
        self.unreachable = 0
        self.charge_ids: dict[str, str] = {}  # key -> the charge id to answer with, if given

    def hold(self, key: str, *, after_capture: bool = False) -> None:
        self._held[key] = (asyncio.Event(), after_capture)

    def release(self, key: str) -> None:
        self._held.pop(key)[0].set()

    def calls_of(self, key: str) -> list[str]:
        """The operations asked for ``key``, in order."""
        return [operation for operation, k in self.calls if k == key]

    async def charge(self, idempotency_key: str, amount_cents: int, token: str) -> ChargeResult:
        self._arrive("charge", idempotency_key)
        released, after_capture = self._held.get(idempotency_key, (None, False))
        if released is not None and not after_capture:
            await self._wait(idempotency_key, released)
        status = "DECLINED" if token == self._decline_token else "CAPTURED"
        charge_id = self.charge_ids.get(idempotency_key, f"ch_{uuid.uuid4().hex[:12]}")
        entry = self.ledger.setdefault(idempotency_key, Charge(status, charge_id, amount_cents))
        if released is not None and after_capture:
            await self._wait(idempotency_key, released)
        return _result(entry)

    async def cancel(self, idempotency_key: str) -> Refund | None:
        self._arrive("cancel", idempotency_key)
        entry = self.ledger.setdefault(
            idempotency_key, Charge("VOIDED", f"ch_{uuid.uuid4().hex[:12]}", 0))
        if entry.status == "CAPTURED":
            entry.status = "REFUNDED"
        return Refund(entry.charge_id, entry.amount_cents) if entry.status == "REFUNDED" else None

    async def find(self, idempotency_key: str) -> ChargeResult | None:
        self._arrive("find", idempotency_key)
        entry = self.ledger.get(idempotency_key)
        return None if entry is None else _result(entry)

    def _arrive(self, operation: str, key: str) -> None:
        if self.unreachable:
            self.unreachable -= 1
            raise GatewayUnavailable("fake PSP unreachable")
        self.calls.append((operation, key))

    async def _wait(self, key: str, released: asyncio.Event) -> None:
        self.waiting.add(key)
        try:
            await released.wait()
        finally:
            self.waiting.discard(key)


def _result(entry: Charge) -> ChargeResult:
    if entry.status == "CAPTURED":
        return ChargeResult(True, entry.charge_id)
    return ChargeResult(False, entry.charge_id, f"card {entry.status.lower()}")

