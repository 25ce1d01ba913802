"""`sandrun exec`: store, user, interpreter, exit codes and signals, on the real kernel.

The attack suite lives in test_escape.py; this file checks the launcher's
contract (DESIGN.md: store, exit codes, launch order side effects).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    NOBODY,
    ROOT,
    drop_to_nobody,
    run_sandrun,
    sandrun_argv,
    users_removed_after,
    wait_for_background_compiles,
)
from wheelcraft import make_wheel

from sandrun.bundle.archive import parse_archive

APP_USER = "sandrun-exectest"

APP_SOURCE = '''\
import os, signal, sys, time

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    cmd = sys.argv[1] if len(sys.argv) > 1 else "hello"
    if cmd == "hello":
        print("hello", os.getuid(), os.getcwd()); return 0
    if cmd == "exit":
        return int(sys.argv[2])
    if cmd == "kill":
        os.kill(os.getpid(), int(sys.argv[2])); time.sleep(5); return 1
    if cmd == "env":
        for k in sorted(os.environ): print(f"{k}={os.environ[k]}")
        return 0
    if cmd == "trap":
        def on_signal(signum, frame):  # may interrupt print's flush: no print here
            os.write(1, f"got {signum}\\n".encode()); os._exit(0)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGUSR1, on_signal)
        print("ready", flush=True)
        time.sleep(30); return 1
    if cmd == "attempt":  # things only the sandbox forbids; prints one errno name each
        import errno, socket
        for name, action in (("write", lambda: open(sys.argv[2], "w").close()),
                             ("inet", lambda: socket.socket().close())):
            try:
                action(); print(name, "ok")
            except OSError as exc:
                print(name, errno.errorcode[exc.errno])
        return 0
    if cmd == "sleep":
        print("ready", flush=True); time.sleep(30); return 1
    if cmd == "spawn":
        if os.fork() == 0:
            path = os.path.join(os.environ["HOME"], "orphan")
            for _ in range(300):
                with open(path, "a") as f: f.write("x")
                time.sleep(0.05)
            os._exit(0)
        time.sleep(0.3); print("parent exits", flush=True); return 0
    print("unknown command", cmd); return 2
'''


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app user the launches below create goes with the module."""
    with users_removed_after(APP_USER):
        yield


