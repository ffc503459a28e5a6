"""The field-number ledger: which number and type each field has ever had.

``schemas/fields.lock.json`` records every field of every message. A test
compares the live descriptors with it, so reusing or retyping a field number
fails CI instead of silently corrupting old events on replay.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from schemas import oms_pb2

LOCK_PATH = Path(__file__).with_name("fields.lock.json")
Ledger = dict[str, dict[str, dict[str, str]]]  # message -> number -> {name, type}
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
    return json.loads(LOCK_PATH.read_text())  # type: ignore[no-any-return]


def update_lock() -> Ledger:
    """Add new fields to the ledger; existing entries are never changed."""
    ledger = read_lock() if LOCK_PATH.exists() else {}
    for message, fields in live_fields().items():
        locked = ledger.setdefault(message, {})
        for number, spec in fields.items():
            locked.setdefault(number, spec)
    LOCK_PATH.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    return ledger
