"""Landlock binding: pure planning logic, and real enforcement on the running kernel.

Every enforcement probe runs in a forked child that drops to nobody (65534), sets
no_new_privs, enforces the ruleset and only then attempts the forbidden thing; it
refuses to run as root. Results come back as JSON through a pipe. Each denial is paired
with a control (the same operation on an allowed target, or with the protection off)
so "blocked" cannot be confused with "broken probe".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import socket
import tempfile
import termios
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import fork_and_report, fork_as_nobody, free_port, need

from sandrun.errors import EnforcementError
from sandrun.sandbox import kernel, landlock
from sandrun.sandbox.landlock import Access, LandlockPolicy, PathRule
from sandrun.sandbox.status import ENFORCED, NOT_ENFORCED, PARTIAL, ProtectionStatus

NOBODY = 65534
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)

Probe = Callable[[], dict[str, object]]


def attempt(action: Callable[[], object]) -> int:
    """0 when the action succeeds, else its errno."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def run_in_child(body: Callable[[], dict[str, object]], *, no_new_privs: bool = True,
                 ) -> dict[str, object]:
    """Fork, drop to nobody, run body (which enforces and probes), return its JSON."""
    report = fork_and_report(body, no_new_privs=no_new_privs)
    assert report.exit_code == 0, f"child failed: {report}"
    return dict(report.value)


def run_sandboxed(policy: LandlockPolicy, probe: Probe) -> dict[str, object]:
    """Prepare as root, then in a nobody child enforce the policy and run the probe."""
    prepared = landlock.prepare(policy)

    def body() -> dict[str, object]:
        landlock.restrict_self(prepared)
        return probe()

    try:
        return run_in_child(body)
    finally:
        os.close(prepared.ruleset_fd)


@dataclass
class Tree:
    """A tmp tree nobody can traverse and (by plain permissions) write."""

    base: Path
    ro: Path  # granted READ, but mode 0777: only Landlock stops writes
    rw: Path  # granted READ_WRITE
    rw2: Path  # a second READ_WRITE dir
    ex: Path  # granted READ_EXEC
    secret: Path  # not granted; world-readable files

    def policy(self, **changes: object) -> LandlockPolicy:
        base = LandlockPolicy(
            paths=(
                PathRule(str(self.ro), Access.READ),
                PathRule(str(self.rw), Access.READ_WRITE),
                PathRule(str(self.rw2), Access.READ_WRITE),
                PathRule(str(self.ex), Access.READ_EXEC),
                # What a dynamically linked /bin/true needs to start.
                PathRule("/usr", Access.READ_EXEC),
                PathRule("/lib64", Access.READ_EXEC, required=False),
                PathRule("/etc/ld.so.cache", Access.READ, required=False),
            ),
        )
        return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def landlock_abi(require_root: None, require_landlock: int) -> int:
    return require_landlock


