"""The one backoff every retry loop uses: start small, double, cap.

Consumers retry a step's transaction, the relay its database session, the
dead-letter path its publish: each waits on a :class:`Backoff` so the delays
and their cap are the same everywhere.
"""

from __future__ import annotations

import asyncio

MAX_BACKOFF_S = 5.0


class Backoff:
    """Exponential delays: ``first``, doubled after each wait, at most ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = MAX_BACKOFF_S) -> None:
        self._first = first
        self._cap = cap
        self.delay = first
        """The next wait, in seconds."""

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to the cap)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self._cap)

    def reset(self) -> None:
        """Back to the first delay (the failure is over)."""
        self.delay = self._first
