"""Why a launch ended badly: each Landlock and seccomp denial of the run with the
profile key that would allow it, the app user's Unix permissions on its grants (which
no sandbox record shows), and the signal the app died of.

`sandrun exec --explain` records the run (`ExplainSession`: kernel audit records over
netlink, sandbox/audit_log.py, and seccomp's FLAG_LOG for the app's filter) and always
prints the explanation; without it, a run that fails gets what can be known afterwards
(signal, OOM kill, permissions) and a hint to rerun with --explain. Capture is opt-in
because it changes the host while it lasts: audit is enabled (records are printed to
the kernel log, processes forked meanwhile keep an audit context), and seccomp's log
flag would log glibc's clone3 probe on every thread the app starts.

The cold path imports this lazily. A launch that hands off to the native supervisor
(the warm path, and the cold one without --explain) is explained after it ends by that
supervisor (native/supervise.c), from texts kept byte for byte as `exit_lines` and
`failure_notes` make them (tests/launch/test_supervisor.py compares them): the exit
line, `ADVICE`, then the notes the launch carries (RunSpec.failure_notes).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sandrun.sandbox import kernel, seccomp

if TYPE_CHECKING:
    from sandrun.config.profile import Profile
    from sandrun.launch.launcher import LaunchPlan
    from sandrun.launch.users import AppUser
    from sandrun.sandbox import audit_log

ARROW = "\u2192"

# Landlock blockers (security/landlock/audit.c) -> (what the app tried, the key).
_READ = "[filesystem] read"
_WRITE = "[filesystem] read_write"
_FS_ACTIONS = {
    "fs.read_file": ("read {}", _READ),
    "fs.read_dir": ("list {}", _READ),
    "fs.write_file": ("write {}", _WRITE),
    "fs.truncate": ("truncate {}", _WRITE),
    "fs.remove_file": ("remove a file in {}", _WRITE),
    "fs.remove_dir": ("remove a directory in {}", _WRITE),
    "fs.make_reg": ("create a file in {}", _WRITE),
    "fs.make_dir": ("create a directory in {}", _WRITE),
    "fs.make_sym": ("create a symlink in {}", _WRITE),
    "fs.make_sock": ("create a unix socket in {}", _WRITE),
    "fs.make_fifo": ("create a FIFO in {}", _WRITE),
    "fs.refer": ("move or link {} to another directory", f"{_WRITE} (on both directories)"),
}
# What no profile key grants, and why.
_NEVER = {
    "fs.make_char": ("create a device in {}", "device nodes are never granted"),
    "fs.make_block": ("create a device in {}", "device nodes are never granted"),
    "fs.ioctl_dev": ("ioctl on the device {}", "device ioctls are never granted"),
    "fs.change_topology": ("mount or unmount at {}", "the mount tree is fixed by sandrun"),
}
# The stronger a right, the earlier: a denial blocked on several names the strongest.
_ORDER = ("fs.execute", "fs.change_topology", "fs.make_char", "fs.make_block",
          "fs.ioctl_dev", "fs.refer", "fs.write_file", "fs.truncate", "fs.make_reg",
          "fs.make_dir", "fs.make_sym", "fs.make_sock", "fs.make_fifo", "fs.remove_file",
          "fs.remove_dir", "fs.read_file", "fs.read_dir")

SIGNALS = {
    4: ("SIGILL", "an illegal instruction (a native extension built for another CPU?)"),
    6: ("SIGABRT", "it aborted (a failed C assertion, a Python fatal error, or glibc "
                   "detected memory corruption)"),
    7: ("SIGBUS", "a bus error: a mapped file shrank, or a tmpfs (/tmp, /dev/shm) is full "
                  "([limits] memory sizes the private /tmp)"),
    8: ("SIGFPE", "an arithmetic fault in native code"),
    9: ("SIGKILL", "killed outright: by the OOM killer when the memory limit is reached "
                   "([limits] memory), by a hard RLIMIT_CPU ([process] rlimits cpu), or "
                   "by someone"),
    11: ("SIGSEGV", "a crash in native code; under [process] mdwe = true, code that needs "
                    "writable and executable memory (a JIT, ctypes callbacks) cannot get "
                    "it"),
    24: ("SIGXCPU", "the CPU time limit ([process] rlimits cpu)"),
    25: ("SIGXFSZ", "a file reached the size limit ([limits] fsize)"),
    31: ("SIGSYS", "seccomp kills a process making a syscall of another architecture "
                   "(IA-32 int 0x80, x32): not allowed"),
}
_SENT = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 13: "SIGPIPE", 14: "SIGALRM",
         15: "SIGTERM"}


# ---------------------------------------------------------------- Unix permissions


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


def may_access(st: os.stat_result, uid: int | None, gids: Sequence[int], need: int) -> bool:
    """Whether Unix permissions give `need` (R/W/X_OK bits) to uid/gids on `st`."""
    if uid is not None and st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


_VERBS = {"read": ("read", os.R_OK), "read_write": ("write", os.R_OK | os.W_OK),
          "execute": ("execute", os.X_OK)}


def permission_problem(user: str, uid: int | None, gids: Sequence[int], path: str,
                       access: str) -> str | None:
    """Why the app user cannot use a grant by Unix permissions, or None.

    `access` is "read", "read_write" or "execute"; `uid` None: a user that does not
    exist yet (only the "other" bits can apply). Mode bits only (ACLs are not read);
    a write grant on a read-only mount is reported too. An absent path is not a
    permission problem (the launch refuses a required one).
    """
    verb, want = _VERBS[access]
    try:
        real = os.path.realpath(path)
        target = os.stat(real)
    except OSError:
        return None
    parts = [p for p in real.split("/") if p]
    current = "/"
    for part in parts[:-1] if parts else []:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return None
        if not may_access(st, uid, gids, os.X_OK):
            return f"{user} cannot {verb} {path}: it cannot enter {current} ({_owner(st)})"
    need = want
    if stat.S_ISDIR(target.st_mode):
        need |= os.X_OK  # list a directory, create in it: both need search too
    if not may_access(target, uid, gids, need):
        return f"{user} cannot {verb} {path} ({_owner(target)})"
    if access == "read_write":
        try:
            if os.statvfs(real).f_flag & os.ST_RDONLY:
                return f"{user} cannot write {path}: it is on a read-only file system"
        except OSError:
            pass
    return None


def grants(profile: Profile) -> list[tuple[str, str]]:
    """The profile's path grants (placeholders expanded), as (path, access)."""
    found = [(p, "read") for p in (*profile.read, *profile.optional_read)]
    found += [(p, "read_write") for p in profile.read_write]
    found += [(p, "execute") for p in profile.execute]
    return [(p, a) for p, a in dict.fromkeys(found) if p.startswith("/")]


