"""Per-launch resource limits through cgroups (memory, tasks, CPU quota and weight).

`create(name, limits)` runs as root before the app is forked and makes the launch's cgroup;
`Cgroup.enter(pid)` puts the app in it; `Cgroup.remove()` kills what is left and removes it
after the app exited. `plan(limits)` says, creating nothing, how each limit is enforced.

Where the launch cgroup goes, per layout:
- cgroup v2 (the `cgroup2` mount): `<our cgroup>/sandrun/<name>`, with the controllers it needs
  enabled in `<our cgroup>/cgroup.subtree_control` and in `sandrun/cgroup.subtree_control`.
  The kernel's no-internal-processes rule forbids enabling a controller for the children of
  a non-root cgroup that holds processes, and this process is in its own cgroup. So our own
  cgroup cannot keep us and still delegate: the root cgroup (exempt from the rule) works as
  is; a cgroup that holds this process only (a service, a `systemd-run --scope -p
  Delegate=yes` scope) gets this process moved into the leaf `<our cgroup>/sandrun-launcher`
  first, as systemd's delegation guide prescribes for a delegated unit's main process; a
  cgroup shared with other processes (a login session) cannot hand controllers down, and
  those limits are not enforced (refused if required). A later launch from the leaf uses the
  leaf's parent again, so leaves do not nest.
- cgroup v1: per controller hierarchy, `<our cgroup there>/sandrun/<name>`; v1 has no such rule.
A controller is bound to one hierarchy, so each limit has at most one way to be enforced;
"prefer v2" is automatic. When a v2 mount exists, the launch cgroup is made there too even
without controllers, so that `remove()` kills everything at once with `cgroup.kill`.

Root never follows a symlink here: directories are opened one component at a time with
O_NOFOLLOW from "/", the cgroup directory is checked to be on the mount that mountinfo names
(st_dev), the `sandrun` parent must be root-owned and not writable by others, and everything
after that is relative to those fds (mkdirat, openat, unlinkat).

Stdlib-only and cheap: the warm exec path imports this (no typing, re, signal's enum).
"""

from __future__ import annotations

import _signal
import errno
import os
import time

from sandrun.errors import EnforcementError

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

LIMITS = ("memory", "tasks", "cpu_quota", "cpu_weight")
CONTROLLER = {"memory": "memory", "tasks": "pids", "cpu_quota": "cpu", "cpu_weight": "cpu"}
_USED = frozenset(CONTROLLER.values())
# Accepted values per limit (inclusive). cpu_quota is in percent of one CPU.
LIMIT_RANGE = {"memory": (1, (1 << 62)), "tasks": (1, 1 << 22), "cpu_quota": (1, 100_000),
               "cpu_weight": (1, 10_000)}
PARENT = "sandrun"  # under our own cgroup: groups every launch of this launcher's cgroup
LAUNCHER_LEAF = "sandrun-launcher"  # v2 only: where the launcher moves to empty its cgroup
CFS_PERIOD_US = 100_000
NAME_MAX = 100
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENODEV)  # a removed cgroup dir (or its files)
_KILL_ROUNDS = 50  # v1: SIGKILL what cgroup.procs lists, look again; bounded
_EMPTY_TIMEOUT = 2.0  # seconds for killed processes to leave before remove() gives up
_PARENT_RETRIES = 3  # a concurrent remove() may rmdir `sandrun` between our mkdirs

_HINT_UNAVAILABLE = ("give sandrun's cgroup the controller (cgroup v2: run sandrun exec as a "
                     "service or under `systemd-run --scope -p Delegate=yes`; cgroup v1: mount "
                     "the controller's hierarchy), or remove the limit from `required` in the "
                     "profile's [limits]")
_HINT_SHARED = ("run sandrun exec as the only process of its cgroup, e.g. under "
                "`systemd-run --scope -p Delegate=yes`, or remove the limit from `required` in "
                "the profile's [limits]")


class Kernfs:
    """The operations that change cgroupfs, relative to directory fds.

    Reads go to the files directly. Tests of the v2 logic substitute an emulation of the
    kernel's side (a fake tree in a temp dir, since this machine's v2 has no controllers).
    """

    def mkdir(self, dir_fd: int, name: str) -> None:
        os.mkdir(name, 0o755, dir_fd=dir_fd)

    def rmdir(self, dir_fd: int, name: str) -> None:
        os.rmdir(name, dir_fd=dir_fd)

    def write(self, dir_fd: int, name: str, text: str) -> None:
        """One write(2): cgroupfs takes a value only whole."""
        data = text.encode()
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, f"short write to {name}")
        finally:
            os.close(fd)


