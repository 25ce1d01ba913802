"""`sandrun learn`: observe a run of an app and write the least-privilege profile it needed;
`sandrun learn --check PROFILE`: replay under enforcement and list what is still denied.

The learning run goes through the real launcher (the app user, the namespaces, MDWE,
rlimits, the cgroup), with two changes that only this module makes to the spec:

- Landlock: the profile's rules plus every right beneath `/`, so paths are reachable
  as Unix permissions allow; the scopes (abstract unix sockets, signals) stay, TCP is
  not restricted.
- seccomp: `notify.observe_filter` of the enforcing filter. What that filter allows runs
  without a round trip; what it denies, and every open, exec, socket, bind, connect and
  creation, removal or rename of a file, waits for the observer in the launcher.

The observer records each event and lets the syscall run (CONTINUE), even one the
enforcing filter denies (it is learned: `[syscalls] allow`, flagged when dangerous),
except where the run must meet enforcement's answer already: syscalls that could take the
app out of its sandbox while it is watched, or out of sight (`NEVER_LEARNED`: mount,
namespaces, bpf, io_uring...; clone3 gets ENOSYS and glibc falls back to clone), and
denials no profile key lifts (argument rules: TIOCSTI, MSG_FASTOPEN, socket families other
than unix/TCP/UDP); and an open the runtime makes and copes with being denied
(`RUNTIME_PROBES`: the interpreter's system site-packages, which the bootstrap drops
anyway, glibc's locale.alias, CPython's /proc/self/fd) gets EACCES, as Landlock will give
it. CONTINUE is observation, not enforcement (notify.py says why: TOCTOU); nothing here
allows anything at run time: the written profile is enforced by the kernel alone.

`derive` then turns the events into what the current profile lacks, collapsed (files of
one directory become the directory when there are more than COLLAPSE_OVER; paths under
{state}, {store}, {cwd}, {project} are written with the placeholder; DNS files become
`dns = true`; a path is granted as it resolves, the inode a Landlock rule holds),
drops paths that were only probed (absent: ENOENT) or that Unix permissions deny anyway,
and flags what deserves review (writes outside {state}, secrets, programs run, dangerous
syscalls, sockets). `--check` runs the same derivation on a launch with the real Landlock
ruleset in which the observer answers every denial with the enforcing filter's errno:
enforcement exactly, plus the list of what was denied (seccomp: seen; Landlock: predicted
from the rules for the existing paths the app opened).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import json
import os
import socket
import stat
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sandrun.bundle.manifest import PROFILE_NAME
from sandrun.config.profile import (
    DNS_FILES,
    Profile,
    load_profile,
    load_profile_text,
    project_dir,
    render_toml,
)
from sandrun.errors import EnforcementError, ProfileError
from sandrun.launch import runner
from sandrun.launch.launcher import (
    PRIVATE_TMP_DIRS,
    ExecOptions,
    LaunchPlan,
    decide,
    materialise,
    run_spec,
)
from sandrun.sandbox import landlock, notify, seccomp
from sandrun.sandbox.syscall_table import X86_64_SYSCALLS

LEARN, CHECK = "learn", "check"

# More granted files than this in one directory: the directory instead.
COLLAPSE_OVER = 3
# Never collapsed into (each holds many unrelated things), nor anything at depth 1.
_BROAD_DIRS = frozenset({"/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/run",
                         "/usr/lib", "/usr/lib64", "/usr/share", "/usr/local", "/usr/bin",
                         "/usr/sbin", "/usr/libexec", "/home", "/run/user", "/srv", "/mnt",
                         "/media", "/opt", "/etc/systemd"})
# Secrets and credentials: a grant on or beneath these is flagged for review.
_SECRET_PATHS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-",
                 "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private",
                 "/etc/security/opasswd", "/etc/krb5.keytab", "/etc/sandrun", "/root",
                 "/var/lib/sandrun", "/run/secrets", "/var/run/secrets", "/proc", "/sys",
                 "/boot", "/dev/mem", "/dev/kmem", "/run/docker.sock", "/var/run/docker.sock")
_SECRET_NAMES = frozenset({".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc",
                           ".pgpass", ".git-credentials", ".password-store", ".vault-token",
                           "id_rsa", "id_ecdsa", "id_ed25519", "credentials.json"})
# Directories where {cwd} would make no sense (a service started from /etc).
_SYSTEM_DIRS = ("/etc", "/usr", "/var", "/lib", "/lib64", "/bin", "/sbin", "/boot", "/proc",
                "/sys", "/dev", "/run", "/opt", "/snap")
# Opens the runtime makes and copes with being denied: learned, they would grant reads
# nothing needs (and run system .pth files the enforced run never sees).
RUNTIME_PROBES = ("/usr/share/locale/locale.alias",  # glibc: locale names work without
                  "/proc/self/fd", "/proc/thread-self/fd")  # CPython: fds closed anyway
_SITE_DIRS = ("site-packages", "dist-packages")
# Denied while learning too (they could take the app out of the sandbox while it is
# watched, or hide what it does: io_uring); a profile that needs one is written by hand.
# clone3 gets ENOSYS as under enforcement, and glibc falls back to clone.
NEVER_LEARNED = frozenset({
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "unshare", "setns", "clone3", "bpf",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
})
# Paths compared as written: private to the sandbox, or magic links (/proc/self, /dev/fd).
_LITERAL = ("/proc", "/dev", *PRIVATE_TMP_DIRS)
_AF_INET = (socket.AF_INET, socket.AF_INET6)
_FAMILY_NAMES = {number: name for name, number in seccomp.SOCKET_FAMILIES.items()
                 if name != "AF_LOCAL"}

A = landlock
_MAKE_ANY = (A.ACCESS_FS_MAKE_REG | A.ACCESS_FS_MAKE_DIR | A.ACCESS_FS_MAKE_SYM
             | A.ACCESS_FS_MAKE_SOCK | A.ACCESS_FS_MAKE_FIFO)
_REMOVE_ANY = A.ACCESS_FS_REMOVE_FILE | A.ACCESS_FS_REMOVE_DIR


# ---------------------------------------------------------------- observing


@dataclass
class Observation:
    """What one observed run did (events as notify.decode returns them)."""

    events: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    # (syscall, detail, errno) the enforcing filter denied: let run when learning if
    # _learnable, else (and always when checking) denied with that errno.
    denied: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    emulated: Counter[str] = field(default_factory=Counter)  # runtime probes: EACCES
    notifications: int = 0
    observer_seconds: float = 0.0  # spent deciding the answers
    seconds: float = 0.0  # wall time of the launch
    exit_code: int = 0
    errors: list[str] = field(default_factory=list)


class _Observer:
    """The supervisor's handler: records and answers each notification."""

    def __init__(self, enforcing: bytes, mode: str, coverage: _Coverage, tree: str) -> None:
        self.enforcing = enforcing
        self.mode = mode
        self.coverage = coverage
        self.tree = tree
        self.observation = Observation()
        self._verdicts: dict[int, int] = {}
        self._argument_rules = {_syscall_number(name) for name in seccomp.ARGUMENT_RULES}

    def __call__(self, n: notify.Notification, event: tuple[Any, ...] | None) -> int:
        verdict = self._verdict(n)
        if verdict & seccomp.RET_ACTION_FULL == seccomp.RET_ERRNO:
            error = verdict & seccomp.RET_DATA
            name, detail = _syscall_name(n.nr), _detail(n)
            self.observation.denied[(name, detail, error)] += 1
            if self.mode == CHECK or not _learnable(name, detail):
                return error  # as the enforcing filter would
        if event is None:
            return 0
        if self.mode == LEARN and _runtime_probe(event, self.tree) and \
                not self.coverage.allows(event[1], A.ACCESS_FS_READ_DIR
                                         if event[4] == notify.DIRECTORY
                                         else A.ACCESS_FS_READ_FILE):
            self.observation.emulated[event[1]] += 1
            return errno.EACCES  # as Landlock will
        self.observation.events[event] += 1
        return 0

    def _verdict(self, n: notify.Notification) -> int:
        cached = self._verdicts.get(n.nr)
        if cached is not None:
            return cached
        verdict = seccomp.evaluate(self.enforcing, n.nr, n.args, arch=n.arch)
        if n.nr not in self._argument_rules:
            self._verdicts[n.nr] = verdict
        return verdict


