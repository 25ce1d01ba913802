"""Per-launch resource limits (sandbox/cgroup.py) on the real kernel, and v2 logic on a fake.

This machine's layout is hybrid: the memory, pids and cpu controllers are on cgroup v1, and the
v2 mount has none of them (only hugetlb). So:
- the v1 path is tested for real: a fork bomb and a memory hog, each run as nobody in its
  launch cgroup, hit the limit (EAGAIN, OOM SIGKILL of the hog only); a CPU spinner gets its
  quota; remove() kills leftovers both through v2's cgroup.kill and through v1's pid lists;
- the v2 delegation (subtree_control, the no-internal-processes rule, the launcher's leaf) is
  tested for real with the hugetlb controller in a throwaway cgroup of the v2 mount, and the
  limit files against a fake cgroup v2 tree (FakeCgroupfs emulates what the kernel does on
  mkdir, rmdir and writes; its pids are beyond pid_max, so nothing real is ever signalled).
Attack code runs only as nobody: every probe drops privileges first and asserts it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import NOBODY, fork_and_report, fork_as_nobody, read_within, wait_for

from sandrun.errors import EnforcementError
from sandrun.sandbox import cgroup

MiB = 1 << 20
FAKE_PID = "4194305"  # above the largest pid_max (2**22): no real process has it
OTHER_FAKE_PID = "4194306"
UNIFIED = "/sys/fs/cgroup/unified"


# ---------------------------------------------------------------- helpers


def alive_as_nobody(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process of nobody: a leftover of a probe."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return (fields["State"].split()[0] != "Z"
            and int(fields["Uid"].split()[0]) == NOBODY)


def oom_kills(memory_dir: str) -> int:
    """OOM kills counted in a v1 memory cgroup."""
    fields = dict(line.split() for line in Path(memory_dir, "memory.oom_control").read_text()
                  .splitlines())
    return int(fields["oom_kill"])


def force_remove(path: str) -> None:
    """Safety net for a failed test: kill what our probes left in `path` and rmdir it."""
    for _ in range(100):
        if not os.path.isdir(path):
            return
        try:
            for pid in Path(path, "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            os.rmdir(path)
        except OSError:
            time.sleep(0.02)


class Launches:
    """Creates launch cgroups with unique names and removes every one at teardown."""

    def __init__(self) -> None:
        self.made: list[cgroup.Cgroup] = []
        self.dirs: list[str] = []
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"sandrun-test-{os.getpid()}-{self.count}"

    def create(self, limits: dict, layout: cgroup.Layout | None = None,
               name: str | None = None) -> cgroup.Cgroup:
        made = cgroup.create(name or self.name(), limits, layout)
        self.made.append(made)
        self.dirs += made.dirs.values()
        return made

    def cleanup(self) -> None:
        for made in self.made:
            with contextlib.suppress(EnforcementError):
                made.remove()
        for path in self.dirs:
            force_remove(path)
            with contextlib.suppress(OSError):  # `sandrun`, unless another launch uses it
                os.rmdir(os.path.dirname(path))
        assert not [p for p in self.dirs if os.path.exists(p)], "launch cgroups left behind"


@pytest.fixture
def launches(require_root: None) -> Iterator[Launches]:
    made = Launches()
    try:
        yield made
    finally:
        made.cleanup()


def v1_only(layout: cgroup.Layout) -> cgroup.Layout:
    """The real layout without v2: remove() must then kill by listing pids."""
    return cgroup.Layout(None, dict(layout.v1), layout.ops)


# ---------------------------------------------------------------- the fake cgroup v2 tree


class FakeCgroupfs(cgroup.Kernfs):
    """What the kernel does for cgroup v2 on mkdir, rmdir and writes, on a plain temp dir.

    Enough of the real rules for sandrun's logic: a child's cgroup.controllers is its parent's
    subtree_control; enabling needs the controller available and, except at the root (which
    has no cgroup.type), no process in the cgroup (the no-internal-processes rule); a process
    cannot join a non-root cgroup that delegates; rmdir needs no process and no child.
    cgroup.kill only forgets the pids (fake ones) and records them.
    """

    FILES: ClassVar[dict[str, dict[str, str]]] = {
        "memory": {"memory.max": "max", "memory.swap.max": "max", "memory.oom.group": "0"},
        "pids": {"pids.max": "max"},
        "cpu": {"cpu.max": "max 100000", "cpu.weight": "100"}}

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.killed: list[str] = []
        self.writes: list[tuple[str, str, str]] = []

    @staticmethod
    def _dir(dir_fd: int) -> Path:
        return Path(os.readlink(f"/proc/self/fd/{dir_fd}"))

    def _rel(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.mount)).removeprefix(".")

    def populate(self, path: Path, controllers: list[str], root: bool = False) -> None:
        files = {"cgroup.controllers": " ".join(controllers), "cgroup.subtree_control": "",
                 "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n"}
        if not root:
            files |= {"cgroup.type": "domain", "cgroup.kill": ""}
            for controller in controllers:
                files |= self.FILES.get(controller, {})
        for name, text in files.items():
            if not (path / name).exists():
                (path / name).write_text(text)

    def mkdir(self, dir_fd: int, name: str) -> None:
        parent = self._dir(dir_fd)
        os.mkdir(name, 0o755, dir_fd=dir_fd)
        self.populate(parent / name, (parent / "cgroup.subtree_control").read_text().split())

    def rmdir(self, dir_fd: int, name: str) -> None:
        path = self._dir(dir_fd) / name
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "gone", str(path))
        if (path / "cgroup.procs").read_text().split() or any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.EBUSY, "busy", str(path))
        for file in path.iterdir():
            file.unlink()
        path.rmdir()

    def write(self, dir_fd: int, name: str, text: str) -> None:
        path = self._dir(dir_fd)
        self.writes.append((self._rel(path), name, text))
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such interface file", str(file))
        is_root = not (path / "cgroup.type").exists()
        if name == "cgroup.subtree_control":
            enabled = set(file.read_text().split())
            available = (path / "cgroup.controllers").read_text().split()
            for token in text.split():
                if token[1:] not in available:
                    raise OSError(errno.ENOENT, "controller not available", token)
            wanted = {t[1:] for t in text.split() if t[0] == "+"}
            if wanted - enabled and not is_root and (path / "cgroup.procs").read_text():
                raise OSError(errno.EBUSY, "the cgroup has processes", str(path))
            enabled = (enabled | wanted) - {t[1:] for t in text.split() if t[0] == "-"}
            file.write_text(" ".join(sorted(enabled)))
            for child in path.iterdir():
                if child.is_dir():
                    (child / "cgroup.controllers").write_text(" ".join(sorted(enabled)))
                    self.populate(child, sorted(enabled))
        elif name == "cgroup.procs":
            if not is_root and (path / "cgroup.subtree_control").read_text().split():
                raise OSError(errno.EBUSY, "the cgroup delegates controllers", str(path))
            pid = text.strip()
            for procs in self.mount.rglob("cgroup.procs"):
                pids = procs.read_text().split()
                if pid in pids:
                    pids.remove(pid)
                    procs.write_text("".join(p + "\n" for p in pids))
                    procs.with_name("cgroup.events").write_text(f"populated {int(bool(pids))}\n")
            file.write_text(file.read_text() + pid + "\n")
            (path / "cgroup.events").write_text("populated 1\n")
        elif name == "cgroup.kill":
            self.killed += (path / "cgroup.procs").read_text().split()
            (path / "cgroup.procs").write_text("")
            (path / "cgroup.events").write_text("populated 0\n")
        else:
            file.write_text(text)


class FakeTree:
    """A fake v2 mount in tmp with our cgroup at `ours`, and proc files that point at it."""

    def __init__(self, tmp: Path, ours: str = "/svc", controllers: tuple[str, ...] = (
            "cpu", "memory", "pids"), procs: tuple[str, ...] = ()) -> None:
        self.mount = tmp / "cgroup2"
        self.mount.mkdir(mode=0o755)
        self.fs = FakeCgroupfs(self.mount)
        self.fs.populate(self.mount, list(controllers), root=True)
        (self.mount / "cgroup.subtree_control").write_text(" ".join(controllers))
        self.ours = ours
        self.proc = tmp / "proc"
        self.proc.mkdir()
        path = self.mount
        for part in ours.strip("/").split("/") if ours != "/" else []:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.fs.mkdir(fd, part)
            finally:
                os.close(fd)
            path = path / part
        (path / "cgroup.procs").write_text("".join(p + "\n" for p in procs))
        self.point_at(ours)

    def point_at(self, ours: str) -> None:
        """Write proc/mountinfo and proc/cgroup as a process in `ours` would read them."""
        dev = os.stat(self.mount).st_dev
        (self.proc / "mountinfo").write_text(
            f"41 31 {os.major(dev)}:{os.minor(dev)} / {self.mount} rw,relatime shared:9 - "
            f"cgroup2 cgroup2 rw\n")
        (self.proc / "cgroup").write_text(f"0::{ours}\n")

    def layout(self) -> cgroup.Layout:
        return cgroup.discover(str(self.proc), self.fs)

    def at(self, rel: str) -> Path:
        return self.mount / rel.strip("/")

    def snapshot(self) -> dict[str, str]:
        return {str(p.relative_to(self.mount)): p.read_text() if p.is_file() else "<dir>"
                for p in sorted(self.mount.rglob("*"))}


@pytest.fixture
def fake(tmp_path: Path, require_root: None) -> FakeTree:
    return FakeTree(tmp_path)


# ---------------------------------------------------------------- real: v1 limits hit


def test_tasks_limit_stops_a_fork_bomb_with_eagain(launches: Launches) -> None:
    """(a) tasks=20: a probe as nobody forks until EAGAIN after 19 children (it is the 20th
    task); remove() kills the probe and every child, and the cgroup dirs are gone."""
    made = launches.create({"tasks": 20, "required": ["tasks"]})
    assert made.report[1][:2] == ("tasks", "enforced")
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()
    hold_r, hold_w = os.pipe()  # the children block on it; EOF only when the test ends

    def bomb() -> None:
        os.read(go_r, 1)
        forked, failed = [], 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError as exc:
                failed = exc.errno or -1
                break
            if pid == 0:
                os.read(hold_r, 1)
                os._exit(0)
            forked.append(pid)
        os.write(report_w, json.dumps({"forked": forked, "errno": failed}).encode() + b"\n")
        os.read(hold_r, 1)

    probe = fork_as_nobody(bomb)
    for fd in (go_r, report_w, hold_r):
        os.close(fd)
    try:
        made.enter(probe)
        os.write(go_w, b"x")
        report = json.loads(read_within(report_r, 20))
        assert report["errno"] == errno.EAGAIN, report
        assert len(report["forked"]) == 20 - 1
        pids_dir = made.dirs["pids"]
        assert Path(pids_dir, "pids.current").read_text().strip() == "20"
        dirs = list(made.dirs.values())
        made.remove()
        status, _ = wait_for(probe, 10)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert not [d for d in dirs if os.path.exists(d)]
        deadline = time.monotonic() + 5
        while [p for p in report["forked"] if alive_as_nobody(p)]:
            assert time.monotonic() < deadline, "children of the fork bomb survived remove()"
            time.sleep(0.02)
    finally:
        os.close(hold_w)  # releases anything left if the test failed early
        os.close(go_w)
        os.close(report_r)
        try:
            os.kill(probe, signal.SIGKILL)
            os.waitpid(probe, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_memory_limit_oom_kills_the_hog_only(launches: Launches) -> None:
    """(b) memory=64 MiB: a probe as nobody that fills 256 MiB in 16 MiB steps is killed by
    the cgroup's OOM killer (SIGKILL) partway; the test process is untouched."""
    made = launches.create({"memory": 64 * MiB, "required": ["memory"]})
    memory_dir = made.dirs["memory"]
    own_dir = cgroup.discover().v1["memory"].dir
    own_kills = oom_kills(own_dir)
    assert Path(memory_dir, "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
    go_r, go_w = os.pipe()
    report_r, report_w = os.pipe()

    def hog() -> None:
        os.read(go_r, 1)
        held = []
        for _ in range(16):
            held.append(bytearray(b"\x01") * (16 * MiB))  # written, so really charged
            os.write(report_w, b".")
        os.write(report_w, b"survived\n")

    probe = fork_as_nobody(hog)
    os.close(go_r)
    os.close(report_w)
    try:
        made.enter(probe)
        os.write(go_w, b"x")
        status, _ = wait_for(probe, 30)
        steps = read_within(report_r, 5, until=b"never")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, steps
        assert b"survived" not in steps and 1 <= len(steps) < 4, steps
        assert oom_kills(memory_dir) == 1
        assert oom_kills(own_dir) == own_kills  # the OOM kill stayed inside the launch cgroup
        assert int(Path(memory_dir, "memory.max_usage_in_bytes").read_text()) <= 64 * MiB
    finally:
        os.close(go_w)
        os.close(report_r)
        try:
            os.kill(probe, signal.SIGKILL)
            os.waitpid(probe, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    made.remove()
    assert not os.path.exists(memory_dir)


def test_cpu_quota_throttles_a_spinner(launches: Launches) -> None:
    """cpu_quota=20 (% of one CPU): a probe spinning for 1 s of wall time gets ~0.2 s of CPU."""
    made = launches.create({"cpu_quota": 20, "cpu_weight": 50, "required": ["cpu_quota"]})
    cpu_dir = made.dirs[next(k for k in made.dirs if "cpu" in k.split(","))]
    assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert Path(cpu_dir, "cpu.shares").read_text().strip() == str(50 * 1024 // 100)
    go_r, go_w = os.pipe()

    def spin() -> None:
        os.read(go_r, 1)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass

    probe = fork_as_nobody(spin)
    os.close(go_r)
    try:
        made.enter(probe)
        os.write(go_w, b"x")
        status, cpu_seconds = wait_for(probe, 20)
    finally:
        os.close(go_w)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert 0.05 < cpu_seconds < 0.45, cpu_seconds  # ~1.0 without the quota


# ---------------------------------------------------------------- real: remove()


def _leftovers(made: cgroup.Cgroup) -> tuple[int, int]:
    """A probe as nobody in `made` that forks a grandchild, both sleeping: (probe, grandchild)."""
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()

    def body() -> None:
        os.read(go_r, 1)
        grandchild = os.fork()
        if grandchild == 0:
            os.setsid()  # out of the probe's session and process group: only the cgroup finds it
            time.sleep(60)
            os._exit(0)
        os.write(report_w, f"{grandchild}\n".encode())
        time.sleep(60)

    probe = fork_as_nobody(body)
    os.close(go_r)
    os.close(report_w)
    made.enter(probe)
    os.write(go_w, b"x")
    grandchild = int(read_within(report_r, 10))
    os.close(go_w)
    os.close(report_r)
    return probe, grandchild


@pytest.mark.parametrize("how", ["cgroup.kill (v2)", "listed pids (v1 only)"])
def test_remove_kills_leftovers_and_the_dirs_are_gone(launches: Launches, how: str) -> None:
    """(c) remove() after the app "exited" with processes left: they are SIGKILLed, the launch
    dirs (and the `sandrun` parents, when no other launch uses them) are gone; a second
    remove() is a no-op."""
    layout = cgroup.discover()
    if how.startswith("listed"):
        layout = v1_only(layout)
    made = launches.create({"tasks": 50, "memory": 256 * MiB}, layout)
    assert ("v2" in made.dirs) == how.startswith("cgroup.kill")
    dirs = list(made.dirs.values())
    probe, grandchild = _leftovers(made)
    try:
        assert alive_as_nobody(grandchild)
        made.remove()
        status, _ = wait_for(probe, 10)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        deadline = time.monotonic() + 5
        while alive_as_nobody(grandchild):
            assert time.monotonic() < deadline, "the grandchild survived remove()"
            time.sleep(0.02)
        assert not [d for d in dirs if os.path.exists(d)]
        assert made.dirs == {}
        made.remove()  # idempotent
    finally:
        for pid in (probe, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(probe, 0)


def test_remove_of_a_cgroup_already_gone_does_not_raise(launches: Launches) -> None:
    made = launches.create({"tasks": 5})
    for path in made.dirs.values():
        os.rmdir(path)
    made.remove()
    assert made.dirs == {}


def test_a_stale_empty_launch_dir_is_reused_a_busy_one_refused(launches: Launches) -> None:
    """A launcher SIGKILLed with pid N leaves its empty cgroup: the next launcher with pid N
    reuses it. One that holds processes belongs to a live launch: refused, left alone."""
    name = launches.name()
    stale = launches.create({"tasks": 5}, v1_only(cgroup.discover()), name=name)
    stale_dir = stale.dirs["pids"]
    Path(stale_dir, "pids.max").write_text("3")
    fresh = launches.create({"tasks": 7}, v1_only(cgroup.discover()), name=name)
    assert Path(stale_dir, "pids.max").read_text().strip() == "7"
    probe = fork_as_nobody(lambda: time.sleep(60))
    try:
        fresh.enter(probe)
        with pytest.raises(EnforcementError, match="already exists and holds processes"):
            cgroup.create(name, {"tasks": 9}, v1_only(cgroup.discover()))
        assert Path(stale_dir, "cgroup.procs").read_text().split() == [str(probe)]
        assert Path(stale_dir, "pids.max").read_text().strip() == "7"
    finally:
        fresh.remove()
        wait_for(probe, 10)


# ---------------------------------------------------------------- refusals


def test_required_limit_without_controller_refuses_and_creates_nothing(
        tmp_path: Path, require_root: None) -> None:
    """(d) The fake v2 tree offers pids and cpu, no memory, and there is no v1: a required
    memory limit refuses before anything is made; a not-required one is skipped."""
    fake_tree = FakeTree(tmp_path, controllers=("cpu", "pids"))
    before = fake_tree.snapshot()
    limits = {"memory": 64 * MiB, "tasks": 10, "required": ["memory", "tasks"]}
    with pytest.raises(EnforcementError) as refused:
        cgroup.create("sandrun-app-1", limits, fake_tree.layout())
    assert "the memory limit (67108864) cannot be enforced here" in refused.value.message
    assert "no memory controller available" in refused.value.message
    assert "tasks" not in refused.value.message
    assert "required" in refused.value.hint
    assert refused.value.exit_code == 125
    assert fake_tree.snapshot() == before
    assert fake_tree.fs.writes == []

    limits["required"] = ["tasks"]
    made = cgroup.create("sandrun-app-1", limits, fake_tree.layout())
    assert made.report[0][:2] == ("memory", "not enforced")
    assert made.report[0][2].endswith("not enforced (not required)")
    assert made.report[1] == ("tasks", "enforced", "cgroup v2 pids.max=10 in "
                              f"{fake_tree.at('/svc/sandrun/sandrun-app-1')}")
    made.remove()
    after = fake_tree.snapshot()
    assert after.pop("svc/cgroup.subtree_control") == "pids"  # the delegation stays
    before.pop("svc/cgroup.subtree_control")
    assert after == before


def test_required_limit_refused_on_the_real_machine_creates_nothing(require_root: None) -> None:
    """(d) The real layout without its v1 memory hierarchy (v2 has no memory controller here):
    refused, and no launch cgroup appears in the real pids or v2 hierarchy."""
    real = cgroup.discover()
    layout = cgroup.Layout(real.v2, {k: v for k, v in real.v1.items() if k != "memory"})
    name = f"sandrun-test-{os.getpid()}-refused"
    with pytest.raises(EnforcementError, match=r"memory limit .* cannot be enforced here"):
        cgroup.create(name, {"memory": 64 * MiB, "tasks": 5, "required": ["memory"]}, layout)
    for hierarchy in (real.v1["pids"], real.v2):
        assert hierarchy is not None
        assert not os.path.exists(f"{hierarchy.dir}/sandrun/{name}")


@pytest.mark.parametrize(("limits", "match"), [
    ({"memory": 0}, "invalid memory limit 0"),
    ({"tasks": True}, "invalid tasks limit True"),
    ({"cpu_weight": 10_001}, "invalid cpu_weight limit"),
    ({"cpu_quota": "50"}, "invalid cpu_quota limit"),
    ({"tasks": 5, "required": "tasks"}, "must be a list"),
    ([("tasks", 5)], "must be a table"),
])
def test_invalid_limits_are_refused(limits: object, match: str) -> None:
    with pytest.raises(EnforcementError, match=match):
        cgroup.plan(limits, cgroup.Layout(None, {}))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "../x", "a/b", "App", ".hidden", "-x", "x" * 101,
                                  "sandrun", "sandrun-launcher", "a b", "a\nb"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(EnforcementError, match="invalid cgroup name"):
        cgroup.create(name, {}, cgroup.Layout(None, {}))


def test_no_limits_make_no_cgroup() -> None:
    made = cgroup.create("sandrun-app-1", {"tasks": None}, cgroup.Layout(None, {}))
    assert made.dirs == {}
    assert made.report[1] == ("tasks", "not enforced", "no limit set")
    made.enter(os.getpid())
    made.remove()


# ---------------------------------------------------------------- plan()


def test_plan_on_the_hybrid_machine(require_root: None) -> None:
    """(e) Hybrid layout: every limit through cgroup v1, under this process's own cgroups."""
    layout = cgroup.discover()
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text()
               .splitlines())
    memory_dir = f"/sys/fs/cgroup/memory{own['memory'].rstrip('/')}"
    rows = cgroup.plan({"memory": 512 * MiB, "tasks": 64, "cpu_quota": 150, "cpu_weight": 100},
                       layout)
    assert rows == [
        ("memory", "enforced", f"cgroup v1 memory.limit_in_bytes={512 * MiB}, "
         f"memory.memsw.limit_in_bytes={512 * MiB} in {memory_dir}/sandrun/<launch>"),
        ("tasks", "enforced", "cgroup v1 pids.max=64 in /sys/fs/cgroup/pids/sandrun/<launch>"),
        ("cpu_quota", "enforced", "cgroup v1 cpu.cfs_period_us=100000, cpu.cfs_quota_us=150000 "
         "in /sys/fs/cgroup/cpu/sandrun/<launch>"),
        ("cpu_weight", "enforced", "cgroup v1 cpu.shares=1024 in "
         "/sys/fs/cgroup/cpu/sandrun/<launch>"),
    ]
    assert cgroup.plan({"tasks": 64}, layout)[0] == ("memory", "not enforced", "no limit set")


def test_plan_on_a_v2_tree(fake: FakeTree) -> None:
    """(e) v2 layout: every limit through v2 files; nothing is created by plan()."""
    before = fake.snapshot()
    rows = cgroup.plan({"memory": 512 * MiB, "tasks": 64, "cpu_quota": 50, "cpu_weight": 300,
                        "required": ["memory"]}, fake.layout())
    where = f"{fake.at('/svc')}/sandrun/<launch>"
    assert rows == [
        ("memory", "enforced", f"cgroup v2 memory.max={512 * MiB}, memory.swap.max=0, "
         f"memory.oom.group=1 in {where}"),
        ("tasks", "enforced", f"cgroup v2 pids.max=64 in {where}"),
        ("cpu_quota", "enforced", f"cgroup v2 cpu.max=50000 100000 in {where}"),
        ("cpu_weight", "enforced", f"cgroup v2 cpu.weight=300 in {where}"),
    ]
    assert fake.snapshot() == before


def test_plan_says_why_a_limit_is_not_enforced(tmp_path: Path, require_root: None) -> None:
    tree = FakeTree(tmp_path, controllers=("pids",))
    rows = cgroup.plan({"memory": 64 * MiB, "cpu_quota": 50, "required": ["memory"]},
                       tree.layout())
    assert rows[0] == ("memory", "not enforced", f"no memory controller available: cgroup v2 "
                       f"at {tree.mount} does not offer it to {tree.at('/svc')} and no cgroup v1 "
                       f"memory hierarchy is mounted: not enforced (required: the launch is "
                       f"refused)")
    assert rows[2][2].endswith("not enforced (not required)")
    rows = cgroup.plan({"tasks": 5}, cgroup.Layout(None, {}))
    assert rows[1][2].startswith("no pids controller available: there is no cgroup v2 mount")


# ---------------------------------------------------------------- v2 logic on the fake tree


def test_v2_create_enter_remove_on_a_fake_tree(fake: FakeTree) -> None:
    """Controllers enabled at both levels, limit files written, pid moved, cgroup.kill used."""
    before = fake.snapshot()
    limits = {"memory": 256 * MiB, "tasks": 32, "cpu_quota": 200, "cpu_weight": 10_000,
              "required": ["memory", "tasks", "cpu_quota", "cpu_weight"]}
    made = cgroup.create("sandrun-app-7", limits, fake.layout())
    launch = fake.at("/svc/sandrun/sandrun-app-7")
    assert made.dirs == {"v2": str(launch)}
    assert [r[1] for r in made.report] == ["enforced"] * 4
    assert fake.at("/svc/cgroup.subtree_control").read_text() == "cpu memory pids"
    assert fake.at("/svc/sandrun/cgroup.subtree_control").read_text() == "cpu memory pids"
    assert {f: (launch / f).read_text() for f in ("memory.max", "memory.swap.max",
                                                  "memory.oom.group", "pids.max", "cpu.max",
                                                  "cpu.weight")} == {
        "memory.max": str(256 * MiB), "memory.swap.max": "0", "memory.oom.group": "1",
        "pids.max": "32", "cpu.max": "200000 100000", "cpu.weight": "10000"}
    made.enter(int(FAKE_PID))
    assert (launch / "cgroup.procs").read_text().split() == [FAKE_PID]
    made.remove()
    assert fake.fs.killed == [FAKE_PID]
    assert not launch.exists() and not fake.at("/svc/sandrun").exists()
    after = fake.snapshot()
    assert after.pop("svc/cgroup.subtree_control") == "cpu memory pids"  # delegation stays
    before.pop("svc/cgroup.subtree_control")
    assert after == before


def test_v2_only_this_process_in_its_cgroup_moves_into_a_leaf(tmp_path: Path,
                                                              require_root: None) -> None:
    """Our v2 cgroup holds only us (a service, a Delegate=yes scope): we move into
    sandrun-launcher, then delegate; the next discover() uses the leaf's parent again."""
    me = str(os.getpid())
    tree = FakeTree(tmp_path, procs=(me,))
    plan = cgroup.plan({"tasks": 8}, tree.layout())
    assert plan[1][1] == "enforced" and "first moves into" in plan[1][2]
    made = cgroup.create("sandrun-app-2", {"tasks": 8, "required": ["tasks"]}, tree.layout())
    assert tree.at("/svc/sandrun-launcher/cgroup.procs").read_text().split() == [me]
    assert tree.at("/svc/cgroup.procs").read_text() == ""
    assert tree.at("/svc/sandrun/sandrun-app-2/pids.max").read_text() == "8"
    made.remove()
    tree.point_at("/svc/sandrun-launcher")
    layout = tree.layout()
    assert layout.v2 is not None and layout.v2.path == "/svc"
    again = cgroup.create("sandrun-app-3", {"tasks": 9}, layout)
    assert again.dirs == {"v2": str(tree.at("/svc/sandrun/sandrun-app-3"))}
    again.remove()
    assert not tree.at("/svc/sandrun-launcher/sandrun-launcher").exists()


def test_v2_cgroup_shared_with_other_processes_cannot_delegate(tmp_path: Path,
                                                               require_root: None) -> None:
    """A login session's cgroup holds the shell too: the no-internal-processes rule forbids
    delegating; a required limit refuses with that reason, and nothing changes."""
    tree = FakeTree(tmp_path, procs=(str(os.getpid()), OTHER_FAKE_PID))
    before = tree.snapshot()
    with pytest.raises(EnforcementError) as refused:
        cgroup.create("sandrun-app-4", {"memory": 64 * MiB, "required": ["memory"]},
                      tree.layout())
    assert "holds other processes" in refused.value.message
    assert "no-internal-processes" in refused.value.message
    assert "Delegate=yes" in refused.value.hint
    assert tree.snapshot() == before
    row = cgroup.plan({"memory": 64 * MiB}, tree.layout())[0]
    assert row[1] == "not enforced" and "no-internal-processes" in row[2]


def test_v2_parent_owned_by_another_user_is_refused(fake: FakeTree) -> None:
    """`sandrun` under our cgroup made by someone else is not trusted."""
    parent = fake.at("/svc/sandrun")
    fd = os.open(fake.at("/svc"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fake.fs.mkdir(fd, "sandrun")
    finally:
        os.close(fd)
    os.chown(parent, NOBODY, NOBODY)
    with pytest.raises(EnforcementError, match="cannot create cgroup sandrun-app-5 under"):
        cgroup.create("sandrun-app-5", {"tasks": 3, "required": ["tasks"]}, fake.layout())
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == []


def test_discover_handles_namespaced_and_escaped_mounts(tmp_path: Path) -> None:
    """mountinfo roots below the hierarchy root (containers), octal escapes, co-mounted
    controllers, and hierarchies that do not show our cgroup."""
    (tmp_path / "mountinfo").write_text(
        "30 1 0:5 / / rw - ext4 /dev/vda rw\n"
        "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n"
        "39 31 0:36 /elsewhere /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n")
    (tmp_path / "cgroup").write_text(
        "9:name=systemd:/x\n8:pids:/docker/abc\n4:memory:/docker/abc\n"
        "1:cpu,cpuacct:/docker/abc/sub\n0::/docker/abc/sandrun-launcher\n")
    layout = cgroup.discover(str(tmp_path))
    assert layout.v2 is not None
    assert (layout.v2.dir, layout.v2.dev) == ("/sys/fs/cgroup/unified/docker/abc", (0, 38))
    assert layout.v1["cpu"].dir == "/sys/fs/cgroup/cpu,cpuacct/sub"
    assert layout.v1["cpu"].controllers == ("cpu", "cpuacct")
    assert layout.v1["memory"].dir == "/sys/fs/cgroup/mem ory/docker/abc"
    assert "pids" not in layout.v1  # mounted from /elsewhere: our cgroup is not visible there


def test_discover_on_this_machine(require_root: None) -> None:
    layout = cgroup.discover()
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text()
               .splitlines())
    assert layout.v2 is not None and layout.v2.dir == UNIFIED.rstrip("/") + own[""].rstrip("/")
    for controller in ("memory", "pids", "cpu"):
        assert layout.v1[controller].version == 1
        assert layout.v1[controller].path == own[next(k for k in own
                                                      if controller in k.split(","))]


# ---------------------------------------------------------------- v2 delegation, for real


@pytest.fixture
def hugetlb_in_v2(require_root: None) -> Iterator[Path]:
    """The real v2 mount with hugetlb (the one controller v2 has here) offered to children of
    its root, restored afterwards; the tests work in a throwaway cgroup under it."""
    root = Path(UNIFIED)
    if "hugetlb" not in (root / "cgroup.controllers").read_text().split():
        pytest.skip("the v2 mount has no controller at all")  # CI: hybrid layout has hugetlb
    was_on = "hugetlb" in (root / "cgroup.subtree_control").read_text().split()
    if not was_on:
        (root / "cgroup.subtree_control").write_text("+hugetlb")
    box = root / f"sandrun-test-{os.getpid()}"
    box.mkdir()
    try:
        yield box
    finally:
        for path in sorted(box.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir():
                force_remove(str(path))
        force_remove(str(box))
        if not was_on:
            (root / "cgroup.subtree_control").write_text("-hugetlb")


def _delegate_in_child(box: Path, with_sibling: bool) -> dict[str, object]:
    """In a forked root child that moved itself into `box`: _make_node with hugetlb."""
    sibling = 0
    if with_sibling:
        sibling = os.fork()
        if sibling == 0:
            time.sleep(60)
            os._exit(0)
        (box / "cgroup.procs").write_text(str(sibling))

    def delegate() -> dict[str, object]:
        result: dict[str, object] = {}
        (box / "cgroup.procs").write_text(str(os.getpid()))
        dev = os.stat(box).st_dev
        hierarchy = cgroup.Hierarchy(2, UNIFIED, "/" + str(box.relative_to(UNIFIED)),
                                     (os.major(dev), os.minor(dev)))
        base = cgroup._open_cgroup(hierarchy)
        try:
            node = cgroup._make_node(hierarchy, "launch", base, {"hugetlb"}, cgroup.KERNFS)
            result["made"] = node.path
            node.close()
        except OSError as exc:
            result["errno"] = exc.errno
        result["cgroup"] = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1]
        return result

    try:
        # Root: sandrun's own cgroup code, not an attack probe.
        return dict(fork_and_report(delegate, as_root=True, timeout=10).value)
    finally:
        if sibling:
            os.kill(sibling, signal.SIGKILL)
            wait_for(sibling, 10)


def test_v2_delegation_for_real_with_hugetlb(hugetlb_in_v2: Path) -> None:
    """The kernel's no-internal-processes rule, and the leaf move that satisfies it: a
    process alone in its cgroup moves into sandrun-launcher and delegates hugetlb down to the
    launch cgroup; with another process in the cgroup, enabling fails (EBUSY), nobody moves."""
    box = hugetlb_in_v2
    result = _delegate_in_child(box, with_sibling=False)
    assert result == {"made": f"{box}/sandrun/launch",
                      "cgroup": f"0::/{box.name}/sandrun-launcher"}, result
    assert (box / "cgroup.subtree_control").read_text().split() == ["hugetlb"]
    assert (box / "sandrun" / "cgroup.subtree_control").read_text().split() == ["hugetlb"]
    assert "hugetlb" in (box / "sandrun" / "launch" / "cgroup.controllers").read_text().split()

    shared = box / "shared"
    shared.mkdir()
    result = _delegate_in_child(shared, with_sibling=True)
    assert result.get("errno") == errno.EBUSY, result
    assert result["cgroup"] == f"0::/{box.name}/shared", result
    assert not (shared / "sandrun-launcher").exists() and not (shared / "sandrun").exists()


def test_real_v2_tracking_cgroup_is_made_beside_v1(launches: Launches) -> None:
    """Hybrid: the launch cgroup is also made in v2 (no controller needed) so remove() can
    use cgroup.kill; it holds the same processes as the v1 ones."""
    made = launches.create({"tasks": 10})
    assert set(made.dirs) == {"pids", "v2"}
    assert made.dirs["v2"] == f"{cgroup.discover().v2.dir.rstrip('/')}/sandrun/{made.name}"
    probe = fork_as_nobody(lambda: time.sleep(60))
    try:
        made.enter(probe)
        for path in made.dirs.values():
            assert Path(path, "cgroup.procs").read_text().split() == [str(probe)]
    finally:
        made.remove()
        status, _ = wait_for(probe, 10)
    assert os.WTERMSIG(status) == signal.SIGKILL
