"""The seccomp filter: systemd's `@system-service` minus a dangerous set.

The filter is compiled once, before dropping privileges, with libseccomp (through
pyseccomp, imported lazily) into classic BPF bytes. The child loads those bytes with one
raw seccomp() syscall through ctypes, so nothing of libseccomp runs after fork and the
exec path can cache the bytes.

Actions: allowlisted syscalls -> ALLOW; the dangerous set and profile denials ->
ERRNO(EPERM); everything else, including syscalls newer than libseccomp -> ERRNO(ENOSYS),
so glibc falls back gracefully (clone3 -> clone); any other architecture (IA-32
`int 0x80`, x32) -> KILL_PROCESS.

libseccomp cannot express "argument not equal to X, low 32 bits only", and drops
conditional rules on a syscall that also has an unconditional one. Where a syscall needs
"EPERM for these values, ALLOW for all others" (ioctl, socket, personality), the other
side is written as a prefix cover: a handful of MASKED_EQ rules that together match every
32-bit value except the listed ones. Because this leans on libseccomp's rule merging,
`compile_filter` runs the exported program through a small BPF interpreter (`evaluate`)
and refuses a program that does not do what the policy says.
"""

from __future__ import annotations

import difflib
import errno
import functools
import importlib.util
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO

from sandrun.errors import EnforcementError
from sandrun.sandbox import kernel
from sandrun.sandbox.status import ENFORCED, NOT_ENFORCED, PARTIAL, ProtectionStatus
from sandrun.sandbox.syscall_table import SYSTEMD_GROUPS, X86_64_SYSCALLS

# --- kernel ABI (x86_64) ---------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
RET_ACTION_FULL = 0xFFFF0000
RET_DATA = 0x0000FFFF

ACTIONS_AVAIL = "/proc/sys/kernel/seccomp/actions_avail"

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
LOW32 = 0xFFFFFFFF

CLONE_THREAD = 0x00010000
SOCK_STREAM, SOCK_DGRAM = 1, 2
SOCK_TYPE_MASK = 0xF  # the rest of socket()'s type are SOCK_NONBLOCK / SOCK_CLOEXEC
IPPROTO_TCP, IPPROTO_UDP = 6, 17
AF_INET_FAMILIES = frozenset({2, 10})  # AF_INET, AF_INET6
# sendto/sendmsg with MSG_FASTOPEN connect without connect(): Landlock never sees it.
MSG_FASTOPEN = 0x20000000
_SEND_FLAGS_ARG = MappingProxyType({"sendto": 3, "sendmsg": 2, "sendmmsg": 3})
# clone() takes the namespace flags in the low 32 bits of arg0 (the kernel truncates it).
# CLONE_NEWTIME (0x80) is absent on purpose: in clone() that bit belongs to the exit
# signal, so only clone3/unshare can ask for a time namespace, and both are denied.
CLONE_NAMESPACE_FLAGS: Mapping[str, int] = MappingProxyType({
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
})
CLONE_NAMESPACE_MASK = functools.reduce(int.__or__, CLONE_NAMESPACE_FLAGS.values())

# Linux address families (include/linux/socket.h), so profiles validate the same way
# whatever the Python build's socket module happens to define.
_FAMILY_NAMES = (
    "AF_UNSPEC", "AF_UNIX", "AF_INET", "AF_AX25", "AF_IPX", "AF_APPLETALK", "AF_NETROM",
    "AF_BRIDGE", "AF_ATMPVC", "AF_X25", "AF_INET6", "AF_ROSE", "AF_DECnet", "AF_NETBEUI",
    "AF_SECURITY", "AF_KEY", "AF_NETLINK", "AF_PACKET", "AF_ASH", "AF_ECONET", "AF_ATMSVC",
    "AF_RDS", "AF_SNA", "AF_IRDA", "AF_PPPOX", "AF_WANPIPE", "AF_LLC", "AF_IB", "AF_MPLS",
    "AF_CAN", "AF_TIPC", "AF_BLUETOOTH", "AF_IUCV", "AF_RXRPC", "AF_ISDN", "AF_PHONET",
    "AF_IEEE802154", "AF_CAIF", "AF_ALG", "AF_NFC", "AF_VSOCK", "AF_KCM", "AF_QIPCRTR",
    "AF_SMC", "AF_XDP", "AF_MCTP",
)
SOCKET_FAMILIES: Mapping[str, int] = MappingProxyType(
    {**{name: number for number, name in enumerate(_FAMILY_NAMES)}, "AF_LOCAL": 1})
AF_UNIX = SOCKET_FAMILIES["AF_UNIX"]

