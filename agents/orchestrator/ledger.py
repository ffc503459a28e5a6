"""The saga record's field ledger: every field the tracker's table rows have ever had.

The table's rows outlive the code that wrote them: after a deploy, the new
tracker reads the old one's rows from the changelog. ``saga.lock.json``
records each field of :class:`~agents.orchestrator.saga.Saga` and of its
steps, with its type and whether rows must have it; a test compares the live
definition with it (as ``schemas/fields.lock.json`` does for the protobuf
fields), so a rename or retype fails CI instead of making every stored row
unreadable. A field that is dropped on purpose stays in the ledger, marked
``"retired": true``.

After adding a field (with a default): ``python -m agents.orchestrator.ledger``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from agents.orchestrator.saga import Saga, Step, record_fields
from schemas.fields import append_ledger, read_ledger

LOCK_PATH = Path(__file__).with_name("saga.lock.json")
Ledger = dict[str, dict[str, dict[str, Any]]]  # record -> field -> {type, required}


def type_name(hint: Any) -> str:
    """``int``, ``list[Step]``: a type hint as the ledger writes it."""
    args = typing.get_args(hint)
    if not args:
        return str(hint.__name__)
    return f"{type_name(typing.get_origin(hint))}[{', '.join(type_name(a) for a in args)}]"


def live_fields() -> Ledger:
    """The fields of the saga record and of its steps, as the code defines them now."""
    return {
        record.__name__: {name: {"type": type_name(hint), "required": required}
                          for name, (hint, required) in record_fields(record).items()}
        for record in (Saga, Step)
    }


def read_lock() -> Ledger:
    """The committed ledger."""
    return read_ledger(LOCK_PATH)


def update_lock() -> Ledger:
    """Add new fields to the ledger; existing entries are never changed."""
    return append_ledger(LOCK_PATH, live_fields())


if __name__ == "__main__":
    update_lock()
