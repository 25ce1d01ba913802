"""`sandrun export oci`: the sandbox of `sandrun exec` as an OCI runtime bundle.

`sandrun export oci [-p PROFILE] [--store DIR] BUNDLE -o DIR [-- ARGS]` decides the
launch exactly as `exec` does (same consent rule, same refusals: nothing is created
when it refuses), installs the verified tree into the store, creates the app user and
its state dir, and writes DIR as an OCI runtime bundle: DIR/config.json and DIR/rootfs.

Who enforces what:

- the runtime (runc, as root) does the privileged half from config.json: the app
  user's uid/gid with no supplementary group, no capability in any set,
  noNewPrivileges, a read-only root, new pid/ipc/uts/mount/cgroup namespaces and a
  new network namespace (loopback only) unless the profile grants TCP ports or DNS,
  rlimits, the profile's [limits] as cgroup limits (memory, pids, cpu), and an outer
  seccomp filter (`outer_seccomp`);
- sandrun's applier (sandrun/ops/apply.py, copied into rootfs/sandrun with the two
  stdlib-only modules it needs and the plan as spec.marshal) does the in-process half as
  the app user: it refuses if the runtime's half is missing, then MDWE, Landlock (the
  plan's ruleset, built on the container's view), the plan's own compiled seccomp
  filter (the authoritative one) and execve of `python -I -B -S <tree>/.sandrun/bootstrap.py`.

The rootfs holds no copy of the system: it is a skeleton of mount points. /usr is
bind-mounted read-only from the host (the interpreter, its stdlib and the shared
libraries; /bin, /lib, /lib64... are the host's links into it, or read-only binds where
the host has real directories), and every other path the Landlock policy grants is
bind-mounted at the same place: read-only, or read-write with noexec,nosuid,nodev for
the state dir and read_write grants. The installed store tree is bind-mounted
read-only. /tmp and /var/tmp are fresh tmpfs (noexec), /proc, /dev and /dev/pts the
runtime's. So the container shows the app what its grants name, and Landlock decides
what it may do there. The bundle runs on this host (or one with the same paths): it
names host paths.

runc resolves bind sources as root at every start, after sandrun is gone: the export
refuses a source that anyone but root could redirect (a directory on its way owned or
writable by another user), where `sandrun exec` would check at each launch.
"""

from __future__ import annotations

import errno
import json
import marshal
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sandrun.errors import EnforcementError, UsageError
from sandrun.launch.launcher import (
    PRIVATE_TMP_DIRS,
    ExecOptions,
    LaunchPlan,
    decide,
    materialise,
    run_spec,
)
from sandrun.launch.runner import RunSpec
from sandrun.ops.export import refuse_caller_placeholders
from sandrun.sandbox import landlock, seccomp
from sandrun.sandbox.kernel import open_trusted_path
from sandrun.sandbox.syscall_table import X86_64_SYSCALLS

OCI_VERSION = "1.0.2"
# Where the applier lives inside the container (a directory of the rootfs itself).
APPLIER_DIR = "/sandrun"
APPLIER = f"{APPLIER_DIR}/apply.py"
SPEC = f"{APPLIER_DIR}/spec.marshal"
MARSHAL_VERSION = 4  # what every Python 3 the app may target reads
SPEC_FORMAT = 1
# The modules the applier imports, copied from this sandrun (all stdlib-only).
APPLIER_MODULES = ("errors.py", "sandbox/kernel.py")
RLIM_INFINITY = (1 << 64) - 1
CFS_PERIOD_US = 100_000
# What the outer filter must allow whatever the profile says: the applier builds and
# enforces Landlock, loads the inner filter and execs the app after the outer one.
APPLIER_SYSCALLS = ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
                    "seccomp", "prctl", "execve")
LOW32 = 0xFFFFFFFF
# Device nodes every OCI runtime creates in the container's /dev.
RUNTIME_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                             "/dev/urandom", "/dev/tty"})
# Top-level directories that merged-/usr systems make links into /usr.
TOP_LEVEL_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# runc's defaults: kernel interfaces hidden or read-only even before Landlock applies.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NO_EXEC_SUID_DEV = ("nosuid", "nodev", "noexec")


@dataclass(frozen=True)
class Mount:
    """One entry of config.json `mounts`; `is_dir` says what its mount point must be."""

    destination: str
    kind: str  # bind, tmpfs, proc, devpts
    source: str
    options: tuple[str, ...]
    is_dir: bool = True

    @property
    def writable(self) -> bool:
        return "rw" in self.options

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "type": self.kind, "source": self.source,
                "options": list(self.options)}


