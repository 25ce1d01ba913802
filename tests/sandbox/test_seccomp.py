"""The seccomp filter, proven on the real kernel.

Every probe runs in a forked child that first drops to nobody (uid/gid 65534), sets
no_new_privs and loads the compiled filter, then attempts the forbidden thing and
reports results to the parent through a pipe as JSON. Probes refuse to run as root.
A control child runs the harmless probes without the filter, to prove each errno the
filter returns differs from what the kernel alone would say (bubblewrap's lesson).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import termios
from collections.abc import Callable
from typing import Any

import pytest
from helpers import ROOT, drop_to_nobody, fork_and_report, need, refuse_root

from sandrun.errors import EnforcementError
from sandrun.sandbox import seccomp
from sandrun.sandbox.seccomp import SeccompPolicy
from sandrun.sandbox.syscall_table import X86_64_SYSCALLS

NOBODY = 65534
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
HIGH = 0xFFFFFFFF00000000
NETWORK = SeccompPolicy(socket_families=("AF_UNIX", "AF_INET", "AF_INET6"))
PROJECT = ROOT

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

NR = {name: number for name, number in (
    ("sendto", 44), ("sendmsg", 46), ("sendmmsg", 307), ("listen", 50),
    ("ptrace", 101), ("unshare", 272), ("setns", 308), ("clone", 56), ("clone3", 435),
    ("mount", 165), ("keyctl", 250), ("io_uring_setup", 425), ("userfaultfd", 323),
    ("bpf", 321), ("perf_event_open", 298), ("personality", 135), ("memfd_create", 319),
    ("ioctl", 16), ("socket", 41), ("socketpair", 53), ("execveat", 322), ("kcmp", 312),
    ("process_vm_readv", 310), ("getpid", 39), ("timerfd_create", 283), ("alarm", 37),
    ("name_to_handle_at", 303), ("inotify_init1", 294), ("inotify_add_watch", 254),
)}


# --- running things in a sandboxed child ---------------------------------------------

def raw(name_or_nr: str | int, *args: Any) -> int:
    """A raw syscall: its result, or -errno."""
    nr = NR[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(nr), *cargs)
    return -ctypes.get_errno() if result == -1 else int(result)


def run_child(probe: Callable[[Any], Any], bpf: bytes | None,
              prepare: Callable[[], Any] = lambda: None, *, nnp: bool = True,
              timeout: float = 20.0) -> tuple[Any, int]:
    """Fork; the child drops to nobody, prepares, loads `bpf` and runs `probe`.

    Returns what the probe returned (None when the child was killed first, e.g. by
    seccomp) and the wait status: tests/helpers.fork_and_report does the rest.
    """
    def body() -> Any:
        state = prepare()
        if bpf is not None:
            seccomp.load_filter(bpf)
        refuse_root()
        return probe(state)

    report = fork_and_report(body, no_new_privs=nnp, timeout=timeout)
    return report.value, report.status


# --- the probes (each returns a syscall result or -errno) ----------------------------

def probe_clone(flags: int) -> int:
    result = raw("clone", flags | signal.SIGCHLD, 0, 0, 0, 0)
    if result == 0:  # the filter failed and we are the new child: vanish
        os._exit(0)
    if result > 0:
        os.waitpid(result, 0)
    return result


def probe_clone3() -> int:
    clone_args = (ctypes.c_uint64 * 8)(CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD, 0, 0, 0)
    result = raw("clone3", ctypes.byref(clone_args), ctypes.sizeof(clone_args))
    if result == 0:
        os._exit(0)
    if result > 0:
        os.waitpid(result, 0)
    return result


def probe_tiocsti(state: dict[str, int], cmd: int) -> int:
    # NULL char pointer: unfiltered, the kernel answers EFAULT (our own controlling tty,
    # legacy TIOCSTI on), so EPERM can only come from the filter.
    return raw("ioctl", state["tty"], cmd, 0)


def probe_personality_restore(persona: int) -> int:
    result = raw("personality", persona)
    if result >= 0:
        raw("personality", result)
    return result


def probe_memfd() -> int:
    result = raw("memfd_create", ctypes.c_char_p(b"probe"), 0)
    if result >= 0:
        os.close(result)
    return result


def probe_socket(family: int, kind: int = socket.SOCK_STREAM, proto: int = 0) -> int:
    result = raw("socket", family, kind, proto)
    if result >= 0:
        os.close(result)
    return result


def probe_socketpair(family: int) -> int:
    fds = (ctypes.c_int * 2)()
    result = raw("socketpair", family, socket.SOCK_STREAM, 0, ctypes.byref(fds))
    if result == 0:
        os.close(fds[0])
        os.close(fds[1])
    return result


def probe_process_vm_readv() -> int:
    return raw("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0)


# name -> (probe, what the filter must return, what the kernel alone returns or None
# when the control would be unsafe or meaningless). "ok" means a result >= 0.
PROBES: dict[str, tuple[Callable[[dict[str, int]], int], int | str, int | str | None]] = {
    "ptrace(PTRACE_TRACEME)": (lambda s: raw("ptrace", 0, 0, 0, 0), -errno.EPERM, None),
    "unshare(CLONE_NEWUSER)": (lambda s: raw("unshare", CLONE_NEWUSER), -errno.EPERM, "ok"),
    "setns(-1, 0)": (lambda s: raw("setns", -1, 0), -errno.EPERM, -errno.EBADF),
    "clone(CLONE_NEWUSER)": (lambda s: probe_clone(CLONE_NEWUSER), -errno.EPERM, None),
    "clone(CLONE_NEWNET, high bits)": (lambda s: probe_clone(HIGH | CLONE_NEWNET),
                                       -errno.EPERM, None),
    "clone(plain fork)": (lambda s: probe_clone(0), "ok", None),
    "clone3(CLONE_NEWUSER)": (lambda s: probe_clone3(), -errno.ENOSYS, None),
    "mount(type=EFAULT)": (lambda s: raw("mount", 0, 0, 1, 0, 0), -errno.EPERM, -errno.EFAULT),
    "keyctl(bad command)": (lambda s: raw("keyctl", 9999, 0, 0, 0, 0), -errno.EPERM,
                            -errno.EOPNOTSUPP),
    "io_uring_setup(1, NULL)": (lambda s: raw("io_uring_setup", 1, 0), -errno.EPERM,
                                -errno.EFAULT),
    "userfaultfd(bad flags)": (lambda s: raw("userfaultfd", 1 | 0x40000), -errno.EPERM,
                               -errno.EINVAL),
    "bpf(bad command)": (lambda s: raw("bpf", 9999, 0, 0), -errno.EPERM, -errno.EINVAL),
    "perf_event_open(NULL)": (lambda s: raw("perf_event_open", 0, 0, -1, -1, 0),
                              -errno.EPERM, None),
    "personality(READ_IMPLIES_EXEC)": (lambda s: probe_personality_restore(0x0400000),
                                       -errno.EPERM, "ok"),
    "personality(ADDR_NO_RANDOMIZE)": (lambda s: probe_personality_restore(0x0040000),
                                       -errno.EPERM, "ok"),
    "personality(0xffffffff)": (lambda s: raw("personality", 0xFFFFFFFF), "ok", "ok"),
    "personality(PER_LINUX)": (lambda s: raw("personality", 0), "ok", "ok"),
    "memfd_create": (lambda s: probe_memfd(), -errno.EPERM, "ok"),
    "execveat(-1)": (lambda s: raw("execveat", -1, ctypes.c_char_p(b"x"), 0, 0, 0),
                     -errno.EPERM, -errno.EBADF),
    "kcmp(self, fd 0, fd 0)": (lambda s: raw("kcmp", os.getpid(), os.getpid(), 0, 0, 0),
                               -errno.EPERM, "ok"),
    "name_to_handle_at(-1)": (lambda s: raw("name_to_handle_at", -1, 0, 0, 0, 0),
                              -errno.EPERM, None),
    "process_vm_readv(self, no iovecs)": (lambda s: probe_process_vm_readv(),
                                          -errno.EPERM, "ok"),
    "ioctl(TIOCSTI)": (lambda s: probe_tiocsti(s, termios.TIOCSTI), -errno.EPERM,
                       -errno.EFAULT),
    "ioctl(TIOCSTI | 1 << 32)": (lambda s: probe_tiocsti(s, (1 << 32) | termios.TIOCSTI),
                                 -errno.EPERM, -errno.EFAULT),
    "ioctl(TIOCSTI | high 32 bits all set)": (lambda s: probe_tiocsti(s, HIGH | termios.TIOCSTI),
                                              -errno.EPERM, -errno.EFAULT),
    "ioctl(TCGETS | high bits) still works": (
        lambda s: raw("ioctl", s["tty"], HIGH | termios.TCGETS,
                      ctypes.byref(ctypes.create_string_buffer(64))), "ok", "ok"),
    "socket(AF_NETLINK)": (lambda s: probe_socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
                           -errno.EPERM, "ok"),
    "socket(AF_NETLINK | high bits)": (
        lambda s: probe_socket(HIGH | socket.AF_NETLINK, socket.SOCK_RAW, 0), -errno.EPERM, "ok"),
    "socket(AF_PACKET, bad type)": (lambda s: probe_socket(socket.AF_PACKET, 99), -errno.EPERM,
                                    -errno.EINVAL),
    "socket(AF_INET) without network": (lambda s: probe_socket(socket.AF_INET), -errno.EPERM,
                                        "ok"),
    "socket(AF_UNIX) is opt-in": (lambda s: probe_socket(socket.AF_UNIX), -errno.EPERM, "ok"),
    "socketpair(AF_INET)": (lambda s: probe_socketpair(socket.AF_INET), -errno.EPERM,
                            -errno.EOPNOTSUPP),
    "socketpair(AF_UNIX)": (lambda s: probe_socketpair(socket.AF_UNIX), "ok", "ok"),
    "unknown syscall 1000": (lambda s: raw(1000), -errno.ENOSYS, -errno.ENOSYS),
    "timerfd_create (baseline)": (lambda s: raw("timerfd_create", 1, 0), "ok", "ok"),
}


def prepare_tty() -> dict[str, int]:
    # Our own controlling terminal, so unfiltered TIOCSTI gets past the tty checks.
    _master, slave = os.openpty()
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return {"tty": slave}


def run_probes(state: dict[str, int], names: list[str]) -> dict[str, int]:
    refuse_root()
    return {name: PROBES[name][0](state) for name in names}


def matches(result: int, expected: int | str) -> bool:
    return result >= 0 if expected == "ok" else result == expected


def errno_text(value: int | str) -> str:
    if isinstance(value, str):
        return value
    return errno.errorcode.get(-value, str(value)) if value < 0 else f"ok ({value})"


@pytest.fixture(scope="module")
def default_filter() -> bytes:
    return seccomp.compile_filter(SeccompPolicy())


@pytest.fixture(scope="module")
def filtered(require_root: None, require_seccomp: None, default_filter: bytes) -> dict[str, int]:
    """All probes in one sandboxed child (fast)."""
    result, status = run_child(lambda s: run_probes(s, list(PROBES)), default_filter,
                               prepare_tty)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return dict(result)


@pytest.fixture(scope="module")
def control(require_root: None, require_seccomp: None) -> dict[str, int]:
    """The probes that are safe without the filter, as nobody with no_new_privs."""
    names = [name for name, (_, _, unfiltered) in PROBES.items() if unfiltered is not None]
    result, status = run_child(lambda s: run_probes(s, names), None, prepare_tty)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return dict(result)


# --- enforcement on the real kernel --------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("name", list(PROBES))
def test_probe_under_filter(require_root: None, require_seccomp: None,
                            filtered: dict[str, int], name: str) -> None:
    expected = PROBES[name][1]
    got = filtered[name]
    assert matches(got, expected), f"{name}: got {errno_text(got)}, want {errno_text(expected)}"


@pytest.mark.root
@pytest.mark.parametrize("name", [n for n, p in PROBES.items() if p[2] is not None])
def test_probe_without_filter_differs(require_root: None, require_seccomp: None,
                                      control: dict[str, int], name: str) -> None:
    """The kernel alone answers otherwise, so the filtered errno is the filter's doing."""
    _, filtered_expected, unfiltered_expected = PROBES[name]
    got = control[name]
    assert unfiltered_expected is not None
    assert matches(got, unfiltered_expected), (
        f"{name} without filter: got {errno_text(got)}, want {errno_text(unfiltered_expected)}")
    if filtered_expected != unfiltered_expected:
        assert not matches(got, filtered_expected)


