"""The native front (bin/sandrun, native/front.c): a warm `sandrun exec` as root served
without Python, from the record the cold path wrote (native_record.py).

Every test runs the front on the real kernel as root, and compares what it does with
the same launch through the Python warm path (`python -m sandrun`, helpers.python_argv):
the front must behave exactly as that path does — output, exit code, errno of each
denied attempt, signals — and fall back to Python (which then serves the launch as
before) on any change, any word it does not serve, and when not started as root.
Attacks run only inside the sandbox, or as nobody.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import (
    NOBODY,
    bundled_app,
    drop_to_nobody,
    front_argv,
    need,
    python_argv,
    read_within,
    wait_for,
    wait_for_background_compiles,
)

from sandrun.bundle.manifest import MANIFEST_NAME, Manifest
from sandrun.launch import native_record, runner, warm_exec
from sandrun.launch.store import Store
from sandrun.sandbox import cgroup

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")

APP_NAME = "nfapp"
APP_USER = f"sandrun-{APP_NAME}"
RUN_TIMEOUT = 60
KILLED_BY_SIGSYS = 128 + signal.SIGSYS
MEMORY = 96 << 20
TASKS = 32
NATIVE_LINE = re.compile(r"^sandrun: warm start \(native front, record (?P<path>\S+/launch/"
                         r"(?P<name>[0-9a-f]{16})\.native)\)$", re.MULTILINE)

APP = '''\
import ctypes, errno, os, re, signal, sys, time

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        return errno.errorcode[exc.errno]

def main():
    if os.getuid() == 0 or os.geteuid() == 0:
        print("refusing to run as root"); return 99
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("hi", [])
    if cmd == "hi":
        print("hi", os.getuid(), args, sorted(os.environ), flush=True); return 0
    if cmd == "exit":
        return int(args[0])
    if cmd == "signal":
        os.kill(os.getpid(), int(args[0])); time.sleep(5); return 1
    if cmd == "write_tree":
        print("write_tree", attempt(lambda: open(__file__, "a").close()))
        print("create_in_tree", attempt(
            lambda: open(os.path.join(os.path.dirname(__file__), "new.py"), "w").close()))
        return 0
    if cmd == "shadow":
        print("shadow", attempt(lambda: open("/etc/shadow").close())); return 0
    if cmd == "x32":  # an x32 getpid: seccomp kills the process (SIGSYS)
        ctypes.CDLL(None).syscall(0x40000000 | 39)
        print("x32 survived"); return 0
    if cmd == "term":
        # os.write: the signal may come while print("ready") is still in the buffer
        signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"got TERM\\n"), os._exit(42)))
        print("ready", flush=True)
        time.sleep(30); return 1
    if cmd == "cgroup":
        lines = read("/proc/self/cgroup")
        # the launcher's pid differs from launch to launch: not in the output
        print("cgroup", re.sub(r"-[0-9]+$", "-PID", lines, flags=re.M).replace("\\n", " "))
        if lines.isupper():  # an errno name: cannot tell
            return 3
        for line in lines.splitlines():
            _, controllers, path = line.split(":", 2)
            for name, file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
                if name in controllers.split(","):
                    print(file, read(f"/sys/fs/cgroup/{name}{path}/{file}"))
        return 0
    return 2
'''
PROFILE = f'''\
extends = "default"
[filesystem]
optional_read = ["/proc", "/sys/fs/cgroup"]
[limits]
memory = {MEMORY}
tasks = {TASKS}
required = ["memory", "tasks"]
'''


class World(NamedTuple):
    base: Path
    bundle: Path
    store: Path
    profile: Path

    def words(self) -> list[str]:
        """`exec` and its words up to the bundle (the record's key), with -v."""
        return ["exec", "-v", "--store", str(self.store), "-p", str(self.profile),
                str(self.bundle)]


@pytest.fixture(scope="module")
def world(require_root: None) -> Iterator[World]:
    front_argv()  # fails under CI=true (skips otherwise) without the native front
    with bundled_app("sandrun-front-", APP_NAME, APP) as (base, bundle):
        profile = base / "front.toml"
        profile.write_text(PROFILE)
        yield World(base, bundle, base / "store", profile)


def run(argv: list[str], *, cwd: Path, **popen: object) -> subprocess.CompletedProcess[str]:
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          cwd=cwd, check=False, **popen)  # type: ignore[call-overload]