KERNFS = Kernfs()


class Hierarchy:
    """One cgroup hierarchy as this process sees it, from mountinfo and /proc/self/cgroup."""

    __slots__ = ("controllers", "dev", "mountpoint", "path", "version")

    def __init__(self, version: int, mountpoint: str, path: str, dev: tuple[int, int],
                 controllers: tuple[str, ...] = ()) -> None:
        self.version = version
        self.mountpoint = mountpoint  # where the hierarchy (or the part we see) is mounted
        self.path = path  # our cgroup relative to the mount: "/" or "/a/b"
        self.dev = dev  # (major, minor) of the mount, to check what we opened
        self.controllers = controllers  # v1: the controllers bound to this hierarchy

    @property
    def dir(self) -> str:
        """Our cgroup's directory, for messages (everything is done through fds)."""
        return self.mountpoint.rstrip("/") + (self.path if self.path != "/" else "") or "/"

    def label(self) -> str:
        return "v2" if self.version == 2 else ",".join(self.controllers)

    def __repr__(self) -> str:
        return f"Hierarchy(v{self.version}, {self.dir!r})"


class Layout:
    """The hierarchies this process can use: v2 (or None) and v1 by controller name."""

    __slots__ = ("ops", "v1", "v2")

    def __init__(self, v2: Hierarchy | None, v1: dict[str, Hierarchy],
                 ops: Kernfs | None = None) -> None:
        self.v2 = v2
        self.v1 = v1
        self.ops = ops or KERNFS

    def __repr__(self) -> str:
        return f"Layout(v2={self.v2!r}, v1={self.v1!r})"


def discover(proc: str = "/proc/self", ops: Kernfs | None = None) -> Layout:
    """Read `proc`/mountinfo and `proc`/cgroup: where each hierarchy and our cgroup in it are.

    `proc` and `ops` exist for tests (a fake tree); sandrun uses the defaults.
    """
    ours_v2: str | None = None
    ours_v1: dict[str, str] = {}
    for line in _read_path(f"{proc}/cgroup").splitlines():
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/") or path.endswith(" (deleted)"):
            continue
        if hierarchy_id == "0" and not controllers:
            ours_v2 = path
        else:
            for controller in controllers.split(","):
                ours_v1[controller] = path
    v2 = None
    v1: dict[str, Hierarchy] = {}
    for line in _read_path(f"{proc}/mountinfo").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        major, _, minor = fields[2].partition(":")
        dev = (int(major), int(minor))
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            if v2 is None and ours_v2 is not None:
                below = _below(ours_v2, root)
                if below is not None:
                    if below.endswith("/" + LAUNCHER_LEAF):  # moved there by an earlier launch
                        below = below[:-len(LAUNCHER_LEAF) - 1] or "/"
                    v2 = Hierarchy(2, mountpoint, below, dev)
            continue
        hierarchy = None  # one object per mount: co-mounted controllers share it
        for controller in tail[2].split(","):
            if controller in _USED and controller in ours_v1 and controller not in v1:
                below = _below(ours_v1[controller], root)
                if below is not None:
                    if hierarchy is None:
                        bound = tuple(o for o in tail[2].split(",") if o in ours_v1)
                        hierarchy = Hierarchy(1, mountpoint, below, dev, bound)
                    v1[controller] = hierarchy
    return Layout(v2, v1, ops)


def _below(path: str, root: str) -> str | None:
    """`path` (a cgroup) relative to a mount of `root`; None when the mount does not show it."""
    if root == "/":
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:3]
        out.append(chr(int(code, 8)) + part[3:] if len(code) == 3 and code.isdigit()
                   else "\\" + part)
    return "".join(out)


# ---------------------------------------------------------------- small fd-based helpers


def _read_path(path: str) -> str:
    fd = os.open(path, _FILE_FLAGS)
    return _read_fd(fd)


def _read(dir_fd: int, name: str) -> str:
    return _read_fd(os.open(name, _FILE_FLAGS, dir_fd=dir_fd))