def int80_page() -> int:
    """An RX page holding `mov eax, 20 (IA-32 getpid); int 0x80; ret` (built before the
    filter and without MDWE)."""
    code = bytes.fromhex("b814000000" "cd80" "c3")
    prot_rw, prot_rx, flags = 0x3, 0x5, 0x22  # MAP_PRIVATE | MAP_ANONYMOUS
    page = libc.mmap(None, 4096, prot_rw, flags, -1, 0)
    assert page not in (None, ctypes.c_void_p(-1).value)
    ctypes.memmove(page, code, len(code))
    assert libc.mprotect(page, 4096, prot_rx) == 0
    return int(page)


def call_int80(page: int) -> int:
    refuse_root()
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(page)())


@pytest.mark.root
def test_int80_runs_without_filter(require_root: None, require_seccomp: None) -> None:
    """Control: the machine code really makes an IA-32 getpid syscall."""
    result, status = run_child(lambda page: [call_int80(page), os.getpid()], None, int80_page)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result[0] == result[1]


@pytest.mark.root
def test_int80_ia32_syscall_kills_process(require_root: None, require_seccomp: None,
                                          default_filter: bytes) -> None:
    result, status = run_child(call_int80, default_filter, int80_page)
    assert result is None, f"int 0x80 returned {result}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@pytest.mark.root
