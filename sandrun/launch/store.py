"""The root-owned store: verified trees installed once, re-checked at every launch.

Layout (DESIGN.md): <store>/apps/<bundle sha256>/ is the extracted tree; <store>/state/
<app>/ is the app's only writable place; <store>/launch/ holds the warm-start records
and tree snapshots (warm_exec.py). Extraction goes to a private temporary dir in apps/
and is renamed into place only after every entry was written and checked, so a crash
leaves nothing that is ever used. A cold `sandrun exec` as root installs the tree without
its bytecode (marked apps/.<sha>.bytecode) and compiles it after the launch
(compile_bytecode, in a detached process: apps/.pyc-<sha>-<pid> is its temp dir); each
.pyc is renamed into the tree whole, under the tree's lock, and the tree is snapshot
again before the mark goes.

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

import array
import contextlib
import ctypes
import fcntl
import gc
import hashlib
import mmap
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from sandrun.errors import Problem, StoreError, VerificationError
from sandrun.launch import bytecode, safefile, warm_exec
from sandrun.launch.warm_exec import DEFAULT_STORE, default_store_root, tree_top_mode

if TYPE_CHECKING:
    from sandrun.bundle.archive import StrictArchive

TREE_DIR_MODE = 0o555  # every directory inside a tree
ROOT_MODE = 0o755
LISTING_MODE = 0o711  # apps/ and state/: traversable, not listable
_TMP_PREFIX = ".tmp-"  # apps/.tmp-<sha>-<pid>: an extraction in progress
_PYC_TMP_PREFIX = ".pyc-"  # apps/.pyc-<sha>-<pid>: bytecode compiled after the launch
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
                python_version: str | None = None, gid: int = 0,
                progress: Callable[[str], None] | None = None, *,
                defer_bytecode: bool = False) -> Path:
        """Extract a verified archive once; concurrent callers wait and reuse it. The
        tree's top dir gets group `gid` (the app user's; ignored in a user's own store).

        With the app's Python X.Y, bytecode is precompiled when sandrun's interpreter
        writes that format (bytecode.py). `defer_bytecode` (a root store only): the
        tree is installed without it and marked pending (bytecode_pending), for
        compile_bytecode to add once the app runs. `progress` gets one line per phase
        (what is installed and how much, then what it took); it is not called when the
        tree was installed already."""
        tree = self.tree(bundle_sha256)
        defer = defer_bytecode and defers_bytecode(self.owner, manifest, python_version)
        with self._subdir("apps") as apps, self._lock(apps, bundle_sha256):
            if _lexists(bundle_sha256, apps):  # installed, maybe while we waited
                self._set_group(apps, bundle_sha256, gid)
                return tree
            self._remove_leftovers(apps, bundle_sha256)
            tmp = f"{_TMP_PREFIX}{bundle_sha256}-{os.getpid()}"
            os.mkdir(tmp, 0o700, dir_fd=apps)
            try:
                if defer:  # before the rename: no tree without its mark
                    os.close(os.open(_pending_name(bundle_sha256), _CREATE_OR_KEEP, 0o600,
                                     dir_fd=apps))
                tmp_fd = os.open(tmp, _DIR, dir_fd=apps)
                try:
                    self._extract(archive, manifest, tmp_fd, tree, python_version,
                                  progress or _no_progress, deferred=defer)
                    if self.owner == 0:
                        os.fchown(tmp_fd, 0, gid)
                    os.fchmod(tmp_fd, self.tree_top_mode)
                    _sync_file_system(tmp_fd, tree)  # one syncfs, not an fsync per file
                finally:
                    os.close(tmp_fd)
                os.rename(tmp, bundle_sha256, src_dir_fd=apps, dst_dir_fd=apps)
                os.fsync(apps)
            except BaseException:
                _remove_at(apps, tmp)
                if defer:
                    with contextlib.suppress(OSError):
                        os.unlink(_pending_name(bundle_sha256), dir_fd=apps)
                raise
            finally:
                archive.drop_contents()
        return tree

    # ------------------------------------------------------------ deferred bytecode

    def bytecode_pending(self, bundle_sha256: str) -> bool:
        """Whether the tree was installed without its bytecode, which compile_bytecode
        has not finished adding (it may be running now, or have been killed)."""
        with self._subdir("apps") as apps:
            return _lexists(_pending_name(bundle_sha256), apps)

    def lock_tree_now(self, bundle_sha256: str) -> int | None:
        """An fd holding the tree's install lock exclusively, taken without waiting (the
        caller closes it: a forked compile keeps it held), or None when someone holds it."""
        with self._subdir("apps") as apps:
            fd = os.open(f".{bundle_sha256}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=apps)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def compile_bytecode(self, bundle_sha256: str, manifest: Manifest, manifest_bytes: bytes,
                         python_version: str,
                         before_publishing: Callable[[], None] | None = None,
                         after_snapshot: Callable[[], None] | None = None,
                         held_lock: int | None = None) -> bool:
        """Add the bytecode an install deferred, under the tree's install lock: compile
        every listed source that has none yet (on every CPU) into a private temp dir,
        call `before_publishing`, rename each .pyc into place (root-owned, 0444, in
        0555 __pycache__ dirs, exactly what an install writes), one syncfs, check the
        tree, save its snapshot, call `after_snapshot` (the launch records), and only then
        drop the pending mark: a compile that is killed leaves the mark, and the next
        launch finishes it. True when this call finished the tree; False when nothing
        was pending. `held_lock`: an fd of the tree's lock the caller already holds
        exclusively (lock_tree_now), used instead of taking it."""
        tree = self.tree(bundle_sha256)
        with self._subdir("apps") as apps, (contextlib.nullcontext() if held_lock is not None
                                            else self._lock(apps, bundle_sha256)):
            pending = _pending_name(bundle_sha256)
            if not _lexists(pending, apps):
                return False
            top = os.open(bundle_sha256, _DIR, dir_fd=apps)
            try:
                if bytecode.compatible(python_version):
                    self._remove_leftovers(apps, bundle_sha256)
                    tmp = f"{_PYC_TMP_PREFIX}{bundle_sha256}-{os.getpid()}"
                    os.mkdir(tmp, 0o700, dir_fd=apps)
                    try:
                        tmp_fd = os.open(tmp, _DIR, dir_fd=apps)
                        try:
                            _compile_deferred(manifest, top, tmp_fd, tree, before_publishing)
                        finally:
                            os.close(tmp_fd)
                    finally:
                        _remove_at(apps, tmp)
                _sync_file_system(top, tree)
            finally:
                os.close(top)
            self.check_tree(tree, manifest, manifest_bytes, full=False)
            self.save_tree_snapshot(bundle_sha256)
            if after_snapshot is not None:
                after_snapshot()
            os.unlink(pending, dir_fd=apps)
            os.fsync(apps)
        return True

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
    def _lock(self, apps: int, bundle_sha256: str, how: int = fcntl.LOCK_EX) -> Iterator[None]:
        fd = os.open(f".{bundle_sha256}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=apps)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    def _remove_leftovers(self, apps: int, bundle_sha256: str) -> None:
        """Temp dirs of crashed extractions and compiles are never used; delete them
        (under the tree's lock: none is in use)."""
        prefixes = (f"{_TMP_PREFIX}{bundle_sha256}-", f"{_PYC_TMP_PREFIX}{bundle_sha256}-")
        with os.scandir(apps) as it:
            names = [entry.name for entry in it if entry.name.startswith(prefixes)]
        for name in names:
            _remove_at(apps, name)

    def _extract(self, archive: StrictArchive, manifest: Manifest, tmp: int, final: Path,
                 python_version: str | None, progress: Callable[[str], None],
                 deferred: bool = False) -> None:
        """Write every entry of an archive that verify_archive() passed, relative to the
        fd of the private temp dir, and the bytecode of its sources. The archive parses
        an in-memory copy of the bundle, so what was hashed is what is written.

        Large trees are written by one process per CPU (the caller and forked helpers
        taking entries from one queue, the costliest first): compiling is most of an
        install (numpy: 2.4 s of CPU for 9.8 MB of sources). `deferred`: the bytecode
        is compiled after the launch (Store.compile_bytecode), not here."""
        started = time.monotonic()
        entries = archive.entries
        compile_sources = python_version is not None and bytecode.compatible(python_version)
        sources = [compile_sources and bytecode.compiles(e.name) and e.name in manifest.entries
                   for e in entries]
        later = " after the launch" if deferred else ""
        if deferred:  # counted for the progress lines, compiled by compile_bytecode
            count = sum(sources)
            sources = [False] * len(entries)
        dirs = _make_parents(tmp, [e.name for e in entries])
        costs = [_COST_PER_FILE + e.size * (_COST_PER_SOURCE_BYTE if source else 1)
                 for e, source in zip(entries, sources, strict=True)]
        workers = _worker_count(sum(costs))
        size = sum(e.size for e in entries)
        if not deferred:
            count = sum(sources)
        progress(f"installing {manifest.app_name} {manifest.app_version}: {len(entries)} "
                 f"files, {size / 1e6:.1f} MB" + (f", compiling {count} modules{later}"
                                                   if count else "")
                 + (f" on {workers} CPUs" if workers > 1 else ""))
        status = mmap.mmap(-1, max(len(entries), 1))  # MAP_SHARED: the helpers report here
        collecting = gc.isenabled()
        gc.disable()  # compile() makes no cycles; the collector only slows it (~10%)
        try:
            writer = _TreeWriter(archive, manifest, tmp, final, sources, status)
            order = sorted(range(len(entries)), key=costs.__getitem__, reverse=True)
            _run_jobs(writer.write, order, workers, final)
            done = status[:len(entries)]
        finally:
            if collecting:
                gc.enable()
            status.close()
        unwritten = [entries[i].name for i, state in enumerate(done) if state == _PENDING]
        if unwritten:
            raise StoreError(f"installing into {final} failed: {len(unwritten)} entries were "
                             f"not written (first: {unwritten[0]})",
                             "launch again; report a bug if it happens again")
        compiled = [entries[i].name for i, state in enumerate(done) if state == _COMPILED]
        dirs.update(bytecode.pycache_dirs(bytecode.pyc_name(name) for name in compiled))
        for directory in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            os.chmod(directory, TREE_DIR_MODE, dir_fd=tmp)
        progress(f"installed {manifest.app_name} {manifest.app_version} in "
                 f"{time.monotonic() - started:.1f} s: {len(entries)} files"
                 + (f", {count} modules to compile after the launch" if deferred and count
                    else f", {len(compiled)} modules compiled" if count else ""))

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
            self._remove_leftovers(apps, bundle_sha256)
            for name in (_pending_name(bundle_sha256), f".{bundle_sha256}.lock"):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=apps)
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