# personality() values that change nothing a sandbox cares about. Every flag that weakens
# memory protection (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, MMAP_PAGE_ZERO, the ADDR_LIMIT
# and COMPAT_LAYOUT flags) is left out; PER_LINUX32 only makes uname() report i686.
PERSONALITY_ALLOWED: Mapping[int, str] = MappingProxyType({
    0x00000000: "PER_LINUX",
    0x00000008: "PER_LINUX32",
    0xFFFFFFFF: "0xffffffff (query)",
})

_WHY_MOUNT = "changes the mount tree (mount namespaces, overmounting, escaping Landlock)"

# Syscalls denied as a whole (EPERM; clone3 gets ENOSYS so glibc falls back to clone).
# A profile can allow one only by naming it explicitly; an @group never does.
DANGEROUS: Mapping[str, str] = MappingProxyType({
    "ptrace": "reads and writes other processes' memory and registers",
    "process_vm_readv": "reads another process's memory",
    "process_vm_writev": "writes another process's memory",
    "kcmp": "compares kernel objects of other processes (info leak, used by exploits)",
    "mount": _WHY_MOUNT,
    "umount2": _WHY_MOUNT,
    "pivot_root": _WHY_MOUNT,
    "chroot": _WHY_MOUNT,
    "fsopen": _WHY_MOUNT,
    "fsconfig": _WHY_MOUNT,
    "fsmount": _WHY_MOUNT,
    "fspick": _WHY_MOUNT,
    "move_mount": _WHY_MOUNT,
    "open_tree": _WHY_MOUNT,
    "mount_setattr": _WHY_MOUNT,
    "unshare": "creates namespaces (user namespaces expose a large kernel attack surface)",
    "setns": "joins other namespaces",
    "clone3": "its flags live in a struct seccomp cannot read; ENOSYS makes glibc fall back "
              "to clone, whose namespace flags are checked",
    "bpf": "loads eBPF programs into the kernel (large attack surface)",
    "perf_event_open": "kernel profiling interface (large attack surface, info leaks)",
    "userfaultfd": "stalls kernel page faults at will (a classic exploit primitive)",
    "keyctl": "kernel keyring: shared across the user's processes, not namespaced",
    "add_key": "kernel keyring: shared across the user's processes, not namespaced",
    "request_key": "kernel keyring: shared across the user's processes, not namespaced",
    "io_uring_setup": "io_uring: large attack surface, and its operations bypass seccomp",
    "io_uring_enter": "io_uring: large attack surface, and its operations bypass seccomp",
    "io_uring_register": "io_uring: large attack surface, and its operations bypass seccomp",
    "kexec_load": "replaces the running kernel",
    "kexec_file_load": "replaces the running kernel",
    "init_module": "loads kernel modules",
    "finit_module": "loads kernel modules",
    "delete_module": "unloads kernel modules",
    "open_by_handle_at": "opens files by handle, bypassing path checks (container escapes)",
    "name_to_handle_at": "makes file handles for open_by_handle_at",
    "memfd_create": "anonymous executable files that Landlock rules cannot see",
    "memfd_secret": "memory hidden from the kernel and from inspection",
    "execveat": "runs a program from an fd (with memfd: code that never touched a path)",
    "acct": "process accounting to a file (host administration)",
    "swapon": "host swap administration",
    "swapoff": "host swap administration",
    "reboot": "reboots the host",
    "settimeofday": "sets the host clock",
    "clock_settime": "sets the host clock",
    "adjtimex": "adjusts the host clock",
    "clock_adjtime": "adjusts the host clock",
    "quotactl": "disk quota administration",
    "quotactl_fd": "disk quota administration",
    "lookup_dcookie": "kernel profiling interface",
    "vhangup": "hangs up the terminal",
    "iopl": "raw I/O port access",
    "ioperm": "raw I/O port access",
    "syslog": "reads and clears the kernel log",
    "uselib": "obsolete library loader",
    "nfsservctl": "obsolete NFS server control",
    "fanotify_init": "file system wide access monitoring",
})

# Syscalls the baseline allows only with certain arguments. Explicitly allowing the name
# does not lift these checks (socket families come from SeccompPolicy.socket_families).
ARGUMENT_RULES: Mapping[str, str] = MappingProxyType({
    "clone": "EPERM when arg0 has any CLONE_NEW* namespace flag",
    "ioctl": "EPERM for TIOCSTI (fakes terminal input) and TIOCLINUX, on the low 32 bits of "
             "the command, as the kernel truncates it",
    "personality": "only " + ", ".join(PERSONALITY_ALLOWED.values()) + "; other values "
                   "(READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ...) -> EPERM",
    "socket": "only the policy's address families; others (AF_NETLINK, AF_PACKET, ...) -> EPERM",
    "sendto": "EPERM with MSG_FASTOPEN (a connect Landlock does not see)",
    "sendmsg": "EPERM with MSG_FASTOPEN (a connect Landlock does not see)",
    "sendmmsg": "EPERM with MSG_FASTOPEN (a connect Landlock does not see)",
    "socketpair": "AF_UNIX only; others -> EPERM",
})

