"""`sandrun dev`, `sandrun test` and `sandrun test --matrix`, run for real as root (and
`sandrun dev` once as nobody, the non-root mode).

The fixture project (fixtures/wronglower) declares libx>=1.0 but calls libx.new(), which
only libx 2.0 has; its app tries to write into its own source tree and reports the errno
it got. Wheels come from a local wheelhouse (libx made here, pytest and click repacked
from this venv): no network. Everything lives in a fresh dir under /srv with its own
store (SANDRUN_STORE), removed afterwards with the users the launches made.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NOBODY, ROOT, drop_to_nobody, run_sandrun, sandrun_argv
from helpers import users_removed_after as removed_after
from wheelcraft import make_wheel
from wheelhouse import local_wheelhouse

FIXTURE = Path(__file__).parent / "fixtures" / "wronglower"
EXAMPLE = ROOT / "examples" / "devproject"
APP = "t-h15dev"  # [tool.sandrun] name of the fixture
EXAMPLE_APP = "t-h15greet"
USERS = (f"sandrun-{APP}", f"sandrun-{APP}-test", f"sandrun-{APP}-th", f"sandrun-{APP}-tld",
         f"sandrun-{EXAMPLE_APP}-test", "sandrun-t-h15hidden", "sandrun-t-h15dyn")
TIMEOUT = 180

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")


def _readable_by_all(top: Path) -> None:
    for current, _dirs, files in os.walk(top):
        os.chmod(current, 0o755)
        for name in files:
            os.chmod(os.path.join(current, name), 0o644)


def _copy(source: Path, dest: Path, tool_name: str | None = None) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if tool_name:
        pyproject = dest / "pyproject.toml"
        text = pyproject.read_text()
        if "[tool.sandrun]" in text:
            text = text.replace(f'name = "{APP}"', f'name = "{tool_name}"')
        else:
            text += f'\n[tool.sandrun]\nname = "{tool_name}"\n'
        pyproject.write_text(text)
    _readable_by_all(dest)
    return dest


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-dev-", dir="/srv"))
    base.chmod(0o755)
    try:
        wheels = local_wheelhouse(base / "wheels", "click")
        make_wheel(wheels, "libx", "1.0", {"libx/__init__.py": "def old():\n    return 1\n"})
        make_wheel(wheels, "libx", "2.0", {"libx/__init__.py": "def old():\n    return 1\n"
                                           "def new():\n    return 2\n"})
        _readable_by_all(base)
        with removed_after(*USERS):
            yield {"base": base, "wheels": wheels, "store": base / "store",
                   "project": _copy(FIXTURE, base / "wronglower")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sandrun(world: dict[str, Any], command: str, *args: str, cwd: Path | None = None,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`sandrun COMMAND --no-index --find-links WHEELS ARGS` with the world's store."""
    return run_sandrun(command, "--no-index", "--find-links", str(world["wheels"]), *args,
                       env={"SANDRUN_STORE": str(world["store"])}, timeout=TIMEOUT,
                       cwd=cwd or world["base"], **kwargs)


def dev_bundles(world: dict[str, Any]) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (world["store"] / "dev").glob("*.pyz")}


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


# ---------------------------------------------------------------- sandrun dev


def test_dev_runs_the_source_read_only(world: dict[str, Any]) -> None:
    proc = sandrun(world, "dev", "wronglower", "--", "you")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello you"
    uid = pwd.getpwnam(f"sandrun-{APP}").pw_uid
    assert lines[1] == f"uid={uid} libx=2"  # the dedicated user; the bundled dependency
    found = report(proc)
    # The app cannot write its code, create files beside it or compile into the tree.
    for probe in ("append-own-file", "create-in-source", "make-pycache", "write-project"):
        assert found[probe] == "EACCES", proc.stdout
    assert not list(world["project"].rglob("__pycache__"))
    assert not (world["project"] / "src" / "wronglower" / "new.py").exists()


