"""``OMS_SERVICE_URLS``: where the tracker's timeline finds each database service's events."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from agents.dev.stack import settings_env
from config.settings import Settings


@pytest.fixture(autouse=True)
def no_oms_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("OMS_"):
            monkeypatch.delenv(key)


def from_env(monkeypatch: pytest.MonkeyPatch, value: str) -> Settings:
    monkeypatch.setenv("OMS_SERVICE_URLS", value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_environment_names_each_service_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(monkeypatch, "orders=http://orders:6066, inventory=https://inv:8443/")
    assert settings.service_urls == {"orders": "http://orders:6066",
                                     "inventory": "https://inv:8443/"}
    assert settings.service_url("orders") == "http://orders:6066"
    assert settings.service_url("inventory") == "https://inv:8443"


def test_a_service_left_out_is_looked_for_locally_at_its_web_port(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = from_env(monkeypatch, "")
    assert settings.service_urls == {}
    assert settings.service_url("payments") == f"http://127.0.0.1:{settings.web_port('payments')}"
    shifted = settings.model_copy(update={"web_port_base": 7000})
    assert shifted.service_url("orders") == "http://127.0.0.1:7000"


@pytest.mark.parametrize(("value", "named"), [
    ("orchestrator=http://t:6069", "'orchestrator' is not one of"),
    ("orders http://o:6066", "is not service=URL"),
    ("orders=o:6066", "is not an http(s)://host:port URL"),
    ("orders=http://o:6066/events", "is not an http(s)://host:port URL"),
])
def test_a_wrong_entry_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, named: str
) -> None:
    with pytest.raises(ValidationError, match="service_urls") as refused:
        from_env(monkeypatch, value)
    assert named in str(refused.value)


def test_a_child_process_reads_back_the_same_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {"orders": "http://127.0.0.1:6066", "payments": "http://127.0.0.1:6068"}
    settings = Settings(_env_file=None, service_urls=urls)  # type: ignore[call-arg]
    env = settings_env(settings)
    assert env["OMS_SERVICE_URLS"] == "orders=http://127.0.0.1:6066,payments=http://127.0.0.1:6068"
    assert from_env(monkeypatch, env["OMS_SERVICE_URLS"]).service_urls == urls
