"""Isolation of a privileged launch, on the real kernel as root (issue 11).

Root never follows a link the app planted; everything the app may write is mounted
noexec; /tmp and /var/tmp are fresh per launch; SysV IPC and the host name are the
sandbox's own; SIGKILL of `sandrun exec` takes the whole sandbox down. Attacks run
inside the sandbox (the app below refuses to run as root); the host only sets up and
observes. The world lives under /var/lib, not /tmp: /tmp is private to each launch.

Until the launcher fills in the new RunSpec fields (`writable`, `hostname`,
`tmp_size`), `launch_spec` builds the spec with launcher.prepare + run_spec, fills
them in as the launcher will, and calls runner.launch in a subprocess.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pwd
import shutil
import signal
import socket
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
    fork_and_report,
    need,
    run_sandrun,
    sandrun_argv,
    users_removed_after,
)
from wheelcraft import make_wheel

from sandrun.errors import EnforcementError
from sandrun.launch import runner
from sandrun.sandbox import kernel

LIBRARY = "/usr/lib/x86_64-linux-gnu/libanl.so.1"  # small, and CPython does not load it
MAP_FAILED = "failed to map segment from shared object"
SYMLINK_REFUSED = ("is a symbolic link inside a directory the app or another user can "
                   "write: sandrun does not follow it; remove it")
IPC_CREAT = 0o1000
IPC_RMID = 0

APP_SOURCE = '''\
import ctypes, errno, json, os, shutil, sys, time

LIBRARY = "/usr/lib/x86_64-linux-gnu/libanl.so.1"


def load(path):
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    return "loaded"


def main():
    if os.getuid() == 0 or os.geteuid() == 0:
        print("refusing to run as root"); return 99
    cmd, args = sys.argv[1], sys.argv[2:]
    home = os.environ["HOME"]
    libc = ctypes.CDLL(None, use_errno=True)
    if cmd == "mkdata":
        os.mkdir(os.path.join(home, "data")); print("made"); return 0
    if cmd == "write":  # one line per path: ok or the errno name
        for path in args:
            try:
                with open(path, "w") as f:
                    f.write("x")
                print(path, "ok")
            except OSError as exc:
                print(path, errno.errorcode[exc.errno])
        return 0
    if cmd == "plant":  # the attack: the granted dir becomes a link to /
        data = os.path.join(home, "data")
        shutil.rmtree(data)
        os.symlink("/", data)
        print("planted"); return 0
    if cmd == "cdll":  # write a shared library to each path, then load it
        with open(LIBRARY, "rb") as f:
            code = f.read()
        print(json.dumps({"control": load(LIBRARY)}))
        for path in args:
            with open(path, "wb") as f:
                f.write(code)
            print(json.dumps({path: load(path)}))
        return 0
    if cmd == "shm":  # shm KEY: create a segment and leave it behind
        shmid = libc.shmget(int(args[0]), 4096, 0o1000 | 0o600)
        print("created" if shmid >= 0 else errno.errorcode[ctypes.get_errno()]); return 0
    if cmd == "shm-find":
        for key in args:
            shmid = libc.shmget(int(key), 0, 0)
            print(key, "found" if shmid >= 0 else errno.errorcode[ctypes.get_errno()])
        return 0
    if cmd == "uname":
        print(os.uname().nodename); return 0
    if cmd == "tmp":  # tmp NAME: what /tmp and /var/tmp hold, then leave a file in each
        out = {}
        for d in ("/tmp", "/var/tmp"):
            st = os.stat(d)
            out[d] = {"listing": sorted(os.listdir(d)), "mode": st.st_mode & 0o7777,
                      "uid": st.st_uid}
            with open(os.path.join(d, args[0]), "w") as f:
                f.write("x")
        print(json.dumps(out)); return 0
    if cmd == "fill":  # write 64 KiB chunks to /tmp until it fails; bounded at 64 MiB
        written = 0
        with open("/tmp/fill", "wb") as f:
            try:
                for _ in range(1024):
                    f.write(b"x" * 65536)
                    f.flush()
                    written += 65536
                print("no limit", written)
            except OSError as exc:
                print(errno.errorcode[exc.errno], written)
        return 0
    if cmd == "forks":  # forks N: fork sleeping children until one fails (at most N)
        kids, outcome = [], "no limit"
        for _ in range(int(args[0])):
            try:
                pid = os.fork()
            except OSError as exc:
                outcome = errno.errorcode[exc.errno]
                break
            if pid == 0:
                time.sleep(30); os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.kill(pid, 9); os.waitpid(pid, 0)
        print(outcome, len(kids)); return 0
    if cmd == "hog":  # hog MIB: touch that much memory, 8 MiB at a time
        chunks = []
        for _ in range(int(args[0]) // 8):
            chunks.append(bytearray(8 << 20))
        print("no limit", flush=True); return 0
    if cmd == "tree":  # a child and the app itself, both asleep
        if os.fork() == 0:
            time.sleep(60); os._exit(0)
        print("ready", flush=True); time.sleep(60); return 1
    if cmd == "sleep":
        print("ready", flush=True); time.sleep(60); return 1
    print("unknown command", cmd); return 2
'''

DRIVER = '''\
import json, sys
from sandrun.launch import runner
from sandrun.errors import SandrunError
from sandrun.launch.launcher import ExecOptions, prepare, run_spec

opts = json.loads(sys.argv[1])
try:
    plan = prepare(ExecOptions(bundle=opts["bundle"], args=tuple(opts["args"]),
                               profile=opts.get("profile"), store=opts["store"]))
    spec = run_spec(plan)
    if not spec.writable:  # until the launcher fills it in: what it will put there
        spec.writable = [str(plan.state_dir), *plan.profile.read_write]
    for name, value in opts.get("set", {}).items():
        setattr(spec, name, value)
    code = runner.launch(spec, plan.args)
except SandrunError as exc:
    print(f"sandrun: error: {exc.diagnostics()}", file=sys.stderr)
    code = exc.exit_code
sys.exit(code)
'''


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app user the launches below create goes with the module."""
    with users_removed_after("sandrun-isoapp"):
        yield


