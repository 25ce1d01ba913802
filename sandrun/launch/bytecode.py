"""Precompiled bytecode in the store: the app imports from a read-only tree with -B,
so without it every start compiles every module it imports (httpbin + gunicorn: 260
ms of imports instead of 105 ms).

Bytecode is generated once, at install, by sandrun's own interpreter — only when it
has the app interpreter's bytecode format (same CPython X.Y), never by running another
program as root — next to each source as `__pycache__/<stem>.<tag>.pyc`, timestamp-
validated, by the processes that write the tree (store.py: each compiles the sources it
has just written, from the verified bytes in memory), or, for a cold `sandrun exec` as
root, after the launch by a detached process that compiles the installed sources
(Store.compile_bytecode): the app's first run imports from source, as shiv's does. It
is not in the manifest, so
the store checks it on its own terms: the cheap check accepts only those names, beside
a listed source, owned by the store owner and read-only; the full check compiles each
source again and compares the code objects (co_filename aside), so a forged .pyc cannot
pass for its source.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
from collections.abc import Iterable
from pathlib import Path

CACHE_DIR = "__pycache__"


def compatible(python_version: str) -> bool:
    """Whether this interpreter writes bytecode the app's Python X.Y will load."""
    return (sys.implementation.name == "cpython"
            and python_version == f"{sys.version_info[0]}.{sys.version_info[1]}")


def pyc_name(source_name: str) -> str:
    """`pkg/mod.py` -> `pkg/__pycache__/mod.cpython-311.pyc` (relative names)."""
    directory, _, file = source_name.rpartition("/")
    tag = sys.implementation.cache_tag
    name = f"{CACHE_DIR}/{file[:-3]}.{tag}.pyc"
    return f"{directory}/{name}" if directory else name


# Directories whose sources get no bytecode: packages' own test suites (numpy/*/tests,
# pandas/tests: over half of those wheels' sources), which an app does not import; one
# that does compiles them in memory on import, as without sandrun. (`testing` and `test`
# modules are public APIs of some packages, such as numpy.testing: compiled.)
UNCOMPILED_DIRS = frozenset({"tests"})


def compiles(name: str) -> bool:
    """Whether the store writes bytecode for this entry: Python sources of the app and
    its dependencies, except sandrun's own files under .sandrun/ and test suites."""
    if not name.endswith(".py") or name.startswith(".sandrun/"):
        return False
    return UNCOMPILED_DIRS.isdisjoint(name.split("/")[:-1])


def pyc_data(source: bytes | memoryview, mtime: float, size: int, dfile: str) -> bytes | None:
    """The .pyc of `source` as py_compile writes it (timestamp-validated, optimisation
    level 0: what `python -I -B` loads), recording `dfile` as the file name; `mtime`
    and `size` are the written source's. None when the source does not compile (say,
    Python 2 code in a wheel, or nesting too deep for the compiler): the app then fails,
    or not, on import exactly as it would without sandrun."""
    try:
        code = compile(source, dfile, "exec", dont_inherit=True, optimize=0)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
        return None
    return b"".join((importlib.util.MAGIC_NUMBER, b"\0\0\0\0",
                     (int(mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                     (size & 0xFFFFFFFF).to_bytes(4, "little"), marshal.dumps(code)))


def source_of(pyc_rel: str) -> str | None:
    """`pkg/__pycache__/mod.cpython-311.pyc` -> `pkg/mod.py`; None for any other name."""
    directory, _, file = pyc_rel.rpartition("/")
    parent, _, cache = directory.rpartition("/")
    suffix = f".{sys.implementation.cache_tag}.pyc"
    if cache != CACHE_DIR or not file.endswith(suffix) or file.count(".") != 2:
        return None
    stem = file[:-len(suffix)]
    return f"{parent}/{stem}.py" if parent else f"{stem}.py"


def pyc_problem(pyc_path: Path, source_path: Path) -> str | None:
    """Why this .pyc is not the bytecode of this source, or None when it is."""
    try:
        data = pyc_path.read_bytes()
        source = source_path.read_bytes()
        st = source_path.stat()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return "is not bytecode of this Python version"
    flags = int.from_bytes(data[4:8], "little")
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    if flags != 0 or mtime != int(st.st_mtime) & 0xFFFFFFFF or size != st.st_size & 0xFFFFFFFF:
        return "header does not match its source (flags, mtime or size)"
    try:
        # The tree is root-owned: only root could have written this file.
        code = marshal.loads(data[16:])
        expected = compile(source, str(source_path), "exec", dont_inherit=True, optimize=0)
    except (ValueError, EOFError, TypeError, SyntaxError) as exc:
        return f"cannot be checked ({type(exc).__name__})"
    if code != expected:
        return "is not the bytecode of its source (forged or stale)"
    return None


def pycache_dirs(written: Iterable[str]) -> set[str]:
    return {name.rpartition("/")[0] for name in written}


def is_pycache_dir(rel: str) -> bool:
    return os.path.basename(rel) == CACHE_DIR