def test_x32_syscall_kills_process(require_root: None, require_seccomp: None,
                                   default_filter: bytes) -> None:
    """libseccomp adds `nr >= 0x40000000 -> bad arch action` to an x86_64-only filter, so
    x32 numbers are killed like foreign arches (not ENOSYS), whatever CONFIG_X86_X32."""
    result, status = run_child(lambda s: raw(seccomp.X32_SYSCALL_BIT | NR["getpid"]),
                               default_filter)
    assert result is None, f"x32 getpid returned {result}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


WORKLOAD = r"""
import json, os, sys
out = {"uid": os.getuid()}
with open("/proc/self/status") as status:
    out["seccomp"] = [line.split()[1] for line in status if line.startswith("Seccomp:")]

def check(name, fn):
    try:
        out[name] = fn()
    except Exception as exc:
        out[name] = f"FAILED {type(exc).__name__}: {exc}"

def threads():
    import hashlib, threading
    done = []
    def work(i):
        done.append(hashlib.sha256(bytes([i])).hexdigest())
    workers = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for w in workers: w.start()
    for w in workers: w.join()
    return len(done)

def pair():
    import socket
    a, b = socket.socketpair()
    a.sendall(b"ping")
    return b.recv(4).decode()

def tcp():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0)); srv.listen(1)
        with socket.create_connection(srv.getsockname()) as cli:
            conn, _ = srv.accept()
            cli.sendall(b"tcp")
            return conn.recv(3).decode()

def imports():
    import json, hashlib, ssl, decimal, zlib, lzma, sqlite3, asyncio
    ctx = ssl.create_default_context()
    db = sqlite3.connect(":memory:")
    return [hashlib.sha256(b"").hexdigest()[:8], ssl.OPENSSL_VERSION.split()[0],
            ctx.cert_store_stats()["x509_ca"] > 0, str(decimal.Decimal(1) / 8),
            db.execute("select 6*7").fetchone()[0], len(zlib.compress(b"x" * 1000)) < 100]

def callback():
    import ctypes
    values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    ctypes.CDLL(None).qsort(values, 5, ctypes.sizeof(ctypes.c_int), cmp(lambda a, b: a[0] - b[0]))
    return list(values)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def waiting():
    import select, time
    r, w = os.pipe()
    os.write(w, b"x")
    ep = select.epoll(); ep.register(r, select.EPOLLIN)
    poller = select.poll(); poller.register(r, select.POLLIN)
    start = time.monotonic(); time.sleep(0.01)
    return [len(select.select([r], [], [], 1)[0]), len(ep.poll(1)), len(poller.poll(1000)),
            time.monotonic() - start >= 0.01, time.time() > 1.7e9]

def aio():
    import asyncio
    async def main():
        await asyncio.sleep(0.001)
        return "asyncio"
    return asyncio.run(main())

def spawn():
    import subprocess
    return subprocess.run(["/bin/true"]).returncode

def resolve():
    import socket
    return sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, socket.AF_INET)})

for name, fn in list(globals().items()):
    if callable(fn) and name not in ("check",) and fn.__module__ == "__main__":
        check(name, fn)
sys.stdout.write(json.dumps(out))
"""

