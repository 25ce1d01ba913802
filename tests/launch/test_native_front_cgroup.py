"""A refusal by the native front changes nothing on the host: a `sandrun/` cgroup dir that
another user owns refuses the launch (as the Python path does) and is left exactly as it
was. The front runs in a private child of our cgroup v1 memory hierarchy, so that the
planted directory is one nothing else uses."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NOBODY, bundled_app, front_argv

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")

APP_NAME = "nfcgapp"
APP = "def main():\n    print('hi')\n"
PROFILE = """\
extends = "default"
[limits]
memory = 100663296
required = ["memory"]
"""
NATIVE_LINE = re.compile(r"^sandrun: warm start \(native front", re.MULTILINE)
MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


def _own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return MEMORY_ROOT / path.lstrip("/")
    return None


@pytest.fixture(scope="module")
def memory_cgroup(require_root: None) -> Iterator[Path]:
    """A child of our v1 memory cgroup for the launches of this module."""
    own = _own_memory_cgroup()
    if own is None or not (own / "cgroup.procs").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("no cgroup v1 memory hierarchy here: the test cannot run")
        pytest.skip("no cgroup v1 memory hierarchy")
    child = own / f"sandrun-nftest-{os.getpid()}"
    child.mkdir()
    try:
        yield child
    finally:
        planted = child / "sandrun"
        for launch in planted.glob("*/") if planted.is_dir() else []:
            launch.rmdir()
        if planted.is_dir():
            planted.rmdir()
        child.rmdir()


@pytest.fixture(scope="module")
def bundle(require_root: None) -> Iterator[Path]:
    front_argv()  # fails under CI=true (skips otherwise) without the native front
    with bundled_app("sandrun-front-cg-", APP_NAME, APP) as (base, out):
        (base / "p.toml").write_text(PROFILE)
        yield out


def _front_in(cgroup_dir: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    def enter() -> None:
        (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))

    base = bundle.parent
    return subprocess.run(
        front_argv("exec", "-v", "--store", str(base / "store"), "-p", str(base / "p.toml"),
                   str(bundle)),
        cwd=base, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL, preexec_fn=enter)


def test_a_foreign_sandrun_cgroup_dir_refuses_and_stays(memory_cgroup: Path,
                                                        bundle: Path) -> None:
    for _attempt in range(3):  # cold, then warm (another test's useradd may re-cold it)
        proc = _front_in(memory_cgroup, bundle)
        assert proc.returncode == 0, proc.stderr
        if NATIVE_LINE.search(proc.stderr):
            break
    else:
        pytest.fail(f"the front never served the launch: {proc.stderr}")
    planted = memory_cgroup / "sandrun"
    if not planted.exists():
        planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    before = planted.stat()
    proc = _front_in(memory_cgroup, bundle)
    assert proc.returncode == 125, proc.stderr
    assert NATIVE_LINE.search(proc.stderr), proc.stderr  # the front itself refused
    assert "sandrun: error: the memory limit (100663296) cannot be enforced here" in (
        proc.stderr), proc.stderr
    after = planted.stat()
    assert (after.st_ino, after.st_uid, after.st_gid) == (before.st_ino, NOBODY, NOBODY)
    assert [p.name for p in planted.iterdir() if p.is_dir()] == []