_ENOSYS_WHEN_DENIED = frozenset({"clone3"})

# Not dangerous, but outside what Landlock mediates: inotify watches work on any directory
# the app user may read under Unix permissions, granted or not (Landlock has no hook for
# them), so they would reveal names and access times of files outside every grant. Off
# (EPERM: watchdog-style libraries fall back to polling) unless the profile names one of
# them, or a group holding them, in [syscalls] allow.
OPT_IN: Mapping[str, str] = MappingProxyType({
    "inotify_init": "file change notifications (not mediated by Landlock)",
    "inotify_init1": "file change notifications (not mediated by Landlock)",
    "inotify_add_watch": "file change notifications (not mediated by Landlock)",
})


@dataclass(frozen=True)
class SeccompPolicy:
    """What the profile adds to or removes from the baseline."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    socket_families: tuple[str, ...] = ("AF_UNIX",)
    # Informational: execve stays allowed, Landlock EXECUTE limits what can run.
    allow_subprocess: bool = False
    # False: fork, vfork and clone without CLONE_THREAD -> EPERM (threads still work).
    allow_fork: bool = True
    # AF_INET/AF_INET6 sockets are TCP only (no MPTCP, raw, SCTP...); True adds UDP (DNS).
    udp: bool = False
    # socket(AF_UNIX): Landlock cannot stop connect() to pathname sockets outside the
    # grants (D-Bus, journald...), so it is opt-in. socketpair() always works.
    unix_sockets: bool = False
    # listen(): without bind_tcp and unix sockets nothing may listen (an unbound TCP
    # socket would get an ephemeral port Landlock never checks).
    allow_listen: bool = True


# --- names and groups ------------------------------------------------------------------

def expand(names: Iterable[str]) -> frozenset[str]:
    """Syscall names and systemd @groups -> the x86_64 syscall names they stand for.

    Raises ValueError naming the first unknown name or group.
    """
    if isinstance(names, str):  # a lone string would otherwise be read letter by letter
        names = (names,)
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            result |= _expand_group(name, frozenset())
        elif name in X86_64_SYSCALLS:
            result.add(name)
        else:
            raise ValueError(_unknown(name, X86_64_SYSCALLS, "syscall",
                                      "not a syscall libseccomp knows on x86_64"))
    return frozenset(result)


def _expand_group(group: str, seen: frozenset[str]) -> set[str]:
    if group not in SYSTEMD_GROUPS:
        raise ValueError(_unknown(group, SYSTEMD_GROUPS, "syscall group",
                                  "groups are systemd's: " + ", ".join(sorted(SYSTEMD_GROUPS))))
    members: set[str] = set()
    for member in SYSTEMD_GROUPS[group]:
        if member.startswith("@"):
            if member not in seen | {group}:
                members |= _expand_group(member, seen | {group})
        elif member in X86_64_SYSCALLS:  # names of other architectures are ignored
            members.add(member)
    return members


def _unknown(name: str, known: Iterable[str], kind: str, hint: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r} ({hint}){suggestion}"


@functools.cache
def baseline() -> frozenset[str]:
    """The allowlist: systemd's @system-service minus DANGEROUS and OPT_IN (some with
    ARGUMENT_RULES)."""
    return expand(["@system-service"]) - DANGEROUS.keys() - OPT_IN.keys()


def _family_number(name: str) -> int:
    if name not in SOCKET_FAMILIES:
        raise ValueError(_unknown(name, SOCKET_FAMILIES, "socket address family",
                                  "use Linux names like AF_UNIX, AF_INET, AF_INET6, AF_NETLINK"))
    return SOCKET_FAMILIES[name]


@dataclass(frozen=True)
class FilterPlan:
    """The policy resolved to one action per syscall name."""

    allow: frozenset[str]  # ALLOW, with ARGUMENT_RULES where they apply
    eperm: frozenset[str]  # ERRNO(EPERM) for every argument
    dangerous_allowed: frozenset[str]  # explicitly allowed members of DANGEROUS
    dangerous_kept: frozenset[str]  # DANGEROUS members of allowed @groups, still denied
    profile_denied: frozenset[str]
    socket_families: tuple[tuple[str, int], ...]
    allow_fork: bool = True
    udp: bool = False


def _resolve(policy: SeccompPolicy) -> FilterPlan:
    explicit = expand(name for name in policy.allow if not name.startswith("@"))
    from_groups = expand(name for name in policy.allow if name.startswith("@"))
    denied = expand(policy.deny)
    dangerous_allowed = (explicit & DANGEROUS.keys()) - denied
    allow = (baseline() | explicit | from_groups) - (DANGEROUS.keys() - dangerous_allowed)
    allow -= denied
    # Denial wins over allowance: profiles from `extends` union their lists.
    eperm = ((DANGEROUS.keys() - dangerous_allowed) | denied) - _ENOSYS_WHEN_DENIED
    eperm |= OPT_IN.keys() - allow
    if not policy.allow_fork:
        eperm |= {"fork", "vfork"}
        allow -= {"fork", "vfork"}
    if not policy.allow_listen:
        eperm |= {"listen"}
        allow -= {"listen"}
    families = {"AF_UNIX": AF_UNIX} if policy.unix_sockets else {}
    for name in policy.socket_families:
        if name in ("AF_UNIX", "AF_LOCAL") and not policy.unix_sockets:
            continue
        number = _family_number(name)
        if number not in families.values():  # AF_LOCAL is AF_UNIX
            families[name] = number
    return FilterPlan(
        allow=frozenset(allow),
        eperm=frozenset(eperm),
        dangerous_allowed=frozenset(dangerous_allowed),
        dangerous_kept=frozenset((from_groups & DANGEROUS.keys()) - explicit),
        profile_denied=denied,
        socket_families=tuple(sorted(families.items(), key=lambda item: item[1])),
        allow_fork=policy.allow_fork,
        udp=policy.udp,
    )


def resolve_policy(policy: SeccompPolicy) -> FilterPlan:
    """The policy as one action per syscall (exporters translate this plan too)."""
    try:
        return _resolve(policy)
    except ValueError as exc:
        raise EnforcementError(f"seccomp policy is invalid: {exc}",
                               "fix [syscalls] or the socket families in the profile") from exc


def _complement_cover(excluded: Iterable[int], width: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose MASKED_EQ matches are exactly the values not excluded.

    Walks the binary trie of the excluded values and emits every maximal subtree holding
    none of them, so k excluded values need at most k * width pairs.
    """
    full = (1 << width) - 1
    cover: list[tuple[int, int]] = []

    def walk(prefix: int, depth: int, members: list[int]) -> None:
        if not members:
            cover.append(((full << (width - depth)) & full, prefix))
            return
        if depth == width:
            return
        bit = 1 << (width - 1 - depth)
        walk(prefix, depth + 1, [v for v in members if not v & bit])
        walk(prefix | bit, depth + 1, [v for v in members if v & bit])

    values = sorted({v & full for v in excluded})
    if not values:
        raise ValueError("nothing to exclude: use an unconditional rule")
    walk(0, 0, values)
    return cover