def _no_progress(_: str) -> None:
    pass


_PENDING, _WRITTEN, _COMPILED = 0, 1, 2  # an entry's state in the shared status map
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_OR_KEEP = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
# Relative costs of writing an entry (about 8 ns per byte written, 100 us per file) and of
# compiling a source (about 250 ns per byte), for the order and the number of processes.
_COST_PER_FILE = 12_000
_COST_PER_SOURCE_BYTE = 32
_PARALLEL_COST = 12_000_000  # about 100 ms alone: below, forking helpers costs more
_MAX_WORKERS = 8
_MAX_RECORDS = 16_000  # job records in one pipe (4 bytes each: within its 64 KiB)


def _make_parents(tmp: int, names: list[str]) -> set[str]:
    """Create (0700) every parent directory of `names` under the temp dir; return them."""
    dirs: set[str] = set()
    for name in names:
        parent = name.rpartition("/")[0]
        if not parent or parent in dirs:
            continue
        prefix = ""
        for part in parent.split("/"):
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix not in dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(prefix, 0o700, dir_fd=tmp)
                dirs.add(prefix)
    return dirs


def _worker_count(cost: int) -> int:
    if cost < _PARALLEL_COST:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS, cost // (_PARALLEL_COST // 2)))


class _TreeWriter:
    """Writes one entry (and its bytecode) into the temp dir; used by every process of
    an install, which all inherit the archive, the temp dir's fd and the status map."""

    def __init__(self, archive: StrictArchive, manifest: Manifest, tmp: int, final: Path,
                 sources: list[bool], status: mmap.mmap) -> None:
        self.archive = archive
        self.manifest = manifest
        self.tmp = tmp
        self.final = final
        self.sources = sources
        self.status = status

    def write(self, index: int) -> None:
        entry = self.archive.entries[index]
        data = self.archive.read_buffer(entry)
        record = self.manifest.entries.get(entry.name)
        mode = 0o555 if record is not None and record.mode & 0o111 else 0o444
        st = self._write_file(entry.name, data, mode)
        self.status[index] = _WRITTEN
        if not self.sources[index]:
            return
        pyc = bytecode.pyc_data(data, st.st_mtime, st.st_size, str(self.final / entry.name))
        if pyc is None:
            return
        name = bytecode.pyc_name(entry.name)
        with contextlib.suppress(FileExistsError):  # another process made it
            os.mkdir(name.rpartition("/")[0], 0o700, dir_fd=self.tmp)
        self._write_file(name, pyc, 0o444)
        self.status[index] = _COMPILED

    def _write_file(self, name: str, data: bytes | memoryview, mode: int) -> os.stat_result:
        return _write_new_file(self.tmp, name, data, mode, self.final / name, self.final.parent)


