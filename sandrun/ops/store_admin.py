"""The store's lifecycle: what is installed (`list`), what old trees can go (`gc`), and
removing an app (`rm`).

Trees are named by their bundle's sha256; each one's manifest says which app and version
it is. A tree is *in use* while a process runs its bootstrap (its command line names the
tree), and nothing in use is ever removed. `gc` keeps the newest N trees of every app
(at least the newest one), removes the rest, and the launch records and snapshots that
referred to what it removed.
"""

from __future__ import annotations

import json
import marshal
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from sandrun.errors import SandrunError, StoreError, UsageError
from sandrun.launch import consent, native_record
from sandrun.launch.store import Store
from sandrun.launch.warm_exec import SNAPSHOT_SUFFIX


@dataclass
class TreeInfo:
    sha256: str
    app: str
    version: str
    signer: str | None  # the signature's claimed signer and key, if the tree has one
    size: int  # bytes of the manifest's entries
    installed: float  # when the tree was made (its top dir's mtime)
    last_used: float | None  # newest launch record or snapshot naming it
    running: list[int] = field(default_factory=list)  # pids running its bootstrap

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "app": self.app, "version": self.version,
                "signer": self.signer, "size": self.size,
                "installed": _iso(self.installed),
                "last_used": _iso(self.last_used) if self.last_used else None,
                "running": self.running}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _running(tree: str) -> list[int]:
    """Processes whose command line runs the tree's bootstrap."""
    marker = (tree + "/.sandrun/bootstrap.py").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if marker in argv:
            pids.append(int(entry))
    return pids


def installed(store: Store) -> list[TreeInfo]:
    """Every installed tree, newest first within each app, apps by name."""
    used: dict[str, float] = {}
    for name, mtime, data in store.launch_records():
        tree = _record_tree(name, data)
        if tree is not None:
            used[tree] = max(used.get(tree, 0.0), mtime)
    infos = []
    for sha in store.tree_names():
        manifest_bytes = store.read_tree_file(sha, MANIFEST_NAME)
        try:
            manifest = Manifest.from_bytes(manifest_bytes or b"")
            app, version, size = manifest.app_name, manifest.app_version, manifest.total_size
        except SandrunError:
            app, version, size = "?", "?", 0  # a damaged tree: listed, never launched
        signer = None
        signature = store.read_tree_file(sha, SIGNATURE_NAME)
        if signature:
            try:
                claimed = json.loads(signature)
                signer = f"{claimed.get('signer', '')} ({claimed.get('fingerprint', '?')})"
            except ValueError:
                signer = "(unreadable signature)"
        infos.append(TreeInfo(sha, app, version, signer, size, store.tree_stat(sha).st_mtime,
                              used.get(sha), _running(str(store.tree(sha)))))
    infos.sort(key=lambda t: (t.app, -t.installed))
    return infos


def render_list(infos: list[TreeInfo]) -> str:
    if not infos:
        return "no app installed"
    lines = [f"{'APP':<20} {'VERSION':<12} {'TREE':<14} {'SIZE':>10}  {'INSTALLED':<20} "
             f"{'LAST USED':<20} RUNNING  SIGNER"]
    for t in infos:
        lines.append(f"{t.app:<20} {t.version:<12} {t.sha256[:12]:<14} {t.size:>10}  "
                     f"{_iso(t.installed):<20} "
                     f"{_iso(t.last_used) if t.last_used else '-':<20} "
                     f"{len(t.running):<8} {t.signer or 'unsigned'}")
    return "\n".join(lines)


@dataclass
class GcPlan:
    remove: list[TreeInfo]
    keep: list[tuple[TreeInfo, str]]  # and why
    records: list[str] = field(default_factory=list)  # launch files that go too


def plan_gc(store: Store, keep: int) -> GcPlan:
    if keep < 1:
        raise UsageError(f"--keep {keep}: the newest tree of each app is always kept",
                         "use --keep 1 or more")
    plan = GcPlan([], [])
    seen: dict[str, int] = {}
    for info in installed(store):  # newest first per app
        rank = seen.get(info.app, 0)
        seen[info.app] = rank + 1
        if info.running:
            plan.keep.append((info, f"in use by pid {', '.join(map(str, info.running))}"))
        elif rank < keep:
            plan.keep.append((info, "newest" if rank == 0 else f"among the newest {keep}"))
        else:
            plan.remove.append(info)
    return plan


