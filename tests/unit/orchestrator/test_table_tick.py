"""The tracker's timer survives a broker that cannot take its SagaTimedOut.

An exception out of a Faust timer stops the app (and ``oms up`` stops the
stack when a worker dies), so a failed send must be logged and retried on a
later tick. The table is a dict here (``fakes.py``) and the send is the
failing part; what is checked is the tick's own handling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaTimeoutError

from agents.orchestrator.saga import RUNNING, Saga
from agents.orchestrator.table import FULL_SCAN_S, RESEND_MS, now_ms
from schemas.oms_pb2 import Envelope
from tests.unit.orchestrator import fakes

OID = "6f1c1c3e-8a6b-4d59-9d0a-2a0b5a1c9e10"


def overdue_saga() -> dict[str, Any]:
    placed = now_ms() - 60_000
    return Saga(OID, RUNNING, placed, placed + 30_000, placed).as_dict()


async def test_a_failed_timeout_send_is_logged_and_retried_later(tmp_path: Path) -> None:
    tracker = fakes.tracker(tmp_path, {OID.encode(): overdue_saga()})
    attempts: list[Envelope] = []

    async def unreachable(key: bytes, event: Envelope) -> None:
        attempts.append(event)
        raise KafkaTimeoutError()

    tracker._send_timeout = unreachable  # type: ignore[method-assign]
    await tracker.tick()  # must not raise
    await tracker.tick()  # within RESEND_MS: no second attempt yet
    assert [e.type for e in attempts] == ["SagaTimedOut"]

    tracker._timeouts_sent[OID.encode()] -= RESEND_MS + 1  # as if RESEND_MS had passed
    await tracker.tick()
    assert len(attempts) == 2


async def test_a_timed_out_saga_is_timed_out_again_until_it_ends(tmp_path: Path) -> None:
    """Its CancelOrder may have been lost; each SagaTimedOut makes the tracker resend it."""
    tracker = fakes.tracker(tmp_path, {OID.encode(): {**overdue_saga(), "timed_out": True}})
    sent: list[Envelope] = []

    async def send(key: bytes, event: Envelope) -> None:
        sent.append(event)

    tracker._send_timeout = send  # type: ignore[method-assign]
    await tracker.tick()
    tracker._timeouts_sent[OID.encode()] -= RESEND_MS + 1  # as if RESEND_MS had passed
    await tracker.tick()
    assert [e.type for e in sent] == ["SagaTimedOut", "SagaTimedOut"]


async def test_between_full_scans_the_timer_reads_only_the_sagas_it_saw_running(
    tmp_path: Path,
) -> None:
    """A short tick's cost does not grow with the rows the table remembers."""
    tracker = fakes.tracker(tmp_path, {})
    sent: list[bytes] = []

    async def send(key: bytes, event: Envelope) -> None:
        sent.append(key)

    tracker._send_timeout = send  # type: ignore[method-assign]
    await tracker.tick()  # a full scan of an empty table
    dict.update(fakes.table(tracker), {OID.encode(): overdue_saga()})  # restored behind it
    await tracker.tick()
    assert sent == []  # not read by a short tick...
    assert tracker._scanned_at is not None
    tracker._scanned_at -= FULL_SCAN_S  # ...but by the next full scan
    await tracker.tick()
    assert sent == [OID.encode()]
    tracker._timeouts_sent[OID.encode()] -= RESEND_MS + 1
    await tracker.tick()  # a short tick again: now it knows the saga runs
    assert sent == [OID.encode(), OID.encode()]
