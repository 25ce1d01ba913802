"""What the tests share: running the CLI, a probe forked as nobody that reports back, free
ports, and removing the system users tests make.

Import it as `helpers` (tests/conftest.py puts tests/ on sys.path, from any subdirectory).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"  # data of the tests: probe/, profiles/, trust/, osv/, lock/
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

NOBODY = 65534  # uid of nobody and gid of nogroup (Debian)
PR_SET_NO_NEW_PRIVS = 38
CHILD_REFUSED_AS_ROOT = 99  # exit code of a forked probe that was still root
CHILD_CRASHED = 98  # exit code of a forked probe whose body raised

APP_USER_PREFIX = "sandrun-"


def need(condition: bool, why: str) -> None:
    """Skip (or fail under CI=true) when an enforcement prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}: enforcement tests must run in CI", pytrace=False)
    pytest.skip(why)


# ---------------------------------------------------------------- the CLI


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py (a script, not a package) as a module, for its tests."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sandrun_argv(*args: str) -> list[str]:
    """The command line of `sandrun ARGS` from this venv (for Popen). -P: the working
    directory is not put on sys.path, as with the installed `sandrun` command (as root,
    sandrun refuses to import from a directory another user can change).

    With SANDRUN_TEST_FRONT=1: the installed command itself, the native front (.ci/run
    runs the attack suites once more so: every launch they make goes through the front,
    warm ones served by it)."""
    if os.environ.get(FRONT_SWITCH) == "1":
        return front_argv(*args)
    return python_argv(*args)


def python_argv(*args: str) -> list[str]:
    """`python -P -m sandrun ARGS` always: the Python path, for tests that compare the
    native front with it."""
    return [sys.executable, "-P", "-m", "sandrun", *args]


FRONT_SWITCH = "SANDRUN_TEST_FRONT"


FRONT = Path(sys.prefix) / "bin" / "sandrun"  # the installed command (setup.py)


def front_argv(*args: str) -> list[str]:
    """The command line of `sandrun ARGS` through this venv's native front (the C
    program setup.py builds as bin/sandrun). Skips, or fails under CI=true, when
    bin/sandrun is not the front (installed without a C compiler, or not reinstalled)."""
    try:
        with FRONT.open("rb") as f:
            native = f.read(4) == b"\x7fELF"
    except OSError:
        native = False
    need(native, f"{FRONT} is not the native front (reinstall: pip install -e . with gcc)")
    return [str(FRONT), *args]


