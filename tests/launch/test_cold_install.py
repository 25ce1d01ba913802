"""Cold installs into the store: parallel extraction and compilation, one syncfs, the
store's guarantees under failure (nothing half-written is ever used, no helper process
outlives the install), and progress on a terminal only.

The store tests drive `Store.install` in this process (a root-owned store under
/var/lib, as root, owner 0); the launch tests run `sandrun exec` as the operator does.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bundlecraft import bundle_bytes, default_files
from helpers import (
    background_compiles,
    fork_and_report,
    need,
    run_sandrun,
    sandrun_argv,
    users_removed_after,
    wait_for_background_compiles,
)
from wheelcraft import make_wheel

from sandrun.bundle.archive import parse_archive
from sandrun.bundle.manifest import MANIFEST_NAME
from sandrun.bundle.verify import verify_archive
from sandrun.errors import StoreError
from sandrun.launch import bytecode, store
from sandrun.launch.store import Store

APP_USER = "sandrun-coldtest"
MODULES = 300  # enough sources that an install forks helpers (store._PARALLEL_COST)
# Sources with bytecode: __main__, demo/__init__, demo/core, demo/testing/util and m*.py;
# demo/broken.py does not compile, demo/tests/ is a test suite (not compiled).
COMPILED = MODULES + 4


def many_files() -> dict[str, tuple[bytes, int]]:
    files = default_files()
    for i in range(MODULES):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(40))
        files[f"site-packages/demo/m{i:03}.py"] = (body.encode(), 0o644)
    files["site-packages/demo/broken.py"] = (b"def broken(:\n", 0o644)  # no .pyc
    files["site-packages/demo/tests/test_demo.py"] = (b"def test(): pass\n", 0o644)  # none
    files["site-packages/demo/testing/util.py"] = (b"def helper(): pass\n", 0o644)
    files["site-packages/demo/data.bin"] = (os.urandom(200_000), 0o644)
    return files


@pytest.fixture(scope="module")
def verified(require_root: None) -> tuple[bytes, object, object, bytes]:
    """(bundle bytes, archive, manifest, manifest bytes) of a valid many-module bundle."""
    data = bundle_bytes(many_files())
    archive = parse_archive(data)
    result = verify_archive(archive)
    assert result.ok, result.problems
    manifest_entry = next(e for e in archive.entries if e.name == MANIFEST_NAME)
    return data, archive, result.manifest, archive.read(manifest_entry)


@pytest.fixture
def store_root(require_root: None) -> Iterator[Path]:
    """A fresh store path in a root-owned directory (not /tmp: a store refuses a path
    through a directory others can write)."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-cold-", dir="/var/lib"))
    base.chmod(0o755)
    try:
        yield base / "store"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def install(root: Path, verified: tuple, workers: int, monkeypatch: pytest.MonkeyPatch,
            **kw: object) -> tuple[Store, Path]:
    data, archive, manifest, _ = verified
    monkeypatch.setattr(store, "_worker_count", lambda cost: workers)
    st = Store(root, 0)
    st.ensure_layout()
    tree = st.install(hashlib.sha256(data).hexdigest(), archive, manifest, "3.11"
                      if bytecode.compatible("3.11") else None, **kw)  # type: ignore[arg-type]
    return st, tree


def tree_listing(tree: Path) -> dict[str, tuple[int, int, bytes]]:
    """name -> (mode, uid, content) of everything in a tree; in a .pyc, without the 4
    bytes of its source's mtime and with the tree's path (its code's file names) as
    TREE, which differ between two installs."""
    found = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(tree))
        content = b"" if stat.S_ISDIR(st.st_mode) else path.read_bytes()
        if rel.endswith(".pyc"):
            content = content[:8] + content[12:].replace(str(tree).encode(), b"TREE")
        found[rel] = (st.st_mode, st.st_uid, content)
    return found


def remains(root: Path) -> list[str]:
    apps = root / "apps"
    return sorted(p.name for p in apps.iterdir() if not p.name.endswith(".lock"))