def _syscall_number(name: str) -> int:
    pyseccomp = seccomp.import_pyseccomp()

    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, name))


def _learnable(name: str, detail: str) -> bool:
    """Whether a learning run lets a syscall the enforcing filter denies run (to learn
    it), rather than deny it as enforcement will: not for those that could take the app
    out of its sandbox while it is watched (or out of sight: io_uring), nor for what no
    profile key can grant (an argument rule: TIOCSTI, MSG_FASTOPEN, other socket
    families...), where the app must meet enforcement's answer already."""
    if name in NEVER_LEARNED or name not in X86_64_SYSCALLS:
        return False
    if name == "clone":  # allowed by `fork`, never with a namespace flag
        return not int(detail.split()[-1], 16) & seccomp.CLONE_NAMESPACE_MASK
    if name == "socket":  # allowed by the network keys: unix, TCP and UDP only
        family, _, kind = detail.partition(", ")
        return family == "AF_UNIX" or (family in ("AF_INET", "AF_INET6")
                                       and kind in ("SOCK_STREAM", "SOCK_DGRAM"))
    return name not in seccomp.ARGUMENT_RULES


@functools.lru_cache(maxsize=512)
def _syscall_name(number: int) -> str:
    pyseccomp = seccomp.import_pyseccomp()

    try:
        return str(pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, number).decode())
    except ValueError:
        return f"syscall {number}"


def _detail(n: notify.Notification) -> str:
    """The argument that decided a denial, for the syscalls with argument rules."""
    name = _syscall_name(n.nr)
    low = [a & 0xFFFFFFFF for a in n.args]
    if name in ("socket", "socketpair"):
        family = _FAMILY_NAMES.get(low[0], str(low[0]))
        kind = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW"}.get(low[1] & 0xF,
                                                                     str(low[1] & 0xF))
        protocol = "" if low[2] in (0, 6, 17) else f" protocol {low[2]}"  # MPTCP, SCTP..
        return f"{family}, {kind}{protocol}"
    if name == "clone":
        return f"flags {low[0]:#x}"
    if name == "ioctl":
        return f"request {low[1]:#x}"
    if name == "personality":
        return f"{low[0]:#x}"
    if name in ("sendto", "sendmsg", "sendmmsg"):
        return "MSG_FASTOPEN"
    return ""