def test_an_edit_needs_no_rebuild_a_dependency_change_does(world: dict[str, Any]) -> None:
    assert sandrun(world, "dev", "wronglower", "--", "a").returncode == 0
    before = dev_bundles(world)
    assert len(before) == 1
    assert list((world["store"] / "dev" / "quick").iterdir())  # the next run goes quick
    words = world["project"] / "src" / "wronglower" / "words.py"
    pyproject = world["project"] / "pyproject.toml"
    original = pyproject.read_text()
    try:
        words.write_text('GREETING = "bonjour"\n')
        proc = sandrun(world, "dev", "wronglower", "--", "a")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "bonjour a"
        assert dev_bundles(world) == before  # same bundle, not even rewritten
        pyproject.write_text(original.replace('"libx>=1.0"', '"libx>=1.0", "iniconfig"'))
        proc = sandrun(world, "dev", "wronglower", "--", "a")
        assert proc.returncode == 0, proc.stderr
        after = dev_bundles(world)
        assert len(after) == 1 and after.keys() != before.keys()  # rebuilt, old one gone
    finally:
        words.write_text('GREETING = "hello"\n')
        pyproject.write_text(original)


def test_a_tree_the_app_user_cannot_reach_is_refused(world: dict[str, Any]) -> None:
    private = world["base"] / "private"
    private.mkdir(mode=0o700)
    project = _copy(FIXTURE, private / "hidden", "t-h15hidden")
    bundles = dev_bundles(world)
    proc = sandrun(world, "dev", str(project))
    assert proc.returncode == 125, proc.stderr
    assert "the app user cannot read the project" in proc.stderr
    assert f"cannot enter {private} (root:root 0700)" in proc.stderr
    assert "/srv" in proc.stderr  # the hint says where a project can live
    # Refused before anything was made: no user, no state dir, no bundle.
    assert "sandrun-t-h15hidden" not in Path("/etc/passwd").read_text()
    assert not (world["store"] / "state" / "t-h15hidden").exists()
    assert dev_bundles(world) == bundles


def test_dynamic_dependencies_are_refused(world: dict[str, Any]) -> None:
    project = _copy(FIXTURE, world["base"] / "dynamic", "t-h15dyn")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        'dependencies = ["libx>=1.0"]', 'dynamic = ["dependencies"]'))
    proc = sandrun(world, "dev", str(project))
    assert proc.returncode == 125
    assert "dependencies are dynamic" in proc.stderr and "list them statically" in proc.stderr
    assert "sandrun-t-h15dyn" not in Path("/etc/passwd").read_text()