def _write_new_file(dir_fd: int, name: str, data: bytes | memoryview, mode: int, shown: Path,
                    apps: Path) -> os.stat_result:
    """Create `name` (new, private until complete) under dir_fd with `data`, then `mode`;
    its stat (the source's mtime and size go into its .pyc). StoreError names `shown`
    and the file system of `apps`."""
    try:
        fd = os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            return os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot write {shown}: {exc.strerror}",
                         "check the free space and inodes of the store's file system "
                         f"(df -h {apps}; df -i {apps})") from None


def defers_bytecode(owner: int, manifest: Manifest, python_version: str | None) -> bool:
    """Whether an install asked to defer its bytecode does: only in a root store (only
    root adds files to a tree after its rename: its dirs are 0555, which stop a store's
    unprivileged owner, and they are never made writable), with bytecode to compile."""
    return (owner == 0 and python_version is not None and bytecode.compatible(python_version)
            and any(bytecode.compiles(name) for name in manifest.entries))


def _pending_name(bundle_sha256: str) -> str:
    """apps/.<sha>.bytecode: the tree's bytecode was deferred and is not all there yet."""
    return f".{bundle_sha256}{warm_exec.BYTECODE_PENDING_SUFFIX}"


class _BytecodeWriter:
    """Compiles one source of an installed tree into the private temp dir, as `<job>`
    (the job's index), from the installed file's own bytes, mtime and size: the same
    .pyc an install writes."""

    def __init__(self, names: list[str], top: int, tmp: int, final: Path,
                 status: mmap.mmap) -> None:
        self.names = names
        self.top = top
        self.tmp = tmp
        self.final = final
        self.status = status

    def write(self, index: int) -> None:
        name = self.names[index]
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=self.top)
        with os.fdopen(fd, "rb") as source:
            st = os.fstat(source.fileno())
            data = source.read()
        pyc = bytecode.pyc_data(data, st.st_mtime, st.st_size, str(self.final / name))
        if pyc is None:
            return
        _write_new_file(self.tmp, str(index), pyc, 0o444,
                        self.final / bytecode.pyc_name(name), self.final.parent)
        self.status[index] = _COMPILED