def _runtime_probe(event: tuple[Any, ...], tree: str) -> bool:
    """A read the runtime makes and copes with being denied (see RUNTIME_PROBES)."""
    if event[0] != "open" or event[2] or event[4] == notify.ABSENT:
        return False
    path = str(event[1])
    if path in RUNTIME_PROBES:
        return True
    if _within(path, tree):
        return False
    return any(part.endswith(_SITE_DIRS) for part in path.split("/"))


# ---------------------------------------------------------------- what the policy allows


def _within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


def _real(path: str) -> str:
    """The path Landlock will see: symbolic links resolved (in this mount namespace,
    the same as the app's but for its private /tmp, /proc and /dev, compared as written)."""
    if any(_within(path, literal) for literal in _LITERAL):
        return os.path.normpath(path)
    return os.path.realpath(path)


class _Coverage:
    """The Landlock rights a policy grants on a path, as the kernel computes them: the
    union of the rules on the path and on its ancestors."""

    def __init__(self, policy: landlock.LandlockPolicy) -> None:
        self.handled = landlock.fs_rights_for_abi(min(landlock.abi_version(),
                                                      landlock.KNOWN_ABI))
        self.rules: list[tuple[str, bool, int]] = []
        for rule in policy.paths:
            real = _real(rule.path)
            if not os.path.lexists(real) and not any(_within(real, p) for p in _LITERAL):
                continue
            is_dir = os.path.isdir(real)
            rights = rule.access.rights & self.handled
            self.rules.append((real, is_dir, rights if is_dir else rights & A.FS_FILE_RIGHTS))

    def rights(self, path: str) -> int:
        real = _real(path)
        total = 0
        for rule_path, is_dir, rights in self.rules:
            if real == rule_path or (is_dir and _within(real, rule_path)):
                total |= rights
        return total

    def allows(self, path: str, needed: int) -> bool:
        return not (needed & self.handled & ~self.rights(path))


# ---------------------------------------------------------------- deriving the profile


@dataclass(frozen=True)
class Change:
    """One difference of the learned profile from the current one."""

    key: str  # dotted profile key
    value: str
    review: str = ""  # why it deserves a second look ("" when it does not)
    removed: bool = False  # taken out of the profile (syscalls.deny), not added

    def __str__(self) -> str:
        sign = "-" if self.removed else "+"
        text = f"{sign} {self.key}: {self.value}"
        return f"{text}  [review: {self.review}]" if self.review else text


@dataclass
class Learned:
    """The derivation: the complete profile, what changed and what was left out."""

    profile: Profile  # flattened, placeholders kept
    changes: list[Change]
    skipped: list[str]  # seen but not granted, and why
    absent: list[str] = field(default_factory=list)  # probed, absent: nothing to grant
    unresolved: list[str] = field(default_factory=list)  # denied: no grant learned for it
    text: str = ""  # the profile as TOML, with comments

    def not_granted(self) -> list[str]:
        """What the run did that the profile does not grant, and why: one line each."""
        lines = [*self.unresolved, *self.skipped]
        if self.absent:
            lines.append(f"{len(self.absent)} path(s) probed but absent (ENOENT), e.g. "
                         + ", ".join(self.absent[:3]))
        return lines


@dataclass
class _Context:
    """What derive needs to know about the launch."""

    base: Profile  # the current profile, unexpanded
    current: Profile  # the same, expanded (what the launch enforced)
    coverage: _Coverage
    placeholders: list[tuple[str, str]]  # (placeholder, directory), longest first
    tree: str
    state: str
    uid: int
    gid: int
    user: str
    interpreter: str
    # Denials a profile could lift but learn cannot say how (a socket with no port):
    # reported, but they fail a check only through the app's exit code.
    unresolved: list[str] = field(default_factory=list)


def _needs(event: tuple[Any, ...]) -> list[tuple[str, int, str, str]]:
    """(path, Landlock rights needed there, profile key, path to grant) for one event;
    [] when nothing is needed (a probe of an absent path fails with ENOENT before any
    Landlock check)."""
    kind = event[0]
    if kind == "open":
        _, path, write, create, state = event
        if state == notify.ABSENT:
            if not create:
                return []
            parent = os.path.dirname(path)
            return [(parent, A.ACCESS_FS_MAKE_REG, "read_write", parent)]
        if state == notify.DIRECTORY:
            return [(path, A.ACCESS_FS_READ_DIR, "read", path)]
        if write:
            return [(path, A.ACCESS_FS_WRITE_FILE, "read_write", path)]
        return [(path, A.ACCESS_FS_READ_FILE, "read", path)]
    if kind == "exec":
        _, path, state = event
        if state == notify.ABSENT:
            return []
        return [(path, A.ACCESS_FS_EXECUTE | A.ACCESS_FS_READ_FILE, "execute", path)]
    if kind == "create":
        _, path, _syscall, state = event
        if state != notify.ABSENT:
            return []  # EEXIST
        parent = os.path.dirname(path)
        return [(parent, _MAKE_ANY, "read_write", parent)]
    if kind == "remove":
        _, path, state = event
        if state == notify.ABSENT:
            return []
        parent = os.path.dirname(path)
        return [(parent, _REMOVE_ANY, "read_write", parent)]
    if kind == "rename":
        _, old, new, state = event
        if state == notify.ABSENT:
            return []
        return [(os.path.dirname(old), A.ACCESS_FS_REMOVE_FILE, "read_write",
                 os.path.dirname(old)),
                (os.path.dirname(new), A.ACCESS_FS_MAKE_REG, "read_write",
                 os.path.dirname(new))]
    if kind == "truncate":
        _, path, state = event
        if state == notify.ABSENT:
            return []
        return [(path, A.ACCESS_FS_TRUNCATE, "read_write", path)]
    if kind == "bind" and event[1] == socket.AF_UNIX and isinstance(event[3], str) \
            and event[3].startswith("/"):
        parent = os.path.dirname(event[3])
        return [(parent, A.ACCESS_FS_MAKE_SOCK, "read_write", parent)]
    return []