def test_parallel_and_serial_installs_write_the_same_tree(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not bytecode.compatible("3.11"):
        pytest.skip("sandrun's interpreter is not CPython 3.11: no bytecode is written")
    _, _, manifest, manifest_bytes = verified
    serial_store, serial = install(store_root / "one", verified, 1, monkeypatch)
    parallel_store, parallel = install(store_root / "two", verified, 2, monkeypatch)
    assert len(str(serial)) == len(str(parallel))  # marshal records the paths' lengths
    one, two = tree_listing(serial), tree_listing(parallel)
    assert sorted(one) == sorted(two)
    differ = [name for name in one if one[name] != two[name]]
    assert differ == [], [(n, one[n][:2], two[n][:2]) for n in differ[:5]]
    tag = sys.implementation.cache_tag
    pycs = [n for n in one if n.endswith(f".{tag}.pyc")]
    assert len(pycs) == COMPILED
    assert f"site-packages/demo/__pycache__/broken.{tag}.pyc" not in one
    assert f"site-packages/demo/testing/__pycache__/util.{tag}.pyc" in one
    assert "site-packages/demo/tests/__pycache__" not in one
    assert all(one[n][0] & 0o7777 == 0o444 for n in pycs)
    assert one["site-packages/demo/__pycache__"][0] & 0o7777 == 0o555
    assert one["site-packages/demo/bin/tool"][0] & 0o7777 == 0o555
    for st, tree in ((serial_store, serial), (parallel_store, parallel)):
        st.check_tree(tree, manifest, manifest_bytes, full=True, gid=0)  # re-compiles
    # Python loads the bytecode (it matches its source) from the read-only tree.
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", "-B", "-v", "-c",
         f"import sys; sys.path.insert(0, {str(parallel / 'site-packages')!r}); "
         "import demo.m007; print(demo.m007.f7_3(1))"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "10", proc.stderr[-2000:]
    assert re.search(rf"__pycache__/m007\.{tag}\.pyc matches .*/m007\.py", proc.stderr)


def test_one_syncfs_and_no_fsync_per_file(verified: tuple, store_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    syncs: list[int] = []
    real_fsync, real_sync = os.fsync, store._sync_file_system
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(store, "_sync_file_system",
                        lambda fd, final: (syncs.append(fd), real_sync(fd, final))[1])
    install(store_root, verified, 2, monkeypatch)
    assert len(syncs) == 1
    assert len(fsyncs) == 1  # apps/, after the rename


def test_progress_names_what_is_installed(verified: tuple, store_root: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    install(store_root, verified, 2, monkeypatch, progress=lines.append)
    files = len(verified[1].entries)
    size = sum(e.size for e in verified[1].entries) / 1e6
    compiled = bytecode.compatible("3.11")
    assert lines[0] == (f"installing demo 1.0: {files} files, {size:.1f} MB"
                        + (f", compiling {COMPILED + 1} modules on 2 CPUs" if compiled
                           else " on 2 CPUs"))
    assert re.fullmatch(rf"installed demo 1\.0 in \d+\.\d s: {files} files"
                        + (f", {COMPILED} modules compiled" if compiled else ""), lines[1])
    assert len(lines) == 2
    lines.clear()
    install(store_root, verified, 2, monkeypatch, progress=lines.append)  # installed: silent
    assert lines == []


def test_a_failing_helper_fails_the_install_and_leaves_nothing(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installer = os.getpid()
    real = store._TreeWriter.write

    def write(self: store._TreeWriter, index: int) -> None:
        if os.getpid() != installer:
            raise StoreError("cannot write x: No space left on device", "free some space")
        real(self, index)

    monkeypatch.setattr(store._TreeWriter, "write", write)
    with pytest.raises(StoreError, match="failed: cannot write x: No space left") as info:
        install(store_root, verified, 2, monkeypatch)
    assert info.value.hint == "free some space"
    assert remains(store_root) == []
    assert no_children()


def test_a_killed_helper_fails_the_install_and_leaves_nothing(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installer = os.getpid()
    real = store._TreeWriter.write

    def write(self: store._TreeWriter, index: int) -> None:
        if os.getpid() != installer:
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, index)

    monkeypatch.setattr(store._TreeWriter, "write", write)
    with pytest.raises(StoreError, match="helper process was killed by signal 9"):
        install(store_root, verified, 2, monkeypatch)
    assert remains(store_root) == []
    assert no_children()


def test_a_failing_installer_kills_its_helpers_first(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helpers are gone (killed and reaped) before the temp dir is removed: none
    writes into it afterwards, none is left behind."""
    installer = os.getpid()
    real = store._TreeWriter.write
    calls = []

    def write(self: store._TreeWriter, index: int) -> None:
        if os.getpid() == installer:
            calls.append(index)
            if len(calls) == 5:
                raise KeyboardInterrupt
        real(self, index)

    monkeypatch.setattr(store._TreeWriter, "write", write)
    with pytest.raises(KeyboardInterrupt):
        install(store_root, verified, 2, monkeypatch)
    assert no_children()
    time.sleep(0.2)  # a helper still writing would re-create entries
    assert remains(store_root) == []
    _, tree = install(store_root, verified, 2, monkeypatch)  # and the next install works
    assert remains(store_root) == [tree.name]


# ------------------------------------------------------------------ bytecode after the launch


def test_deferred_bytecode_makes_the_same_tree_once_compiled(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """install(defer_bytecode=True) writes the sources only and marks the tree pending;
    compile_bytecode then adds exactly the .pyc files an install writes (same bytes,
    modes, dirs), publishes none before `before_publishing` returns, snapshots the tree
    and drops the mark."""
    need(bytecode.compatible("3.11"), "sandrun's interpreter is not CPython 3.11: no "
         "bytecode is written")
    _, _, manifest, manifest_bytes = verified
    _, inline = install(store_root / "one", verified, 2, monkeypatch)
    deferred_store, deferred = install(store_root / "two", verified, 2, monkeypatch,
                                       defer_bytecode=True)
    sha = deferred.name
    tag = sys.implementation.cache_tag
    assert deferred_store.bytecode_pending(sha)
    assert not [n for n in tree_listing(deferred) if n.endswith(f".{tag}.pyc")]
    deferred_store.check_tree(deferred, manifest, manifest_bytes, full=True)  # valid as is
    seen_before_publishing: list[int] = []
    attempts: list[dict[str, str]] = []
    apps = store_root / "two" / "apps"

    def before_publishing() -> None:
        seen_before_publishing.append(len(list(deferred.rglob(f"*.{tag}.pyc"))))
        temp = next(apps.glob(f".pyc-{sha}-*"))  # the compile's private temp dir
        attempts.append(fork_and_report(lambda: nobody_meddles(apps, temp, sha)).value)

    assert deferred_store.compile_bytecode(sha, manifest, manifest_bytes, "3.11",
                                           before_publishing)
    assert seen_before_publishing == [0]
    # Another user, while the compile works: nothing it could plant or swap is reachable.
    assert attempts == [{"plant in temp dir": "EACCES", "swap the mark": "EACCES",
                         "hold the lock": "EACCES", "add to apps/": "EACCES",
                         "add bytecode to the tree": "EACCES"}]
    assert not deferred_store.bytecode_pending(sha)
    assert deferred_store.tree_matches_snapshot(sha)
    one, two = tree_listing(inline), tree_listing(deferred)
    assert sorted(one) == sorted(two)
    differ = [name for name in one if one[name][:2] != two[name][:2]
              or (name.endswith(".pyc") and one[name][2] != two[name][2])]
    assert differ == [], differ[:5]
    deferred_store.check_tree(deferred, manifest, manifest_bytes, full=True)  # re-compiles
    assert remains(store_root / "two") == [sha]
    # Nothing pending: a second call does nothing.
    assert not deferred_store.compile_bytecode(sha, manifest, manifest_bytes, "3.11")


def nobody_meddles(apps: Path, temp: Path, sha: str) -> dict[str, str]:
    """As nobody (fork_and_report refuses root): try to plant a .pyc in the compile's temp
    dir, replace the pending mark, take the tree's lock, add to apps/ and to the tree."""
    def attempt(action: Callable[[], object]) -> str:
        try:
            action()
            return "ok"
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]

    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
    return {
        "plant in temp dir": attempt(lambda: os.close(os.open(temp / "0", flags, 0o444))),
        "swap the mark": attempt(lambda: os.close(os.open(apps / f".{sha}.bytecode",
                                                          os.O_WRONLY | os.O_TRUNC))),
        "hold the lock": attempt(lambda: os.close(os.open(apps / f".{sha}.lock",
                                                          os.O_RDONLY))),
        "add to apps/": attempt(lambda: os.mkdir(apps / f".pyc-{sha}-1")),
        "add bytecode to the tree": attempt(lambda: os.mkdir(apps / sha / "__pycache__")),
    }


def test_a_compile_that_dies_leaves_the_mark_and_the_next_one_finishes(
        verified: tuple, store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need(bytecode.compatible("3.11"), "sandrun's interpreter is not CPython 3.11: no "
         "bytecode is written")
    _, _, manifest, manifest_bytes = verified
    st, tree = install(store_root, verified, 2, monkeypatch, defer_bytecode=True)

    def killed() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        st.compile_bytecode(tree.name, manifest, manifest_bytes, "3.11", killed)
    assert st.bytecode_pending(tree.name)
    # Its temp dir is gone, the mark is not.
    assert remains(store_root) == [f".{tree.name}.bytecode", tree.name]
    assert st.compile_bytecode(tree.name, manifest, manifest_bytes, "3.11")
    tag = sys.implementation.cache_tag
    assert len(list(tree.rglob(f"*.{tag}.pyc"))) == COMPILED
    assert remains(store_root) == [tree.name]
    assert no_children()


def test_only_a_root_store_defers_and_only_what_it_can_compile(verified: tuple) -> None:
    """Only root adds files to an installed tree (its dirs are 0555 to their owner too);
    no mark without bytecode this interpreter can write, or without a source."""
    manifest = verified[2]
    compatible = "3.11" if bytecode.compatible("3.11") else None
    assert store.defers_bytecode(0, manifest, compatible) is (compatible is not None)
    assert not store.defers_bytecode(1000, manifest, compatible)
    assert not store.defers_bytecode(0, manifest, None)
    assert not store.defers_bytecode(0, manifest, "2.7")


def test_the_bytecode_is_compiled_before_a_launch_that_may_delegate_v2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process left in the launcher's cgroup would stop the launch from enabling v2
    controllers there (no internal processes): such launches compile first."""
    from sandrun.launch import launcher
    from sandrun.sandbox import cgroup

    spec = types.SimpleNamespace(limits={})
    assert not launcher._may_delegate_v2(spec)  # type: ignore[arg-type]
    spec.limits = {"memory": 1 << 26, "required": []}
    for nodes, expected in (([{"version": 1, "delegate": ""}], False),
                            ([{"version": 2, "delegate": ""}], False),
                            ([{"version": 2, "delegate": "memory pids"}], True)):
        monkeypatch.setattr(cgroup, "native_plan", lambda limits, nodes=nodes: ("", nodes))
        assert launcher._may_delegate_v2(spec) is expected  # type: ignore[arg-type]


def test_run_detached_leaves_nothing_of_the_caller(tmp_path: Path) -> None:
    """The detached work runs in its own session, as nobody's child here, on /dev/null,
    with no inherited fd but those kept, SCHED_IDLE, named in ps; the caller returns
    before it ends."""
    report = tmp_path / "report"
    gate_r, gate_w = os.pipe()  # inherited by the fork, closed in the grandchild
    keep_r, keep_w = os.pipe()
    os.set_inheritable(keep_w, True)
    me = os.getpid()

    def work() -> None:
        time.sleep(0.3)
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
        facts = {
            "sid": os.getsid(0) == os.getpid(), "ppid_is_caller": os.getppid() == me,
            "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
            "fds": [fd for fd in fds if fd > 2 and os.path.exists(f"/proc/self/fd/{fd}")
                    and fd != keep_w],
            "kept": keep_w in fds, "idle": os.sched_getscheduler(0) == os.SCHED_IDLE,
            "comm": Path("/proc/self/comm").read_text().strip(),
        }
        partial = report.with_suffix(".partial")
        partial.write_text(json.dumps(facts))
        partial.rename(report)

    started = time.monotonic()
    store.run_detached(work, b"sandrun-compile", keep=(keep_w,))
    assert time.monotonic() - started < 0.25  # it did not wait for the work
    assert no_children()
    os.close(gate_w)
    os.close(keep_w)
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    facts = json.loads(report.read_text())
    os.close(gate_r)
    os.close(keep_r)
    assert facts["sid"] and not facts["ppid_is_caller"]
    assert facts["stdio"] == ["/dev/null"] * 3
    assert facts["kept"] and facts["fds"] == []
    assert facts["idle"] and facts["comm"] == "sandrun-compile"


def no_children() -> bool:
    """Whether this process has no child left (zombie or alive)."""
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == me:
                return False
    return True


# ------------------------------------------------------------------ as the operator runs it


@pytest.fixture(scope="module")
def cold_world(require_root: None, require_landlock: int, require_seccomp: None
               ) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-cold-", dir="/var/lib"))
    base.chmod(0o755)
    wheels = base / "wheels"
    make_wheel(wheels, "coldtest", "1.0", {"coldtest.py":
                                           "def main():\n    print('cold ok')\n    return 0\n"})
    # Enough to write that the install forks helpers without compiling anything (a cold
    # start adds the bytecode after the launch): 600 modules and 16 MB of data.
    bulk = {f"coldbulk/m{i}.py": "".join(f"def f{j}(x):\n    return x + {j}\n\n"
                                         for j in range(60)) for i in range(600)}
    bulk.update({f"coldbulk/data{i}.bin": "\0" * 4_000_000 for i in range(4)})
    make_wheel(wheels, "coldbulk", "1.0", bulk)
    bundle = base / "coldtest.pyz"
    proc = run_sandrun("bundle", "coldtest", "coldbulk", "--no-index", "--find-links",
                       str(wheels), "-e", "coldtest:main", "-o", str(bundle), timeout=300)
    assert proc.returncode == 0, proc.stderr
    with users_removed_after(APP_USER, "sandrun-coldtest"):
        yield {"base": base, "bundle": bundle}
    shutil.rmtree(base, ignore_errors=True)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                found.append(int(entry))
    return found


def test_sigkill_of_the_launcher_mid_install_kills_its_helpers(
        cold_world: dict[str, Path]) -> None:
    """Killed while its helpers write the tree: they die with it (no orphan writes into
    the store), the half-written temp dir is never used, the next launch installs."""
    store_root = cold_world["base"] / "kill-store"
    apps = store_root / "apps"
    proc = subprocess.Popen(sandrun_argv("exec", "--store", str(store_root),
                                         str(cold_world["bundle"])),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helpers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if apps.exists() and list(apps.glob(".tmp-*/site-packages")):
            helpers = children_of(proc.pid)
            if helpers:
                proc.kill()
                break
        time.sleep(0.001)
    proc.wait(30)
    assert helpers, "the launcher finished (or never forked helpers) before it was killed"
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in helpers):
        time.sleep(0.01)
    alive = [p for p in helpers if Path(f"/proc/{p}/stat").exists()
             and Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]
    assert alive == [], f"helpers {alive} outlived the launcher"
    assert [p.name for p in apps.iterdir() if not p.name.startswith(".")] == []
    again = run_sandrun("exec", "--store", str(store_root), str(cold_world["bundle"]),
                        timeout=300)
    assert again.returncode == 0 and "cold ok" in again.stdout, again.stderr
    wait_for_background_compiles()  # the bytecode, added after the launch, in its temp dir
    assert not list(apps.glob(".tmp-*"))
    shutil.rmtree(store_root, ignore_errors=True)


def run_with_stderr_on_a_pty(argv: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run argv with stderr on a new pseudo-terminal (stdout a pipe); (status, stdout,
    what the terminal showed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=slave, cwd="/")
        os.close(slave)
        slave = -1
        shown = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal is gone
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        return proc.returncode, out.decode(), shown.decode("utf-8", "replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_cold_install_shows_progress_on_a_terminal_only(cold_world: dict[str, Path]) -> None:
    bundle = str(cold_world["bundle"])
    on_tty = cold_world["base"] / "tty-store"
    status, out, shown = run_with_stderr_on_a_pty(
        sandrun_argv("exec", "--store", str(on_tty), bundle))
    assert status == 0 and "cold ok" in out, shown
    # The bytecode of a cold start is compiled after the launch (Store.compile_bytecode).
    assert re.search(r"sandrun: installing coldtest 1\.0: \d+ files, [\d.]+ MB, compiling "
                     r"\d+ modules after the launch", shown), shown
    assert re.search(r"sandrun: installed coldtest 1\.0 in [\d.]+ s: \d+ files, \d+ modules "
                     r"to compile after the launch", shown), shown
    # Warm: nothing is installed, nothing said.
    status, out, shown = run_with_stderr_on_a_pty(
        sandrun_argv("exec", "--store", str(on_tty), bundle))
    assert status == 0 and "installing" not in shown and "installed" not in shown, shown
    # Not a terminal: a cold install is quiet.
    piped = run_sandrun("exec", "--store", str(cold_world["base"] / "pipe-store"), bundle,
                        timeout=300)
    assert piped.returncode == 0 and "cold ok" in piped.stdout, piped.stderr
    assert "installing" not in piped.stderr and "installed" not in piped.stderr
    for path in (on_tty, cold_world["base"] / "pipe-store"):
        shutil.rmtree(path, ignore_errors=True)


def test_a_cold_start_compiles_the_bytecode_after_the_launch(
        cold_world: dict[str, Path]) -> None:
    """The app runs before its bytecode is compiled: `sandrun exec` is done, and its
    output closed, while a detached `sandrun-compile` still works on 600 modules; a
    launch meanwhile is served; once it is done the tree has every .pyc and no pending
    mark, and the next start is warm."""
    store_root = cold_world["base"] / "defer-store"
    bundle = str(cold_world["bundle"])
    try:
        first = run_sandrun("exec", "--store", str(store_root), bundle, timeout=300)
        assert first.returncode == 0 and "cold ok" in first.stdout, first.stderr
        sha = hashlib.sha256(cold_world["bundle"].read_bytes()).hexdigest()
        apps = store_root / "apps"
        # The tree's lock was taken before the fork and is held by the compile: the
        # pending tree is never seen without a holder (which would mean abandoned).
        lock = os.open(apps / f".{sha}.lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(lock)
        assert (apps / f".{sha}.bytecode").exists()
        assert background_compiles(), "the bytecode was compiled before the app ran"
        meanwhile = run_sandrun("exec", "--store", str(store_root), bundle, timeout=300)
        assert meanwhile.returncode == 0 and "cold ok" in meanwhile.stdout, meanwhile.stderr
        wait_for_background_compiles()
        assert sorted(p.name for p in apps.iterdir()) == [f".{sha}.lock", sha]
        tag = sys.implementation.cache_tag
        if bytecode.compatible("3.11"):
            assert len(list((apps / sha).glob(f"site-packages/coldbulk/__pycache__/"
                                              f"*.{tag}.pyc"))) == 600
        # Warm: served from the records as the compile left them (none is written again).
        records = {p.name: p.stat().st_mtime_ns for p in (store_root / "launch").iterdir()}
        warm = run_sandrun("exec", "--store", str(store_root), bundle, timeout=300)
        assert warm.returncode == 0 and "cold ok" in warm.stdout, warm.stderr
        assert records == {p.name: p.stat().st_mtime_ns
                           for p in (store_root / "launch").iterdir()}
    finally:
        shutil.rmtree(store_root, ignore_errors=True)
