"""sandrun escape probe: runs INSIDE the sandbox and really attempts forbidden things.

Usage: sandrun_probe ATTACK[=ARG] ...  Every attack runs in its own try/except; the probe
prints ONE JSON line {token: {"blocked": bool, "errno": "EACCES"|null, "detail": str}},
keyed by the argv token. An attack that succeeds returns (blocked = False); one the
sandbox stops raises OSError (blocked, with its errno) or Blocked (blocked, no errno).
Two attacks (int80 without MDWE, x32) get the whole process killed by seccomp: the
caller checks the exit status (128 + SIGSYS) instead.

It refuses to run as root: its attacks are only ever meant to meet a sandbox or an
unprivileged user. Standard library only; x86_64 syscall numbers.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR_GETPID = 39
NR_IOCTL = 16
NR_PTRACE = 101
NR_CAPGET = 125
NR_PERSONALITY = 135
NR_CHROOT = 161
NR_MOUNT = 165
NR_INIT_MODULE = 175
NR_KEYCTL = 250
NR_PERF_EVENT_OPEN = 298
NR_OPEN_BY_HANDLE_AT = 304
NR_SETNS = 308
NR_PROCESS_VM_READV = 310
NR_BPF = 321
NR_EXECVEAT = 322
NR_USERFAULTFD = 323
NR_IO_URING_SETUP = 425
NR_CLONE = 56
NR_UNSHARE = 272
X32_SYSCALL_BIT = 0x40000000

PR_CAPBSET_READ = 23
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_SET_MDWE = 65
PR_GET_MDWE = 66
CLONE_NEWUSER = 0x10000000
AT_EMPTY_PATH = 0x1000
TIOCSTI = 0x5412
READ_IMPLIES_EXEC = 0x0400000
UFFD_USER_MODE_ONLY = 1
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3
PTRACE_TRACEME, PTRACE_ATTACH = 0, 16
MSG_FASTOPEN = 0x20000000
IPPROTO_MPTCP = 262
PROT_RWX = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
MAP_FAILED = ctypes.c_void_p(-1).value

# IA-32 `getpid` through the legacy gate: mov eax, 20; int 0x80; ret.
INT80_GETPID = bytes.fromhex("b814000000" "cd80" "c3")
# A shared library the interpreter does not load by itself (so a copy really gets mapped).
SHARED_LIBRARY = "/lib/x86_64-linux-gnu/libbz2.so.1.0"

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


class Blocked(Exception):
    """The attack was stopped in a way that has no errno (e.g. every capability is 0)."""


def syscall(nr: int, *args: object) -> int:
    """Raw syscall; raises OSError with the kernel's errno on failure."""
    result = libc.syscall(ctypes.c_long(nr), *args)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def in_child(action: Callable[[], str]) -> str:
    """Run `action` in a forked child so a success (a new namespace, a changed personality)
    cannot change the probe; re-raise its OSError in the parent."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                message = {"ok": action()}
            except OSError as exc:
                message = {"errno": exc.errno, "strerror": exc.strerror}
            except BaseException as exc:
                message = {"error": repr(exc)}
            os.write(write_end, json.dumps(message).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    message = json.loads(raw or b'{"error": "child died without a word"}')
    if "errno" in message:
        raise OSError(message["errno"], message["strerror"])
    if "error" in message:
        raise RuntimeError(message["error"])
    return str(message["ok"])


# ------------------------------------------------------------------ where things are

def code_file() -> str:
    return os.path.abspath(__file__)


def site_dir() -> str:
    return os.path.dirname(code_file())


def bootstrap_file() -> str:
    return os.path.join(os.path.dirname(site_dir()), ".sandrun", "bootstrap.py")


def state_dir() -> str:
    return os.environ["HOME"]


def stdlib_dir() -> str:
    return os.path.dirname(os.__file__)


def create_file(path: str, data: bytes = b"pwned\n", mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def fresh(name: str) -> str:
    """A new path in the state dir (removing what an earlier run left)."""
    path = os.path.join(state_dir(), name)
    if os.path.lexists(path):
        os.unlink(path)
    return path


# ------------------------------------------------------------------ the attacks

ATTACKS: dict[str, Callable[[str], str]] = {}


def attack(func: Callable[[str], str]) -> Callable[[str], str]:
    ATTACKS[func.__name__] = func
    return func


# Controls: things the sandbox must still allow (proves the probe runs and is not broken).

@attack
def whoami(_: str) -> str:
    """Control: report uid/gid/groups (the test checks they are the app user's)."""
    return json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                       "groups": os.getgroups(), "pid": os.getpid()})


