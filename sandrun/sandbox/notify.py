"""seccomp user notification: watch what a sandboxed app does (for `sandrun learn`).

The app loads a filter (`observe_filter`) that returns SECCOMP_RET_USER_NOTIF for the
syscalls learn watches (opens, program starts, socket creation, bind and connect, the
calls that create, remove or rename files) and for everything the enforcing filter
would deny; every other syscall runs as under enforcement. The filter is loaded with
SECCOMP_FILTER_FLAG_NEW_LISTENER; the app hands the listener fd to the launcher, where
a `Supervisor` thread (root) receives each notification, decodes its arguments (paths
and socket addresses read from /proc/<pid>/mem, socket types through pidfd_getfd) and
answers CONTINUE (the kernel runs the syscall as if the filter had allowed it) or an
errno.

Observation only. SECCOMP_USER_NOTIF_FLAG_CONTINUE is not an enforcement mechanism:
the app's memory can change between the supervisor reading a path and the kernel
reading it again when the syscall continues (seccomp_unotify(2) warns about exactly
this TOCTOU), so a supervisor that allowed or denied by what it read could be fooled by
another thread of the app. learn uses what it reads only to write a profile that the
kernel then enforces by itself (Landlock and a plain seccomp filter); an app that lies
to the observer only learns itself a profile that denies what it really does. Errors
the supervisor returns are safe (the syscall never runs).

Standard library and the kernel interface only: runner.py imports this module when a
launch observes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import stat
import struct
import threading
import time

from sandrun.errors import EnforcementError
from sandrun.sandbox.kernel import (
    BPF_MAXINSNS,
    SECCOMP_SET_MODE_FILTER,
    SYS_SECCOMP,
    errno_text,
    prctl,
    syscall,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# linux/seccomp.h
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
RET_ACTION_FULL = 0xFFFF0000
FILTER_FLAG_NEW_LISTENER = 1 << 3
USER_NOTIF_FLAG_CONTINUE = 1
# ioctls on the listener: SECCOMP_IOWR(0, struct seccomp_notif) (80 bytes),
# SECCOMP_IOWR(1, struct seccomp_notif_resp) (24 bytes), SECCOMP_IOW(2, __u64).
IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
IOCTL_NOTIF_ID_VALID = 0x40082102
_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, nr, arch, instruction_pointer, args
_RESP = struct.Struct("<QqiI")  # id, val, error, flags
AUDIT_ARCH_X86_64 = 0xC000003E
PR_GET_NO_NEW_PRIVS = 39

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
PATH_MAX = 4096
O_PATH = 0o10000000
O_ACCMODE = 3
O_CREAT, O_TRUNC, O_NOFOLLOW = 0o100, 0o1000, 0o400000

# The x86_64 syscalls learn watches (whatever the enforcing filter does with them).
WATCHED = {
    "open": 2, "openat": 257, "openat2": 437, "creat": 85,
    "execve": 59, "execveat": 322,
    "socket": 41, "connect": 42, "bind": 49,
    "mkdir": 83, "mkdirat": 258, "mknod": 133, "mknodat": 259,
    "rmdir": 84, "unlink": 87, "unlinkat": 263,
    "rename": 82, "renameat": 264, "renameat2": 316,
    "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266,
    "truncate": 76,
}
_NAMES = {number: name for name, number in WATCHED.items()}

# Path states as the supervisor saw them just before the syscall ran.
FILE, DIRECTORY, SPECIAL, ABSENT, UNKNOWN = "file", "dir", "special", "absent", "unknown"


# ---------------------------------------------------------------- the filter

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_RET_K = 0x06  # BPF_RET | BPF_K
_INSN = struct.Struct("<HBBI")


def observe_filter(enforcing: bytes, watched: Iterable[int]) -> bytes:
    """The enforcing filter with every denial (RET ERRNO) turned into RET_USER_NOTIF,
    behind a prefix that notifies the `watched` x86_64 syscall numbers.

    What the enforcing filter allows stays allowed without a round trip; the foreign
    architecture kill stays. Refuses a program with a return it does not understand.
    """
    numbers = sorted(set(watched))
    if len(numbers) > 200:
        raise EnforcementError("too many watched syscalls for one BPF jump",
                               "watch fewer syscalls (a sandrun bug)")
    body = []
    for code, jt, jf, k in _INSN.iter_unpack(enforcing):
        if code & 0x07 == 0x06:  # BPF_RET
            if code != _RET_K:
                raise EnforcementError("the enforcing seccomp filter returns a register "
                                       "value: it cannot be turned into an observer",
                                       "report this with the libseccomp version")
            if k & RET_ACTION_FULL == RET_ERRNO:
                k = RET_USER_NOTIF
            elif k not in (RET_ALLOW, RET_KILL_PROCESS) and k & RET_ACTION_FULL != 0:
                raise EnforcementError(f"the enforcing seccomp filter returns {k:#x}, "
                                       "which the observer does not know",
                                       "report this with the libseccomp version")
        body.append(_INSN.pack(code, jt, jf, k))
    n = len(numbers)
    prefix = [
        _INSN.pack(_LD_ABS, 0, 0, 4),  # seccomp_data.arch
        _INSN.pack(_JEQ_K, 0, n + 3, AUDIT_ARCH_X86_64),  # other arch: the enforcing part
        _INSN.pack(_LD_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for i, number in enumerate(numbers):
        prefix.append(_INSN.pack(_JEQ_K, n - i, 0, number))  # -> RET_USER_NOTIF below
    prefix.append(_INSN.pack(_JA, 0, 0, 1))
    prefix.append(_INSN.pack(_RET_K, 0, 0, RET_USER_NOTIF))
    program = b"".join(prefix + body)
    if len(program) // 8 > BPF_MAXINSNS:
        raise EnforcementError("the observing seccomp filter is too long",
                               "report this as a sandrun bug")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_listener_filter(bpf: bytes) -> int:
    """Install `bpf` on the calling thread and return the notification listener fd
    (close-on-exec). no_new_privs must be set. Runs in the app's process just before
    execve: after it, every notified syscall waits for a supervisor."""
    if prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise EnforcementError("no_new_privs is not set: refusing to load the seccomp "
                               "filter", "set it first (a sandrun bug)")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(program))
    fd, err = syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, FILTER_FLAG_NEW_LISTENER,
                      ctypes.addressof(fprog))
    if fd < 0:
        raise EnforcementError(f"seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER) failed: "
                               f"{errno_text(err)}",
                               "sandrun learn needs seccomp user notification (Linux >= 5.5)")
    return fd


# ---------------------------------------------------------------- notifications


class Notification:
    """One syscall waiting for the supervisor (struct seccomp_notif)."""

    __slots__ = ("arch", "args", "id", "nr", "pid")

    def __init__(self, data: bytes) -> None:
        self.id, self.pid, _flags, self.nr, self.arch, _ip, *args = _NOTIF.unpack(data)
        self.args = tuple(args)

    @property
    def name(self) -> str:
        return _NAMES.get(self.nr, f"syscall {self.nr}")


def _fd_arg(value: int) -> int:
    """An int argument (the kernel reads the low 32 bits, signed)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class _Process:
    """Reads one task's memory and resolves its paths (cached per pid)."""

    __slots__ = ("mem", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mem = -1

    def read(self, address: int, size: int) -> bytes:
        for _ in range(2):  # a cached fd of a replaced image (execve) reads nothing
            if self.mem < 0:
                self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(self.mem, size, address)
            except OSError:
                data = b""
            if data:
                return data
            self.close()
        return b""

    def string(self, address: int) -> str | None:
        """The NUL-terminated string at `address` (page by page: never across an
        unmapped page), or None if unreadable or longer than PATH_MAX."""
        if address == 0:
            return None
        data = b""
        while len(data) < PATH_MAX:
            chunk = self.read(address + len(data), 4096 - (address + len(data)) % 4096)
            if not chunk:
                return None
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            data += chunk
        return None

    def close(self) -> None:
        if self.mem >= 0:
            os.close(self.mem)
            self.mem = -1

    def base(self, dirfd: int) -> str | None:
        """The directory a relative path is resolved in (as the app sees it)."""
        link = f"/proc/{self.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{self.pid}/fd/{dirfd}"
        try:
            target = os.readlink(link)
        except OSError:
            return None
        return target if target.startswith("/") else None

    def path(self, dirfd: int, address: int, *, empty_ok: bool = False
             ) -> tuple[str, str] | None:
        """(absolute path, how to reach it from here) of a path argument: the second
        goes through /proc/<pid>/root, cwd or fd, so it resolves in the app's mount
        namespace. None when unreadable."""
        raw = self.string(address)
        if raw is None:
            return None
        if raw == "" and empty_ok:
            base = self.base(dirfd)
            return (base, f"/proc/{self.pid}/fd/{dirfd}") if base else None
        if raw.startswith("/"):
            absolute = os.path.normpath(raw).replace("//", "/")
            for own in ("/proc/self", "/proc/thread-self"):
                # "self" names whoever looks: from here, the app's process by its pid
                if absolute == own or absolute.startswith(own + "/"):
                    return absolute, f"/proc/{self.pid}{absolute[len(own):]}"
            return absolute, f"/proc/{self.pid}/root{raw}"
        base = self.base(dirfd)
        if base is None:
            return None
        via = f"/proc/{self.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{self.pid}/fd/{dirfd}"
        return os.path.normpath(os.path.join(base, raw)), f"{via}/{raw}"

    def socket_type(self, fd: int) -> int:
        """SO_TYPE of the app's socket `fd` (pidfd_getfd), 0 if unknown."""
        pidfd, _ = syscall(SYS_PIDFD_OPEN, self.pid, 0)
        if pidfd < 0:
            return 0
        try:
            copy, _ = syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if copy < 0:
                return 0
            sock = socket.socket(fileno=copy)
            try:
                return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
            except OSError:
                return 0
            finally:
                sock.close()
        finally:
            os.close(pidfd)


def _state(via: str, follow: bool = True) -> str:
    try:
        st = os.stat(via, follow_symlinks=follow)
    except FileNotFoundError:
        return ABSENT
    except OSError:
        return UNKNOWN
    if stat.S_ISDIR(st.st_mode):
        return DIRECTORY
    return FILE if stat.S_ISREG(st.st_mode) else SPECIAL


def _sockaddr(proc: _Process, address: int, length: int) -> tuple[int, object]:
    """(family, port or unix path) of a struct sockaddr in the app's memory."""
    data = proc.read(address, min(max(length, 0), 110)) if address else b""
    if len(data) < 2:
        return -1, None
    family = int.from_bytes(data[:2], "little")
    if family in (socket.AF_INET, socket.AF_INET6) and len(data) >= 4:
        return family, int.from_bytes(data[2:4], "big")
    if family == socket.AF_UNIX:
        name = data[2:length]
        if name[:1] == b"\0":
            return family, "@" + os.fsdecode(name[1:].rstrip(b"\0"))
        return family, os.fsdecode(name.split(b"\0", 1)[0])
    return family, None


def decode(proc: _Process, n: Notification) -> tuple[object, ...] | None:
    """What a watched syscall is about to do, as a hashable event, or None when the
    syscall is not a watched one (or its arguments cannot be read):

    ("open", path, write, create, state)   write: O_WRONLY/O_RDWR/O_TRUNC; create: O_CREAT
    ("exec", path, state)
    ("socket", family, type, protocol)
    ("connect" | "bind", family, socket type, port or unix path, state of a unix path)
    ("create", path, syscall, state)       mkdir, mknod, link, symlink: a new name
    ("remove", path, state)                unlink, rmdir
    ("rename", old, new, state of old)
    ("truncate", path, state)
    """
    name, a = _NAMES.get(n.nr), n.args
    if name is None:
        return None
    if name in ("open", "openat", "openat2", "creat"):
        if name == "open":
            dirfd, address, flags = AT_FDCWD, a[0], a[1]
        elif name == "creat":
            dirfd, address, flags = AT_FDCWD, a[0], O_CREAT | O_TRUNC | 1
        elif name == "openat":
            dirfd, address, flags = _fd_arg(a[0]), a[1], a[2]
        else:
            how = proc.read(a[2], 8) if a[3] >= 8 else b""
            if len(how) < 8:
                return None
            dirfd, address, flags = _fd_arg(a[0]), a[1], int.from_bytes(how, "little")
        if flags & O_PATH:
            return None  # Landlock checks nothing on O_PATH opens
        where = proc.path(dirfd, address)
        if where is None:
            return None
        write = flags & O_ACCMODE != os.O_RDONLY or bool(flags & O_TRUNC)
        return ("open", where[0], write, bool(flags & O_CREAT),
                _state(where[1], follow=not flags & O_NOFOLLOW))
    if name in ("execve", "execveat"):
        if name == "execve":
            where = proc.path(AT_FDCWD, a[0])
        else:
            where = proc.path(_fd_arg(a[0]), a[1], empty_ok=bool(a[4] & AT_EMPTY_PATH))
        return None if where is None else ("exec", where[0], _state(where[1]))
    if name == "socket":
        return ("socket", a[0] & 0xFFFFFFFF, a[1] & 0xF, a[2] & 0xFFFFFFFF)
    if name in ("connect", "bind"):
        family, target = _sockaddr(proc, a[1], a[2] & 0xFFFFFFFF)
        kind = proc.socket_type(_fd_arg(a[0])) if family != socket.AF_UNIX else 0
        state = ""
        if isinstance(target, str) and target and not target.startswith("@"):
            if target.startswith("/"):
                state = _state(f"/proc/{n.pid}/root{target}")
            else:
                state = _state(f"/proc/{n.pid}/cwd/{target}")
                base = proc.base(AT_FDCWD)
                target = os.path.normpath(os.path.join(base or "/", target))
        return (name, family, kind, target, state)
    # name -> (dirfd index or None, path index, event)
    layout = {"mkdir": (None, 0, "create"), "mkdirat": (0, 1, "create"),
              "mknod": (None, 0, "create"), "mknodat": (0, 1, "create"),
              "link": (None, 1, "create"), "linkat": (2, 3, "create"),
              "symlink": (None, 1, "create"), "symlinkat": (1, 2, "create"),
              "rmdir": (None, 0, "remove"), "unlink": (None, 0, "remove"),
              "unlinkat": (0, 1, "remove"), "truncate": (None, 0, "truncate")}
    if name in layout:
        dirfd_index, path_index, event = layout[name]
        dirfd = AT_FDCWD if dirfd_index is None else _fd_arg(a[dirfd_index])
        where = proc.path(dirfd, a[path_index])
        if where is None:
            return None
        state = _state(where[1], follow=False)
        return (event, where[0], name, state) if event == "create" else \
            (event, where[0], state)
    # rename, renameat, renameat2
    if name == "rename":
        old, new = proc.path(AT_FDCWD, a[0]), proc.path(AT_FDCWD, a[1])
    else:
        old, new = proc.path(_fd_arg(a[0]), a[1]), proc.path(_fd_arg(a[2]), a[3])
    if old is None or new is None:
        return None
    return ("rename", old[0], new[0], _state(old[1], follow=False))


# ---------------------------------------------------------------- the supervisor


class Supervisor:
    """Answers the notifications of one listener in a thread of the launcher.

    `handler(notification, event)` returns 0 to let the syscall run (CONTINUE) or an
    errno for it to fail with; `event` is `decode`'s (None for an unwatched syscall).
    A handler that raises lets the syscall run (the error is kept in `errors`): the
    app must never hang on its observer. runner.launch calls `start(fd)` with the
    socket on which the app sends its listener (SCM_RIGHTS), before it forks, and
    `stop()` after the app exited.
    """

    def __init__(self, handler: Callable[[Notification, tuple[object, ...] | None], int]
                 ) -> None:
        self.handler = handler
        self.errors: list[BaseException] = []
        self.notifications = 0
        self.busy_seconds = 0.0  # time spent deciding each answer
        self._fd = -1
        self._channel = -1
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._processes: dict[int, _Process] = {}

    def start(self, channel: int) -> None:
        """Start the thread, which takes the listener from `channel` (it owns `channel`).

        The thread blocks every signal: the launcher's main thread waits for them
        (sigwaitinfo) to forward them to the app."""
        self._channel = channel
        self._thread = threading.Thread(target=self._run, name="sandrun-observer",
                                        daemon=True)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (it closes the listener: a notified syscall of anything left
        fails with ENOSYS from then on) and the channel."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # stuck in a handler: it closes the listener when it ends
            self._thread = None
        if self._channel >= 0:
            os.close(self._channel)
            self._channel = -1
        for proc in self._processes.values():
            proc.close()
        self._processes.clear()

    def _receive_listener(self) -> bool:
        """Wait for the app's listener on the channel; False if it never comes (the
        launch failed first: end of file)."""
        poller = select.poll()
        poller.register(self._channel, select.POLLIN)
        while not poller.poll(50):
            if self._stopping:
                return False
        sock = socket.socket(fileno=self._channel)
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        finally:
            sock.detach()
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            return False
        os.set_inheritable(fds[0], False)
        self._fd = fds[0]
        return True

    def _run(self) -> None:
        try:
            if not self._receive_listener():
                return
        except OSError as exc:
            self.errors.append(exc)
            return
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            buffer = ctypes.create_string_buffer(_NOTIF.size)
            while True:
                ready = poller.poll(50)
                if not ready:
                    if self._stopping:
                        return
                    continue
                events = ready[0][1]
                if events & select.POLLIN:
                    if not self._answer_one(buffer):
                        return
                elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return  # no task uses the filter any more
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            # Whatever ended the loop, the app must not wait for answers that will not
            # come: with the listener closed, notified syscalls fail (ENOSYS) instead.
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _answer_one(self, buffer: ctypes.Array[ctypes.c_char]) -> bool:
        """Receive and answer one notification; False if the listener is unusable."""
        ctypes.memset(buffer, 0, _NOTIF.size)  # the kernel insists on a zeroed struct
        failed = _ioctl(self._fd, IOCTL_NOTIF_RECV, buffer)
        if failed:
            # ENOENT: the task died (or its syscall was interrupted) before we took it.
            if failed in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                return True
            self.errors.append(OSError(failed, f"SECCOMP_IOCTL_NOTIF_RECV: "
                                               f"{os.strerror(failed)}"))
            return False
        started = time.perf_counter()
        n = Notification(buffer.raw)
        self.notifications += 1
        error = 0
        try:
            proc = self._process(n.pid)
            event = decode(proc, n)
            # The pid could have died and been reused while we read its memory: only
            # what was read while the notification was still pending counts.
            if self._valid(n.id):
                error = self.handler(n, event)
        except BaseException as exc:  # never leave the app hanging
            self.errors.append(exc)
            error = 0
        # Measured before answering: the kernel hands the CPU to the woken app (on this
        # CPU), so the answer's own time includes the app's until its next notification.
        self.busy_seconds += time.perf_counter() - started
        self._respond(n.id, error)
        return True

    def _process(self, pid: int) -> _Process:
        proc = self._processes.get(pid)
        if proc is None:
            if len(self._processes) > 256:
                for old in self._processes.values():
                    old.close()
                self._processes.clear()
            proc = self._processes[pid] = _Process(pid)
        return proc

    def _valid(self, notification_id: int) -> bool:
        value = ctypes.c_uint64(notification_id)
        return _ioctl(self._fd, IOCTL_NOTIF_ID_VALID, value) == 0

    def _respond(self, notification_id: int, error: int) -> None:
        if error:
            resp = _RESP.pack(notification_id, 0, -error, 0)
        else:
            resp = _RESP.pack(notification_id, 0, 0, USER_NOTIF_FLAG_CONTINUE)
        buffer = ctypes.create_string_buffer(resp, len(resp))
        _ioctl(self._fd, IOCTL_NOTIF_SEND, buffer)  # ENOENT: the task is gone


# A library handle of its own: argtypes set here must not change kernel.libc's ioctl.
_libc_ioctl = ctypes.CDLL(None, use_errno=True).ioctl
_libc_ioctl.restype = ctypes.c_int
_libc_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


def _ioctl(fd: int, request: int, buffer: ctypes.Array[ctypes.c_char] | ctypes.c_uint64
           ) -> int:
    ctypes.set_errno(0)
    result = _libc_ioctl(fd, request, ctypes.addressof(buffer))
    return 0 if result == 0 else ctypes.get_errno() or errno.EIO