def _read_fd(fd: int) -> str:
    chunks = []
    try:
        for _ in range(1 << 12):  # 256 MiB at most: proc and cgroup files are small
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _open_dir_path(path: str) -> int:
    """Open a directory, one component at a time from "/", following no symlink."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EINVAL, "'..' in a cgroup path", path)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_cgroup(hierarchy: Hierarchy) -> int:
    """Our cgroup's directory in `hierarchy`, checked to be on that cgroup mount."""
    fd = _open_dir_path(hierarchy.dir)
    st = os.fstat(fd)
    if (os.major(st.st_dev), os.minor(st.st_dev)) != hierarchy.dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "not on the cgroup mount that mountinfo names", hierarchy.dir)
    return fd


def _open_owned_dir(dir_fd: int, name: str) -> int:
    """Open `name` under `dir_fd`: a directory owned by root and writable by root only."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(errno.EPERM, "not owned by root or writable by others", name)
    return fd


def _words(dir_fd: int, name: str) -> set[str]:
    return set(_read(dir_fd, name).split())


def _plus(controllers: Iterable[str]) -> str:
    return " ".join("+" + c for c in sorted(controllers))


# ---------------------------------------------------------------- deciding (no writes)


def _normalize(limits: dict[str, Any]) -> tuple[dict[str, int], set[str]]:
    """The cgroup limits that are set, checked; and which of them are required.

    Other keys (limits enforced by rlimits, for instance) are not this module's.
    """
    if not isinstance(limits, dict):
        raise EnforcementError(f"resource limits must be a table, not {type(limits).__name__}",
                               "fix the profile's [limits]")
    values: dict[str, int] = {}
    for name in LIMITS:
        value = limits.get(name)
        if value is None:
            continue
        low, high = LIMIT_RANGE[name]
        if type(value) is not int or not low <= value <= high:
            raise EnforcementError(f"invalid {name} limit {value!r}: expected an integer from "
                                   f"{low} to {high}", "fix the profile's [limits]")
        values[name] = value
    required = limits.get("required") or ()
    if not isinstance(required, (list, tuple)) or not all(isinstance(r, str) for r in required):
        raise EnforcementError(f"limits 'required' must be a list of limit names, not "
                               f"{required!r}", "fix the profile's [limits]")
    return values, {r for r in required if r in values}


class _Decision:
    """How one limit is enforced: `hierarchy` None means it is not, and `why` says why."""

    __slots__ = ("hierarchy", "name", "required", "value", "why")

    def __init__(self, name: str, value: int | None, required: bool) -> None:
        self.name = name
        self.value = value
        self.required = required
        self.hierarchy: Hierarchy | None = None
        self.why = ""


class _Survey:
    """A read-only look at the hierarchies some controllers need; holds their dir fds."""

    def __init__(self, layout: Layout, controllers: set[str]) -> None:
        self.layout = layout
        self.v2_fd = -1
        self.v2_why = "there is no cgroup v2 mount"
        self.v2_available: set[str] = set()
        self.v2_shared = False  # our v2 cgroup holds other processes: no delegation
        self.leaf_move = False  # we must move into LAUNCHER_LEAF to delegate
        self.v1_fds: dict[int, int] = {}  # id(hierarchy) -> fd of our cgroup there
        self.v1_why: dict[int, str] = {}
        try:
            self._look(controllers)
        except BaseException:
            self.close()
            raise

    def _look(self, controllers: set[str]) -> None:
        v2 = self.layout.v2
        if v2 is not None and controllers:
            try:
                self.v2_fd = _open_cgroup(v2)
                self.v2_available = _words(self.v2_fd, "cgroup.controllers")
                missing = (controllers & self.v2_available) - _words(self.v2_fd,
                                                                     "cgroup.subtree_control")
                if missing and _exists(self.v2_fd, "cgroup.type"):  # not the (exempt) root
                    procs = _read(self.v2_fd, "cgroup.procs").split()
                    self.v2_shared = any(p != str(os.getpid()) for p in procs)
                    self.leaf_move = bool(procs) and not self.v2_shared
            except OSError as exc:
                self.close_v2()
                self.v2_why = f"cannot use {v2.dir}: {exc.strerror or exc}"
                self.v2_available = set()
            else:
                self.v2_why = f"cgroup v2 at {v2.mountpoint} does not offer it to {v2.dir}"
        for controller in sorted(controllers - self.v2_available):
            hierarchy = self.layout.v1.get(controller)
            if hierarchy is None or id(hierarchy) in self.v1_fds:
                continue
            try:
                self.v1_fds[id(hierarchy)] = _open_cgroup(hierarchy)
            except OSError as exc:
                self.v1_why[id(hierarchy)] = f"cannot use {hierarchy.dir}: {exc.strerror or exc}"

    def decide(self, values: dict[str, int], required: set[str]) -> list[_Decision]:
        decisions = []
        for name in LIMITS:
            decision = _Decision(name, values.get(name), name in required)
            decisions.append(decision)
            if decision.value is None:
                continue
            controller = CONTROLLER[name]
            v1 = self.layout.v1.get(controller)
            if controller in self.v2_available:
                if self.v2_shared:
                    assert self.layout.v2 is not None
                    decision.why = (f"{self.layout.v2.dir} holds other processes, so cgroup v2 "
                                    f"cannot hand the {controller} controller to a child cgroup "
                                    f"(the no-internal-processes rule)")
                else:
                    decision.hierarchy = self.layout.v2
            elif v1 is not None and id(v1) in self.v1_fds:
                decision.hierarchy = v1
            elif v1 is not None:
                decision.why = f"no {controller} controller available: {self.v1_why[id(v1)]}"
            else:
                decision.why = (f"no {controller} controller available: {self.v2_why} and no "
                                f"cgroup v1 {controller} hierarchy is mounted")
        return decisions

    def close_v2(self) -> None:
        if self.v2_fd >= 0:
            os.close(self.v2_fd)
            self.v2_fd = -1

    def close(self) -> None:
        self.close_v2()
        for fd in self.v1_fds.values():
            os.close(fd)
        self.v1_fds.clear()


def _settings(version: int, name: str, value: int, launch_fd: int) -> list[tuple[str, str]]:
    """The files that enforce one limit, in the order they must be written."""
    if version == 2:
        if name == "memory":
            # swap.max=0: the limit bounds memory plus swap, as memsw does on v1; oom.group:
            # an OOM kill takes the whole app, not one of its processes.
            return [("memory.max", str(value)),
                    *[(f, v) for f, v in (("memory.swap.max", "0"), ("memory.oom.group", "1"))
                      if launch_fd < 0 or _exists(launch_fd, f)]]
        if name == "tasks":
            return [("pids.max", str(value))]
        if name == "cpu_quota":
            return [("cpu.max", f"{value * CFS_PERIOD_US // 100} {CFS_PERIOD_US}")]
        return [("cpu.weight", str(value))]
    if name == "memory":
        # memsw after limit_in_bytes: memsw may never be below it. Without swap accounting,
        # swappiness=0 keeps the app from growing into swap. The OOM killer of a memcg only
        # picks tasks inside it, so the app and not the host pays for the limit.
        settings = [("memory.limit_in_bytes", str(value))]
        if launch_fd < 0 or _exists(launch_fd, "memory.memsw.limit_in_bytes"):
            settings.append(("memory.memsw.limit_in_bytes", str(value)))
        else:
            settings.append(("memory.swappiness", "0"))
        return settings
    if name == "tasks":
        return [("pids.max", str(value))]
    if name == "cpu_quota":
        return [("cpu.cfs_period_us", str(CFS_PERIOD_US)),
                ("cpu.cfs_quota_us", str(value * CFS_PERIOD_US // 100))]
    return [("cpu.shares", str(max(2, value * 1024 // 100)))]


def _describe(decision: _Decision, where: str,
              settings: list[tuple[str, str]]) -> tuple[str, str, str]:
    if decision.value is None:
        return (decision.name, "not enforced", "no limit set")
    if decision.hierarchy is None:
        consequence = ("required: the launch is refused" if decision.required
                       else "not required")
        return (decision.name, "not enforced", f"{decision.why}: not enforced ({consequence})")
    files = ", ".join(f"{f}={v}" for f, v in settings)
    return (decision.name, "enforced", f"cgroup v{decision.hierarchy.version} {files} in {where}")


def _refusal(refused: list[_Decision]) -> EnforcementError:
    reasons = "; ".join(f"the {d.name} limit ({d.value}) cannot be enforced here: {d.why}"
                        for d in refused)
    shared = any("no-internal-processes" in d.why for d in refused)
    return EnforcementError(reasons, _HINT_SHARED if shared else _HINT_UNAVAILABLE)


def _decide(limits: dict[str, Any], layout: Layout | None
            ) -> tuple[_Survey, list[_Decision]]:
    """What create() decides for `limits`, creating nothing (the survey's fds closed)."""
    values, required = _normalize(limits)
    layout = discover() if layout is None else layout
    survey = _Survey(layout, {CONTROLLER[n] for n in values})
    try:
        return survey, survey.decide(values, required)
    finally:
        survey.close()


def plan(limits: dict[str, Any], layout: Layout | None = None) -> list[tuple[str, str, str]]:
    """Per limit, in LIMITS order: (name, "enforced"/"not enforced", how or why). Creates
    nothing; for `--dry-run`."""
    survey, decisions = _decide(limits, layout)
    rows = []
    for decision in decisions:
        hierarchy = decision.hierarchy
        where, settings = "", []
        if hierarchy is not None and decision.value is not None:
            where = f"{hierarchy.dir.rstrip('/')}/{PARENT}/<launch>"
            if hierarchy.version == 2 and survey.leaf_move:
                where += (f" (sandrun exec first moves into {hierarchy.dir.rstrip('/')}/"
                          f"{LAUNCHER_LEAF}: the no-internal-processes rule)")
            settings = _settings(hierarchy.version, decision.name, decision.value, -1)
        rows.append(_describe(decision, where, settings))
    return rows


# Files _settings writes only where the kernel offers them (the C front checks each in the
# launch dir it made: "+F" only if F exists there, "-F" only if it does not).
_OPTIONAL_FILES = frozenset(("memory.swap.max", "memory.oom.group",
                             "memory.memsw.limit_in_bytes"))


def native_plan(limits: dict[str, Any], layout: Layout | None = None
                ) -> tuple[str, list[dict[str, Any]]]:
    """What create() would make for `limits`, as data for the native front's record
    (native/front.h: the cgroup plan), creating nothing: our /proc/self/cgroup text (the
    plan holds only while it is the same) and per node, in create()'s order, {"version",
    "dir", "dev": (major, minor), "delegate": v2 controllers to enable, space-separated,
    "required", "settings": [(file, value, required, when)]}, the v2 tracking node last
    when create() adds one. A required limit that cannot be enforced raises
    EnforcementError, as create() does."""
    own = _read_path("/proc/self/cgroup")
    layout = discover() if layout is None else layout
    _, decisions = _decide(limits, layout)
    refused = [d for d in decisions if d.required and d.hierarchy is None]
    if refused:
        raise _refusal(refused)
    groups: dict[int, list[_Decision]] = {}  # as _build groups them
    for decision in decisions:
        if decision.hierarchy is not None:
            groups.setdefault(id(decision.hierarchy), []).append(decision)
    nodes = []
    for group in groups.values():
        hierarchy = group[0].hierarchy
        assert hierarchy is not None
        controllers = {CONTROLLER[d.name] for d in group} if hierarchy.version == 2 else set()
        settings = []
        for decision in group:
            assert decision.value is not None
            for file, value in _settings(hierarchy.version, decision.name, decision.value, -1):
                settings.append((file, value, decision.required,
                                 "+" + file if file in _OPTIONAL_FILES else ""))
            if hierarchy.version == 1 and decision.name == "memory":  # _settings' else
                settings.append(("memory.swappiness", "0", decision.required,
                                 "-memory.memsw.limit_in_bytes"))
        nodes.append(_native_node(hierarchy, " ".join(sorted(controllers)),
                                  any(d.required for d in group), settings))
    if nodes and layout.v2 is not None and not any(n["version"] == 2 for n in nodes):
        nodes.append(_native_node(layout.v2, "", False, []))  # best effort, as in _build
    return own, nodes


def _native_node(hierarchy: Hierarchy, delegate: str, required: bool,
                 settings: list[tuple[str, str, bool, str]]) -> dict[str, Any]:
    return {"version": hierarchy.version, "dir": hierarchy.dir, "dev": hierarchy.dev,
            "delegate": delegate, "required": required, "settings": settings}


# ---------------------------------------------------------------- acting


class _Node:
    """The launch cgroup in one hierarchy: fds of our cgroup, of `sandrun`, and of it."""

    __slots__ = ("base_fd", "fd", "hierarchy", "parent_fd", "path")

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self.base_fd = self.parent_fd = self.fd = -1
        self.path = ""

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd, self.base_fd):
            if fd >= 0:
                os.close(fd)
        self.base_fd = self.parent_fd = self.fd = -1


