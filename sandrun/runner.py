"""The launch itself: private namespaces, the protections in DESIGN.md's fixed order,
then execve of the app — all from a `RunSpec` of plain data.

Both exec paths end here: the cold path (`launcher.prepare` builds the spec) and the
warm path (`warm_exec` loads a cached spec). So this module imports only what loads
in microseconds (os, ctypes, _signal, marshal, resource): every warm start pays for
it. The Landlock and seccomp kernel calls live here for the same reason;
`landlock.py` and `seccomp.py` build what they apply.
"""

from __future__ import annotations

import _signal
import ctypes
import errno
import marshal
import os
import stat

from sandrun.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EnforcementError,
    SandrunError,
)

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from typing import Any

# prctl(2) and unshare(2) constants (linux/prctl.h, linux/sched.h, linux/mount.h).
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18

# Signals an operator sends to a service; forwarded when sent by a process (not the tty,
# whose signals reach the app directly through the foreground process group).
FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT,
                     _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH, _signal.SIGALRM,
                     _signal.SIGCONT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU)

# Landlock (uapi/linux/landlock.h). The syscalls share one number on every architecture
# but alpha (added after the syscall tables were unified).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
# Rights that apply to files (the kernel rejects directory-only rights on a file rule);
# landlock.FS_FILE_RIGHTS spells it out by name (a test keeps the two equal).
FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
# Size of landlock_ruleset_attr up to the last field an ABI knows: older kernels reject
# a larger struct unless the extra bytes are zero, so pass only what is filled in.
_RULESET_ATTR_SIZE_FS = 8
_RULESET_ATTR_SIZE_NET = 16
_RULESET_ATTR_SIZE_SCOPED = 24

# seccomp
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
BPF_MAXINSNS = 4096
# The first instruction of every sandrun filter: load seccomp_data.arch.
BPF_LOAD_ARCH = bytes((0x20, 0, 0, 0, 4, 0, 0, 0))

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64))


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the uapi struct is __attribute__((packed)): 12 bytes
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def syscall(number: int, *args: int) -> tuple[int, int]:
    """Call a raw syscall; return (result, errno) with errno read right after the call."""
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return int(result), ctypes.get_errno()


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ctypes.set_errno(0)
    return int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                           ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)))


def errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, f'errno {code}')} ({os.strerror(code)})"


# ---------------------------------------------------------------- the spec


class RunSpec:
    """Everything the launch needs, as plain data (so it can be cached with marshal).

    `landlock` is a ruleset spec from `landlock.ruleset_spec` (or None when Landlock is
    absent and the profile accepted that); `seccomp_bpf` a filter from
    `seccomp.compile_filter`. `env` is the fixed part of the environment; the values of
    `env_pass` are taken from sandrun's own environment at each launch, then `env_set`
    applies.
    """

    __slots__ = ("argv", "cwd", "env", "env_pass", "env_set", "gid", "interpreter",
                 "landlock", "mdwe", "privileged", "rlimits", "seccomp_bpf", "state_dir",
                 "uid", "user_name")

    def __init__(self, *, privileged: bool, uid: int, gid: int, user_name: str,
                 interpreter: str, argv: list[str], env: dict[str, str],
                 env_pass: list[str], env_set: dict[str, str], cwd: str, state_dir: str,
                 rlimits: list[tuple[str, int | None]], mdwe: bool,
                 landlock: dict[str, Any] | None, seccomp_bpf: bytes) -> None:
        self.privileged = privileged
        self.uid = uid
        self.gid = gid
        self.user_name = user_name
        self.interpreter = interpreter
        self.argv = argv
        self.env = env
        self.env_pass = env_pass
        self.env_set = env_set
        self.cwd = cwd
        self.state_dir = state_dir
        self.rlimits = rlimits
        self.mdwe = mdwe
        self.landlock = landlock
        self.seccomp_bpf = seccomp_bpf

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{name: data[name] for name in cls.__slots__})

    def environment(self, outer: dict[str, str] | os._Environ[str]) -> dict[str, str]:
        env = dict(self.env)
        for name in self.env_pass:
            if name in outer:
                env[name] = outer[name]
        env.update(self.env_set)
        return env


# ---------------------------------------------------------------- Landlock (kernel side)


def _landlock_error(what: str, err: int, meanings: dict[int, str], hint: str
                    ) -> EnforcementError:
    return EnforcementError(f"{what}: {errno_text(err)}: {meanings.get(err, 'unexpected error')}",
                            hint)