@pytest.fixture(scope="module")
def world(require_root: None, require_landlock: int,
          require_seccomp: None) -> Iterator[dict[str, Path]]:
    """A root-owned 0755 dir outside /tmp with a store, the bundle and profiles."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-isolation-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        make_wheel(base / "wheels", "isoapp", "1.0", {"isoapp.py": APP_SOURCE})
        bundle = base / "isoapp.pyz"
        proc = run_sandrun("bundle", "isoapp", "--no-index", "--find-links", str(base / "wheels"),
                           "-e", "isoapp:main", "-o", str(bundle))
        assert proc.returncode == 0, proc.stderr
        grant = base / "grant"  # writable by plain permissions; granted by the profiles below
        grant.mkdir(mode=0o777)
        grant.chmod(0o777)
        grant_file = base / "grant-file.so"
        grant_file.touch()
        grant_file.chmod(0o666)
        drop = base / "drop"  # writable by plain permissions; never granted
        drop.mkdir()
        drop.chmod(0o777)
        profiles = base / "profiles"
        profiles.mkdir()

        def profile(name: str, body: str) -> Path:
            path = profiles / f"{name}.toml"
            path.write_text(f'extends = "default"\ndescription = "isolation test: {name}"\n'
                            + body)
            return path

        made = {
            "base": base, "bundle": bundle, "store": base / "store", "grant": grant,
            "grant_file": grant_file, "drop": drop,
            "data_profile": profile("data", '[filesystem]\nread_write = ["{state}/data"]\n'),
            "grants_profile": profile(
                "grants", f'[filesystem]\nread_write = ["{grant}", "{grant_file}", "/tmp"]\n'),
            "tmp_profile": profile("tmp", '[filesystem]\nread_write = ["/tmp", "/var/tmp"]\n'),
            "nproc_profile": profile("nproc", "[process]\nrlimits = { core = 0, nproc = 6 }\n"),
        }
        # The first launch creates the app user and its state dir.
        first = run_sandrun("exec", "--store", str(made["store"]), str(bundle), "uname")
        assert first.returncode == 0, first.stderr
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def exec_app(world: dict[str, Path], *args: str, profile: Path | None = None,
             extra: tuple[str, ...] = (), **kw: object) -> subprocess.CompletedProcess[str]:
    options = ("-p", str(profile)) if profile else ()
    return run_sandrun("exec", "--store", str(world["store"]), *options, *extra,
                       str(world["bundle"]), *args, **kw)


def launch_spec(world: dict[str, Path], *args: str, profile: Path | None = None,
                **fields: object) -> subprocess.CompletedProcess[str]:
    """runner.launch of the launcher's spec, with `fields` set on it (in a subprocess:
    launch unshares the PID namespace of its caller)."""
    options = {"bundle": str(world["bundle"]), "store": str(world["store"]), "args": args,
               "profile": str(profile) if profile else None, "set": fields}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(options)],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL, cwd=ROOT)


def state_dir(world: dict[str, Path]) -> Path:
    return world["store"] / "state" / "isoapp"


def app_uid() -> int:
    return pwd.getpwnam("sandrun-isoapp").pw_uid


def json_lines(out: str) -> dict[str, object]:
    merged: dict[str, object] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    return merged


# ------------------------------------------------------------------ trusted paths


@pytest.fixture
def paths(require_root: None) -> Iterator[Path]:
    """Root-owned dirs, some writable by others, with links in each."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-paths-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        for name, mode in (("trusted", 0o755), ("trusted2", 0o755), ("open", 0o777),
                           ("sticky", 0o1777), ("group", 0o775), ("user", 0o755)):
            (base / name).mkdir()
            (base / name).chmod(mode)
        os.chown(base / "user", NOBODY, NOBODY)
        (base / "user" / "sub").mkdir()  # root's, but inside nobody's dir
        (base / "trusted2" / "file").write_text("target\n")
        t = base / "trusted"
        (t / "abs").symlink_to("/etc")
        (t / "rel").symlink_to("../trusted2/file")
        (t / "loop").symlink_to("loop")
        (t / "into_open").symlink_to("../open/link")
        (t / "out_of_open").symlink_to("../open/../trusted2/file")
        (t / "nobodys").symlink_to("/etc")
        os.chown(t / "nobodys", NOBODY, NOBODY, follow_symlinks=False)
        for name in ("open", "sticky", "group", "user", "user/sub"):
            (base / name / "link").symlink_to("/etc")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _same_file(fd: int, path: str) -> bool:
    st, want = os.fstat(fd), os.stat(path)
    return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)


