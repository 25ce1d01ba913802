"""`sandrun test --matrix`: the suite under each resolution of the project's constraints.

Each strategy is one cell. uv resolves the project's dependencies and its test
dependencies (the direct requirements, so that `lowest-direct` lowers exactly what the
project declares) plus the project's stub wheel, wheels only, into a pylock.toml; the
cell's bundle is built from that lock (every wheel checked against its sha256, as
`sandrun bundle --lock`); the suite runs in the sandbox as `sandrun test` runs it. Cells
run in parallel, up to one per core, each in its own process (a launch owns its
process's signals and namespaces), with its output in its results directory.

Results: DIR/<strategy>/{pylock.toml, junit.xml, summary.json, output.txt} and
DIR/matrix.json, each made relative to its directory's fd (results.py). uv writes its
lock into a root-private temporary directory, which the cell's bundle is built from;
the results get a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandrun.dev import launching
from sandrun.dev.bundles import cache_dir, check_stub, stub_wheel
from sandrun.dev.project import (
    Project,
    check_project_names,
    find_project,
    load_project,
    requested_profile,
)
from sandrun.dev.results import ResultsDir
from sandrun.dev.testing import (
    TestRequest,
    TestResult,
    make_results_dir,
    pytest_config,
    run_tests,
    test_app_name,
    write_summary,
)
from sandrun.errors import EXIT_REFUSED, SandrunError, UsageError

Report = Callable[[str], None]
STRATEGIES = ("highest", "lowest-direct", "lowest")
ABBREVIATIONS = {"highest": "h", "lowest-direct": "ld", "lowest": "l"}
UV_TIMEOUT = 600.0
UNRESOLVABLE = 1  # exit code of a cell whose constraints cannot be resolved


def _quiet(_: str) -> None:
    pass


def parse_strategies(text: str) -> list[str]:
    """`highest,lowest-direct,lowest` -> the strategies, in order, each once."""
    found = [s.strip() for s in text.split(",") if s.strip()]
    wrong = [s for s in found if s not in STRATEGIES]
    if wrong or not found:
        raise UsageError(f"--matrix {text!r}: unknown strategy {', '.join(wrong) or '(none)'}",
                         f"choose from {', '.join(STRATEGIES)}, e.g. --matrix "
                         "highest,lowest-direct")
    return list(dict.fromkeys(found))


@dataclass
class Cell:
    """One strategy's resolution and run."""

    strategy: str
    status: str = "pending"  # passed, failed, unresolvable, error
    exit_code: int = EXIT_REFUSED
    versions: dict[str, str] = field(default_factory=dict)  # resolved, the project excluded
    differs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # TestResult.to_json()
    seconds: float = 0.0
    error: str | None = None
    results_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "status": self.status, "exit_code": self.exit_code,
                "versions": self.versions,
                "differs": {k: {"version": v[0], "baseline": v[1]}
                            for k, v in self.differs.items()},
                "passed": self.result.get("passed", 0), "failed": self.result.get("failed", 0),
                "errors": self.result.get("errors", 0),
                "skipped": self.result.get("skipped", 0), "seconds": round(self.seconds, 3),
                "results_dir": self.results_dir, "lock": str(Path(self.results_dir)
                                                             / "pylock.toml"),
                "junit": self.result.get("junit"), "output": self.result.get("output"),
                "explanation": self.result.get("explanation", []), "error": self.error}


@dataclass
class MatrixOutcome:
    project: str
    results_dir: str
    cells: list[Cell]
    baseline: str
    seconds: float
    direct: tuple[str, ...] = ()  # names of the direct requirements (canonical)

    @property
    def exit_code(self) -> int:
        """0 when every cell passed, else the largest cell exit code."""
        return max((c.exit_code for c in self.cells), default=0)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "results_dir": self.results_dir,
                "baseline": self.baseline, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3),
                "cells": [c.to_json() for c in self.cells]}


