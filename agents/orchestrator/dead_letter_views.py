"""Dead-letter views on the tracker app: list one page, re-drive; both need the admin token.

Dead letters hold whole payloads (payment tokens included), so reading them
is an operator's act like re-driving them. A listing reads only what its
page needs (:func:`agents.messaging.redrive.read_page`), never the whole
topic, and answers where the next page starts.
"""

from __future__ import annotations

import json

from faust.types import AppT
from faust.web import Request, Response, View

from agents.http import authorized
from agents.messaging.redrive import (
    PAGE_LIMIT,
    PAGE_LIMIT_MAX,
    Filters,
    Position,
    read_page,
    redrive,
)
from config import Settings


class BadQuery(ValueError):
    """A query parameter that cannot be used; ``str()`` names it and says why."""


FILTERS = ("service", "topic", "reason_contains", "limit", "at")


def filters_of(data: dict[str, object], known: tuple[str, ...] = ()) -> Filters:
    """Filters from a query string or JSON body; BadQuery names a bad or unknown field.

    An unknown field is refused rather than ignored: ignoring a misspelt
    filter would widen a re-drive to every dead letter.
    """
    unknown = sorted(set(data) - {*FILTERS, *known})
    if unknown:
        raise BadQuery(f"{unknown[0]}: unknown field; known: {', '.join((*FILTERS, *known))}")
    limit = data.get("limit")
    try:
        at = Position.parse(str(data["at"])) if data.get("at") else None
    except ValueError as exc:
        raise BadQuery(f"at: {exc}") from exc
    return Filters(
        service=str(data["service"]) if data.get("service") else None,
        topic=str(data["topic"]) if data.get("topic") else None,
        reason_contains=str(data["reason_contains"]) if data.get("reason_contains") else None,
        limit=_whole_number("limit", limit) if limit not in (None, "") else None,
        at=at,
    )


def page_of(query: dict[str, str]) -> tuple[int, Position | None]:
    """``limit`` (default 50, capped at 500) and ``after`` (a page's ``next``) of a listing."""
    limit = _whole_number("limit", query["limit"]) if query.get("limit") else PAGE_LIMIT
    try:
        start = Position.parse(query["after"]) if query.get("after") else None
    except ValueError as exc:
        raise BadQuery(f"after: {exc}") from exc
    return min(limit, PAGE_LIMIT_MAX), start


def _whole_number(name: str, value: object) -> int:
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise BadQuery(f"{name}: a whole number of at least 1, got {text!r}")
    return int(text)


def add_dead_letter_views(app: AppT, settings: Settings) -> None:
    """Register ``GET /dead-letters/`` and ``POST /dead-letters/redrive/``."""

    @app.page("/dead-letters/")
    class DeadLetters(View):
        async def get(self, request: Request) -> Response:
            if not authorized(request, settings):
                return self.json({"error": "bearer token required"}, status=401)
            query = dict(request.query)
            try:
                filters = filters_of({k: v for k, v in query.items() if k != "limit"},
                                     known=("after",))
                limit, start = page_of(query)
            except BadQuery as exc:
                return self.json({"error": str(exc)}, status=400)
            page = await read_page(settings, filters, start, limit=limit)
            return self.json({"dead_letters": [x.as_json() for x in page.letters],
                              "next": str(page.next) if page.next else None,
                              "limit": limit, "scanned": page.scanned})

    @app.page("/dead-letters/redrive/")
    class Redrive(View):
        async def post(self, request: Request) -> Response:
            if not authorized(request, settings):
                return self.json({"error": "bearer token required"}, status=401)
            try:
                body = json.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise BadQuery("body must be a JSON object")
                filters = filters_of(body, known=("dry_run",))
            except ValueError as exc:  # BadQuery, and JSONDecodeError, are ValueErrors
                return self.json({"error": f"bad request: {exc}"}, status=400)
            dry_run = bool(body.get("dry_run"))
            done = await redrive(settings, filters, dry_run=dry_run)
            return self.json({"items": done, "redriven": 0 if dry_run else len(done),
                              "dry_run": dry_run})