def run_gc(store: Store, plan: GcPlan) -> GcPlan:
    """Remove what plan_gc chose (rechecking that each is still unused), then the launch
    records whose tree is gone."""
    for info in plan.remove:
        if _running(str(store.tree(info.sha256))):
            continue  # started meanwhile
        store.remove_tree(info.sha256)
    present = set(store.tree_names())
    plan.records = _remove_stale_records(store, present)
    return plan


def _record_tree(name: str, data: bytes) -> str | None:
    """The tree (sha256) a launch record names: a Python warm record (marshal) or a
    native one (native_record); None when it is neither."""
    if name.endswith(native_record.SUFFIX):
        return native_record.tree_of(data)
    try:
        return os.path.basename(str(marshal.loads(data)["tree"]))
    except (ValueError, EOFError, TypeError, KeyError):
        return None


def _remove_stale_records(store: Store, present: set[str]) -> list[str]:
    stale = set()
    for name, _mtime, data in store.launch_records():
        tree = _record_tree(name, data)
        if tree is None or tree not in present:
            stale.add(name)
    return store.remove_launch_files(
        lambda n: n in stale or (n.endswith(SNAPSHOT_SUFFIX)
                                 and n[:-len(SNAPSHOT_SUFFIX)] not in present))


@dataclass
class RemovedApp:
    trees: list[str]
    records: list[str]
    state: bool = False
    user: str | None = None
    forgotten: list[str] = field(default_factory=list)  # owner record, approval

    def to_json(self, app: str, store_root: Path) -> dict[str, object]:
        """What `sandrun rm --json` prints."""
        return {"app": app, "trees": list(self.trees), "records": list(self.records),
                "state_dir": str(store_root / "state" / app) if self.state else None,
                "forgotten": list(self.forgotten), "user": self.user}


def remove_app(store: Store, app: str, *, state: bool, user: bool) -> RemovedApp:
    """Remove every tree of `app`, and with `state` its state dir, owner record and
    approval, with `user` its sandrun-created system user. Refused while it runs."""
    from sandrun.bundle.manifest import app_name_problem
    from sandrun.launch.users import default_user_name, remove_default_user

    problem = app_name_problem(app)
    if problem:  # never a path: "../x" must not reach beyond the store
        raise UsageError(f"{app!r} is not an app name: {problem}",
                         "`sandrun list` shows the installed apps")
    trees = [t for t in installed(store) if t.app == app]
    running = sorted(pid for t in trees for pid in t.running)
    if running:
        raise StoreError(f"app {app!r} is running (pid {', '.join(map(str, running))})",
                         "stop it first, then run sandrun rm again")
    state_path = store.state / app
    if not trees and not (state and state_path.exists()) and not user:
        raise StoreError(f"app {app!r} is not installed in {store.root}",
                         "`sandrun list` shows what is installed")
    for info in trees:
        store.remove_tree(info.sha256)
    result = RemovedApp([t.sha256 for t in trees],
                        _remove_stale_records(store, set(store.tree_names())))
    if state:
        result.state = store.remove_state(app)
        result.forgotten += [str(path) for path in consent.forget(store, app)]
    if user:
        name = default_user_name(app)
        if remove_default_user(name):
            result.user = name
    return result


def describe_removal(app: str, removed: RemovedApp, store_root: Path) -> list[str]:
    lines = [f"removed tree {sha[:12]} of {app}" for sha in removed.trees]
    lines += [f"removed launch record {name}" for name in removed.records]
    if removed.state:
        lines.append(f"removed state dir {store_root / 'state' / app}")
    lines += [f"removed {path}" for path in removed.forgotten]
    if removed.user:
        lines.append(f"removed system user {removed.user}")
    return lines or [f"nothing of {app} to remove"]