def _compile_deferred(manifest: Manifest, top: int, tmp: int, final: Path,
                      before_publishing: Callable[[], None] | None) -> None:
    """Store.compile_bytecode's work: every listed source without its .pyc, compiled
    into `tmp`, then renamed into the tree (whose dirs only root may write)."""
    names = [name for name in manifest.entries
             if bytecode.compiles(name) and not _lexists(bytecode.pyc_name(name), top)]
    if not names:
        return
    costs = [_COST_PER_FILE + manifest.entries[n].size * _COST_PER_SOURCE_BYTE for n in names]
    status = mmap.mmap(-1, len(names))  # MAP_SHARED: the helpers report here
    collecting = gc.isenabled()
    gc.disable()  # compile() makes no cycles; the collector only slows it (~10%)
    try:
        writer = _BytecodeWriter(names, top, tmp, final, status)
        order = sorted(range(len(names)), key=costs.__getitem__, reverse=True)
        _run_jobs(writer.write, order, _worker_count(sum(costs)), final)
        done = status[:len(names)]
    finally:
        if collecting:
            gc.enable()
        status.close()
    _sync_file_system(tmp, final)  # each .pyc whole on disk before its name is in the tree
    if before_publishing is not None:
        before_publishing()
    made: set[str] = set()
    for index, state in enumerate(done):
        if state != _COMPILED:
            continue  # a source that does not compile: imported as without sandrun
        pyc = bytecode.pyc_name(names[index])
        directory = pyc.rpartition("/")[0]
        if directory not in made:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, TREE_DIR_MODE, dir_fd=top)  # the umask is 022 here
            dir_fd = os.open(directory, _DIR, dir_fd=top)
            try:
                os.fchmod(dir_fd, TREE_DIR_MODE)  # whatever the umask
            finally:
                os.close(dir_fd)
            made.add(directory)
        os.rename(str(index), pyc, src_dir_fd=tmp, dst_dir_fd=top)