@attack
def read_code(_: str) -> str:
    """Control: the app can read its own code."""
    with open(code_file(), "rb") as f:
        return f"read {len(f.read())} bytes of {code_file()}"


@attack
def write_state(_: str) -> str:
    """Control: the app can write its state dir."""
    path = fresh("control.txt")
    create_file(path)
    return f"wrote {path}"


# Its own code: Landlock grants the tree read-only, and the tree is root-owned 0444/0555.

@attack
def write_code(_: str) -> str:
    """Overwrite a .py of its own package in site-packages (Landlock + DAC: EACCES)."""
    with open(code_file(), "r+b") as f:
        f.write(b"#")
    return f"overwrote {code_file()}"


@attack
def append_code(_: str) -> str:
    """Append to its own module (Landlock + DAC: EACCES)."""
    with open(code_file(), "ab") as f:
        f.write(b"\n# appended\n")
    return f"appended to {code_file()}"


@attack
def truncate_code(_: str) -> str:
    """truncate() its own module (Landlock TRUNCATE + DAC: EACCES)."""
    os.truncate(code_file(), os.path.getsize(code_file()))
    return f"truncated {code_file()}"


@attack
def write_bootstrap(_: str) -> str:
    """Overwrite the bootstrap sandrun execs (Landlock + DAC: EACCES)."""
    with open(bootstrap_file(), "r+b") as f:
        f.write(b"#")
    return f"overwrote {bootstrap_file()}"


@attack
def create_in_code(_: str) -> str:
    """Create a new module next to its own (Landlock MAKE_REG + DAC on a 0555 dir: EACCES)."""
    path = os.path.join(site_dir(), "evil_module.py")
    create_file(path)
    return f"created {path}"


@attack
def write_pth(_: str) -> str:
    """Drop a .pth into site-packages to run code at every start (EACCES)."""
    path = os.path.join(site_dir(), "zz_evil.pth")
    create_file(path, b"import os\n")
    return f"created {path}"


@attack
def write_pycache(_: str) -> str:
    """Overwrite (or plant) its own precompiled bytecode in site-packages/__pycache__,
    which Python would load instead of the source (EACCES)."""
    cache = os.path.join(site_dir(), "__pycache__")
    if not os.path.isdir(cache):
        os.mkdir(cache, 0o755)
    path = os.path.join(cache, "sandrun_probe.cpython-311.pyc")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    return f"wrote {path}"


@attack
def rename_code(_: str) -> str:
    """Rename its own module away (Landlock REMOVE_FILE/MAKE_REG + DAC: EACCES)."""
    os.rename(code_file(), code_file() + ".moved")
    return f"renamed {code_file()}"


@attack
def unlink_code(_: str) -> str:
    """Delete its own module (Landlock REMOVE_FILE + DAC: EACCES)."""
    os.unlink(code_file())
    return f"unlinked {code_file()}"


@attack
def chmod_code(_: str) -> str:
    """Make its own module world-writable (DAC: EPERM, not the owner; Landlock has no
    chmod right)."""
    os.chmod(code_file(), 0o666)
    return f"chmod 0666 {code_file()}"


@attack
def symlink_write_code(_: str) -> str:
    """Write its code through a symlink it made in its state dir (Landlock checks the
    target: EACCES)."""
    link = fresh("code-link.py")
    os.symlink(code_file(), link)
    with open(link, "r+b") as f:
        f.write(b"#")
    return f"overwrote {code_file()} via {link}"


@attack
def write_stdlib(_: str) -> str:
    """Overwrite the interpreter's os.py (Landlock read-only stdlib + DAC: EACCES)."""
    path = os.path.join(stdlib_dir(), "os.py")
    with open(path, "r+b") as f:
        f.read(1)
    return f"opened {path} for writing"


@attack
def create_in_stdlib(_: str) -> str:
    """Create a module in the stdlib dir, e.g. to shadow an import (EACCES)."""
    path = os.path.join(stdlib_dir(), "sandrun_evil.py")
    create_file(path)
    return f"created {path}"


