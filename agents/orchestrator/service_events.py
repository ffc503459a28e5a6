"""Asking each database service for the events it emitted for one order.

The tracker reads only the records its decisions need, so its saga record
lacks the hops between the services. Each service answers
``GET /events/{order_id}/`` from its outbox; this module asks all of them at
once, each bounded by a short timeout, and says which answered, so a timeline
never silently shows less than there is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agents.observability import metrics

log = logging.getLogger(__name__)
OK = "ok"


@dataclass
class ServiceEvents:
    """What the services said: every event, and per service ``ok`` or ``error: ...``."""

    events: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(status == OK for status in self.sources.values())


class Services:
    """The database services' web APIs (``OMS_SERVICE_URLS``), asked about one order at once."""

    def __init__(self, urls: Mapping[str, str], http: Callable[[], aiohttp.ClientSession],
                 timeout_s: float) -> None:
        self.urls = dict(urls)
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def events(self, order_id: str) -> ServiceEvents:
        """Every service's ``/events/{order_id}/``; one that fails is named, not hidden."""
        answers = await asyncio.gather(*(self._ask(service, order_id) for service in self.urls))
        found = ServiceEvents()
        for service, (events, status) in zip(self.urls, answers, strict=True):
            found.sources[service] = status
            found.events.extend(events)
        return found

    async def _ask(self, service: str, order_id: str) -> tuple[list[dict[str, Any]], str]:
        url = f"{self.urls[service].rstrip('/')}/events/{order_id}/"
        try:
            async with self._http().get(url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                      message=f"HTTP {resp.status}")
                events = (await resp.json())["events"]
            if not isinstance(events, list):
                raise ValueError("events is not a list")
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            metrics.CONSOLE_SERVICE_FAILURES.labels(service).inc()
            log.warning("%s did not answer the events of %s: %s", service, order_id, error)
            return [], f"error: {error}"
        return events, OK
