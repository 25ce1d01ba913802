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
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 16384, 1 << 18

# The fd-based mount API (Linux 5.2; mount_setattr 5.12): mounts are made on fds from
# open_trusted_path, so no path is resolved twice. Same numbers on every architecture.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 2, 4, 8
NO_EXEC_SUID_DEV = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC

# Replaced by a fresh tmpfs in every privileged launch (systemd's PrivateTmp).
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
DEFAULT_TMP_SIZE = "25%"  # of RAM, per tmpfs; pages are charged to the app's memory cgroup
MAX_SYMLINKS = 40  # as the kernel's path walk

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


class _MountAttr(ctypes.Structure):
    _fields_ = (("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64))


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
    applies. Privileged launches only: `writable` (absolute paths the app may write:
    the state dir and every read_write grant) are bind-mounted noexec,nosuid,nodev;
    /tmp and /var/tmp are fresh tmpfs of `tmp_size` bytes each (0: 25% of RAM);
    `hostname` is the UTS namespace's. `limits` go to `cgroup.create` ({}: no cgroup).
    """

    __slots__ = ("argv", "cwd", "env", "env_pass", "env_set", "gid", "hostname",
                 "interpreter", "landlock", "limits", "mdwe", "privileged", "rlimits",
                 "seccomp_bpf", "state_dir", "tmp_size", "uid", "user_name", "writable")

    def __init__(self, *, privileged: bool, uid: int, gid: int, user_name: str,
                 interpreter: str, argv: list[str], env: dict[str, str],
                 env_pass: list[str], env_set: dict[str, str], cwd: str, state_dir: str,
                 rlimits: list[tuple[str, int | None]], mdwe: bool,
                 landlock: dict[str, Any] | None, seccomp_bpf: bytes,
                 writable: list[str] | None = None, hostname: str = "sandrun",
                 tmp_size: int = 0, limits: dict[str, Any] | None = None) -> None:
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
        self.writable = [] if writable is None else writable
        self.hostname = hostname
        self.tmp_size = tmp_size
        self.limits = {} if limits is None else limits

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


# ---------------------------------------------------------------- paths root acts on

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def open_trusted_path(path: str, *, directory: bool | None = None) -> int:
    """An O_PATH fd of `path`, resolved so that nobody but root can redirect it.

    Walks from / one component at a time. A symbolic link is followed only while every
    directory so far is owned by root and not writable by group or others, and the
    link is root's (a symlinked /etc/resolv.conf works). From the first directory that
    another user or the app owns or can write (sticky or not), no link is followed: one
    there refuses the launch (EnforcementError). `..` is refused in `path` (and accepted
    in a trusted link's target only). `directory` True/False requires a directory /
    anything else. A missing component raises FileNotFoundError or NotADirectoryError.
    """
    if not path.startswith("/"):
        raise EnforcementError(f"{path!r} is not an absolute path",
                               "sandrun resolves only absolute paths (a sandrun bug)")
    todo = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    if ".." in todo:
        raise EnforcementError(f"{path!r} contains '..'", "write the path without '..'")
    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parents: list[int] = []  # fds of the directories above `current`, for a link's '..'
    walked = [""]  # the path as resolved so far, for messages
    trusted = True
    links = 0
    try:
        st = os.fstat(current)
        while todo:
            name = todo.pop()
            if st.st_uid != 0 or st.st_mode & 0o022:
                trusted = False  # and stays so: what follows is another user's choice
            if name == "..":  # only from a trusted link's target (refused in `path`)
                if not trusted:
                    raise EnforcementError(
                        f"{path!r}: a link's target leads back out of "
                        f"{'/'.join(walked) or '/'!r}, which another user can change",
                        "point the link straight at its target")
                if parents:
                    os.close(current)
                    current = parents.pop()
                    walked.pop()
                    st = os.fstat(current)
                continue
            fd = os.open(name, _PATH_FLAGS, dir_fd=current)
            link_st = os.fstat(fd)
            if stat.S_ISLNK(link_st.st_mode):
                where = "/".join([*walked, name])
                try:
                    if not trusted:
                        raise EnforcementError(
                            f"{path!r}: {where} is a symbolic link inside a directory the "
                            "app or another user can write: sandrun does not follow it; "
                            "remove it",
                            f"replace {where} by the real directory or file (sandrun follows "
                            "links only in root-owned directories nobody else can write)")
                    if link_st.st_uid != 0:
                        raise EnforcementError(
                            f"{path!r}: {where} is a symbolic link owned by uid "
                            f"{link_st.st_uid}: sandrun does not follow it; remove it",
                            "sandrun follows only root's links in root's directories")
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                todo.extend(part for part in reversed(target.split("/"))
                            if part not in ("", "."))
                if target.startswith("/"):
                    for old in (current, *parents):
                        os.close(old)
                    parents = []
                    current = -1
                    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    walked = [""]
                    st = os.fstat(current)
                continue
            parents.append(current)
            current, st = fd, link_st
            walked.append(name)
        if directory is True and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if directory is False and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        result, current = current, -1
        return result
    finally:
        for fd in (current, *parents):
            if fd >= 0:
                os.close(fd)


# ---------------------------------------------------------------- Landlock (kernel side)


def _landlock_error(what: str, err: int, meanings: dict[int, str], hint: str
                    ) -> EnforcementError:
    return EnforcementError(f"{what}: {errno_text(err)}: {meanings.get(err, 'unexpected error')}",
                            hint)


def build_ruleset(spec: dict[str, Any]) -> int:
    """Create the ruleset of a `landlock.ruleset_spec` and add its rules; return its fd.

    Runs as root (privileged: in the namespace's init, after the private mounts, so
    each path is what the app will see): it opens the paths, which the app user may not
    be able to open, with open_trusted_path. A missing required path refuses the
    launch; a missing optional one is skipped.
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
    """O_PATH fd of a rule's path (open_trusted_path), or None for an absent optional."""
    try:
        return open_trusted_path(path)
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
    """Fork, sandbox the child, exec the app; return its exit code (128+N if killed).

    Privileged, the child is PID 1 of new PID, mount, IPC and UTS namespaces
    (`_init_process`), which makes the mounts, builds the Landlock ruleset on what the
    app will see and forks the app. Either way the child dies with the launcher, even
    by SIGKILL: privileged, everything in its PID namespace dies with it; not root, only
    the app itself (what it forked is killed by the subreaper while the launcher
    lives). The child waits for the launcher's go before anything else: by then it is
    in its cgroup (`spec.limits`), which is removed after the app exited.
    """
    # First, before any fd or signal mask that a failure here would leave behind. Both
    # affect only the children forked below.
    if spec.privileged:
        if _libc.unshare(CLONE_NEWPID) != 0:
            raise EnforcementError(f"unshare(CLONE_NEWPID) failed: "
                                   f"{os.strerror(ctypes.get_errno())}",
                                   "sandrun needs root with CAP_SYS_ADMIN to isolate the app")
    else:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    group = None
    if spec.limits:
        from sandrun import cgroup  # only launches with limits pay for the import

        group = cgroup.create(_cgroup_name(spec.user_name), spec.limits)
    try:
        status = _fork_and_wait(spec, [*spec.argv, *args], spec.environment(os.environ), group)
    except BaseException:
        if group is not None:
            try:
                group.remove()
            except (OSError, SandrunError):
                pass  # the first error is the one to report
        raise
    if group is not None:
        group.remove()  # raises if something the app left cannot be killed: never hidden
    return status


def _cgroup_name(user_name: str) -> str:
    """<user>-<launcher pid>, in the characters cgroup names allow."""
    allowed = "abcdefghijklmnopqrstuvwxyz0123456789._-"
    user = "".join(c if c in allowed else "_" for c in user_name.lower())[:64]
    return f"{user}-{os.getpid()}" if user[:1].isalnum() else f"app-{os.getpid()}"


def _fork_and_wait(spec: RunSpec, argv: list[str], env: dict[str, str], group: Any) -> int:
    fds: list[int] = []  # closed on the way out, whatever happens
    try:
        ruleset_fd = -1
        if spec.landlock and not spec.privileged:  # privileged: the init builds it
            ruleset_fd = build_ruleset(spec.landlock)
            fds.append(ruleset_fd)
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            cap_last = int(f.read())
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += (err_r, err_w)
        # The launcher holds go_w open until the app has exited: the child reads its go
        # from go_r, and end of file there means the launcher is gone.
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        fds += (go_r, go_w)
        waited = {*FORWARDED_SIGNALS, _signal.SIGCHLD}
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, waited)
        try:
            child = _Child(spec, argv, env, ruleset_fd, err_w, cap_last)
            pid = os.fork()
            if pid == 0:
                code = EXIT_REFUSED
                try:
                    os.close(err_r)
                    _die_with_launcher(go_w)
                    if spec.privileged:
                        code = _init_process(child, go_r)
                    else:
                        _await_go(go_r)
                        _enter_sandbox(child)
                except BaseException as exc:  # report, never return into the parent's code
                    _report(err_w, "launch", exc)
                os._exit(code)
            for fd in (err_w, go_r, ruleset_fd):  # the child's now
                if fd >= 0:
                    fds.remove(fd)
                    os.close(fd)
            # Entering the cgroup waits for an RCU grace period (5-20 ms): the child sets
            # up its namespaces meanwhile and waits for the go only before it forks the
            # app (privileged) or before anything else (not root).
            try:
                if group is not None:
                    group.enter(pid)  # before the go: the app is in it before it execs
            except BaseException:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
                fds.remove(err_r)
                early = _read_report(err_r)
                if early:  # the child failed first: that is the error to report
                    raise EnforcementError(
                        f"the sandbox could not be set up ({early['stage']}): "
                        f"{early['message']}", early.get("hint", ""),
                        exit_code=early.get("exit", EXIT_REFUSED)) from None
                raise
            try:
                os.write(go_w, b"g")
            except BrokenPipeError:
                pass  # the child failed before its go: its report says why
            status = _supervise(pid, kill_leftovers=not spec.privileged)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        fds.remove(err_r)
        report = _read_report(err_r)
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    if report:
        raise EnforcementError(f"the sandbox could not be set up ({report['stage']}): "
                               f"{report['message']}", report.get("hint", ""),
                               exit_code=report.get("exit", EXIT_REFUSED))
    return status


def _die_with_launcher(go_w: int) -> None:
    """In the child: die with the launcher, even by SIGKILL (as bwrap --die-with-parent)."""
    os.close(go_w)
    _check_prctl(prctl(PR_SET_PDEATHSIG, _signal.SIGKILL), "set the parent-death signal")


def _await_go(go_r: int) -> None:
    """Wait for the launcher's go (it has put us in our cgroup by then). Exits quietly if
    the launcher is gone: died before the pdeathsig took effect, or gave up."""
    if os.read(go_r, 1) != b"g":
        os._exit(EXIT_REFUSED)
    # Did it die right after the go? getppid() cannot tell in a new PID namespace (the
    # parent is outside it: 0 either way); its end of the pipe can.
    os.set_blocking(go_r, False)
    try:
        if os.read(go_r, 1) == b"":
            os._exit(EXIT_REFUSED)
    except BlockingIOError:
        pass  # still there: its death now sends SIGKILL
    os.close(go_r)


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


def _init_process(child: _Child, go_r: int) -> int:
    """PID 1 of the app's PID namespace (root): private namespaces and mounts, the
    Landlock ruleset as the app will see the file system, then supervise the app."""
    spec = child.spec
    os.umask(0o022)  # what it creates (the private /tmp's skeleton) must be traversable
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS),
           "unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    hostname = spec.hostname.encode()
    _check(_libc.sethostname(hostname, len(hostname)), f"set the host name {spec.hostname!r}")
    _mount_private_tmp(spec)
    _bind_writable_noexec(spec)
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"hidepid=invisible"), "mount a private /proc")
    if spec.landlock:
        child.ruleset_fd = build_ruleset(spec.landlock)
    _await_go(go_r)  # in the cgroup from here on: the app inherits it
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


