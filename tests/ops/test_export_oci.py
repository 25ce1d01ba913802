"""`sandrun export oci`: the exported OCI bundle, RUN with runc, keeps the sandbox of exec.

tests/probe/sandrun_probe.py is bundled as the app "ociprobe", exported, and run with
`runc run --bundle DIR <unique id>` (deleted afterwards). Inside, it attempts each
attack and reports one JSON line; every assertion names the errno and who must produce
it: the runtime (read-only mounts, namespaces, uid, no capabilities), the applier's
Landlock ruleset, MDWE and its seccomp filter, or the outer filter runc loads. Controls
show the attacks are real: the same container without any seccomp filter lets TIOCSTI
through, and a naive 64-bit EQ translation lets TIOCSTI with high bits through.

The filter runc really built is read back from a created container with
PTRACE_SECCOMP_GET_FILTER and compared with sandrun's own on every syscall.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import itertools
import json
import marshal
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import NOBODY, TESTS, free_ports, need, remove_user, run_sandrun
from wheelcraft import make_wheel

from sandrun.config.profile import load_profile
from sandrun.errors import EnforcementError
from sandrun.launch.launcher import _seccomp_policy
from sandrun.ops.export.oci import APPLIER_SYSCALLS, check_outer, outer_seccomp
from sandrun.sandbox import seccomp

PROBE = TESTS / "probe" / "sandrun_probe.py"
APP = "ociprobe"
APP_USER = f"sandrun-{APP}"
RUN_TIMEOUT = 60
SCHEMA_DIR = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SECCOMP_GET_FILTER = 16, 17, 0x420C
WALL = 0x40000000
TIOCSTI = 0x5412

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp",
                                     "require_runc")
_ids = itertools.count()


@pytest.fixture(scope="session")
def require_runc() -> None:
    need(shutil.which("runc") is not None, "runc is not installed (apt-get install runc)")


# ------------------------------------------------------------------ fixtures


@dataclass
class Lab:
    root: Path  # /var/lib/sandrun-oci-XXXX, 0755
    store: Path
    bundle: Path  # the probe, default profile embedded
    greedy: Path  # the probe, embedding a profile beyond default
    hidden: Path  # a world-readable file the container does not mount
    visible: Path  # a world-readable file under /usr (mounted) that no rule grants


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int, require_seccomp: None,
        require_runc: None) -> Iterator[Lab]:
    # Not under /tmp: the export refuses bind sources in directories others can write.
    root = Path(tempfile.mkdtemp(prefix="sandrun-oci-", dir="/var/lib"))
    visible = Path(f"/usr/local/share/sandrun-oci-{os.getpid()}-{root.name}.txt")
    remove_user(APP_USER)
    try:
        root.chmod(0o755)
        store = root / "store"
        store.mkdir(mode=0o755)
        hidden = root / "secret.txt"
        hidden.write_text("outside every grant and every mount\n")
        hidden.chmod(0o644)
        visible.write_text("visible in the container, granted by no rule\n")
        visible.chmod(0o644)
        make_wheel(root / "wheels", "sandrun_probe", "1.0",
                   {"sandrun_probe.py": PROBE.read_text()})
        bundles = {}
        for name, profile in (("bundle", 'extends = "default"\n'),
                              ("greedy", 'extends = "default"\n[network]\nbind_tcp = [8000]\n')):
            (root / f"{name}.toml").write_text(profile)
            out = root / f"{name}.pyz"
            proc = run_sandrun("bundle", "sandrun_probe", "--no-index", "--find-links",
                               str(root / "wheels"), "-e", "sandrun_probe:main", "--name", APP,
                               "-p", str(root / f"{name}.toml"), "-o", str(out),
                               timeout=RUN_TIMEOUT)
            assert proc.returncode == 0, proc.stderr
            bundles[name] = out
        yield Lab(root, store, bundles["bundle"], bundles["greedy"], hidden, visible)
    finally:
        visible.unlink(missing_ok=True)
        remove_user(APP_USER)
        shutil.rmtree(root, ignore_errors=True)


def export(lab: Lab, name: str, *extra: str, args: tuple[str, ...] = (),
           bundle: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_sandrun("export", "oci", "--store", str(lab.store), *extra,
                       str(bundle or lab.bundle), "-o", str(lab.root / name), "--", *args,
                       timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def default_oci(lab: Lab) -> Path:
    proc = export(lab, "oci-default")
    assert proc.returncode == 0, proc.stderr
    assert f"runc run --bundle {lab.root / 'oci-default'}" in proc.stdout
    return lab.root / "oci-default"


def written(proc: subprocess.CompletedProcess[str]) -> Path:
    """The bundle directory `sandrun export oci` says it wrote."""
    return Path(proc.stdout.split("wrote OCI runtime bundle ", 1)[1].split(" (")[0])


def config_of(oci: Path) -> dict[str, Any]:
    return json.loads((oci / "config.json").read_text())  # type: ignore[no-any-return]


def variant(oci: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A sibling OCI bundle: an edited copy of config.json over the same rootfs."""
    config = copy.deepcopy(config_of(oci))
    config["root"]["path"] = str(oci / "rootfs")
    edit(config)
    out = oci.parent / f"{oci.name}-{name}-{next(_ids)}"
    out.mkdir(mode=0o700)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def with_args(*attacks: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        args = config["process"]["args"]
        config["process"]["args"] = [*args[:args.index("--") + 1], *attacks]
    return edit


def bypass_applier(*attacks: str) -> Callable[[dict[str, Any]], None]:
    """Run the app straight from the runtime: only runc's half (and its outer filter)."""
    def edit(config: dict[str, Any]) -> None:
        spec = spec_at(Path(config["root"]["path"]))
        config["process"]["args"] = [*spec["argv"], *attacks]
    return edit


@dataclass
class Run:
    returncode: int
    output: str
    stderr: str

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        lines = [line.strip() for line in self.output.splitlines()
                 if line.strip().startswith("{")]
        assert self.returncode == 0 and len(lines) == 1, (
            f"the probe did not report (exit {self.returncode})\noutput: {self.output}\n"
            f"stderr: {self.stderr}")
        return json.loads(lines[0])  # type: ignore[no-any-return]


def container_id() -> str:
    return f"sandrun-oci-test-{os.getpid()}-{next(_ids)}"


def runc_run(oci: Path, *, leak: Path | None = None) -> Run:
    """`runc run` in the foreground (stdio through runc's pipes), then delete. `leak`:
    open it as fd 3 of runc and pass it into the container (--preserve-fds 1)."""
    cid = container_id()
    argv = ["runc", "run", "--bundle", str(oci), cid]
    if leak is not None:  # a shell opens fd 3 for runc: no fd juggling in pytest itself
        argv = ["sh", "-c", 'exec "$@" 3<"$0"', str(leak), "runc", "run", "--preserve-fds",
                "1", "--bundle", str(oci), cid]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def runc_run_tty(oci: Path) -> Run:
    """`runc run` with process.terminal: runc gives the app a pty as its controlling
    terminal (what TIOCSTI needs to really inject), proxied to a pty of ours."""
    cid = container_id()
    master, slave = os.openpty()
    tty.setraw(slave)
    output = b""
    try:
        proc = subprocess.Popen(["runc", "run", "--bundle", str(oci), cid], stdin=slave,
                                stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave end is closed
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"runc run {cid} still running after {RUN_TIMEOUT} s")
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)
    return Run(code, output.decode(errors="replace"), stderr)


