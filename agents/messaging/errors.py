"""How a step's failure is classified: bad input (dead letter) or anything else (retry).

Only input that is itself bad is dead-lettered: :class:`InvalidEvent` (a
business step refuses the content) and the PostgreSQL errors that the
event's content causes (:data:`BAD_INPUT_ERRORS`). Every other failure, known
or not (a database restarting or read-only after a failover, a full disk, a
bug), is retried with backoff before any offset moves: dead-lettering valid
events because a dependency failed would lose them.
"""

from __future__ import annotations

import asyncpg


class InvalidEvent(Exception):
    """A well-formed envelope whose content the service cannot apply (dead letter)."""


BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (
    InvalidEvent,
    asyncpg.DataError,  # class 22: a value out of range, malformed text, too long
    asyncpg.IntegrityConstraintViolationError,  # class 23: check, not null, foreign key
    asyncpg.ProgramLimitExceededError,  # class 54: e.g. a row too large to index
)
"""Failures caused by the event's own content: retrying cannot help, so it is dead-lettered."""

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
"""Connection-level failures that go away by themselves (opening the pool retries these)."""