# --- compiling -------------------------------------------------------------------------

def compile_filter(policy: SeccompPolicy) -> bytes:
    """The BPF program for `policy` (libseccomp's export_bpf); same policy, same bytes."""
    plan = resolve_policy(policy)
    try:
        sc = import_pyseccomp()
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so is missing
        raise EnforcementError(f"cannot compile the seccomp filter: {exc}",
                               "install libseccomp2 and the pyseccomp package") from exc
    try:
        bpf = add_rules(sc, plan)
    except (OSError, ValueError) as exc:
        raise EnforcementError(
            f"libseccomp refused the seccomp filter: {exc}",
            "this is a sandrun bug or an unsupported libseccomp version (2.5+ needed)",
        ) from exc
    wrong = _self_check(bpf, plan)
    if wrong:
        raise EnforcementError(
            "the compiled seccomp filter does not do what the policy says: "
            + "; ".join(wrong[:5]),
            "libseccomp merged the rules differently than expected; report this with "
            "the libseccomp version",
        )
    return bpf


def add_rules(s: Any, plan: FilterPlan) -> bytes:
    """Add the plan's rules to `s`, a pyseccomp-like filter (the OCI exporter passes a
    recorder with the same interface); return its BPF."""
    masked_eq = s.MASKED_EQ
    arg = s.Arg
    allow = s.ALLOW
    eperm = s.ERRNO(errno.EPERM)
    if s.system_arch() != s.Arch.X86_64:
        raise OSError(errno.ENOTSUP, "sandrun's syscall tables are for x86_64 only")
    # API level 3 is the first with KILL_PROCESS. Pinning it (rather than the level
    # libseccomp probes from this kernel) keeps the bytes independent of the host;
    # status() checks what the kernel really offers.
    s.set_api(3)
    flt = s.SyscallFilter(s.ERRNO(errno.ENOSYS))
    flt.set_attr(s.Attr.ACT_BADARCH, s.KILL_PROCESS)
    flt.set_attr(s.Attr.API_SYSRAWRC, 1)
    # Binary tree of syscall numbers instead of a linear chain: calls the kernel's
    # constant-action cache cannot skip (argument checks, denials) cost O(log n).
    flt.set_attr(s.Attr.CTL_OPTIMIZE, 2)

    def low32(index: int, value: int, mask: int = LOW32) -> Any:
        return arg(index, masked_eq, mask, value)

    for name in sorted(plan.allow | plan.eperm):
        if name in plan.eperm:
            flt.add_rule(eperm, name)
        elif name == "clone":
            if plan.allow_fork:
                flt.add_rule(allow, name, low32(0, 0, CLONE_NAMESPACE_MASK))
            else:  # threads only: CLONE_THREAD set, no namespace flag
                flt.add_rule(allow, name, low32(0, CLONE_THREAD,
                                                CLONE_NAMESPACE_MASK | CLONE_THREAD))
                flt.add_rule(eperm, name, low32(0, 0, CLONE_THREAD))
            for bit in sorted(CLONE_NAMESPACE_FLAGS.values()):
                flt.add_rule(eperm, name, low32(0, bit, bit))
        elif name == "ioctl":
            for cmd in (TIOCSTI, TIOCLINUX):
                flt.add_rule(eperm, name, low32(1, cmd))
            for mask, value in _complement_cover((TIOCSTI, TIOCLINUX)):
                flt.add_rule(allow, name, low32(1, value, mask))
        elif name == "personality":
            _allow_only(flt, allow, eperm, name, low32, sorted(PERSONALITY_ALLOWED))
        elif name == "socket":
            _socket_rules(flt, allow, eperm, low32, plan)
        elif name in _SEND_FLAGS_ARG:
            index = _SEND_FLAGS_ARG[name]
            flt.add_rule(allow, name, low32(index, 0, MSG_FASTOPEN))
            flt.add_rule(eperm, name, low32(index, MSG_FASTOPEN, MSG_FASTOPEN))
        elif name == "socketpair":
            _allow_only(flt, allow, eperm, name, low32, [AF_UNIX])
        else:
            flt.add_rule(allow, name)
    with _scratch_file() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def _scratch_file() -> BinaryIO:
    """An anonymous file for libseccomp's export: a memfd, or a temporary file where
    memfd_create is denied (a seccomp filter around sandrun itself)."""
    try:
        fd = os.memfd_create("sandrun-seccomp", os.MFD_CLOEXEC)
    except OSError:
        import tempfile

        return tempfile.TemporaryFile()
    return open(fd, "w+b")  # the caller closes it