@dataclass
class OciBundle:
    """What `export_oci` wrote (for the summary)."""

    path: Path
    app: str
    user: str
    uid: int
    gid: int
    private_network: bool
    mounts: list[Mount]
    resources: dict[str, Any]
    notices: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the command


@click.command("oci", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--profile", metavar="NAME|FILE",
              help="Operator profile (replaces the embedded one).")
@click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
              help="Root-owned store (default /var/lib/sandrun).")
@click.option("-o", "--output", "output", required=True, metavar="DIR",
              help="The OCI bundle to write: must not exist, or be an empty directory.")
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(profile: str | None, store: str | None, output: str, bundle_path: str,
            args: tuple[str, ...]) -> None:
    """Write BUNDLE's sandbox as an OCI runtime bundle in DIR (run it with runc).

    ARGS (after --) are the app's arguments in config.json's process.args."""
    options = ExecOptions(bundle=bundle_path, args=args, profile=profile, store=store,
                          dry_run=True)
    result = export_oci(options, Path(output))
    for notice in result.notices:
        click.echo(f"sandrun: {notice}", err=True)
    click.echo(f"wrote OCI runtime bundle {result.path} (app {result.app}, runs as "
               f"{result.user}, uid {result.uid}, gid {result.gid})")
    click.echo("  network    " + ("private namespace, loopback only" if result.private_network
                                  else "the host's (the profile grants TCP ports or DNS; "
                                       "Landlock and seccomp restrict it)"))
    limits = _describe_resources(result.resources)
    click.echo("  limits     " + (", ".join(limits) if limits else "(none in the profile)"))
    click.echo(f"  run it     runc run --bundle {result.path} sandrun-{result.app}")


def _describe_resources(resources: dict[str, Any]) -> list[str]:
    described = []
    if "memory" in resources:
        described.append(f"memory {resources['memory']['limit']} bytes")
    if "pids" in resources:
        described.append(f"pids {resources['pids']['limit']}")
    cpu = resources.get("cpu", {})
    if "quota" in cpu:
        described.append(f"cpu {cpu['quota']}/{cpu['period']} us")
    if "shares" in cpu:
        described.append(f"cpu shares {cpu['shares']}")
    return described


# ---------------------------------------------------------------- the export


def export_oci(options: ExecOptions, output: Path) -> OciBundle:
    """Decide as exec does, refuse before creating anything, then install and write.

    Raises what decide() refuses (exit 125 on an unapproved embedded profile...),
    EnforcementError when not root or when a bind source or the output could be
    redirected by another user, UsageError when the output exists and is not empty.
    """
    plan = decide(options)
    plan.raise_for_refusals()
    assert plan.requested_profile is not None  # decide() sets it
    refuse_caller_placeholders(plan.requested_profile, "a container")
    if not plan.privileged or os.geteuid() != 0:
        raise EnforcementError(
            "sandrun export oci needs root: it installs the tree into the root-owned store "
            "and creates the app user the container runs as",
            "run it as root (the bundle is for a root runtime such as `runc run`)")
    target = _check_output(output)
    for mount in plan_mounts(plan)[0]:
        if mount.kind == "bind" and mount.source not in _store_paths(plan):
            check_bind_source(mount.source)
    seccomp_json = outer_seccomp(plan.seccomp_policy)  # a bug here refuses before acting
    materialise(plan, options)
    spec = run_spec(plan)
    mounts, links = plan_mounts(plan)  # again: the app user has its uid now
    private_network = not _network_granted(plan)
    config = build_config(plan, spec, mounts, seccomp_json, private_network)
    files = applier_files(spec, plan.manifest.app_name)
    _write_atomically(target, config, mounts, links, files)
    return OciBundle(path=target, app=plan.manifest.app_name, user=plan.user.name,
                     uid=plan.user.uid, gid=plan.user.gid, private_network=private_network,
                     mounts=mounts, resources=config["linux"]["resources"],
                     notices=list(plan.notices))


def _store_paths(plan: LaunchPlan) -> set[str]:
    """The tree and the state dir: made by materialise, their trust is the Store's."""
    return {str(plan.tree), str(plan.state_dir)}


def _network_granted(plan: LaunchPlan) -> bool:
    profile = plan.profile
    return bool(profile.bind_tcp or profile.connect_tcp or profile.dns)