def terminal(config: dict[str, Any]) -> None:
    config["process"]["terminal"] = True


def blocked(result: dict[str, Any], name: str, expected: str | None, by: str) -> None:
    assert result["blocked"], f"ESCAPE: {name} was NOT blocked ({result['detail']}); {by}"
    assert result["errno"] == expected, (
        f"{name}: blocked with {result['errno']} ({result['detail']}), expected {expected} "
        f"from {by}")


# ------------------------------------------------------------------ the app runs


def test_the_app_runs_as_its_user_in_a_read_only_container(lab: Lab, default_oci: Path) -> None:
    run = runc_run(variant(default_oci, "controls", with_args("whoami", "read_code",
                                                              "write_state")))
    app = pwd.getpwnam(APP_USER)
    who = json.loads(run.results["whoami"]["detail"])
    assert who["uid"] == who["euid"] == app.pw_uid != 0
    assert who["gid"] == app.pw_gid and who["groups"] == [], who
    assert who["pid"] == 1, "the app is PID 1 of its own PID namespace"
    assert not run.results["read_code"]["blocked"], run.results["read_code"]
    assert not run.results["write_state"]["blocked"], run.results["write_state"]
    state = lab.store / "state" / APP
    assert (state / "control.txt").stat().st_uid == app.pw_uid
    config = config_of(default_oci)
    assert config["process"]["user"] == {"uid": app.pw_uid, "gid": app.pw_gid,
                                         "additionalGids": []}
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert config["process"]["noNewPrivileges"] is True
    assert all(v == [] for v in config["process"]["capabilities"].values())
    assert {n["type"] for n in config["linux"]["namespaces"]} == {
        "pid", "ipc", "uts", "mount", "cgroup", "network"}