def permission_problems(profile: Profile, user: AppUser) -> list[str]:
    """`sandrun-app cannot write /srv/x (root:root 0755)` for every grant of the profile
    that the app user's Unix permissions defeat: Landlock allows it, the kernel still
    says EACCES, and no audit record tells why. For `decide()` (dry run) and the
    explanation; only meaningful when sandrun is root (the app runs as another user)."""
    if user.invoking:
        return []
    if user.exists:
        uid: int | None = user.uid
        try:
            gids: list[int] = os.getgrouplist(user.name, user.gid)
        except OSError:
            gids = [user.gid]
    else:
        uid, gids = None, []
    problems = []
    for path, access in grants(profile):
        problem = permission_problem(user.name, uid, gids, path, access)
        if problem:
            problems.append(problem)
    return problems


# ---------------------------------------------------------------- the capture


def sandbox_pid_check(launcher_pid: int) -> Callable[[int], bool | None]:
    """owns(pid) for audit_log.Capture: whether a process is in the PID namespace the
    launcher's main thread creates its children in (runner.launch unshares it before
    forking the sandbox); None when the process is gone."""
    own = os.readlink("/proc/self/ns/pid")
    target: list[str] = []

    def owns(pid: int) -> bool | None:
        if not target:
            children = os.readlink(f"/proc/{launcher_pid}/task/{launcher_pid}/ns/"
                                   "pid_for_children")
            if children == own:
                return False  # the sandbox's namespace does not exist yet: not ours
            target.append(children)
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == target[0]
        except OSError:
            return None

    return owns