@attack
def list_store(_: str) -> str:
    """List the store's apps/ dir, where other apps' trees live (Landlock: EACCES)."""
    apps = os.path.dirname(os.path.dirname(site_dir()))
    return f"listed {apps}: {os.listdir(apps)}"


# Executing what it wrote: Landlock grants no EXECUTE on the state dir, which is also
# mounted noexec (the mount, not Landlock, stops mmap(PROT_EXEC)).

@attack
def exec_written(_: str) -> str:
    """execve a script it wrote and chmod'ed 0755 in its state dir (Landlock: EACCES)."""
    path = fresh("evil.sh")
    create_file(path, b"#!/bin/sh\nexit 42\n", 0o755)
    os.chmod(path, 0o755)
    code = subprocess.run([path], check=False, stdin=subprocess.DEVNULL).returncode
    return f"executed {path}: exit {code}"


@attack
def mmap_exec_written(_: str) -> str:
    """mmap(PROT_READ|PROT_EXEC) a file it wrote (noexec state dir: EPERM)."""
    path = fresh("blob.bin")
    create_file(path, b"\xc3" * mmap.PAGESIZE)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
    mapping.close()
    return f"mapped {path} executable"


@attack
def cdll_written(_: str) -> str:
    """ctypes.CDLL a .so it copied into its state dir (noexec: "failed to map segment")."""
    path = fresh("libcopy.so")
    shutil.copyfile(SHARED_LIBRARY, path)
    try:
        ctypes.CDLL(path)
    except OSError as exc:  # dlopen gives a message, no errno
        raise Blocked(str(exc)) from None
    return f"loaded {path}"


@attack
def ld_preload_written(_: str) -> str:
    """Start its interpreter with LD_PRELOAD=<a .so it wrote> (noexec: the loader cannot map
    it and ignores it)."""
    path = fresh("libpreload.so")
    shutil.copyfile(SHARED_LIBRARY, path)
    proc = subprocess.run([sys.executable, "-I", "-c", "pass"], capture_output=True,
                          check=False, stdin=subprocess.DEVNULL,
                          env={"LD_PRELOAD": path, "PATH": "/usr/bin:/bin"})
    stderr = proc.stderr.decode(errors="replace").strip()
    if "cannot be preloaded" in stderr:
        raise Blocked(stderr)
    return f"preloaded {path} (exit {proc.returncode}, stderr {stderr!r})"


@attack
def memfd_create(_: str) -> str:
    """memfd_create: an executable file no Landlock rule sees (seccomp: EPERM)."""
    fd = os.memfd_create("probe")
    os.close(fd)
    return "created a memfd"


@attack
def execveat(_: str) -> str:
    """execveat(fd, "", AT_EMPTY_PATH): run code from an fd (seccomp: EPERM; allowed it
    would give EBADF for fd -1)."""
    syscall(NR_EXECVEAT, ctypes.c_int(-1), b"", None, None, AT_EMPTY_PATH)
    return "execveat returned"


@attack
def rwx_anon(_: str) -> str:
    """Anonymous writable+executable memory (MDWE: EACCES)."""
    mapping = mmap.mmap(-1, mmap.PAGESIZE, prot=PROT_RWX)
    mapping.close()
    return "mapped RWX memory"


@attack
def mprotect_wx(_: str) -> str:
    """Write code to an RW page, then mprotect it R+X (MDWE: EACCES)."""
    addr = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, MAP_FAILED):
        check(-1, "mmap")
    try:
        ctypes.memmove(addr, b"\xc3", 1)
        check(libc.mprotect(addr, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC), "mprotect")
    finally:
        libc.munmap(addr, mmap.PAGESIZE)
    return "made a written page executable"


@attack
def mdwe_disable(_: str) -> str:
    """Turn MDWE off again (the flag is sticky: EPERM)."""
    check(libc.prctl(PR_SET_MDWE, 0, 0, 0, 0), "prctl(PR_SET_MDWE, 0)")
    return f"PR_SET_MDWE 0 accepted, now {libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)}"