WORKLOAD_EXPECTED = {
    "uid": NOBODY, "seccomp": ["2"], "threads": 8, "pair": "ping", "tcp": "tcp",
    "callback": [1, 2, 3, 4, 5], "fork": 7, "waiting": [1, 1, 1, True, True],
    "aio": "asyncio", "spawn": 0, "resolve": ["127.0.0.1"],
}


def exec_workload(stdout_fd: int) -> None:
    refuse_root()
    os.dup2(stdout_fd, 1)
    os.execv("/usr/bin/python3", ["python3", "-I", "-B", "-c", WORKLOAD])


@pytest.mark.root
def test_cpython_workload_runs_under_baseline(require_root: None, require_seccomp: None) -> None:
    """A real CPython (startup, threads, sockets, C extensions, ssl, ctypes callback, fork,
    subprocess, asyncio) runs under the filter: clone3's ENOSYS falls back to clone."""
    need(os.access("/usr/bin/python3", os.X_OK),
         "needs the system /usr/bin/python3 (readable by nobody)")
    bpf = seccomp.compile_filter(NETWORK)
    out_read, out_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_read)
            drop_to_nobody(no_new_privs=True)
            seccomp.load_filter(bpf)
            exec_workload(out_write)
        finally:
            os._exit(71)
    os.close(out_write)
    with os.fdopen(out_read, "rb") as reader:
        output = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    result = json.loads(output)
    failures = {k: v for k, v in result.items() if isinstance(v, str) and "FAILED" in v}
    assert not failures
    for key, value in WORKLOAD_EXPECTED.items():
        assert result[key] == value, (key, result[key])
    assert result["imports"][2:] == [True, "0.125", 42, True]


