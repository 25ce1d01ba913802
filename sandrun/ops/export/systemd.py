"""`sandrun export systemd`: a hardened systemd service that runs a bundle through
`sandrun exec`.

The unit splits the sandbox the way the OCI export does: systemd does the privileged
half, `sandrun exec` the in-process half.

- systemd: the dedicated user `sandrun-<app>` (made by `systemd-sysusers` in a `+`
  ExecStartPre, the only step with privileges), no capabilities at all, a user namespace,
  a read-only system (ProtectSystem=strict), private /tmp, /dev, IPC and host name,
  noexec on everything the app may write, no new namespaces, native syscalls only, an
  outer syscall filter, the address families and IP peers the profile needs, and the
  profile's [limits] as MemoryMax=, TasksMax=, CPUQuota=, CPUWeight= on the unit's cgroup.
- `sandrun exec`, started as that user: verifies the bundle, installs it into the unit's
  own store (/var/lib/sandrun-<app>, a StateDirectory owned by the app user) and applies
  Landlock, seccomp and memory-deny-write-execute to the app, as it does for any
  unprivileged launch.

So nothing in the unit runs as root but `systemd-sysusers`: the bundle (untrusted input)
is parsed, verified and extracted without privileges. A root `sandrun exec` under systemd
would need CAP_SYS_ADMIN, CAP_SETUID and the mount syscalls, and scores above 3 in
`systemd-analyze security`; this unit scores 0.9 for a TCP server, 0.2 without network.

Consent: the decision is exec's (`launcher.decide`, dry run): an embedded profile beyond
`default` needs the operator's approval in --store, or -p. The profile that passed is
written next to the unit (flattened, placeholders kept) and given to `sandrun exec -p`:
what runs is what the operator consented to, whatever a later bundle at the same path asks
for. Its [limits] `required` drops the cgroup limits, which the unit's cgroup enforces.

Directives are emitted for an explicit systemd version (default: the local one), because
older systemd ignores newer directives with a mere warning: `SINCE` says which version
introduced each one, and what is left out is listed in the unit's header.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import click

from sandrun import __version__
from sandrun.config.profile import Profile, render_toml
from sandrun.errors import EnforcementError, UsageError
from sandrun.launch.launcher import ExecOptions, LaunchPlan, decide
from sandrun.launch.safefile import UnsafePath, open_trusted_dir
from sandrun.launch.users import default_user_name
from sandrun.ops.export import refuse_caller_placeholders
from sandrun.sandbox import seccomp

# Older systemd lacks StateDirectory= (235), `systemd-sysusers --inline` (238) and
# PrivateMounts= (239); 239 is RHEL 8's.
MIN_SYSTEMD = 239

# Directive, or "Directive=value" for a value added later -> first systemd version.
SINCE: Mapping[str, int] = MappingProxyType({
    "Description": 1, "After": 1, "Wants": 1, "Requires": 1, "BindsTo": 1, "WantedBy": 1,
    "JoinsNamespaceOf": 209,
    "Type": 1, "Type=exec": 240, "ExecStartPre": 1, "ExecStartPre=+": 231, "ExecStart": 1,
    "User": 1, "Group": 1, "SyslogIdentifier": 1, "UMask": 1, "KillMode": 1, "Restart": 1,
    "RestartPreventExitStatus": 189,
    "StateDirectory": 235, "StateDirectoryMode": 235,
    "ProtectSystem": 214, "ProtectSystem=strict": 232, "ReadWritePaths": 231,
    "NoExecPaths": 247, "PrivateTmp": 1, "PrivateDevices": 209, "PrivateNetwork": 1,
    "PrivateUsers": 232, "PrivateMounts": 239, "PrivateIPC": 248, "PrivatePIDs": 257,
    "ProtectHome": 214, "ProtectHostname": 242, "ProtectKernelTunables": 232,
    "ProtectKernelModules": 232, "ProtectKernelLogs": 244, "ProtectControlGroups": 232,
    "ProtectClock": 245, "ProtectProc": 247,
    "RestrictNamespaces": 233, "SystemCallArchitectures": 209, "SystemCallFilter": 187,
    "SystemCallErrorNumber": 187, "CapabilityBoundingSet": 1, "AmbientCapabilities": 229,
    "NoNewPrivileges": 187, "LockPersonality": 235, "RestrictRealtime": 231,
    "RestrictSUIDSGID": 242, "MemoryDenyWriteExecute": 231, "KeyringMode": 235,
    "RemoveIPC": 232, "RestrictAddressFamilies": 211, "RestrictAddressFamilies=none": 249,
    "IPAddressDeny": 235, "IPAddressAllow": 235,
    "MemoryMax": 231, "MemorySwapMax": 232, "TasksMax": 227, "CPUQuota": 213,
    "CPUWeight": 232,
    "ListenStream": 1, "Accept": 1, "Service": 1, "FileDescriptorName": 227,
    "NoDelay": 1, "ReusePort": 1,
})

# What the launcher needs beyond @system-service (systemd 252 has no group for them).
LAUNCHER_SYSCALLS = ("landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
                     "seccomp")
# Removed from the outer filter: sandrun's own baseline keeps them for the app, but nothing
# running as the unprivileged app user needs to change owners, credentials, priorities or
# resource limits (sandrun sets rlimits with prlimit64, which is in @default).
OUTER_DENIED_GROUPS = ("@privileged", "@resources")
CGROUP_LIMITS = ("memory", "tasks", "cpu", "cpu_weight")
# Exit codes that say sandrun refused or the interpreter cannot run: restarting won't help.
PERMANENT_EXIT_CODES = "125 126 127"
# What PrivateDevices=yes leaves in /dev.
PRIVATE_DEV = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
               "/dev/tty", "/dev/ptmx", "/dev/pts", "/dev/shm", "/dev/mqueue",
               "/dev/hugepages", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd")
TMP_DIRS = ("/tmp", "/var/tmp")
HOME_DIRS = ("/home", "/root", "/run/user")
# Mounted read-only by ProtectKernelTunables=, ProtectControlGroups= (or hidden).
KERNEL_DIRS = ("/proc", "/sys")
IP_ALLOW_WORDS = ("any", "localhost", "link-local", "multicast")
NO_HOME = "/nonexistent"


@dataclass(frozen=True)
class SystemdExport:
    """The command line of `sandrun export systemd`."""

    bundle: str
    output: str
    args: tuple[str, ...] = ()
    profile: str | None = None
    store: str | None = None
    systemd_version: int | None = None
    socket: bool = False
    ip_allow: tuple[str, ...] = ()
    launcher: str | None = None  # the `sandrun` the unit runs (default: this one)


@dataclass
class UnitFiles:
    """What the export writes (file name -> text) and what it tells the operator."""

    app: str
    files: dict[str, str]
    summary: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)


def within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# ---------------------------------------------------------------- systemd syntax


def quote_word(word: str) -> str:
    """One ExecStart= word, as systemd splits and unescapes it: `%` specifiers and `$`
    variables doubled, anything but plain characters in C-escaped double quotes, a lone
    `;` (a command separator) escaped."""
    if "\0" in word:
        raise UsageError("an argument contains a NUL byte", "remove it")
    escaped = word.replace("%", "%%").replace("$", "$$")
    plain = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")
    if escaped and set(escaped) <= plain:
        return escaped
    if word == ";":
        return "\\;"
    out = []
    for char in escaped:
        if char in "\\\"'":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def command_line(words: Sequence[str]) -> str:
    return " ".join(quote_word(w) for w in words)


def path_value(path: str) -> str:
    """A path in a space-separated list directive (ReadWritePaths=...): quoted when needed,
    specifiers escaped."""
    escaped = path.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in path):
        return quote_word(path)
    return escaped


def local_systemd_version() -> int:
    """The version of the local systemd (`systemctl --version`, else systemd-analyze)."""
    for tool in ("systemctl", "systemd-analyze"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            proc = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                  timeout=10, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        words = proc.stdout.split()
        if len(words) >= 2 and words[0] == "systemd":
            number = words[1].split(".")[0].split("~")[0]
            if number.isdigit():
                return int(number)
    raise UsageError("cannot tell the local systemd version (no systemctl or "
                     "systemd-analyze answered --version)",
                     "pass --systemd-version N, the version of the hosts the unit is for")


class _Unit:
    """One unit file: sections of (directive, value, comment) written for one systemd
    version; directives that version lacks are left out and listed."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.sections: dict[str, list[tuple[str, str, str]]] = {}
        self.omitted: list[str] = []

    def since(self, key: str, value: str) -> int:
        if f"{key}={value}" in SINCE:
            return SINCE[f"{key}={value}"]
        if value.startswith("+") and f"{key}=+" in SINCE:  # an Exec*= prefix
            return SINCE[f"{key}=+"]
        return SINCE[key]

    def add(self, section: str, key: str, value: str, comment: str = "") -> bool:
        """Add `key=value` if the target systemd knows it; False (and listed) if not."""
        needed = self.since(key, value)
        if needed > self.version:
            self.omitted.append(f"{key}={value} (systemd {needed})")
            return False
        self.sections.setdefault(section, []).append((key, value, comment))
        return True

    def render(self, header: Iterable[str]) -> str:
        lines = [f"# {line}" if line else "#" for line in header]
        if self.omitted:
            lines.append(f"# Left out (the target systemd {self.version} lacks them):")
            lines += [f"#   {item}" for item in self.omitted]
        for section, entries in self.sections.items():
            lines += ["", f"[{section}]"]
            for key, value, comment in entries:
                if comment:
                    lines += [f"# {line}" for line in comment.splitlines()]
                lines.append(f"{key}={value}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- deciding


def _unexpanded_profile(plan: LaunchPlan) -> Profile:
    """The profile decide() accepted, before its placeholders were expanded for this
    host's store (the export expands them for its own paths)."""
    assert plan.requested_profile is not None  # decide() sets it
    return plan.requested_profile


def _pinned_profile(profile: Profile) -> Profile:
    """The profile the unit passes to `sandrun exec -p`: the cgroup limits are enforced by
    the unit's cgroup (MemoryMax=, ...), which an unprivileged sandrun cannot see, so
    they are no longer `required` of it."""
    return replace(profile, limits_required=tuple(
        name for name in profile.limits_required if name not in CGROUP_LIMITS))


def _hidden(path: str, protect_home: str) -> str | None:
    """Why the unit cannot see `path` (None: it can)."""
    if any(within(path, d) for d in TMP_DIRS):
        return "PrivateTmp=yes gives the unit its own empty /tmp and /var/tmp"
    if protect_home == "yes" and any(within(path, d) for d in HOME_DIRS):
        return "ProtectHome=yes hides /home, /root and /run/user"
    if within(path, "/dev") and not any(within(path, d) for d in PRIVATE_DEV):
        return "PrivateDevices=yes leaves only pseudo devices (null, zero, random, tty...) in /dev"
    return None


def _others_can_reach(path: str, want: int) -> str | None:
    """Why a user that is neither the owner nor in the group cannot open `path` with
    `want` (stat.S_IROTH / S_IXOTH) — the app user is such a user (None: it can)."""
    real = os.path.realpath(path)
    parts = real.split("/")
    for i in range(1, len(parts) - 1):
        directory = "/".join(parts[:i + 1]) or "/"
        try:
            mode = os.stat(directory).st_mode
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if not mode & stat.S_IXOTH:
            return f"{directory} is mode {stat.S_IMODE(mode):04o}: other users cannot traverse it"
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        return f"{real}: {exc.strerror}"
    if not mode & want:
        what = "read" if want == stat.S_IROTH else "execute"
        return f"{real} is mode {stat.S_IMODE(mode):04o}: other users cannot {what} it"
    return None


def _check_bundle_path(bundle: str, protect_home: str) -> None:
    """The unit's sandrun (the app user) reads the bundle at every start: it must see it,
    read it, and nobody but root (or the exporting user) may replace it."""
    real = os.path.realpath(bundle)
    hidden = _hidden(real, protect_home)
    if hidden:
        raise EnforcementError(f"the unit could not read the bundle {real}: {hidden}",
                               "install it where services see it, e.g. install -D -m 0444 "
                               f"{os.path.basename(bundle)} /usr/local/lib/sandrun/"
                               f"{os.path.basename(bundle)}")
    owner = os.geteuid()
    try:
        os.close(open_trusted_dir(os.path.dirname(bundle), owner))
    except UnsafePath as exc:
        raise EnforcementError(f"bundle {bundle}: {exc.path} {exc.why}; the service would run "
                               "whatever bundle it then finds there",
                               "install it in a directory only root can write, e.g. "
                               "/usr/local/lib/sandrun") from None
    st = os.lstat(bundle)
    if st.st_uid not in (0, owner) or st.st_mode & 0o022:
        raise EnforcementError(f"bundle {bundle} is owned by uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}: others could replace its "
                               "content", f"chown root {bundle}; chmod 0444 {bundle}")
    unreadable = _others_can_reach(bundle, stat.S_IROTH)
    if unreadable:
        raise EnforcementError(f"the app user could not read the bundle: {unreadable}",
                               f"chmod 0444 {bundle} (a bundle holds no secret: signatures "
                               "and the manifest are public), and o+x on its directories")


def _find_launcher(given: str | None) -> str:
    """The `sandrun` the unit runs: --sandrun, else the one next to this interpreter, else
    the one on PATH."""
    if given:
        if not given.startswith("/"):
            raise UsageError(f"--sandrun {given}: not an absolute path",
                             "give the absolute path of the installed sandrun command")
        path = given
    else:
        sibling = os.path.join(os.path.dirname(sys.executable), "sandrun")
        path = sibling if os.access(sibling, os.X_OK) else (shutil.which("sandrun") or "")
        if not path:
            raise UsageError("cannot find the sandrun command this unit should run",
                             "install sandrun system-wide (README: Install) or pass "
                             "--sandrun PATH")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise UsageError(f"{path} is not an executable file",
                         "pass --sandrun PATH of the installed sandrun command")
    return os.path.normpath(path)


def _launcher_warnings(launcher: str, protect_home: str) -> list[str]:
    """Why the unit may fail to start this launcher here (the target host may differ, so
    these are warnings): it and its interpreter must be visible and runnable by the app
    user."""
    programs = [launcher]
    try:
        with open(launcher, "rb") as f:
            first = f.readline(4096)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words:
            programs.append(words[0])
    warnings = []
    for program in programs:
        real = os.path.realpath(program)
        problem = _hidden(real, protect_home) or _others_can_reach(real, stat.S_IXOTH)
        if problem:
            warnings.append(f"the unit runs {launcher}, which needs {real}: {problem}; it "
                            "will not start on this host (install sandrun system-wide, e.g. "
                            "a venv of Debian's python3 under /opt/sandrun, or pass "
                            "--sandrun PATH)")
    return warnings


@dataclass
class _Paths:
    """The profile's paths as the unit expands them, and what systemd must do for them."""

    protect_home: str = "yes"
    read_write: list[str] = field(default_factory=list)  # ReadWritePaths= (outside the store)
    no_exec: list[str] = field(default_factory=list)  # NoExecPaths= (besides the state dirs)
    skipped: list[str] = field(default_factory=list)  # optional reads the unit hides


def _unit_paths(profile: Profile, placeholders: Mapping[str, str], store: str) -> _Paths:
    """Expand the profile for the unit's store and decide ProtectHome=, ReadWritePaths=,
    NoExecPaths=; refuse grants the unit's own protections would silently break."""
    refuse_caller_placeholders(profile, "a service")
    expanded = profile.expand(placeholders)
    state_root = f"{store}/state"
    paths = _Paths()
    needed = [*expanded.read, *expanded.read_write, *expanded.execute]
    if any(within(p, d) for p in needed for d in HOME_DIRS):
        paths.protect_home = "read-only"
    for key, values in (("read", expanded.read), ("read_write", expanded.read_write),
                        ("execute", expanded.execute)):
        for path in values:
            hidden = _hidden(path, paths.protect_home)
            if hidden:
                raise EnforcementError(f"[filesystem] {key} grants {path}, which the unit "
                                       f"cannot provide: {hidden}",
                                       "move it, or export with an operator profile (-p) "
                                       "that does not grant it")
    for path in expanded.read_write:
        if any(within(path, d) for d in KERNEL_DIRS):
            raise EnforcementError(f"[filesystem] read_write grants {path}, which the unit "
                                   "mounts read-only (ProtectKernelTunables=, "
                                   "ProtectControlGroups=)", "remove the grant (-p)")
        if within(path, "/dev"):
            continue  # a device: writable, and nothing on it can be executed
        if not within(path, store):
            paths.read_write.append(path)
        if not within(path, state_root):
            paths.no_exec.append(path)
    paths.skipped = [p for p in expanded.optional_read if _hidden(p, paths.protect_home)]
    return paths


def _resolvers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The name servers this host uses (for a profile with dns = true)."""
    found = []
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        found.append(str(ipaddress.ip_address(words[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return found


def _check_ip_allow(values: Sequence[str]) -> list[str]:
    checked = []
    for value in values:
        if value in IP_ALLOW_WORDS:
            checked.append(value)
            continue
        try:
            checked.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise UsageError(f"--ip-allow {value!r}: not an address, a network or one of "
                             f"{', '.join(IP_ALLOW_WORDS)}",
                             "e.g. --ip-allow 10.0.0.0/8 --ip-allow localhost") from None
    return list(dict.fromkeys(checked))


def _ip_peers(profile: Profile, given: Sequence[str]) -> tuple[list[str], str]:
    """IPAddressAllow= entries (empty with PrivateNetwork) and why."""
    if given:
        return _check_ip_allow(given), "--ip-allow"
    if profile.connect_tcp:
        return ["any"], "the profile connects to TCP ports on any host"
    peers, why = [], []
    if profile.bind_tcp:
        peers.append("localhost")
        why.append("clients on this host only, e.g. a reverse proxy (widen with --ip-allow)")
    if profile.dns:
        servers = [s for s in _resolvers() if not ipaddress.ip_address(s).is_loopback]
        peers += ["localhost", *servers]
        why.append("name servers of this host's /etc/resolv.conf")
    return list(dict.fromkeys(peers)), "; ".join(why)


def _syscall_filter(profile: Profile) -> list[str]:
    """SystemCallFilter= lines: @system-service plus what the launcher needs, minus the
    groups nothing unprivileged needs and the profile's denials, plus what the profile
    explicitly allows beyond that (sandrun's own filter stays the finer one)."""
    denied = seccomp.expand(profile.syscalls_deny)
    base = (seccomp.expand(["@system-service", *LAUNCHER_SYSCALLS])
            - seccomp.expand(OUTER_DENIED_GROUPS) - denied)
    extra = sorted(seccomp.expand(profile.syscalls_allow) - denied - base)
    lines = [" ".join(["@system-service", *LAUNCHER_SYSCALLS]),
             "~" + " ".join([*OUTER_DENIED_GROUPS, *sorted(denied)])]
    if extra:
        lines.append(" ".join(extra))
    return lines


def _limit_directives(limits: Mapping[str, int | None]) -> list[tuple[str, str]]:
    directives = []
    if limits.get("memory") is not None:
        # sandrun's memory limit counts swap too (memsw on v1, swap.max=0 on v2).
        directives += [("MemoryMax", str(limits["memory"])), ("MemorySwapMax", "0")]
    if limits.get("tasks") is not None:
        directives.append(("TasksMax", str(limits["tasks"])))
    if limits.get("cpu") is not None:
        directives.append(("CPUQuota", f"{limits['cpu']}%"))
    if limits.get("cpu_weight") is not None:
        directives.append(("CPUWeight", str(limits["cpu_weight"])))
    return directives


def _sysusers_program() -> str:
    for candidate in (shutil.which("systemd-sysusers"), "/usr/bin/systemd-sysusers",
                      "/bin/systemd-sysusers"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EnforcementError("systemd-sysusers is not installed: the unit creates its app "
                           "user with it", "install systemd (apt-get install systemd)")


def plan_units(request: SystemdExport) -> UnitFiles:
    """Decide everything and render the files; nothing is written. Raises SandrunError
    (exec's refusals, 125, among them)."""
    version = request.systemd_version or local_systemd_version()
    if version < MIN_SYSTEMD:
        raise UsageError(f"systemd {version} is too old for this unit (it needs "
                         f"StateDirectory=, PrivateMounts= and systemd-sysusers --inline)",
                         f"target systemd {MIN_SYSTEMD} or newer")
    bundle = os.path.abspath(request.bundle)
    output = os.path.abspath(request.output)
    plan = decide(ExecOptions(bundle=bundle, profile=request.profile, store=request.store,
                              dry_run=True))
    plan.raise_for_refusals()
    app = plan.manifest.app_name
    user = default_user_name(app)
    unit_name = f"sandrun-{app}"
    unit_store = f"/var/lib/{unit_name}"
    state = f"{unit_store}/state/{app}"
    profile = _unexpanded_profile(plan)
    placeholders = {"app": app, "state": state, "tmp": f"{state}/tmp", "home": state,
                    "store": f"{unit_store}/apps/{plan.bundle_sha256}"}
    paths = _unit_paths(profile, placeholders, unit_store)
    _check_bundle_path(bundle, paths.protect_home)
    launcher = _find_launcher(request.launcher)
    sysusers = _sysusers_program()
    profile_file = f"{output}/{unit_name}.profile.toml"
    hidden = _hidden(os.path.realpath(output), paths.protect_home)
    if hidden:
        raise EnforcementError(f"-o {output}: the unit could not read the profile written "
                               f"there: {hidden}", "export into /etc/systemd/system")
    pinned = _pinned_profile(profile)
    facts = plan.profile  # decide()'s view: the same grants, expanded for the root store
    networked = bool(facts.bind_tcp or facts.connect_tcp or facts.dns)
    if request.ip_allow and not networked:
        raise UsageError("--ip-allow: the profile has no network, so the unit gets none "
                         "(PrivateNetwork=yes)", "drop --ip-allow, or grant ports in the "
                         "profile ([network])")
    peers, peers_why = _ip_peers(facts, request.ip_allow) if networked else ([], "")
    if request.socket and not facts.bind_tcp:
        raise UsageError("--socket: the profile binds no TCP port, so there is nothing for "
                         "systemd to listen on", "grant the ports in [network] bind_tcp, "
                         "or export without --socket")

    exec_start = [launcher, "exec", "-p", profile_file, "--store", unit_store, bundle]
    if request.args:
        exec_start += ["--", *request.args]
    sysusers_line = f'u {user} - "sandrun app {app}" {NO_HOME}'

    unit = _Unit(version)
    add = unit.add
    add("Unit", "Description", f"sandrun app {app} {plan.manifest.app_version}")
    if networked:
        add("Unit", "After", "network.target")
    if request.socket:
        add("Unit", "Requires", f"{unit_name}.socket",
            "Socket activation: systemd listens; sandrun exec hands the sockets (LISTEN_FDS)\n"
            "to the app, which must take them (e.g. gunicorn, uvicorn --fd 3) instead of\n"
            "binding itself.")
        add("Unit", "After", f"{unit_name}.socket")
    S = "Service"
    add(S, "Type", "exec" if version >= SINCE["Type=exec"] else "simple")
    add(S, "ExecStartPre", "+" + command_line([sysusers, "--inline", sysusers_line]),
        "The only privileged step: the app user, made once (a no-op when it exists).")
    add(S, "ExecStart", command_line(exec_start),
        "sandrun exec runs as the app user: it verifies the bundle, installs it into the\n"
        "unit's store and applies Landlock, seccomp and memory-deny-write-execute.")
    add(S, "User", user)
    add(S, "Group", user)
    add(S, "SyslogIdentifier", unit_name)
    add(S, "StateDirectory", " ".join(f"{unit_name}{sub}" for sub in (
        "", "/state", f"/state/{app}", f"/state/{app}/tmp")),
        f"The unit's store, owned by the app user: apps/ (code), state/{app}/ (HOME; TMPDIR\n"
        "in tmp/), launch/ (warm-start records). systemd makes the state dir, so that\n"
        "sandrun need not chown it (the outer filter denies @chown).")
    add(S, "StateDirectoryMode", "0700")
    add(S, "UMask", "0077")
    add(S, "KillMode", "control-group")
    add(S, "Restart", "on-failure")
    add(S, "RestartPreventExitStatus", PERMANENT_EXIT_CODES,
        "125: sandrun refused (bundle, profile, consent); 126/127: no interpreter.")

    add(S, "ProtectSystem", "strict", "File system: read-only but for the store; nothing "
        "the app may write can be executed.")
    if paths.read_write:
        add(S, "ReadWritePaths", " ".join(path_value(p) for p in paths.read_write))
    add(S, "NoExecPaths", " ".join(path_value(p) for p in [f"{unit_store}/state",
                                                           *paths.no_exec]))
    add(S, "ProtectHome", paths.protect_home)
    add(S, "PrivateTmp", "yes")
    add(S, "PrivateDevices", "yes")
    add(S, "ProtectKernelTunables", "yes")
    add(S, "ProtectKernelModules", "yes")
    add(S, "ProtectKernelLogs", "yes")
    add(S, "ProtectControlGroups", "yes")
    add(S, "ProtectClock", "yes")
    add(S, "ProtectProc", "invisible")

    add(S, "PrivateUsers", "yes", "Namespaces: its own users, mounts, IPC, host name; "
        "no new ones.")
    add(S, "PrivateMounts", "yes")
    add(S, "PrivateIPC", "yes")
    add(S, "PrivatePIDs", "yes")
    add(S, "ProtectHostname", "yes")
    add(S, "RestrictNamespaces", "yes")

    add(S, "CapabilityBoundingSet", "", "Privileges: none.")
    add(S, "AmbientCapabilities", "")
    add(S, "NoNewPrivileges", "yes")
    add(S, "RestrictSUIDSGID", "yes")
    add(S, "RemoveIPC", "yes")
    add(S, "KeyringMode", "private")

    first = True
    for line in _syscall_filter(pinned):
        add(S, "SystemCallFilter", line,
            "Syscalls: an outer filter; sandrun's in-process one is finer." if first else "")
        first = False
    add(S, "SystemCallErrorNumber", "EPERM")
    add(S, "SystemCallArchitectures", "native")
    add(S, "LockPersonality", "yes")
    add(S, "RestrictRealtime", "yes")
    if facts.mdwe:
        add(S, "MemoryDenyWriteExecute", "yes")

    families = (["AF_INET", "AF_INET6"] if networked else []) + (
        ["AF_UNIX"] if facts.unix_sockets else [])
    network_note = "Network: what the profile's [network] needs."
    if not networked:
        add(S, "PrivateNetwork", "yes", network_note)
        network_note = ""
    if families:
        add(S, "RestrictAddressFamilies", " ".join(families), network_note)
    elif not add(S, "RestrictAddressFamilies", "none", network_note):
        add(S, "RestrictAddressFamilies", "AF_UNIX")  # the narrowest older systemd can say
    if "any" not in peers:
        add(S, "IPAddressDeny", "any")
        if peers:
            add(S, "IPAddressAllow", " ".join(peers))

    limits = _limit_directives(facts.limits)
    for i, (key, value) in enumerate(limits):
        add(S, key, value, "The profile's [limits], on the unit's cgroup." if i == 0 else "")
    add("Install", "WantedBy", "multi-user.target")

    m = plan.manifest
    header = [
        f"Generated by `sandrun export systemd` (sandrun {__version__}) for systemd {version}.",
        f"Bundle {bundle}: app {app} {m.app_version}, sha256 {plan.bundle_sha256},",
        f"  {plan.signature.describe()}.",
        f"Profile {profile_file}: {plan.consent}.",
        "Re-export rather than edit; adjust with a drop-in (systemctl edit "
        f"{unit_name}.service).",
    ]
    profile_text = "\n".join([
        f"# The profile of {unit_name}.service, as the operator accepted it at export",
        f"# ({plan.consent}; from {profile.source}), flattened.",
        "# [limits] memory, tasks, cpu and cpu_weight are enforced by the unit's cgroup",
        "# (MemoryMax=, TasksMax=, CPUQuota=, CPUWeight=), so they are not `required` here.",
        "",
        render_toml(pinned)])
    files = {f"{unit_name}.service": unit.render(header),
             f"{unit_name}.profile.toml": profile_text}
    if request.socket:
        socket_unit = _socket_unit(version, app, unit_name, facts.bind_tcp, peers)
        files[f"{unit_name}.socket"] = socket_unit.render(header[:3])

    summary = [
        ("app", f"{app} {m.app_version} ({plan.signature.describe()})"),
        ("runs as", f"{user} (systemd-sysusers at start), no capabilities"),
        ("store", f"{unit_store} (StateDirectory: code, state, launch records)"),
        ("profile", f"{plan.consent}; pinned in {profile_file}"),
    ]
    if not networked:
        summary.append(("network", "none (PrivateNetwork=yes, IPAddressDeny=any)"))
    else:
        ports = []
        if facts.bind_tcp:
            ports.append("listens on TCP " + ", ".join(map(str, facts.bind_tcp)))
        if facts.connect_tcp:
            ports.append("connects to TCP " + ", ".join(map(str, facts.connect_tcp)))
        if facts.dns:
            ports.append("DNS")
        who = ("any address" if "any" in peers else ", ".join(peers) or "none")
        summary.append(("network", f"{'; '.join(ports)}; IP peers: {who} ({peers_why})"))
    if limits:
        summary.append(("limits", " ".join(f"{k}={v}" for k, v in limits)))
    if unit.omitted:
        summary.append(("left out", "; ".join(unit.omitted)))
    warnings = _launcher_warnings(launcher, paths.protect_home)
    warnings += [f"optional_read {p} is hidden in the unit and will be skipped"
                 for p in paths.skipped]
    return UnitFiles(app=app, files=files, summary=summary, warnings=warnings,
                     omitted=list(unit.omitted))


def _socket_unit(version: int, app: str, unit_name: str, ports: Iterable[int],
                 peers: Sequence[str]) -> _Unit:
    """The .socket of --socket: one ListenStream= per bind_tcp port, with the service's
    IP peers (the sockets are systemd's, so the service's IPAddress*= do not cover them)."""
    unit = _Unit(version)
    unit.add("Unit", "Description", f"sockets of sandrun app {app}")
    for i, port in enumerate(ports):
        unit.add("Socket", "ListenStream", str(port),
                 "The profile's [network] bind_tcp ports, on every address." if i == 0 else "")
    unit.add("Socket", "Accept", "no")
    unit.add("Socket", "Service", f"{unit_name}.service")
    unit.add("Socket", "FileDescriptorName", app)
    if "any" not in peers:
        unit.add("Socket", "IPAddressDeny", "any", "The service's IP peers.")
        if peers:
            unit.add("Socket", "IPAddressAllow", " ".join(peers))
    unit.add("Install", "WantedBy", "sockets.target")
    return unit


# ---------------------------------------------------------------- acting


def write_units(units: UnitFiles, output: str) -> list[str]:
    """Write the files into `output` (created 0755 if missing; its path must be one only
    root, or the exporting user, can change), each replaced atomically, mode 0644."""
    try:
        dir_fd = open_trusted_dir(output, os.geteuid(), create_mode=0o755)
    except UnsafePath as exc:
        raise EnforcementError(f"-o {output}: {exc.path} {exc.why}",
                               "export into a directory only root can write, such as "
                               "/etc/systemd/system") from None
    except OSError as exc:
        raise EnforcementError(f"-o {output}: {exc.strerror}",
                               "give a directory that can be created") from None
    written = []
    try:
        unreachable = _others_can_reach(os.path.join(output, "."), stat.S_IXOTH)
        if unreachable:
            raise EnforcementError(f"-o {output}: the app user could not read the profile "
                                   f"there: {unreachable}", f"chmod o+x {output}")
        for name, text in units.files.items():
            tmp = f".{name}.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            try:
                os.fchmod(fd, 0o644)
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            written.append(os.path.join(output, name))
    finally:
        os.close(dir_fd)
    return written


def export_systemd(request: SystemdExport) -> tuple[UnitFiles, list[str]]:
    """Decide, then write: a refusal writes nothing."""
    units = plan_units(request)
    return units, write_units(units, os.path.abspath(request.output))


@click.command(name="systemd", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS]...")
@click.option("-o", "--output", required=True, metavar="DIR",
              help="Directory for sandrun-<app>.service and its pinned profile "
              "(e.g. /etc/systemd/system).")
@click.option("-p", "--profile", metavar="NAME|FILE",
              help="Operator profile (replaces the embedded one, needs no approval).")
@click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
              help="Store whose approvals the embedded profile needs (default "
              "/var/lib/sandrun).")
@click.option("--systemd-version", type=click.IntRange(min=1), metavar="N",
              help="Write for this systemd (default: the local one).")
@click.option("--ip-allow", multiple=True, metavar="ADDR",
              help="IP peers (address, CIDR, localhost, link-local, multicast, any; "
              "repeatable). Default: localhost for a server, the name servers with dns, "
              "any for a client.")
@click.option("--sandrun", "launcher", metavar="PATH",
              help="Absolute path of the sandrun command on the target hosts (default: "
              "this one).")
@click.option("--socket", is_flag=True,
              help="Also write sandrun-<app>.socket listening on the profile's bind_tcp "
              "ports; sandrun exec passes the sockets to the app (LISTEN_FDS).")
def command(bundle_path: str, args: tuple[str, ...], output: str, profile: str | None,
            store: str | None, systemd_version: int | None, ip_allow: tuple[str, ...],
            launcher: str | None, socket: bool) -> None:
    """Write DIR/sandrun-<app>.service: BUNDLE run by `sandrun exec` as its own user, with
    systemd's hardening around it. ARGS after `--` go to the app."""
    units, written = export_systemd(SystemdExport(
        bundle=bundle_path, output=output, args=tuple(args), profile=profile, store=store,
        systemd_version=systemd_version, socket=socket, ip_allow=ip_allow,
        launcher=launcher))
    for warning in units.warnings:
        click.echo(f"sandrun: warning: {warning}", err=True)
    for path in written:
        click.echo(path)
    width = max(len(k) for k, _ in units.summary)
    for key, value in units.summary:
        click.echo(f"  {key:<{width}}  {value}")
    click.echo(f"  {'next':<{width}}  systemctl daemon-reload && systemctl enable --now "
               f"sandrun-{units.app}.service")