def uv_binary() -> str:
    try:
        import uv
    except ImportError:
        raise SandrunError("uv is not installed: the matrix resolves with uv",
                           "install it into sandrun's environment (pip install uv)") from None
    return str(uv.find_uv_bin())


def uv_command(strategy: str, requirements: Path, output: Path, python: str,
               request: TestRequest, exclude_newer: str | None) -> list[str]:
    command = [uv_binary(), "pip", "compile", str(requirements), "--format", "pylock.toml",
               # uv's --only-binary :all: is its --no-build (the two conflict): it never
               # builds, direct references included.
               "--resolution", strategy, "--only-binary", ":all:", "--python-version", python,
               "--output-file", str(output), "--no-header", "--quiet", "--no-config"]
    if exclude_newer:
        command += ["--exclude-newer", exclude_newer]
    for link in request.find_links:
        command += ["--find-links", os.path.abspath(link)]
    if request.no_index:
        command.append("--no-index")
    if request.index_url:
        command += ["--index-url", request.index_url]
    return command


def resolve(project: Project, strategy: str, stub: Path, work: Path, output: Path,
            request: TestRequest, exclude_newer: str | None) -> None:
    """uv pip compile: the project's direct requirements and its stub (by path, so that
    the lock names it with its sha256) into `output`; SandrunError with uv's words.
    `work` is a root-private directory. The requirements are written as packaging
    renders them (checked when the project was read: no control character, no option,
    no direct reference); the only direct reference is sandrun's own stub."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    requirements = work / f"{strategy}.in"
    lines = [str(Requirement(r)) for r in (*project.dependencies,
                                           *project.test_requirements())]
    lines.append(f"{canonicalize_name(project.name)} @ {stub.as_uri()}")
    requirements.write_text("\n".join(lines) + "\n")
    try:
        proc = subprocess.run(uv_command(strategy, requirements, output, python, request,
                                         exclude_newer),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              cwd=work, timeout=UV_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise _Unresolvable(f"uv did not resolve within {UV_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.rstrip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise _Unresolvable("\n".join(lines[-12:]) or f"uv exited with {proc.returncode}")


class _Unresolvable(SandrunError):
    """The constraints have no solution under a strategy (a finding, not a failure)."""


def direct_names(project: Project) -> tuple[str, ...]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return tuple(dict.fromkeys(canonicalize_name(Requirement(r).name) for r in (
        *project.dependencies, *project.test_requirements())))


def locked_versions(lock: Path, project: Project) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    data = tomllib.loads(lock.read_text("utf-8"))
    own = canonicalize_name(project.name)
    return {canonicalize_name(p["name"]): str(p.get("version", "?"))
            for p in data.get("packages", [])
            if isinstance(p, dict) and "name" in p and canonicalize_name(p["name"]) != own}


def run_matrix(request: TestRequest, strategies: list[str], *,
               exclude_newer: str | None = None, progress: Report = _quiet,
               warn: Report = _quiet, notice: Report = _quiet) -> MatrixOutcome:
    """Resolve, bundle and test every cell (in parallel up to the core count)."""
    if request.target is not None and os.path.isfile(request.target):
        raise UsageError("--matrix resolves a project: give PROJECT, not a bundle",
                         "e.g. sandrun test --matrix highest,lowest-direct .")
    started = time.monotonic()
    root = find_project(request.target)
    project = load_project(root)
    check_project_names(project)
    project.test_requirements()  # no test dependencies: refuse before any work
    apps = {s: test_app_name(project, f"-t{ABBREVIATIONS[s]}") for s in strategies}
    base = test_app_name(project, "")
    for app in apps.values():
        launching.check_tree_access(root, [project.source_dir],
                                    request.exec_fields.get("user"), app)
    uv_binary()
    check_stub(project)  # what uv reads of the project: checked before anything is made
    requested_profile(project)  # a broken profile: refused before anything is made
    pytest_config(root)  # a configuration file root may not read: refused now
    results = make_results_dir(request.results, f"{base}-matrix")
    try:
        return _run_matrix(request, strategies, project, root, apps, results,
                           exclude_newer, started, notice)
    finally:
        results.close()


def _run_matrix(request: TestRequest, strategies: list[str], project: Project, root: Path,
                apps: dict[str, str], results: ResultsDir, exclude_newer: str | None,
                started: float, notice: Report) -> MatrixOutcome:
    store_root = request.exec_fields.get("store")
    if not store_root:
        from sandrun.launch.warm_exec import default_store_root

        store_root = default_store_root()
    # The stub lives in the bundle cache: the same metadata, the same path and bytes, so
    # an unchanged resolution gives the same lock and reuses its cached bundle.
    stubs = cache_dir(store_root) / "stubs"
    stubs.mkdir(mode=0o700, exist_ok=True)
    stub = stub_wheel(project, stubs)
    dirs = {s: results.subdir(s) for s in strategies}
    try:
        cells = [Cell(s, results_dir=dirs[s].path) for s in strategies]
        run_parallel(cells, lambda cell: _run_cell(cell, dirs[cell.strategy], project, stub,
                                                   request, apps[cell.strategy],
                                                   exclude_newer),
                     notice, lambda cell: dirs[cell.strategy].create("output.txt"))
    finally:
        for directory in dirs.values():
            directory.close()
    baseline = "highest" if "highest" in strategies else strategies[0]
    versions = next(c for c in cells if c.strategy == baseline).versions
    for cell in cells:
        if cell.strategy != baseline and cell.versions:
            cell.differs = {name: (cell.versions.get(name), versions.get(name))
                            for name in sorted(set(cell.versions) | set(versions))
                            if cell.versions.get(name) != versions.get(name)}
    outcome = MatrixOutcome(str(root), results.path, cells, baseline,
                            time.monotonic() - started, direct_names(project))
    results.write("matrix.json", (json.dumps(outcome.to_json(), indent=2, sort_keys=True)
                                  + "\n").encode())
    return outcome


def _run_cell(cell: Cell, results: ResultsDir, project: Project, stub: Path,
              request: TestRequest, app: str, exclude_newer: str | None) -> dict[str, Any]:
    """In the cell's process: resolve (uv writes into a root-private directory; the
    results get a copy), bundle (cached by lock), test. Returns the cell."""
    with tempfile.TemporaryDirectory(prefix="sandrun-matrix-") as private:
        return _run_cell_in(cell, results, Path(private), project, stub, request, app,
                            exclude_newer)


def _run_cell_in(cell: Cell, results: ResultsDir, private: Path, project: Project,
                 stub: Path, request: TestRequest, app: str,
                 exclude_newer: str | None) -> dict[str, Any]:
    started = time.monotonic()
    lock = private / "pylock.toml"
    try:
        resolve(project, cell.strategy, stub, private, lock, request, exclude_newer)
        results.write("pylock.toml", lock.read_bytes())
        cell.versions = locked_versions(lock, project)
        cell_request = replace(request, target=str(project.root), capture=True,
                               results=results.path)
        result = run_tests(cell_request, results_dir=results,
                           kind=f"test-{ABBREVIATIONS[cell.strategy]}", app=app, lock=lock)
        cell.result = result.to_json()
        cell.exit_code = result.exit_code
        cell.status = "passed" if result.exit_code == 0 else "failed"
    except _Unresolvable as exc:
        cell.status, cell.exit_code, cell.error = "unresolvable", UNRESOLVABLE, exc.message
    except SandrunError as exc:
        cell.status, cell.exit_code, cell.error = "error", exc.exit_code, exc.diagnostics()
    cell.seconds = time.monotonic() - started
    if cell.status in ("unresolvable", "error"):
        failed = TestResult(exit_code=cell.exit_code, results_dir=results.path,
                            error=cell.error, seconds=cell.seconds)
        write_summary(failed, results)
    return {"status": cell.status, "exit_code": cell.exit_code, "versions": cell.versions,
            "result": cell.result, "seconds": cell.seconds, "error": cell.error}


def run_parallel(cells: list[Cell], body: Callable[[Cell], dict[str, Any]],
                 notice: Report, open_output: Callable[[Cell], int]) -> None:
    """Each cell in a forked process (its stdout and stderr to the cell's output.txt),
    at most one per core at a time; the parent collects what each reports (JSON on a
    pipe). A cell that dies without reporting is an error."""
    limit = max(1, min(len(cells), os.cpu_count() or 1))
    waiting = list(cells)
    running: dict[int, tuple[Cell, int, int, bytearray]] = {}  # read fd -> cell, pid...
    while waiting or running:
        while waiting and len(running) < limit:
            cell = waiting.pop(0)
            read_fd, pid = _fork_cell(cell, body, open_output)
            running[read_fd] = (cell, pid, read_fd, bytearray())
        ready = select.select(list(running), [], [])[0]
        for fd in ready:
            cell, pid, _, buffer = running[fd]
            chunk = os.read(fd, 65536)
            if chunk:
                buffer += chunk
                continue
            os.close(fd)
            del running[fd]
            _pid, status = os.waitpid(pid, 0)
            report: dict[str, Any]
            try:
                report = json.loads(bytes(buffer))
            except ValueError:
                code = os.waitstatus_to_exitcode(status)
                report = {"status": "error", "exit_code": EXIT_REFUSED,
                          "error": f"the cell's process ended ({code}) without a report; "
                                   f"see {Path(cell.results_dir) / 'output.txt'}"}
            for key, value in report.items():
                setattr(cell, key, value)
            notice(f"test: {cell.strategy}: {_cell_line(cell)}")


def _fork_cell(cell: Cell, body: Callable[[Cell], dict[str, Any]],
               open_output: Callable[[Cell], int]) -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return read_fd, pid
    code = EXIT_REFUSED
    try:
        os.close(read_fd)
        output = open_output(cell)  # made anew, relative to the cell's directory fd
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(devnull, 0)  # parallel cells: none of them reads the terminal
        os.close(devnull)
        data = json.dumps(body(cell)).encode()
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(write_fd, data):]
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"sandrun: internal error in the cell: {type(exc).__name__}: "
                             f"{exc}\n")
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _cell_line(cell: Cell) -> str:
    if cell.status in ("unresolvable", "error"):
        first = (cell.error or "").splitlines()[:1]
        return f"{cell.status}: {first[0] if first else ''}"
    r = cell.result
    return (f"{cell.status}: {r.get('passed', 0)} passed, {r.get('failed', 0)} failed, "
            f"{r.get('errors', 0)} errors in {cell.seconds:.1f} s")


def render_table(outcome: MatrixOutcome) -> str:
    """cell | versions that differ from the baseline | passed failed errors | time."""
    rows = [("cell", f"versions (vs {outcome.baseline})", "passed", "failed", "errors",
             "time", "result")]
    for cell in outcome.cells:
        if cell.strategy == outcome.baseline:  # its direct requirements' versions
            versions = ", ".join(f"{k} {v}" for k, v in sorted(cell.versions.items())
                                 if k in outcome.direct) or "-"
        else:
            versions = ", ".join(
                f"{k} {v or '-'} ({b or '-'})" for k, (v, b) in cell.differs.items()) \
                or "same"
        r = cell.result
        rows.append((cell.strategy, versions, str(r.get("passed", "-")),
                     str(r.get("failed", "-")), str(r.get("errors", "-")),
                     f"{cell.seconds:.1f} s", cell.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip()
             for row in rows]
    for cell in outcome.cells:
        if cell.error:
            lines.append(f"{cell.strategy}: {cell.status}:")
            lines += [f"  {line}" for line in cell.error.splitlines()]
        explained = cell.result.get("explanation", []) if cell.status == "failed" else []
        for line in explained[1:]:  # the first says how pytest exited: the table does
            lines.append(f"{cell.strategy}: {line}")
    lines.append(f"results: {outcome.results_dir} (matrix.json; per cell: pylock.toml, "
                 "junit.xml, summary.json, output.txt)")
    return "\n".join(lines)