def test_root_links_in_root_dirs_are_followed(paths: Path) -> None:
    for given, real in ((f"{paths}/trusted/abs/hostname", "/etc/hostname"),
                        (f"{paths}/trusted/rel", f"{paths}/trusted2/file"),
                        ("/etc/localtime", "/etc/localtime"),
                        (f"{paths}/open", f"{paths}/open")):
        fd = kernel.open_trusted_path(given)
        try:
            assert _same_file(fd, real), given
            assert os.fstat(fd)  # an O_PATH fd: enough for fstat, rules and mounts
        finally:
            os.close(fd)


@pytest.mark.parametrize(("given", "where"), [
    ("open/link", "open/link"),  # world-writable
    ("sticky/link", "sticky/link"),  # sticky does not make it safe: the owner can swap it
    ("group/link", "group/link"),  # group-writable
    ("user/link", "user/link"),  # another user's dir
    ("user/sub/link", "user/sub/link"),  # root's dir, but inside another user's
    ("trusted/into_open", "open/link"),  # a root link into a dir others can write
    ("open/link/hostname", "open/link"),  # a link in the middle of the path
])
def test_links_others_can_change_are_refused(paths: Path, given: str, where: str) -> None:
    with pytest.raises(EnforcementError) as info:
        kernel.open_trusted_path(f"{paths}/{given}")
    assert f"{paths}/{where} {SYMLINK_REFUSED}" in info.value.message


