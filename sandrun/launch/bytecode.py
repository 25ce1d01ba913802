"""Precompiled bytecode in the store: the app imports from a read-only tree with -B,
so without it every start compiles every module it imports (httpbin + gunicorn: 260
ms of imports instead of 105 ms).

Bytecode is generated once, at install, by sandrun's own interpreter — only when it
has the app interpreter's bytecode format (same CPython X.Y), never by running another
program as root — next to each source as `__pycache__/<stem>.<tag>.pyc`, timestamp-
validated. It is not in the manifest, so the store checks it on its own terms: the
cheap check accepts only those names, beside a listed source, owned by the store
owner and read-only; the full check compiles each source again and compares the code
objects (co_filename aside), so a forged .pyc cannot pass for its source.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import py_compile
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


def compile_sources(tmp: Path, final: Path, sources: Iterable[str]) -> list[str]:
    """Write the .pyc of each source (relative names) of the tree being installed in
    `tmp`, recording `final` paths as their file names; return the names written.

    A source that does not compile (say, Python 2 code in a wheel) gets no .pyc: the
    app then fails, or not, on import exactly as it would without sandrun. Large trees
    are compiled by one process per CPU (numpy: 2.1 s alone on this 2-core machine).
    """
    jobs = [(str(tmp / name), str(tmp / pyc_name(name)), str(final / name), pyc_name(name))
            for name in sources if name.endswith(".py") and not name.startswith(".sandrun/")]
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(jobs) < PARALLEL_THRESHOLD:
        results = [_compile_one(job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers need nothing but py_compile, already imported here.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile_one, jobs, chunksize=32))
    return [name for name in results if name is not None]


PARALLEL_THRESHOLD = 200  # below this, starting worker processes costs more than it saves


def _compile_one(job: tuple[str, str, str, str]) -> str | None:
    source, cfile, dfile, name = job
    try:
        py_compile.compile(source, cfile=cfile, dfile=dfile, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    except (py_compile.PyCompileError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    return name


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
        expected = compile(source, str(source_path), "exec", dont_inherit=True)
    except (ValueError, EOFError, TypeError, SyntaxError) as exc:
        return f"cannot be checked ({type(exc).__name__})"
    if code != expected:
        return "is not the bytecode of its source (forged or stale)"
    return None


def pycache_dirs(written: Iterable[str]) -> set[str]:
    return {name.rpartition("/")[0] for name in written}


def is_pycache_dir(rel: str) -> bool:
    return os.path.basename(rel) == CACHE_DIR