def _inet_protocols(plan: FilterPlan) -> dict[int, tuple[int, ...]]:
    """Socket type -> protocols allowed for AF_INET/AF_INET6."""
    types: dict[int, tuple[int, ...]] = {SOCK_STREAM: (0, IPPROTO_TCP)}
    if plan.udp:
        types[SOCK_DGRAM] = (0, IPPROTO_UDP)
    return types


def _socket_rules(flt: Any, allow: int, eperm: int, low32: Callable[..., Any],
                  plan: FilterPlan) -> None:
    """socket(): the policy's families; for AF_INET/AF_INET6 only TCP (plus UDP with
    `udp`), so MPTCP, SCTP and raw sockets cannot sidestep Landlock's TCP rules."""
    families = [number for _, number in plan.socket_families]
    if not families:
        flt.add_rule(eperm, "socket")
        return
    types = _inet_protocols(plan)
    for family in families:
        if family not in AF_INET_FAMILIES:
            flt.add_rule(allow, "socket", low32(0, family))
            continue
        for kind, protocols in types.items():
            for protocol in protocols:
                flt.add_rule(allow, "socket", low32(0, family),
                             low32(1, kind, SOCK_TYPE_MASK), low32(2, protocol))
            for mask, value in _complement_cover(protocols):
                flt.add_rule(eperm, "socket", low32(0, family),
                             low32(1, kind, SOCK_TYPE_MASK), low32(2, value, mask))
        for kind in range(SOCK_TYPE_MASK + 1):
            if kind not in types:
                flt.add_rule(eperm, "socket", low32(0, family),
                             low32(1, kind, SOCK_TYPE_MASK))
    for mask, value in _complement_cover(families):
        flt.add_rule(eperm, "socket", low32(0, value, mask))


def _allow_only(flt: Any, allow: int, eperm: int, name: str,
                low32: Callable[..., Any], values: Sequence[int]) -> None:
    """ALLOW `name` when arg0's low 32 bits are one of `values`, EPERM otherwise."""
    for value in sorted(set(values)):
        flt.add_rule(allow, name, low32(0, value))
    for mask, value in _complement_cover(values):
        flt.add_rule(eperm, name, low32(0, value, mask))