class Cgroup:
    """One launch's cgroup, in every hierarchy that enforces one of its limits."""

    __slots__ = ("_nodes", "_ops", "name", "report")

    def __init__(self, name: str, ops: Kernfs) -> None:
        self.name = name
        self._ops = ops
        self._nodes: list[_Node] = []
        # What create() did, per limit, in plan()'s format (a limit that was not required
        # and failed to apply is "not enforced" here).
        self.report: list[tuple[str, str, str]] = []

    @property
    def dirs(self) -> dict[str, str]:
        """Hierarchy label ("v2", "memory", "cpu,cpuacct"...) -> the launch cgroup's dir."""
        return {n.hierarchy.label(): n.path for n in self._nodes if n.fd >= 0}

    def enter(self, pid: int) -> None:
        """Put process `pid` (and so everything it forks later) into the launch cgroup.

        Call it before the app runs: from the parent right after fork (the child waiting on
        a pipe) or in the child, as root, before it drops privileges. Each write takes
        ~0.03-0.15 ms here (kernel 6.18: no RCU grace period). The one that makes the v2
        cgroup populated also queues its cgroup.events notification: the kworker that sends
        it may take the CPU from the writer for a while on a busy machine (which is why the
        launcher does this while its child sets up the namespaces). On failure the process
        may be in some hierarchies: remove() kills it.
        """
        for node in self._nodes:
            try:
                self._ops.write(node.fd, "cgroup.procs", str(pid))
            except OSError as exc:
                raise EnforcementError(f"cannot put process {pid} into cgroup {node.path}: "
                                       f"{exc.strerror or exc}",
                                       "the process must exist; sandrun exec must run as root"
                                       ) from None

    def handoff(self) -> list[str]:
        """The nodes as the native supervisor takes them (runner._exec_supervisor), which
        then removes the cgroup as remove() does: VERSION:BASE_FD:PARENT_FD:FD:PATH each,
        the fds made inheritable. Only with the real kernel interface (KERNFS)."""
        if self._ops is not KERNFS:
            raise EnforcementError("a cgroup on an emulated kernel cannot be handed over",
                                   "a sandrun bug: hand over only real cgroups")
        nodes = []
        for node in self._nodes:
            if node.fd < 0:
                continue
            for fd in (node.base_fd, node.parent_fd, node.fd):
                os.set_inheritable(fd, True)
            nodes.append(f"{node.hierarchy.version}:{node.base_fd}:{node.parent_fd}:"
                         f"{node.fd}:{node.path}")
        return nodes

    def remove(self) -> None:
        """Kill whatever is still inside, then remove the launch cgroup (and `sandrun` when
        no other launch uses it). Idempotent; a cgroup already gone is fine.

        Raises EnforcementError when processes survive SIGKILL for _EMPTY_TIMEOUT or the
        directory cannot be removed; the nodes concerned stay for another remove().
        """
        problems = []
        # v2 first: cgroup.kill kills every process of the launch at once, in every hierarchy.
        for node in sorted(self._nodes, key=lambda n: n.hierarchy.version != 2):
            try:
                if not self._empty(node):
                    problems.append(f"{node.path}: processes survived SIGKILL")
                elif not self._rmdir(node):
                    problems.append(f"{node.path}: still busy")
            except OSError as exc:
                problems.append(f"{node.path}: {exc.strerror or exc}")
        self._nodes = [n for n in self._nodes if n.fd >= 0]
        if problems:
            raise EnforcementError(f"cannot remove the launch cgroup: {'; '.join(problems)}",
                                   "processes stuck in the kernel (D state) cannot be killed; "
                                   "look at /proc/<pid>/stack, then remove the cgroup")

    def _empty(self, node: _Node) -> bool:
        """Kill every process in the node; True once none is left (or the node is gone)."""
        try:
            if node.hierarchy.version == 2 and _exists(node.fd, "cgroup.kill"):
                if _populated(node.fd):
                    self._ops.write(node.fd, "cgroup.kill", "1")
                return _wait(lambda: not _populated(node.fd))
            for round_ in range(_KILL_ROUNDS):
                pids = _read(node.fd, "cgroup.procs").split()
                if not pids:
                    return True
                _kill_listed(node.fd, pids)
                time.sleep(min(0.0005 * (round_ + 1), 0.02))
            return not _read(node.fd, "cgroup.procs").split()
        except OSError as exc:
            if exc.errno in _GONE:
                return True
            raise

    def _rmdir(self, node: _Node) -> bool:
        """rmdir the launch dir (retrying while killed processes leave), then `sandrun`."""

        def removed() -> bool:
            try:
                self._ops.rmdir(node.parent_fd, self.name)
            except OSError as exc:
                if exc.errno in _GONE:
                    return True
                if exc.errno != errno.EBUSY:
                    raise
                return False
            return True

        if not _wait(removed):
            return False
        # The last launch under our cgroup removes `sandrun`; while others use it: EBUSY.
        try:  # no contextlib on the warm path
            self._ops.rmdir(node.base_fd, PARENT)
        except OSError:
            pass
        node.close()
        return True

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {self.dirs!r})"