def _unix_denies(path: str, rights: int, uid: int, gid: int) -> bool:
    """Whether the app user's Unix permissions deny this access anyway (owner, group or
    other bits along the path; ACLs are not read): a grant would not help."""
    if uid == 0 or any(_within(path, literal) for literal in _LITERAL):
        return False

    def permits(st: os.stat_result, bits: int) -> bool:
        if st.st_uid == uid:
            return (st.st_mode >> 6) & bits == bits
        if st.st_gid == gid:
            return (st.st_mode >> 3) & bits == bits
        return st.st_mode & bits == bits

    real = _real(path)
    parts = [p for p in real.split("/") if p]
    try:
        for i in range(len(parts)):
            if not permits(os.stat("/" + "/".join(parts[:i])), 1):
                return True
        st = os.stat(real)
    except OSError:
        return False
    if rights & (A.ACCESS_FS_WRITE_FILE | A.ACCESS_FS_TRUNCATE | _MAKE_ANY | _REMOVE_ANY):
        wanted = 2 | (1 if stat.S_ISDIR(st.st_mode) else 0)
    elif rights & A.ACCESS_FS_EXECUTE:
        wanted = 1
    else:
        wanted = 4
    return not permits(st, wanted)


def _secret(path: str) -> bool:
    return any(_within(path, s) for s in _SECRET_PATHS) or \
        any(part in _SECRET_NAMES for part in path.split("/"))


def _collapse(paths: set[str], keep_apart: set[str]) -> set[str]:
    """Files of one directory -> the directory, when more than COLLAPSE_OVER (never a
    broad or secret directory, nor one holding something in `keep_apart`); then what
    another entry covers is dropped."""
    paths = set(paths)
    changed = True
    while changed:
        changed = False
        by_parent: dict[str, set[str]] = {}
        for path in paths:
            by_parent.setdefault(os.path.dirname(path), set()).add(path)
        for parent, members in sorted(by_parent.items()):
            if len(members) <= COLLAPSE_OVER or parent.count("/") < 2 or \
                    parent in _BROAD_DIRS or _secret(parent) or \
                    any(_within(k, parent) for k in keep_apart):
                continue
            paths -= members
            paths.add(parent)
            changed = True
    return {p for p in paths if not any(p != q and _within(p, q) for q in paths)}


def _with_placeholder(path: str, placeholders: list[tuple[str, str]]) -> str:
    for name, directory in placeholders:
        if _within(path, directory):
            return name + path[len(directory.rstrip("/")):]
    return path


def _grant_path(path: str) -> str:
    """The path to grant for an access to `path`: the resolved one. A Landlock rule holds
    the inode the path leads to when the launch opens it, and the kernel's audit record
    of a denial (`sandrun exec --explain`) names that inode's path too: an app opening
    /usr/lib/ssl/openssl.cnf, a link to /etc/ssl/openssl.cnf, needs and is denied
    /etc/ssl/openssl.cnf, and both commands say so."""
    return _real(path)


