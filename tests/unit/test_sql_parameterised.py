"""Every SQL statement takes its values as parameters, never by string formatting.

The test reads the source of ``agents/`` and ``stores/`` and fails on any
call to an asyncpg query method whose SQL is not a literal, unless the
function is listed below with the reason the interpolated part is safe
(identifiers that a value cannot reach).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUERY_METHODS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor"}

AUDITED: dict[tuple[str, str], str] = {
    ("agents/ops/provision.py", "drop_databases"): "database name passed check_database_name",
    ("agents/dev/bench.py", "pg_step_rates"): "database name passed check_database_name",
    ("stores/migrate.py", "ensure_database"): "database name passed check_database_name",
    ("stores/migrate.py", "migrate"): "the SQL is a migration file shipped in the package",
    ("stores/inventory.py", "settle"): "the SET clause is one of two constant strings",
    ("stores/orders.py", "get"): "the column list is a module constant",
}


def formatted_queries() -> list[tuple[str, str, int, str]]:
    """(file, function, line, SQL source) of every query whose SQL is not a plain literal."""
    found = []
    for path in sorted([*ROOT.glob("agents/**/*.py"), *ROOT.glob("stores/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for func in ast.walk(ast.parse(path.read_text(), rel)):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in QUERY_METHODS and node.args
                        and not _literal(node.args[0])):
                    found.append((rel, func.name, node.lineno, ast.unparse(node.args[0])))
    return found


def _literal(arg: ast.expr) -> bool:
    """A string literal, or a name in UPPER_CASE (a module constant holding one)."""
    return isinstance(arg, ast.Constant) or (isinstance(arg, ast.Name) and arg.id.isupper())


def test_no_sql_is_built_by_string_formatting_outside_the_audited_places() -> None:
    unaudited = [f"{f}:{line} in {fn}(): {sql[:90]}"
                 for f, fn, line, sql in formatted_queries() if (f, fn) not in AUDITED]
    assert not unaudited, "SQL built by formatting; use $n parameters:\n" + "\n".join(unaudited)


def test_the_scan_sees_formatted_sql() -> None:
    """Guard against a scan that finds nothing: the audited places are found."""
    seen = {(f, fn) for f, fn, _, _ in formatted_queries()}
    assert ("stores/orders.py", "get") in seen