def run_sandrun(*args: str, env: Mapping[str, str | None] | None = None,
                timeout: float = 120, cwd: str | Path | None = None,
                input: str | None = None, clear_env: bool = False,
                **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run `sandrun ARGS` to completion: output captured as text, exit status returned.

    env: variables set over this process's environment (None removes one); with
    clear_env=True, env is the whole environment. cwd: the repository root unless given,
    wherever pytest was started. stdin is /dev/null unless `input` or `stdin=` is given.
    `timeout` bounds the run: a hang fails the test (TimeoutExpired) instead of stalling
    the suite. Other keywords go to subprocess.run (pass_fds, preexec_fn, umask, ...).
    """
    child_env = {} if clear_env else dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    if input is None:
        popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(sandrun_argv(*args), capture_output=True, text=True, check=False,
                          env=child_env, timeout=timeout, cwd=ROOT if cwd is None else cwd,
                          input=input, **popen)


# ---------------------------------------------------------------- probes forked as nobody


class ProbeAsRoot(Exception):
    """A probe found itself running as root and refused to go on."""


def refuse_root() -> None:
    """Every probe runs this first: attack code never runs as root outside a sandbox."""
    if os.getuid() == 0 or os.geteuid() == 0:
        raise ProbeAsRoot("refusing to run a probe as root")


def drop_to_nobody(*, no_new_privs: bool = False) -> None:
    """Become nobody:nogroup with no supplementary groups, for good (also a preexec_fn).

    Proves the drop (setuid(0) must fail) and, with no_new_privs, sets PR_SET_NO_NEW_PRIVS
    (what Landlock and seccomp need from an unprivileged process)."""
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RuntimeError("setuid(0) worked after dropping to nobody")
    refuse_root()
    if no_new_privs:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def _fork(body: Callable[[], object], *, as_root: bool, no_new_privs: bool) -> int:
    """Fork a child that (unless as_root) drops to nobody, runs body and _exits: 0, or
    CHILD_REFUSED_AS_ROOT, or CHILD_CRASHED with the traceback on stderr. It never
    returns into pytest."""
    pid = os.fork()
    if pid:
        return pid
    code = CHILD_CRASHED
    try:
        if not as_root:
            drop_to_nobody(no_new_privs=no_new_privs)
        body()
        code = 0
    except ProbeAsRoot:
        code = CHILD_REFUSED_AS_ROOT
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def fork_as_nobody(body: Callable[[], object], *, no_new_privs: bool = False) -> int:
    """Start body in a forked child as nobody and return its pid (reap it with wait_for).

    For probes the test drives while they run (e.g. moves into a cgroup first); for
    run-and-report probes use fork_and_report."""
    return _fork(body, as_root=False, no_new_privs=no_new_privs)


class ChildReport(NamedTuple):
    """What a forked probe reported: body's return value through JSON (None when the
    child died before reporting, e.g. killed by seccomp) and its wait status."""

    value: Any
    status: int

    @property
    def exit_code(self) -> int:
        """As subprocess has it: the exit status, or -N when killed by signal N."""
        return os.waitstatus_to_exitcode(self.status)


def fork_and_report(body: Callable[[], Any], *, no_new_privs: bool = False,
                    timeout: float = 30.0, as_root: bool = False) -> ChildReport:
    """Fork; the child drops to nobody, refuses to go on as root, runs body and sends what
    it returns (JSON) back over a pipe.

    The test fails if the child refused to run as root, if body raised (with the child's
    traceback) or if the child outlived `timeout` (then it is SIGKILLed). as_root=True
    skips the drop: only for sandrun's own privileged code, never for an attack probe.
    """
    read_end, write_end = os.pipe()

    def report() -> None:
        os.close(read_end)
        try:
            payload = {"value": body()}
        except BaseException:
            payload = {"error": traceback.format_exc()}
        data = json.dumps(payload).encode()
        while data:
            data = data[os.write(write_end, data):]
        if "error" in payload:
            os._exit(CHILD_CRASHED)

    pid = _fork(report, as_root=as_root, no_new_privs=no_new_privs)
    os.close(write_end)
    started = time.monotonic()
    try:
        data = _read_until_eof(read_end, started + timeout)
    finally:
        os.close(read_end)
    status, _ = wait_for(pid, timeout, started=started)
    payload = json.loads(data) if data else {}
    if "error" in payload:
        pytest.fail(f"the probe raised in the child:\n{payload['error']}")
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if exit_code == CHILD_REFUSED_AS_ROOT:
        pytest.fail("the probe was still root after dropping to nobody: it refused to run")
    if exit_code == CHILD_CRASHED:
        pytest.fail("the child failed before the probe ran (its traceback is on stderr)")
    return ChildReport(payload.get("value"), status)


def _read_until_eof(fd: int, deadline: float) -> bytes:
    """All a pipe gives until EOF or the deadline (a grandchild may hold the write end)."""
    chunks = []
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(pid: int, timeout: float, *, started: float | None = None
             ) -> tuple[int, float]:
    """(wait status, CPU seconds) of child `pid`; SIGKILL it and fail `timeout` seconds
    after `started` (a time.monotonic() value; default now)."""
    deadline = (time.monotonic() if started is None else started) + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} still running after {timeout:.1f} s")


def read_within(fd: int, timeout: float, until: bytes = b"\n") -> bytes:
    """Read from a pipe until `until` (or EOF), failing after `timeout` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"nothing from the child within {timeout} s (got {data!r})")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


# ---------------------------------------------------------------- ports


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing holds now (the kernel picks
    them: bind to port 0). Another program could take one before the test binds it, but
    unlike a fixed port it is never one a service already listens on."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now (see free_ports)."""
    return free_ports(1)[0]


# ---------------------------------------------------------------- system users


COMPILE_TITLE = "sandrun-compile"  # the comm of a cold start's detached bytecode compile


