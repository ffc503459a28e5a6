"""Saga search: the console's lists as one query, checked where it enters, paged by key.

Every saga list of the tracker (search, in-flight, stuck, recent) is a
:class:`Query` over the stored rows: filters (status, reason, customer, order
id prefix, a time range, stuck) and a sort. A page is the first ``limit``
matching sagas after the cursor in that sort. The cursor is opaque (base64 of
the sort key of the page's last saga, never an offset), so the next page
starts at the right saga however many sagas arrived meanwhile, and pages from
several workers merge by the same key (:func:`merge_pages`).

The filters read the stored rows as they are, so a search over the whole
table builds a :class:`~agents.orchestrator.saga.Saga` only for the sagas of
the page.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agents.orchestrator.saga import RUNNING, STATUSES

PAGE_LIMIT = 50
"""Sagas per page unless asked otherwise."""
PAGE_LIMIT_MAX = 500
Key = tuple[int, str]
"""A saga's place in a sort: a time (negated for newest first), then the order id."""

SORTS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "newest": lambda row: -first_seen(row),  # stable: when the tracker first saw it
    "oldest": lambda row: first_seen(row),  # in-flight and stuck: the longest waiting first
    "updated": lambda row: -int(row.get("updated_at_ms") or 0),  # what is moving now
}
PARAMETERS = ("status", "reason", "customer", "order_id", "since", "until", "stuck", "sort",
              "limit", "cursor", "scope")
"""Every query parameter a list view knows (``scope`` is the view's, not the query's)."""


class BadQuery(ValueError):
    """A query parameter that cannot be used; ``str()`` names it and says why."""


def first_seen(row: Mapping[str, Any]) -> int:
    """When the tracker first saw a saga (its clock; placement for rows from before that)."""
    return int(row.get("started_at_ms") or row.get("placed_at_ms") or 0)


