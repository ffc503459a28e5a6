"""Dead-letter views on the tracker app: list (read-only) and re-drive (token required)."""

from __future__ import annotations

import json

from faust.types import AppT
from faust.web import Request, Response, View

from agents.http import authorized
from agents.messaging.redrive import Filters, dead_letters, redrive
from config import Settings


def filters_of(data: dict[str, object]) -> Filters:
    """Filters from a query string or JSON body; ValueError for a bad limit."""
    limit = data.get("limit")
    return Filters(
        service=str(data["service"]) if data.get("service") else None,
        topic=str(data["topic"]) if data.get("topic") else None,
        reason_contains=str(data["reason_contains"]) if data.get("reason_contains") else None,
        limit=int(str(limit)) if limit not in (None, "") else None,
    )


def add_dead_letter_views(app: AppT, settings: Settings) -> None:
    """Register ``GET /dead-letters/`` and ``POST /dead-letters/redrive/``."""

    @app.page("/dead-letters/")
    class DeadLetters(View):
        async def get(self, request: Request) -> Response:
            try:
                filters = filters_of(dict(request.query))
            except ValueError:
                return self.json({"error": "limit: not an integer"}, status=400)
            letters = await dead_letters(settings, filters)
            return self.json({"dead_letters": [x.as_json() for x in letters]})

    @app.page("/dead-letters/redrive/")
    class Redrive(View):
        async def post(self, request: Request) -> Response:
            if not authorized(request, settings):
                return self.json({"error": "bearer token required"}, status=401)
            try:
                body = json.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                filters = filters_of(body)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                return self.json({"error": f"bad request: {exc}"}, status=400)
            dry_run = bool(body.get("dry_run"))
            done = await redrive(settings, filters, dry_run=dry_run)
            return self.json({"items": done, "redriven": 0 if dry_run else len(done),
                              "dry_run": dry_run})
