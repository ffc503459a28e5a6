"""The admin guard of the mutating endpoints: only the configured, non-empty token passes."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from agents.http import authorized
from config import Settings


def settings(token: str | None) -> Settings:
    return Settings(_env_file=None, admin_token=token)  # type: ignore[call-arg]


def request(authorization: str | None):  # an aiohttp request, as Faust's views receive it
    headers = {} if authorization is None else {"Authorization": authorization}
    return make_mocked_request("POST", "/orders/x/cancel/", headers=headers)


@pytest.mark.parametrize("configured", [None, "", "   "])
@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "bearer x"])
def test_no_configured_token_keeps_every_mutating_endpoint_closed(
    configured: str | None, header: str | None
) -> None:
    assert authorized(request(header), settings(configured)) is False


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer wrong",
                                    "s3cret", "Basic s3cret", "Bearer s3cret2"])
def test_only_the_configured_token_passes(header: str | None) -> None:
    assert authorized(request(header), settings("s3cret")) is False
    assert authorized(request("Bearer s3cret"), settings("s3cret")) is True
    assert authorized(request("bearer s3cret"), settings("s3cret")) is True