class Lines:
    """Lines from a pipe, each waited for with a timeout."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                pytest.fail(f"no line within {timeout:.1f} s (got {self.buffer!r})")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                pytest.fail(f"EOF before a line (got {self.buffer!r})")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def until(self, text: str, timeout: float) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout
        while not seen or text not in seen[-1]:
            seen.append(self.next(max(0.1, deadline - time.monotonic())))
        return seen


def test_watch_reruns_on_change(world: dict[str, Any]) -> None:
    words = world["project"] / "src" / "wronglower" / "words.py"
    argv = sandrun_argv("dev", "--no-index", "--find-links", str(world["wheels"]), "--watch",
                        "wronglower", "--", "w")
    env = {**os.environ, "SANDRUN_STORE": str(world["store"])}
    proc = subprocess.Popen(argv, cwd=world["base"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out, err = Lines(proc.stdout.fileno()), Lines(proc.stderr.fileno())
        assert out.next(60) == "hello w"
        assert out.until("write-project", 10)[-1] == "write-project EACCES"
        err.until("for changes", 30)  # the run ended: watching
        timings = []
        for greeting in ("bonjour", "hola"):
            edited = time.monotonic()
            words.write_text(f'GREETING = "{greeting}"\n')
            assert out.next(30) == f"{greeting} w"
            timings.append(time.monotonic() - edited)
            assert out.until("write-project", 10)[-1] == "write-project EACCES"
            err.until("for changes", 30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        print(f"watch: edit -> output {[round(t * 1000) for t in timings]} ms")
    finally:
        words.write_text('GREETING = "hello"\n')
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_dev_as_nobody_runs_as_the_developer_under_landlock(world: dict[str, Any]) -> None:
    """Not root: the documented non-root mode (the app runs as the invoking user, under
    Landlock and seccomp); its own files are still read-only to it."""
    home = world["base"] / "nobody"
    home.mkdir()
    project = _copy(FIXTURE, home / "wronglower")
    for current, _dirs, files in os.walk(home):
        os.chown(current, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(current, name), NOBODY, NOBODY)
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{site}",
           "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(["/usr/bin/python3", "-P", "-m", "sandrun", "dev", "--no-index",
                           "--find-links", str(world["wheels"]), str(project), "--", "me"],
                          env=env, cwd=home, preexec_fn=drop_to_nobody, capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["hello me", f"uid={NOBODY} libx=2"]
    found = report(proc)
    for probe in ("append-own-file", "create-in-source", "make-pycache", "write-project"):
        assert found[probe] == "EACCES", proc.stdout  # Landlock: the owner cannot write
    assert (home / ".cache" / "sandrun" / "dev").is_dir()  # the user's own store


# ---------------------------------------------------------------- sandrun test


def test_test_passes_and_fails_as_pytest_does(world: dict[str, Any]) -> None:
    results = world["base"] / "results-pass"
    proc = sandrun(world, "test", "--json", "--no-explain", "--results", str(results),
                   "wronglower", "--", "-k", "not hostname")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["passed"], result["failed"], result["errors"]) == (2, 0, 0)
    assert result["results_dir"] == str(results) and result["explanation"] == []
    assert Path(result["junit"]) == results / "junit.xml"
    assert 'name="test_needs_new_libx"' in (results / "junit.xml").read_text()
    assert "2 passed" in (results / "output.txt").read_text()  # --json: pytest's output
    assert json.loads((results / "summary.json").read_text())["passed"] == 2
    assert not list(world["project"].rglob(".pytest_cache"))  # no cache, no bytecode
    assert not list(world["project"].rglob("__pycache__"))

    # The whole suite: test_reads_hostname needs a grant the profile does not give.
    results = world["base"] / "results-fail"
    proc = sandrun(world, "test", "--results", str(results), "wronglower")
    assert proc.returncode == 1, proc.stderr
    assert "1 failed, 2 passed" in proc.stdout  # pytest's own output, as it ran
    assert "read /etc/hostname \u2192 [filesystem] read" in proc.stderr  # the denial
    assert "ioctl on the device /dev/null" not in proc.stderr  # pytest's own probes
    assert f"results in {results}" in proc.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert (summary["passed"], summary["failed"], summary["exit_code"]) == (2, 1, 1)


def test_matrix_catches_the_wrong_lower_bound(world: dict[str, Any]) -> None:
    results = world["base"] / "matrix"
    proc = sandrun(world, "test", "--matrix", "highest,lowest-direct", "--results",
                   str(results), "wronglower", "--", "-k", "not hostname")
    assert proc.returncode == 1, proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].split()[:2] == ["cell", "versions"]
    assert table[1].split()[0] == "highest" and table[1].split()[-1] == "passed", (
        proc.stdout + proc.stderr)
    assert table[2].startswith("lowest-direct  libx 1.0 (2.0)"), proc.stdout
    assert table[2].split()[-1] == "failed"
    cells = {c["strategy"]: c for c in json.loads((results / "matrix.json").read_text())[
        "cells"]}
    high, low = cells["highest"], cells["lowest-direct"]
    assert (high["status"], high["passed"], high["failed"]) == ("passed", 2, 0)
    assert (low["status"], low["passed"], low["failed"]) == ("failed", 1, 1)
    assert high["versions"]["libx"] == "2.0" and low["versions"]["libx"] == "1.0"
    assert low["differs"] == {"libx": {"version": "1.0", "baseline": "2.0"}}
    assert 'name = "libx"\nversion = "1.0"' in (results / "lowest-direct" /
                                                "pylock.toml").read_text()
    assert "test_needs_new_libx" in (results / "lowest-direct" / "output.txt").read_text()


# ---------------------------------------------------------------- the example


def test_example_project_tests_pass_in_the_sandbox(world: dict[str, Any]) -> None:
    """examples/devproject: its suite passes under `sandrun test` (one of its tests checks
    that the app cannot write its own code, which only holds in the sandbox)."""
    project = _copy(EXAMPLE, world["base"] / "devproject", EXAMPLE_APP)
    results = world["base"] / "results-example"
    proc = sandrun(world, "test", "-q", "--no-explain", "--results", str(results),
                   str(project))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "3 passed, 0 failed" in proc.stderr
    assert "3 passed" in (results / "output.txt").read_text()  # -q: pytest's output there
