"""Every Kafka client OMS builds outside Faust applies the ``OMS_KAFKA_SECURITY_*`` settings.

Black box, against a real broker: the embedded Tansu offers no SASL mechanism,
so a client that applies ``OMS_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` is
refused at the SASL handshake (``UnsupportedSaslMechanismError``), while one
that ignored the setting would connect in plaintext and succeed. Each tool
runs as the operator runs it (``oms ...`` in a process) twice: with SASL it
must fail at that handshake, with PLAINTEXT the same command must succeed.
(Tansu 0.6.0 cannot be set up to accept SASL logins: ``--authentication``
refuses the unauthenticated ``tansu user create`` that would add a user, and
its in-memory storage forgets users on restart.) The Faust workers take the
same settings through ``broker_credentials``, checked on a built app.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.dev.embedded import EmbeddedBroker
from agents.dev.stack import settings_env
from agents.ops.provision import init_system
from config import Settings
from tests.conftest import drop_test_databases, make_settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SASL = {"OMS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "OMS_KAFKA_SASL_MECHANISM": "PLAIN",
        "OMS_KAFKA_SASL_USERNAME": "oms", "OMS_KAFKA_SASL_PASSWORD": "not-logged-anywhere"}
COMMANDS = {
    "init": ["init"],
    "order place": ["order", "place", "--sku", "SKU-0001:1"],
    "dead-letters list": ["dead-letters", "list"],
    "dead-letters redrive": ["dead-letters", "redrive", "--dry-run"],
    "replay": ["replay", "--service", "inventory", "--to-earliest", "--dry-run"],
}


@pytest.fixture(scope="module")
async def settings(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[Settings]:
    prefix = f"sec{uuid.uuid4().hex[:6]}."
    settings = make_settings(tmp_path_factory.mktemp("security"),
                             kafka_bootstrap=broker.bootstrap, topic_prefix=prefix)
    await init_system(settings)  # topics and databases, so any one tool can run alone
    yield settings
    await drop_test_databases(settings)


async def oms(settings: Settings, command: list[str], extra: dict[str, str]
              ) -> tuple[int, str, str]:
    env = {**os.environ, **settings_env(settings), **extra}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", *command, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("name", list(COMMANDS))
async def test_each_tool_speaks_sasl_when_configured_to(settings: Settings, name: str) -> None:
    code, out, err = await oms(settings, COMMANDS[name], SASL)
    assert code != 0, (name, out)
    assert "UnsupportedSaslMechanism" in err, (name, err[-2000:])
    assert SASL["OMS_KAFKA_SASL_PASSWORD"] not in out + err
    code, out, err = await oms(settings, COMMANDS[name], {})  # the same tool, plaintext
    assert code == 0, (name, err[-2000:])
    for line in out.splitlines():  # what it printed is its usual JSON
        json.loads(line)


def test_the_faust_workers_get_the_sasl_settings(settings: Settings) -> None:
    """Built in a process of its own: a Faust app's metrics are global to its process."""
    probe = ("from agents.orders.app import build; from config import Settings;"
             " c = build(Settings()).conf.broker_credentials;"
             " print(type(c).__name__, c.username, c.mechanism.value)")
    env = {**os.environ, **settings_env(settings), **SASL}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["SASLCredentials", "oms", "PLAIN"]
