"""The README's two set-up commands stay true: CI runs exactly its test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "oms demo" in commands[0] and "pip install" in commands[0]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_the_service_table_follows_the_topology() -> None:
    from agents.topology import SERVICES

    text = (ROOT / "README.md").read_text()
    table = text.split("## What it is", 1)[1].split("| service | owns | reads | writes |", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    listed = {}
    for row in rows:
        name, _owns, reads, writes = (cell.strip() for cell in row.strip("|").split("|"))
        listed[name.strip("`")] = (reads, writes)
    assert set(listed) == set(SERVICES)
    for name, service in SERVICES.items():
        reads, writes = listed[name]
        assert reads == ", ".join(f"`oms.{t}`" for t in service.sources), name
        assert writes == ", ".join(f"`oms.{t}`" for t in service.outputs), name