# ------------------------------------------------------------------ attacks

# attack token -> (errno, who stops it); None: no errno, a detail says it.
DEFAULT_ATTACKS: dict[str, tuple[str | None, str]] = {
    "inherited_fds": ("EBADF", "the applier closing every fd > 2 (runc --preserve-fds 1)"),
    "write_code": ("EACCES", "Landlock (tree read-only) and 0444 files"),
    "append_code": ("EACCES", "Landlock and 0444 files"),
    "truncate_code": ("EACCES", "Landlock TRUNCATE"),
    "write_bootstrap": ("EACCES", "Landlock and 0444 files"),
    "create_in_code": ("EROFS", "the read-only bind mount of the tree"),
    "write_pth": ("EROFS", "the read-only bind mount of the tree"),
    "write_pycache": ("EROFS", "the read-only bind mount of the tree"),
    "rename_code": ("EROFS", "the read-only bind mount of the tree"),
    "unlink_code": ("EROFS", "the read-only bind mount of the tree"),
    "chmod_code": ("EROFS", "the read-only bind mount of the tree"),
    "symlink_write_code": ("EACCES", "Landlock (checks the link's target)"),
    "write_stdlib": ("EACCES", "Landlock and root-owned files"),
    "create_in_stdlib": ("EROFS", "the read-only bind mount of /usr"),
    "list_store": ("EACCES", "Landlock (only its own tree is granted)"),
    "exec_written": ("EACCES", "Landlock (no EXECUTE on the state dir) and noexec"),
    "mmap_exec_written": ("EPERM", "the noexec bind mount of the state dir"),
    "memfd_create": ("EPERM", "seccomp"),
    "execveat": ("EPERM", "seccomp"),
    "rwx_anon": ("EACCES", "MDWE"),
    "mprotect_wx": ("EACCES", "MDWE"),
    "mdwe_disable": ("EPERM", "MDWE being sticky"),
    "int80": ("EACCES", "MDWE: the RWX page for int 0x80 cannot be made"),
    "read_visible": ("EACCES", "Landlock (a 0644 file under the mounted /usr, no rule)"),
    "read_hidden": ("ENOENT", "the mount namespace (the file is not in the container)"),
    "read_shadow": ("ENOENT", "the mount namespace (not mounted)"),
    "proc_environ": ("EACCES", "Landlock (no /proc grant)"),
    "proc_mem": ("EACCES", "Landlock (no /proc grant)"),
    "proc_root": ("EACCES", "Landlock (no /proc grant)"),
    "setuid0": ("EPERM", "the runtime's uid switch, no CAP_SETUID"),
    "setgid0": ("EPERM", "no CAP_SETGID"),
    "setgroups": ("EPERM", "no CAP_SETGID"),
    "capabilities": (None, "the runtime's empty capability sets"),
    "no_new_privs": (None, "noNewPrivileges"),
    "ptrace_traceme": ("EPERM", "seccomp"),
    "ptrace_attach": ("EPERM", "seccomp"),
    "process_vm_readv": ("EPERM", "seccomp"),
    "unshare_user": ("EPERM", "seccomp"),
    "clone_newuser": ("EPERM", "seccomp (clone namespace flags)"),
    "setns": ("EPERM", "seccomp"),
    "mount": ("EPERM", "seccomp"),
    "chroot": ("EPERM", "seccomp"),
    "keyctl": ("EPERM", "seccomp"),
    "io_uring_setup": ("EPERM", "seccomp"),
    "userfaultfd": ("EPERM", "seccomp"),
    "bpf": ("EPERM", "seccomp"),
    "perf_event_open": ("EPERM", "seccomp"),
    "open_by_handle_at": ("EPERM", "seccomp"),
    "init_module": ("EPERM", "seccomp"),
    "personality": ("EPERM", "seccomp (personality argument check)"),
    "socket_inet": ("EPERM", "seccomp (no network in the profile: AF_UNIX only)"),
    "socket_inet6": ("EPERM", "seccomp"),
    "socket_netlink": ("EPERM", "seccomp"),
    "socket_packet": ("EPERM", "seccomp"),
    "kill_pid": ("ESRCH", "the PID namespace"),
}
DETAILS = {"capabilities": '"bounding": "0x0"', "no_new_privs": "no_new_privs = 1"}


