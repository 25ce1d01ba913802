"""A small ctypes binding of the three Landlock syscalls, and sandrun's use of them.

Why not the PyPI `landlock` package: it lacks TCP rules (ABI 4) and scopes (ABI 6) and
reads errno at the wrong moment. This module talks to the kernel directly.

Use: `prepare(policy)` as root before dropping privileges (it opens the paths, which
the app user may not be able to open, and builds the ruleset), then in the child, after
setresuid and no_new_privs, `restrict_self(prepared)`. `plan()` and `describe_rules()`
say, without touching the kernel, what will be enforced (rust-landlock's lesson: every
protection is reported as enforced, partial or not enforced, never silently degraded).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import functools
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from sandrun.errors import EnforcementError

# Landlock syscalls share one number on every architecture but alpha (added after the
# syscall tables were unified); these are the x86_64 numbers.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

# File system rights (ABI in which each appeared).
ACCESS_FS_EXECUTE = 1 << 0  # ABI 1
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

# Network rights (ABI 4).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# landlock_restrict_self() flags (ABI 7).
RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2

# The highest ABI whose features this module knows; a newer kernel is used at this level.
KNOWN_ABI = 7

_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_BY_ABI = {
    1: _FS_ABI1,
    2: _FS_ABI1 | ACCESS_FS_REFER,
    3: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    4: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    5: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV,
}

# The only rights the kernel accepts on a rule whose path is not a directory.
FS_FILE_RIGHTS = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)

# What each ABI level added, for error messages and plans.
ABI_FEATURES = {
    1: "file system access control",
    2: "control of file renaming and linking across directories (refer)",
    3: "control of truncation (truncate)",
    4: "TCP bind and connect control",
    5: "control of ioctl on devices (ioctl_dev)",
    6: "abstract unix socket and signal scoping",
    7: "audit logging of denials",
}

PR_GET_NO_NEW_PRIVS = 39


def fs_rights_for_abi(abi: int) -> int:
    """Every file system right a kernel with this ABI knows (0 without Landlock)."""
    if abi <= 0:
        return 0
    return _FS_BY_ABI[min(abi, 5)]


def net_rights_for_abi(abi: int) -> int:
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0


def scopes_for_abi(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the uapi struct is __attribute__((packed)): 12 bytes
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


class _NetPortAttr(ctypes.Structure):
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("port", ctypes.c_uint64),
    )


# Size of landlock_ruleset_attr up to the last field an ABI knows: older kernels reject
# a larger struct unless the extra bytes are zero, so pass only what we fill in.
_RULESET_ATTR_SIZE_FS = 8
_RULESET_ATTR_SIZE_NET = 16
_RULESET_ATTR_SIZE_SCOPED = 24

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _syscall(number: int, *args: int) -> tuple[int, int]:
    """Call a raw syscall; return (result, errno) with errno read right after the call."""
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return int(result), ctypes.get_errno()


def _errno_text(code: int) -> str:
    name = errno.errorcode.get(code, f"errno {code}")
    return f"{name} ({os.strerror(code)})"


@functools.cache
def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unsupported or disabled."""
    result, err = _syscall(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if result >= 0:
        return result
    if err in (errno.ENOSYS, errno.EOPNOTSUPP):
        return 0
    # Anything else (say EPERM from a seccomp filter) is not "no Landlock": say so.
    raise EnforcementError(
        f"cannot query the Landlock ABI version: {_errno_text(err)}",
        "run sandrun outside any seccomp filter that blocks landlock_create_ruleset",
    )


class Access(enum.Enum):
    """What a path rule grants (beneath a directory, or on one file).

    EXECUTE lets the app run programs there (which needs reading them) but not list
    the directory; READ_WRITE never includes EXECUTE.
    """

    READ = "read"
    READ_EXEC = "read+exec"
    READ_WRITE = "read+write"
    EXECUTE = "exec"

    @property
    def rights(self) -> int:
        """Landlock rights for this access, before masking to the ABI and file type."""
        return _ACCESS_RIGHTS[self]


_READ = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
_ACCESS_RIGHTS = {
    Access.READ: _READ,
    Access.READ_EXEC: _READ | ACCESS_FS_EXECUTE,
    # Writable is never executable, and never lets the app create device nodes.
    # IOCTL_DEV is never granted: device ioctls stay denied once the ABI handles them.
    Access.READ_WRITE: _READ
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_REFER,
    # execve() opens the program for reading too: EXECUTE alone makes it fail with EACCES.
    Access.EXECUTE: ACCESS_FS_READ_FILE | ACCESS_FS_EXECUTE,
}


@dataclass(frozen=True)
class PathRule:
    path: str
    access: Access
    required: bool = True  # a missing required path refuses the launch; optional is skipped


@dataclass(frozen=True)
class LandlockPolicy:
    """Everything the app may do; anything else Landlock handles is denied."""

    paths: tuple[PathRule, ...]
    bind_tcp: tuple[int, ...] = ()
    connect_tcp: tuple[int, ...] = ()
    scope_abstract_unix: bool = True
    scope_signal: bool = True
    min_abi: int = 1
    # ABI 7: keep logging denials to audit after execve (the app is expected to comply
    # with its profile, so a denial is a profile bug or an attack worth seeing).
    log_denials: bool = True


ENFORCED = "enforced"
PARTIAL = "partial"
NOT_ENFORCED = "not enforced"


@dataclass(frozen=True)
class FeatureStatus:
    name: str
    status: str  # ENFORCED | PARTIAL | NOT_ENFORCED
    detail: str


def _ports(ports: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(set(ports)))


def plan(policy: LandlockPolicy, abi: int | None = None) -> tuple[FeatureStatus, ...]:
    """What a kernel with this ABI (default: the running one) will enforce for the policy."""
    kernel_abi = abi_version() if abi is None else abi
    level = min(kernel_abi, KNOWN_ABI)
    if level <= 0:
        why = "Landlock is unsupported or disabled (enable it with lsm=...,landlock at boot)"
    else:
        why = f"kernel Landlock ABI {kernel_abi}"

    def needs(min_level: int) -> str:
        return f"needs Landlock ABI {min_level}, {why}"

    statuses: list[FeatureStatus] = []
    if level <= 0:
        statuses.append(FeatureStatus("filesystem", NOT_ENFORCED, needs(1)))
    elif level < 5:
        missing = [name for name, since in (("refer", 2), ("truncate", 3), ("ioctl_dev", 5))
                   if level < since]
        statuses.append(FeatureStatus(
            "filesystem", PARTIAL,
            f"only listed paths are reachable, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not controlled ({why})"))
    else:
        statuses.append(FeatureStatus("filesystem", ENFORCED, "only listed paths are reachable"))

    if level >= 2:
        statuses.append(FeatureStatus(
            "refer", ENFORCED, "files move or link only between directories granting as much"))
    elif level == 1:
        # ABI 1 refuses every cross-directory rename/link: safe, but may break apps.
        statuses.append(FeatureStatus(
            "refer", ENFORCED,
            f"every rename/link across directories is refused (EXDEV), {why}"))
    else:
        statuses.append(FeatureStatus("refer", NOT_ENFORCED, needs(2)))

    if level >= 3:
        statuses.append(FeatureStatus(
            "truncate", ENFORCED, "only files under read+write paths can be truncated"))
    else:
        statuses.append(FeatureStatus(
            "truncate", NOT_ENFORCED, f"only file permissions prevent truncation; {needs(3)}"))

    if level >= 5:
        statuses.append(FeatureStatus(
            "ioctl_dev", ENFORCED, "ioctl on device files opened by the app is denied"))
    else:
        statuses.append(FeatureStatus("ioctl_dev", NOT_ENFORCED, needs(5)))

    for name, ports, verb in (("tcp_bind", policy.bind_tcp, "bind"),
                              ("tcp_connect", policy.connect_tcp, "connect")):
        if level >= 4:
            allowed = f"only to port(s) {_ports(ports)}" if ports else "denied on every port"
            statuses.append(FeatureStatus(name, ENFORCED, f"TCP {verb} {allowed}"))
        else:
            statuses.append(FeatureStatus(
                name, NOT_ENFORCED, f"any TCP {verb} is possible; {needs(4)}"))

    for name, wanted, what in (
        ("scope_abstract_unix", policy.scope_abstract_unix,
         "connecting to abstract unix sockets outside the sandbox"),
        ("scope_signal", policy.scope_signal, "signalling processes outside the sandbox"),
    ):
        if not wanted:
            statuses.append(FeatureStatus(name, NOT_ENFORCED, "not requested by the profile"))
        elif level >= 6:
            statuses.append(FeatureStatus(name, ENFORCED, f"denied: {what}"))
        else:
            statuses.append(FeatureStatus(name, NOT_ENFORCED, f"allowed: {what}; {needs(6)}"))

    if not policy.log_denials:
        statuses.append(FeatureStatus(
            "audit logging", NOT_ENFORCED, "denials after execve are not logged (by request)"))
    elif level >= 7:
        statuses.append(FeatureStatus(
            "audit logging", ENFORCED, "denials are logged when kernel audit is enabled"))
    else:
        statuses.append(FeatureStatus("audit logging", NOT_ENFORCED, needs(7)))
    return tuple(statuses)


def describe_rules(policy: LandlockPolicy) -> list[str]:
    """Human lines for --dry-run: one per path rule, port and scope."""
    lines = []
    for rule in policy.paths:
        line = f"{rule.access.value:<9}  {rule.path}"
        if not os.path.exists(rule.path):
            line += " (absent, skipped)" if not rule.required else " (absent, REQUIRED)"
        lines.append(line)
    for verb, ports in (("bind", policy.bind_tcp), ("connect", policy.connect_tcp)):
        if ports:
            lines += [f"tcp {verb} {port}" for port in sorted(set(ports))]
        else:
            lines.append(f"tcp {verb} none (every port denied)")
    if policy.scope_abstract_unix:
        lines.append("scope: no abstract unix socket outside the sandbox")
    if policy.scope_signal:
        lines.append("scope: no signal to processes outside the sandbox")
    return lines


@dataclass
class Prepared:
    """A ruleset ready to be enforced by `restrict_self` in the child."""

    ruleset_fd: int  # -1 when Landlock is absent and the policy accepted that (min_abi 0)
    keep_fds: tuple[int, ...]  # fds the launcher must not close before restrict_self
    abi: int
    statuses: tuple[FeatureStatus, ...]
    restrict_flags: int = field(default=0)


def _missing_features(abi: int, min_abi: int) -> list[str]:
    missing = [f"ABI {level}: {ABI_FEATURES[level]}"
               for level in range(max(abi, 0) + 1, min(min_abi, KNOWN_ABI) + 1)]
    if min_abi > KNOWN_ABI:
        missing.append(f"ABI {max(abi, KNOWN_ABI) + 1}..{min_abi}: unknown to this sandrun")
    return missing


def _check_port(port: int, key: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise EnforcementError(
            f"invalid TCP port {port!r} in {key}", "use a port number between 0 and 65535")


def _add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure, what: str) -> None:
    result, err = _syscall(SYS_LANDLOCK_ADD_RULE, ruleset_fd, rule_type,
                           ctypes.addressof(attr), 0)
    if result == 0:
        return
    meaning = {
        errno.EINVAL: "rights not handled by the ruleset or not applicable to this file type",
        errno.ENOMSG: "the rule grants no right",
        errno.EBADF: "the ruleset or path fd is not open",
        errno.EBADFD: "the ruleset fd is not a ruleset, or the path fd is not O_PATH-opened",
        errno.EPERM: "the ruleset fd was not opened for writing",
        errno.EFAULT: "bad rule address (a bug in sandrun)",
    }.get(err, "unexpected error")
    raise EnforcementError(
        f"cannot add the Landlock rule for {what}: {_errno_text(err)}: {meaning}",
        "report this as a sandrun bug, with the profile and kernel version")


def _open_path(rule: PathRule) -> int | None:
    """O_PATH fd of the rule's path (following symlinks), or None for an absent optional."""
    try:
        # No O_NOFOLLOW: a symlinked /etc/resolv.conf must grant its target.
        return os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not rule.required:
            return None
        raise EnforcementError(
            f"required path {rule.path!r} ({rule.access.value}) does not exist",
            "create it, or remove it from the profile's [filesystem] lists") from exc
    except OSError as exc:
        raise EnforcementError(
            f"cannot open {rule.path!r} for a Landlock rule: {_errno_text(exc.errno or 0)}",
            "check the path and its parent directories") from exc


def _create_ruleset(fs: int, net: int, scoped: int) -> int:
    attr = _RulesetAttr(handled_access_fs=fs, handled_access_net=net, scoped=scoped)
    if scoped:
        size = _RULESET_ATTR_SIZE_SCOPED
    elif net:
        size = _RULESET_ATTR_SIZE_NET
    else:
        size = _RULESET_ATTR_SIZE_FS
    fd, err = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), size, 0)
    if fd >= 0:
        return fd
    meaning = {
        errno.EOPNOTSUPP: "Landlock is supported by the kernel but disabled at boot",
        errno.ENOSYS: "the kernel has no Landlock",
        errno.EINVAL: "a handled right or scope is unknown to this kernel",
        errno.E2BIG: "the attribute struct is larger than this kernel knows",
        errno.ENOMSG: "the ruleset handles nothing",
        errno.EMFILE: "too many open files",
    }.get(err, "unexpected error")
    raise EnforcementError(f"cannot create the Landlock ruleset: {_errno_text(err)}: {meaning}",
                           "check that the kernel enables Landlock (lsm=...,landlock)")


