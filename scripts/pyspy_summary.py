"""Summarise ``py-spy record -f raw`` output: where a worker spends its CPU.

Usage::

    py-spy record -d 12 -r 100 -f raw -o /tmp/orders.txt --pid <worker pid>
    python scripts/pyspy_summary.py /tmp/orders.txt [--top 15]

Prints the share of samples per leaf function (self time) and per function
anywhere on the stack (inclusive time), so the hot spots of a service under
``oms bench`` load can be named without a flame-graph viewer.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/mod.py:12)`` -> ``mod.py:func`` (line numbers merged)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{Path(match['file']).name}:{match['func']}"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per leaf function, samples per function on the stack."""
    total, leaf, inclusive = 0, Counter[str](), Counter[str]()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        leaf[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, leaf, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        total, leaf, inclusive = summarise(path.read_text())
        print(f"== {path} ({total} samples)")
        print("-- self")
        for name, n in leaf.most_common(args.top):
            print(f"{100 * n / total:5.1f}%  {name}")
        print("-- inclusive")
        for name, n in inclusive.most_common(args.top * 3):
            print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