def _populated(dir_fd: int) -> bool:
    return "populated 0" not in _read(dir_fd, "cgroup.events")


def _wait(done: Callable[[], bool]) -> bool:
    """Poll `done` with growing sleeps for at most _EMPTY_TIMEOUT seconds."""
    deadline = time.monotonic() + _EMPTY_TIMEOUT
    delay = 0.0002
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def _kill_listed(dir_fd: int, pids: list[str]) -> None:
    """SIGKILL the processes `pids` read from dir_fd's cgroup.procs, through pidfds taken
    before looking again, so a pid that exited and was reused outside is never hit."""
    pidfds = {}
    try:
        for pid in pids:
            try:
                pidfds[pid] = os.pidfd_open(int(pid))
            except (OSError, ValueError):
                continue  # gone already
        still = set(_read(dir_fd, "cgroup.procs").split())
        for pid, pidfd in pidfds.items():
            if pid in still:
                try:  # no contextlib on the warm path
                    _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def check_name(name: str) -> None:
    """A launch cgroup's name: [a-z0-9._-], starting with a letter or digit, <= NAME_MAX."""
    if (not isinstance(name, str) or not 0 < len(name) <= NAME_MAX
            or not set(name) <= _NAME_CHARS or not name[0].isalnum()
            or name in (PARENT, LAUNCHER_LEAF)):
        raise EnforcementError(f"invalid cgroup name {name!r}",
                               f"use 1 to {NAME_MAX} characters from a-z 0-9 . _ -, starting "
                               f"with a letter or digit")