def _mount_syscall(number: int, *args: int, what: str) -> int:
    result, err = syscall(number, *args)
    if result < 0:
        raise EnforcementError(f"{what} failed: {errno_text(err)}",
                               "sandrun needs root (CAP_SYS_ADMIN) and the mount API of "
                               "Linux >= 5.12 for its private mounts")
    return result


def _clone_tree(fd: int, what: str) -> int:
    """A detached copy of the mount at `fd` and everything mounted beneath it."""
    empty = ctypes.create_string_buffer(b"")
    return _mount_syscall(SYS_OPEN_TREE, fd, ctypes.addressof(empty),
                          OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH | os.O_CLOEXEC,
                          what=what)


def _move_mount(source: int, target: int, what: str) -> None:
    empty = ctypes.create_string_buffer(b"")
    _mount_syscall(SYS_MOVE_MOUNT, source, ctypes.addressof(empty), target,
                   ctypes.addressof(empty), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
                   what=what)


def _new_tmpfs(options: tuple[tuple[str, str], ...]) -> int:
    """A detached noexec,nosuid,nodev tmpfs; returns the fd of its root."""
    name = ctypes.create_string_buffer(b"tmpfs")
    fs_fd = _mount_syscall(SYS_FSOPEN, ctypes.addressof(name), FSOPEN_CLOEXEC,
                           what="fsopen(tmpfs)")
    try:
        for key, value in options:
            key_buf = ctypes.create_string_buffer(key.encode())
            value_buf = ctypes.create_string_buffer(value.encode())
            _mount_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING,
                           ctypes.addressof(key_buf), ctypes.addressof(value_buf), 0,
                           what=f"tmpfs option {key}={value}")
        _mount_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, 0, 0, 0,
                       what="create a tmpfs")
        return _mount_syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, NO_EXEC_SUID_DEV,
                              what="fsmount(tmpfs)")
    finally:
        os.close(fs_fd)