class ExplainSession:
    """Records the denials of one cold launch (`sandrun exec --explain`).

    start() right before runner.launch, stop() right after it (also when it raised);
    the result goes to `explanation()`. Never raises for lack of audit: `unavailable`
    says why nothing could be recorded.
    """

    def __init__(self) -> None:
        self.capture: audit_log.Capture | None = None
        self.result: audit_log.CaptureResult | None = None
        self.unavailable = ""
        self.started = time.monotonic()
        self.setup_ms = 0.0
        self.wait_ms = 0.0

    def start(self) -> None:
        from sandrun.sandbox import audit_log  # socket, threading: only when explaining

        began = time.perf_counter()
        self.started = time.monotonic()
        capture = audit_log.Capture(sandbox_pid_check(os.getpid()))
        try:
            capture.start()
        except audit_log.AuditUnavailable as exc:
            self.unavailable = str(exc)
        else:
            self.capture = capture
            kernel.seccomp_load_flags |= kernel.SECCOMP_FILTER_FLAG_LOG
        self.setup_ms = (time.perf_counter() - began) * 1000

    def stop(self) -> None:
        kernel.seccomp_load_flags &= ~kernel.SECCOMP_FILTER_FLAG_LOG
        if self.capture is None:
            return
        began = time.perf_counter()
        capture, self.capture = self.capture, None
        self.result = capture.stop()
        self.wait_ms = (time.perf_counter() - began) * 1000


# ---------------------------------------------------------------- denials


class Denial:
    """One kind of denial: what the app tried, and the key that allows it (or why
    nothing does). `harmless`: an expected probe, not a cause of failure. Equal
    denials count as one (a dict key)."""

    __slots__ = ("action", "harmless", "remedy")

    def __init__(self, action: str, remedy: str, harmless: str = "") -> None:
        self.action = action
        self.remedy = remedy
        self.harmless = harmless

    def _key(self) -> tuple[str, str, str]:
        return (self.action, self.remedy, self.harmless)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Denial) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Denial({self.action!r}, {self.remedy!r}, {self.harmless!r})"

    def line(self, count: int) -> str:
        times = f" (\u00d7{count})" if count > 1 else ""
        return f"{self.action}{times} {ARROW} {self.remedy}"


def shown(text: str) -> str:
    """A name from the app's side (a path it chose) made safe for the terminal."""
    if text.isprintable():
        return text
    return repr(text)[1:-1]


def _harmless_read(path: str, tree: str) -> str:
    if path.startswith(tree + "/") or path == tree:
        return ""
    name = os.path.basename(path.rstrip("/"))
    if name in ("dist-packages", "site-packages") or "/dist-packages/" in path \
            or "/site-packages/" in path:
        return "the interpreter's system-wide packages: an app that needs one bundles it"
    if path == "/etc/locale.alias":
        return "the C library's locale aliases: locale names work without them"
    return ""


def landlock_denial(record: audit_log.Record, profile: Profile, tree: str) -> Denial:
    """The Denial of one AUDIT_LANDLOCK_ACCESS record."""
    blockers = record.fields.get("blockers", "").split(",")
    path = shown(record.untrusted("path") or record.untrusted("name") or "?")
    if "fs.execute" in blockers:
        extra = "" if profile.subprocess else " (and [process] subprocess = true)"
        return Denial(f"execute {path}", f"[filesystem] execute{extra}")
    removes = {"fs.remove_file", "fs.remove_dir"} & set(blockers)
    if removes and any(b.startswith("fs.make_") for b in blockers):  # rename(2)
        kind = "directory" if removes == {"fs.remove_dir"} else "file"
        return Denial(f"rename or move a {kind} in {path}", _WRITE)
    for blocker in _ORDER:
        if blocker in blockers:
            if blocker in _NEVER:
                action, why = _NEVER[blocker]
                return Denial(action.format(path), f"not allowed: {why}")
            action, key = _FS_ACTIONS[blocker]
            harmless = _harmless_read(path, tree) if key == _READ else ""
            return Denial(action.format(path), key, harmless)
    for blocker in blockers:
        if blocker in ("net.bind_tcp", "net.connect_tcp"):
            verb, port_field = (("bind", "src") if blocker == "net.bind_tcp"
                                else ("connect", "dest"))
            port = record.fields.get(port_field) or record.fields.get(
                "dest" if verb == "bind" else "src") or "0"
            return Denial(f"{verb} tcp {port}", f"[network] {blocker[4:]}")
        if blocker == "scope.signal":
            target = _other_process(record)
            return Denial(f"signal {target} outside the sandbox",
                          "not allowed: Landlock keeps signals inside the sandbox")
        if blocker == "scope.abstract_unix_socket":
            return Denial(f"connect to the abstract unix socket {path} outside the sandbox",
                          "not allowed: Landlock keeps abstract unix sockets inside the "
                          "sandbox")
        if blocker == "ptrace":
            target = _other_process(record)
            return Denial(f"ptrace {target}", "not allowed: the app may not inspect "
                          "processes outside its sandbox")
    return Denial(f"{record.fields.get('blockers', '?')} {path}",
                  "not allowed: a Landlock right this sandrun does not know (no profile key "
                  "grants it)")