def create(name: str, limits: dict[str, Any], layout: Layout | None = None) -> Cgroup:
    """Make the launch cgroup `name` enforcing `limits` (as root, before forking the app).

    `limits`: {"memory": bytes, "tasks": n, "cpu_quota": percent of one CPU, "cpu_weight":
    1..10000, "required": [names]}; None or absent means unlimited. Everything is decided
    before anything is created: a required limit that cannot be enforced raises
    EnforcementError and changes nothing. One that is not required is skipped and reported
    (in `plan()` and in `Cgroup.report`). `layout` is for tests (default: `discover()`).
    """
    check_name(name)
    values, required = _normalize(limits)
    layout = discover() if layout is None else layout
    cgroup = Cgroup(name, layout.ops)
    survey = _Survey(layout, {CONTROLLER[n] for n in values})
    try:
        decisions = survey.decide(values, required)
        refused = [d for d in decisions if d.required and d.hierarchy is None]
        if refused:
            raise _refusal(refused)
        try:
            _build(cgroup, survey, decisions)
        except BaseException:
            try:  # no contextlib on the warm path
                cgroup.remove()
            except EnforcementError:
                pass  # nothing was entered yet; the first error is the one to report
            raise
    finally:
        survey.close()
    return cgroup


def _build(cgroup: Cgroup, survey: _Survey, decisions: list[_Decision]) -> None:
    """Create the nodes the decisions need and write the limits; fills cgroup.report."""
    layout, ops = survey.layout, survey.layout.ops
    groups: dict[int, list[_Decision]] = {}
    for decision in decisions:
        if decision.hierarchy is not None:
            groups.setdefault(id(decision.hierarchy), []).append(decision)
    reports = {d.name: _describe(d, "", []) for d in decisions}
    for group in groups.values():
        hierarchy = group[0].hierarchy
        assert hierarchy is not None
        base_fd = survey.v2_fd if hierarchy.version == 2 else survey.v1_fds[id(hierarchy)]
        controllers = {CONTROLLER[d.name] for d in group} if hierarchy.version == 2 else set()
        try:
            node = _make_node(hierarchy, cgroup.name, base_fd, controllers, ops)
        except OSError as exc:
            why = (f"cannot create cgroup {cgroup.name} under {hierarchy.dir}: "
                   f"{exc.strerror or exc}")
            for decision in group:
                decision.why, decision.hierarchy = why, None
                reports[decision.name] = _describe(decision, "", [])
            failed = [d for d in group if d.required]
            if failed:
                raise _refusal(failed) from None
            continue
        cgroup._nodes.append(node)
        for decision in group:
            assert decision.value is not None
            settings = _settings(hierarchy.version, decision.name, decision.value, node.fd)
            for file, value in settings:
                try:
                    ops.write(node.fd, file, value)
                except OSError as exc:
                    decision.why = (f"writing {file}={value} in {node.path} failed: "
                                    f"{exc.strerror or exc}")
                    decision.hierarchy = None
                    if decision.required:
                        raise _refusal([decision]) from None
                    break
            reports[decision.name] = _describe(decision, node.path, settings)
    # The v2 tracking cgroup: it needs no controller and lets remove() use cgroup.kill.
    if cgroup._nodes and layout.v2 is not None and not any(
            n.hierarchy.version == 2 for n in cgroup._nodes):
        try:
            base_fd = survey.v2_fd if survey.v2_fd >= 0 else _open_cgroup(layout.v2)
            try:
                cgroup._nodes.append(_make_node(layout.v2, cgroup.name, base_fd, set(), ops))
            finally:
                if base_fd != survey.v2_fd:
                    os.close(base_fd)
        except (OSError, EnforcementError):
            pass  # best effort: remove() then kills by listing the v1 cgroup's processes
    cgroup.report = [reports[name] for name in LIMITS]