def prepare(policy: LandlockPolicy) -> Prepared:
    """Build the ruleset (as root, before forking): open every path and add its rule.

    Handles every right the running ABI knows, so whatever is not granted is denied.
    Raises EnforcementError when the ABI is below policy.min_abi, a required path is
    missing or the kernel refuses a call.
    """
    kernel_abi = abi_version()
    statuses = plan(policy, kernel_abi)
    if kernel_abi < policy.min_abi:
        have = f"ABI {kernel_abi}" if kernel_abi else "no Landlock"
        missing = "; ".join(_missing_features(kernel_abi, policy.min_abi))
        raise EnforcementError(
            f"the kernel offers {have} but the profile requires Landlock ABI "
            f"{policy.min_abi}; missing: {missing}",
            "upgrade the kernel (or enable Landlock with lsm=...,landlock), or lower "
            "[kernel] landlock_min_abi in the profile")
    for port in policy.bind_tcp:
        _check_port(port, "network.bind_tcp")
    for port in policy.connect_tcp:
        _check_port(port, "network.connect_tcp")
    if kernel_abi <= 0:
        # Only reachable with min_abi 0: the statuses say nothing is enforced.
        return Prepared(ruleset_fd=-1, keep_fds=(), abi=0, statuses=statuses)

    level = min(kernel_abi, KNOWN_ABI)
    handled_fs = fs_rights_for_abi(level)
    handled_net = net_rights_for_abi(level)
    scoped = scopes_for_abi(level) & (
        (SCOPE_ABSTRACT_UNIX_SOCKET if policy.scope_abstract_unix else 0)
        | (SCOPE_SIGNAL if policy.scope_signal else 0))
    restrict_flags = RESTRICT_SELF_LOG_NEW_EXEC_ON if level >= 7 and policy.log_denials else 0

    ruleset_fd = _create_ruleset(handled_fs, handled_net, scoped)
    try:
        for rule in policy.paths:
            path_fd = _open_path(rule)
            if path_fd is None:
                continue
            try:
                rights = rule.access.rights & handled_fs
                if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
                    # The kernel rejects directory rights on files and devices (EINVAL).
                    rights &= FS_FILE_RIGHTS
                if not rights:
                    continue
                attr = _PathBeneathAttr(allowed_access=rights, parent_fd=path_fd)
                _add_rule(ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, attr,
                          f"{rule.path!r} ({rule.access.value})")
            finally:
                os.close(path_fd)
        if handled_net:
            for right, ports in ((ACCESS_NET_BIND_TCP, policy.bind_tcp),
                                 (ACCESS_NET_CONNECT_TCP, policy.connect_tcp)):
                for port in sorted(set(ports)):
                    net_attr = _NetPortAttr(allowed_access=right, port=port)
                    verb = "bind" if right == ACCESS_NET_BIND_TCP else "connect"
                    _add_rule(ruleset_fd, LANDLOCK_RULE_NET_PORT, net_attr,
                              f"TCP {verb} port {port}")
    except BaseException:
        os.close(ruleset_fd)
        raise
    return Prepared(ruleset_fd=ruleset_fd, keep_fds=(ruleset_fd,), abi=kernel_abi,
                    statuses=statuses, restrict_flags=restrict_flags)