@attack
def int80(_: str) -> str:
    """IA-32 getpid through `int 0x80`, which bypasses a filter that ignores the arch.
    Needs an RWX page: with MDWE that fails (EACCES); without, seccomp kills (SIGSYS)."""
    addr = libc.mmap(None, mmap.PAGESIZE, PROT_RWX, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     -1, 0)
    if addr in (None, MAP_FAILED):
        check(-1, "mmap RWX for the int 0x80 code")
    ctypes.memmove(addr, INT80_GETPID, len(INT80_GETPID))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
    return f"int 0x80 getpid returned {result} (pid {os.getpid()})"


@attack
def x32(_: str) -> str:
    """x32 ABI getpid (nr | 0x40000000): another arch seccomp must kill (SIGSYS)."""
    return f"x32 getpid returned {syscall(X32_SYSCALL_BIT | NR_GETPID)}"


# Reading what it was not granted.

@attack
def read_file(path: str) -> str:
    """Read a world-readable file outside its grants (Landlock: EACCES)."""
    with open(path, "rb") as f:
        return f"read {f.read()!r}"


@attack
def read_shadow(_: str) -> str:
    """Read /etc/shadow (Landlock + DAC: EACCES)."""
    with open("/etc/shadow", "rb") as f:
        return f"read {len(f.read())} bytes"


@attack
def symlink_read(path: str) -> str:
    """Read a forbidden file through a symlink it made in its state dir (Landlock checks
    the target: EACCES)."""
    link = fresh("secret-link")
    os.symlink(path, link)
    with open(link, "rb") as f:
        return f"read {f.read()!r} via {link}"


@attack
def hardlink_read(path: str) -> str:
    """Hard-link a forbidden file into its state dir, then read it (EXDEV: the state dir is
    its own bind mount; else protected_hardlinks/Landlock)."""
    link = fresh("secret-hardlink")
    os.link(path, link)
    with open(link, "rb") as f:
        return f"read {f.read()!r} via {link}"


@attack
def read_other_state(path: str) -> str:
    """Read another app's state file (Landlock + DAC 0700: EACCES)."""
    with open(path, "rb") as f:
        return f"read {f.read()!r}"


@attack
def proc_root(_: str) -> str:
    """List /proc/1/root, the file system as pid 1 sees it (Landlock: EACCES)."""
    return f"listed {os.listdir('/proc/1/root')[:5]}"


@attack
def proc_environ(_: str) -> str:
    """Read /proc/self/environ (Landlock: EACCES)."""
    with open("/proc/self/environ", "rb") as f:
        return f"read {f.read()!r}"


@attack
def proc_mem(_: str) -> str:
    """Open /proc/self/mem for writing, which ignores page protections (Landlock: EACCES)."""
    with open("/proc/self/mem", "r+b"):
        return "opened /proc/self/mem read-write"


@attack
def environ(allowed: str) -> str:
    """Look for leaked environment variables: blocked when only `allowed` (comma separated)
    are set. Detail: the sorted names, as JSON."""
    names = sorted(os.environ)
    detail = json.dumps(names)
    if set(names) <= set(allowed.split(",")):
        raise Blocked(detail)
    return detail