def _make_node(hierarchy: Hierarchy, name: str, base_fd: int, controllers: set[str],
               ops: Kernfs) -> _Node:
    """Create `sandrun/<name>` under our cgroup `base_fd`, delegating `controllers` (v2).

    Raises OSError, or EnforcementError for a launch cgroup of that name in use.
    """
    node = _Node(hierarchy)
    try:
        node.base_fd = os.dup(base_fd)
        if controllers:
            _delegate(node.base_fd, controllers, ops)
        for attempt in range(_PARENT_RETRIES):
            try:  # no contextlib on the warm path
                ops.mkdir(node.base_fd, PARENT)
            except FileExistsError:
                pass
            node.parent_fd = _open_owned_dir(node.base_fd, PARENT)
            try:
                missing = controllers and (
                    controllers - _words(node.parent_fd, "cgroup.subtree_control"))
                if missing:
                    ops.write(node.parent_fd, "cgroup.subtree_control", _plus(missing))
                node.fd = _make_launch_dir(node.parent_fd, name, ops)
                break
            except OSError as exc:
                os.close(node.parent_fd)
                node.parent_fd = -1
                # A concurrent remove() took `sandrun` away between our mkdir and now.
                if exc.errno not in _GONE or attempt + 1 == _PARENT_RETRIES:
                    raise
    except BaseException:
        node.close()
        raise
    node.path = f"{hierarchy.dir.rstrip('/')}/{PARENT}/{name}"
    return node