def test_other_paths_refused_or_missing(paths: Path) -> None:
    with pytest.raises(EnforcementError, match="owned by uid 65534"):
        kernel.open_trusted_path(f"{paths}/trusted/nobodys")
    with pytest.raises(EnforcementError, match="leads back out of"):
        kernel.open_trusted_path(f"{paths}/trusted/out_of_open")
    with pytest.raises(EnforcementError, match=r"contains '\.\.'"):
        kernel.open_trusted_path(f"{paths}/trusted/../trusted2/file")
    with pytest.raises(EnforcementError, match="not an absolute path"):
        kernel.open_trusted_path("etc/hostname")
    with pytest.raises(OSError) as loop:
        kernel.open_trusted_path(f"{paths}/trusted/loop")
    assert loop.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        kernel.open_trusted_path(f"{paths}/trusted/missing")
    with pytest.raises(NotADirectoryError):
        kernel.open_trusted_path(f"{paths}/trusted2/file/below")
    with pytest.raises(NotADirectoryError):
        kernel.open_trusted_path(f"{paths}/trusted2/file", directory=True)
    with pytest.raises(IsADirectoryError):
        kernel.open_trusted_path(f"{paths}/trusted2", directory=False)


def test_runspec_new_fields_have_defaults() -> None:
    spec = runner.RunSpec(privileged=True, uid=1, gid=1, user_name="u", interpreter="/p",
                          argv=[], env={}, env_pass=[], env_set={}, cwd="/", state_dir="/s",
                          rlimits=[], mdwe=True, landlock=None, seccomp_bpf=b"")
    assert (spec.writable, spec.hostname, spec.tmp_size, spec.limits) == ([], "sandrun", 0, {})
    again = runner.RunSpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()


# ------------------------------------------------------------------ the app's links


def test_link_planted_in_state_is_refused_cold_and_warm(world: dict[str, Path]) -> None:
    state = state_dir(world)
    data = state / "data"
    canary = world["drop"] / "canary"
    with contextlib.suppress(FileNotFoundError):
        data.unlink()
    shutil.rmtree(data, ignore_errors=True)
    assert exec_app(world, "mkdata").stdout.strip() == "made"
    ok = exec_app(world, "write", f"{data}/ok", profile=world["data_profile"])
    assert ok.returncode == 0 and ok.stdout.split() == [f"{data}/ok", "ok"], ok.stderr
    # Under the profile that grants it, the dir is a mount point (its noexec bind): the
    # app cannot even remove it. A launch under a profile without that grant can.
    busy = exec_app(world, "plant", profile=world["data_profile"])
    assert "Device or resource busy" in busy.stderr and data.is_dir(), busy.stderr
    planted = exec_app(world, "plant")
    assert planted.stdout.strip() == "planted", planted.stderr
    assert data.is_symlink()
    for extra in ((), ("--verify", "full")):  # warm (a record exists), then cold
        proc = exec_app(world, "write", str(canary), profile=world["data_profile"],
                        extra=extra)
        assert proc.returncode == 125, (extra, proc.stdout, proc.stderr)
        assert f"{data} {SYMLINK_REFUSED}" in proc.stderr, proc.stderr
        assert proc.stdout == "" and not canary.exists()
    assert os.readlink(data) == "/", "a refused launch changed the state dir"
    data.unlink()


# ------------------------------------------------------------------ noexec


def test_nothing_the_app_writes_maps_executable(world: dict[str, Path]) -> None:
    state = state_dir(world)
    targets = [f"{state}/lib.so", f"{world['grant']}/lib.so", str(world["grant_file"]),
               "/tmp/lib.so"]
    proc = launch_spec(world, "cdll", *targets, profile=world["grants_profile"])
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc.stdout)
    assert results.pop("control") == "loaded"  # the same library, where root put it
    assert set(results) == set(targets)
    for path, outcome in results.items():
        assert MAP_FAILED in str(outcome), f"{path}: {outcome}"
    # The bytes were written: only the mount stopped them.
    assert world["grant_file"].stat().st_size == Path(LIBRARY).stat().st_size


# ------------------------------------------------------------------ IPC and UTS


def _host_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm") as f:
        return {int(line.split()[0]) for line in f.readlines()[1:] if line.strip()}


def _nobody_creates_shm(key: int) -> None:
    """The control: a segment made on the host by an unprivileged user is listed."""
    def create() -> int:
        return int(ctypes.CDLL(None, use_errno=True).shmget(key, 4096, IPC_CREAT | 0o644))

    assert fork_and_report(create).value >= 0


