"""The root-owned store: verified trees installed once, re-checked at every launch.

Layout (DESIGN.md): <store>/apps/<bundle sha256>/ is the extracted tree; <store>/state/
<app>/ is the app's only writable place; <store>/launch/ holds the warm-start records
and tree snapshots (warm_exec.py). Extraction goes to a private temporary dir in apps/
and is renamed into place only after every entry was written and checked, so a crash
leaves nothing that is ever used.

The store path is checked as given, component by component from "/", never through a
symlink another user controls (safefile.open_trusted_dir); the store keeps the fd of its
root and does everything else relative to it, so the path is never resolved again.

Permissions, privileged (the store owner is root):
  <store>/               0755 root   names only (apps, state, launch)
  apps/, state/          0711 root   nobody but root needs to list them: which bundles
                                     and apps are installed is nobody else's business
  apps/<sha>/            0750 root:<gid of the app user>  only root and the app's group
                                     reach the code and the embedded profile (env.set)
  apps/<sha>/**          dirs 0555, files 0444 (0555 executable), root:root
  state/<app>/           0700 app user
  launch/                0700 root, records and snapshots 0600
One tree is shared by every launch of one bundle: a launch as a user of another primary
group re-groups the tree's top dir (`grant_tree`), which cuts off the instances still
running as the previous user. Concurrent instances of one bundle under users of
different groups are not supported.
Unprivileged (the store belongs to the invoking user, ~/.cache/sandrun): the same
layout owned by that user, the tree's top dir 0500.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from sandrun.errors import Problem, StoreError, VerificationError
from sandrun.launch import bytecode, safefile, warm_exec
from sandrun.launch.warm_exec import DEFAULT_STORE, default_store_root, tree_top_mode

if TYPE_CHECKING:
    from sandrun.bundle.archive import StrictArchive

TREE_DIR_MODE = 0o555  # every directory inside a tree
ROOT_MODE = 0o755
LISTING_MODE = 0o711  # apps/ and state/: traversable, not listable
_TMP_PREFIX = ".tmp-"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STORE_HINT = ("use a store whose every directory, from /, is owned by root (or by you "
               f"when not root), not writable by others and not a symlink (default "
               f"{DEFAULT_STORE})")


def default_store_path() -> Path:
    return Path(default_store_root())


class Store:
    """One store, opened once: `root` is for display and for the paths the app gets;
    every operation goes through the fd of the checked root (`dir_fd`)."""

    __slots__ = ("_fd", "owner", "root")

    def __init__(self, root: Path | str, owner: int) -> None:
        self.root = Path(os.path.abspath(root))  # made absolute against the cwd, as walked
        self.owner = owner  # uid that must own the store and every installed file
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"Store(root={str(self.root)!r}, owner={self.owner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and (self.root, self.owner) == (other.root, other.owner)

    def __hash__(self) -> int:
        return hash((self.root, self.owner))

    def __del__(self) -> None:
        self.close()

    def __copy__(self) -> Store:
        return self  # one fd, closed once: a copy is the same open store

    def __deepcopy__(self, memo: object) -> Store:
        return self

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # a forked child may have closed it
                os.close(fd)

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def tree(self, bundle_sha256: str) -> Path:
        return self.apps / bundle_sha256

    @property
    def tree_top_mode(self) -> int:
        """0750 root:<app group> in a root store; 0500 in a user's own store."""
        return tree_top_mode(self.owner)

    # ------------------------------------------------------------ opening and checking

    def dir_fd(self) -> int:
        """O_PATH fd of the checked store root (StoreError if missing or untrusted)."""
        if self._fd is None:
            self.check_ancestry()
        assert self._fd is not None
        return self._fd

    def exists(self) -> bool:
        """Whether the store exists; StoreError when its path is not trusted."""
        if self._fd is not None:
            return True
        try:
            self._open(create=False)
        except FileNotFoundError:
            return False
        return True

    def check_ancestry(self) -> None:
        """Open the store root through its path as given, every component checked
        (safefile.open_trusted_dir), and check root, apps/ and state/: owned by the
        store owner and writable only by it. StoreError names what is wrong."""
        if self._fd is not None:
            self._check_layout(self._fd)
            return
        try:
            self._open(create=False)
        except FileNotFoundError as exc:
            raise StoreError(f"store {self.root} does not exist ({exc.filename} is missing)",
                             "check --store; `sandrun exec` creates the store on first use"
                             ) from None

    def ensure_layout(self) -> None:
        """Create what is missing of the store (root 0755, apps/ and state/ 0711) and
        refuse a store that others could tamper with."""
        if self._fd is None:
            self._open(create=True)
        assert self._fd is not None
        for name in ("apps", "state"):
            try:
                os.mkdir(name, 0o700, dir_fd=self._fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot create store directory {self.root / name}: "
                                 f"{exc.strerror}", "pass --store DIR on a writable file "
                                 "system") from None
            os.chmod(name, LISTING_MODE, dir_fd=self._fd, follow_symlinks=False)
        self._check_layout(self._fd)

    def _open(self, *, create: bool) -> None:
        try:
            fd = safefile.open_trusted_dir(str(self.root), self.owner,
                                           create_mode=ROOT_MODE if create else None)
        except safefile.UnsafePath as exc:
            raise StoreError(f"store path {self.root}: component {exc.path} {exc.why}",
                             _STORE_HINT) from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            what = "create" if create else "open"
            raise StoreError(f"cannot {what} store {self.root}: {exc.strerror}"
                             + (f" ({exc.filename})" if exc.filename else ""),
                             "pass --store DIR on a writable file system") from None
        try:
            self._check_layout(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _check_layout(self, fd: int) -> None:
        for name in ("", "apps", "state"):
            try:
                st = os.fstat(fd) if not name else os.stat(name, dir_fd=fd,
                                                            follow_symlinks=False)
            except FileNotFoundError:
                continue  # created by ensure_layout when needed
            path = self.root / name if name else self.root
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != self.owner or st.st_mode & 0o022:
                raise StoreError(f"{path} must be a directory owned by uid {self.owner} and "
                                 f"writable only by it (it is {safefile.file_kind(st.st_mode)}"
                                 f", mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})",
                                 f"fix it: chown {self.owner} {path}; chmod go-w {path}")

    @contextlib.contextmanager
    def _subdir(self, name: str) -> Iterator[int]:
        """An O_RDONLY fd of apps/ or state/ (checked again: it is cheap)."""
        try:
            fd = os.open(name, _DIR, dir_fd=self.dir_fd())
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP, ENOTDIR: replaced since the layout check
            raise StoreError(f"cannot open {self.root / name}: {exc.strerror}",
                             f"it must be a directory owned by uid {self.owner}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != self.owner or st.st_mode & 0o022:
                raise StoreError(f"{self.root / name} is mode {stat.S_IMODE(st.st_mode):04o}, "
                                 f"uid {st.st_uid}: it must be writable only by uid "
                                 f"{self.owner}", f"fix it: chmod go-w {self.root / name}")
            yield fd
        finally:
            os.close(fd)

    def has_tree(self, bundle_sha256: str) -> bool:
        """Whether apps/<sha> exists (a dir or not: check_tree judges it); False when
        the store does not exist yet. StoreError when the store path is not trusted."""
        if not self.exists():
            return False
        try:
            with self._subdir("apps") as apps:
                os.stat(bundle_sha256, dir_fd=apps, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------ installing

    def install(self, bundle_sha256: str, archive: StrictArchive, manifest: Manifest,
                python_version: str | None = None, gid: int = 0) -> Path:
        """Extract a verified archive once; concurrent callers wait and reuse it. The
        tree's top dir gets group `gid` (the app user's; ignored in a user's own store).

        With the app's Python X.Y, bytecode is precompiled when sandrun's interpreter
        writes that format (bytecode.py)."""
        tree = self.tree(bundle_sha256)
        with self._subdir("apps") as apps, self._lock(apps, bundle_sha256):
            if _lexists(bundle_sha256, apps):  # installed, maybe while we waited
                self._set_group(apps, bundle_sha256, gid)
                return tree
            self._remove_leftovers(apps, bundle_sha256)
            tmp = f"{_TMP_PREFIX}{bundle_sha256}-{os.getpid()}"
            os.mkdir(tmp, 0o700, dir_fd=apps)
            try:
                tmp_fd = os.open(tmp, _DIR, dir_fd=apps)
                try:
                    self._extract(archive, manifest, tmp_fd, tree, python_version)
                    if self.owner == 0:
                        os.fchown(tmp_fd, 0, gid)
                    os.fchmod(tmp_fd, self.tree_top_mode)
                finally:
                    os.close(tmp_fd)
                os.rename(tmp, bundle_sha256, src_dir_fd=apps, dst_dir_fd=apps)
                os.fsync(apps)
            except BaseException:
                _remove_at(apps, tmp)
                raise
        return tree

    def grant_tree(self, bundle_sha256: str, gid: int) -> bool:
        """Give the app group `gid` access to an installed tree: re-group its top dir
        (one fchown, under the install lock). True if the group changed. No-op in a
        user's own store. Instances of the bundle still running under another group
        lose access to code they have not loaded yet."""
        with self._subdir("apps") as apps, self._lock(apps, bundle_sha256):
            return self._set_group(apps, bundle_sha256, gid)

    def _set_group(self, apps: int, bundle_sha256: str, gid: int) -> bool:
        if self.owner != 0:
            return False
        try:
            fd = os.open(bundle_sha256, _DIR, dir_fd=apps)
        except OSError as exc:
            raise StoreError(f"installed tree {self.tree(bundle_sha256)} cannot be opened: "
                             f"{exc.strerror} (a link or not a directory?)",
                             f"remove it (rm -rf {self.tree(bundle_sha256)}) so the next "
                             "launch installs it again") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != self.owner:
                raise StoreError(f"installed tree {self.tree(bundle_sha256)} belongs to uid "
                                 f"{st.st_uid}, not {self.owner}",
                                 f"remove it (rm -rf {self.tree(bundle_sha256)}) so the next "
                                 "launch installs it again, and find out who changed it")
            if st.st_gid == gid:
                return False
            os.fchown(fd, self.owner, gid)
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _lock(self, apps: int, bundle_sha256: str) -> Iterator[None]:
        fd = os.open(f".{bundle_sha256}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=apps)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_leftovers(self, apps: int, bundle_sha256: str) -> None:
        """Temp dirs of crashed extractions are never used; delete them."""
        prefix = f"{_TMP_PREFIX}{bundle_sha256}-"
        with os.scandir(apps) as it:
            names = [entry.name for entry in it if entry.name.startswith(prefix)]
        for name in names:
            _remove_at(apps, name)

    def _extract(self, archive: StrictArchive, manifest: Manifest, tmp: int, final: Path,
                 python_version: str | None) -> None:
        """Write every entry of an archive that verify_archive() passed, relative to the
        fd of the private temp dir. The archive parses an in-memory copy of the bundle,
        so what was hashed is what is written."""
        dirs: set[str] = set()
        for entry in archive.entries:
            parent = entry.name.rpartition("/")[0]
            if parent and parent not in dirs:
                prefix = ""
                for part in parent.split("/"):
                    prefix = f"{prefix}/{part}" if prefix else part
                    if prefix not in dirs:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(prefix, 0o700, dir_fd=tmp)
                        dirs.add(prefix)
            data = archive.read(entry)
            record = manifest.entries.get(entry.name)
            mode = 0o555 if record is not None and record.mode & 0o111 else 0o444
            fd = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        if python_version and bytecode.compatible(python_version):
            # py_compile takes paths: /proc/self/fd/N is the temp dir itself, not a path
            # resolved again (forked compile workers inherit the fd).
            for name in bytecode.compile_sources(_fd_path(tmp), final, manifest.entries):
                os.chmod(name, 0o444, dir_fd=tmp)
                dirs.add(name.rpartition("/")[0])
        for directory in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            os.chmod(directory, TREE_DIR_MODE, dir_fd=tmp)

    # ------------------------------------------------------------ checking a tree

    def check_tree(self, tree: Path | str, manifest: Manifest, manifest_bytes: bytes, *,
                   full: bool, gid: int | None = None) -> None:
        """Refuse an installed tree that was altered, extended or made accessible.

        The cheap check compares every name, type, owner, mode and size (and the
        manifest's bytes); `full` also re-hashes every file. The top dir must be
        `tree_top_mode`, owned by the store owner, and of group `gid` when given (a root
        store: the app user's group, see grant_tree).
        """
        tree = Path(tree)
        sha = tree.name
        problems: list[Problem] = []
        with self._subdir("apps") as apps:
            try:
                top = os.open(sha, _DIR, dir_fd=apps)
            except OSError as exc:
                raise VerificationError(f"installed tree {tree} cannot be opened",
                                        [Problem(str(tree), f"{exc.strerror} (a link or "
                                                 "not a directory?)")],
                                        f"remove it (rm -rf {tree}) so the next launch "
                                        "installs it again") from None
            try:
                self._check_top(os.fstat(top), tree, gid, problems)
                self._check_entries(top, manifest, manifest_bytes, full, problems)
            finally:
                os.close(top)
        if problems:
            raise VerificationError(
                f"installed tree {tree} was altered", problems,
                f"remove it (rm -rf {tree}) so the next launch installs it again from the "
                "bundle, and find out who changed it")

    def _check_top(self, st: os.stat_result, tree: Path, gid: int | None,
                   problems: list[Problem]) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != self.owner or mode != self.tree_top_mode:
            problems.append(Problem(str(tree), f"tree root is mode {mode:04o} uid {st.st_uid}, "
                                    f"expected {self.tree_top_mode:04o} uid {self.owner}"))
        if gid is not None and self.owner == 0 and st.st_gid != gid:
            problems.append(Problem(str(tree), f"tree root is group {st.st_gid}, expected the "
                                    f"app user's group {gid}"))

    def _check_entries(self, top: int, manifest: Manifest, manifest_bytes: bytes, full: bool,
                       problems: list[Problem]) -> None:
        expected = dict(manifest.entries)
        # A __pycache__ dir may exist only where a listed .py source is.
        dir_names = {name.rpartition("/")[0] + "/" + bytecode.CACHE_DIR + "/"
                     if "/" in name else bytecode.CACHE_DIR + "/"
                     for name in expected if name.endswith(".py")}
        seen: set[str] = set()
        for rel, entry_st in safefile.walk_dir(top):
            mode = stat.S_IMODE(entry_st.st_mode)
            if entry_st.st_uid != self.owner:
                problems.append(Problem(rel, f"owned by uid {entry_st.st_uid}, "
                                        f"expected {self.owner}"))
            if stat.S_ISDIR(entry_st.st_mode):
                if bytecode.is_pycache_dir(rel) and f"{rel}/" not in dir_names:
                    problems.append(Problem(rel + "/", "bytecode dir beside no listed source"))
                if mode != TREE_DIR_MODE:
                    problems.append(Problem(rel + "/", f"directory mode {mode:04o}, "
                                            "expected 0555"))
                continue
            if not stat.S_ISREG(entry_st.st_mode):
                problems.append(Problem(rel, "not a regular file (symlink or device)"))
                continue
            seen.add(rel)
            if rel == MANIFEST_NAME:
                if _read_at(top, rel) != manifest_bytes:
                    problems.append(Problem(rel, "installed manifest differs from the bundle's"))
                continue
            if rel == SIGNATURE_NAME:
                continue
            record = expected.get(rel)
            source = bytecode.source_of(rel) if record is None else None
            if source is not None and source in expected:
                if mode != 0o444:
                    problems.append(Problem(rel, f"mode {mode:04o}, expected 0444"))
                elif full:
                    why = bytecode.pyc_problem(_fd_path(top) / rel, _fd_path(top) / source)
                    if why:
                        problems.append(Problem(rel, f"bytecode {why}"))
                continue
            if record is None:
                problems.append(Problem(rel, "extra file not in the manifest"))
                continue
            want_mode = 0o555 if record.mode & 0o111 else 0o444
            if mode != want_mode:
                problems.append(Problem(rel, f"mode {mode:04o}, expected {want_mode:04o}"))
            if entry_st.st_size != record.size:
                problems.append(Problem(rel, f"size {entry_st.st_size}, expected {record.size}"))
            elif full and hashlib.sha256(_read_at(top, rel)).hexdigest() != record.sha256:
                problems.append(Problem(rel, "content differs from manifest"))
        for name in sorted(set(expected) - seen):
            problems.append(Problem(name, "missing from the installed tree"))
        if MANIFEST_NAME not in seen:
            problems.append(Problem(MANIFEST_NAME, "missing from the installed tree"))

    def tree_matches_snapshot(self, bundle_sha256: str) -> bool:
        """Whether the tree is exactly as when last fully verified (warm_exec)."""
        return warm_exec.snapshot_matches(self.dir_fd(), bundle_sha256)

    def save_tree_snapshot(self, bundle_sha256: str) -> None:
        """Call only right after the tree was installed or fully re-hashed."""
        warm_exec.save_snapshot(self.dir_fd(), bundle_sha256)

    # ------------------------------------------------------------ lifecycle (list, gc, rm)

    def tree_names(self) -> list[str]:
        """The bundle sha256 of every installed tree (temp dirs and locks left out)."""
        if not self.exists():
            return []
        with self._subdir("apps") as apps:
            return sorted(n for n in os.listdir(apps)
                          if len(n) == 64 and all(c in "0123456789abcdef" for c in n))

    def read_tree_file(self, bundle_sha256: str, rel: str) -> bytes | None:
        """A file of an installed tree (e.g. its manifest), never through a link."""
        with self._subdir("apps") as apps:
            try:
                top = os.open(bundle_sha256, _DIR, dir_fd=apps)
            except FileNotFoundError:
                return None
            try:
                return _read_at(top, rel)
            except OSError:
                return None
            finally:
                os.close(top)

    def tree_stat(self, bundle_sha256: str) -> os.stat_result:
        with self._subdir("apps") as apps:
            return os.stat(bundle_sha256, dir_fd=apps, follow_symlinks=False)

    def remove_tree(self, bundle_sha256: str) -> None:
        """Remove an installed tree and its snapshot, under its install lock (a launch
        installing it at the same time waits, then installs it again)."""
        with self._subdir("apps") as apps, self._lock(apps, bundle_sha256):
            _remove_at(apps, bundle_sha256)
            with contextlib.suppress(OSError):
                os.unlink(f".{bundle_sha256}.lock", dir_fd=apps)
        self.remove_launch_files(lambda name: name == bundle_sha256 + warm_exec.SNAPSHOT_SUFFIX)

    def _launch_dir(self) -> int | None:
        """An O_RDONLY fd of launch/ (root-only), or None when there is none (or it is
        not private: then nothing in it is trusted or touched)."""
        try:
            path_fd = safefile.open_private_dir(warm_exec.RECORD_DIR, dir_fd=self.dir_fd())
        except (FileNotFoundError, safefile.UnsafePath):
            return None
        try:
            return os.open(".", _DIR, dir_fd=path_fd)
        finally:
            os.close(path_fd)

    def remove_launch_files(self, doomed: object) -> list[str]:
        """Remove the files of launch/ (records, snapshots) for which doomed(name) is true;
        return their names."""
        fd = self._launch_dir()
        if fd is None:
            return []
        removed = []
        try:
            for name in sorted(os.listdir(fd)):
                if doomed(name):  # type: ignore[operator]
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)
                        removed.append(name)
        finally:
            os.close(fd)
        return removed

    def launch_records(self) -> list[tuple[str, float, bytes]]:
        """(name, mtime, bytes) of every launch record (not snapshots)."""
        fd = self._launch_dir()
        if fd is None:
            return []
        records = []
        try:
            for name in sorted(os.listdir(fd)):
                if name.endswith(warm_exec.SNAPSHOT_SUFFIX) or name.startswith("."):
                    continue
                with contextlib.suppress(OSError, safefile.UnsafePath):
                    data = safefile.read_private(name, dir_fd=fd)
                    if data is not None:
                        records.append((name, os.stat(name, dir_fd=fd).st_mtime, data))
        finally:
            os.close(fd)
        return records

    def remove_state(self, app: str) -> bool:
        """Remove <store>/state/<app>/ (without following anything in it)."""
        with self._subdir("state") as state:
            if not _lexists(app, state):
                return False
            _remove_at(state, app)
            return True

    # ------------------------------------------------------------ state dirs

    def state_dir(self, app: str, uid: int, gid: int, *, create: bool) -> Path:
        """<store>/state/<app>/, owned by the app user, 0700; refused if it is a link or
        belongs to someone else. Without `create`, a missing one is only named."""
        path = self.state / app
        if not create and not self.exists():
            return path
        try:
            with self._subdir("state") as state:
                try:
                    st = os.stat(app, dir_fd=state, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        return path
                    self._create_state_dir(state, app, uid, gid)
                    st = os.stat(app, dir_fd=state, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise StoreError(f"state dir {path} is {safefile.file_kind(st.st_mode)}, "
                                     "not a directory", f"remove it: rm {path}")
                if st.st_uid != uid:
                    raise StoreError(f"state dir {path} belongs to uid {st.st_uid}, not the "
                                     f"app user (uid {uid})", "if the user changed on purpose"
                                     f": chown -R {uid}:{gid} {path}")
                if stat.S_IMODE(st.st_mode) != 0o700 and create:
                    # Only root can replace the entry in state/; the app may chmod its dir.
                    fd = os.open(app, _DIR, dir_fd=state)
                    try:
                        if os.fstat(fd).st_uid == uid:
                            os.fchmod(fd, 0o700)
                    finally:
                        os.close(fd)
        except FileNotFoundError:
            if create:
                raise
        return path

    def _create_state_dir(self, state: int, app: str, uid: int, gid: int) -> None:
        """Build the dir (with tmp/) under a private name, then rename it into place, so
        a concurrent launch never sees it half made (owned by root, no tmp/)."""
        staging = f"{_TMP_PREFIX}{app}-{os.getpid()}"
        _remove_at(state, staging)
        os.mkdir(staging, 0o700, dir_fd=state)
        fd = os.open(staging, _DIR, dir_fd=state)
        try:
            os.mkdir("tmp", 0o700, dir_fd=fd)
            os.chmod("tmp", 0o700, dir_fd=fd)  # exactly, whatever the umask
            os.fchmod(fd, 0o700)
            if (uid, gid) != (os.geteuid(), os.getegid()):  # under systemd, not root: ours
                os.chown("tmp", uid, gid, dir_fd=fd, follow_symlinks=False)
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
        try:
            os.rename(staging, app, src_dir_fd=state, dst_dir_fd=state)
        except OSError:  # a concurrent launch won the race: use its dir
            _remove_at(state, staging)
            st = os.stat(app, dir_fd=state, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise


def _fd_path(fd: int) -> Path:
    """A path naming what fd is open on (the kernel's magic link), for APIs taking paths."""
    return Path(f"/proc/self/fd/{fd}")


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read_at(top: int, rel: str) -> bytes:
    fd = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=top)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove `name` under dir_fd (a possibly read-only tree) without following links."""
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError:  # not a directory (or a link): one entry
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        return
    try:  # read-only dirs stop their owner (not root) from emptying them
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)
        with contextlib.suppress(OSError):
            for rel, st in safefile.walk_dir(fd):
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(rel, 0o700, dir_fd=fd)
    finally:
        os.close(fd)
    shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