def run_detached(work: Callable[[], None], title: bytes, keep: Iterable[int] = ()) -> None:
    """Run work() in a grandchild of this process that outlives it: its own session (no
    terminal signal reaches it), standard streams on /dev/null and no other inherited
    fd but those `keep` lists, so nothing waiting for the app's output or
    end waits for it; scheduled SCHED_IDLE (it runs on what the app leaves idle), named
    `title` in ps. Returns once the intermediate child is reaped: the grandchild is
    nobody's child here (no stray exit reaches the supervisor this process becomes)."""
    keep = set(keep)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.fork() == 0:
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                for name in os.listdir("/proc/self/fd"):
                    fd = int(name)
                    if fd > 2 and fd not in keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                os.umask(0o022)  # what it creates has its final mode from the start
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_NAME, ctypes.c_char_p(title[:15]), 0, 0, 0)
                work()
            code = 0
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


_PR_SET_NAME = 15


def _run_jobs(work: Callable[[int], None], jobs: list[int], workers: int, final: Path) -> None:
    """work(job) for every job, on `workers` processes: this one and workers - 1 forked
    helpers, each taking the next job from one pipe when it is free. A helper that fails
    or dies fails the install; when this process fails, the helpers are killed (and
    reaped) before the caller removes the temp dir, and they die with it (SIGKILL)."""
    if workers < 2:
        for job in jobs:
            work(job)
        return
    batch = max(1, -(-len(jobs) // _MAX_RECORDS))
    records = array.array("I", range(0, len(jobs), batch)).tobytes()
    job_r, job_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    helpers: list[int] = []
    failures: list[str] = []
    messages = b""
    try:
        view = memoryview(records)
        while view:  # fits in the pipe: written before any helper reads
            view = view[os.write(job_w, view):]
        os.close(job_w)
        job_w = -1
        parent = os.getpid()
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                _helper(parent, job_r, err_r, err_w, jobs, batch, work)
            helpers.append(pid)
        os.close(err_w)
        err_w = -1
        _take_jobs(job_r, jobs, batch, work)
    except BaseException:
        for pid in helpers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        for fd in (job_w, err_w):
            if fd >= 0:
                os.close(fd)
        for pid in helpers:
            _, wait_status = os.waitpid(pid, 0)
            if wait_status:
                failures.append(_describe_exit(wait_status))
        with contextlib.suppress(OSError):
            messages = _read_all(err_r)  # every write end is closed: the helpers are gone
        os.close(err_r)
        os.close(job_r)
    if failures:
        text = messages.decode("utf-8", "replace").strip("\0\n")
        first = text.split("\0\n")[0] if text else f"a helper process {failures[0]}"
        message, _, hint = first.partition("\0")
        raise StoreError(f"installing into {final} failed: {message}",
                         hint or "launch again; the next launch starts the install afresh")


def _take_jobs(job_r: int, jobs: list[int], batch: int, work: Callable[[int], None]) -> None:
    while True:
        record = os.read(job_r, 4)  # one record per read: pipe reads are atomic
        if not record:
            return
        start = int.from_bytes(record, sys.byteorder)
        for job in jobs[start:start + batch]:
            work(job)


def _helper(parent: int, job_r: int, err_r: int, err_w: int, jobs: list[int], batch: int,
            work: Callable[[int], None]) -> NoReturn:
    """A forked helper: takes jobs until the pipe is empty; reports a failure on err_w
    as `message NUL hint NUL LF`; never returns into the caller's code."""
    code = 1
    try:
        os.close(err_r)
        _die_with_parent(parent)
        _take_jobs(job_r, jobs, batch, work)
        code = 0
    except BaseException as exc:  # reported to the parent, which fails the install
        if isinstance(exc, StoreError):
            text = f"{exc.message}\0{exc.hint}"
        else:
            text = f"{type(exc).__name__}: {exc}\0"
        with contextlib.suppress(BaseException):
            os.write(err_w, (text[:3000] + "\0\n").encode("utf-8", "replace"))
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this helper when the installing process dies (it must not outlive it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _describe_exit(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"was killed by signal {os.WTERMSIG(wait_status)}"
    return f"exited with status {os.waitstatus_to_exitcode(wait_status)}"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _sync_file_system(fd: int, final: Path) -> None:
    """Flush everything written to the store's file system, once (syncfs(2)), before the
    tree is renamed into place: a crash then leaves either no tree or a whole one."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise StoreError(f"cannot flush {final} to disk: {os.strerror(err)}",
                         "check the store's file system (dmesg), then launch again")


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