def _other_process(record: audit_log.Record) -> str:
    pid = record.fields.get("opid", "?")
    comm = record.untrusted("ocomm")
    return f"pid {pid}" + (f" ({shown(comm)})" if comm else "")


def _syscall_name(number: int) -> str:
    try:
        pyseccomp = seccomp.import_pyseccomp()

        name = pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, number)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an unknown number, or no libseccomp: the number says it
        return f"syscall {number}"


def seccomp_denial(record: audit_log.Record, policy: seccomp.SeccompPolicy,
                   profile: Profile) -> Denial:
    """The Denial of one AUDIT_SECCOMP record (syscall number and action; seccomp logs
    no arguments, so an argument check names what it may have been)."""
    code = record.number("code", 16) or 0
    action, data = code & seccomp.RET_ACTION_FULL, code & seccomp.RET_DATA
    number = record.number("syscall") or 0
    arch = record.number("arch", 16)
    if action in (seccomp.RET_KILL_PROCESS, 0) or (
            arch is not None and arch != seccomp.AUDIT_ARCH_X86_64):
        return Denial(f"syscall {number} of another architecture (IA-32 int 0x80 or x32)",
                      "not allowed: the process is killed (SIGSYS)")
    name = _syscall_name(number)
    if action != seccomp.RET_ERRNO:  # sandrun's filters return ALLOW, ERRNO or KILL only
        return Denial(name, f"not allowed: seccomp action {code:#x}, which no profile key "
                      "changes (another filter than sandrun's?)")
    if data == 38:  # ENOSYS: the filter's default for anything outside the allowlist
        if name == "clone3":
            return Denial("clone3", f"not allowed: {seccomp.DANGEROUS['clone3']}",
                          harmless="the C library falls back to clone")
        if name.startswith("syscall "):
            return Denial(name, "not allowed: unknown to sandrun's syscall table")
        return Denial(name, f'[syscalls] allow = ["{name}"] (not in the baseline: check '
                      "what it does first)")
    if name == "socket":  # seccomp logs no arguments: the family asked for is unknown
        return Denial("socket(...)", _socket_remedy(policy))
    return Denial(name, _eperm_remedy(name, policy, profile))


def _eperm_remedy(name: str, policy: seccomp.SeccompPolicy, profile: Profile) -> str:
    try:
        denied = seccomp.expand(policy.deny)
    except ValueError:
        denied = frozenset()
    if name in denied:
        return f'[syscalls] deny: remove "{name}" (or the group naming it)'
    if name in seccomp.DANGEROUS:
        return f"not allowed: {seccomp.DANGEROUS[name]}"
    if name in seccomp.OPT_IN:
        return f'[syscalls] allow = ["{name}"] ({seccomp.OPT_IN[name]}: opt-in)'
    if name in ("fork", "vfork"):
        return "[process] fork = true"
    if name == "clone":
        if not policy.allow_fork:
            return ("[process] fork = true (or it asked for a new namespace: not "
                    "allowed)")
        return ("not allowed: it asked for a new namespace (CLONE_NEW* flags; "
                "threads and plain fork work)")
    if name == "listen":
        return ("[network] bind_tcp (a TCP server's port), or [network] unix_sockets = "
                "true for a unix socket")
    if name == "socketpair":
        return "not allowed: socketpair works for AF_UNIX only"
    if name in seccomp.ARGUMENT_RULES:
        return f"not allowed: {seccomp.ARGUMENT_RULES[name]}"
    return "not allowed: denied by sandrun's seccomp baseline (no profile key changes it)"


