"""The store path, the bundle file and store permissions, attacked for real.

Root never reaches the store through a symlink or directory another user controls (the
path is checked as given, component by component, then used through fds); the bundle
is opened without blocking on a FIFO or reading a huge file; installed trees are
readable by root and the app's group only, launch records and snapshots by root only.
Attacker steps run as nobody (65534) in a subprocess, never as root.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import resource
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NOBODY, run_sandrun, users_removed_after
from wheelcraft import make_wheel

from sandrun.errors import BundleError, StoreError
from sandrun.launch import safefile, warm_exec
from sandrun.launch.store import Store

APP = "pathapp"
APP_USER = f"sandrun-{APP}"
OTHER_USER = "sandrun-t-pathother"  # a second app user, with its own group
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody (the venv's is under /root)

APP_SOURCE = '''\
import os, sys

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    print("hello", os.getuid(), os.getgid()); return 0
'''

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")


def as_user(code: str, uid: int = NOBODY, gid: int = NOBODY
            ) -> subprocess.CompletedProcess[str]:
    """Run Python code as an unprivileged user (never root: the code checks)."""
    assert uid != 0
    guard = "import os, sys\nif os.getuid() == 0: sys.exit('refusing to run as root')\n"
    proc = subprocess.run([SYSTEM_PYTHON, "-I", "-c", guard + code], capture_output=True,
                          text=True, timeout=30, check=False, user=uid, group=gid,
                          extra_groups=[], cwd="/", stdin=subprocess.DEVNULL)
    assert "refusing to run as root" not in proc.stderr
    return proc


def open_errno_as(uid: int, gid: int, path: Path, how: str = "open") -> str:
    """`ok` or the errno name of opening (or listing) path as uid:gid."""
    action = (f"open({str(path)!r}, 'rb').read(1)" if how == "open"
              else f"os.listdir({str(path)!r})")
    proc = as_user(f"import errno\ntry:\n    {action}\n    print('ok')\n"
                   "except OSError as exc:\n    print(errno.errorcode[exc.errno])\n", uid, gid)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def sticky_name(tag: str) -> Path:
    """A fresh name directly in the sticky /tmp (where another user can create it)."""
    return Path("/tmp") / f"sandrun-t-{tag}-{uuid.uuid4().hex[:12]}"


def remove(path: Path) -> None:
    """Without opening anything (rmtree would open a FIFO, and block)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
    else:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app user the launches below create goes with the module."""
    with users_removed_after(APP_USER):
        yield


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Path]]:
    """A 0755 root dir under /tmp (traversable by app users) with a bundle and a store."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-paths-", dir="/tmp"))
    base.chmod(0o755)
    make_wheel(base / "wheels", APP, "1.0", {f"{APP}.py": APP_SOURCE})
    bundle = base / f"{APP}.pyz"
    proc = run_sandrun("bundle", APP, "--no-index", "--find-links", str(base / "wheels"),
                       "-e", f"{APP}:main", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    yield {"base": base, "bundle": bundle, "store": base / "store", "sha": Path(sha)}
    shutil.rmtree(base, ignore_errors=True)


def exec_app(world: dict[str, Path], store: Path | str, *extra: str, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    return run_sandrun("exec", "--store", str(store), *extra, str(world["bundle"]),
                       timeout=timeout)


def snapshot_of(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Names, modes, sizes and mtimes of everything under a dir (to prove nothing changed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, directory)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


# ---------------------------------------------------------------- the store path


@pytest.mark.parametrize("target_owner", ["nobody", "root"])
def test_store_through_another_users_symlink_is_refused(world: dict[str, Path],
                                                        target_owner: str) -> None:
    """nobody plants /tmp/<name> -> a dir (theirs, or a root-owned one): `--store
    /tmp/<name>/store` is refused naming the link, and nothing appears at the target."""
    link = sticky_name("evil")
    target = sticky_name("evil-target") if target_owner == "nobody" else world["base"] / \
        f"victim-{uuid.uuid4().hex[:8]}"
    try:
        if target_owner == "root":
            target.mkdir(mode=0o755)
        make_target = f"os.mkdir({str(target)!r}, 0o755)\n" if target_owner == "nobody" \
            else ""
        proc = as_user(make_target + f"os.symlink({str(target)!r}, {str(link)!r})\n")
        assert proc.returncode == 0, proc.stderr
        assert link.lstat().st_uid == NOBODY
        before = snapshot_of(target)
        for extra in ((), ("--dry-run",)):
            started = time.monotonic()
            result = exec_app(world, link / "store", *extra)
            assert result.returncode == 125, (extra, result.stdout, result.stderr)
            assert f"component {link} is a symbolic link owned by uid {NOBODY}" in \
                result.stderr
            assert "Traceback" not in result.stderr and "hello" not in result.stdout
            assert time.monotonic() - started < 30
        assert snapshot_of(target) == before == {}
        with pytest.raises(StoreError, match="is a symbolic link owned by uid 65534"):
            Store(link / "store", 0).ensure_layout()
        assert snapshot_of(target) == {}
    finally:
        remove(link)
        remove(target)


def test_store_under_another_users_dir_is_refused(world: dict[str, Path]) -> None:
    """A real dir nobody made in /tmp is as bad as their link: they can swap its contents."""
    theirs = sticky_name("theirs")
    try:
        proc = as_user(f"os.mkdir({str(theirs)!r}, 0o755)\n")
        assert proc.returncode == 0, proc.stderr
        result = exec_app(world, theirs / "store")
        assert result.returncode == 125, result.stderr
        assert f"component {theirs} is owned by uid {NOBODY}, not root" in result.stderr
        assert os.listdir(theirs) == []
    finally:
        remove(theirs)


def test_warm_path_refuses_a_component_replaced_by_another_user(
        world: dict[str, Path]) -> None:
    """A store that was fine (a root dir in /tmp) is moved away, as a /tmp cleaner would
    remove it; nobody re-creates its name as a link to where the store now is, so the
    path resolves to a store full of valid, root-owned records. Neither the warm nor the
    cold path may use it."""
    parent = sticky_name("moved")
    moved = world["base"] / f"moved-{uuid.uuid4().hex[:8]}"
    store = parent / "store"
    parent.mkdir(mode=0o755)
    try:
        for _ in range(2):
            proc = exec_app(world, store)
            assert proc.returncode == 0, proc.stderr
        args = warm_exec.parse_exec_args(["--store", str(store), str(world["bundle"])])
        assert args is not None
        assert warm_exec.load_record(args) is not None  # the warm path would be taken
        os.rename(parent, moved)
        proc = as_user(f"os.symlink({str(moved)!r}, {str(parent)!r})\n")
        assert proc.returncode == 0, proc.stderr
        assert (store / "launch").is_dir()  # the path resolves to the old store
        before = snapshot_of(moved)

        assert warm_exec.open_store(str(store)) is None
        assert warm_exec.load_record(args) is None
        assert not warm_exec.tree_matches_snapshot(str(store), str(world["sha"]))
        result = exec_app(world, store)
        assert result.returncode == 125, (result.stdout, result.stderr)
        assert "hello" not in result.stdout
        assert f"component {parent} is a symbolic link owned by uid {NOBODY}" in result.stderr
        assert snapshot_of(moved) == before
    finally:
        remove(parent)
        remove(moved)


def test_trusted_dir_walk(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The component rules, one at a time (root's own links are followed)."""
    base = world["base"]
    real = base / "real"
    real.mkdir(exist_ok=True)
    alias = base / "alias"
    if not alias.is_symlink():
        alias.symlink_to("real")

    def ino(path: str, owner: int = 0, **kw: int) -> int:
        fd = safefile.open_trusted_dir(path, owner, **kw)
        try:
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)

    # A root link in a root dir nobody else may write: followed (so is /var/run -> /run).
    assert ino(str(alias)) == real.stat().st_ino
    assert ino(str(base / "alias" / ".." / "alias")) == real.stat().st_ino
    if os.path.islink("/var/run"):
        assert ino("/var/run") == os.stat("/run").st_ino
    # Relative paths are walked from "/" through the cwd.
    monkeypatch.chdir(base)
    assert ino("alias") == real.stat().st_ino
    # A root link in sticky /tmp: others could not change it either, but the rule stays
    # simple and strict (only root-owned dirs nobody else may write hold trusted links).
    root_link = sticky_name("rootlink")
    root_link.symlink_to(real)
    try:
        with pytest.raises(safefile.UnsafePath, match="is a symbolic link owned by uid 0"):
            ino(str(root_link))
    finally:
        root_link.unlink()
    # Writable by a group, not sticky: refused; sticky and root-owned: fine.
    shared = base / "shared"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o775)
    with pytest.raises(safefile.UnsafePath, match=r"writable by its group \(mode 0775\)"):
        ino(str(shared))
    shared.chmod(0o1777)
    assert ino(str(shared)) == shared.stat().st_ino
    # The invoking user's own dirs count when it is the store owner (unprivileged store).
    mine = base / "mine"
    mine.mkdir(exist_ok=True)
    os.chown(mine, NOBODY, NOBODY)
    with pytest.raises(safefile.UnsafePath, match="owned by uid 65534, not root"):
        ino(str(mine))
    assert ino(str(mine), owner=NOBODY) == mine.stat().st_ino
    monkeypatch.chdir(mine)  # a relative path is no better than the cwd it is under
    with pytest.raises(safefile.UnsafePath) as under_cwd:
        ino("store")
    assert under_cwd.value.path == str(mine)
    # Missing components: FileNotFoundError naming it, or created with exactly that mode.
    with pytest.raises(FileNotFoundError) as missing:
        ino(str(base / "new" / "store"))
    assert missing.value.filename == str(base / "new")
    old_umask = os.umask(0o077)
    try:
        ino(str(base / "new" / "store"), create_mode=0o755)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((base / "new" / "store").stat().st_mode) == 0o755
    # Nothing is created after an untrusted component.
    shared.chmod(0o777)
    with pytest.raises(safefile.UnsafePath):
        ino(str(shared / "x" / "store"), create_mode=0o755)
    assert not (shared / "x").exists()


def test_warm_store_check_is_cheap(world: dict[str, Path]) -> None:
    store = world["base"] / "cheap-store"
    proc = exec_app(world, store)
    assert proc.returncode == 0, proc.stderr
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        fd = warm_exec.open_store(str(store))
        timings.append(time.perf_counter() - started)
        assert fd is not None
        os.close(fd)
    timings.sort()
    median = timings[len(timings) // 2]
    print(f"open_store median {median * 1e6:.0f} us")
    assert median < 0.001


# ---------------------------------------------------------------- the bundle file


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory", "device"])
def test_bundle_that_is_not_a_regular_file(world: dict[str, Path], kind: str) -> None:
    """nobody puts a FIFO (or socket, dir) where the bundle is expected: root's exec
    neither hangs nor reads it."""
    path = sticky_name(f"bundle-{kind}").with_suffix(".pyz")
    code = {"fifo": f"os.mkfifo({str(path)!r})\n",
            "socket": f"import socket\nsocket.socket(socket.AF_UNIX).bind({str(path)!r})\n",
            "directory": f"os.mkdir({str(path)!r})\n",
            "device": ""}[kind]
    if kind == "device":
        path = Path("/dev/null")
    try:
        proc = as_user(code)
        assert proc.returncode == 0, proc.stderr
        started = time.monotonic()
        result = run_sandrun("exec", "--store", str(world["store"]), str(path), timeout=20)
        assert result.returncode == 125, result.stderr
        words = {"fifo": "is a FIFO (named pipe), not a bundle file",
                 "socket": "is a socket, not a bundle file",
                 "directory": "is a directory, not a bundle file",
                 "device": "is a character device, not a bundle file"}[kind]
        assert f"bundle {path} {words}" in result.stderr
        assert "Traceback" not in result.stderr
        assert time.monotonic() - started < 20
    finally:
        if kind != "device":
            remove(path)


def test_oversized_bundle_is_refused_before_reading(world: dict[str, Path]) -> None:
    """A sparse file over the limit: refused from its size, with too little address space
    to have read it."""
    huge = world["base"] / "huge.pyz"
    with open(huge, "wb") as f:
        f.truncate(safefile.MAX_BUNDLE_SIZE + 1)
    try:
        def small_address_space() -> None:
            limit = 2 << 30  # half the file: reading it would fail with MemoryError
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        started = time.monotonic()
        result = run_sandrun("exec", "--store", str(world["store"]), str(huge), timeout=20,
                             preexec_fn=small_address_space)
        assert result.returncode == 125, result.stderr
        assert f"bundle {huge} is {safefile.MAX_BUNDLE_SIZE + 1} bytes, more than the limit " \
            f"of {safefile.MAX_BUNDLE_SIZE} bytes" in result.stderr
        assert "MemoryError" not in result.stderr
        assert time.monotonic() - started < 20
    finally:
        huge.unlink()


def test_read_bundle(world: dict[str, Path]) -> None:
    from sandrun.bundle.archive import MAX_ARCHIVE_SIZE

    assert safefile.MAX_BUNDLE_SIZE == MAX_ARCHIVE_SIZE  # what `sandrun bundle` may write
    data, sha = safefile.read_bundle(str(world["bundle"]))
    assert data == world["bundle"].read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() == str(world["sha"])
    with pytest.raises(BundleError, match="more than the limit of 100 bytes"):
        safefile.read_bundle(str(world["bundle"]), max_size=100)
    # /proc files say size 0 and then have content: a file that changes size is refused.
    with pytest.raises(BundleError, match="changed size while it was read"):
        safefile.read_bundle("/proc/self/status")
    link = world["base"] / "link.pyz"
    link.symlink_to(world["bundle"])
    try:
        with pytest.raises(BundleError, match="is a symbolic link"):
            safefile.read_bundle(str(link))
    finally:
        link.unlink()
    with pytest.raises(BundleError, match="does not exist"):
        safefile.read_bundle(str(world["base"] / "missing.pyz"))


# ---------------------------------------------------------------- permissions


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    with users_removed_after(OTHER_USER):
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", OTHER_USER], check=True, capture_output=True)
        yield pwd.getpwnam(OTHER_USER)


def test_installed_tree_is_readable_by_the_app_group_only(world: dict[str, Path]) -> None:
    store = world["store"]
    proc = exec_app(world, store)
    assert proc.returncode == 0, proc.stderr
    user = pwd.getpwnam(APP_USER)
    assert proc.stdout.split() == ["hello", str(user.pw_uid), str(user.pw_gid)]
    tree = store / "apps" / str(world["sha"])
    top = tree.stat()
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (0, user.pw_gid, 0o750)
    manifest = tree / ".sandrun" / "manifest.json"
    profile = tree / ".sandrun" / "profile.toml"
    for path in (manifest, profile, tree / "site-packages" / f"{APP}.py"):
        assert open_errno_as(NOBODY, NOBODY, path) == "EACCES", path
        assert open_errno_as(user.pw_uid, user.pw_gid, path) == "ok", path
    assert open_errno_as(NOBODY, NOBODY, tree, "list") == "EACCES"
    # apps/ and state/ are traversable, not listable; the root lists names only.
    for name in ("apps", "state"):
        assert open_errno_as(NOBODY, NOBODY, store / name, "list") == "EACCES"
    assert open_errno_as(NOBODY, NOBODY, store, "list") == "ok"


def test_a_user_of_another_group_takes_the_tree_over(world: dict[str, Path],
                                                     other_user: pwd.struct_passwd) -> None:
    """The operator moves an app to another user (the state dir is chowned, as the
    error says to): the tree is granted to that user's group and the previous group loses
    it; the old warm record is not used until a cold launch granted it back."""
    store = world["base"] / "shared-store"
    proc = exec_app(world, store)
    assert proc.returncode == 0, proc.stderr
    first = pwd.getpwnam(APP_USER)
    tree = store / "apps" / str(world["sha"])
    source = tree / "site-packages" / f"{APP}.py"
    args = warm_exec.parse_exec_args(["--store", str(store), str(world["bundle"])])
    assert args is not None and warm_exec.load_record(args) is not None

    state = store / "state" / APP

    def chown_state(user: pwd.struct_passwd) -> None:
        for path in (state, state / "tmp"):
            os.chown(path, user.pw_uid, user.pw_gid)

    chown_state(other_user)
    proc = exec_app(world, store, "--user", OTHER_USER)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["hello", str(other_user.pw_uid), str(other_user.pw_gid)]
    assert tree.stat().st_gid == other_user.pw_gid
    assert open_errno_as(other_user.pw_uid, other_user.pw_gid, source) == "ok"
    assert open_errno_as(first.pw_uid, first.pw_gid, source) == "EACCES"
    assert warm_exec.load_record(args) is None  # granted to another group since
    chown_state(first)
    proc = exec_app(world, store)
    assert proc.returncode == 0, proc.stderr
    assert tree.stat().st_gid == first.pw_gid
    assert warm_exec.load_record(args) is not None


def test_records_snapshots_and_layout_are_private(world: dict[str, Path]) -> None:
    store = world["store"]
    for _ in range(2):
        proc = exec_app(world, store)
        assert proc.returncode == 0, proc.stderr
    user = pwd.getpwnam(APP_USER)
    expected = {store: (0, 0o755), store / "apps": (0, 0o711), store / "state": (0, 0o711),
                store / "launch": (0, 0o700), store / "state" / APP: (user.pw_uid, 0o700),
                store / "state" / APP / "tmp": (user.pw_uid, 0o700)}
    for path, (uid, mode) in expected.items():
        st = path.lstat()
        assert stat.S_ISDIR(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == \
            (uid, mode), path
    records = list((store / "launch").iterdir())
    assert any(p.name == f"{world['sha']}.tree" for p in records)
    assert any(not p.name.endswith(".tree") for p in records)
    for record in records:
        st = record.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and \
            stat.S_IMODE(st.st_mode) == 0o600, record
    assert open_errno_as(NOBODY, NOBODY, store / "launch", "list") == "EACCES"
    assert not [p for p in (store / "apps").iterdir() if p.name.startswith(".tmp-")]


def test_warm_path_refuses_a_changed_tree_top(world: dict[str, Path]) -> None:
    """Mode, owner or group of the tree's top dir changed: the warm path declines and
    the cold path refuses the tree, or re-groups it for the launching user."""
    store = world["base"] / "top-store"
    for _ in range(2):
        assert exec_app(world, store).returncode == 0
    args = warm_exec.parse_exec_args(["--store", str(store), str(world["bundle"])])
    assert args is not None and warm_exec.load_record(args) is not None
    tree = store / "apps" / str(world["sha"])
    st = tree.stat()
    tree.chmod(0o755)
    assert warm_exec.load_record(args) is None
    proc = exec_app(world, store)
    assert proc.returncode == 125
    assert "tree root is mode 0755 uid 0, expected 0750 uid 0" in proc.stderr
    tree.chmod(0o750)
    os.chown(tree, NOBODY, st.st_gid)
    assert warm_exec.load_record(args) is None
    proc = exec_app(world, store)
    assert proc.returncode == 125 and "uid 65534, expected 0750 uid 0" in proc.stderr
    os.chown(tree, 0, 0)  # a group change is a grant, not tampering: repaired
    assert warm_exec.load_record(args) is None
    proc = exec_app(world, store)
    assert proc.returncode == 0, proc.stderr
    assert tree.stat().st_gid == st.st_gid
    assert warm_exec.load_record(args) is not None


def test_private_file_helpers(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        launch = safefile.open_private_dir("launch", dir_fd=fd, create=True)
        try:
            safefile.write_private("rec", b"data", dir_fd=launch)
            assert safefile.read_private("rec", dir_fd=launch) == b"data"
            assert stat.S_IMODE((tmp_path / "launch" / "rec").stat().st_mode) == 0o600
            assert safefile.read_private("absent", dir_fd=launch) is None
            os.chmod(tmp_path / "launch" / "rec", 0o640)
            with pytest.raises(safefile.UnsafePath, match="mode 0640"):
                safefile.read_private("rec", dir_fd=launch)
            os.symlink("/etc/passwd", tmp_path / "launch" / "link")
            with pytest.raises(safefile.UnsafePath, match="not a regular file"):
                safefile.read_private("link", dir_fd=launch)
            os.mkfifo(tmp_path / "launch" / "fifo", 0o600)
            with pytest.raises(safefile.UnsafePath, match="FIFO"):
                safefile.read_private("fifo", dir_fd=launch)
        finally:
            os.close(launch)
        os.chmod(tmp_path / "launch", 0o755)
        with pytest.raises(safefile.UnsafePath, match="mode 0755"):
            safefile.open_private_dir("launch", dir_fd=fd)
    finally:
        os.close(fd)