@attack
def inherited_fds(_: str) -> str:
    """fstat fds 3..64: every fd sandrun's caller held must be closed (EBADF)."""
    open_fds = {}
    for fd in range(3, 65):
        try:
            st = os.fstat(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                open_fds[fd] = f"fstat: {errno.errorcode.get(exc.errno or 0)}"
            continue
        open_fds[fd] = f"mode {st.st_mode:o} ino {st.st_ino} size {st.st_size}"
    if open_fds:
        return json.dumps(open_fds)
    raise OSError(errno.EBADF, "every fd from 3 to 64 is closed")


@attack
def write_outside(directory: str) -> str:
    """Create a file in a world-writable dir outside its grants (Landlock: EACCES)."""
    path = os.path.join(directory, f"probe-{os.getpid()}")
    create_file(path)
    os.unlink(path)
    return f"created {path}"


@attack
def write_runlock(_: str) -> str:
    """Create a file in the host's /run/lock (1777: DAC would allow it). The sandbox has a
    private /run, so it is not there (ENOENT); /tmp, /var/tmp and /dev/shm are the
    sandbox's own private tmpfs, writable by design."""
    path = f"/run/lock/sandrun-probe-{os.getpid()}"
    create_file(path)
    os.unlink(path)
    return f"created {path}"


# Privileges and the kernel's attack surface.

@attack
def setuid0(_: str) -> str:
    """setuid(0) (no privileges: EPERM)."""
    os.setuid(0)
    return "became root"


@attack
def setgid0(_: str) -> str:
    """setgid(0) (EPERM)."""
    os.setgid(0)
    return "became group root"


@attack
def setgroups(_: str) -> str:
    """setgroups([0]) (EPERM)."""
    os.setgroups([0])
    return "joined group root"


@attack
def capabilities(_: str) -> str:
    """Every capability set (effective, permitted, inheritable, bounding, ambient) is empty;
    blocked when all are 0."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()
    syscall(NR_CAPGET, header, data)
    sets = {"effective": data[0] | data[3] << 32, "permitted": data[1] | data[4] << 32,
            "inheritable": data[2] | data[5] << 32, "bounding": 0, "ambient": 0}
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            sets["bounding"] |= 1 << cap
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1:
            sets["ambient"] |= 1 << cap
    detail = json.dumps({k: hex(v) for k, v in sets.items()})
    if not any(sets.values()):
        raise Blocked(detail)
    return detail


@attack
def no_new_privs(_: str) -> str:
    """no_new_privs must be 1 (setuid binaries cannot elevate); blocked when it is."""
    value = libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    if value == 1:
        raise Blocked("no_new_privs = 1")
    return f"no_new_privs = {value}"


@attack
def ptrace_traceme(_: str) -> str:
    """ptrace(PTRACE_TRACEME) (seccomp: EPERM)."""
    return in_child(lambda: f"traced: {syscall(NR_PTRACE, PTRACE_TRACEME, 0, None, None)}")


@attack
def ptrace_attach(_: str) -> str:
    """ptrace(PTRACE_ATTACH, 1) on its pid namespace's init (seccomp: EPERM)."""
    return f"attached: {syscall(NR_PTRACE, PTRACE_ATTACH, 1, None, None)}"


@attack
def process_vm_readv(_: str) -> str:
    """process_vm_readv on pid 1 (seccomp: EPERM)."""
    return f"read: {syscall(NR_PROCESS_VM_READV, 1, None, 0, None, 0, 0)}"


@attack
def unshare_user(_: str) -> str:
    """unshare(CLONE_NEWUSER): become "root" in a new user namespace (seccomp: EPERM)."""
    return in_child(lambda: f"unshared: {syscall(NR_UNSHARE, CLONE_NEWUSER)}")


@attack
def clone_newuser(_: str) -> str:
    """clone(CLONE_NEWUSER): the same through clone's flags (seccomp arg check: EPERM)."""
    pid = syscall(NR_CLONE, CLONE_NEWUSER | signal.SIGCHLD, None, None, None, 0)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return f"cloned pid {pid} into a new user namespace"


@attack
def setns(_: str) -> str:
    """setns(-1, 0): join another namespace (seccomp: EPERM; allowed it gives EBADF)."""
    return f"setns: {syscall(NR_SETNS, ctypes.c_int(-1), 0)}"


@attack
def mount(_: str) -> str:
    """mount a tmpfs over its state dir (seccomp: EPERM)."""
    target = state_dir().encode()
    return f"mounted: {syscall(NR_MOUNT, b'none', target, b'tmpfs', 0, None)}"


@attack
def chroot(_: str) -> str:
    """chroot into its state dir (seccomp: EPERM)."""
    return f"chroot: {syscall(NR_CHROOT, state_dir().encode())}"


@attack
def keyctl(_: str) -> str:
    """keyctl: the session keyring, shared outside the sandbox (seccomp: EPERM)."""
    key = syscall(NR_KEYCTL, KEYCTL_GET_KEYRING_ID, ctypes.c_int(KEY_SPEC_SESSION_KEYRING), 1)
    return f"session keyring {key}"


@attack
def io_uring_setup(_: str) -> str:
    """io_uring_setup with valid params (seccomp: EPERM)."""
    params = ctypes.create_string_buffer(120)
    fd = syscall(NR_IO_URING_SETUP, 1, params)
    os.close(fd)
    return f"io_uring fd {fd}"


@attack
def userfaultfd(_: str) -> str:
    """userfaultfd(UFFD_USER_MODE_ONLY), which unprivileged users may have (seccomp: EPERM)."""
    fd = syscall(NR_USERFAULTFD, os.O_CLOEXEC | UFFD_USER_MODE_ONLY)
    os.close(fd)
    return f"userfaultfd {fd}"


@attack
def bpf(_: str) -> str:
    """bpf(BPF_MAP_CREATE) (seccomp: EPERM)."""
    attr = ctypes.create_string_buffer(128)
    return f"bpf: {syscall(NR_BPF, 0, attr, 128)}"


@attack
def perf_event_open(_: str) -> str:
    """perf_event_open (seccomp: EPERM; allowed, a NULL attr gives EFAULT)."""
    return f"perf: {syscall(NR_PERF_EVENT_OPEN, None, 0, -1, -1, 0)}"


@attack
def open_by_handle_at(_: str) -> str:
    """open_by_handle_at, the classic container escape (seccomp: EPERM)."""
    return f"opened: {syscall(NR_OPEN_BY_HANDLE_AT, -100, None, 0)}"


@attack
def init_module(_: str) -> str:
    """init_module (seccomp: EPERM)."""
    return f"loaded: {syscall(NR_INIT_MODULE, None, 0, b'')}"


@attack
def personality(_: str) -> str:
    """personality(READ_IMPLIES_EXEC): make every readable mapping executable (seccomp:
    EPERM)."""
    return in_child(lambda: f"old personality {syscall(NR_PERSONALITY, READ_IMPLIES_EXEC):#x}")


def require_controlling_tty() -> None:
    """TIOCSTI on a terminal that is not our controlling one fails with EPERM anyway, which
    would look like seccomp's EPERM. TIOCGPGRP succeeds only on the controlling tty."""
    try:
        fcntl.ioctl(0, termios.TIOCGPGRP, b"\0" * 4)
    except OSError as exc:
        raise RuntimeError(f"fd 0 is not the controlling terminal ({exc}): TIOCSTI would "
                           "fail whatever the sandbox does") from None


@attack
def tiocsti(_: str) -> str:
    """ioctl(0, TIOCSTI): push keystrokes into its controlling terminal's input, to be run by
    the shell after it exits (seccomp: EPERM)."""
    require_controlling_tty()
    fcntl.ioctl(0, TIOCSTI, b" ")
    return "injected a byte into the terminal"


@attack
def tiocsti_high(_: str) -> str:
    """TIOCSTI with garbage in the high 32 bits of the command, which the kernel drops
    (seccomp compares the low 32 bits: EPERM)."""
    require_controlling_tty()
    char = ctypes.c_char(b" ")
    syscall(NR_IOCTL, 0, ctypes.c_ulong((1 << 32) | TIOCSTI), ctypes.byref(char))
    return "injected a byte into the terminal"


# Network.

@attack
def socket_inet(_: str) -> str:
    """socket(AF_INET) under a profile without network (seccomp: EPERM)."""
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    return "created an AF_INET socket"


@attack
def socket_inet6(_: str) -> str:
    """socket(AF_INET6) under a profile without network (seccomp: EPERM)."""
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    return "created an AF_INET6 socket"


@attack
def socket_netlink(_: str) -> str:
    """socket(AF_NETLINK): routing and other kernel interfaces (seccomp: EPERM)."""
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE).close()
    return "created an AF_NETLINK socket"


