"""What every service's web views share: the bearer-token guard of mutating endpoints."""

from __future__ import annotations

import hmac

from faust.web import Request

from config import Settings


def authorized(request: Request, settings: Settings) -> bool:
    """True when the request carries ``Authorization: Bearer <OMS_ADMIN_TOKEN>``.

    Without a configured token every mutating endpoint stays closed.
    """
    if settings.admin_token is None:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.admin_token.get_secret_value()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())
