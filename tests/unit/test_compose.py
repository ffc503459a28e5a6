"""The production stack in ``compose/`` agrees with ``config.settings``.

Ports, database names, env variables and the start order are checked by
parsing the files, so a renamed setting or a moved port fails here rather
than on ``docker compose up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import DATABASE_SERVICES, SERVICES, Settings

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
BROKER = "redpanda"
DATABASE = "postgres"
INIT = "oms-init"

EXPECTED_METRICS = {
    "oms_orders_placed_total",
    "oms_saga_outcomes_total",
    "oms_order_e2e_seconds_bucket",
    "oms_handler_seconds_bucket",
    "oms_consumer_lag",
    "oms_outbox_backlog",
    "oms_dead_letters_total",
    "oms_gateway_calls_total",
}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Default settings, untouched by the caller's OMS_ variables or .env."""
    for key in list(os.environ):
        if key.upper().startswith("OMS_"):
            monkeypatch.delenv(key)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE_FILE)["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for mapping in service.get("ports", []):
        if isinstance(mapping, dict):
            ports.add(int(mapping["target"]))
        else:
            ports.add(int(str(mapping).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_every_service_runs_its_worker_with_its_port(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    for name in SERVICES:
        assert name in services, f"no compose service {name!r}"
        service = services[name]
        port = settings.web_port(name)
        assert command_of(service) == ["worker", name]
        assert port in container_ports(service), f"{name}: port {port} not mapped"
        probe = " ".join(command_of({"command": service["healthcheck"]["test"]}))
        assert f":{port}/health/" in probe, f"{name}: healthcheck misses port {port}"
        assert env_of(service)["OMS_WEB_BIND"] == "0.0.0.0"
        assert env_of(service)["OMS_WEB_HOST"] == name  # where table routes redirect

    workers = [n for n, s in services.items() if command_of(s)[:1] == ["worker"]]
    assert sorted(workers) == sorted(SERVICES)


def test_init_runs_once_before_the_workers(services: dict[str, dict[str, Any]]) -> None:
    assert command_of(services[INIT]) == ["init"]
    assert depends_on(services[INIT]) == {
        BROKER: "service_healthy",
        DATABASE: "service_healthy",
    }
    assert "healthcheck" in services[BROKER]
    assert "healthcheck" in services[DATABASE]
    for name in SERVICES:
        assert depends_on(services[name]).get(INIT) == "service_completed_successfully"


def test_prometheus_scrapes_every_service(settings: Settings) -> None:
    config = load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            targets.update(static["targets"])
    assert targets == {f"{name}:{settings.web_port(name)}" for name in SERVICES}


def test_compose_env_keys_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    used = {key for service in services.values() for key in env_of(service)}
    oms_keys = {key for key in used if key.startswith("OMS_")}
    assert oms_keys, "no OMS_ variables in compose"
    unknown = {
        key for key in oms_keys if key.removeprefix("OMS_").lower() not in Settings.model_fields
    }
    assert not unknown, f"not fields of config.settings.Settings: {sorted(unknown)}"


def test_service_env_points_at_the_stack(services: dict[str, dict[str, Any]]) -> None:
    for name in (INIT, *SERVICES):
        env = env_of(services[name])
        assert env["OMS_KAFKA_BOOTSTRAP"] == f"{BROKER}:9092"
        assert env["OMS_DATABASE_URL"].endswith(f"@{DATABASE}:5432")
        assert env["OMS_OTEL_EXPORTER"] == "otlp"
        assert env["OMS_OTEL_ENDPOINT"] == "http://jaeger:4317"
        assert env["OMS_ADMIN_TOKEN"].startswith("${OMS_ADMIN_TOKEN")


def test_init_script_creates_the_service_databases(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    mounts = [str(volume) for volume in services[DATABASE]["volumes"]]
    assert any("/docker-entrypoint-initdb.d/" in mount for mount in mounts)
    sql = (COMPOSE_DIR / "postgres" / "init-databases.sql").read_text()
    created = re.findall(r"CREATE\s+DATABASE\s+\"?(\w+)\"?", sql, flags=re.IGNORECASE)
    assert sorted(created) == sorted(settings.database_name(s) for s in DATABASE_SERVICES)


def test_grafana_provisioning_points_at_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090")
    ]
    providers = load_yaml(provisioning / "dashboards" / "oms.yml")["providers"]
    mounts = [str(volume).split(":") for volume in services["grafana"]["volumes"]]
    dashboard_mount = next(target for source, target, *_ in mounts if source.endswith("dashboards"))
    assert [p["options"]["path"] for p in providers] == [dashboard_mount]


def test_dashboard_uses_exactly_the_oms_metrics() -> None:
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "oms.json").read_text())
    used: set[str] = set()
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        for target in panel["targets"]:
            datasource = target.get("datasource") or panel.get("datasource")
            assert datasource["type"] == "prometheus", panel["title"]
            assert target["expr"].strip(), panel["title"]
            used.update(re.findall(r"\boms_[a-z0-9_]+", target["expr"]))
    assert used == EXPECTED_METRICS


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _docker_compose_available(),
    reason="the docker client with the compose plugin is not installed",
)
def test_docker_compose_config_is_valid() -> None:
    env = {**os.environ, "OMS_ADMIN_TOKEN": "test-token"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_console_links_a_saga_to_its_trace_in_jaeger(
    services: dict[str, dict[str, Any]],
) -> None:
    template = env_of(services["orchestrator"])["OMS_TRACE_UI_URL"]
    ui_port = template.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    assert int(ui_port) in container_ports(services["jaeger"])
    settings = Settings(_env_file=None, trace_ui_url=template)  # type: ignore[call-arg]
    assert settings.trace_ui_url.endswith("/trace/{trace_id}")  # a valid setting


def test_the_tracker_reaches_every_database_service_by_its_container_name(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    """The saga timeline asks each service for an order's events; 127.0.0.1 is the tracker's own."""
    urls = env_of(services["orchestrator"])["OMS_SERVICE_URLS"]
    tracker = Settings(_env_file=None, service_urls=urls)  # type: ignore[call-arg]
    assert {s: tracker.service_url(s) for s in DATABASE_SERVICES} == {
        s: f"http://{s}:{settings.web_port(s)}" for s in DATABASE_SERVICES}
