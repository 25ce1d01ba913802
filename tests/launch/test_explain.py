"""`sandrun exec --explain`: the run's denials with the profile key that allows each, read
from the kernel's audit records; Unix permission problems; how the app died; and the
host's audit setting left as it was.

Real runs as root: the app below really attempts each forbidden thing (its stdout shows
the errno it got), and the audit status is read from the kernel before and after.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    free_ports,
    front_argv,
    run_sandrun,
    sandrun_argv,
    users_removed_after,
)
from wheelcraft import make_wheel

from sandrun.config.profile import load_profile
from sandrun.launch import explain, warm_exec
from sandrun.sandbox import audit_log
from sandrun.sandbox.seccomp import SeccompPolicy

APP = "explaintest"
APP_USER = f"sandrun-{APP}"
RUN_TIMEOUT = 120
ARROW = "\u2192"

APP_SOURCE = '''\
import ctypes, errno, os, socket, sys, time

def attempt(name, action):
    try:
        action()
        print(name, "ok", flush=True)
    except OSError as exc:
        print(name, errno.errorcode[exc.errno], flush=True)

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ok":
        return 0
    if cmd == "deny":  # SECRET PORT [DELAY]: four things the sandbox forbids, then fail
        if len(args) > 2:
            print("waiting", flush=True)
            time.sleep(float(args[2]))
        attempt("read", lambda: open(args[0]).read())
        attempt("connect", lambda: socket.create_connection(
            ("127.0.0.1", int(args[1])), timeout=5).close())
        attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
        print("ptrace", "ok" if result == 0 else errno.errorcode[ctypes.get_errno()])
        return 1
    if cmd == "write":  # DIR: a file in a directory the profile grants
        attempt("write", lambda: open(os.path.join(args[0], "new"), "w").close())
        return 1
    if cmd == "x32":  # an x32 getpid: seccomp kills the process (SIGSYS)
        ctypes.CDLL(None).syscall(0x40000000 | 39)
        return 0
    if cmd == "hog":  # far beyond the memory limit: the OOM killer
        chunks = [bytearray(16 << 20) for _ in range(64)]
        return len(chunks) and 0
    return 2
'''


@pytest.fixture(scope="module", autouse=True)
def app_user() -> Iterator[None]:
    with users_removed_after(APP_USER):
        yield


@pytest.fixture(scope="module", autouse=True)
def registry_removed_after() -> Iterator[None]:
    """/run/sandrun/audit-captures is sandrun's state; remove it if these tests made it
    and nothing is registered in it."""
    path = Path(audit_log.STATE_DIR, audit_log.CAPTURES_FILE)
    existed = path.exists(), path.parent.exists()
    yield
    if not existed[0] and path.exists() and path.read_text() == "enabled-by-sandrun=0\n":
        path.unlink()
        if not existed[1]:
            os.rmdir(path.parent)


@pytest.fixture(autouse=True)
def audit_untouched(require_root: None) -> Iterator[audit_log.AuditStatus]:
    """Every test leaves kernel audit as it found it (enabled flag and daemon)."""
    before = audit_log.read_status()
    yield before
    after = audit_log.read_status()
    if (after.enabled, after.pid) != (before.enabled, before.pid) and after.pid == 0:
        _set_enabled(before.enabled)  # put it back, then fail
    assert (after.enabled, after.pid) == (before.enabled, before.pid), (
        f"audit was enabled={before.enabled} pid={before.pid} before the test, "
        f"enabled={after.enabled} pid={after.pid} after it")


def _set_enabled(value: int) -> None:
    control = audit_log.Control()
    try:
        control.set_enabled(value)
    finally:
        control.close()


@pytest.fixture(scope="module")
def world(require_root: None, require_landlock: int,
          require_seccomp: None) -> Iterator[dict[str, object]]:
    """Under /var/lib (the sandbox has a private /tmp): a store, the bundle, a secret
    the profile does not grant, a granted directory only root may write, and profiles."""
    if require_landlock < 7:
        pytest.skip("Landlock ABI 7 (audit logging) is needed to explain denials")
    base = Path(tempfile.mkdtemp(prefix="sandrun-explain-", dir="/var/lib"))
    base.chmod(0o755)
    wheels = base / "wheels"
    make_wheel(wheels, APP, "1.0", {f"{APP}.py": APP_SOURCE})
    bundle = base / f"{APP}.pyz"
    proc = run_sandrun("bundle", APP, "--no-index", "--find-links", str(wheels),
                       "-e", f"{APP}:main", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    secret = base / "secret.txt"
    secret.write_text("not granted\n")
    secret.chmod(0o644)  # Unix permissions allow it: only Landlock denies it
    locked = base / "locked"
    locked.mkdir(mode=0o755)  # granted read_write, but root's 0755
    granted, denied = free_ports(2)
    profile = base / "profile.toml"
    profile.write_text(f'extends = "default"\n[filesystem]\nread_write = ["{{state}}", '
                       f'"{locked}"]\n[network]\nconnect_tcp = [{granted}]\n')
    small = base / "small.toml"
    small.write_text('extends = "default"\n[limits]\nmemory = "64M"\n')
    yield {"base": base, "bundle": bundle, "store": base / "store", "secret": secret,
           "locked": locked, "port": denied, "profile": profile, "small": small}
    shutil.rmtree(base, ignore_errors=True)


def run(world: dict[str, object], *args: str, explain: bool = True,
        profile: str = "profile") -> subprocess.CompletedProcess[str]:
    flags = ["--explain"] if explain else ["--verify", "full"]  # both cold
    return run_sandrun("exec", *flags, "--store", str(world["store"]), "-p",
                       str(world[profile]), str(world["bundle"]), *args,
                       timeout=RUN_TIMEOUT)


def denial_lines(stderr: str) -> list[str]:
    return [line.removeprefix("sandrun:   ") for line in stderr.splitlines()
            if line.startswith("sandrun:   ") and ARROW in line]


SOCKET_LINE = (f"socket(...) {ARROW} [network] unix_sockets = true (AF_UNIX), or [network] "
               "dns = true (UDP), or not allowed: any other family, type or protocol "
               "(AF_NETLINK, AF_PACKET, raw, SCTP, MPTCP...) (seccomp does not log which "
               "one it was)")
PTRACE_LINE = (f"ptrace {ARROW} not allowed: reads and writes other processes' memory "
               "and registers")


def test_each_denial_of_a_failed_run_is_listed_with_its_key(world: dict[str, object]
                                                             ) -> None:
    proc = run(world, "deny", str(world["secret"]), str(world["port"]))
    assert proc.returncode == 1, proc.stderr
    # The app really was denied each one (Landlock: EACCES; seccomp: EPERM).
    assert proc.stdout.split("\n")[:4] == ["read EACCES", "connect EACCES", "unix EPERM",
                                           "ptrace EPERM"], proc.stdout
    lines = denial_lines(proc.stderr)
    assert lines == [f"read {world['secret']} {ARROW} [filesystem] read",
                     f"connect tcp {world['port']} {ARROW} [network] connect_tcp",
                     SOCKET_LINE, PTRACE_LINE], proc.stderr
    assert "sandrun: the app exited with status 1\n" in proc.stderr
    assert "denied by the sandbox during the run" in proc.stderr


def test_a_failed_run_without_explain_says_how_to_see_why(world: dict[str, object]) -> None:
    proc = run(world, "deny", str(world["secret"]), str(world["port"]), explain=False)
    assert proc.returncode == 1, proc.stderr
    assert denial_lines(proc.stderr) == []  # nothing was recorded
    assert ("sandrun: the app exited with status 1; to list what the sandbox denied during "
            "the run, run it again with `sandrun exec --explain`") in proc.stderr.splitlines()


def test_a_successful_run_with_explain_says_no_denials(world: dict[str, object]) -> None:
    proc = run(world, "ok")
    assert proc.returncode == 0, proc.stderr
    assert "sandrun: no denials by the sandbox during the run" in proc.stderr
    assert denial_lines(proc.stderr) == []


def test_a_successful_run_without_explain_prints_nothing(world: dict[str, object]) -> None:
    proc = run(world, "ok", explain=False)
    assert proc.returncode == 0, proc.stderr
    assert "denied" not in proc.stderr and "explain" not in proc.stderr


def test_a_grant_defeated_by_unix_permissions_is_explained(world: dict[str, object]
                                                           ) -> None:
    expected = (f"sandrun: {APP_USER} cannot write {world['locked']} (root:root 0755) "
                "(Unix permissions: no sandbox record shows this)")
    for explaining in (True, False):
        proc = run(world, "write", str(world["locked"]), explain=explaining)
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout.strip() == "write EACCES"
        assert expected in proc.stderr.splitlines(), proc.stderr
        assert denial_lines(proc.stderr) == []  # Landlock allowed it: no record


def test_a_seccomp_kill_is_explained(world: dict[str, object]) -> None:
    proc = run(world, "x32")
    assert proc.returncode == 128 + 31, proc.stderr
    assert ("sandrun: exit status 159: the app was killed by SIGSYS: seccomp kills a process "
            "making a syscall of another architecture (IA-32 int 0x80, x32): not allowed"
            ) in proc.stderr.splitlines(), proc.stderr
    assert (f"syscall {0x40000000 | 39} of another architecture (IA-32 int 0x80 or x32) "
            f"{ARROW} not allowed: the process is killed (SIGSYS)") in denial_lines(
                proc.stderr), proc.stderr


def test_the_oom_killer_is_named(world: dict[str, object]) -> None:
    proc = run(world, "hog", profile="small", explain=False)
    assert proc.returncode == 128 + 9, proc.stderr
    line = next((line for line in proc.stderr.splitlines() if "SIGKILL" in line), "")
    assert line.startswith("sandrun: exit status 137: the app was killed by SIGKILL: the OOM "
                           "killer (task "), proc.stderr
    assert "); raise [limits] memory; to list what the sandbox denied" in line, line


# ------------------------------------------------------------------ warm starts

# Issue 17: every launch but --explain (and learn) ends with the native supervisor
# replacing the launcher, which says how a failed run ended. A warm start (the Python
# warm path, or the native front) must say exactly what the cold path says.
NATIVE_LINE = re.compile(r"^sandrun: warm start \(native front, record \S+\)\n",
                         re.MULTILINE)
OOM = re.compile(r"\(task [^,]*, pid [0-9]+\)")


def exec_words(world: dict[str, object], profile: str, verbose: bool = False) -> list[str]:
    return ["exec", *(["-v"] if verbose else []), "--store", str(world["store"]), "-p",
            str(world[profile]), str(world["bundle"])]


def warm_python(world: dict[str, object], *args: str, profile: str
                ) -> subprocess.CompletedProcess[str]:
    """A launch the Python warm path served (its record valid before and after: another
    test session adding a user invalidates records, then the run was cold; retried)."""
    words = exec_words(world, profile)
    parsed = warm_exec.parse_exec_args(words[1:])
    assert parsed is not None
    with contextlib.chdir(ROOT):  # the record's key holds the cwd (run_sandrun's)
        for _attempt in range(5):
            if warm_exec.load_record(parsed) is None:
                run_sandrun(*words, "ok", timeout=RUN_TIMEOUT)  # cold: writes the record
                continue
            proc = run_sandrun(*words, *args, timeout=RUN_TIMEOUT)
            if warm_exec.load_record(parsed) is not None:
                return proc
    pytest.fail("no warm launch: the launch record keeps being invalidated")


def warm_front(world: dict[str, object], *args: str, profile: str
               ) -> subprocess.CompletedProcess[str]:
    """A launch the native front served (its -v line), that line removed."""
    argv = front_argv(*exec_words(world, profile, verbose=True), *args)
    for _attempt in range(5):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              cwd=ROOT, stdin=subprocess.DEVNULL, check=False)
        if NATIVE_LINE.search(proc.stderr):  # else Python ran it (and wrote the record)
            proc.stderr = NATIVE_LINE.sub("", proc.stderr)
            return proc
    pytest.fail(f"the front never served the launch: {proc.stderr}")


ADVICE = ("; to list what the sandbox denied during the run, run it again with `sandrun "
          "exec --explain`")


@pytest.mark.parametrize("via", ["python", "front"])
@pytest.mark.parametrize("case", ["deny", "write", "x32", "hog"])
def test_a_warm_start_explains_a_failed_run_as_the_cold_path(world: dict[str, object],
                                                             via: str, case: str) -> None:
    locked_note = (f"sandrun: {APP_USER} cannot write {world['locked']} (root:root 0755) "
                   "(Unix permissions: no sandbox record shows this)")
    args, profile, code, expected = {
        "deny": (["deny", str(world["secret"]), str(world["port"])], "profile", 1,
                 [f"sandrun: the app exited with status 1{ADVICE}", locked_note]),
        "write": (["write", str(world["locked"])], "profile", 1,
                  [f"sandrun: the app exited with status 1{ADVICE}", locked_note]),
        "x32": (["x32"], "profile", 128 + 31,
                [f"sandrun: exit status 159: the app was killed by SIGSYS: seccomp kills a "
                 "process making a syscall of another architecture (IA-32 int 0x80, x32): "
                 f"not allowed{ADVICE}", locked_note]),
        "hog": (["hog"], "small", 128 + 9,
                ["sandrun: exit status 137: the app was killed by SIGKILL: the OOM killer "
                 f"(TASK); raise [limits] memory{ADVICE}"]),
    }[case]
    warm = (warm_python if via == "python" else warm_front)(world, *args, profile=profile)
    cold = run(world, *args, explain=False, profile=profile)
    assert (warm.returncode, cold.returncode) == (code, code), warm.stderr + cold.stderr
    if case == "write":
        assert warm.stdout.strip() == "write EACCES"

    def lines(stderr: str) -> list[str]:
        return OOM.sub("(TASK)", stderr).splitlines()

    notices = ("sandrun: created ",)  # the first run's user and state dir
    cold_lines = [line for line in lines(cold.stderr) if not line.startswith(notices)]
    assert lines(warm.stderr) == cold_lines == expected, (
        f"warm: {warm.stderr}\ncold: {cold.stderr}")


def test_audit_enabled_by_someone_else_stays_enabled(world: dict[str, object],
                                                     audit_untouched: audit_log.AuditStatus
                                                     ) -> None:
    if audit_untouched.pid or audit_untouched.enabled:
        pytest.skip("audit is managed by someone else on this host")
    _set_enabled(1)
    try:
        proc = run(world, "deny", str(world["secret"]), str(world["port"]))
        assert proc.returncode == 1, proc.stderr
        assert f"read {world['secret']} {ARROW} [filesystem] read" in denial_lines(
            proc.stderr)
        assert "kernel audit was enabled for this run" not in proc.stderr
        assert audit_log.read_status().enabled == 1  # not sandrun's to turn off
    finally:
        _set_enabled(0)


def test_a_registered_audit_daemon_is_left_alone(world: dict[str, object],
                                                 audit_untouched: audit_log.AuditStatus
                                                 ) -> None:
    """This process registers as the audit daemon (as auditd does) with audit off:
    sandrun must neither enable audit nor take over, and say why it cannot explain."""
    if audit_untouched.pid or audit_untouched.enabled:
        pytest.skip("audit is managed by someone else on this host")
    daemon = audit_log.Control()
    payload = audit_log._STATUS.pack(0x0004, 0, 0, os.getpid(), *([0] * 7))  # STATUS_PID
    try:
        answer = daemon._request(audit_log.AUDIT_SET, payload, ack=True)
        assert answer and answer[0][0] == audit_log.NLMSG_ERROR
        assert audit_log.read_status().pid == os.getpid()
        proc = run(world, "deny", str(world["secret"]), str(world["port"]))
        assert proc.returncode == 1, proc.stderr
        assert (f"sandrun: sandbox denials cannot be listed: an audit daemon (pid "
                f"{os.getpid()}) keeps kernel audit disabled; sandrun does not change its "
                "settings") in proc.stderr.splitlines(), proc.stderr
        status = audit_log.read_status()
        assert (status.enabled, status.pid) == (0, os.getpid())
    finally:
        unregister = audit_log._STATUS.pack(0x0004, 0, 0, 0, *([0] * 7))
        daemon._request(audit_log.AUDIT_SET, unregister, ack=True)
        daemon.close()
    assert audit_log.read_status().pid == 0


def test_concurrent_explained_runs_share_audit(world: dict[str, object],
                                               audit_untouched: audit_log.AuditStatus
                                               ) -> None:
    """A run that ends first leaves audit on for one still running, whose later denials
    are still listed; the last one turns it off."""
    if audit_untouched.pid or audit_untouched.enabled:
        pytest.skip("audit is managed by someone else on this host")
    long = subprocess.Popen(
        sandrun_argv("exec", "--explain", "--store", str(world["store"]), "-p",
                     str(world["profile"]), str(world["bundle"]), "deny",
                     str(world["secret"]), str(world["port"]), "3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert long.stdout is not None
        assert long.stdout.readline().strip() == "waiting"
        assert audit_log.read_status().enabled == 1
        short = run(world, "ok")
        assert short.returncode == 0, short.stderr
        assert audit_log.read_status().enabled == 1, "the first run to end turned audit off"
        _out, err = long.communicate(timeout=RUN_TIMEOUT)
    finally:
        if long.poll() is None:
            long.kill()
            long.wait()
    assert long.returncode == 1, err
    assert denial_lines(err)[:2] == [
        f"read {world['secret']} {ARROW} [filesystem] read",
        f"connect tcp {world['port']} {ARROW} [network] connect_tcp"], err
    deadline = time.monotonic() + 5
    while audit_log.read_status().enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert audit_log.read_status().enabled == 0


def test_audit_left_on_by_a_killed_run_is_turned_off_by_the_next(
        world: dict[str, object], audit_untouched: audit_log.AuditStatus) -> None:
    """A capture killed before it could restore (SIGKILL) leaves its registration; the
    next explained run prunes it and restores audit at its end."""
    if audit_untouched.pid or audit_untouched.enabled:
        pytest.skip("audit is managed by someone else on this host")
    victim = subprocess.Popen(
        sandrun_argv("exec", "--explain", "--store", str(world["store"]), "-p",
                     str(world["profile"]), str(world["bundle"]), "deny",
                     str(world["secret"]), str(world["port"]), "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "waiting"
    finally:
        victim.kill()  # SIGKILL: no restore (its sandbox dies with it)
        victim.communicate(timeout=RUN_TIMEOUT)
    assert audit_log.read_status().enabled == 1
    proc = run(world, "ok")
    assert proc.returncode == 0, proc.stderr
    assert audit_log.read_status().enabled == 0


# ------------------------------------------------------------------ records (pure logic)


def _record(kind: int, body: str) -> audit_log.Record:
    return audit_log.Record(kind, f"audit(1796129728.751:43): {body}")


def test_landlock_records_name_the_action_and_the_key() -> None:
    profile = load_profile("default")
    cases = {
        'domain=1a blockers=fs.make_reg path="/srv" dev="vda" ino=5':
            f"create a file in /srv {ARROW} [filesystem] read_write",
        'domain=1a blockers=fs.write_file,fs.read_file path="/srv/x" dev="vda" ino=6':
            f"write /srv/x {ARROW} [filesystem] read_write",
        'domain=1a blockers=fs.execute,fs.read_file path="/usr/bin/git" dev="vda" ino=7':
            f"execute /usr/bin/git {ARROW} [filesystem] execute (and [process] subprocess "
            "= true)",
        'domain=1a blockers=fs.remove_file,fs.make_reg path="/srv" dev="vda" ino=5':
            f"rename or move a file in /srv {ARROW} [filesystem] read_write",
        "domain=1a blockers=net.bind_tcp src=9000":
            f"bind tcp 9000 {ARROW} [network] bind_tcp",
        "domain=1a blockers=net.connect_tcp daddr=127.0.0.1 dest=5432":
            f"connect tcp 5432 {ARROW} [network] connect_tcp",
        'domain=1a blockers=scope.signal opid=1 ocomm="systemd"':
            f"signal pid 1 (systemd) outside the sandbox {ARROW} not allowed: Landlock keeps "
            "signals inside the sandbox",
        'domain=1a blockers=fs.make_char path="/srv" dev="vda" ino=5':
            f"create a device in /srv {ARROW} not allowed: device nodes are never granted",
        # A name the app chose, with a space and a newline: the kernel logs it in hex.
        "domain=1a blockers=fs.read_file path=2F7372762F6120620A dev=\"vda\" ino=8":
            f"read /srv/a b\\n {ARROW} [filesystem] read",
    }
    for body, expected in cases.items():
        denial = explain.landlock_denial(_record(audit_log.AUDIT_LANDLOCK_ACCESS, body),
                                         profile, "/var/lib/sandrun/apps/x")
        assert denial.line(1) == expected, body


def test_seccomp_records_name_the_syscall_and_the_key() -> None:
    profile = load_profile("default")
    policy = SeccompPolicy(deny=("chown",))
    cases = {
        "syscall=101 code=0x50001": PTRACE_LINE,
        "syscall=294 code=0x50001":
            f'inotify_init1 {ARROW} [syscalls] allow = ["inotify_init1"] (file change '
            "notifications (not mediated by Landlock): opt-in)",
        "syscall=92 code=0x50001":
            f'chown {ARROW} [syscalls] deny: remove "chown" (or the group naming it)',
        "syscall=57 code=0x50001": f"fork {ARROW} [process] fork = true",
        "syscall=139 code=0x50026":
            f'sysfs {ARROW} [syscalls] allow = ["sysfs"] (not in the baseline: check what '
            "it does first)",
    }
    for body, expected in cases.items():
        record = _record(audit_log.AUDIT_SECCOMP, f"pid=5 arch=c000003e {body}")
        assert explain.seccomp_denial(record, policy, profile).line(1) == expected, body
    clone3 = explain.seccomp_denial(
        _record(audit_log.AUDIT_SECCOMP, "arch=c000003e syscall=435 code=0x50026"),
        policy, profile)
    assert clone3.harmless == "the C library falls back to clone"


def _remedy_is_a_key_or_why_not(remedy: str) -> bool:
    return remedy.startswith("[") or remedy.startswith("not allowed: ")


def test_every_seccomp_denial_names_a_key_or_why_not() -> None:
    """Whatever the syscall and the filter's answer, the explanation names a profile key
    (`[section] key ...`) or says `not allowed: <why>`."""
    import pyseccomp

    from sandrun.sandbox import seccomp

    profile = load_profile("default")
    policies = [SeccompPolicy(),
                SeccompPolicy(deny=("chown", "@timer"), allow_fork=False, allow_listen=False),
                SeccompPolicy(socket_families=("AF_UNIX", "AF_INET", "AF_INET6"),
                              unix_sockets=True, udp=True)]
    names = {*seccomp.DANGEROUS, *seccomp.OPT_IN, *seccomp.ARGUMENT_RULES, "fork", "vfork",
             "clone", "listen", "chown", "getpid", "sysfs", "alarm"}
    codes = (0x50001, 0x5000D, 0x50026, 0x80000000, 0x00030000, 0x7FFC0000)
    for policy in policies:
        for name in sorted(names):
            number = pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, name)
            for code in codes:
                record = _record(audit_log.AUDIT_SECCOMP,
                                 f"pid=5 arch=c000003e syscall={number} code={code:#x}")
                remedy = explain.seccomp_denial(record, policy, profile).remedy
                assert _remedy_is_a_key_or_why_not(remedy), (name, hex(code), remedy)
        for body in ("arch=40000003 syscall=20 code=0x80000000",  # IA-32
                     "arch=c000003e syscall=999 code=0x50026"):  # unknown to libseccomp
            remedy = explain.seccomp_denial(_record(audit_log.AUDIT_SECCOMP, body), policy,
                                            profile).remedy
            assert remedy.startswith("not allowed: "), (body, remedy)


def test_a_denied_socket_lists_every_candidate_key() -> None:
    """seccomp logs no arguments: socket(AF_UNIX) and socket(AF_INET, SOCK_DGRAM) leave the
    same record, so every key that could allow the call is named, and the rest is `not
    allowed`."""
    profile = load_profile("default")
    record = _record(audit_log.AUDIT_SECCOMP, "pid=5 arch=c000003e syscall=41 code=0x50001")
    remedy = explain.seccomp_denial(record, SeccompPolicy(socket_families=()), profile).remedy
    assert remedy == ("[network] unix_sockets = true (AF_UNIX), or [network] connect_tcp or "
                      "bind_tcp (TCP), or [network] dns = true (UDP), or not allowed: any "
                      "other family, type or protocol (AF_NETLINK, AF_PACKET, raw, SCTP, "
                      "MPTCP...) (seccomp does not log which one it was)")
    tcp_only = SeccompPolicy(socket_families=("AF_INET", "AF_INET6"))
    assert "connect_tcp" not in explain.seccomp_denial(record, tcp_only, profile).remedy
    everything = SeccompPolicy(socket_families=("AF_UNIX", "AF_INET", "AF_INET6"),
                               unix_sockets=True, udp=True)
    assert explain.seccomp_denial(record, everything, profile).remedy.startswith(
        "not allowed: any other family")


def test_every_landlock_denial_names_a_key_or_why_not() -> None:
    profile = load_profile("default")
    blockers = [*explain._ORDER, "fs.execute", "net.bind_tcp", "net.connect_tcp",
                "scope.signal", "scope.abstract_unix_socket", "ptrace", "fs.from_the_future",
                "fs.remove_file,fs.make_reg", "fs.write_file,fs.read_file"]
    for blocker in blockers:
        body = (f'domain=1a blockers={blocker} path="/srv/x" dev="vda" ino=5 src=80 '
                'dest=80 opid=1 ocomm="init"')
        denial = explain.landlock_denial(_record(audit_log.AUDIT_LANDLOCK_ACCESS, body),
                                         profile, "/var/lib/sandrun/apps/x")
        assert _remedy_is_a_key_or_why_not(denial.remedy), (blocker, denial.remedy)
