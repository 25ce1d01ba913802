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

import enum
import errno
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sandrun.errors import EnforcementError
from sandrun.sandbox import kernel
from sandrun.sandbox.kernel import (  # one definition of the kernel constants
    ACCESS_NET_BIND_TCP,
    ACCESS_NET_CONNECT_TCP,
    SYS_LANDLOCK_CREATE_RULESET,
)
from sandrun.sandbox.status import ENFORCED, NOT_ENFORCED, PARTIAL, ProtectionStatus

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

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


# The kernel calls themselves live in kernel.py, which the warm exec path imports alone.


@functools.cache
def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unsupported or disabled."""
    result, err = kernel.syscall(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if result >= 0:
        return result
    if err in (errno.ENOSYS, errno.EOPNOTSUPP):
        return 0
    # Anything else (say EPERM from a seccomp filter) is not "no Landlock": say so.
    raise EnforcementError(
        f"cannot query the Landlock ABI version: {kernel.errno_text(err)}",
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


def _ports(ports: Iterable[int]) -> str:
    return ", ".join(str(p) for p in sorted(set(ports)))


def plan(policy: LandlockPolicy, abi: int | None = None) -> tuple[ProtectionStatus, ...]:
    """What a kernel with this ABI (default: the running one) will enforce for the policy."""
    kernel_abi = abi_version() if abi is None else abi
    level = min(kernel_abi, KNOWN_ABI)
    if level <= 0:
        why = "Landlock is unsupported or disabled (enable it with lsm=...,landlock at boot)"
    else:
        why = f"kernel Landlock ABI {kernel_abi}"

    def needs(min_level: int) -> str:
        return f"needs Landlock ABI {min_level}, {why}"

    statuses: list[ProtectionStatus] = []
    if level <= 0:
        statuses.append(ProtectionStatus("filesystem", NOT_ENFORCED, needs(1)))
    elif level < 5:
        missing = [name for name, since in (("refer", 2), ("truncate", 3), ("ioctl_dev", 5))
                   if level < since]
        statuses.append(ProtectionStatus(
            "filesystem", PARTIAL,
            f"only listed paths are reachable, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not controlled ({why})"))
    else:
        statuses.append(ProtectionStatus("filesystem", ENFORCED, "only listed paths are reachable"))

    if level >= 2:
        statuses.append(ProtectionStatus(
            "refer", ENFORCED, "files move or link only between directories granting as much"))
    elif level == 1:
        # ABI 1 refuses every cross-directory rename/link: safe, but may break apps.
        statuses.append(ProtectionStatus(
            "refer", ENFORCED,
            f"every rename/link across directories is refused (EXDEV), {why}"))
    else:
        statuses.append(ProtectionStatus("refer", NOT_ENFORCED, needs(2)))

    if level >= 3:
        statuses.append(ProtectionStatus(
            "truncate", ENFORCED, "only files under read+write paths can be truncated"))
    else:
        statuses.append(ProtectionStatus(
            "truncate", NOT_ENFORCED, f"only file permissions prevent truncation; {needs(3)}"))

    if level >= 5:
        statuses.append(ProtectionStatus(
            "ioctl_dev", ENFORCED, "ioctl on device files opened by the app is denied"))
    else:
        statuses.append(ProtectionStatus("ioctl_dev", NOT_ENFORCED, needs(5)))

    for name, ports, verb in (("tcp_bind", policy.bind_tcp, "bind"),
                              ("tcp_connect", policy.connect_tcp, "connect")):
        if level >= 4:
            allowed = f"only to port(s) {_ports(ports)}" if ports else "denied on every port"
            statuses.append(ProtectionStatus(name, ENFORCED, f"TCP {verb} {allowed}"))
        else:
            statuses.append(ProtectionStatus(
                name, NOT_ENFORCED, f"any TCP {verb} is possible; {needs(4)}"))

    for name, wanted, what in (
        ("scope_abstract_unix", policy.scope_abstract_unix,
         "connecting to abstract unix sockets outside the sandbox"),
        ("scope_signal", policy.scope_signal, "signalling processes outside the sandbox"),
    ):
        if not wanted:
            statuses.append(ProtectionStatus(name, NOT_ENFORCED, "not requested by the profile"))
        elif level >= 6:
            statuses.append(ProtectionStatus(name, ENFORCED, f"denied: {what}"))
        else:
            statuses.append(ProtectionStatus(name, NOT_ENFORCED, f"allowed: {what}; {needs(6)}"))

    if not policy.log_denials:
        statuses.append(ProtectionStatus(
            "audit logging", NOT_ENFORCED, "denials after execve are not logged (by request)"))
    elif level >= 7:
        statuses.append(ProtectionStatus(
            "audit logging", ENFORCED, "denials are logged when kernel audit is enabled"))
    else:
        statuses.append(ProtectionStatus("audit logging", NOT_ENFORCED, needs(7)))
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
    statuses: tuple[ProtectionStatus, ...]
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


def ruleset_spec(policy: LandlockPolicy) -> dict[str, Any] | None:
    """The ruleset this kernel will enforce for `policy`, as plain data for
    `kernel.build_ruleset` (cacheable: it depends only on the policy and the ABI).

    Handles every right the running ABI knows, so whatever is not granted is denied.
    Returns None when Landlock is absent and the policy accepts that (min_abi 0).
    Raises EnforcementError when the ABI is below policy.min_abi or a port is invalid.
    """
    kernel_abi = abi_version()
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
        return None  # only reachable with min_abi 0: plan() says nothing is enforced

    level = min(kernel_abi, KNOWN_ABI)
    handled_fs = fs_rights_for_abi(level)
    handled_net = net_rights_for_abi(level)
    scoped = scopes_for_abi(level) & (
        (SCOPE_ABSTRACT_UNIX_SOCKET if policy.scope_abstract_unix else 0)
        | (SCOPE_SIGNAL if policy.scope_signal else 0))
    return {
        "abi": kernel_abi,
        "handled_fs": handled_fs,
        "handled_net": handled_net,
        "scoped": scoped,
        "restrict_flags": (RESTRICT_SELF_LOG_NEW_EXEC_ON
                           if level >= 7 and policy.log_denials else 0),
        "paths": [(rule.path, rule.access.rights & handled_fs, rule.required,
                   rule.access.value) for rule in policy.paths],
        "bind_tcp": sorted(set(policy.bind_tcp)) if handled_net else [],
        "connect_tcp": sorted(set(policy.connect_tcp)) if handled_net else [],
    }


def prepare(policy: LandlockPolicy) -> Prepared:
    """Build the ruleset (as root, before forking): open every path and add its rule.

    Raises EnforcementError when the ABI is below policy.min_abi, a required path is
    missing or the kernel refuses a call.
    """
    statuses = plan(policy)
    spec = ruleset_spec(policy)
    if spec is None:
        return Prepared(ruleset_fd=-1, keep_fds=(), abi=0, statuses=statuses)
    ruleset_fd = kernel.build_ruleset(spec)
    return Prepared(ruleset_fd=ruleset_fd, keep_fds=(ruleset_fd,), abi=spec["abi"],
                    statuses=statuses, restrict_flags=spec["restrict_flags"])


def no_new_privs_set() -> bool:
    """Whether this thread has no_new_privs (required by an unprivileged restrict_self)."""
    return kernel.prctl(PR_GET_NO_NEW_PRIVS) == 1


def restrict_self(prepared: Prepared) -> None:
    """Enforce the prepared ruleset on the calling thread, then close the ruleset fd.

    The caller must already have set no_new_privs: this does not set it, but refuses
    without it (root with CAP_SYS_ADMIN could otherwise skip it by mistake).
    """
    kernel.restrict_self(prepared.ruleset_fd, prepared.restrict_flags)
