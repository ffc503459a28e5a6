"""The field-number ledger: which number and type each field has ever had.

``schemas/fields.lock.json`` records every field of every message. A test
compares the live descriptors with it, so reusing or retyping a field number
fails CI instead of silently corrupting old events on replay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from schemas import oms_pb2

LOCK_PATH = Path(__file__).with_name("fields.lock.json")
Ledger = dict[str, dict[str, dict[str, Any]]]  # message -> number -> {name, type}
_SCALAR_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_")
}


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        kind = field.message_type.full_name
    else:
        kind = _SCALAR_NAMES[field.type]
    return f"repeated {kind}" if field.is_repeated else kind


def live_fields() -> Ledger:
    """Number -> (name, type) for every field of every message in oms.proto."""
    ledger: Ledger = {}
    for message in oms_pb2.DESCRIPTOR.message_types_by_name.values():
        ledger[message.full_name] = _fields_of(message)
    return ledger


def _fields_of(message: Descriptor) -> dict[str, dict[str, str]]:
    return {
        str(f.number): {"name": f.name, "type": _type_name(f)} for f in message.fields
    }


def read_lock() -> Ledger:
    """The committed ledger."""
    return read_ledger(LOCK_PATH)


def update_lock() -> Ledger:
    """Add new fields to the ledger; existing entries are never changed."""
    return append_ledger(LOCK_PATH, live_fields())


def read_ledger(path: Path) -> Ledger:
    """A committed field ledger (this module's, or the tracker's saga record's)."""
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def append_ledger(path: Path, live: Ledger) -> Ledger:
    """Add the fields of ``live`` that ``path`` lacks; what it records is never changed.

    A ledger only grows, so a field's number or name stays taken for good.
    """
    ledger = read_ledger(path) if path.exists() else {}
    for record, fields in live.items():
        locked = ledger.setdefault(record, {})
        for key, spec in fields.items():
            locked.setdefault(key, spec)
    path.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    return ledger