def build_ruleset(spec: dict[str, Any]) -> int:
    """Create the ruleset of a `landlock.ruleset_spec` and add its rules; return its fd.

    Runs as root before forking: it opens the paths, which the app user may not be
    able to open. A missing required path refuses the launch; a missing optional one
    is skipped.
    """
    attr = _RulesetAttr(handled_access_fs=spec["handled_fs"],
                        handled_access_net=spec["handled_net"], scoped=spec["scoped"])
    size = (_RULESET_ATTR_SIZE_SCOPED if spec["scoped"] else
            _RULESET_ATTR_SIZE_NET if spec["handled_net"] else _RULESET_ATTR_SIZE_FS)
    ruleset_fd, err = syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), size, 0)
    if ruleset_fd < 0:
        raise _landlock_error("cannot create the Landlock ruleset", err, {
            errno.EOPNOTSUPP: "Landlock is supported by the kernel but disabled at boot",
            errno.ENOSYS: "the kernel has no Landlock",
            errno.EINVAL: "a handled right or scope is unknown to this kernel",
            errno.E2BIG: "the attribute struct is larger than this kernel knows",
            errno.ENOMSG: "the ruleset handles nothing",
            errno.EMFILE: "too many open files",
        }, "check that the kernel enables Landlock (lsm=...,landlock)")
    try:
        for path, rights, required, label in spec["paths"]:
            path_fd = _open_rule_path(path, required, label)
            if path_fd is None:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
                    # The kernel rejects directory rights on files and devices (EINVAL).
                    rights &= FS_FILE_RIGHTS
                if rights:
                    _add_rule(ruleset_fd, LANDLOCK_RULE_PATH_BENEATH,
                              _PathBeneathAttr(allowed_access=rights, parent_fd=path_fd),
                              f"{path!r} ({label})")
            finally:
                os.close(path_fd)
        if spec["handled_net"]:
            for right, verb, ports in ((ACCESS_NET_BIND_TCP, "bind", spec["bind_tcp"]),
                                       (ACCESS_NET_CONNECT_TCP, "connect", spec["connect_tcp"])):
                for port in ports:
                    _add_rule(ruleset_fd, LANDLOCK_RULE_NET_PORT,
                              _NetPortAttr(allowed_access=right, port=port),
                              f"TCP {verb} port {port}")
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd


def _open_rule_path(path: str, required: bool, label: str) -> int | None:
    """O_PATH fd of a rule's path (following symlinks), or None for an absent optional."""
    try:
        # No O_NOFOLLOW: a symlinked /etc/resolv.conf must grant its target.
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not required:
            return None
        raise EnforcementError(f"required path {path!r} ({label}) does not exist",
                               "create it, or remove it from the profile's [filesystem] "
                               "lists") from exc
    except OSError as exc:
        raise EnforcementError(f"cannot open {path!r} for a Landlock rule: "
                               f"{errno_text(exc.errno or 0)}",
                               "check the path and its parent directories") from exc


def _add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure, what: str) -> None:
    result, err = syscall(SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type,
                          ctypes.addressof(attr), 0)
    if result != 0:
        raise _landlock_error(f"cannot add the Landlock rule for {what}", err, {
            errno.EINVAL: "rights not handled by the ruleset or not applicable to this "
                          "file type",
            errno.ENOMSG: "the rule grants no right",
            errno.EBADF: "the ruleset or path fd is not open",
            errno.EBADFD: "the ruleset fd is not a ruleset, or the path fd is not "
                          "O_PATH-opened",
            errno.EPERM: "the ruleset fd was not opened for writing",
            errno.EFAULT: "bad rule address (a bug in sandrun)",
        }, "report this as a sandrun bug, with the profile and kernel version")


def restrict_self(ruleset_fd: int, flags: int) -> None:
    """Enforce a ruleset on the calling thread, then close its fd.

    no_new_privs must already be set: this refuses without it (root with
    CAP_SYS_ADMIN could otherwise skip it by mistake).
    """
    if ruleset_fd < 0:
        return  # Landlock absent and accepted (min_abi 0); the plan already says so
    try:
        if prctl(PR_GET_NO_NEW_PRIVS) != 1:
            raise EnforcementError(
                "no_new_privs is not set: refusing to enforce Landlock",
                "call prctl(PR_SET_NO_NEW_PRIVS, 1) after dropping privileges (a sandrun bug)")
        result, err = syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, flags)
        if result != 0:
            raise _landlock_error("cannot enforce the Landlock ruleset", err, {
                errno.EPERM: "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
                errno.E2BIG: "the process already has 16 nested Landlock domains",
                errno.EBADF: "the ruleset fd was closed before restrict_self",
                errno.EBADFD: "the fd is not a Landlock ruleset",
                errno.EINVAL: "unknown restrict_self flags for this kernel",
                errno.EOPNOTSUPP: "Landlock is disabled",
            }, "report this as a sandrun bug, with the profile and kernel version")
    finally:
        try:
            os.close(ruleset_fd)
        except OSError:  # never hide the real error behind EBADF
            pass


