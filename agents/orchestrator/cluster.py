"""The whole cluster's answer from any tracker worker: ask every worker, merge, say what is covered.

Sagas live in the tracker's table, partitioned across the workers; each
worker holds the rows of its partitions only. A console list therefore fans
out: this worker answers for its own partitions from its table, and asks each
other worker for its local answer (``scope=local``, so the peer does not fan
out again). A store every worker feeds (e.g. PostgreSQL) would have been the
other way; it was not chosen because it would cost a write on every event of
every order (the hot path) to serve occasional operator reads, and could lag
behind the table the deadline timer acts on. A fan-out costs one HTTP call
per worker per console request, and reads exactly what the tracker decides by.

Who owns what is Faust's own knowledge, the one ``table_route`` uses:
``app.router.table_metadata("sagas")`` maps every group member's URL to its
active partitions, on every member, renewed each rebalance. It can be stale
(a dead member stays listed until its session times out) or empty (before the
first assignment), so the answer never pretends: :func:`coverage` says which
partitions the answering workers cover, which are missing, which worker did
not answer in time and why, and whether the workers agree on the generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from faust.types import AppT, TableT
from yarl import URL

from agents.observability import metrics

log = logging.getLogger(__name__)
LOCAL, CLUSTER = "local", "cluster"
Assignment = dict[str, list[int]]
"""Worker URL (``http://host:port``) -> its active partitions of the sagas table."""
Body = dict[str, Any]


@dataclass
class WorkerAnswer:
    """One worker's local answer, or why there is none."""

    url: str
    assigned: list[int]
    """What the group's assignment says the worker owns."""
    body: Body | None = None
    error: str = ""
    elapsed_ms: float = 0.0

    @property
    def status(self) -> Body:
        """The worker's own account of itself (``worker_status``), {} without an answer."""
        return self.body.get("worker", {}) if self.body is not None else {}

    def as_json(self) -> Body:
        if self.body is None:
            return {"url": self.url, "answered": False, "error": self.error,
                    "partitions": self.assigned, "elapsed_ms": round(self.elapsed_ms, 1)}
        return {**self.status, "url": self.url, "answered": True,
                "elapsed_ms": round(self.elapsed_ms, 1)}


def worker_status(app: AppT, partitions: list[int]) -> Body:
    """What every local answer says about the worker: its partitions, generation, state.

    ``settled`` is false while a rebalance or the table's recovery is deciding
    which rows the worker holds: its answer may then miss sagas.
    """
    recovered = bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]
    return {"url": str(app.conf.canonical_url), "partitions": partitions,
            "generation": app.consumer_generation_id, "rebalancing": bool(app.rebalancing),
            "recovered": recovered, "settled": recovered and not app.rebalancing}


class Cluster:
    """Asks every tracker worker the same question; :meth:`gather` returns all the answers."""

    def __init__(self, me: str, assignment: Callable[[], Assignment],
                 http: Callable[[], aiohttp.ClientSession], timeout_s: float) -> None:
        self.me = me
        self._assignment = assignment
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @classmethod
    def of(cls, app: AppT, table: TableT, timeout_s: float) -> Cluster:
        """The cluster of ``app``'s group, as its partition assignor knows it for ``table``."""

        def assignment() -> Assignment:
            topic = table.changelog_topic.get_topic_name()
            return {url: sorted(topics.get(topic, ()))
                    for url, topics in app.router.table_metadata(table.name).items()}

        return cls(str(app.conf.canonical_url), assignment, lambda: app.http_client, timeout_s)

    def assignment(self) -> Assignment:
        """Every worker of the group with its partitions; this one included even if unlisted."""
        found: Assignment = {self.me: []}
        for url, partitions in self._assignment().items():
            found[self.me if _same_worker(url, self.me) else url] = partitions
        return found

    async def gather(self, path: str, params: Mapping[str, str],
                     local: Callable[[], Body]) -> list[WorkerAnswer]:
        """Every worker's local answer to ``path?params``: this one's from ``local()``."""
        answers = [WorkerAnswer(url, assigned) for url, assigned in self.assignment().items()]
        await asyncio.gather(*(self._ask(a, path, params, local) for a in answers))
        return answers

    async def _ask(self, answer: WorkerAnswer, path: str, params: Mapping[str, str],
                   local: Callable[[], Body]) -> None:
        started = time.perf_counter()
        if answer.url == self.me:
            answer.body = local()
        else:
            url = URL(answer.url).with_path(path).with_query({**params, "scope": LOCAL})
            try:
                async with self._http().get(url, timeout=self._timeout) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                          message=f"HTTP {resp.status}")
                    answer.body = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                answer.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                metrics.CONSOLE_PEER_FAILURES.labels(type(exc).__name__).inc()
                log.warning("tracker worker %s did not answer %s: %s", answer.url, path,
                            answer.error)
        answer.elapsed_ms = (time.perf_counter() - started) * 1000


def _same_worker(url: str, other: str) -> bool:
    """The same host and port (how Faust's router tells itself from its peers)."""
    a, b = URL(url), URL(other)
    return (a.host, a.port) == (b.host, b.port)


def coverage(answers: list[WorkerAnswer], partitions: int) -> Body:
    """Which partitions the answers cover, what is missing, and every reason to doubt them.

    ``complete`` is true only when every partition was answered for by exactly
    one settled worker, every listed worker answered, and all are at the same
    generation; ``problems`` says in words what is not so.
    """
    problems: list[str] = []
    claims: dict[int, list[str]] = {}
    answered = [a for a in answers if a.body is not None]
    for answer in answers:
        if answer.body is None:
            problems.append(f"{answer.url} did not answer ({answer.error}): the sagas of"
                            f" partitions {answer.assigned} are not shown")
            continue
        for partition in answer.status.get("partitions", []):
            claims.setdefault(partition, []).append(answer.url)
        if not answer.status.get("settled"):
            problems.append(f"{answer.url} is rebalancing or recovering its table:"
                            " its sagas may be incomplete")
    for partition, urls in sorted(claims.items()):
        if len(urls) > 1:
            problems.append(f"partition {partition} is claimed by {' and '.join(urls)}")
    generations = sorted({a.status.get("generation") for a in answered}, key=str)
    if len(generations) > 1:
        problems.append(f"workers are at generations {generations}: a rebalance is under way")
    missing = sorted(set(range(partitions)) - claims.keys())
    if missing:
        problems.append(f"partitions {missing} are covered by no worker that answered")
    return {"scope": CLUSTER, "partitions": sorted(claims), "missing": missing,
            "complete": not problems, "problems": problems,
            "workers": [a.as_json() for a in answers]}