def _socket_remedy(policy: seccomp.SeccompPolicy) -> str:
    """Every key that allows a socket() the policy denies: seccomp logs no arguments, so
    the family and type asked for are unknown, and each candidate is named."""
    inet = bool({"AF_INET", "AF_INET6"} & set(policy.socket_families))
    candidates = []
    if not policy.unix_sockets:
        candidates.append("[network] unix_sockets = true (AF_UNIX)")
    if not inet:
        candidates.append("[network] connect_tcp or bind_tcp (TCP)")
    if not policy.udp:
        candidates.append("[network] dns = true (UDP)")
    candidates.append("not allowed: any other family, type or protocol (AF_NETLINK, "
                      "AF_PACKET, raw, SCTP, MPTCP...)")
    return ", or ".join(candidates) + " (seccomp does not log which one it was)"


def _events(result: audit_log.CaptureResult, app_uid: int
            ) -> tuple[list[audit_log.Record], int]:
    """The ACCESS and SECCOMP records of the sandbox, and how many of them were
    attributed by user id alone (their process was gone before it could be asked)."""
    from sandrun.sandbox import audit_log
    groups: dict[str, list[audit_log.Record]] = {}
    for record in result.records:
        groups.setdefault(record.serial or f"#{id(record)}", []).append(record)
    verdicts: dict[str, bool | None] = {}
    domains: dict[str, bool] = {}
    for serial, records in groups.items():
        seen = [result.owned.get(pid) for pid in
                (r.number("pid") for r in records) if pid is not None]
        verdict = True if True in seen else False if False in seen else None
        verdicts[serial] = verdict
        for record in records:
            domain = record.fields.get("domain")
            if domain and verdict is not None:
                domains[domain] = domains.get(domain, False) or verdict
    chosen: list[audit_log.Record] = []
    by_uid = 0
    for serial, records in groups.items():
        verdict = verdicts[serial]
        if verdict is None:
            domain = next((r.fields["domain"] for r in records if "domain" in r.fields), "")
            verdict = domains.get(domain)
        if verdict is None:
            uids = {r.number("uid") for r in records} - {None}
            verdict = app_uid in uids
            if verdict:
                by_uid += sum(r.kind in (audit_log.AUDIT_LANDLOCK_ACCESS,
                                         audit_log.AUDIT_SECCOMP) for r in records)
        if verdict:
            chosen += [r for r in records if r.kind in (audit_log.AUDIT_LANDLOCK_ACCESS,
                                                        audit_log.AUDIT_SECCOMP)]
    return chosen, by_uid


def denials(result: audit_log.CaptureResult, plan: LaunchPlan) -> tuple[dict[Denial, int], int]:
    """Each kind of denial of the sandbox's run with its count, in first-seen order,
    and how many were attributed by user id alone."""
    from sandrun.sandbox.audit_log import AUDIT_SECCOMP

    records, by_uid = _events(result, plan.user.uid)
    found: dict[Denial, int] = {}
    for record in records:
        if record.kind == AUDIT_SECCOMP:
            denial = seccomp_denial(record, plan.seccomp_policy, plan.profile)
        else:
            denial = landlock_denial(record, plan.profile, str(plan.tree))
        found[denial] = found.get(denial, 0) + 1
    return found, by_uid


# ---------------------------------------------------------------- the explanation


# Appended to the exit line of a failed run explained without a capture.
ADVICE = ("; to list what the sandbox denied during the run, run it again with "
          "`sandrun exec --explain`")
PERMISSION_NOTE = " (Unix permissions: no sandbox record shows this)"