def no_new_privs_set() -> bool:
    """Whether this thread has no_new_privs (required by an unprivileged restrict_self)."""
    result = _libc.prctl(ctypes.c_int(PR_GET_NO_NEW_PRIVS), ctypes.c_ulong(0),
                         ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return result == 1


def restrict_self(prepared: Prepared) -> None:
    """Enforce the prepared ruleset on the calling thread, then close the ruleset fd.

    The caller must already have set no_new_privs: this does not set it, but refuses
    without it (root with CAP_SYS_ADMIN could otherwise skip it by mistake).
    """
    if prepared.ruleset_fd < 0:
        return  # Landlock absent and accepted (min_abi 0); statuses already say so
    try:
        if not no_new_privs_set():
            raise EnforcementError(
                "no_new_privs is not set: refusing to enforce Landlock",
                "call prctl(PR_SET_NO_NEW_PRIVS, 1) after dropping privileges (a sandrun bug)")
        result, err = _syscall(SYS_LANDLOCK_RESTRICT_SELF, prepared.ruleset_fd,
                               prepared.restrict_flags)
        if result != 0:
            meaning = {
                errno.EPERM: "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN",
                errno.E2BIG: "the process already has 16 nested Landlock domains",
                errno.EBADF: "the ruleset fd was closed (keep Prepared.keep_fds open)",
                errno.EBADFD: "the fd is not a Landlock ruleset",
                errno.EINVAL: "unknown restrict_self flags for this kernel",
                errno.EOPNOTSUPP: "Landlock is disabled",
            }.get(err, "unexpected error")
            raise EnforcementError(
                f"cannot enforce the Landlock ruleset: {_errno_text(err)}: {meaning}",
                "report this as a sandrun bug, with the profile and kernel version")
    finally:
        with contextlib.suppress(OSError):  # never hide the real error behind EBADF
            os.close(prepared.ruleset_fd)