@pytest.mark.root
def test_profile_deny_timer_group(require_root: None, require_seccomp: None) -> None:
    bpf = seccomp.compile_filter(SeccompPolicy(deny=("@timer",)))

    def probe(_: object) -> list[int]:
        refuse_root()
        return [raw("timerfd_create", 1, 0), raw("alarm", 0), raw("getpid")]

    result, status = run_child(probe, bpf)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result[:2] == [-errno.EPERM, -errno.EPERM]
    assert result[2] > 0


@pytest.mark.root
def test_profile_allow_dangerous_name(require_root: None, require_seccomp: None) -> None:
    policy = SeccompPolicy(allow=("memfd_create",))
    result, status = run_child(lambda _: probe_memfd(), seccomp.compile_filter(policy))
    assert os.waitstatus_to_exitcode(status) == 0
    assert result >= 0
    assert any("WARNING" in line and "memfd_create" in line
               for line in seccomp.describe(policy))


@pytest.mark.root
def test_group_does_not_allow_dangerous_members(require_root: None,
                                                require_seccomp: None) -> None:
    """`allow = ["@ipc"]` keeps memfd_create denied: only naming it allows it."""
    bpf = seccomp.compile_filter(SeccompPolicy(allow=("@ipc",)))
    result, status = run_child(lambda _: probe_memfd(), bpf)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == -errno.EPERM


@pytest.mark.root
def test_inotify_is_opt_in(require_root: None, require_seccomp: None) -> None:
    """Landlock does not mediate inotify: watches on /etc (outside any grant) must fail
    under the default filter and work only where the profile names the calls."""
    def probe(_: object) -> list[int]:
        refuse_root()
        fd = raw("inotify_init1", 0)
        watch = raw("inotify_add_watch", fd, b"/etc", 0x100) if fd >= 0 else fd
        return [fd, watch]

    result, status = run_child(probe, seccomp.compile_filter(SeccompPolicy()))
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == [-errno.EPERM, -errno.EPERM]
    allowed = SeccompPolicy(allow=("inotify_init1", "inotify_add_watch"))
    result, status = run_child(probe, seccomp.compile_filter(allowed))
    assert os.waitstatus_to_exitcode(status) == 0
    assert result[0] >= 0 and result[1] >= 0
    assert any("inotify" in line for line in seccomp.describe(SeccompPolicy()))


@pytest.mark.root
def test_network_policy_allows_inet(require_root: None, require_seccomp: None) -> None:
    def probe(_: object) -> list[int]:
        return [probe_socket(socket.AF_INET), probe_socket(socket.AF_INET6),
                probe_socket(socket.AF_NETLINK, socket.SOCK_RAW)]

    result, status = run_child(probe, seccomp.compile_filter(NETWORK))
    assert os.waitstatus_to_exitcode(status) == 0
    assert result[0] >= 0 and result[1] >= 0
    assert result[2] == -errno.EPERM