def _remove_shm(key: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(key, 0, 0)
    if shmid >= 0:
        libc.shmctl(shmid, IPC_RMID, None)


def test_sysv_ipc_is_private_and_dies_with_the_sandbox(world: dict[str, Path]) -> None:
    inside, outside = 0x5A0000 + os.getpid() % 0xFFFF, 0x5B0000 + os.getpid() % 0xFFFF
    try:
        _nobody_creates_shm(outside)
        assert outside in _host_shm_keys()  # the check below is not vacuous
        made = exec_app(world, "shm", str(inside))
        assert made.returncode == 0 and made.stdout.strip() == "created", made.stderr
        assert inside not in _host_shm_keys(), "a segment made in the sandbox outlived it"
        found = exec_app(world, "shm-find", str(inside), str(outside))
        assert found.stdout.split() == [str(inside), "ENOENT", str(outside), "ENOENT"]
    finally:
        _remove_shm(outside)
        _remove_shm(inside)


def test_host_name_is_the_sandboxes(world: dict[str, Path]) -> None:
    proc = exec_app(world, "uname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != socket.gethostname()
    named = launch_spec(world, "uname", hostname="iso-host-test")
    assert named.returncode == 0, named.stderr
    assert named.stdout.strip() == "iso-host-test"
    assert socket.gethostname() != "iso-host-test"


# ------------------------------------------------------------------ private /tmp


def test_tmp_is_fresh_for_every_launch(world: dict[str, Path]) -> None:
    canary = Path(tempfile.mkstemp(prefix="sandrun-host-canary-", dir="/tmp")[1])
    name = f"sandrun-iso-{os.getpid()}"
    try:
        for _ in range(2):
            # started outside /tmp: a cwd inside a granted /tmp would be kept visible
            proc = exec_app(world, "tmp", name, profile=world["tmp_profile"],
                            cwd=world["base"])
            assert proc.returncode == 0, proc.stderr
            seen = json.loads(proc.stdout)
            for d in ("/tmp", "/var/tmp"):
                assert seen[d] == {"listing": [], "mode": 0o700, "uid": app_uid()}, d
                assert not Path(d, name).exists(), f"the app's file reached the host's {d}"
        assert canary.exists()
    finally:
        canary.unlink()


def test_tmp_size_is_limited(world: dict[str, Path]) -> None:
    proc = launch_spec(world, "fill", profile=world["tmp_profile"], tmp_size=1 << 20)
    assert proc.returncode == 0, proc.stderr
    outcome, written = proc.stdout.split()
    assert outcome == "ENOSPC" and int(written) <= 1 << 20


# ------------------------------------------------------------------ die with the launcher


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != b"Z"


def _live_processes_of(uid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid and _alive(int(entry)):
                found.append(int(entry))
    return found


def _start(cmd: list[str], **kw: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        pytest.fail(f"the app did not start: {line!r} {proc.communicate()[1]}")
    return proc


def _wait_until(condition: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def test_sigkill_of_sandrun_exec_kills_the_sandbox(world: dict[str, Path]) -> None:
    uid = app_uid()
    assert not _live_processes_of(uid)
    proc = _start(sandrun_argv("exec", "--store", str(world["store"]), str(world["bundle"]),
                               "tree"))
    try:
        supervisors = _children(proc.pid)
        assert len(supervisors) == 1, supervisors  # the namespace's init, root
        assert os.stat(f"/proc/{supervisors[0]}").st_uid == 0
        assert _wait_until(lambda: len(_live_processes_of(uid)) == 2)  # the app and its child
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_until(lambda: not _live_processes_of(uid) and not _alive(supervisors[0])), (
            f"left running: app user {_live_processes_of(uid)}, "
            f"supervisor alive: {_alive(supervisors[0])}")
    finally:
        proc.kill()
        proc.communicate()


def _non_root_home() -> Path:
    """A copy of sandrun and its dependencies that nobody can import."""
    home = Path(tempfile.mkdtemp(prefix="sandrun-iso-nobody-", dir="/tmp"))
    home.chmod(0o755)
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    deps = home / "deps"
    for pkg in ("click", "packaging", "pyseccomp.py"):
        src = site / pkg
        (shutil.copytree if src.is_dir() else shutil.copy)(src, deps / pkg)
    shutil.copytree(ROOT / "sandrun", deps / "sandrun",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "profiles", deps / "profiles")
    for dirpath, _dirs, files in os.walk(home):
        os.chown(dirpath, NOBODY, NOBODY)
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return home


def test_sigkill_of_unprivileged_sandrun_exec_kills_the_app(world: dict[str, Path]) -> None:
    """Not root (no PID namespace): the app itself carries the parent-death signal."""
    home = _non_root_home()
    try:
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(home / "deps")}
        proc = _start(["/usr/bin/python3", "-m", "sandrun", "exec", str(world["bundle"]),
                       "sleep"], env=env, cwd=str(home), preexec_fn=drop_to_nobody)
        try:
            apps = _children(proc.pid)
            assert len(apps) == 1 and os.stat(f"/proc/{apps[0]}").st_uid == NOBODY, apps
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert _wait_until(lambda: not _alive(apps[0])), "the app outlived sandrun exec"
        finally:
            proc.kill()
            proc.communicate()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_missing_writable_path_is_refused(world: dict[str, Path]) -> None:
    """A writable path that does not exist cannot be mounted noexec: refused, nothing ran."""
    missing = world["base"] / "missing-grant"
    proc = launch_spec(world, "uname", writable=[str(state_dir(world)), str(missing)])
    assert proc.returncode == 125
    assert f"writable path {str(missing)!r} does not exist" in proc.stderr
    assert proc.stdout == "" and not missing.exists()
    assert stat.S_ISDIR(os.lstat(state_dir(world)).st_mode)


# ------------------------------------------------------------------ resource limits


def test_rlimit_nproc_counts_the_app_user(world: dict[str, Path]) -> None:
    """RLIMIT_NPROC is set before the uid switch, so it limits the app user's processes."""
    proc = exec_app(world, "forks", "50", profile=world["nproc_profile"])
    assert proc.returncode == 0, proc.stderr
    outcome, forked = proc.stdout.split()
    assert outcome == "EAGAIN" and 1 <= int(forked) <= 5, proc.stdout  # 6 with the app


def _cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"no {controller} cgroup for {pid}")


def _mount_of(controller: str) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if tail[0] == "cgroup" and controller in tail[2].split(","):
            return fields[4]
    raise AssertionError(f"no cgroup v1 mount for {controller}")


def test_cgroup_limits_apply_and_the_cgroup_goes(world: dict[str, Path]) -> None:
    mine = Path("/proc/self/cgroup").read_text()
    need(all(f":{c}:" in mine for c in ("pids", "memory")),
         "this test reads the launch cgroup through cgroup v1's pids and memory hierarchies")
    tasks = launch_spec(world, "forks", "50", limits={"tasks": 6, "required": ["tasks"]})
    assert tasks.returncode == 0, tasks.stderr
    outcome, forked = tasks.stdout.split()
    assert outcome == "EAGAIN" and 1 <= int(forked) <= 4, tasks.stdout  # init and app count
    hog = launch_spec(world, "hog", "512", limits={"memory": 64 << 20})
    assert hog.returncode == 128 + signal.SIGKILL, (hog.stdout, hog.stderr)  # OOM: the app
    assert "no limit" not in hog.stdout
    # While the app runs it is in the launch cgroup; after it exits the cgroup is gone.
    options = {"bundle": str(world["bundle"]), "store": str(world["store"]),
               "args": ["sleep"], "profile": None, "set": {"limits": {"tasks": 16}}}
    driver = _start([sys.executable, "-c", DRIVER, json.dumps(options)], cwd=ROOT)
    try:
        apps = _live_processes_of(app_uid())
        assert len(apps) == 1, apps
        path = _cgroup_of(apps[0], "pids")
        assert path.endswith(f"/sandrun/sandrun-isoapp-{driver.pid}"), path
        directory = Path(_mount_of("pids") + path)
        assert (directory / "pids.max").read_text().strip() == "16"
        driver.send_signal(signal.SIGTERM)  # forwarded to the app
        assert driver.wait(timeout=20) == 128 + signal.SIGTERM
        assert not directory.exists(), "the launch cgroup outlived the launch"
    finally:
        driver.kill()
        driver.communicate()