@attack
def socket_packet(_: str) -> str:
    """socket(AF_PACKET): raw frames (seccomp: EPERM)."""
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    return "created an AF_PACKET socket"


@attack
def abstract_unix(name: str) -> str:
    """Connect to an abstract unix socket outside the sandbox (Landlock scope: EPERM)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + name)
    return f"connected to @{name}"


@attack
def unix_path(path: str) -> str:
    """Connect to a world-writable pathname unix socket outside its grants (no Landlock
    right governs connect() on ABI 7; must be stopped some other way)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
    return f"connected to {path}"


@attack
def connect(port: str) -> str:
    """TCP connect to 127.0.0.1:PORT (Landlock: EACCES unless PORT is in connect_tcp)."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
        return f"connected to 127.0.0.1:{port}"


@attack
def connect6(port: str) -> str:
    """TCP connect over AF_INET6 to ::ffff:127.0.0.1:PORT (Landlock: EACCES)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(("::ffff:127.0.0.1", int(port)))
    return f"connected to [::ffff:127.0.0.1]:{port}"


@attack
def mptcp_connect(port: str) -> str:
    """Multipath TCP connect to 127.0.0.1:PORT: Landlock's TCP rules skip IPPROTO_MPTCP
    sockets, which still reach plain TCP servers (must be refused: EACCES or EPERM)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", int(port)))
    return f"connected to 127.0.0.1:{port} over MPTCP"


@attack
def mptcp_bind(port: str) -> str:
    """Multipath TCP bind to 127.0.0.1:PORT outside bind_tcp (must be refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as sock:
        sock.bind(("127.0.0.1", int(port)))
    return f"bound 127.0.0.1:{port} over MPTCP"


@attack
def fastopen(port: str) -> str:
    """TCP Fast Open: sendto(MSG_FASTOPEN) connects without connect() (Landlock: EACCES)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Blocking on purpose: with a timeout the socket is non-blocking and the call
        # returns EINPROGRESS once the SYN is out, hiding whether it got through.
        sock.sendto(b"fastopen", MSG_FASTOPEN, ("127.0.0.1", int(port)))
    return f"sent to 127.0.0.1:{port} with MSG_FASTOPEN"


@attack
def bind(port: str) -> str:
    """Bind 127.0.0.1:PORT (Landlock: EACCES unless PORT is in bind_tcp)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", int(port)))
    return f"bound 127.0.0.1:{port}"


@attack
def listen_unbound(_: str) -> str:
    """listen() on a never-bound TCP socket, which autobinds an ephemeral port (must not
    make the app a server without a bind_tcp grant)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.listen()
        return f"listening on {sock.getsockname()}"


@attack
def udp(port: str) -> str:
    """UDP datagram to 127.0.0.1:PORT; Landlock filters TCP only, so a profile without
    dns must not allow UDP (seccomp on the socket type: EPERM)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"udp-escape", ("127.0.0.1", int(port)))
    return f"sent a datagram to 127.0.0.1:{port}"