def derive(observation: Observation, context: _Context) -> Learned:
    """The least-privilege additions to the current profile for what was observed."""
    base, current = context.base, context.current
    skipped: list[str] = []
    absent: set[str] = set()
    wanted: dict[str, set[str]] = {"read": set(), "optional_read": set(), "read_write": set(),
                                   "execute": set()}
    events = sorted(observation.events, key=repr)
    for event in list(events):
        if event[0] == "open" and event[4] == notify.ABSENT and not event[3]:
            absent.add(str(event[1]))
        if event[0] == "exec" and event[2] == notify.ABSENT:
            absent.add(str(event[1]))
        if event[0] == "exec" and event[2] != notify.ABSENT:
            interpreter = _shebang(str(event[1]))
            if interpreter:  # the kernel runs it without a syscall of its own
                events.append(("exec", interpreter, notify.FILE))
    for event in events:
        if _runtime_probe(event, context.tree):
            continue
        for path, rights, key, grant in _needs(event):
            if context.coverage.allows(path, rights):
                continue
            if _unix_denies(path, rights, context.uid, context.gid):
                skipped.append(f"{key} {path}: Unix permissions deny it to {context.user} "
                               "(a grant would not help)")
                continue
            wanted[key].add(_grant_path(_proc_grant(grant)))
    for path in sorted(observation.emulated):
        skipped.append(f"read {path}: denied as under enforcement (the runtime copes)")
    _vanished(wanted, skipped)

    changes: list[Change] = []
    network = _network(observation, context, changes, skipped)
    dns = current.dns or network["dns"]
    if dns and not current.dns:  # dns = true grants them (and where their links lead)
        wanted["read"] -= {*DNS_FILES, *(_real(p) for p in DNS_FILES)}
    # Within read_write, a program could be replaced by the app: keep them apart.
    executables = wanted["execute"] | set(current.execute)
    for path in sorted(wanted["read_write"]):
        clash = [p for p in executables if _within(p, path)]
        if clash:
            wanted["read_write"].discard(path)
            skipped.append(f"read_write {path}: it holds {clash[0]}, which the app runs "
                           "(a program the app can write could be replaced)")
    collapsed = {key: _collapse(paths, executables if key == "read_write" else set())
                 for key, paths in wanted.items()}
    for key in ("read", "optional_read"):
        collapsed[key] = {p for p in collapsed[key]
                          if not any(_within(p, w) for w in collapsed["read_write"])}
    collapsed["optional_read"] -= collapsed["read"]
    added: dict[str, list[str]] = {}
    for key in ("read", "optional_read", "read_write", "execute"):
        entries = sorted({_with_placeholder(p, context.placeholders) for p in collapsed[key]})
        added[key] = entries
        for entry in entries:
            changes.append(Change(f"filesystem.{key}", entry, _path_review(key, entry)))
    subprocess = current.subprocess or bool(added["execute"])
    if subprocess and not current.subprocess:
        changes.append(Change("process.subprocess", "true", "runs programs"))
    syscall_allow, syscall_deny, fork = _syscalls(observation, context, changes, skipped,
                                                  network)
    fork = fork or subprocess
    profile = replace(
        base,
        read=(*base.read, *added["read"]),
        optional_read=(*base.optional_read, *added["optional_read"]),
        read_write=(*base.read_write, *added["read_write"]),
        execute=(*base.execute, *added["execute"]),
        bind_tcp=tuple(sorted({*base.bind_tcp, *network["bind_tcp"]})),
        connect_tcp=tuple(sorted({*base.connect_tcp, *network["connect_tcp"]})),
        dns=dns, unix_sockets=base.unix_sockets or network["unix_sockets"],
        subprocess=subprocess, fork=base.fork or fork,
        syscalls_allow=(*base.syscalls_allow, *syscall_allow),
        syscalls_deny=syscall_deny)
    if profile.fork and not base.fork:
        changes.append(Change("process.fork", "true"))
    shown = sorted({_with_placeholder(p, context.placeholders) for p in absent})
    return Learned(profile, changes, list(dict.fromkeys(skipped)), shown,
                   list(dict.fromkeys(context.unresolved)))


def _proc_grant(path: str) -> str:
    """A process's own /proc files: /proc itself. A Landlock rule holds an inode, and
    every process has new ones, so /proc/self/status cannot be granted by itself."""
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "proc" and (
            parts[2] in ("self", "thread-self") or parts[2].isdigit()):
        return "/proc"
    return path


