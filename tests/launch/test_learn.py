"""`sandrun learn`: a profile learned from one observed run replays under enforcement.

The app below does things the default profile denies (reads a file in /var/lib, connects
to a loopback port, runs /bin/true) and things it allows (writes its state dir); `learn`
must grant exactly the first ones, `exec -p` must then run it, the default profile must
still refuse it, and `learn --check` must say which. The app runs only in the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, run_sandrun, sandrun_argv, users_removed_after
from wheelcraft import make_wheel

from sandrun.config.profile import load_profile
from sandrun.launch import learn as learning
from sandrun.sandbox import notify, seccomp

APP_USER = "sandrun-learntest"
ABSENT = "/nonexistent-sandrun-probe/app.conf"
# A grant names the inode a Landlock rule holds: /bin is a link to usr/bin on Debian 12.
TRUE = os.path.realpath("/bin/true")

APP_SOURCE = f'''\
import os, signal, socket, subprocess, sys, time

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    cmd = sys.argv[1]
    if cmd == "all":
        data, port = sys.argv[2], int(sys.argv[3])
        with open(data) as f:
            print("read", f.read().strip())
        try:
            open({ABSENT!r}).close()
        except FileNotFoundError:
            print("probe absent")
        with open(os.path.join(os.environ["HOME"], "state.txt"), "w") as f:
            f.write("x")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"hi")
        print("true", subprocess.run(["/bin/true"]).returncode)
        return 0
    if cmd == "serve":
        signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
        srv = socket.socket()
        srv.bind(("127.0.0.1", int(sys.argv[2])))
        srv.listen(1)
        print("ready", flush=True)
        for _ in range(600):
            time.sleep(0.1)
        return 1
    if cmd == "wide":
        directory, out = sys.argv[2], sys.argv[3]
        for i in range(5):
            with open(os.path.join(directory, f"f{{i}}.txt")) as f:
                f.read()
        with open(out, "w") as f:
            f.write("x")
        try:
            open("/etc/shadow").close()
        except PermissionError:
            print("shadow denied")
        os.close(os.memfd_create("learn"))
        print("wide done")
        return 0
    print("unknown command", cmd); return 2
'''


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    with users_removed_after(APP_USER):
        yield


@pytest.fixture(scope="module")
def world(require_root: None, require_landlock: int,
          require_seccomp: None) -> Iterator[dict[str, Path]]:
    """A bundle and store in a 0755 dir of /tmp; data in a 0755 dir of /var/lib."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-learn-", dir="/tmp"))
    base.chmod(0o755)
    data = Path(tempfile.mkdtemp(prefix="sandrun-learn-", dir="/var/lib"))
    data.chmod(0o755)
    try:
        (data / "data.txt").write_text("learned data\n")
        (data / "data.txt").chmod(0o644)
        wheels = base / "wheels"
        make_wheel(wheels, "learntest", "1.0", {"learntest.py": APP_SOURCE})
        bundle = base / "learntest.pyz"
        proc = run_sandrun("bundle", "learntest", "--no-index", "--find-links", str(wheels),
                           "-e", "learntest:main", "-o", str(bundle))
        assert proc.returncode == 0, proc.stderr
        yield {"base": base, "bundle": bundle, "store": base / "store", "data": data}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def listener(port: int = 0) -> Iterator[int]:
    """A loopback TCP server (on `port`, else a free one) that accepts and reads."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port or free_port()))
    srv.listen(8)
    srv.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(16)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        srv.close()


def sandrun(world: dict[str, Path], command: str, *args: str,
            **kw: object) -> subprocess.CompletedProcess[str]:
    return run_sandrun(command, "--store", str(world["store"]), *args,
                       **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def learned(world: dict[str, Path]) -> dict[str, object]:
    """`sandrun learn -o` of the `all` workload, and the port it connected to."""
    profile = world["base"] / "learned.toml"
    with listener() as port:
        proc = sandrun(world, "learn", "-o", str(profile), str(world["bundle"]), "--",
                       "all", str(world["data"] / "data.txt"), str(port))
    return {"proc": proc, "profile": profile, "port": port}


def test_learn_grants_exactly_what_the_run_needed(world: dict[str, Path],
                                                  learned: dict[str, object]) -> None:
    proc = learned["proc"]
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "read learned data" in proc.stdout and "true 0" in proc.stdout
    data, port = str(world["data"] / "data.txt"), learned["port"]
    # The diff on stdout: exactly the added grants.
    assert f"+ filesystem.read: {data}" in proc.stdout
    assert f"+ network.connect_tcp: {port}" in proc.stdout
    assert f"+ filesystem.execute: {TRUE}" in proc.stdout
    assert "+ process.subprocess: true" in proc.stdout
    assert proc.stdout.count("\n  + ") == 4, proc.stdout

    profile_path = learned["profile"]
    assert isinstance(profile_path, Path)
    text = profile_path.read_text()
    # Probed but absent: mentioned in a comment, granted nowhere.
    assert "/nonexistent-sandrun-probe" not in repr(tomllib.loads(text))
    assert f"e.g. {ABSENT}" in text
    assert "REVIEW: runs a program" in text
    got, default = load_profile(str(profile_path)), load_profile("default")
    assert got.read == (data,)
    assert got.connect_tcp == (port,)
    assert got.execute == (TRUE,)
    assert got.subprocess is True
    # Everything else is the default profile's, flattened.
    same = ("optional_read", "read_write", "bind_tcp", "dns", "unix_sockets", "fork", "mdwe",
            "env_pass", "env_set", "rlimits", "syscalls_allow", "syscalls_deny",
            "landlock_min_abi", "limits", "limits_required")
    assert {k: getattr(got, k) for k in same} == {k: getattr(default, k) for k in same}
    assert "extends" not in tomllib.loads(text)  # complete: self-contained


def test_learned_profile_passes_check_and_runs(world: dict[str, Path],
                                               learned: dict[str, object]) -> None:
    profile = str(learned["profile"])
    check = run_sandrun("profile", "check", profile)
    assert check.returncode == 0, check.stderr
    data = str(world["data"] / "data.txt")
    args = ("all", data, str(learned["port"]))
    # The learned port is a fixed grant: replay against a server on that port.
    with listener(int(str(learned["port"]))):
        proc = sandrun(world, "exec", "-p", profile, str(world["bundle"]), "--", *args)
        assert proc.returncode == 0, proc.stderr
        assert "read learned data" in proc.stdout and "true 0" in proc.stdout
        replay = sandrun(world, "learn", "--check", profile, str(world["bundle"]), "--", *args)
        assert replay.returncode == 0, replay.stderr
        assert "OK: the app succeeded and nothing was denied" in replay.stderr
        # Under the plain default profile the same run is denied: the read first (EACCES).
        plain = sandrun(world, "exec", str(world["bundle"]), "--", *args)
        assert plain.returncode == 1
        assert f"PermissionError: [Errno 13] Permission denied: '{data}'" in plain.stderr
        denied = sandrun(world, "learn", "--check", "default", str(world["bundle"]), "--",
                         *args)
        assert denied.returncode == 1
        assert f"denied: filesystem read: {data}" in denied.stderr
        assert "FAILED" in denied.stderr
        # Without the port: the socket itself is denied (EPERM), and --check says so.
        portless = world["base"] / "portless.toml"
        portless.write_text(f'extends = "default"\n[filesystem]\nread = ["{data}"]\n'
                            'execute = ["/bin/true"]\n[process]\nsubprocess = true\n')
        nosocket = sandrun(world, "learn", "--check", str(portless), str(world["bundle"]),
                           "--", *args)
        assert nosocket.returncode == 1
        assert "denied: socket(AF_INET, SOCK_STREAM): EPERM unless the profile sets " \
            "network.connect_tcp or bind_tcp" in nosocket.stderr


def test_operator_grants_go_into_the_profile(world: dict[str, Path]) -> None:
    data = str(world["data"] / "data.txt")
    profile = world["base"] / "granted.toml"
    with listener() as port:
        proc = sandrun(world, "learn", "--read", data, "--connect-tcp", str(port),
                       "-e", "SECRET_TOKEN=hunter2", "-o", str(profile),
                       str(world["bundle"]), "--", "all", data, str(port))
    assert proc.returncode == 0, proc.stderr
    assert "+ filesystem.read" not in proc.stdout  # granted, not learned
    assert "+ network.connect_tcp" not in proc.stdout
    assert "not written into the profile" in proc.stderr
    got = load_profile(str(profile))
    assert got.read == (data,) and got.connect_tcp == (port,)
    assert got.execute == (TRUE,)
    assert "hunter2" not in profile.read_text() and "SECRET_TOKEN" not in got.env_set


def test_server_is_learned_until_sigterm(world: dict[str, Path]) -> None:
    profile = world["base"] / "server.toml"
    port = free_port()
    proc = subprocess.Popen(sandrun_argv("learn", "--store", str(world["store"]), "-o",
                                         str(profile), str(world["bundle"]), "serve",
                                         str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)  # to sandrun learn: forwarded to the app
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"+ network.bind_tcp: {port}" in out
    got = load_profile(str(profile))
    assert got.bind_tcp == (port,) and got.connect_tcp == () and got.read == ()


def test_collapse_review_and_what_is_not_granted(world: dict[str, Path]) -> None:
    many = world["data"] / "many"
    many.mkdir()
    many.chmod(0o755)
    for i in range(5):
        (many / f"f{i}.txt").write_text(str(i))
    outdir = world["data"] / "out"
    outdir.mkdir()
    outdir.chmod(0o777)  # the app user may write here: only Landlock stands in the way
    profile = world["base"] / "wide.toml"
    args = ("wide", str(many), str(outdir / "written.txt"))
    proc = sandrun(world, "learn", "-o", str(profile), str(world["bundle"]), "--", *args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "shadow denied" in proc.stdout and "wide done" in proc.stdout
    got = load_profile(str(profile))
    assert got.read == (str(many),)  # five files of one directory: the directory
    assert got.read_write == ("{state}", str(outdir))  # the new file's directory
    assert got.syscalls_allow == ("memfd_create",)
    text = profile.read_text()
    assert "REVIEW: writes outside {state}" in text
    assert f"REVIEW: {seccomp.DANGEROUS['memfd_create']}" in text
    # /etc/shadow: Unix permissions deny it to the app user, so no grant would help.
    assert "/etc/shadow" not in got.read
    assert "read /etc/shadow: Unix permissions deny it" in proc.stdout
    (outdir / "written.txt").unlink()
    run = sandrun(world, "exec", "-p", str(profile), str(world["bundle"]), "--", *args)
    assert run.returncode == 0, run.stderr
    assert "wide done" in run.stdout


def test_learn_refuses_what_exec_refuses(world: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "never.toml"
    proc = sandrun(world, "learn", "-p", str(tmp_path / "missing.toml"), "-o", str(output),
                   str(world["bundle"]), "--", "all")
    assert proc.returncode == 125
    assert "missing.toml" in proc.stderr and not output.exists()
    usage = sandrun(world, "learn", "--check", "default", "-o", str(output),
                    str(world["bundle"]))
    assert usage.returncode == 2


def test_learn_and_explain_name_the_same_path(world: dict[str, Path],
                                              require_landlock: int) -> None:
    """An app opening a link (root's, in root's directory) needs the file it leads to: a
    Landlock rule holds that inode, and the kernel's record of the denial names it. learn
    grants it by that name and `exec --explain` reports it by that name."""
    if require_landlock < 7:
        pytest.skip("Landlock ABI 7 (audit logging) is needed to explain denials")
    data = world["data"]
    real = data / "linked-target.txt"
    real.write_text("linked data\n")
    real.chmod(0o644)
    link = data / "link.txt"
    link.symlink_to(real.name)
    profile = world["base"] / "linked.toml"
    with listener() as port:
        args = ("all", str(link), str(port))
        learned = sandrun(world, "learn", "--connect-tcp", str(port), "-o", str(profile),
                          str(world["bundle"]), "--", *args)
        assert learned.returncode == 0, learned.stderr + learned.stdout
        assert f"+ filesystem.read: {real}\n" in learned.stdout, learned.stdout
        assert str(link) not in learned.stdout
        explained = sandrun(world, "exec", "--explain", "--connect-tcp", str(port),
                            str(world["bundle"]), "--", *args)
    assert explained.returncode == 1, explained.stderr
    assert f"sandrun:   read {real} \u2192 [filesystem] read" in \
        explained.stderr.splitlines(), explained.stderr
    assert load_profile(str(profile)).read == (str(real),)


# ---------------------------------------------------------------- pure logic


def _default_filter() -> bytes:
    from sandrun.launch.launcher import _seccomp_policy

    return seccomp.compile_filter(_seccomp_policy(load_profile("default")))


def test_observe_filter_notifies_watched_and_denied_syscalls() -> None:
    enforcing = _default_filter()
    observing = notify.observe_filter(enforcing, notify.WATCHED.values())
    numbers = {name: nr for name, nr in seccomp._syscall_numbers().items()}
    for name, number in notify.WATCHED.items():
        assert numbers[name] == number, name
        assert seccomp.evaluate(observing, number, (2, 1, 0)) == notify.RET_USER_NOTIF, name
    # Denied by the enforcing filter: notified (the observer decides), never ALLOW.
    for name in ("ptrace", "clone3", "memfd_create", "inotify_init1"):
        assert seccomp.evaluate(observing, numbers[name]) == notify.RET_USER_NOTIF, name
    assert seccomp.evaluate(observing, 1000) == notify.RET_USER_NOTIF  # ENOSYS default
    assert seccomp.evaluate(observing, numbers["ioctl"], (0, seccomp.TIOCSTI)) == \
        notify.RET_USER_NOTIF
    # Allowed: runs without a round trip, with the argument rules intact.
    for name, args in (("read", ()), ("getpid", ()), ("ioctl", (0, 0x5401)),
                       ("clone", (0x11,)), ("sendmsg", (0, 0, 0))):
        assert seccomp.evaluate(observing, numbers[name], args) == seccomp.RET_ALLOW, name
    # Other architectures are still killed.
    assert seccomp.evaluate(observing, 20, arch=seccomp.AUDIT_ARCH_I386) == \
        seccomp.RET_KILL_PROCESS
    assert seccomp.evaluate(observing, seccomp.X32_SYSCALL_BIT | numbers["openat"]) == \
        seccomp.RET_KILL_PROCESS


def test_collapse() -> None:
    files = {f"/srv/app/conf/{i}.toml" for i in range(learning.COLLAPSE_OVER + 1)}
    assert learning._collapse(files, set()) == {"/srv/app/conf"}
    few = {f"/srv/app/conf/{i}.toml" for i in range(learning.COLLAPSE_OVER)}
    assert learning._collapse(few, set()) == few
    # Never into a broad or secret directory, nor over a program kept apart.
    etc = {f"/etc/ssh/key{i}" for i in range(6)}
    assert learning._collapse(etc, set()) == etc
    lib = {f"/var/lib/f{i}" for i in range(6)}
    assert learning._collapse(lib, set()) == lib
    assert learning._collapse(files, {"/srv/app/conf/tool"}) == files
    # What another entry covers goes.
    assert learning._collapse({"/srv/a", "/srv/a/b"}, set()) == {"/srv/a"}


def test_notification_layout() -> None:
    raw = struct.pack("<QIIiIQ6Q", 7, 1234, 0, 257, notify.AUDIT_ARCH_X86_64, 0,
                      *range(1, 7))
    n = notify.Notification(raw)
    assert (n.id, n.pid, n.nr, n.name, n.args) == (7, 1234, 257, "openat", (1, 2, 3, 4, 5, 6))
    assert os.path.basename(learning.__file__) == "learn.py"


def test_shebang_and_vanished_paths(require_root: None) -> None:
    # Not in /tmp: the sandbox has a private one, whose paths learn takes as they are.
    with tempfile.TemporaryDirectory(dir="/var/lib") as name:
        check_shebang_and_vanished(Path(name))


def check_shebang_and_vanished(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh -e\necho hi\n")
    assert learning._shebang(str(script)) == "/bin/sh"
    script.write_text("echo no interpreter\n")
    assert learning._shebang(str(script)) is None
    wanted: dict[str, set[str]] = {"read": {str(tmp_path / "gone.txt"), str(script)},
                                   "optional_read": set(),
                                   "read_write": {str(tmp_path / "gone.db")},
                                   "execute": set()}
    skipped: list[str] = []
    learning._vanished(wanted, skipped)
    assert wanted["read"] == {str(script)}
    assert wanted["optional_read"] == {str(tmp_path / "gone.txt")}
    assert wanted["read_write"] == {str(tmp_path)}


def test_proc_and_runtime_probes() -> None:
    # A process's own /proc files live on inodes of their own: /proc is the grant.
    assert learning._proc_grant("/proc/self/status") == "/proc"
    assert learning._proc_grant("/proc/1234/maps") == "/proc"
    assert learning._proc_grant("/proc/cpuinfo") == "/proc/cpuinfo"
    assert learning._proc_grant("/etc/hosts") == "/etc/hosts"
    # Probes the runtime copes with being denied: answered as Landlock will.
    tree = "/var/lib/sandrun/apps/0123"
    site = ("open", "/usr/lib/python3/dist-packages", False, False, notify.DIRECTORY)
    assert learning._runtime_probe(site, tree)
    own = ("open", f"{tree}/site-packages", False, False, notify.DIRECTORY)
    assert not learning._runtime_probe(own, tree)
    write = ("open", "/usr/lib/python3/dist-packages/x.pth", True, False, notify.FILE)
    assert not learning._runtime_probe(write, tree)
    assert learning._runtime_probe(("open", "/proc/self/fd", False, False, notify.DIRECTORY),
                                   tree)