def _self_check(bpf: bytes, plan: FilterPlan) -> list[str]:
    """Run the program on probes covering every decision; list what came out wrong."""
    allow, eperm, enosys = RET_ALLOW, RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    nr = _syscall_numbers()
    probes: list[tuple[str, int, tuple[int, ...], int, int]] = [
        ("unknown syscall 1000", 1000, (), AUDIT_ARCH_X86_64, enosys),
        ("x32 getpid", X32_SYSCALL_BIT | nr["getpid"], (), AUDIT_ARCH_X86_64, RET_KILL_PROCESS),
        ("i386 getpid", 20, (), AUDIT_ARCH_I386, RET_KILL_PROCESS),
    ]
    for name in sorted(plan.eperm):
        probes.append((name, nr[name], (), AUDIT_ARCH_X86_64, eperm))
    for name in sorted(plan.allow - ARGUMENT_RULES.keys()):
        probes.append((name, nr[name], (), AUDIT_ARCH_X86_64, allow))
    if "clone3" not in plan.allow:
        probes.append(("clone3", nr["clone3"], (), AUDIT_ARCH_X86_64, enosys))
    arg_probes: dict[str, list[tuple[int, ...]]] = {}
    high = 0xFFFFFFFF00000000
    if "clone" in plan.allow:
        thread_flags = 0x003D0F00  # glibc pthread_create's clone flags
        if plan.allow_fork:
            arg_probes["clone"] = [(0x11,), (thread_flags,), (high | 0x11,)]
        else:
            arg_probes["clone"] = [(thread_flags,), (high | thread_flags,)]
            probes += [("clone without CLONE_THREAD", nr["clone"], (0x11,), AUDIT_ARCH_X86_64,
                        eperm)]
        probes += [(f"clone {flag}", nr["clone"], (bit | 0x11,), AUDIT_ARCH_X86_64, eperm)
                   for flag, bit in CLONE_NAMESPACE_FLAGS.items()]
    if "ioctl" in plan.allow:
        arg_probes["ioctl"] = [(0, 0x5401), (0, 0x541B), (0, high | 0x80045430), (0, 0x5411)]
        probes += [(f"ioctl {cmd:#x}", nr["ioctl"], (0, cmd), AUDIT_ARCH_X86_64, eperm)
                   for cmd in (TIOCSTI, TIOCLINUX, high | TIOCSTI, (1 << 32) | TIOCLINUX)]
    if "personality" in plan.allow:
        arg_probes["personality"] = [*((v,) for v in PERSONALITY_ALLOWED), (high,)]
        probes += [(f"personality {v:#x}", nr["personality"], (v,), AUDIT_ARCH_X86_64, eperm)
                   for v in (0x0400000, 0x0040000, 0x0100000, 0x1, 0xFFFFFFFE)]
    families = {number for _, number in plan.socket_families}
    if "socketpair" in plan.allow:
        arg_probes["socketpair"] = [(AF_UNIX, 1, 0), (high | AF_UNIX, 1, 0)]
        probes += [(f"socketpair family {f}", nr["socketpair"], (f, 1, 0), AUDIT_ARCH_X86_64,
                    eperm) for f in (*range(46), 0xFFFF, high | 16) if f & LOW32 != AF_UNIX]
    if "socket" in plan.allow:
        probes += [(f"socket family {f}", nr["socket"], (f, 1, 0), AUDIT_ARCH_X86_64, eperm)
                   for f in (*range(46), 0xFFFF, high | 16) if f & LOW32 not in families]
        types = _inet_protocols(plan)
        ok: list[tuple[int, ...]] = []
        for f in sorted(families):
            if f not in AF_INET_FAMILIES:
                ok.append((f, 1, 0))
                continue
            for kind, protocols in types.items():
                ok += [(f, kind | 0x80800, p) for p in protocols]
                probes += [(f"socket {f}/{kind}/{p}", nr["socket"], (f, kind, p),
                            AUDIT_ARCH_X86_64, eperm) for p in (1, 132, 262, 255)
                           if p not in protocols]
            probes += [(f"socket {f} type {k}", nr["socket"], (f, k, 0), AUDIT_ARCH_X86_64,
                        eperm) for k in (2, 3, 5, 10) if k not in types]
        arg_probes["socket"] = ok
    for name, index in _SEND_FLAGS_ARG.items():
        if name in plan.allow:
            flags = [0] * 6
            flags[index] = 0x4040
            arg_probes[name] = [tuple(flags)]
            flags[index] = MSG_FASTOPEN | 0x40
            probes.append((f"{name} MSG_FASTOPEN", nr[name], tuple(flags), AUDIT_ARCH_X86_64,
                           eperm))
    for name, arg_sets in arg_probes.items():
        probes += [(f"{name} {args}", nr[name], args, AUDIT_ARCH_X86_64, allow)
                   for args in arg_sets]
    wrong = []
    for label, number, args, arch, expected in probes:
        got = evaluate(bpf, number, args, arch=arch)
        if got != expected:
            wrong.append(f"{label}: {_action_name(got)} instead of {_action_name(expected)}")
    return wrong


# The sonames the dynamic loader finds by itself, for pyseccomp's import (below).
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
_IMPORT_LOCK = threading.Lock()  # one patch of ctypes.util.find_library at a time