# ---------------------------------------------------------------- seccomp (kernel side)


def load_seccomp_filter(bpf: bytes) -> None:
    """Install `bpf` on the calling thread with seccomp(SECCOMP_SET_MODE_FILTER).

    no_new_privs must already be set. No flags: the child is single-threaded at this
    point, so TSYNC is not needed.
    """
    count, rest = divmod(len(bpf), 8)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise EnforcementError(
            f"not a seccomp BPF program: {len(bpf)} bytes (need 1..{BPF_MAXINSNS} "
            "instructions of 8 bytes)", "recompile the filter with compile_filter()")
    if bpf[:8] != BPF_LOAD_ARCH:
        raise EnforcementError("refusing a seccomp program that does not check the "
                               "architecture first", "recompile the filter with compile_filter()")
    if prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise EnforcementError(
            "no_new_privs is not set: refusing to load the seccomp filter",
            "call prctl(PR_SET_NO_NEW_PRIVS, 1) first (the launch order sets it before "
            "Landlock and seccomp)")
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(count, ctypes.addressof(program))
    result, code = syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.addressof(fprog))
    if result != 0:
        hints = {
            errno.EINVAL: "the kernel rejected the BPF program; recompile it",
            errno.EACCES: "set no_new_privs first",
            errno.ENOSYS: "the kernel has no seccomp() (CONFIG_SECCOMP_FILTER)",
            errno.ENOMEM: "too many filters are already stacked on this process",
        }
        raise EnforcementError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {errno_text(code)}",
                               hints.get(code, "check the kernel's seccomp support"))


# ---------------------------------------------------------------- the launch


def launch(spec: RunSpec, args: tuple[str, ...] | list[str] = ()) -> int:
    """Fork, sandbox the child, exec the app; return its exit code (128+N if killed)."""
    env = spec.environment(os.environ)
    argv = [*spec.argv, *args]
    # First, before any fd or signal mask that a failure here would leave behind. Both
    # affect only the children forked below.
    if spec.privileged:
        if _libc.unshare(CLONE_NEWPID) != 0:
            raise EnforcementError(f"unshare(CLONE_NEWPID) failed: "
                                   f"{os.strerror(ctypes.get_errno())}",
                                   "sandrun needs root with CAP_SYS_ADMIN to isolate the app")
    else:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    ruleset_fd = build_ruleset(spec.landlock) if spec.landlock else -1
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            cap_last = int(f.read())
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        if ruleset_fd >= 0:
            os.close(ruleset_fd)
        raise
    waited = {*FORWARDED_SIGNALS, _signal.SIGCHLD}
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, waited)
    child = _Child(spec, argv, env, ruleset_fd, err_w, cap_last)
    pid = os.fork()
    if pid == 0:
        code = EXIT_REFUSED
        try:
            if spec.privileged:
                code = _init_process(child)
            else:
                _enter_sandbox(child)
        except BaseException as exc:  # report, never return into the parent's code
            _report(err_w, "launch", exc)
        os._exit(code)
    os.close(err_w)
    if ruleset_fd >= 0:
        os.close(ruleset_fd)
    status = _supervise(pid, kill_leftovers=not spec.privileged)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
    report = _read_report(err_r)
    if report:
        raise EnforcementError(f"the sandbox could not be set up ({report['stage']}): "
                               f"{report['message']}", report.get("hint", ""),
                               exit_code=report.get("exit", EXIT_REFUSED))
    return status


class _Child:
    """What the forked side needs besides the spec."""

    __slots__ = ("argv", "cap_last", "env", "err_fd", "ruleset_fd", "spec")

    def __init__(self, spec: RunSpec, argv: list[str], env: dict[str, str], ruleset_fd: int,
                 err_fd: int, cap_last: int) -> None:
        self.spec = spec
        self.argv = argv
        self.env = env
        self.ruleset_fd = ruleset_fd
        self.err_fd = err_fd
        self.cap_last = cap_last


def _report(fd: int, stage: str, exc: BaseException) -> None:
    exit_code = EXIT_REFUSED
    hint = ""
    if isinstance(exc, SandrunError):
        message, hint, exit_code = exc.message, exc.hint, exc.exit_code
    elif isinstance(exc, OSError):
        message = f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    payload = marshal.dumps({"stage": stage, "message": message, "hint": hint,
                             "exit": exit_code})
    try:
        os.write(fd, payload)
    except OSError:
        pass


