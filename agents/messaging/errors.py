"""How a step's failure is classified: bad input (dead letter) or a passing fault (retry).

A business step raises :class:`InvalidEvent` for content it cannot apply; the
consumer dead-letters that event. Errors in :data:`TRANSIENT_ERRORS` clear by
themselves, so the consumer retries the batch with backoff before any offset
moves.
"""

from __future__ import annotations

import asyncpg


class InvalidEvent(Exception):
    """A well-formed envelope whose content the service cannot apply (dead letter)."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    # "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false during
    # maintenance) and lock_not_available: both clear by themselves.
    asyncpg.ObjectNotInPrerequisiteStateError,
    # asyncpg's protocol can be left mid-operation by a backend killed under it
    # ("cannot switch to state ..."); a fresh pooled connection works.
    asyncpg.InternalClientError,
)
"""Failures that go away by themselves: database restarts, killed backends, conflicts."""