def import_pyseccomp() -> Any:
    """`import pyseccomp`, without its two ctypes.util.find_library calls running
    /sbin/ldconfig -p (~10 ms of every cold launch): while it imports, a library the
    loader opens by its usual soname is named so; anything else is looked up as before.
    The loader then searches exactly where it would for what ldconfig names."""
    if "pyseccomp" in sys.modules:
        import pyseccomp  # waits for an import another thread has under way

        return pyseccomp
    import ctypes
    import ctypes.util

    with _IMPORT_LOCK:
        return _import_pyseccomp(ctypes, ctypes.util)


def _import_pyseccomp(ctypes: Any, util: Any) -> Any:
    real: Callable[[str], str | None] = util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
            except OSError:
                pass
            else:
                return soname
        return real(name)

    util.find_library = find_library
    try:
        import pyseccomp
    finally:
        util.find_library = real
    return pyseccomp


@functools.cache
def _syscall_numbers() -> Mapping[str, int]:
    sc = import_pyseccomp()

    return MappingProxyType({name: sc.resolve_syscall(sc.Arch.X86_64, name)
                             for name in X86_64_SYSCALLS})


def _action_name(ret: int) -> str:
    action, data = ret & RET_ACTION_FULL, ret & RET_DATA
    if action == RET_ERRNO:
        return f"ERRNO({errno.errorcode.get(data, data)})"
    names = {RET_ALLOW: "ALLOW", RET_KILL_PROCESS: "KILL_PROCESS", 0: "KILL_THREAD"}
    return names.get(action, f"{ret:#x}")


# --- a classic BPF interpreter (the seccomp subset) -------------------------------------

def evaluate(bpf: bytes, nr: int, args: Sequence[int] = (), *,
             arch: int = AUDIT_ARCH_X86_64, instruction_pointer: int = 0) -> int:
    """The raw SECCOMP_RET_* value `bpf` returns for this syscall (no kernel involved).

    Runs once per probe of every cold launch's self-check (~450 probes): plain if-chains
    on pre-decoded instructions, no dict or closure per step."""
    padded = [a & 0xFFFFFFFFFFFFFFFF for a in args] + [0] * (6 - len(args))
    data = struct.pack("<II7Q", nr & LOW32, arch, instruction_pointer, *padded[:6])
    words = _words(data)
    size = len(data)
    insns = _decode(bpf)
    count = len(insns)
    a = x = pc = 0
    scratch = [0] * 16
    while pc < count:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x05:  # JMP: the most frequent
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            operand = x if code & 0x08 else k
            if op == 0x10:
                taken = a == operand
            elif op == 0x20:
                taken = a > operand
            elif op == 0x30:
                taken = a >= operand
            elif op == 0x40:
                taken = bool(a & operand)
            else:
                raise ValueError(f"unsupported BPF jump {code:#x} at {pc - 1}")
            pc += jt if taken else jf
        elif cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20 and code & 0x18 == 0 and k % 4 == 0 and k < size:
                a = words[k >> 2]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = scratch[k]
            elif mode == 0x80:
                a = size
            else:
                raise ValueError(f"unsupported BPF load {code:#x} at {pc - 1}")
        elif cls == 0x06:  # RET
            src = code & 0x18
            if src == 0x00:
                return k
            if src == 0x10:
                return a
            if src == 0x08:
                return x
            raise ValueError(f"unsupported BPF return {code:#x} at {pc - 1}")
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            if mode == 0x00:
                x = k
            elif mode == 0x60:
                x = scratch[k % 16]
            elif mode == 0x80:
                x = size
            else:
                raise ValueError(f"unsupported BPF load {code:#x} at {pc - 1}")
        elif cls == 0x02:  # ST
            scratch[k] = a
        elif cls == 0x03:  # STX
            scratch[k] = x
        elif cls == 0x04:  # ALU
            a = _alu(code & 0xF0, a, x if code & 0x08 else k)
        elif code & 0xF0 == 0x00:  # MISC TAX
            x = a
        else:  # MISC TXA
            a = x
    raise ValueError("BPF program ran past its end")


def _words(data: bytes) -> tuple[int, ...]:
    """seccomp_data as the 32-bit words a BPF_W|BPF_ABS load reads (offset k: word k/4)."""
    return struct.unpack(f"<{len(data) // 4}I", data)


@functools.lru_cache(maxsize=4)
def _decode(bpf: bytes) -> tuple[tuple[int, int, int, int], ...]:
    return tuple(struct.iter_unpack("<HBBI", bpf))


def _alu(op: int, a: int, operand: int) -> int:
    results = {
        0x00: lambda: a + operand, 0x10: lambda: a - operand, 0x20: lambda: a * operand,
        0x30: lambda: a // operand, 0x40: lambda: a | operand, 0x50: lambda: a & operand,
        0x60: lambda: a << operand, 0x70: lambda: a >> operand, 0x80: lambda: -a,
        0x90: lambda: a % operand, 0xA0: lambda: a ^ operand,
    }
    return int(results[op]()) & LOW32


