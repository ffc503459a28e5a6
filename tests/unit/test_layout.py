"""The architecture as rules a test can check: who may import whom, and where clients are built.

The folder names only say what lives where; these tests keep it true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agents.topology import SERVICES
from config import SERVICES as CONFIG_SERVICES
from config.settings import DATABASE_SERVICES

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = ("agents.orders", "agents.inventory", "agents.payments", "agents.orchestrator")
PG_CLIENTS = {("asyncpg", "connect"), ("asyncpg", "create_pool")}
KAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_imports(path: Path) -> set[str]:
    return {n for n in imports(path) if n.split(".")[0] in ("agents", "stores", "schemas",
                                                            "config", "faust", "mode")}


@pytest.mark.parametrize("service", ["orders", "inventory", "payments"])
def test_a_business_step_imports_stores_schemas_and_messaging_errors_only(service: str) -> None:
    own = (f"agents.{service}.psp",  # payments' port to the PSP
           f"agents.{service}.intake")  # orders' one definition of a valid order
    allowed = ("stores", "schemas", "agents.messaging.errors")
    bad = {n for n in project_imports(ROOT / "agents" / service / "step.py")
           if not n.startswith(allowed) and not n.startswith(own)}
    assert not bad, f"agents/{service}/step.py imports {sorted(bad)}"


def test_order_intake_needs_no_faust_and_no_web() -> None:
    """The orders step validates with intake, so intake must be as plain as the step."""
    path = ROOT / "agents/orders/intake.py"
    bad = {n for n in project_imports(path) if not n.startswith("schemas")}
    bad |= {n for n in imports(path) if n.split(".")[0] in ("aiohttp", "click")}
    assert not bad, f"agents/orders/intake.py imports {sorted(bad)}"


def test_the_saga_transition_is_pure() -> None:
    bad = {n for n in project_imports(ROOT / "agents/orchestrator/saga.py")
           if not n.startswith("schemas")}
    assert not bad


@pytest.mark.parametrize("folder", ["agents/messaging", "agents/observability", "agents/ops",
                                    "agents/dev", "stores", "schemas", "config"])
def test_shared_code_never_imports_a_service(folder: str) -> None:
    for path in modules(folder):
        bad = {n for n in imports(path) if n.startswith(SERVICE_PACKAGES)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("folder", ["stores", "schemas", "config"])
def test_the_lower_layers_never_import_agents(folder: str) -> None:
    for path in modules(folder):
        bad = {n for n in imports(path) if n.startswith("agents")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_every_kafka_client_is_built_by_the_factory() -> None:
    factory = ROOT / "agents/messaging/kafka.py"
    for path in modules("agents"):
        if path == factory:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert name not in KAFKA_CLIENTS, f"{where} builds {name}; use messaging.kafka"


def test_every_postgresql_connection_is_built_by_the_factory() -> None:
    """stores/db.py applies the timeouts and keepalives; a connection made elsewhere has none."""
    factory = ROOT / "stores/db.py"
    for path in [*modules("agents"), *modules("stores")]:
        if path == factory:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert (owner, node.func.attr) not in PG_CLIENTS, \
                    f"{where} calls asyncpg.{node.func.attr}; use stores.db"


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    for init in [*modules("agents"), *modules("stores"), *modules("schemas")]:
        if init.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) == 2, f"{init.relative_to(ROOT)}: a two-line docstring"


def test_topology_matches_the_settings() -> None:
    assert tuple(SERVICES) == CONFIG_SERVICES  # the web ports follow this order
    assert tuple(s.name for s in SERVICES.values() if s.database) == DATABASE_SERVICES
    for service in SERVICES.values():
        module, _, function = service.app.partition(":")
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), service.app