def _paths_used(spec: RunSpec) -> list[str]:
    """Every host path the launch itself names: what must stay visible to the app."""
    paths = [spec.state_dir, spec.cwd, spec.interpreter, *spec.writable,
             *(arg for arg in spec.argv if arg.startswith("/"))]
    if spec.landlock:
        paths += [rule[0] for rule in spec.landlock["paths"]]
    return paths


def _mount_private_tmp(spec: RunSpec) -> None:
    """A fresh tmpfs on /tmp and /var/tmp: nothing of the host's, nothing left after.

    Mode 0700, owned by the app user: it is the only user in this mount namespace, so
    there is nobody to share with (01777 and its sticky-bit rules exist for users who
    share a directory), and the smallest grant is the one nothing can misuse. The
    paths the launch itself names beneath them (store, state dir, grants, cwd) are
    mounted through from the host at the same place; nothing else of the host's is.
    """
    size = str(spec.tmp_size) if spec.tmp_size else DEFAULT_TMP_SIZE
    options = (("size", size), ("mode", "0700"), ("uid", str(spec.uid)),
               ("gid", str(spec.gid)))
    used = _paths_used(spec)
    done: set[tuple[int, int]] = set()
    for tmp in PRIVATE_TMP_DIRS:
        try:
            target = open_trusted_path(tmp, directory=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        kept: list[tuple[str, list[str], int, bool]] = []
        try:
            st = os.fstat(target)
            if (st.st_dev, st.st_ino) in done:
                continue  # /var/tmp is a link to /tmp
            _keep_beneath(tmp, used, kept)
            root = _new_tmpfs(options)
            try:
                _move_mount(root, target, f"mount a private tmpfs on {tmp}")
                st = os.fstat(root)
                done.add((st.st_dev, st.st_ino))
                for path, parts, tree, is_dir in kept:
                    _graft(root, parts, tree, is_dir,
                           f"keep {path} visible beneath the private {tmp}")
            finally:
                os.close(root)
        finally:
            for _path, _parts, tree, _is_dir in kept:
                os.close(tree)
            os.close(target)


def _keep_beneath(tmp: str, used: list[str],
                  kept: list[tuple[str, list[str], int, bool]]) -> None:
    """Clone, before the tmpfs covers them, the used paths beneath `tmp` (outermost
    only: a clone holds what is beneath it)."""
    prefix = tmp + "/"
    wanted = {}
    for path in used:
        if path.startswith(prefix):
            parts = [part for part in path[len(prefix):].split("/") if part not in ("", ".")]
            if parts:
                wanted["/".join(parts)] = (path, parts)
    chosen: list[str] = []
    for key in sorted(wanted):  # an ancestor sorts before what is beneath it
        if any(key.startswith(outer + "/") for outer in chosen):
            continue
        path, parts = wanted[key]
        try:
            fd = open_trusted_path(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # an absent optional grant; a required one is refused with the ruleset
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            tree = _clone_tree(fd, f"clone {path} for the private {tmp}")
        finally:
            os.close(fd)
        kept.append((path, parts, tree, is_dir))
        chosen.append(key)


def _graft(root: int, parts: list[str], tree: int, is_dir: bool, what: str) -> None:
    """Mount `tree` at `parts` beneath the fresh tmpfs `root`, creating the way there.
    Only root has written to that tmpfs yet: nothing in it can be a trap."""
    opened = []
    current = root
    try:
        for i, name in enumerate(parts):
            try:
                if i == len(parts) - 1 and not is_dir:
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=current))
                else:
                    os.mkdir(name, 0o755, dir_fd=current)
            except FileExistsError:
                pass  # made for an earlier path
            current = os.open(name, _PATH_FLAGS, dir_fd=current)
            opened.append(current)
        _move_mount(tree, current, what)
    finally:
        for fd in opened:
            os.close(fd)