# Other processes.

@attack
def kill_pid(pid: str) -> str:
    """Signal 0 then SIGTERM to a process outside the sandbox (PID namespace: ESRCH, it
    has no pid in here)."""
    os.kill(int(pid), 0)
    os.kill(int(pid), signal.SIGTERM)
    return f"signalled {pid}"


@attack
def kill_init(_: str) -> str:
    """Signal 0 to pid 1, sandrun's root init outside the Landlock domain (Landlock signal
    scope + DAC: EPERM)."""
    os.kill(1, 0)
    return "may signal pid 1"


@attack
def leftover(_: str) -> str:
    """Fork a child that outlives the probe, appending to <state>/leftover.marker every
    0.1 s (the test checks sandrun kills it)."""
    marker = fresh("leftover.marker")
    create_file(marker, b"")
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # never hold the caller's pipes open
                os.dup2(null, fd)
            os.setsid()
            while True:
                with open(marker, "ab") as f:
                    f.write(b"x")
                time.sleep(0.1)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 2
    while not os.path.getsize(marker) and time.monotonic() < deadline:
        time.sleep(0.01)  # return only once the child provably runs
    return f"child {pid} writes {marker} ({os.path.getsize(marker)} bytes so far)"


def run(token: str) -> dict[str, object]:
    name, _, arg = token.partition("=")
    func = ATTACKS.get(name)
    if func is None:
        return {"blocked": False, "errno": None, "detail": f"unknown attack {name!r}"}
    try:
        detail = func(arg)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0) if exc.errno else None
        return {"blocked": True, "errno": code, "detail": str(exc)}
    except Blocked as exc:
        return {"blocked": True, "errno": None, "detail": str(exc)}
    except Exception as exc:  # a broken attack is not a blocked one
        return {"blocked": False, "errno": None, "detail": f"probe error: {exc!r}"}
    return {"blocked": False, "errno": None, "detail": detail}


def main() -> int:
    if os.getuid() == 0:
        print("probe refuses to run as root")
        sys.exit(99)
    results = {token: run(token) for token in sys.argv[1:]}
    print(json.dumps(results, sort_keys=True), flush=True)
    return 0