def _shebang(path: str) -> str | None:
    """The interpreter of a `#!` script (Landlock checks EXECUTE on it too)."""
    try:
        fd = os.open(_real(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, 256)
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words and words[0].startswith(b"/") else None


def _vanished(wanted: dict[str, set[str]], skipped: list[str]) -> None:
    """Paths the run used that are gone now (it removed them): a required grant would
    refuse the next launch. Reads become optional, writes go to the directory."""
    for path in sorted(wanted["read"]):
        if not _exists(path):
            wanted["read"].discard(path)
            wanted["optional_read"].add(path)
    for path in sorted(wanted["read_write"]):
        if not _exists(path):
            wanted["read_write"].discard(path)
            parent = os.path.dirname(path)
            if _exists(parent):
                wanted["read_write"].add(parent)
            else:
                skipped.append(f"read_write {path}: gone after the run, and its directory "
                               "too")
    for path in sorted(wanted["execute"]):
        if not _exists(path):
            wanted["execute"].discard(path)
            skipped.append(f"execute {path}: gone after the run")


def _exists(path: str) -> bool:
    return any(_within(path, p) for p in _LITERAL) or os.path.lexists(path)


def _path_review(key: str, entry: str) -> str:
    reasons = []
    if key == "read_write" and not entry.startswith(("{state}", "{tmp}", "{home}")):
        reasons.append("writes outside {state}")
    if key == "execute":
        reasons.append("runs a program")
    if entry == "/proc":
        reasons.append("all of the sandbox's /proc: its own processes (per-process files "
                       "cannot be granted one by one) and host-wide files such as /proc/net")
    elif key in ("read", "optional_read", "read_write") and os.path.isdir(entry) and (
            entry.count("/") < 2 or entry in _BROAD_DIRS or entry == "/etc"):
        reasons.append("a broad directory: everything beneath it is granted")
    if entry != "/proc" and _secret(entry):
        reasons.append("secrets or system internals")
    return "; ".join(reasons)


def _network(observation: Observation, context: _Context, changes: list[Change],
             skipped: list[str]) -> dict[str, Any]:
    """Ports, UDP (dns) and unix sockets the run used and the profile lacks."""
    current = context.current
    connect: set[int] = set()
    bind: set[int] = set()
    udp = unix_socket = False
    unix_used: list[str] = []
    unix_absent: list[str] = []
    for event in observation.events:
        kind = event[0]
        if kind == "socket":
            family, sock_type = event[1], event[2]
            if family == socket.AF_UNIX:
                unix_socket = True
            elif family in _AF_INET:
                udp |= sock_type == socket.SOCK_DGRAM
        elif kind in ("connect", "bind"):
            family, sock_type, target, state = event[1:5]
            if family in _AF_INET:
                if sock_type == socket.SOCK_DGRAM:
                    udp = True
                elif not isinstance(target, int):
                    continue
                elif target == 0:
                    if kind == "bind":
                        skipped.append("bind to TCP port 0 (an ephemeral port, e.g. an IPv6 "
                                       "probe): denied under enforcement, a profile grants "
                                       "fixed ports only")
                else:
                    (connect if kind == "connect" else bind).add(target)
            elif family == socket.AF_UNIX and isinstance(target, str):
                if kind == "connect" and state == notify.ABSENT:
                    unix_absent.append(target)
                else:
                    unix_used.append(f"{kind} {target}")
    connect -= set(current.connect_tcp)
    bind -= set(current.bind_tcp)
    for port in sorted(connect):
        changes.append(Change("network.connect_tcp", str(port)))
    for port in sorted(bind):
        changes.append(Change("network.bind_tcp", str(port),
                              "a port below 1024 needs CAP_NET_BIND_SERVICE, which the app "
                              "does not have" if port < 1024 else ""))
    dns = udp and not current.dns
    if dns:
        changes.append(Change("network.dns", "true", "UDP to any host (name resolution)"))
    unix = (bool(unix_used) or (unix_socket and not unix_absent)) and not current.unix_sockets
    if unix:
        targets = ", ".join(sorted(set(unix_used))[:4]) or "none seen"
        danger = "may connect to any pathname socket (D-Bus, databases)"
        if any("docker.sock" in t for t in unix_used):
            danger += "; the Docker socket is root on the host"
        changes.append(Change("network.unix_sockets", "true", f"{danger}; used: {targets}"))
    elif unix_absent:
        skipped.append("unix socket(s) probed but absent: " + ", ".join(sorted(set(
            unix_absent))[:4]))
    return {"connect_tcp": connect, "bind_tcp": bind, "dns": dns, "unix_sockets": unix,
            "unix_probed_only": bool(unix_absent) and not unix_used}


def _syscalls(observation: Observation, context: _Context, changes: list[Change],
              skipped: list[str], network: dict[str, Any]
              ) -> tuple[list[str], tuple[str, ...], bool]:
    """Syscalls the enforcing filter denied: (names to allow, the new deny list, whether
    fork must be allowed)."""
    base, current = context.base, context.current
    denied_by_profile = seccomp.expand(current.syscalls_deny)
    allow: list[str] = []
    lift: set[str] = set()
    fork = False
    unresolved = context.unresolved
    listens = bool(network["bind_tcp"] or network["unix_sockets"] or current.bind_tcp
                   or current.unix_sockets)
    for name, detail, error in sorted(observation.denied):
        label = f"{name}({detail})" if detail else name
        code = errno.errorcode.get(error, str(error))
        if not _learnable(name, detail):
            if name in seccomp.ARGUMENT_RULES:
                skipped.append(f"{label}: {code}, no profile key lifts it "
                               f"({seccomp.ARGUMENT_RULES[name]})")
            elif name != "clone3":  # glibc falls back to clone: expected, not worth a line
                why = seccomp.DANGEROUS.get(name, "unknown to libseccomp")
                skipped.append(f"{label}: {code} while learning too ({why}); allow it by "
                               "hand only if the app cannot do without")
            continue
        if name in denied_by_profile:
            lift.add(name)
            changes.append(Change("syscalls.deny", name, "the profile denied it", True))
        elif name in ("fork", "vfork") or (name == "clone" and detail and
                                           not int(detail.split()[-1], 16)
                                           & seccomp.CLONE_NAMESPACE_MASK):
            fork = True
        elif name == "listen":
            if not listens:
                skipped.append("listen: needs a bind_tcp port or unix_sockets")
        elif name == "socket":
            family, _, kind = detail.partition(", ")
            enabled = (current.unix_sockets or network["unix_sockets"]) if \
                family == "AF_UNIX" else (current.dns or network["dns"]) if \
                kind == "SOCK_DGRAM" else bool(
                    current.connect_tcp or current.bind_tcp or current.dns
                    or network["connect_tcp"] or network["bind_tcp"] or network["dns"])
            if family == "AF_UNIX" and network["unix_probed_only"]:
                continue  # glibc's nscd probe: under enforcement socket() fails, it copes
            if not enabled:
                key = ("network.unix_sockets" if family == "AF_UNIX" else "network.dns"
                       if kind == "SOCK_DGRAM" else "network.connect_tcp or bind_tcp")
                unresolved.append(f"{label}: {code} unless the profile sets {key} (the run "
                                  "used no port or name that learn could grant)")
        elif name not in allow:
            allow.append(name)
            review = seccomp.DANGEROUS.get(name) or seccomp.OPT_IN.get(name) or (
                "outside the baseline (ENOSYS under enforcement; the app may cope without)"
                if error == errno.ENOSYS else f"denied ({code}) by the baseline")
            changes.append(Change("syscalls.allow", name, review))
    deny = base.syscalls_deny
    if lift:
        kept: list[str] = []
        for entry in base.syscalls_deny:
            names = seccomp.expand([entry])
            if names & lift:
                kept += sorted(names - lift)
            else:
                kept.append(entry)
        deny = tuple(dict.fromkeys(kept))
    return allow, deny, fork


# ---------------------------------------------------------------- rendering

_LIST_FIELDS = {"filesystem.read": "read", "filesystem.read_write": "read_write",
                "filesystem.execute": "execute", "network.bind_tcp": "bind_tcp",
                "network.connect_tcp": "connect_tcp", "syscalls.allow": "syscalls_allow"}


def _toml_value(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def render(learned: Learned, header: list[str]) -> str:
    """The complete profile as TOML: render_toml's, with the learned entries marked
    (`# learned`, `# REVIEW: why`) and `header` as comments on top."""
    notes: dict[tuple[str, str], str] = {}
    for change in learned.changes:
        if not change.removed:
            notes[(change.key, change.value)] = "learned" + (
                f"; REVIEW: {change.review}" if change.review else "")
    lines = [f"# {line}".rstrip() for line in header]
    section = ""
    for line in render_toml(learned.profile).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        key, sep, _value = line.partition(" = ")
        dotted = f"{section}.{key}" if section else key
        if sep and dotted in _LIST_FIELDS and any(k == dotted for k, _ in notes):
            lines.append(f"{key} = [")
            for item in getattr(learned.profile, _LIST_FIELDS[dotted]):
                note = notes.get((dotted, str(item)))
                lines.append(f"    {_toml_value(item)}," + (f"  # {note}" if note else ""))
            lines.append("]")
        elif sep and (dotted, _value) in notes:
            lines.append(f"{line}  # {notes[(dotted, _value)]}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the runs


@dataclass
class Result:
    """A learning or checking run."""

    observation: Observation
    learned: Learned
    plan: LaunchPlan
    source: str  # the profile the run started from


def current_profile(options: ExecOptions, plan: LaunchPlan) -> Profile:
    """The profile the launch applied, unexpanded (placeholders kept): -p's or the
    bundle's embedded one, with the operator's path and port grants (--read, --rw,
    --bind-tcp, --connect-tcp). Not -e/--env-file: values may be secrets, and a
    profile file is no place for them."""
    from sandrun.launch.launcher import operator_grants

    if options.profile:
        profile = load_profile(options.profile)
    else:
        assert plan.archive is not None  # decide() read the bundle
        entry = next(e for e in plan.archive.entries if e.name == PROFILE_NAME)
        profile = load_profile_text(plan.archive.read(entry).decode("utf-8"),
                                    f"{options.bundle}:{PROFILE_NAME}", None)
    grants = operator_grants(options)
    grants.env_pass, grants.env_set = [], {}
    return grants.apply(profile)


def observed_run(options: ExecOptions, mode: str,
                 notice: Any = lambda message: None) -> Result:
    """Decide and materialise as `exec` does, run the app observed (`mode` LEARN or
    CHECK), and derive what the profile lacks."""
    plan = decide(options)
    plan.raise_for_refusals()
    base = current_profile(options, plan)
    if mode == LEARN and (options.env or options.env_file or options.workdir):
        notice("-e, --env-file and -w apply to this run but are not written into the "
               "profile: give them to exec again")
    materialise(plan, options)
    for line in plan.notices:
        notice(line)
    spec = run_spec(plan)
    _check_handover(spec.seccomp_bpf)
    spec.notify_bpf = notify.observe_filter(spec.seccomp_bpf, notify.WATCHED.values())
    if mode == LEARN:
        spec.landlock = _permissive(spec.landlock)
    coverage = _Coverage(plan.landlock_policy)
    observer = _Observer(spec.seccomp_bpf, mode, coverage, str(plan.tree))
    supervisor = notify.Supervisor(observer)
    started = time.monotonic()
    code = runner.launch(spec, plan.args, observer=supervisor)
    observation = observer.observation
    observation.seconds = time.monotonic() - started
    observation.exit_code = code
    observation.notifications = supervisor.notifications
    observation.observer_seconds = supervisor.busy_seconds
    observation.errors = [f"{type(e).__name__}: {e}" for e in supervisor.errors]
    context = _context(plan, base, coverage)
    learned = derive(observation, context)
    return Result(observation, learned, plan, base.source)


def _context(plan: LaunchPlan, base: Profile, coverage: _Coverage) -> _Context:
    state, tree = str(plan.state_dir), str(plan.tree)
    places = [("{state}", state), ("{store}", tree)]
    cwd = os.getcwd()
    if cwd != "/" and not any(_within(cwd, d) for d in _SYSTEM_DIRS):
        places.append(("{cwd}", cwd))
        project = project_dir(cwd)[0]
        if project != cwd:  # longer first below: {cwd} wins beneath it
            places.append(("{project}", project))
    tmp = plan.env.get("TMPDIR", "")
    if tmp and not plan.privileged:
        places.append(("{tmp}", tmp))
    places.sort(key=lambda item: -len(item[1]))
    return _Context(base=base, current=plan.profile, coverage=coverage, placeholders=places,
                    tree=tree, state=state, uid=plan.user.uid, gid=plan.user.gid,
                    user=plan.user.name, interpreter=plan.interpreter.path)


def _permissive(ruleset: dict[str, Any] | None) -> dict[str, Any] | None:
    """The learning run's Landlock ruleset: the profile's rules (so the launch mounts
    what they name as under enforcement) plus every handled right beneath `/`; TCP not
    handled; the scopes kept."""
    if ruleset is None:
        return None
    permissive = dict(ruleset)
    permissive["paths"] = [*ruleset["paths"], ("/", ruleset["handled_fs"], True,
                                                "learn: everything")]
    permissive["handled_net"] = 0
    permissive["bind_tcp"] = []
    permissive["connect_tcp"] = []
    return permissive


def _check_handover(enforcing: bytes) -> None:
    """Between loading the observing filter and handing its listener over, the app's
    process makes a few syscalls that must not wait for an observer: refuse a profile
    whose filter denies them."""
    for name, args in (("sendmsg", (0, 0, 0)), ("close", ()), ("exit_group", ())):
        verdict = seccomp.evaluate(enforcing, _syscall_number(name), args)
        if verdict != seccomp.RET_ALLOW:
            raise EnforcementError(f"the profile's seccomp filter denies {name}, which "
                                   "sandrun learn needs to start observing",
                                   "remove it from [syscalls] deny")


def learn(options: ExecOptions, output: str | None,
          notice: Any = lambda message: None) -> Result:
    """Learn from one run; write the complete profile to `output` (if given), atomically,
    after checking that it loads."""
    result = observed_run(options, LEARN, notice)
    plan, learned = result.plan, result.learned
    m = plan.manifest
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    learned.profile = replace(learned.profile, name=f"{m.app_name}-learned",
                              description=f"learned by sandrun learn from a run of "
                              f"{m.app_name} {m.app_version} ({now}), starting from "
                              f"{result.source}")
    learned.text = render(learned, _header(result, now))
    if output:
        try:
            load_profile_text(learned.text, output)
        except ProfileError as exc:
            raise ProfileError("the learned profile does not load (a sandrun bug)",
                               exc.problems, "report it with the run's output") from exc
        _write(output, learned.text)
    return result


def _header(result: Result, now: str) -> list[str]:
    m, o = result.plan.manifest, result.observation
    lines = [
        f"Learned by `sandrun learn` ({now}) from a run of {m.app_name} {m.app_version}",
        f"(bundle sha256 {result.plan.bundle_sha256[:16]}...), exit code {o.exit_code},",
        f"starting from profile {result.source}. Complete: use it with",
        "`sandrun exec -p THIS_FILE BUNDLE`; replay with `sandrun learn --check THIS_FILE "
        "BUNDLE -- ARGS`.",
        "Entries marked `learned` were added; `REVIEW` marks what deserves a second look.",
        "A profile grants only what this run did: exercise every feature while learning.",
    ]
    removed = [c for c in result.learned.changes if c.removed]
    if removed:
        lines += ["", "Removed:"] + [f"  {c}" for c in removed]
    skipped = result.learned.not_granted()
    if skipped:
        lines += ["", "Not granted (denied under this profile too):"]
        lines += [f"  - {line}" for line in skipped]
    return [*lines, ""]


def _write(output: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(output))
    temporary = os.path.join(directory, f".{os.path.basename(output)}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def check(options: ExecOptions, notice: Any = lambda message: None) -> Result:
    """Replay under enforcement (options.profile is the profile to check)."""
    return observed_run(options, CHECK, notice)


def still_denied(result: Result) -> list[str]:
    """What a checked run was denied that a profile would grant, as `key: value`: the
    changes learning would make (denials with no grant to name are in
    result.learned.unresolved)."""
    changes = result.learned.changes
    return [f"{c.key.replace('.', ' ', 1)}: {c.value}" for c in changes if not c.removed] + \
        [f"{c.key}: {c.value} (the profile denies it)" for c in changes if c.removed]


def summary(result: Result) -> str:
    o = result.observation
    return (f"{result.plan.manifest.app_name} exited with {o.exit_code} "
            f"({o.notifications} syscalls observed in {o.seconds:.2f} s, "
            f"{o.observer_seconds:.3f} s of it answering)")



def result_json(result: Result, mode: str, output: str | None = None) -> dict[str, Any]:
    """A learning (LEARN) or checking (CHECK) run as data, for `sandrun learn --json`:
    what the profile lacked (changes), what was seen but not granted, and the syscalls
    the enforcing filter denied during the run."""
    o, learned, m = result.observation, result.learned, result.plan.manifest
    document: dict[str, Any] = {
        "mode": mode, "app": m.app_name, "version": m.app_version,
        "bundle": result.plan.bundle, "sha256": result.plan.bundle_sha256,
        "profile": result.source, "exit_code": o.exit_code,
        "observed": {"notifications": o.notifications, "seconds": round(o.seconds, 3),
                     "observer_seconds": round(o.observer_seconds, 3)},
        "changes": [{"key": c.key, "value": c.value, "review": c.review,
                     "removed": c.removed} for c in learned.changes],
        "not_granted": learned.not_granted(),
        "unresolved": list(learned.unresolved), "skipped": list(learned.skipped),
        "absent": list(learned.absent),
        "denials": [{"syscall": name, "detail": detail,
                     "errno": errno.errorcode.get(code, str(code)), "count": count}
                    for (name, detail, code), count in sorted(o.denied.items())],
        "observer_errors": list(o.errors),
    }
    if mode == LEARN:
        document["output"] = output
    else:
        denied = still_denied(result)
        document["still_denied"] = denied
        document["ok"] = not denied and o.exit_code == 0
    return document