@pytest.mark.root
def test_load_filter_requires_no_new_privs(require_root: None, require_seccomp: None,
                                           default_filter: bytes) -> None:
    def probe(_: object) -> str:
        try:
            seccomp.load_filter(default_filter)
        except EnforcementError as exc:
            return exc.message
        return "loaded"

    result, status = run_child(probe, None, nnp=False)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "no_new_privs" in result


# --- compiling, without the kernel ---------------------------------------------------

def test_compile_is_deterministic_across_processes() -> None:
    policy = SeccompPolicy(allow=("@mount", "memfd_create"), deny=("@timer",),
                           socket_families=("AF_INET6", "AF_UNIX", "AF_INET"))
    here = seccomp.compile_filter(policy)
    assert here == seccomp.compile_filter(policy)
    code = ("import sys; from sandrun.sandbox import seccomp as s; sys.stdout.buffer.write("
            "s.compile_filter(s.SeccompPolicy(allow=('@mount', 'memfd_create'), "
            "deny=('@timer',), socket_families=('AF_INET6', 'AF_UNIX', 'AF_INET'))))")
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        other = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=env,
                               capture_output=True, check=True).stdout
        assert other == here
    assert seccomp.compile_filter(SeccompPolicy()) != here


def test_compiled_filter_decisions(default_filter: bytes) -> None:
    """The program itself, run through the BPF interpreter, for values hard to probe."""
    ev = seccomp.evaluate
    assert seccomp._syscall_numbers()["ioctl"] == NR["ioctl"] == 16
    allow, eperm = seccomp.RET_ALLOW, seccomp.RET_ERRNO | errno.EPERM
    enosys = seccomp.RET_ERRNO | errno.ENOSYS
    for cmd in (0x5412, 0x541C, HIGH | 0x5412, (1 << 40) | 0x541C):
        assert ev(default_filter, NR["ioctl"], (0, cmd)) == eperm
    for cmd in (0x5401, 0x5413, 0x5411, 0x541B, 0x80045430, HIGH | 0x80045430, 0):
        assert ev(default_filter, NR["ioctl"], (0, cmd)) == allow
    for persona in range(0, 0x10000000, 0x10001):
        want = allow if persona in (0, 8) else eperm
        assert ev(default_filter, NR["personality"], (persona,)) == want
    assert ev(default_filter, NR["personality"], (0xFFFFFFFF,)) == allow
    assert ev(default_filter, NR["personality"], (HIGH,)) == allow  # kernel sees 0
    for family in range(64):  # AF_UNIX too: pathname sockets are opt-in (unix_sockets)
        assert ev(default_filter, NR["socket"], (family, 1, 0)) == eperm
    assert ev(default_filter, NR["clone3"], ()) == enosys
    assert ev(default_filter, 0xFFFFFFFF, ()) == enosys  # -1: a tracer's skipped syscall
    assert ev(default_filter, NR["getpid"], (), arch=seccomp.AUDIT_ARCH_I386) == (
        seccomp.RET_KILL_PROCESS)
    assert ev(default_filter, 0x40000000 | NR["getpid"]) == seccomp.RET_KILL_PROCESS
    assert ev(default_filter, 0x40000000 | 512) == seccomp.RET_KILL_PROCESS  # x32-only nr


