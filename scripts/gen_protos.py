"""Regenerate schemas/oms_pb2.py(.pyi) from schemas/oms.proto with the official protoc.

Also appends new fields to schemas/fields.lock.json (never rewrites old ones).

Run after editing the .proto: ``python scripts/gen_protos.py``. The test
``tests/unit/test_schemas.py`` fails when the committed modules are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    """Compile every .proto in schemas/ into ``out_dir``."""
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "schemas").glob("*.proto"))
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(ROOT if len(sys.argv) < 2 else Path(sys.argv[1]))
    if len(sys.argv) < 2:
        from schemas.fields import update_lock

        update_lock()