def _read_report(fd: int) -> dict[str, Any] | None:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        return None
    data = b"".join(chunks)
    try:
        report = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        report = None
    if not isinstance(report, dict):
        return {"stage": "launch", "message": data.decode(errors="replace")}
    return report


def _supervise(child: int, *, kill_leftovers: bool) -> int:
    """Wait for `child`, forwarding signals sent by processes; return its exit code."""
    waited = {*FORWARDED_SIGNALS, _signal.SIGCHLD}
    while True:
        info = _signal.sigwaitinfo(waited)
        if info.si_signo == _signal.SIGCHLD:
            code = _reap(child)
            if code is not None:
                if kill_leftovers:
                    _kill_orphans()
                return code
            continue
        # si_code <= 0 (SI_USER, SI_QUEUE, SI_TKILL): sent by a process; positive codes come
        # from the kernel (tty), which already delivered them to the whole foreground group.
        if info.si_code <= 0:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass


def _reap(child: int | None) -> int | None:
    """Reap every exited child; return `child`'s exit code if it was among them."""
    result = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return result
        if pid == 0:
            return result
        if pid == child:
            result = os.waitstatus_to_exitcode(status)
            result = 128 - result if result < 0 else result


def _kill_orphans() -> None:
    """Non-root fallback for the PID namespace: kill what got reparented to us."""
    me = str(os.getpid())
    for _ in range(10):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1].decode() == me:
                found = True
                try:
                    os.kill(int(entry), _signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap(None)
        if not found:
            return


def _init_process(child: _Child) -> int:
    """PID 1 of the app's PID namespace (root): private mounts, then supervise the app."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    state = child.spec.state_dir.encode()
    _check(_libc.mount(state, state, None, MS_BIND, None), "bind the state dir")
    _check(_libc.mount(None, state, None, MS_BIND | MS_REMOUNT | MS_NOEXEC | MS_NOSUID |
                       MS_NODEV, None), "remount the state dir noexec,nosuid,nodev")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"hidepid=invisible"), "mount a private /proc")
    app = os.fork()
    if app == 0:
        try:
            _enter_sandbox(child)
        except BaseException as exc:
            _report(child.err_fd, "sandbox", exc)
        os._exit(EXIT_REFUSED)
    os.close(child.err_fd)
    if child.ruleset_fd >= 0:
        os.close(child.ruleset_fd)
    return _supervise(app, kill_leftovers=False)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise EnforcementError(f"{what} failed: {os.strerror(ctypes.get_errno())}",
                               "sandrun needs root (CAP_SYS_ADMIN) for its private namespaces")


def _check_prctl(result: int, what: str) -> None:
    if result != 0:
        raise EnforcementError(f"{what} failed: {os.strerror(ctypes.get_errno())}",
                               "this kernel lacks a protection the profile requires")


def _enter_sandbox(child: _Child) -> None:
    """The fixed order of DESIGN.md; on success this never returns (execve)."""
    import resource

    spec = child.spec
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT, *FORWARDED_SIGNALS):
        _signal.signal(sig, _signal.SIG_DFL)
    keep = sorted({child.err_fd, *([child.ruleset_fd] if child.ruleset_fd >= 0 else [])})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)

    for name, value in spec.rlimits:
        limit = resource.RLIM_INFINITY if value is None else value
        resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (limit, limit))

    if spec.privileged:
        for cap in range(child.cap_last + 1):
            _check_prctl(prctl(PR_CAPBSET_DROP, cap), f"drop capability {cap}")
        os.setgroups([])
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise EnforcementError("setuid(0) still succeeds after dropping privileges",
                                   "refusing to run; report this as a sandrun bug")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _check_prctl(prctl(PR_SET_NO_NEW_PRIVS, 1), "set no_new_privs")
    if spec.mdwe:
        _check_prctl(prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN),
                     "set memory-deny-write-execute")
    os.chdir(spec.cwd)
    os.umask(0o077)
    restrict_self(child.ruleset_fd, spec.landlock["restrict_flags"] if spec.landlock else 0)
    load_seccomp_filter(spec.seccomp_bpf)  # last: nothing after this but execve
    try:
        os.execve(spec.interpreter, child.argv, child.env)
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE
        raise EnforcementError(f"cannot execute {spec.interpreter}: {exc.strerror}",
                               "check the interpreter and the profile's rules",
                               exit_code=code) from None