@pytest.fixture(scope="module")
def world(require_root: None, require_landlock: int,
          require_seccomp: None) -> Iterator[dict[str, Path]]:
    """A 0755 directory (traversable by app users) with a store and a bundle."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-exec-", dir="/tmp"))
    base.chmod(0o755)
    wheels = base / "wheels"
    make_wheel(wheels, "exectest", "2.0", {"exectest.py": APP_SOURCE})
    # Many files make extraction slow enough to interrupt it in the crash test.
    make_wheel(wheels, "bulk", "1.0", {f"bulk/m{i}.py": f"X = {i!r} * 1000\n" * 50
                                       for i in range(400)})
    bundle = base / "exectest.pyz"
    proc = run_sandrun("bundle", "exectest", "bulk", "--no-index", "--find-links", str(wheels),
                       "-e", "exectest:main", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    yield {"base": base, "bundle": bundle, "store": base / "store"}
    shutil.rmtree(base, ignore_errors=True)


def exec_app(world: dict[str, Path], *args: str, store: Path | None = None,
             extra: tuple[str, ...] = (), **kw: object) -> subprocess.CompletedProcess[str]:
    return run_sandrun("exec", "--store", str(store or world["store"]), *extra,
                       str(world["bundle"]), *args, **kw)  # type: ignore[arg-type]


def bundle_sha(world: dict[str, Path]) -> str:
    return hashlib.sha256(world["bundle"].read_bytes()).hexdigest()


def test_runs_as_dedicated_user_with_scrubbed_env(world: dict[str, Path]) -> None:
    proc = exec_app(world, "env", env={"SANDRUN_CANARY": "secret", "TZ": "Europe/Paris"})
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    state = world["store"] / "state" / "exectest"
    assert env == {"HOME": str(state), "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                   "TZ": "Europe/Paris",
                   "PATH": "/usr/local/bin:/usr/bin:/bin"}
    user = pwd.getpwnam(APP_USER)
    assert user.pw_uid != 0 and user.pw_shell.endswith(("nologin", "false"))
    hello = exec_app(world, "hello")
    assert hello.stdout.split()[:3] == ["hello", str(user.pw_uid), str(state)]


def test_store_layout(world: dict[str, Path]) -> None:
    assert exec_app(world, "hello").returncode == 0
    store = world["store"]
    tree = store / "apps" / bundle_sha(world)
    user = pwd.getpwnam(APP_USER)
    top = os.lstat(tree)  # root and the app's group only (test_store_paths.py)
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, user.pw_gid, 0o750)
    for dirpath, _dirnames, filenames in os.walk(tree):
        st = os.lstat(dirpath)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == (0o750 if dirpath == str(tree)
                                                               else 0o555), dirpath
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) in (0o444, 0o555)
    state = os.lstat(store / "state" / "exectest")
    assert state.st_uid == pwd.getpwnam(APP_USER).pw_uid
    assert stat.S_IMODE(state.st_mode) == 0o700
    assert not list((store / "apps").glob(".tmp-*"))


@pytest.mark.parametrize(("args", "code"), [(("exit", "0"), 0), (("exit", "3"), 3),
                                            (("exit", "42"), 42), (("kill", "9"), 137),
                                            (("kill", "15"), 143), (("kill", "6"), 134)])
def test_exit_codes(world: dict[str, Path], args: tuple[str, ...], code: int) -> None:
    assert exec_app(world, *args).returncode == code


def _start(world: dict[str, Path], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(sandrun_argv("exec", "--store", str(world["store"]),
                                         str(world["bundle"]), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signals_reach_the_app(world: dict[str, Path], sig: signal.Signals) -> None:
    proc = _start(world, "trap")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"got {int(sig)}" in out


def test_unhandled_sigterm_kills_with_128_plus_n(world: dict[str, Path]) -> None:
    proc = _start(world, "sleep")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM


def test_nothing_outlives_the_app(world: dict[str, Path]) -> None:
    proc = exec_app(world, "spawn")
    assert proc.returncode == 0, proc.stderr
    marker = world["store"] / "state" / "exectest" / "orphan"
    size = marker.stat().st_size
    time.sleep(0.4)
    assert marker.stat().st_size == size, "a process of the app kept running after it exited"
    uid = pwd.getpwnam(APP_USER).pw_uid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(FileNotFoundError):
            assert os.stat(f"/proc/{pid}").st_uid != uid, f"pid {pid} of the app user survives"


def test_dry_run_changes_nothing(world: dict[str, Path], tmp_path: Path) -> None:
    store = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        proc = run_sandrun("exec", "--dry-run", "--store", str(store), "--user", "nobody",
                           str(world["bundle"]))
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        for words in ("user         nobody", "/usr/bin/python3", "landlock rules",
                      "read+write  " + str(store / "state" / "exectest"),
                      "tcp connect none", "seccomp", "memory-deny-write-execute",
                      "not installed yet", "unsigned"):
            assert words in out, words
        assert not (store / "apps").exists() or not list((store / "apps").iterdir())
    finally:
        shutil.rmtree(store)


def test_tampered_store_is_refused(world: dict[str, Path]) -> None:
    store = world["base"] / "tamper-store"
    assert exec_app(world, "hello", store=store).returncode == 0
    tree = store / "apps" / bundle_sha(world)
    target = tree / "site-packages" / "exectest.py"
    original = target.read_bytes()

    top_mode = tree.stat().st_mode & 0o7777
    tree.chmod(0o755)
    (tree / "site-packages").chmod(0o755)
    try:
        # 1. made writable
        target.chmod(0o666)
        proc = exec_app(world, "hello", store=store)
        assert proc.returncode == 125 and "exectest.py: mode 0666" in proc.stderr
        target.chmod(0o444)
        # 2. extra file (a .pth would run code at start-up)
        extra = tree / "site-packages" / "evil.pth"
        extra.write_text("import os\n")
        extra.chmod(0o444)
        proc = exec_app(world, "hello", store=store)
        assert proc.returncode == 125 and "evil.pth: extra file" in proc.stderr
        extra.unlink()
        # 3. same-size content change: the tree no longer matches its snapshot (ctime), so
        # even the default (cheap) check re-hashes it in full
        target.chmod(0o644)
        target.write_bytes(original.replace(b"refusing", b"REFUSING"))
        target.chmod(0o444)
        (tree / "site-packages").chmod(0o555)
        tree.chmod(top_mode)
        for extra_args in ((), ("--verify", "full")):
            proc = exec_app(world, "hello", store=store, extra=extra_args)
            assert proc.returncode == 125
            assert "exectest.py: content differs from manifest" in proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        shutil.rmtree(store, ignore_errors=True)


def test_concurrent_first_launches_extract_once(world: dict[str, Path]) -> None:
    store = world["base"] / "concurrent-store"
    procs = [subprocess.Popen(sandrun_argv("exec", "--store", str(store), str(world["bundle"]),
                                           "hello"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, results
    wait_for_background_compiles()  # its temp dir is in apps/ while it runs
    apps = sorted(p.name for p in (store / "apps").iterdir() if not p.name.startswith(".")
                  or p.name.startswith(".tmp"))
    assert apps == [bundle_sha(world)]
    shutil.rmtree(store, ignore_errors=True)


def test_crash_during_extraction_leaves_nothing_used(world: dict[str, Path]) -> None:
    """SIGKILL the launcher as soon as its private temp dir appears (mid-extraction)."""
    store = world["base"] / "crash-store"
    apps = store / "apps"
    tree = apps / bundle_sha(world)
    proc = subprocess.Popen(sandrun_argv("exec", "--store", str(store), str(world["bundle"]),
                                         "hello"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if apps.exists() and list(apps.glob(".tmp-*/site-packages")):
            proc.kill()
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the launcher finished before it could be killed"
    assert list(apps.glob(".tmp-*")), "expected a half-written temp dir"
    assert not tree.exists(), "a half-written tree was renamed into place"
    # The next launch neither uses nor trips over the half-written tree.
    again = exec_app(world, "hello", store=store)
    assert again.returncode == 0, again.stderr
    assert tree.is_dir() and not list(apps.glob(".tmp-*"))
    shutil.rmtree(store, ignore_errors=True)


def test_interpreter_unreadable_by_the_user(world: dict[str, Path]) -> None:
    """Like a pyenv Python under /root: a private directory on the way to the interpreter
    is found before dropping privileges and named in the error (exit 126)."""
    private = world["base"] / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    python = private / "python3"
    if not python.exists():
        python.symlink_to("/usr/bin/python3")
    proc = exec_app(world, "hello", extra=("--python", str(python)))
    assert proc.returncode == 126
    assert f"{private} is mode 0700" in proc.stderr
    assert "--python /usr/bin/python3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_interpreter(world: dict[str, Path]) -> None:
    proc = exec_app(world, "hello", extra=("--python", "/nonexistent/python3"))
    assert proc.returncode == 127
    assert "/nonexistent/python3 does not exist" in proc.stderr


@pytest.mark.parametrize(("user", "words"), [
    ("root", "uid or gid 0"),
    ("no-such-user-xyz", "does not exist"),
])
def test_bad_users_are_refused(world: dict[str, Path], user: str, words: str) -> None:
    proc = exec_app(world, "hello", extra=("--user", user))
    assert proc.returncode == 125 and words in proc.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam("no-such-user-xyz")


def test_bad_bundles_are_refused(world: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "link.pyz"
    link.symlink_to(world["bundle"])
    proc = run_sandrun("exec", "--store", str(world["store"]), str(link))
    assert proc.returncode == 125 and "symbolic link" in proc.stderr
    broken = tmp_path / "broken.pyz"
    data = bytearray(world["bundle"].read_bytes())
    data += b"trailing garbage"
    broken.write_bytes(bytes(data))
    proc = run_sandrun("exec", "--store", str(world["store"]), str(broken))
    assert proc.returncode == 125 and "failed verification" in proc.stderr
    proc = run_sandrun("exec", "--store", str(world["store"]), str(tmp_path / "missing.pyz"))
    assert proc.returncode == 125 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bundle_failing_verification_is_refused_as_that_first(
        world: dict[str, Path], tmp_path: Path) -> None:
    """Its entries are hashed by a child while the launch decides the rest: whatever else
    is wrong (here a usage error, exit 2), a bundle that fails verification is refused as
    that, as when it was hashed first; nothing is installed."""
    data = bytearray(world["bundle"].read_bytes())
    archive = parse_archive(bytes(data))
    entry = max(archive.entries, key=lambda e: e.compressed_size)
    data[entry.data_offset + entry.compressed_size // 2] ^= 0xFF  # the zip structure holds
    tampered = tmp_path / "tampered.pyz"
    tampered.write_bytes(bytes(data))
    store = tmp_path / "store"
    proc = run_sandrun("exec", "--store", str(store), "--bind-tcp", "not-a-port",
                       str(tampered))
    assert proc.returncode == 125, proc.stderr
    assert "failed verification" in proc.stderr and entry.name in proc.stderr
    assert "not a TCP port" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (store / "apps").exists() or not any((store / "apps").iterdir())
    # The same words with the intact bundle: the usage error it was hiding.
    proc = run_sandrun("exec", "--store", str(store), "--bind-tcp", "not-a-port",
                       str(world["bundle"]))
    assert proc.returncode == 2 and "not a TCP port" in proc.stderr


def test_non_root_runs_as_invoking_user_under_landlock(world: dict[str, Path]) -> None:
    """Started by an unprivileged user: no uid switch, Landlock and seccomp still apply."""
    home = Path(tempfile.mkdtemp(dir="/tmp"))
    home.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    deps = home / "deps"
    for pkg in ("click", "packaging", "pyseccomp.py"):
        src = site / pkg
        (shutil.copytree if src.is_dir() else shutil.copy)(src, deps / pkg)
    shutil.copytree(ROOT / "sandrun", deps / "sandrun")
    shutil.copytree(ROOT / "profiles", deps / "profiles")
    for dirpath, _dirs, files in os.walk(home):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)

    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(deps)}
    cmd = ["/usr/bin/python3", "-m", "sandrun", "exec", str(world["bundle"])]
    plan = subprocess.run([*cmd[:4], "--dry-run", *cmd[4:]], capture_output=True, text=True,
                          env=env, preexec_fn=drop_to_nobody, cwd=str(home), check=False)
    assert plan.returncode == 0, plan.stderr
    assert "user switch" in plan.stdout and "not enforced" in plan.stdout
    assert "protected by Landlock alone" in plan.stdout
    proc = subprocess.run([*cmd, "hello"], capture_output=True, text=True, env=env,
                          preexec_fn=drop_to_nobody, cwd=str(home), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["hello", "65534"]
    tree = home / ".cache" / "sandrun" / "apps" / bundle_sha(world)
    assert tree.is_dir()  # the user's own store: the tree is the user's alone, read-only
    assert (tree.stat().st_uid, stat.S_IMODE(tree.stat().st_mode)) == (65534, 0o500)
    # HOME belongs to the invoking user, yet the app may not write there (Landlock), and
    # has no network under the default profile (seccomp).
    outside = home / "outside.txt"
    proc = subprocess.run([*cmd, "attempt", str(outside)], capture_output=True, text=True,
                          env=env, preexec_fn=drop_to_nobody, cwd=str(home), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["write EACCES", "inet EPERM"]
    assert not outside.exists()
    shutil.rmtree(home, ignore_errors=True)


def test_user_in_privileged_group_is_refused(world: dict[str, Path]) -> None:
    name = "sandrun-t-admuser"
    with users_removed_after(name):
        subprocess.run(["useradd", "--system", "--no-create-home", "-G", "adm", name],
                       check=False, capture_output=True)
        proc = exec_app(world, "hello", extra=("--user", name))
        assert proc.returncode == 125
        assert "privileged group(s): adm" in proc.stderr


def test_bytecode_is_precompiled_and_checked(world: dict[str, Path]) -> None:
    """Sources get read-only .pyc files at install; a forged one is refused."""
    import importlib.util
    import marshal

    store = world["base"] / "bytecode-store"
    try:
        assert exec_app(world, "hello", store=store).returncode == 0
        wait_for_background_compiles()  # a cold start adds the bytecode after the launch
        site = store / "apps" / bundle_sha(world) / "site-packages"
        tag = sys.implementation.cache_tag
        pyc = site / "__pycache__" / f"exectest.{tag}.pyc"
        assert pyc.stat().st_mode & 0o7777 == 0o444
        assert pyc.parent.stat().st_mode & 0o7777 == 0o555
        assert len(list(site.glob(f"bulk/__pycache__/*.{tag}.pyc"))) == 400
        # Forge: bytecode of other code under the genuine header (source mtime and size).
        forged = compile("print('pwned')", "exectest.py", "exec")
        header = pyc.read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER
        pyc.parent.chmod(0o755)
        pyc.chmod(0o644)
        pyc.write_bytes(header + marshal.dumps(forged))
        pyc.chmod(0o444)
        pyc.parent.chmod(0o555)
        proc = exec_app(world, "hello", store=store)
        assert proc.returncode == 125, proc.stdout
        assert "pwned" not in proc.stdout
        assert f"exectest.{tag}.pyc: bytecode is not the bytecode of its source" in proc.stderr
    finally:
        shutil.rmtree(store, ignore_errors=True)