@dataclass(frozen=True)
class Query:
    """What a list asks for; :meth:`parse` builds one from query parameters."""

    statuses: frozenset[str] = frozenset()
    reason: str = ""
    """Case-insensitive part of the reason (e.g. ``out of stock``)."""
    customer: str = ""
    order_id: str = ""
    """The start of the order id (an operator pastes the first characters)."""
    since_ms: int | None = None
    until_ms: int | None = None
    """First seen in ``[since, until)``."""
    stuck: bool = False
    """Running past its deadline."""
    sort: str = "newest"
    limit: int = PAGE_LIMIT
    after: Key | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, params: Mapping[str, str], preset: Query | None = None) -> Query:
        """A query from URL parameters on top of ``preset``; BadQuery names a bad one."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise BadQuery(f"{unknown[0]}: unknown parameter; known: {', '.join(PARAMETERS)}")
        query = preset or cls()
        changes: dict[str, Any] = {}
        if params.get("status"):
            changes["statuses"] = _statuses(params["status"])
        for name, attr in (("reason", "reason"), ("customer", "customer")):
            if params.get(name):
                changes[attr] = params[name].strip()
        if params.get("order_id"):
            changes["order_id"] = params["order_id"].strip().lower()
        for name in ("since", "until"):
            if params.get(name):
                changes[f"{name}_ms"] = _time_ms(name, params[name])
        if params.get("stuck"):
            changes["stuck"] = _flag("stuck", params["stuck"])
        if params.get("sort"):
            if params["sort"] not in SORTS:
                raise BadQuery(f"sort: one of {', '.join(SORTS)}, got {params['sort']!r}")
            changes["sort"] = params["sort"]
        if params.get("limit"):
            changes["limit"] = _limit(params["limit"])
        query = replace(query, **changes)
        if query.since_ms is not None and query.until_ms is not None \
                and query.until_ms <= query.since_ms:
            raise BadQuery("until: must be later than since")
        if params.get("cursor"):
            query = replace(query, after=_decode_cursor(params["cursor"], query.sort))
        return query

    def keep(self, row: Mapping[str, Any], now_ms: int) -> bool:
        """Whether a stored row (or a saga's JSON) matches the filters."""
        status = row.get("status")
        if self.statuses and status not in self.statuses:
            return False
        if self.stuck and not (status == RUNNING and now_ms > int(row.get("deadline_ms") or 0)):
            return False
        if self.reason and self.reason.lower() not in str(row.get("reason", "")).lower():
            return False
        if self.customer and row.get("customer_id") != self.customer:
            return False
        if self.order_id and not str(row.get("order_id", "")).startswith(self.order_id):
            return False
        seen = first_seen(row)
        if self.since_ms is not None and seen < self.since_ms:
            return False
        return self.until_ms is None or seen < self.until_ms

    def key(self, row: Mapping[str, Any]) -> Key:
        return SORTS[self.sort](row), str(row.get("order_id", ""))

    def page(self, rows: Iterable[Mapping[str, Any]], now_ms: int
             ) -> tuple[list[Mapping[str, Any]], bool]:
        """The first ``limit`` matching rows after the cursor, and whether more follow."""
        after = self.after
        found = (r for r in rows if self.keep(r, now_ms) and (after is None or self.key(r) > after))
        first = heapq.nsmallest(self.limit + 1, found, key=self.key)
        return first[:self.limit], len(first) > self.limit

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        """The opaque cursor of the page that ends with ``row``."""
        text = json.dumps({"sort": self.sort, "key": list(self.key(row))})
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def params(self) -> dict[str, str]:
        """This query as URL parameters (what a peer worker is asked)."""
        params: dict[str, str] = {"sort": self.sort, "limit": str(self.limit)}
        if self.statuses:
            params["status"] = ",".join(sorted(self.statuses))
        for name in ("reason", "customer", "order_id"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.since_ms is not None:
            params["since"] = str(self.since_ms)
        if self.until_ms is not None:
            params["until"] = str(self.until_ms)
        if self.stuck:
            params["stuck"] = "true"
        return params


def merge_pages(query: Query, pages: Iterable[tuple[list[dict[str, Any]], bool]]
                ) -> tuple[list[dict[str, Any]], str | None]:
    """One page from the pages of several workers, and the cursor of the next (None: the end).

    Each worker's page is the first ``limit`` of its own sagas after the same
    cursor, so the first ``limit`` of their union are the cluster's. A saga
    two workers both answered with (mid-rebalance) is shown once, the newer copy.
    """
    newest: dict[str, dict[str, Any]] = {}
    more = False
    for sagas, has_more in pages:
        more = more or has_more
        for saga in sagas:
            seen = newest.get(saga["order_id"])
            if seen is None or saga.get("updated_at_ms", 0) > seen.get("updated_at_ms", 0):
                newest[saga["order_id"]] = saga
    ordered = sorted(newest.values(), key=query.key)
    shown = ordered[:query.limit]
    more = more or len(ordered) > query.limit
    return shown, query.cursor_of(shown[-1]) if more and shown else None


def _statuses(text: str) -> frozenset[str]:
    wanted = frozenset(s.strip().upper() for s in text.split(",") if s.strip())
    wrong = sorted(wanted - set(STATUSES))
    if wrong:
        raise BadQuery(f"status: one or more of {', '.join(STATUSES)}, got {wrong[0]!r}")
    return wanted


def _time_ms(name: str, text: str) -> int:
    """ISO 8601 (UTC unless it says otherwise) or epoch milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadQuery(f"{name}: an ISO 8601 time or epoch milliseconds, got {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        raise BadQuery(f"{name}: true or false, got {text!r}")
    return value in ("true", "1", "yes")


def _limit(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise BadQuery(f"limit: a whole number of at least 1, got {text!r}")
    return min(int(text), PAGE_LIMIT_MAX)


def _decode_cursor(text: str, sort: str) -> Key:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        number, order_id = data["key"]
        made_for = data["sort"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise BadQuery("cursor: not a cursor this view gave out") from exc
    if not isinstance(number, int) or not isinstance(order_id, str):
        raise BadQuery("cursor: not a cursor this view gave out")
    if made_for != sort:
        raise BadQuery(f"cursor: made for sort={made_for!r}, not {sort!r}")
    return number, order_id