def background_compiles() -> list[int]:
    """Pids of the bytecode compiles cold starts left running (store.run_detached)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat_line[stat_line.index("(") + 1:stat_line.rindex(")")]
            state = stat_line.rpartition(")")[2].split()[0]
            if comm == COMPILE_TITLE and state != "Z":
                found.append(int(entry))
    return found


def wait_for_background_compiles(timeout: float = 120) -> None:
    """Wait (bounded) until no cold start's bytecode compile runs: what a test checks
    of a store, removes or times next must not race it."""
    deadline = time.monotonic() + timeout
    while background_compiles():
        if time.monotonic() > deadline:
            raise AssertionError(f"bytecode compiles still running after {timeout} s: "
                                 f"{background_compiles()}")
        time.sleep(0.01)


def _names_in(path: str) -> set[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return {line.split(":", 1)[0] for line in f if ":" in line}


def local_users() -> set[str]:
    """User names in /etc/passwd (where useradd writes; not NSS)."""
    return _names_in("/etc/passwd")


def local_groups() -> set[str]:
    """Group names in /etc/group."""
    return _names_in("/etc/group")


def user_exists(name: str) -> bool:
    return name in local_users()


def remove_user(name: str) -> list[str]:
    """userdel NAME, then groupdel NAME (its user group, should userdel leave it).
    Absent ones are fine; returns what could not be removed, with the reason."""
    failed = []
    if user_exists(name):
        proc = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            failed.append(f"user {name}: {proc.stderr.strip()}")
    if name in local_groups():
        proc = subprocess.run(["groupdel", name], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            failed.append(f"group {name}: {proc.stderr.strip()}")
    return failed


@contextlib.contextmanager
def users_removed_after(*names: str) -> Iterator[None]:
    """On exit, remove each named user (and its group) that did not exist on entry: what
    the tests inside made, never an account that was there before."""
    existed = local_users() & set(names)
    try:
        yield
    finally:
        for name in names:
            if name not in existed:
                remove_user(name)


@contextlib.contextmanager
def bundled_app(prefix: str, app_name: str, source: str) -> Iterator[tuple[Path, Path]]:
    """(a scratch dir, the bundle in it): a dir under /var/lib (root's, 0755: a store may
    live in it) holding APP_NAME.pyz, one module `source` with the entry point
    APP_NAME:main; the dir and the app user sandrun-APP_NAME are removed afterwards."""
    import shutil
    import tempfile

    from wheelcraft import make_wheel

    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/lib"))
    base.chmod(0o755)
    try:
        with users_removed_after(f"{APP_USER_PREFIX}{app_name}"):
            make_wheel(base / "wheels", app_name, "1.0", {f"{app_name}.py": source})
            bundle = base / f"{app_name}.pyz"
            proc = subprocess.run(
                python_argv("bundle", app_name, "--no-index", "--find-links",
                            str(base / "wheels"), "-e", f"{app_name}:main", "-o", str(bundle)),
                cwd=base, capture_output=True, text=True, timeout=120, check=False,
                stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr
            yield base, bundle
    finally:
        shutil.rmtree(base, ignore_errors=True)


def app_accounts() -> tuple[set[str], set[str]]:
    """The sandrun-* users and groups in /etc/passwd and /etc/group."""
    return ({n for n in local_users() if n.startswith(APP_USER_PREFIX)},
            {n for n in local_groups() if n.startswith(APP_USER_PREFIX)})


def remove_app_accounts_made_since(users: Iterable[str], groups: Iterable[str]
                                   ) -> tuple[list[str], list[str]]:
    """Remove every sandrun-* user and group not in `users`/`groups` (the ones present
    before). Returns (removed, failures)."""
    now_users, now_groups = app_accounts()
    made = sorted((now_users - set(users)) | (now_groups - set(groups)))
    failures = []
    for name in made:
        failures += remove_user(name)
    return made, failures


def other_test_sessions() -> list[int]:
    """pids of pytest processes other than this one and its parents: a concurrent session
    may still use the users it made."""
    mine = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            break
        pid = int(stat.rsplit(b")", 1)[1].split()[1])
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if int(entry) in mine:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _runs_pytest(argv):
            found.append(int(entry))
    return found


def _runs_pytest(argv: list[bytes]) -> bool:
    """`pytest ...`, `python .../bin/pytest ...` or `python ... -m pytest ...`."""
    names = [os.path.basename(arg) for arg in argv[:2]]
    if any(name in (b"pytest", b"py.test") for name in names):
        return True
    return any(pair == (b"-m", b"pytest") for pair in itertools.pairwise(argv))