def _bind_writable_noexec(spec: RunSpec) -> None:
    """Bind every path the app may write onto itself noexec,nosuid,nodev (everything
    mounted beneath it too): nothing the app writes can be executed or mapped
    executable. Devices (/dev/null) are left to Landlock; the private /tmp and
    /var/tmp are mounted so already."""
    empty = ctypes.create_string_buffer(b"")
    attr = _MountAttr(attr_set=NO_EXEC_SUID_DEV)
    for path in dict.fromkeys([spec.state_dir, *spec.writable]):
        if path.rstrip("/") in PRIVATE_TMP_DIRS:
            continue
        try:
            fd = open_trusted_path(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise EnforcementError(f"writable path {path!r} does not exist",
                                   "create it, or remove it from the profile's read_write "
                                   "list") from exc
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                continue
            tree = _clone_tree(fd, f"bind {path}")
            try:
                _mount_syscall(SYS_MOUNT_SETATTR, tree, ctypes.addressof(empty),
                               AT_EMPTY_PATH | AT_RECURSIVE, ctypes.addressof(attr),
                               ctypes.sizeof(attr), what=f"make {path} noexec,nosuid,nodev")
                _move_mount(tree, fd, f"mount {path} noexec,nosuid,nodev")
            finally:
                os.close(tree)
        finally:
            os.close(fd)


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
        hint = "check the interpreter and the profile's rules"
        if exc.errno == errno.EACCES and spec.privileged:
            hint += (" (every read_write path is mounted noexec: none may contain the "
                     "interpreter)")
        raise EnforcementError(f"cannot execute {spec.interpreter}: {exc.strerror}", hint,
                               exit_code=code) from None