def test_network_families_decisions() -> None:
    bpf = seccomp.compile_filter(NETWORK)
    allowed = {socket.AF_INET, socket.AF_INET6}
    eperm = seccomp.RET_ERRNO | errno.EPERM
    for family in range(64):
        want = seccomp.RET_ALLOW if family in allowed else eperm
        assert seccomp.evaluate(bpf, NR["socket"], (family, 1, 0)) == want
    assert seccomp.evaluate(bpf, NR["socketpair"], (socket.AF_INET, 1, 0)) == eperm
    assert seccomp.evaluate(bpf, NR["socketpair"], (socket.AF_UNIX, 1, 0)) == seccomp.RET_ALLOW
    sock = NR["socket"]
    nonblock_cloexec = 0x800 | 0x80000
    for family in allowed:
        assert seccomp.evaluate(bpf, sock, (family, 1 | nonblock_cloexec, 6)) == RET_OK
        assert seccomp.evaluate(bpf, sock, (family, 1, 262)) == eperm  # IPPROTO_MPTCP
        assert seccomp.evaluate(bpf, sock, (family, 1, 132)) == eperm  # SCTP
        assert seccomp.evaluate(bpf, sock, (family, 2, 0)) == eperm  # UDP needs dns
        assert seccomp.evaluate(bpf, sock, (family, 3, 1)) == eperm  # raw
    udp = seccomp.compile_filter(SeccompPolicy(socket_families=("AF_INET",), udp=True))
    assert seccomp.evaluate(udp, sock, (socket.AF_INET, 2 | nonblock_cloexec, 0)) == RET_OK
    assert seccomp.evaluate(udp, sock, (socket.AF_INET, 2, 17)) == RET_OK
    unix = seccomp.compile_filter(SeccompPolicy(unix_sockets=True))
    assert seccomp.evaluate(unix, sock, (socket.AF_UNIX, 1, 0)) == RET_OK
    for name, index in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
        args = [0] * 6
        args[index] = 0x20000000  # MSG_FASTOPEN: connects without connect()
        assert seccomp.evaluate(bpf, NR[name], tuple(args)) == eperm
        args[index] = 0x4040  # MSG_DONTWAIT | MSG_NOSIGNAL
        assert seccomp.evaluate(bpf, NR[name], tuple(args)) == RET_OK
    nolisten = seccomp.compile_filter(SeccompPolicy(allow_listen=False))
    assert seccomp.evaluate(nolisten, NR["listen"], (3, 5)) == eperm


RET_OK = seccomp.RET_ALLOW


def test_self_check_rejects_a_program_that_allows_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    allow_all = bytes.fromhex("2000000004000000" "0600000000007fff")
    monkeypatch.setattr(seccomp, "add_rules", lambda sc, plan: allow_all)
    with pytest.raises(EnforcementError, match="does not do what the policy says"):
        seccomp.compile_filter(SeccompPolicy())


def test_complement_cover_is_exact() -> None:
    rng = random.Random(7)
    for excluded in ([0], [0xFFFFFFFF], [0x5412, 0x541C], [0, 8, 0xFFFFFFFF], [1, 2, 10]):
        cover = seccomp._complement_cover(excluded)
        samples = [*excluded, *(v ^ (1 << b) for v in excluded for b in range(32)),
                   *(rng.getrandbits(32) for _ in range(2000))]
        for value in samples:
            hits = sum(value & mask == want for mask, want in cover)
            assert hits == (0 if value in excluded else 1), (excluded, hex(value))
        assert all(mask for mask, _ in cover)  # mask 0 would be an unconditional rule


def test_load_filter_rejects_garbage() -> None:
    # Refused before any syscall, so this is safe in the test process itself.
    with pytest.raises(EnforcementError, match="not a seccomp BPF program"):
        seccomp.load_filter(b"\x00" * 7)
    with pytest.raises(EnforcementError, match="not a seccomp BPF program"):
        seccomp.load_filter(b"")
    with pytest.raises(EnforcementError, match="architecture first"):
        seccomp.load_filter(bytes.fromhex("0600000000007fff"))


def test_socket_family_table_matches_python() -> None:
    for name, number in seccomp.SOCKET_FAMILIES.items():
        if hasattr(socket, name):
            assert getattr(socket, name) == number, name


def test_invalid_policy_is_an_enforcement_error() -> None:
    with pytest.raises(EnforcementError, match="AF_BOGUS"):
        seccomp.compile_filter(SeccompPolicy(socket_families=("AF_BOGUS",)))
    with pytest.raises(EnforcementError, match="frobnicate"):
        seccomp.describe(SeccompPolicy(allow=("frobnicate",)))


# --- names, groups and the baseline --------------------------------------------------

def test_expand_names_and_groups() -> None:
    assert seccomp.expand(["read", "@timer"]) >= {"read", "alarm", "timerfd_create"}
    assert seccomp.expand("read") == {"read"}
    privileged = seccomp.expand(["@privileged"])
    assert {"chown", "reboot", "settimeofday"} <= privileged  # nested @chown/@reboot/@clock
    assert "mmap2" not in seccomp.expand(["@default"])  # another arch's name: ignored
    assert seccomp.expand([]) == frozenset()
    with pytest.raises(ValueError, match="'frobnicate'"):
        seccomp.expand(["frobnicate"])
    with pytest.raises(ValueError, match="did you mean @timer"):
        seccomp.expand(["@timers"])
    with pytest.raises(ValueError, match="'mmap2'"):
        seccomp.expand(["mmap2"])


