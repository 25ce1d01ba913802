"""What every generator in tools/ does with its output: write it if it changed, or with
--check only say whether it is stale (a diff, exit 1)."""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from pathlib import Path


def write_or_check(output: Path, text: str, *, check: bool, regenerate: str) -> int:
    """0: up to date or written; 1: stale under `check` (a diff on stdout, the command
    that regenerates it on stderr)."""
    try:
        old = output.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    if old == text:
        print(f"{output}: up to date")
        return 0
    diff = difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                str(output), "generated")
    sys.stdout.writelines(diff)
    if check:
        print(f"{output} is stale: regenerate with {regenerate}", file=sys.stderr)
        return 1
    _write(output, text)
    print(f"{output}: written")
    return 0


def _write(path: Path, text: str) -> None:
    """Atomically, 0644."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                     prefix=f".{path.name}.", delete=False) as out:
        out.write(text)
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)