# --- loading (runs in the child: ctypes only, no libseccomp) ----------------------------

# kernel.py holds the kernel call, so that the warm exec path need not import this module.
load_filter = kernel.load_seccomp_filter


# --- reporting -------------------------------------------------------------------------

def describe(policy: SeccompPolicy) -> list[str]:
    """Human lines for --dry-run: counts, actions, denied set, families, arch handling."""
    plan = resolve_policy(policy)
    lines = [
        f"seccomp: {len(plan.allow)} syscalls allowed (systemd @system-service minus "
        f"{len(expand(['@system-service']) - baseline())} dangerous or opt-in ones, with profile "
        "changes); any other syscall -> ENOSYS",
        "seccomp: other architectures (IA-32 int 0x80, x32) -> KILL_PROCESS",
        "seccomp: socket families: " + (", ".join(n for n, _ in plan.socket_families)
                                        or "none") + "; others -> EPERM; socketpair: AF_UNIX "
        "only" + ("" if policy.unix_sockets else " (AF_UNIX sockets are opt-in: "
                  "[network] unix_sockets)"),
        "seccomp: AF_INET/AF_INET6: TCP" + (" and UDP" if policy.udp else " only")
        + " (MPTCP, SCTP, raw -> EPERM); MSG_FASTOPEN -> EPERM",
    ]
    for name in sorted(plan.dangerous_allowed):
        lines.append(f"seccomp: WARNING: profile allows dangerous syscall {name}: "
                     f"{DANGEROUS[name]}")
    for name, rule in ARGUMENT_RULES.items():
        if name in plan.allow:
            lines.append(f"seccomp: {name}: {rule}")
    for name in sorted(DANGEROUS.keys() - plan.dangerous_allowed):
        action = "ENOSYS" if name in _ENOSYS_WHEN_DENIED else "EPERM"
        lines.append(f"seccomp: deny {name} ({action}): {DANGEROUS[name]}")
    if plan.dangerous_kept:
        lines.append("seccomp: still denied although in an allowed @group (name them to "
                     "allow): " + ", ".join(sorted(plan.dangerous_kept)))
    extra = plan.allow - baseline()
    if extra:
        lines.append("seccomp: profile adds: " + ", ".join(sorted(extra)))
    opt_in_off = sorted(OPT_IN.keys() - plan.allow)
    if opt_in_off:
        lines.append("seccomp: deny (EPERM) unless named in [syscalls] allow: "
                     + ", ".join(opt_in_off) + " (inotify is not mediated by Landlock)")
    profile_denied = plan.profile_denied - DANGEROUS.keys()
    if profile_denied:
        lines.append("seccomp: profile denies (EPERM): " + ", ".join(sorted(profile_denied)))
    lines.append("seccomp: subprocess " + ("allowed" if policy.allow_subprocess else
                 "not allowed") + " (execve stays in the filter; Landlock EXECUTE decides "
                 "what can run)")
    if not policy.allow_listen:
        lines.append("seccomp: listen -> EPERM (no bind_tcp and no unix sockets)")
    if not policy.allow_fork:
        lines.append("seccomp: fork = false: fork, vfork and clone without CLONE_THREAD -> "
                     "EPERM (threads still work)")
    return lines


def status() -> ProtectionStatus:
    """Whether this host can compile and enforce the filter (filter mode, KILL_PROCESS)."""
    import platform

    if platform.machine() != "x86_64":
        return ProtectionStatus("seccomp", NOT_ENFORCED,
                                f"sandrun's syscall tables cover x86_64 only, not "
                                f"{platform.machine()}")
    try:
        with open(ACTIONS_AVAIL, encoding="ascii") as file:
            actions = set(file.read().split())
    except OSError:
        return ProtectionStatus("seccomp", NOT_ENFORCED,
                                "the kernel has no seccomp filter mode (CONFIG_SECCOMP_FILTER)")
    if importlib.util.find_spec("pyseccomp") is None:
        return ProtectionStatus("seccomp", NOT_ENFORCED,
                                "pyseccomp is not installed: the filter cannot be compiled")
    missing = {"errno", "allow"} - actions
    if missing:
        return ProtectionStatus("seccomp", NOT_ENFORCED,
                                "kernel lacks seccomp actions: " + ", ".join(sorted(missing)))
    if "kill_process" not in actions:
        return ProtectionStatus("seccomp", PARTIAL,
                                "no KILL_PROCESS (kernel < 4.14): a foreign-arch syscall kills "
                                "only its thread")
    return ProtectionStatus("seccomp", ENFORCED,
                            "filter mode; allowlist with ENOSYS default, EPERM for the dangerous "
                            "set, KILL_PROCESS for other architectures")