def test_baseline_shape() -> None:
    base = seccomp.baseline()
    assert base <= X86_64_SYSCALLS
    assert not base & seccomp.DANGEROUS.keys()
    assert seccomp.DANGEROUS.keys() <= X86_64_SYSCALLS
    assert seccomp.ARGUMENT_RULES.keys() <= base
    assert {"read", "write", "openat", "mmap", "futex", "clone", "execve", "ioctl", "socket",
            "epoll_wait", "rseq", "getrandom", "wait4"} <= base
    assert {"clone3", "ptrace", "io_uring_setup", "memfd_create", "userfaultfd"}.isdisjoint(base)
    assert seccomp.OPT_IN.keys().isdisjoint(base)


def test_describe_lines() -> None:
    lines = seccomp.describe(SeccompPolicy(allow=("@ipc",), deny=("@timer",),
                                           socket_families=("AF_INET",)))
    text = "\n".join(lines)
    assert "ENOSYS" in lines[0]
    assert "KILL_PROCESS" in text
    assert "socket families: AF_INET;" in text
    assert "AF_UNIX sockets are opt-in" in text
    assert "seccomp: deny ptrace (EPERM)" in text
    assert "seccomp: deny clone3 (ENOSYS)" in text
    assert "memfd_create" in text.split("still denied although in an allowed @group")[1]
    assert "profile denies (EPERM): alarm" in text
    assert "WARNING" not in text


def test_status_on_this_host() -> None:
    status = seccomp.status()
    assert status.name == "seccomp"
    if os.path.exists(seccomp.ACTIONS_AVAIL):
        assert status.status == "enforced", status.detail


@pytest.mark.root
def test_fork_false_blocks_processes_not_threads(require_root: None,
                                                 require_seccomp: None) -> None:
    """[process] fork = false: os.fork() is EPERM, threading still works."""

    def probe(_: Any) -> dict[str, Any]:
        import threading

        out: dict[str, Any] = {}
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            out["fork"] = "ok"
        except OSError as exc:
            out["fork"] = exc.errno
        box: list[int] = []
        t = threading.Thread(target=lambda: box.append(1))
        t.start()
        t.join()
        out["thread"] = box == [1]
        return out

    bpf = seccomp.compile_filter(seccomp.SeccompPolicy(allow_fork=False))
    result, status = run_child(probe, bpf)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result["fork"] == errno.EPERM
    assert result["thread"] is True
    # vfork cannot be called safely from Python: check the filter's decision instead.
    assert seccomp.evaluate(bpf, 58, ()) == (0x00050000 | errno.EPERM)


def test_compiling_runs_no_program() -> None:
    """seccomp.import_pyseccomp: pyseccomp's import looks its libraries up without
    running /sbin/ldconfig (ctypes.util.find_library would, twice: ~10 ms of every cold
    launch), and the filter compiles the same. A fresh interpreter: no program may be
    started at all while importing and compiling."""
    import importlib.util

    need(importlib.util.find_spec("pyseccomp") is not None, "pyseccomp is not installed")
    code = (
        "import subprocess, sys\n"
        "def refuse(*a, **k): raise AssertionError(f'a program was run: {a}')\n"
        "subprocess.Popen = refuse\n"
        "from sandrun.sandbox import seccomp\n"
        "bpf = seccomp.compile_filter(seccomp.SeccompPolicy())\n"
        "import ctypes.util\n"
        "assert ctypes.util.find_library.__module__ == 'ctypes.util'  # restored\n"
        "print(len(bpf) % 8, 'pyseccomp' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "0 True\n"


def test_compiling_without_memfd_create(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a filter around sandrun denies memfd_create, the export goes through a
    temporary file: the same bytes."""
    import importlib.util

    need(importlib.util.find_spec("pyseccomp") is not None, "pyseccomp is not installed")
    policy = SeccompPolicy()
    expected = seccomp.compile_filter(policy)

    def denied(*_: object) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", denied)
    assert seccomp.compile_filter(policy) == expected