def _delegate(base_fd: int, controllers: set[str], ops: Kernfs) -> None:
    """Enable `controllers` for the children of our v2 cgroup (see the module doc)."""
    missing = controllers - _words(base_fd, "cgroup.subtree_control")
    if not missing:
        return
    try:
        ops.write(base_fd, "cgroup.subtree_control", _plus(missing))
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        procs = _read(base_fd, "cgroup.procs").split()
        if not procs or any(p != str(os.getpid()) for p in procs):
            raise
    # We are the only process here: move into a leaf so our cgroup can delegate.
    try:  # no contextlib on the warm path
        ops.mkdir(base_fd, LAUNCHER_LEAF)
    except FileExistsError:
        pass
    leaf_fd = _open_owned_dir(base_fd, LAUNCHER_LEAF)
    try:
        ops.write(leaf_fd, "cgroup.procs", str(os.getpid()))
    finally:
        os.close(leaf_fd)
    ops.write(base_fd, "cgroup.subtree_control", _plus(missing))


def _make_launch_dir(parent_fd: int, name: str, ops: Kernfs) -> int:
    try:
        ops.mkdir(parent_fd, name)
    except FileExistsError:
        # Left by a launcher that died (SIGKILL) with the same pid: reuse it only if empty.
        stale = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            busy = _read(stale, "cgroup.procs").split()
        finally:
            os.close(stale)
        if busy:
            raise EnforcementError(f"cgroup {name} already exists and holds processes "
                                   f"({' '.join(busy[:5])})",
                                   "another launch uses this name; launch cgroup names "
                                   "must be unique (they contain the launcher's pid)") from None
        ops.rmdir(parent_fd, name)
        ops.mkdir(parent_fd, name)
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