@pytest.fixture
def tree() -> Iterator[Tree]:
    # Not pytest's tmp_path: its parents are 0700 and nobody could not traverse them.
    # Not under /tmp: a symlink in sticky, world-writable /tmp is one the launcher refuses
    # to follow (tests/test_isolation.py), and this fixture tests Landlock itself.
    base = Path(tempfile.mkdtemp(prefix="sandrun-landlock-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        made = Tree(base, base / "ro", base / "rw", base / "rw2", base / "ex", base / "secret")
        for directory, mode in ((made.ro, 0o777), (made.rw, 0o777), (made.rw2, 0o777),
                                (made.ex, 0o755), (made.secret, 0o755)):
            directory.mkdir()
            directory.chmod(mode)
        for path, mode in ((made.ro / "file.txt", 0o666), (made.rw / "moveme", 0o666),
                           (made.secret / "passwd", 0o644)):
            path.write_text("root:x:0:0:root:/root:/bin/sh\n")
            path.chmod(mode)
        for directory in (made.rw, made.ex):
            shutil.copy("/bin/true", directory / "tool")
            (directory / "tool").chmod(0o755)
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def read_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 100)
    finally:
        os.close(fd)


def write_new(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"data")
    finally:
        os.close(fd)


def exec_status(path: Path) -> int:
    """execve in a grandchild: 0 when the program ran, else the errno of execve."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(path, [str(path)])
        except OSError as exc:
            os._exit(exc.errno or 1)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --- pure logic ------------------------------------------------------------------------

def by_name(statuses: tuple[ProtectionStatus, ...]) -> dict[str, str]:
    return {s.name: s.status for s in statuses}


FEATURES = ["filesystem", "refer", "truncate", "ioctl_dev", "tcp_bind", "tcp_connect",
            "scope_abstract_unix", "scope_signal", "audit logging"]


@pytest.mark.parametrize(("abi", "expected"), [
    (0, [NOT_ENFORCED] * 9),
    (1, [PARTIAL, ENFORCED] + [NOT_ENFORCED] * 7),
    (3, [PARTIAL, ENFORCED, ENFORCED] + [NOT_ENFORCED] * 6),
    (4, [PARTIAL, ENFORCED, ENFORCED, NOT_ENFORCED, ENFORCED, ENFORCED] + [NOT_ENFORCED] * 3),
    (6, [ENFORCED] * 8 + [NOT_ENFORCED]),
    (7, [ENFORCED] * 9),
    (9, [ENFORCED] * 9),  # a newer kernel is used at the level this module knows
])
def test_plan_statuses_per_abi(abi: int, expected: list[str]) -> None:
    statuses = landlock.plan(LandlockPolicy(paths=(), bind_tcp=(8000,)), abi)
    assert [s.name for s in statuses] == FEATURES
    assert [s.status for s in statuses] == expected
    assert all(s.detail for s in statuses)


def test_protection_status_refuses_an_unknown_level() -> None:
    """A typo ("enforce") would read as not enforced to every caller comparing levels."""
    assert ProtectionStatus("x", ENFORCED).detail == ""
    with pytest.raises(ValueError, match="unknown enforcement status 'enforce'"):
        ProtectionStatus("x", "enforce")  # type: ignore[arg-type]


def test_plan_details_name_ports_and_missing_features() -> None:
    policy = LandlockPolicy(paths=(), bind_tcp=(8000, 8001), connect_tcp=())
    details = {s.name: s.detail for s in landlock.plan(policy, 7)}
    assert "8000, 8001" in details["tcp_bind"]
    assert "every port" in details["tcp_connect"]
    partial = {s.name: s.detail for s in landlock.plan(policy, 1)}
    assert "truncate" in partial["filesystem"] and "ioctl_dev" in partial["filesystem"]
    assert "ABI 4" in partial["tcp_bind"]


def test_plan_reports_scopes_and_logging_switched_off() -> None:
    policy = LandlockPolicy(paths=(), scope_abstract_unix=False, scope_signal=False,
                            log_denials=False)
    statuses = by_name(landlock.plan(policy, 7))
    assert statuses["scope_abstract_unix"] == NOT_ENFORCED
    assert statuses["scope_signal"] == NOT_ENFORCED
    assert statuses["audit logging"] == NOT_ENFORCED


def test_access_rights_never_mix_write_and_execute() -> None:
    write_rights = landlock.ACCESS_FS_WRITE_FILE | landlock.ACCESS_FS_MAKE_REG
    for access in Access:
        rights = access.rights
        assert not (rights & landlock.ACCESS_FS_EXECUTE and rights & write_rights), access
        assert not rights & (landlock.ACCESS_FS_MAKE_CHAR | landlock.ACCESS_FS_MAKE_BLOCK)
        assert not rights & landlock.ACCESS_FS_IOCTL_DEV
    assert Access.READ_WRITE.rights & landlock.ACCESS_FS_REFER
    assert Access.READ_WRITE.rights & landlock.ACCESS_FS_TRUNCATE


def test_describe_rules(tree: Tree) -> None:
    policy = LandlockPolicy(
        paths=(PathRule("/usr/lib/python3.11", Access.READ_EXEC),
               PathRule(str(tree.base / "absent"), Access.READ, required=False),
               PathRule(str(tree.rw), Access.READ_WRITE)),
        bind_tcp=(8000,))
    lines = landlock.describe_rules(policy)
    assert "read+exec  /usr/lib/python3.11" in lines
    assert f"read       {tree.base / 'absent'} (absent, skipped)" in lines
    assert f"read+write  {tree.rw}" in lines
    assert "tcp bind 8000" in lines
    assert any(line.startswith("tcp connect none") for line in lines)


def test_abi_version_matches_kernel(require_landlock: int) -> None:
    assert landlock.abi_version() == require_landlock


# --- refusals before enforcement -------------------------------------------------------

def test_min_abi_above_kernel_refuses(landlock_abi: int) -> None:
    with pytest.raises(EnforcementError) as caught:
        landlock.prepare(LandlockPolicy(paths=(), min_abi=99))
    assert "99" in caught.value.message
    assert f"ABI {landlock_abi}" in caught.value.message
    assert "landlock_min_abi" in caught.value.hint


def test_required_missing_path_refuses(landlock_abi: int, tree: Tree) -> None:
    missing = str(tree.base / "nope" / "deeper")
    with pytest.raises(EnforcementError, match="does not exist") as caught:
        landlock.prepare(LandlockPolicy(paths=(PathRule(missing, Access.READ),)))
    assert missing in caught.value.message


def test_optional_missing_path_is_skipped(landlock_abi: int, tree: Tree) -> None:
    policy = LandlockPolicy(paths=(PathRule(str(tree.base / "nope"), Access.READ, False),
                                   PathRule(str(tree.ro), Access.READ)))
    prepared = landlock.prepare(policy)
    try:
        assert prepared.keep_fds == (prepared.ruleset_fd,)
        assert prepared.abi == landlock_abi
    finally:
        os.close(prepared.ruleset_fd)


def test_bad_port_refused(landlock_abi: int) -> None:
    with pytest.raises(EnforcementError, match="invalid TCP port"):
        landlock.prepare(LandlockPolicy(paths=(), bind_tcp=(70000,)))


def test_file_rights_agree_with_the_kernel_module() -> None:
    assert kernel.FS_FILE_RIGHTS == landlock.FS_FILE_RIGHTS


def test_syscall_failure_names_the_errno(landlock_abi: int) -> None:
    # The PyPI binding misreads errno; here a closed fd must come back as EBADF.
    attr = kernel._NetPortAttr(allowed_access=kernel.ACCESS_NET_BIND_TCP, port=1)
    unused_fd = os.open("/dev/null", os.O_RDONLY)
    os.close(unused_fd)
    with pytest.raises(EnforcementError, match="EBADF"):
        kernel._add_rule(unused_fd, kernel.LANDLOCK_RULE_NET_PORT, attr, "test")


def test_restrict_self_requires_no_new_privs(landlock_abi: int, tree: Tree) -> None:
    prepared = landlock.prepare(tree.policy())

    def body() -> dict[str, object]:
        try:
            landlock.restrict_self(prepared)
        except EnforcementError as exc:
            closed = attempt(lambda: os.fstat(prepared.ruleset_fd)) == errno.EBADF
            return {"refused": "no_new_privs" in exc.message, "closed": closed,
                    "still_free": attempt(lambda: read_file(tree.secret / "passwd"))}
        return {"refused": False}

    try:
        result = run_in_child(body, no_new_privs=False)
    finally:
        os.close(prepared.ruleset_fd)
    assert result == {"refused": True, "closed": True, "still_free": 0}


# --- file system enforcement -----------------------------------------------------------

def test_read_allowed_and_outside_rules(landlock_abi: int, tree: Tree) -> None:
    def probe() -> dict[str, object]:
        return {
            "allowed": attempt(lambda: read_file(tree.ro / "file.txt")),
            "list_allowed": attempt(lambda: os.listdir(tree.ro)),
            "secret": attempt(lambda: read_file(tree.secret / "passwd")),
            "etc_passwd": attempt(lambda: read_file("/etc/passwd")),
            "list_secret": attempt(lambda: os.listdir(tree.secret)),
        }

    assert run_sandboxed(tree.policy(), probe) == {
        "allowed": 0, "list_allowed": 0, "secret": errno.EACCES,
        "etc_passwd": errno.EACCES, "list_secret": errno.EACCES}


def test_write_in_read_dir_denied(landlock_abi: int, tree: Tree) -> None:
    def probe() -> dict[str, object]:
        return {
            "create": attempt(lambda: write_new(tree.ro / "new")),
            "open_write": attempt(lambda: os.close(os.open(tree.ro / "file.txt", os.O_WRONLY))),
            "unlink": attempt(lambda: os.unlink(tree.ro / "file.txt")),
            "mkdir": attempt(lambda: os.mkdir(tree.ro / "sub")),
        }

    assert run_sandboxed(tree.policy(), probe) == dict.fromkeys(
        ("create", "open_write", "unlink", "mkdir"), errno.EACCES)


def test_create_and_write_in_read_write_dir(landlock_abi: int, tree: Tree) -> None:
    def probe() -> dict[str, object]:
        new = tree.rw / "new"
        return {
            "create": attempt(lambda: write_new(new)),
            "read_back": attempt(lambda: read_file(new)),
            "truncate": attempt(lambda: os.truncate(new, 0)),
            "mkdir": attempt(lambda: os.mkdir(tree.rw / "sub")),
            "symlink": attempt(lambda: os.symlink("new", tree.rw / "link")),
            "unlink": attempt(lambda: os.unlink(new)),
            "mknod_char": attempt(lambda: os.mknod(tree.rw / "dev", 0o600 | 0o020000,
                                                   os.makedev(1, 3))),
        }

    result = run_sandboxed(tree.policy(), probe)
    # mknod of a char device: Landlock (MAKE_CHAR not granted) says EACCES before the
    # capability check would say EPERM.
    assert result == {"create": 0, "read_back": 0, "truncate": 0, "mkdir": 0, "symlink": 0,
                      "unlink": 0, "mknod_char": errno.EACCES}
    assert (tree.rw / "sub").is_dir()


def test_execute_in_read_write_dir_denied(landlock_abi: int, tree: Tree) -> None:
    def probe() -> dict[str, object]:
        return {"rw_tool": exec_status(tree.rw / "tool"),
                "ex_tool": exec_status(tree.ex / "tool")}

    assert run_sandboxed(tree.policy(), probe) == {"rw_tool": errno.EACCES, "ex_tool": 0}


def test_execute_access_runs_but_cannot_list(landlock_abi: int, tree: Tree) -> None:
    policy = tree.policy(paths=(*tree.policy().paths[4:], PathRule(str(tree.ex), Access.EXECUTE)))

    def probe() -> dict[str, object]:
        return {"run": exec_status(tree.ex / "tool"), "list": attempt(lambda: os.listdir(tree.ex))}

    assert run_sandboxed(policy, probe) == {"run": 0, "list": errno.EACCES}


def test_rename_out_of_read_write_dir(landlock_abi: int, tree: Tree) -> None:
    def probe() -> dict[str, object]:
        return {
            "to_read_dir": attempt(lambda: os.rename(tree.rw / "moveme", tree.ro / "moved")),
            "link_to_read_dir": attempt(lambda: os.link(tree.rw / "moveme", tree.ro / "lnk")),
            "to_rw_dir": attempt(lambda: os.rename(tree.rw / "moveme", tree.rw2 / "moved")),
        }

    result = run_sandboxed(tree.policy(), probe)
    assert result["to_read_dir"] in (errno.EXDEV, errno.EACCES)
    assert result["link_to_read_dir"] in (errno.EXDEV, errno.EACCES)
    # REFER granted on both sides (ABI >= 2): moving between writable dirs works.
    assert result["to_rw_dir"] == (0 if landlock_abi >= 2 else errno.EXDEV)


def test_truncate_read_only_file_denied(landlock_abi: int, tree: Tree) -> None:
    need(landlock_abi >= 3, "truncate control needs Landlock ABI 3")

    def probe() -> dict[str, object]:
        target = tree.ro / "file.txt"  # mode 0666: only Landlock protects it
        return {
            "truncate": attempt(lambda: os.truncate(target, 0)),
            "open_trunc": attempt(lambda: os.close(os.open(target, os.O_RDONLY | os.O_TRUNC))),
            "readable": attempt(lambda: read_file(target)),
        }

    assert run_sandboxed(tree.policy(), probe) == {
        "truncate": errno.EACCES, "open_trunc": errno.EACCES, "readable": 0}
    assert (tree.ro / "file.txt").stat().st_size > 0


def test_file_rules_on_char_devices_and_symlinks(landlock_abi: int, tree: Tree) -> None:
    (tree.base / "resolv.conf").symlink_to(tree.secret / "passwd")
    policy = tree.policy(paths=(
        PathRule("/dev/null", Access.READ_WRITE),
        PathRule("/dev/urandom", Access.READ),
        PathRule(str(tree.base / "resolv.conf"), Access.READ),  # a symlink to a file
    ))

    def probe() -> dict[str, object]:
        null = os.open("/dev/null", os.O_RDWR)
        try:
            wrote = attempt(lambda: os.write(null, b"x"))
            ioctl = attempt(lambda: fcntl.ioctl(null, termios.TCGETS, bytes(64)))
        finally:
            os.close(null)
        return {
            "null_write": wrote,
            "null_ioctl": ioctl,
            "urandom": attempt(lambda: read_file("/dev/urandom")),
            "urandom_write": attempt(lambda: os.close(os.open("/dev/urandom", os.O_WRONLY))),
            "zero": attempt(lambda: read_file("/dev/zero")),
            "symlinked_file": attempt(lambda: read_file(tree.base / "resolv.conf")),
            "sibling": attempt(lambda: read_file(tree.ro / "file.txt")),
        }

    result = run_sandboxed(policy, probe)
    # Without Landlock TCGETS on /dev/null is ENOTTY; IOCTL_DEV (ABI 5) turns it to EACCES.
    assert result == {
        "null_write": 0,
        "null_ioctl": errno.EACCES if landlock_abi >= 5 else errno.ENOTTY,
        "urandom": 0, "urandom_write": errno.EACCES, "zero": errno.EACCES,
        "symlinked_file": 0, "sibling": errno.EACCES}


# --- network and scopes ----------------------------------------------------------------

def test_tcp_bind_only_declared_port(landlock_abi: int, tree: Tree) -> None:
    need(landlock_abi >= 4, "TCP control needs Landlock ABI 4")
    allowed, other = free_port(), free_port()

    def bind(port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))

    def probe() -> dict[str, object]:
        return {"allowed": attempt(lambda: bind(allowed)),
                "other": attempt(lambda: bind(other))}

    assert run_sandboxed(tree.policy(bind_tcp=(allowed,)), probe) == {
        "allowed": 0, "other": errno.EACCES}


def test_tcp_connect_only_declared_port(landlock_abi: int, tree: Tree) -> None:
    need(landlock_abi >= 4, "TCP control needs Landlock ABI 4")
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(2):
            listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            ports.append(listener.getsockname()[1])
        declared, undeclared = ports

        def connect(port: int) -> None:
            # Not create_connection: its lazy idna import would be denied in the sandbox.
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(("127.0.0.1", port))

        def probe() -> dict[str, object]:
            return {"declared": attempt(lambda: connect(declared)),
                    "undeclared": attempt(lambda: connect(undeclared))}

        assert run_sandboxed(tree.policy(connect_tcp=(declared,)), probe) == {
            "declared": 0, "undeclared": errno.EACCES}


@pytest.mark.parametrize("scoped", [True, False])
def test_abstract_unix_socket_scope(landlock_abi: int, tree: Tree, scoped: bool) -> None:
    need(landlock_abi >= 6, "scopes need Landlock ABI 6")
    name = f"\0sandrun-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(4)

        def connect() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(name)

        def probe() -> dict[str, object]:
            return {"connect": attempt(connect)}

        result = run_sandboxed(tree.policy(scope_abstract_unix=scoped), probe)
    assert result == {"connect": errno.EPERM if scoped else 0}


@pytest.fixture
def nobody_outside_sandbox() -> Iterator[int]:
    """A process running as nobody but outside any Landlock domain: a signal target that
    plain permissions would let the sandboxed child signal."""
    read_end, write_end = os.pipe()

    def wait_for_the_test() -> None:
        os.close(write_end)
        os.read(read_end, 1)  # until the test is done

    pid = fork_as_nobody(wait_for_the_test, no_new_privs=True)
    os.close(read_end)
    try:
        yield pid
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("scoped", [True, False])
def test_signal_scope(landlock_abi: int, tree: Tree, nobody_outside_sandbox: int,
                      scoped: bool) -> None:
    need(landlock_abi >= 6, "scopes need Landlock ABI 6")
    parent = os.getpid()

    def probe() -> dict[str, object]:
        return {"outside": attempt(lambda: os.kill(nobody_outside_sandbox, 0)),
                "parent": attempt(lambda: os.kill(parent, 0)),
                "self": attempt(lambda: os.kill(os.getpid(), 0))}

    result = run_sandboxed(tree.policy(scope_signal=scoped), probe)
    # The root parent is out of reach by plain permissions either way.
    assert result == {"outside": errno.EPERM if scoped else 0, "parent": errno.EPERM,
                      "self": 0}