def _check_output(output: Path) -> Path:
    """The absolute output path: absent or an empty directory, in directories only root
    can change (runc reads config.json as root)."""
    target = Path(os.path.abspath(output))
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_dir():
            raise UsageError(f"-o {output}: exists and is not a directory",
                             "remove it, or choose another path")
        if any(target.iterdir()):
            raise UsageError(f"-o {output}: the directory is not empty",
                             "remove it, or choose another path")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: {parent} does not exist", f"create it: mkdir -p {parent}")
    _check_chain(os.path.realpath(parent), f"the output {target}", new_child=target.name)
    return Path(os.path.realpath(parent)) / target.name


def check_bind_source(path: str) -> None:
    """Refuse a bind source that anyone but root could redirect before runc mounts it.

    Links on the way must be root's in root's directories (open_trusted_path), and every
    directory of the resolved path must be root-owned and writable by nobody else, or
    sticky with a root-owned entry (which nobody else can then rename or replace).
    """
    try:
        os.close(open_trusted_path(path))
    except OSError as exc:
        raise EnforcementError(f"cannot open {path} to bind-mount it: {exc.strerror}",
                               "check the path and its parent directories") from None
    _check_chain(os.path.realpath(path), path)


def _check_chain(real: str, what: str, new_child: str | None = None) -> None:
    """Every directory from / down to `real` (and `real` itself when `new_child` will be
    created in it by root) holds its next entry so that only root can change it."""
    names = [name for name in real.split("/") if name]
    if new_child is not None:
        names.append(new_child)
    parent = "/"
    for i, name in enumerate(names):
        st = os.lstat(parent)
        child = os.path.join(parent, name)
        if st.st_uid != 0 or st.st_mode & 0o022:
            last_new = new_child is not None and i == len(names) - 1
            child_root = last_new or os.lstat(child).st_uid == 0
            if not (st.st_uid == 0 and st.st_mode & stat.S_ISVTX and child_root):
                who = (f"owned by uid {st.st_uid}" if st.st_uid != 0 else
                       f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
                raise EnforcementError(
                    f"{what}: {parent} is {who}: runc acts on it as root at every start, "
                    f"after sandrun has gone, so whoever can change {parent} could make it "
                    "mount or run something else",
                    "use paths whose directories only root can change (`sandrun exec` "
                    "checks them at every launch; an exported bundle cannot)")
        parent = child


# ---------------------------------------------------------------- mounts


def _canonical(path: str) -> str:
    """`path` with a top-level link of the host (/lib -> usr/lib) replaced by its target:
    the rootfs has the same links, so that is where the path lands in the container."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] in TOP_LEVEL_LINKS and os.path.islink("/" + parts[0]):
        target = os.readlink("/" + parts[0])
        parts[:1] = [p for p in target.split("/") if p]
    return "/" + "/".join(parts)


def _beneath(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def plan_mounts(plan: LaunchPlan) -> tuple[list[Mount], dict[str, str]]:
    """config.json's mounts (parents before children) and the rootfs's top-level links
    (name -> target), from the plan's Landlock policy: every granted path that exists
    is visible at the same place, read-only unless granted read+write."""
    spec_tmp = plan.profile.limits.get("memory")
    tmp_options = (*NO_EXEC_SUID_DEV, "mode=0700", f"uid={plan.user.uid}",
                   f"gid={plan.user.gid}", f"size={spec_tmp if spec_tmp else '25%'}")
    mounts = [
        Mount("/proc", "proc", "proc", NO_EXEC_SUID_DEV),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "noexec", "strictatime", "mode=755",
                                         "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts", ("nosuid", "noexec", "newinstance",
                                               "ptmxmode=0666", "mode=0620")),
        Mount("/usr", "bind", "/usr", ("bind", "ro", "nosuid", "nodev")),
        *(Mount(tmp, "tmpfs", "tmpfs", tmp_options) for tmp in PRIVATE_TMP_DIRS),
    ]
    links: dict[str, str] = {}
    for name in TOP_LEVEL_LINKS:
        host = "/" + name
        if os.path.islink(host):
            links[name] = os.readlink(host)
        elif os.path.isdir(host):
            mounts.append(Mount(host, "bind", host, ("bind", "ro", "nosuid", "nodev")))
    always = _store_paths(plan)
    wanted: dict[str, tuple[str, bool]] = {}  # canonical destination -> (source, writable)
    for rule in plan.landlock_policy.paths:
        writable = rule.access is landlock.Access.READ_WRITE
        if rule.path not in always and not os.path.lexists(rule.path):
            continue  # optional and absent (a missing required one was refused)
        destination = _canonical(rule.path)
        if (_beneath(destination, "/proc") or destination in RUNTIME_DEVICES
                or destination in PRIVATE_TMP_DIRS):
            continue
        source, was_writable = wanted.get(destination, (rule.path, False))
        wanted[destination] = (source, was_writable or writable)
    for destination in sorted(wanted, key=_depth_key):
        source, writable = wanted[destination]
        if _covered(destination, writable, mounts):
            continue
        options = ("bind", "rw", *NO_EXEC_SUID_DEV) if writable else \
            ("bind", "ro", "nosuid", "nodev")
        is_dir = os.path.isdir(source) or source in always
        mounts.append(Mount(destination, "bind", source, options, is_dir))
    mounts.sort(key=lambda m: _depth_key(m.destination))  # stable: /dev before /dev/pts
    return mounts, links


def _depth_key(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


def _covered(destination: str, writable: bool, mounts: Iterable[Mount]) -> bool:
    """Already visible as it must be: beneath a bind that is writable, or read-only when
    read-only is all that is asked for (a fresh tmpfs holds nothing of the host's)."""
    for mount in mounts:
        if (mount.kind == "bind" and _beneath(destination, mount.destination)
                and (mount.writable or not writable)):
            return True
    return False


# ---------------------------------------------------------------- config.json


def build_config(plan: LaunchPlan, spec: RunSpec, mounts: list[Mount],
                 seccomp_json: dict[str, Any], private_network: bool) -> dict[str, Any]:
    """The OCI runtime config (runtime-spec 1.0.2) for the plan."""
    namespaces = ["pid", "ipc", "uts", "mount", "cgroup"]
    if private_network:
        namespaces.append("network")
    env = [f"{name}={value}" for name, value in sorted(plan.env.items())]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": plan.user.uid, "gid": plan.user.gid, "additionalGids": []},
            "args": [spec.interpreter, "-I", "-B", "-S", APPLIER, SPEC, "--", *plan.args],
            "env": env,
            "cwd": spec.cwd,
            "capabilities": {name: [] for name in ("bounding", "effective", "inheritable",
                                                   "permitted", "ambient")},
            "rlimits": [{"type": f"RLIMIT_{name.upper()}",
                         "hard": RLIM_INFINITY if value is None else value,
                         "soft": RLIM_INFINITY if value is None else value}
                        for name, value in sorted(plan.rlimits.items())],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": spec.hostname,
        "mounts": [mount.to_json() for mount in mounts],
        "linux": {
            "namespaces": [{"type": kind} for kind in namespaces],
            "resources": resources(plan),
            "seccomp": seccomp_json,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def resources(plan: LaunchPlan) -> dict[str, Any]:
    """linux.resources from the profile's [limits]: no device but the runtime's
    defaults, memory (and memory+swap: no swap), pids, cpu quota and shares."""
    limits = plan.profile.limits
    found: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.get("memory"):
        memory = {"limit": limits["memory"]}
        if _swap_accounting():
            memory["swap"] = limits["memory"]
        found["memory"] = memory
    if limits.get("tasks"):
        found["pids"] = {"limit": limits["tasks"]}
    cpu: dict[str, int] = {}
    if limits.get("cpu"):
        cpu |= {"quota": int(limits["cpu"] or 0) * CFS_PERIOD_US // 100,
                "period": CFS_PERIOD_US}
    if limits.get("cpu_weight"):
        cpu["shares"] = max(2, int(limits["cpu_weight"] or 0) * 1024 // 100)
    if cpu:
        found["cpu"] = cpu
    return found


def _swap_accounting() -> bool:
    """Whether the runtime can bound memory+swap here (cgroup v2, or v1 with memsw)."""
    return (os.path.exists("/sys/fs/cgroup/cgroup.controllers")
            or os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"))


# ---------------------------------------------------------------- the outer seccomp filter


class _RuleRecorder:
    """Stands in for pyseccomp in seccomp.add_rules, recording the rules it adds: the
    outer filter is built from the same rules as the inner one, never a second copy."""

    MASKED_EQ = "SCMP_CMP_MASKED_EQ"
    ALLOW = ("SCMP_ACT_ALLOW", None)
    KILL_PROCESS = ("SCMP_ACT_KILL_PROCESS", None)

    class Arch:
        X86_64 = "x86_64"

    class Attr:
        ACT_BADARCH = "ACT_BADARCH"
        API_SYSRAWRC = "API_SYSRAWRC"
        CTL_OPTIMIZE = "CTL_OPTIMIZE"

    def __init__(self) -> None:
        self.default: tuple[str, int | None] | None = None
        self.rules: list[tuple[tuple[str, int | None], str, tuple[dict[str, Any], ...]]] = []

    @staticmethod
    def ERRNO(code: int) -> tuple[str, int]:  # pyseccomp's names
        return ("SCMP_ACT_ERRNO", code)

    @staticmethod
    def Arg(index: int, op: str, value: int, value_two: int = 0) -> dict[str, Any]:
        return {"index": index, "value": value, "valueTwo": value_two, "op": op}

    def system_arch(self) -> str:
        return self.Arch.X86_64

    def set_api(self, level: int) -> None:
        pass

    def SyscallFilter(self, default: tuple[str, int | None]) -> _RuleRecorder:
        self.default = default
        return self

    def set_attr(self, attr: str, value: object) -> None:
        pass  # bad-arch action and optimisation: runtime-spec cannot say them

    def add_rule(self, action: tuple[str, int | None], name: str,
                 *conditions: dict[str, Any]) -> None:
        self.rules.append((action, name, conditions))

    def export_bpf(self, out: object) -> None:
        pass


def outer_seccomp(policy: seccomp.SeccompPolicy) -> dict[str, Any]:
    """linux.seccomp for the runtime: the inner filter's rules as runtime-spec JSON, plus
    the applier's syscalls (landlock_*, seccomp, prctl, execve) allowed unconditionally.

    The inner filter's rules already avoid what naive translations get wrong: every
    argument check is one MASKED_EQ on the low 32 bits (value = mask, valueTwo = what
    it must equal), denials by value are complements spelled as several ALLOW rules,
    and no syscall has both an unconditional and a conditional rule. `check_outer`
    proves that of the result (EnforcementError otherwise: a sandrun bug).
    """
    recorder = _RuleRecorder()
    plan = seccomp.resolve_policy(policy)
    try:
        seccomp.add_rules(recorder, plan)
    except (AttributeError, TypeError) as exc:
        raise EnforcementError(f"cannot translate the seccomp filter for the runtime: {exc}",
                               "report this as a sandrun bug (seccomp.py's builder uses "
                               "something the OCI exporter does not record)") from exc
    if recorder.default != ("SCMP_ACT_ERRNO", errno.ENOSYS):
        raise EnforcementError(f"unexpected default seccomp action {recorder.default}",
                               "report this as a sandrun bug")
    applier = set(APPLIER_SYSCALLS)
    plain: dict[tuple[str, int | None], list[str]] = {}
    conditional: list[dict[str, Any]] = []
    for action, name, conditions in recorder.rules:
        if name in applier:
            continue  # allowed unconditionally below
        if conditions:
            conditional.append(_entry([name], action, list(conditions)))
        else:
            plain.setdefault(action, []).append(name)
    plain.setdefault(_RuleRecorder.ALLOW, []).extend(APPLIER_SYSCALLS)
    entries = [_entry(sorted(names), action, []) for action, names in sorted(
        plain.items(), key=lambda item: (item[0][0], item[0][1] or 0))]
    result = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
              "architectures": ["SCMP_ARCH_X86_64"], "syscalls": entries + conditional}
    check_outer(result)
    return result


def _entry(names: list[str], action: tuple[str, int | None],
           args: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"names": names, "action": action[0]}
    if action[1] is not None:
        entry["errnoRet"] = action[1]
    if args:
        entry["args"] = args
    return entry


def check_outer(filter_json: dict[str, Any]) -> None:
    """Refuse an outer filter that a runtime would translate into something else:

    - two conditions on one argument in a rule (runc then adds each as its own rule:
      an AND becomes an OR, and two SCMP_CMP_NE allow everything);
    - a comparison other than MASKED_EQ within the low 32 bits (a 64-bit EQ or NE on a
      command the kernel truncates to 32 bits is bypassed by setting high bits);
    - a syscall with both an unconditional and a conditional rule (libseccomp drops
      the conditional one);
    - a name libseccomp does not know (runc skips it silently), or an applier syscall
      that is not allowed unconditionally (the applier would get ENOSYS or EPERM).
    """
    problems = []
    unconditional: dict[str, str] = {}
    conditional: set[str] = set()
    for entry in filter_json["syscalls"]:
        args = entry.get("args", [])
        indexes = [a["index"] for a in args]
        if len(indexes) != len(set(indexes)):
            problems.append(f"{entry['names']}: two conditions on one argument")
        for a in args:
            if a["op"] != "SCMP_CMP_MASKED_EQ" or not 0 <= a["value"] <= LOW32 \
                    or a["valueTwo"] & ~a["value"]:
                problems.append(f"{entry['names']}: {a} is not a MASKED_EQ on the low 32 bits")
        for name in entry["names"]:
            if name not in X86_64_SYSCALLS:
                problems.append(f"{name}: not a syscall libseccomp knows on x86_64")
            if args:
                conditional.add(name)
            elif name in unconditional:
                problems.append(f"{name}: two unconditional rules")
            else:
                unconditional[name] = entry["action"]
    problems += [f"{name}: unconditional and conditional rules" for name in
                 sorted(conditional & unconditional.keys())]
    problems += [f"{name}: the applier needs it allowed unconditionally" for name in
                 APPLIER_SYSCALLS if unconditional.get(name) != "SCMP_ACT_ALLOW"]
    if problems:
        raise EnforcementError("the outer seccomp filter would not mean what it says: "
                               + "; ".join(problems[:5]), "report this as a sandrun bug")


# ---------------------------------------------------------------- writing the bundle


def applier_files(spec: RunSpec, app: str) -> dict[str, bytes]:
    """The applier, its modules and its spec: path inside the container -> content."""
    import sandrun

    package = Path(sandrun.__file__).parent
    document = {
        "format": SPEC_FORMAT, "app": app, "uid": spec.uid, "gid": spec.gid,
        "interpreter": spec.interpreter, "argv": spec.argv, "env": spec.env,
        "env_pass": spec.env_pass, "env_set": spec.env_set, "cwd": spec.cwd,
        "mdwe": spec.mdwe, "landlock": spec.landlock, "seccomp_bpf": spec.seccomp_bpf,
    }
    files = {
        APPLIER: (package / "ops" / "apply.py").read_bytes(),
        SPEC: marshal.dumps(document, MARSHAL_VERSION),
        f"{APPLIER_DIR}/lib/sandrun/__init__.py": b"",
        f"{APPLIER_DIR}/lib/sandrun/sandbox/__init__.py": b"",
    }
    for module in APPLIER_MODULES:
        files[f"{APPLIER_DIR}/lib/sandrun/{module}"] = (package / module).read_bytes()
    return files


def _write_atomically(target: Path, config: dict[str, Any], mounts: list[Mount],
                      links: dict[str, str], files: dict[str, bytes]) -> None:
    """Write the bundle into a fresh private directory beside `target`, then rename it
    into place: a failure leaves nothing behind, and nobody sees half a bundle."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(work, 0o700)  # config.json is root's business
        rootfs = work / "rootfs"
        _mkdir(rootfs)
        for name, link in sorted(links.items()):
            os.symlink(link, rootfs / name)
        for mount in _top_mounts(mounts):
            _mount_point(rootfs, mount.destination, mount.is_dir)
        for path, content in sorted(files.items()):
            parent = rootfs / path.lstrip("/")
            for missing in reversed([p for p in parent.parents if not p.exists()]):
                _mkdir(missing, 0o555)
            with open(parent, "xb") as f:
                f.write(content)
            os.chmod(parent, 0o444)
        for directory in _dirs_of(rootfs / APPLIER_DIR.lstrip("/")):
            os.chmod(directory, 0o555)
        with open(work / "config.json", "x", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        os.rename(work, target)  # replaces an empty directory given as -o
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _dirs_of(top: Path) -> Iterator[Path]:
    yield top
    for dirpath, dirnames, _ in os.walk(top):
        for name in dirnames:
            yield Path(dirpath) / name


def _mkdir(path: Path, mode: int = 0o755) -> None:
    os.mkdir(path)
    os.chmod(path, mode)


def _top_mounts(mounts: list[Mount]) -> list[Mount]:
    """Mounts not beneath another: their mount points are made in the rootfs (the
    others land in what is mounted above them, which has them or takes them)."""
    return [m for m in mounts if not any(
        o.destination != m.destination and _beneath(m.destination, o.destination)
        for o in mounts)]


def _mount_point(rootfs: Path, destination: str, is_dir: bool) -> None:
    path = rootfs / destination.lstrip("/")
    for missing in reversed([p for p in path.parents if not p.exists()]):
        _mkdir(missing)
    if is_dir:
        _mkdir(path)
    else:
        with open(path, "xb"):
            pass
        os.chmod(path, 0o444)


__all__ = ["build_config", "check_bind_source", "check_outer", "command",
           "export_oci", "outer_seccomp", "plan_mounts"]