@pytest.fixture(scope="module")
def default_run(lab: Lab, default_oci: Path) -> dict[str, dict[str, Any]]:
    victim = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        args = {"read_visible": f"read_file={lab.visible}",
                "read_hidden": f"read_file={lab.hidden}", "kill_pid": f"kill_pid={victim.pid}"}
        tokens = {name: args.get(name, name) for name in DEFAULT_ATTACKS}
        oci = variant(default_oci, "attacks", with_args(*tokens.values()))
        results = runc_run(oci, leak=lab.hidden).results  # the leaked fd must not reach it
        assert victim.poll() is None, "the victim outside the container was killed"
        return {name: results[token] for name, token in tokens.items()}
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("attack", sorted(DEFAULT_ATTACKS))
def test_default_profile_attack_is_blocked(default_run: dict[str, dict[str, Any]],
                                           attack: str) -> None:
    expected, by = DEFAULT_ATTACKS[attack]
    blocked(default_run[attack], attack, expected, by)
    if attack in DETAILS:
        assert DETAILS[attack] in default_run[attack]["detail"]


def test_tiocsti_with_high_bits_is_blocked_and_the_controls_inject(default_oci: Path) -> None:
    """On a real controlling terminal: EPERM from sandrun's filters; without any seccomp
    filter the same container injects; a naive 64-bit EQ rule misses the high-bit form."""
    attacks = ("tiocsti", "tiocsti_high")

    def no_seccomp(config: dict[str, Any]) -> None:
        del config["linux"]["seccomp"]

    def naive(config: dict[str, Any]) -> None:
        config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
            "names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
            "args": [{"index": 1, "value": TIOCSTI, "op": "SCMP_CMP_EQ"}]}]}

    def edits(*more: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def edit(config: dict[str, Any]) -> None:
            for step in (terminal, *more):
                step(config)
        return edit

    sandboxed = runc_run_tty(variant(default_oci, "tty", edits(with_args(*attacks)))).results
    outer_only = runc_run_tty(variant(default_oci, "tty-outer",
                                      edits(bypass_applier(*attacks)))).results
    unfiltered = runc_run_tty(variant(default_oci, "tty-none",
                                      edits(bypass_applier(*attacks), no_seccomp))).results
    naive_run = runc_run_tty(variant(default_oci, "tty-naive",
                                     edits(bypass_applier(*attacks), naive))).results
    for name in attacks:
        blocked(sandboxed[name], name, "EPERM", "the applier's seccomp filter (low 32 bits)")
        blocked(outer_only[name], name, "EPERM", "the outer filter's MASKED_EQ rule in runc")
        assert not unfiltered[name]["blocked"], f"control: {name} {unfiltered[name]}"
    blocked(naive_run["tiocsti"], "tiocsti", "EPERM", "the naive EQ rule")
    assert not naive_run["tiocsti_high"]["blocked"], (
        "control: a 64-bit SCMP_CMP_EQ on the ioctl command should miss the high-bit form",
        naive_run["tiocsti_high"])


def test_outer_filter_alone_denies_under_runc(default_oci: Path) -> None:
    """The runtime's filter is not a formality: with the applier bypassed it still
    denies what sandrun's baseline denies, with the same errno."""
    attacks = ("ptrace_traceme", "unshare_user", "clone_newuser", "memfd_create",
               "io_uring_setup", "socket_netlink", "personality", "mount", "bpf")
    results = runc_run(variant(default_oci, "outer", bypass_applier(*attacks))).results
    for name in attacks:
        blocked(results[name], name, "EPERM", "the outer seccomp filter")


# ------------------------------------------------------------------ the network


def test_granted_ports_share_the_host_network_and_landlock_limits_them(lab: Lab) -> None:
    listeners = [socket.socket() for _ in range(2)]
    try:
        for sock in listeners:
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            sock.setblocking(False)
        ok, denied = (str(s.getsockname()[1]) for s in listeners)
        bind_ok, bind_denied = free_ports(2)
        profile = lab.root / "net.toml"
        profile.write_text(f'extends = "default"\n[network]\nconnect_tcp = [{ok}]\n'
                           f'bind_tcp = [{bind_ok}]\n')
        abstract = f"sandrun-oci-{os.getpid()}"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.bind("\0" + abstract)
            unix.listen(1)
            tokens = {"connect_ok": f"connect={ok}", "connect_denied": f"connect={denied}",
                      "connect6_denied": f"connect6={denied}", "bind_ok": f"bind={bind_ok}",
                      "bind_denied": f"bind={bind_denied}", "udp": f"udp={denied}",
                      "socket_netlink": "socket_netlink", "abstract_unix":
                      f"abstract_unix={abstract}"}
            proc = export(lab, f"oci-net-{next(_ids)}", "-p", str(profile),
                          args=tuple(tokens.values()))
            assert proc.returncode == 0, proc.stderr
            assert "the host's" in proc.stdout
            oci = written(proc)
            assert "network" not in {n["type"] for n in config_of(oci)["linux"]["namespaces"]}
            results = runc_run(oci).results
        got = {label: results[token] for label, token in tokens.items()}
        assert not got["connect_ok"]["blocked"], got["connect_ok"]
        assert not got["bind_ok"]["blocked"], got["bind_ok"]
        blocked(got["connect_denied"], "connect_denied", "EACCES", "Landlock CONNECT_TCP")
        blocked(got["connect6_denied"], "connect6_denied", "EACCES", "Landlock CONNECT_TCP")
        blocked(got["bind_denied"], "bind_denied", "EACCES", "Landlock BIND_TCP")
        blocked(got["udp"], "udp", "EPERM", "seccomp (no dns: TCP only)")
        blocked(got["socket_netlink"], "socket_netlink", "EPERM", "seccomp (families)")
        blocked(got["abstract_unix"], "abstract_unix", "EPERM", "Landlock's abstract socket "
                "scope (the network namespace is the host's)")
        with pytest.raises(BlockingIOError):
            listeners[1].accept()  # nothing reached the denied port
    finally:
        for sock in listeners:
            sock.close()


# ------------------------------------------------------------------ what runc built


def runc_filter_and_process(oci: Path) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """`runc create` (the init waits before execve, its filter loaded): read the filter
    back with PTRACE_SECCOMP_GET_FILTER, and /proc/<pid>/{status,limits,cgroup} with
    each namespace's identity, then delete the container."""
    cid = container_id()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    try:
        # The created init inherits runc's stdio: a pipe would never see its end.
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(["runc", "create", "--bundle", str(oci), cid],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=RUN_TIMEOUT)
            err.seek(0)
            assert proc.returncode == 0, err.read()
        state = json.loads(subprocess.run(["runc", "state", cid], capture_output=True,
                                          text=True, check=True).stdout)
        pid = int(state["pid"])
        info = {name: Path(f"/proc/{pid}/{name}").read_text()
                for name in ("status", "limits", "cgroup")}
        namespaces = {ns: os.readlink(f"/proc/{pid}/ns/{ns}")
                      for ns in ("pid", "ipc", "uts", "mnt", "net", "cgroup")}
        info |= cgroup_files(info["cgroup"])
        assert libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0, os.strerror(ctypes.get_errno())
        try:
            os.waitpid(pid, WALL)
            count = libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, None)
            assert count > 0, os.strerror(ctypes.get_errno())
            buf = ctypes.create_string_buffer(count * 8)
            assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, buf) == count
            assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(1),
                               None) == -1, "runc installed more than one filter"
        finally:
            libc.ptrace(PTRACE_DETACH, pid, None, None)
        return buf.raw, info, namespaces
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)


