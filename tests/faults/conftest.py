"""Fault-suite hooks: print every scenario's report line in the terminal summary."""

from __future__ import annotations

import json

import pytest

from tests.faults.harness import REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One JSON line per fault scenario, so a CI log shows the figures at a glance."""
    if not REPORTS:
        return
    terminalreporter.section("fault scenarios")
    for line in REPORTS:
        terminalreporter.write_line(json.dumps(line))
