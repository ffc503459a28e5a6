"""What every service's web views share: the bearer-token guard of mutating endpoints."""

from __future__ import annotations

import hmac

from faust.web import Request

from config import Settings


def admin_token(settings: Settings) -> str | None:
    """``OMS_ADMIN_TOKEN``, or None when it is unset, empty or blank (no token)."""
    if settings.admin_token is None:
        return None
    return settings.admin_token.get_secret_value().strip() or None


def authorized(request: Request, settings: Settings) -> bool:
    """True when the request carries ``Authorization: Bearer <OMS_ADMIN_TOKEN>``.

    Without a configured token (unset, or set but empty) every guarded
    endpoint stays closed: an empty token would otherwise match a bare
    ``Authorization: Bearer``.
    """
    expected = admin_token(settings)
    if expected is None:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return (scheme.lower() == "bearer" and bool(token)
            and hmac.compare_digest(token.encode(), expected.encode()))