def native_name(proc: subprocess.CompletedProcess[str]) -> str | None:
    """The record name in the front's -v line, None when it did not serve the launch."""
    found = NATIVE_LINE.search(proc.stderr)
    return found["name"] if found else None


def without_native_line(stderr: str) -> str:
    return NATIVE_LINE.sub("", stderr).lstrip("\n")


def expected_name(world: World, cwd: Path | None = None) -> str:
    words = world.words()[1:]
    key = native_record.key_bytes(words, str(world.store), str(cwd or world.base), 0)
    return native_record.record_name(key)


def front(world: World, *app_args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    return run(front_argv(*world.words(), *app_args), cwd=world.base, **popen)


def python(world: World, *app_args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    return run(python_argv(*world.words(), *app_args), cwd=world.base, **popen)


def warm(world: World, *app_args: str) -> subprocess.CompletedProcess[str]:
    """A launch the front served (another test's useradd changes /etc/passwd, which
    sends the launch to the cold path, which writes the record again: retried)."""
    for _attempt in range(3):
        proc = front(world, *app_args)
        if native_name(proc) is not None:
            return proc
    pytest.fail(f"the front never served the launch: {proc.stderr}")


def same_as_python(world: World, *app_args: str) -> subprocess.CompletedProcess[str]:
    """Served by the front, and the same stdout and exit code as the Python path."""
    native = warm(world, *app_args)
    assert native_name(native) == expected_name(world)
    reference = python(world, *app_args)
    assert (native.returncode, native.stdout) == (reference.returncode, reference.stdout), (
        f"front: {native.returncode} {native.stdout!r} {native.stderr!r}\n"
        f"python: {reference.returncode} {reference.stdout!r} {reference.stderr!r}")
    return native


def launch_dirs(pid: int) -> list[Path]:
    """Where the launch cgroup of launcher `pid` is (or was), per node of the plan."""
    _, nodes = cgroup.native_plan({"memory": MEMORY, "tasks": TASKS,
                                   "required": ["memory", "tasks"]})
    return [Path(node["dir"]) / cgroup.PARENT / f"{APP_USER}-{pid}" for node in nodes]


# ---------------------------------------------------------------- served, and the same


COLD_LINE = re.compile(r"^sandrun: cold start, launched by the native front \(record "
                       r"(?P<path>\S+\.native)\)$", re.MULTILINE)


def test_cold_then_warm_through_the_front(world: World) -> None:
    """The cold path (Python: verify, install, decide) writes the record and execs the
    front on it, which launches; the next start is the front's alone."""
    record_dir = world.store / "launch"
    cold = front(world, "hi", "a", "b")
    assert cold.returncode == 0, cold.stderr
    assert native_name(cold) is None  # no record yet: Python's cold path
    assert cold.stdout.startswith("hi ")
    record = record_dir / f"{expected_name(world)}.native"
    found = COLD_LINE.search(cold.stderr)
    assert found is not None and found["path"] == str(record), cold.stderr
    st = record.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    assert record_dir.stat().st_mode & 0o7777 == 0o700
    proc = same_as_python(world, "hi", "c", "--", "d")
    found = NATIVE_LINE.search(proc.stderr)
    assert found is not None and found["path"] == str(record)
    uid = int(proc.stdout.split()[1])
    assert uid != 0 and proc.stdout.startswith(f"hi {uid} ['c', '--', 'd'] ")
    assert without_native_line(proc.stderr) == ""


def test_a_cold_start_the_front_gave_back_is_launched_by_python(world: World) -> None:
    """When the front falls back after the cold path handed it the launch, it leaves
    native_record.COLD_ENV set: Python then launches itself instead of handing the
    launch back (no loop), with the same result."""
    shutil.rmtree(world.store / "launch", ignore_errors=True)  # cold again
    env = {**os.environ, native_record.COLD_ENV: "1"}
    proc = run(python_argv(*world.words(), "hi", "x"), cwd=world.base, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hi ") and "['x']" in proc.stdout
    assert COLD_LINE.search(proc.stderr) is None and native_name(proc) is None
    assert (world.store / "launch" / f"{expected_name(world)}.native").exists()
    cold = front(world, "hi")  # the record it wrote serves the front
    assert native_name(cold) is not None, cold.stderr


def test_the_front_launches_only_the_record_the_cold_path_named(world: World) -> None:
    """With native_record.COLD_ENV set, the front serves only the record it names (the
    cold path names the one it just wrote); another name is a doubt: it falls back,
    leaving the variable set, and Python launches itself."""
    warm(world)  # the record exists
    name = f"{expected_name(world)}.native"
    for value, served in ((name, True), ("0123456789abcdef.native", False)):
        env = {**os.environ, native_record.COLD_ENV: value}
        proc = run(front_argv(*world.words(), "hi", "y"), cwd=world.base, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("hi ") and "['y']" in proc.stdout
        assert native_name(proc) is None  # never "warm start" with the variable set
        assert (COLD_LINE.search(proc.stderr) is not None) == served, proc.stderr


def test_exit_codes_and_signals_pass_through(world: World) -> None:
    for code in ("0", "3", "125", "255"):
        assert same_as_python(world, "exit", code).returncode == int(code)
    for signum in (signal.SIGUSR1, signal.SIGKILL, signal.SIGSEGV):
        proc = same_as_python(world, "signal", str(int(signum)))
        assert proc.returncode == 128 + signum


def test_a_failed_run_is_explained_as_python_explains_it(world: World) -> None:
    """The supervisor the front execs says how a failed run ended (the record's failure
    notes after it), exactly as after the Python paths; nothing after 0 or SIGTERM."""
    advice = ("; to list what the sandbox denied during the run, run it again with "
              "`sandrun exec --explain`")
    for app_args, expected in (
            (["exit", "3"], f"sandrun: the app exited with status 3{advice}\n"),
            (["signal", str(int(signal.SIGSEGV))],
             "sandrun: exit status 139: the app was killed by SIGSEGV: a crash in native "
             "code; under [process] mdwe = true, code that needs writable and executable "
             f"memory (a JIT, ctypes callbacks) cannot get it{advice}\n"),
            (["signal", str(int(signal.SIGTERM))], ""), (["exit", "0"], "")):
        native = same_as_python(world, *app_args)
        reference = python(world, *app_args)
        assert without_native_line(native.stderr) == reference.stderr == expected, app_args


def test_sigterm_to_the_front_reaches_the_app(world: World) -> None:
    """The supervisor replaced the front (same pid): a service manager's SIGTERM to it is
    forwarded to the app, whose exit code comes back."""
    results = []
    for argv in (front_argv(*world.words(), "term"), python_argv(*world.words(), "term")):
        for _attempt in range(3):
            proc = subprocess.Popen(argv, cwd=world.base, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert proc.stdout is not None and proc.stderr is not None
                assert read_within(proc.stdout.fileno(), RUN_TIMEOUT) == b"ready\n"
                exe = os.readlink(f"/proc/{proc.pid}/exe")
                os.kill(proc.pid, signal.SIGTERM)
                status, _ = wait_for(proc.pid, RUN_TIMEOUT)
                stdout, stderr = proc.stdout.read(), proc.stderr.read().decode()
                proc.returncode = os.waitstatus_to_exitcode(status)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]
            if argv[0] != front_argv()[0] or NATIVE_LINE.search(stderr):
                break
        results.append((proc.returncode, stdout, exe))
        if argv[0] == front_argv()[0]:
            assert NATIVE_LINE.search(stderr), stderr
    (native_code, native_out, native_exe), (py_code, py_out, py_exe) = results
    assert (native_code, native_out) == (py_code, py_out) == (42, b"got TERM\n")
    assert native_exe == py_exe == os.path.realpath(runner.SUPERVISOR)


# ---------------------------------------------------------------- enforcement


def test_the_tree_cannot_be_written(world: World) -> None:
    proc = same_as_python(world, "write_tree")
    lines = dict(line.split() for line in proc.stdout.splitlines())
    assert lines["write_tree"] in ("EACCES", "EROFS") and \
        lines["create_in_tree"] in ("EACCES", "EROFS"), lines


def test_etc_shadow_cannot_be_read(world: World) -> None:
    assert same_as_python(world, "shadow").stdout == "shadow EACCES\n"


def test_a_killing_syscall_kills(world: World) -> None:
    proc = same_as_python(world, "x32")
    assert proc.returncode == KILLED_BY_SIGSYS and "survived" not in proc.stdout


def test_cgroup_limits_in_effect_and_removed(world: World) -> None:
    proc = same_as_python(world, "cgroup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert values["memory.limit_in_bytes"] == str(MEMORY)
    assert values["pids.max"] == str(TASKS)
    suffix = f"/{cgroup.PARENT}/{APP_USER}-PID"
    paths = [p for p in values["cgroup"].split() if p.endswith(suffix)]
    assert paths, values["cgroup"]
    # Nothing left of any launch's cgroup under sandrun/ once the launches ended.
    for node in launch_dirs(0):
        parent = node.parent
        left = [p.name for p in parent.iterdir() if p.is_dir()] if parent.exists() else []
        assert not [n for n in left if n.startswith(f"{APP_USER}-")], (parent, left)


def test_the_launch_cgroup_is_the_front_s_and_goes_away(world: World) -> None:
    """Named after the front's pid (runner._cgroup_name), entered by the app, gone after."""
    warm(world)
    proc = subprocess.Popen(front_argv(*world.words(), "term"), cwd=world.base,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert read_within(proc.stdout.fileno(), RUN_TIMEOUT) == b"ready\n"
        dirs = launch_dirs(proc.pid)
        made = [d for d in dirs if d.is_dir()]
        assert made, f"no launch cgroup among {dirs}"
        for directory in made:
            assert (directory / "cgroup.procs").read_text().split(), directory
        os.kill(proc.pid, signal.SIGTERM)
        status, _ = wait_for(proc.pid, RUN_TIMEOUT)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 42
    assert not [d for d in dirs if d.exists()]


# ---------------------------------------------------------------- falling back


def ran_in_python(proc: subprocess.CompletedProcess[str]) -> bool:
    return native_name(proc) is None


def test_a_touched_input_falls_back_then_is_served_again(world: World) -> None:
    warm(world)
    time.sleep(0.01)
    os.utime(world.profile)  # mtime and ctime: the profile is an input
    proc = front(world)
    assert ran_in_python(proc) and proc.returncode == 0 and proc.stdout.startswith("hi ")
    warm(world)  # the cold path wrote the record again


def test_a_changed_tree_falls_back_and_python_decides(world: World) -> None:
    warm(world)
    tree = next(p for p in (world.store / "apps").iterdir() if p.is_dir())
    target = tree / "site-packages" / f"{APP_NAME}.py"
    original = target.read_text()
    times = (target.stat().st_atime_ns, target.stat().st_mtime_ns)  # the bytecode's check
    # Only its ctime changes: Python re-hashes the tree in full and runs it.
    os.chmod(target, target.stat().st_mode & 0o7777)
    proc = front(world)
    assert ran_in_python(proc) and proc.returncode == 0, proc.stderr
    warm(world)
    # Content changed (same size): Python's full check refuses it, the front never ran it.
    modes = {p: p.stat().st_mode & 0o7777 for p in (tree, tree / "site-packages", target)}
    try:
        for directory in (tree, tree / "site-packages"):
            directory.chmod(0o755)
        target.chmod(0o644)
        target.write_text(original.replace('"hi"', '"HI"'))
        os.utime(target, ns=times)
        for path, mode in modes.items():
            path.chmod(mode)
        for argv in (front_argv(*world.words()), python_argv(*world.words())):
            proc = run(argv, cwd=world.base)
            assert ran_in_python(proc) and proc.returncode == 125, proc.stdout + proc.stderr
            assert f"{APP_NAME}.py: content differs from manifest" in proc.stderr
            assert "HI" not in proc.stdout
    finally:
        for directory in (tree, tree / "site-packages"):
            directory.chmod(0o755)
        target.chmod(0o644)
        target.write_text(original)
        os.utime(target, ns=times)
        for path, mode in modes.items():
            path.chmod(mode)
    proc = front(world)  # re-hashed: the original content passes again
    assert proc.returncode == 0, proc.stderr
    warm(world)


def test_a_start_while_the_bytecode_is_compiled_waits_for_it(world: World) -> None:
    """A tree whose bytecode a cold start's detached compile is still adding (pending
    mark, lock held) does not match the record: the front waits for the lock instead of
    falling back at once, then the launch runs, and the next is the front's again."""
    warm(world)
    apps = world.store / "apps"
    tree = next(p for p in apps.iterdir() if p.is_dir() and not p.name.startswith("."))
    manifest_bytes = (tree / MANIFEST_NAME).read_bytes()
    manifest = Manifest.from_bytes(manifest_bytes)
    pyc = tree / "site-packages" / "__pycache__" / f"{APP_NAME}.{sys.implementation.cache_tag}.pyc"
    need(pyc.exists(), "no bytecode in the tree: sandrun's interpreter is not the app's X.Y")
    pyc.unlink()  # as if the compile had not put it there yet
    mark = apps / f".{tree.name}{warm_exec.BYTECODE_PENDING_SUFFIX}"
    mark.touch(0o600)
    waiting: list[subprocess.Popen[str]] = []

    def while_locked() -> None:
        proc = subprocess.Popen(front_argv(*world.words(), "hi", "w"), cwd=world.base,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        waiting.append(proc)
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        assert os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(front_argv()[0])

    try:
        assert Store(world.store, 0).compile_bytecode(tree.name, manifest, manifest_bytes,
                                                      f"{sys.version_info[0]}."
                                                      f"{sys.version_info[1]}", while_locked)
        out, err = waiting[0].communicate(timeout=RUN_TIMEOUT)
        assert waiting[0].returncode == 0 and out.startswith("hi ") and "['w']" in out, err
        assert pyc.exists() and not mark.exists()
        warm(world)
    finally:
        for proc in waiting:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        mark.unlink(missing_ok=True)


@pytest.mark.parametrize("missing_pyc", [False, True])
def test_an_abandoned_bytecode_compile_is_finished_by_the_next_start(
        world: World, missing_pyc: bool) -> None:
    """A pending mark that no compile holds the lock for (it was killed, say by the
    service's stop): the front does not serve the start, the cold path does and starts
    the compile again, which finishes the tree; then the front serves it again."""
    warm(world)
    apps = world.store / "apps"
    tree = next(p for p in apps.iterdir() if p.is_dir() and not p.name.startswith("."))
    pyc = tree / "site-packages" / "__pycache__" / f"{APP_NAME}.{sys.implementation.cache_tag}.pyc"
    need(pyc.exists(), "no bytecode in the tree: sandrun's interpreter is not the app's X.Y")
    if missing_pyc:
        pyc.unlink()  # killed after it published some of the bytecode
    mark = apps / f".{tree.name}{warm_exec.BYTECODE_PENDING_SUFFIX}"
    mark.touch(0o600)
    try:
        proc = front(world, "hi", "z")
        assert proc.returncode == 0 and "['z']" in proc.stdout, proc.stderr
        assert ran_in_python(proc)
        wait_for_background_compiles()
        assert pyc.exists() and not mark.exists()
        warm(world)
    finally:
        mark.unlink(missing_ok=True)


def test_words_the_front_does_not_serve_fall_back(world: World) -> None:
    warm(world)
    base = world.words()
    for words in ([*base[:2], "--no-such-option", *base[2:]],  # click's usage error
                  [*base[:2], "--dry-run", *base[2:]],
                  [*base[:4], "-p=" + str(world.profile), base[-1]],  # click: "=PATH"
                  ["exec", "--help"], ["exec"], ["list", "--store", "x"]):
        native = run(front_argv(*words), cwd=world.base)
        reference = run(python_argv(*words), cwd=world.base)
        assert ran_in_python(native), words
        assert (native.returncode, native.stdout, native.stderr) == (
            reference.returncode, reference.stdout, reference.stderr), words
    assert "Usage: sandrun exec" in run(front_argv("exec", "--help"), cwd=world.base).stdout


def test_other_words_and_another_cwd_have_no_record(world: World, tmp_path: Path) -> None:
    warm(world)
    proc = run(front_argv("exec", "--store", str(world.store), "-v", "-p", str(world.profile),
                          str(world.bundle)), cwd=world.base)  # the same, in another order
    assert ran_in_python(proc) and proc.returncode == 0
    elsewhere = Path(tempfile.mkdtemp(prefix="sandrun-front-cwd-", dir="/var/lib"))
    try:
        elsewhere.chmod(0o755)
        proc = run(front_argv(*world.words()), cwd=elsewhere)
        assert proc.returncode == 0, proc.stderr
        assert ran_in_python(proc)  # the cold path: a record for this cwd now
        proc = run(front_argv(*world.words()), cwd=elsewhere)
        assert native_name(proc) == expected_name(world, elsewhere)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


@pytest.mark.parametrize("tamper", ["appended", "group-readable", "foreign-owner"])
def test_an_untrustworthy_record_falls_back(world: World, tamper: str) -> None:
    warm(world)
    record = world.store / "launch" / f"{expected_name(world)}.native"
    if tamper == "appended":
        with record.open("ab") as f:
            f.write(b"0:,")
    elif tamper == "group-readable":
        record.chmod(0o640)
    else:
        os.chown(record, NOBODY, NOBODY)
    proc = front(world)
    assert ran_in_python(proc) and proc.returncode == 0 and proc.stdout.startswith("hi ")
    record.unlink()
    time.sleep(0.01)
    os.utime(world.profile)  # the cold path then writes a fresh one
    assert front(world).returncode == 0
    warm(world)


@pytest.fixture
def stub_front(world: World) -> Iterator[Path]:
    """A copy of the front next to a `sandrun-py` that only says how it was run (root's,
    in a root-only directory, readable by nobody: the venv's interpreter is not)."""
    directory = Path(tempfile.mkdtemp(prefix="sandrun-front-stub-", dir="/var/lib"))
    try:
        directory.chmod(0o755)
        shutil.copy2(front_argv()[0], directory / "sandrun")
        stub = directory / "sandrun-py"
        stub.write_text('#!/bin/sh\necho "sandrun-py uid=$(id -u) FOO=$FOO"\n'
                        'for word in "$@"; do echo "word $word"; done\n')
        stub.chmod(0o755)
        yield directory / "sandrun"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_not_root_falls_back(world: World, stub_front: Path) -> None:
    """As nobody the front serves nothing, even with a valid record: it execs sandrun-py
    with the same words and environment."""
    warm(world)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "FOO": "bar"}
    words = [*world.words(), "hi", "x y"]
    proc = run([str(stub_front), *words], cwd=world.base, env=env, preexec_fn=drop_to_nobody)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"sandrun-py uid={NOBODY} FOO=bar",
                                        *(f"word {word}" for word in words)]
    assert native_name(proc) is None and proc.stderr == ""
    # As root, the same words are served by the copy, from the same record.
    assert native_name(run([str(stub_front), *words], cwd=world.base)) == expected_name(world)
    # The installed front as nobody: it execs the real sandrun-py, whose interpreter
    # (under /root) nobody cannot run, exactly as running sandrun-py itself fails.
    proc = run(front_argv(*words), cwd=world.base, env=env, preexec_fn=drop_to_nobody)
    sandrun_py = f"{front_argv()[0]}-py"
    assert proc.returncode == 126 and native_name(proc) is None
    assert f"cannot run {sandrun_py}: {os.strerror(errno.EACCES)}" in proc.stderr
    with pytest.raises(PermissionError):
        run([sandrun_py, *words], cwd=world.base, env=env, preexec_fn=drop_to_nobody)


def test_unserved_words_reach_sandrun_py_unchanged(world: World, stub_front: Path) -> None:
    for words in (["exec", "--no-such-option", "--", "a b", ""], ["exec"], ["-V"], []):
        proc = run([str(stub_front), *words], cwd=world.base, env={"FOO": "x"})
        assert proc.stdout.splitlines() == ["sandrun-py uid=0 FOO=x",
                                            *(f"word {word}" for word in words)], words


def test_dash_V_names_the_front(world: World) -> None:
    proc = run(front_argv("-V"), cwd=world.base)
    assert proc.returncode == 0, proc.stderr
    assert f"front:       native ({front_argv()[0]})" in proc.stdout.splitlines()
    reference = run(python_argv("-V"), cwd=world.base).stdout

    def but_python(text: str) -> list[str]:  # sys.executable: python3 vs python
        return [line for line in text.splitlines() if not line.startswith("python:")]

    assert but_python(proc.stdout) == but_python(reference)