CGROUP_FILES = {"memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
                "pids": ("pids.max",),
                "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares")}


def cgroup_files(proc_cgroup: str) -> dict[str, str]:
    """The v1 limit files of a process's cgroups (as /proc/<pid>/cgroup names them)."""
    found = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            for name in CGROUP_FILES.get(controller, ()):
                file = Path(f"/sys/fs/cgroup/{controller}{path}/{name}")
                if file.exists():
                    found[name] = file.read_text().strip()
    return found


def spec_of(oci: Path) -> dict[str, Any]:
    rootfs = Path(config_of(oci)["root"]["path"])
    if not rootfs.is_absolute():
        rootfs = oci / rootfs
    return spec_at(rootfs)


def spec_at(rootfs: Path) -> dict[str, Any]:
    """The applier's spec in a rootfs (marshal data)."""
    return marshal.loads((rootfs / "sandrun" / "spec.marshal").read_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize("profile", ["default", "net"])
def test_runc_builds_the_inner_filter_plus_the_appliers_syscalls(
        lab: Lab, default_oci: Path, profile: str) -> None:
    """The filter runc loaded, read back from the kernel, decides every x86_64 syscall
    as sandrun's own filter does, except the applier's four (landlock_*, seccomp), and
    passes every probe of sandrun's self-check (ioctl with high bits, clone namespace
    flags, socket families, personality, MSG_FASTOPEN)."""
    if profile == "default":
        oci, policy = default_oci, _seccomp_policy(load_profile("default"))
    else:
        net = lab.root / "net-filter.toml"
        net.write_text('extends = "default"\n[network]\nconnect_tcp = [443]\ndns = true\n')
        proc = export(lab, f"oci-filter-{next(_ids)}", "-p", str(net))
        assert proc.returncode == 0, proc.stderr
        oci = written(proc)
        policy = _seccomp_policy(load_profile(str(net)))
    outer, _, _ = runc_filter_and_process(variant(oci, "create", lambda c: None))
    inner = spec_of(oci)["seccomp_bpf"]
    numbers = seccomp._syscall_numbers()
    differ = {name: (seccomp._action_name(seccomp.evaluate(outer, nr)),
                     seccomp._action_name(seccomp.evaluate(inner, nr)))
              for name, nr in numbers.items()
              if nr >= 0 and seccomp.evaluate(outer, nr) != seccomp.evaluate(inner, nr)}
    assert set(differ) == set(APPLIER_SYSCALLS) - {"prctl", "execve"}, differ
    assert all(o == "ALLOW" for o, _ in differ.values()), differ
    plan = seccomp._resolve(policy)
    assert inner == seccomp.compile_filter(policy), "the test's policy is not the bundle's"
    wrong = seccomp._self_check(outer, plan)
    # runc cannot ask for KILL_PROCESS on a foreign architecture: libseccomp's default kills
    # the thread (the applier's filter, loaded after, kills the process).
    assert wrong == ["x32 getpid: KILL_THREAD instead of KILL_PROCESS",
                     "i386 getpid: KILL_THREAD instead of KILL_PROCESS"], wrong


def test_runc_applies_the_privileged_half(lab: Lab) -> None:
    """uid/gid, no capabilities, no_new_privs, rlimits, new namespaces and the cgroup
    limits of the profile's [limits], as the kernel shows them for the container."""
    profile = lab.root / "limits.toml"
    profile.write_text('extends = "default"\n[limits]\nmemory = "256M"\ntasks = 64\n'
                       'cpu = "50%"\ncpu_weight = 200\n[process]\n'
                       'rlimits = { nofile = 333 }\n')
    proc = export(lab, f"oci-limits-{next(_ids)}", "-p", str(profile))
    assert proc.returncode == 0, proc.stderr
    oci = written(proc)
    _, info, namespaces = runc_filter_and_process(oci)
    app = pwd.getpwnam(APP_USER)
    status = dict(line.split(":", 1) for line in info["status"].splitlines())
    assert status["Uid"].split() == [str(app.pw_uid)] * 4
    assert status["Gid"].split() == [str(app.pw_gid)] * 4
    assert status["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert "Max open files            333                  333" in info["limits"]
    for ns, link in namespaces.items():
        assert link != os.readlink(f"/proc/self/ns/{ns}"), f"{ns} namespace is the host's"
    need(all(f in info for f in ("memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us")),
         f"cgroup v1 controllers memory, pids and cpu for the container: {info['cgroup']}")

    assert info["memory.limit_in_bytes"] == str(256 << 20)
    if "memory.memsw.limit_in_bytes" in info:  # swap accounting: no swap either
        assert info["memory.memsw.limit_in_bytes"] == str(256 << 20)
    assert info["pids.max"] == "64"
    assert (info["cpu.cfs_quota_us"], info["cpu.cfs_period_us"]) == ("50000", "100000")
    assert info["cpu.shares"] == str(200 * 1024 // 100)


# ------------------------------------------------------------------ the applier's own checks


def test_applier_refuses_when_the_runtime_did_not_drop_privileges(default_oci: Path) -> None:
    def as_root(config: dict[str, Any]) -> None:
        with_args("whoami")(config)
        config["process"]["user"] = {"uid": 0, "gid": 0}

    def with_a_capability(config: dict[str, Any]) -> None:
        with_args("whoami")(config)
        for name in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            config["process"]["capabilities"][name] = ["CAP_SYS_ADMIN"]  # kept past setuid

    def as_nobody(config: dict[str, Any]) -> None:
        with_args("whoami")(config)
        config["process"]["user"] = {"uid": NOBODY, "gid": NOBODY}

    for name, edit, message in (
            ("root", as_root, "runs with uid/gid 0"),
            ("cap", with_a_capability, "'CapEff': '0x200000'"),
            ("nobody", as_nobody, f"exported for uid {pwd.getpwnam(APP_USER).pw_uid}")):
        run = runc_run(variant(default_oci, name, edit))
        assert run.returncode == 125, (name, run)
        assert "sandrun: error: " in run.stderr and message in run.stderr, (name, run.stderr)
        assert "whoami" not in run.output, "the app ran although the applier refused"


# ------------------------------------------------------------------ refusals


def assert_nothing_created(lab: Lab, output: Path, tree_count: int) -> None:
    assert not output.exists(), f"a refused export wrote {output}"
    assert not [p for p in lab.root.iterdir() if p.name.startswith(f".{output.name}.")]
    apps = lab.store / "apps"
    assert (len(list(apps.iterdir())) if apps.exists() else 0) == tree_count


def test_unapproved_embedded_profile_is_refused_and_nothing_is_created(lab: Lab) -> None:
    apps = lab.store / "apps"
    trees = len(list(apps.iterdir())) if apps.exists() else 0
    proc = export(lab, "oci-greedy", bundle=lab.greedy)
    assert proc.returncode == 125, proc.stderr
    assert "network.bind_tcp: 8000" in proc.stderr, proc.stderr
    assert_nothing_created(lab, lab.root / "oci-greedy", trees)


def test_bind_source_another_user_can_redirect_is_refused(lab: Lab) -> None:
    owned = lab.root / "nobodys"
    owned.mkdir(mode=0o755, exist_ok=True)
    (owned / "data").mkdir(exist_ok=True)
    os.chown(owned, NOBODY, NOBODY)
    profile = lab.root / "nobodys.toml"
    profile.write_text(f'extends = "default"\n[filesystem]\nread = ["{owned}/data"]\n')
    apps = lab.store / "apps"
    trees = len(list(apps.iterdir())) if apps.exists() else 0
    proc = export(lab, "oci-nobodys", "-p", str(profile))
    assert proc.returncode == 125, proc.stderr
    assert f"{owned} is owned by uid {NOBODY}" in proc.stderr, proc.stderr
    assert_nothing_created(lab, lab.root / "oci-nobodys", trees)


def test_output_must_be_new_or_empty(lab: Lab, default_oci: Path) -> None:
    proc = export(lab, default_oci.name)
    assert proc.returncode == 2, proc.stderr
    assert "is not empty" in proc.stderr
    empty = lab.root / "oci-empty"
    empty.mkdir()
    proc = export(lab, empty.name)
    assert proc.returncode == 0, proc.stderr
    assert (empty / "config.json").is_file()


# ------------------------------------------------------------------ the files


def test_config_validates_against_the_runtime_spec_schema(default_oci: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    need((SCHEMA_DIR / "config-schema.json").exists(),
         f"the runtime-spec schema is missing ({SCHEMA_DIR}: apt-get install "
         "golang-github-opencontainers-specs-dev)")
    resources = {}
    for path in SCHEMA_DIR.glob("*.json"):
        contents = json.loads(path.read_text())
        resources[path.name] = referencing.Resource.from_contents(
            contents, default_specification=referencing.jsonschema.DRAFT4)
    registry = referencing.Registry().with_resources(resources.items())
    validator = jsonschema.Draft4Validator(resources["config-schema.json"].contents,
                                           registry=registry)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(config_of(default_oci))]
    assert errors == []


def test_rootfs_holds_mount_points_and_the_applier_only(default_oci: Path) -> None:
    rootfs = default_oci / "rootfs"
    files = {str(p.relative_to(rootfs)): p for p in rootfs.rglob("*")
             if p.is_file() and not p.is_symlink()}
    applier = {name for name in files if name.startswith("sandrun/")}
    assert applier == {"sandrun/apply.py", "sandrun/spec.marshal",
                       "sandrun/lib/sandrun/__init__.py",
                       "sandrun/lib/sandrun/errors.py",
                       "sandrun/lib/sandrun/sandbox/__init__.py",
                       "sandrun/lib/sandrun/sandbox/kernel.py"}
    assert all(files[n].stat().st_size == 0 for n in files if n not in applier), (
        "a mount point in the rootfs has content")
    for path in (rootfs, *rootfs.rglob("*")):
        st = path.lstat()
        assert st.st_uid == 0, path
        assert path.is_symlink() or not st.st_mode & 0o022, path
    assert default_oci.stat().st_mode & 0o077 == 0, "the bundle dir is root's only"


def test_check_outer_refuses_what_runtimes_translate_wrongly() -> None:
    def filt(*syscalls: dict[str, Any]) -> dict[str, Any]:
        applier = {"names": list(APPLIER_SYSCALLS), "action": "SCMP_ACT_ALLOW"}
        return {"syscalls": [applier, *syscalls]}

    def ne(index: int, value: int) -> dict[str, Any]:
        return {"index": index, "value": value, "valueTwo": 0, "op": "SCMP_CMP_NE"}

    low = {"index": 1, "value": 0xFFFFFFFF, "valueTwo": TIOCSTI, "op": "SCMP_CMP_MASKED_EQ"}
    check_outer(filt({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [low]}))
    for bad, why in (
            (filt({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                   "args": [ne(1, TIOCSTI), ne(1, 0x541C)]}), "two conditions on one argument"),
            (filt({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                   "args": [{"index": 1, "value": TIOCSTI, "op": "SCMP_CMP_EQ"}]}),
             "is not a MASKED_EQ on the low 32 bits"),
            (filt({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                   "args": [{**low, "value": (1 << 64) - 1}]}), "low 32 bits"),
            (filt({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW"},
                  {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [low]}),
             "ioctl: unconditional and conditional rules"),
            ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
             "landlock_create_ruleset: the applier needs it"),
            (filt({"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"}), "not a syscall")):
        with pytest.raises(EnforcementError, match=why):
            check_outer(bad)


def test_outer_filter_follows_the_profile() -> None:
    plain = outer_seccomp(seccomp.SeccompPolicy())
    names = {n for e in plain["syscalls"] for n in e["names"]}
    assert {"ptrace", "unshare", "memfd_create"} <= names
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    assert plain["defaultErrnoRet"] == errno.ENOSYS
    ioctl = [e for e in plain["syscalls"] if e["names"] == ["ioctl"]]
    denied = [e for e in ioctl if e["action"] == "SCMP_ACT_ERRNO"]
    assert sorted(e["args"][0]["valueTwo"] for e in denied) == [TIOCSTI, 0x541C]
    assert all(e["args"][0]["value"] == 0xFFFFFFFF for e in denied)
    assert "clone3" not in names, "clone3 must get the default ENOSYS (glibc falls back)"
    allowing = outer_seccomp(seccomp.SeccompPolicy(allow=("ptrace",), deny=("execve",)))
    allowed = {n for e in allowing["syscalls"] if e["action"] == "SCMP_ACT_ALLOW"
               and "args" not in e for n in e["names"]}
    assert {"ptrace", "execve"} <= allowed, "execve stays allowed for the applier"