def failure_notes(plan: LaunchPlan) -> list[str]:
    """What is said after the exit line of any failed run of `plan` (capture or not):
    the grants the app user's Unix permissions defeat (a privileged launch only). Part
    of the RunSpec (launcher.run_spec), so that the native supervisor says it too."""
    if not plan.privileged:
        return []
    return [f"{problem}{PERMISSION_NOTE}"
            for problem in permission_problems(plan.profile, plan.user)]


def exit_lines(code: int, plan: LaunchPlan, started: float) -> list[str]:
    """How the app ended (`code` as runner.launch returns it: 128+N when killed)."""
    if code == 0:
        return []
    if code > 128 and code - 128 in (*SIGNALS, *_SENT):
        number = code - 128
        if number in _SENT:
            return [f"exit status {code}: the app was killed by {_SENT[number]} (sent to "
                    "it, or forwarded by sandrun)"]
        name, why = SIGNALS[number]
        line = f"exit status {code}: the app was killed by {name}: {why}"
        if number == 9:
            oom = oom_kill(plan.user.uid, os.getpid(), started)
            if oom:
                line = (f"exit status {code}: the app was killed by SIGKILL: the OOM killer "
                        f"({oom}); raise [limits] memory")
        return [line]
    return [f"the app exited with status {code}"]


def oom_kill(uid: int, launcher_pid: int, since: float) -> str:
    """The kernel log's oom-kill line for this launch (its cgroup is named after the
    launcher's pid; else a process of the app user), as `task=..., pid=...`; '' if
    none since `since` (time.monotonic(), the clock of the kernel log)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    found = ""
    floor = int((since - 1.0) * 1e6)
    try:
        for _ in range(100_000):  # the ring buffer holds far fewer records
            try:
                entry = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            head, _, message = entry.partition(";")
            fields = head.split(",")
            if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < floor:
                continue
            if not message.startswith("oom-kill:"):
                continue
            values = dict(item.partition("=")[::2] for item in message.strip().split(","))
            ours = values.get("task_memcg", "").endswith(f"-{launcher_pid}")
            if ours or values.get("uid") == str(uid):
                found = f"task {values.get('task', '?')}, pid {values.get('pid', '?')}"
    finally:
        os.close(fd)
    return found


NOT_RECORDED = ("not recorded by the kernel, so never listed: Unix permission denials "
                "(checked above), memory-deny-write-execute (mmap/mprotect EACCES), "
                "resource limits (EMFILE, EFBIG, EAGAIN), what the private /tmp and /proc "
                "hide")


def explanation(plan: LaunchPlan, code: int, session: ExplainSession | None,
                started: float) -> list[str]:
    """The lines to print on stderr after a launch (without the `sandrun: ` prefix):
    nothing for a run that succeeded without --explain."""
    if code == 0 and session is None:
        return []
    lines = exit_lines(code, plan, started)
    if session is None:
        lines[-1] += ADVICE
    lines += failure_notes(plan)
    if session is None:
        return lines
    if session.result is None:
        lines.append("sandbox denials cannot be listed: " + (session.unavailable or
                                                             "nothing was recorded"))
        return lines
    result = session.result
    found, by_uid = denials(result, plan)
    main = [(d, n) for d, n in found.items() if not d.harmless]
    harmless = [(d, n) for d, n in found.items() if d.harmless]
    if main:
        lines.append("denied by the sandbox during the run (with the profile key that "
                     "would allow it):")
        lines += [f"  {d.line(n)}" for d, n in main]
    else:
        lines.append("no denials by the sandbox during the run")
    if harmless:
        lines.append("  also denied, harmless: " + "; ".join(
            f"{d.action}" + (f" \u00d7{n}" if n > 1 else "") + f" ({d.harmless})"
            for d, n in harmless))
    if by_uid:
        lines.append(f"  ({by_uid} of these were attributed by the app user alone: a "
                     "concurrent run as the same user could have added some)")
    if result.lost or result.dropped:
        lines.append(f"  incomplete: {result.lost + result.dropped} audit record(s) were "
                     "dropped (kernel backlog or sandrun's buffer)")
    if code != 0 and not main:
        lines.append(f"  {NOT_RECORDED}")
    lines += [f"  note: {note}" for note in result.notes]
    return lines
