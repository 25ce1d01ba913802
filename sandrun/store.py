"""The root-owned store: verified trees installed once, re-checked at every launch.

Layout (DESIGN.md): <store>/apps/<bundle sha256>/ is the extracted tree (dirs
0555, files 0444 or 0555, owned by the store owner); <store>/state/<app>/ is
the app's only writable place. Extraction goes to a private temporary dir in
apps/ and is renamed into place only after every entry was written and
checked, so a crash leaves nothing that is ever used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandrun import bytecode
from sandrun.errors import Problem, StoreError, VerificationError
from sandrun.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from sandrun.warm_exec import DEFAULT_STORE, default_store_root

if TYPE_CHECKING:
    from sandrun.archive import StrictArchive

TREE_DIR_MODE = 0o555
_TMP_PREFIX = ".tmp-"


def default_store_path() -> Path:
    return Path(default_store_root())


@dataclass(frozen=True)
class Store:
    root: Path
    owner: int  # uid that must own every installed file (root when sandrun runs as root)

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def tree(self, bundle_sha256: str) -> Path:
        return self.apps / bundle_sha256

    def ensure_layout(self) -> None:
        """Create the store dirs and refuse a store that others could tamper with."""
        for path, mode in ((self.root, 0o755), (self.apps, 0o755), (self.state, 0o755)):
            try:
                path.mkdir(mode=mode, parents=path == self.root, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store directory {path}: {exc.strerror}",
                                 "pass --store DIR on a writable file system") from None
        self.check_ancestry()

    def check_ancestry(self) -> None:
        """Every component of the store path must be owned by root or the owner and not
        writable by anyone else (sticky dirs such as /tmp excepted)."""
        current = Path("/")
        for part in self.root.resolve().parts[1:]:
            current = current / part
            st = current.lstat()
            writable_by_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, self.owner) or writable_by_others:
                raise StoreError(
                    f"store path component {current} is owned by uid {st.st_uid} with mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: others could replace the installed code",
                    "use a store under a root-owned, non-world-writable directory "
                    f"(default {DEFAULT_STORE})")
        for path in (self.root, self.apps, self.state):
            st = path.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != self.owner or st.st_mode & 0o022:
                raise StoreError(f"{path} must be a directory owned by uid {self.owner} and "
                                 f"writable only by it (it is mode "
                                 f"{stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})",
                                 f"fix it: chown {self.owner} {path}; chmod go-w {path}")

    def install(self, bundle_sha256: str, archive: StrictArchive, manifest: Manifest,
                python_version: str | None = None) -> Path:
        """Extract a verified archive once; concurrent callers wait and reuse it.

        With the app's Python X.Y, bytecode is precompiled when sandrun's interpreter
        writes that format (bytecode.py)."""
        tree = self.tree(bundle_sha256)
        if tree.exists():
            return tree
        with self._lock(bundle_sha256):
            if tree.exists():
                return tree  # another launch finished the extraction while we waited
            self._remove_leftovers(bundle_sha256)
            tmp = self.apps / f"{_TMP_PREFIX}{bundle_sha256}-{os.getpid()}"
            os.mkdir(tmp, 0o700)
            try:
                self._extract(archive, manifest, tmp, tree, python_version)
                os.chmod(tmp, TREE_DIR_MODE)
                os.rename(tmp, tree)
                _fsync_dir(self.apps)
            except BaseException:
                _remove_tree(tmp)
                raise
        return tree

    @contextlib.contextmanager
    def _lock(self, bundle_sha256: str) -> Iterator[None]:
        lock_path = self.apps / f".{bundle_sha256}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_leftovers(self, bundle_sha256: str) -> None:
        """Temp dirs of crashed extractions are never used; delete them."""
        for leftover in self.apps.glob(f"{_TMP_PREFIX}{bundle_sha256}-*"):
            _remove_tree(leftover)

    def _extract(self, archive: StrictArchive, manifest: Manifest, tmp: Path, final: Path,
                 python_version: str | None) -> None:
        """Write every entry of an archive that verify_archive() passed. The archive
        parses an in-memory copy of the bundle, so what was hashed is what is written."""
        dirs: set[Path] = set()
        for entry in archive.entries:
            target = tmp.joinpath(*entry.name.split("/"))
            parent = target.parent
            if parent not in dirs:
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                p = parent
                while p != tmp and p not in dirs:
                    dirs.add(p)
                    p = p.parent
            data = archive.read(entry)
            record = manifest.entries.get(entry.name)
            mode = 0o555 if record is not None and record.mode & 0o111 else 0o444
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        if python_version and bytecode.compatible(python_version):
            for name in bytecode.compile_sources(tmp, final, manifest.entries):
                os.chmod(tmp / name, 0o444)
                dirs.add((tmp / name).parent)
        for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            os.chmod(directory, TREE_DIR_MODE)

    def check_tree(self, tree: Path, manifest: Manifest, manifest_bytes: bytes, *,
                   full: bool) -> None:
        """Refuse an installed tree that was altered, extended or made writable.

        The cheap check compares every name, type, owner, mode and size (and the
        manifest's bytes); `full` also re-hashes every file.
        """
        problems: list[Problem] = []
        expected = dict(manifest.entries)
        # A __pycache__ dir may exist only where a listed .py source is.
        dir_names = {name.rpartition("/")[0] + "/" + bytecode.CACHE_DIR + "/"
                     if "/" in name else bytecode.CACHE_DIR + "/"
                     for name in expected if name.endswith(".py")}
        seen: set[str] = set()
        st = tree.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != self.owner or \
                stat.S_IMODE(st.st_mode) != TREE_DIR_MODE:
            problems.append(Problem(str(tree), f"tree root is mode {stat.S_IMODE(st.st_mode):04o}"
                                    f" uid {st.st_uid}, expected 0555 uid {self.owner}"))
        for rel, entry_st in _walk(tree):
            path = tree / rel
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
                if _read(path) != manifest_bytes:
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
                    why = bytecode.pyc_problem(path, tree / source)
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
            elif full and hashlib.sha256(_read(path)).hexdigest() != record.sha256:
                problems.append(Problem(rel, "content differs from manifest"))
        for name in sorted(set(expected) - seen):
            problems.append(Problem(name, "missing from the installed tree"))
        if MANIFEST_NAME not in seen:
            problems.append(Problem(MANIFEST_NAME, "missing from the installed tree"))
        if problems:
            raise VerificationError(
                f"installed tree {tree} was altered", problems,
                f"remove it (rm -rf {tree}) so the next launch installs it again from the "
                "bundle, and find out who changed it")

    def state_dir(self, app: str, uid: int, gid: int, *, create: bool) -> Path:
        """<store>/state/<app>/, owned by the app user, 0700; refused if it is a link or
        belongs to someone else."""
        path = self.state / app
        try:
            st = path.lstat()
        except FileNotFoundError:
            if not create:
                return path
            self._create_state_dir(path, uid, gid)
            st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"state dir {path} is not a directory (symlink?)",
                             f"remove it: rm {path}")
        if st.st_uid != uid:
            raise StoreError(f"state dir {path} belongs to uid {st.st_uid}, not the app user "
                             f"(uid {uid})",
                             f"if the user changed on purpose: chown -R {uid}:{gid} {path}")
        if stat.S_IMODE(st.st_mode) != 0o700 and create:
            os.chmod(path, 0o700, follow_symlinks=False)
        return path

    def _create_state_dir(self, path: Path, uid: int, gid: int) -> None:
        """Build the dir (with tmp/) under a private name, then rename it into place, so
        a concurrent launch never sees it half made (owned by root, no tmp/)."""
        staging = self.state / f"{_TMP_PREFIX}{path.name}-{os.getpid()}"
        _remove_tree(staging)
        os.mkdir(staging, 0o700)
        os.mkdir(staging / "tmp", 0o700)
        for directory in (staging / "tmp", staging):
            os.chown(directory, uid, gid, follow_symlinks=False)
        try:
            os.rename(staging, path)
        except OSError:  # a concurrent launch won the race: use its dir
            _remove_tree(staging)
            if not path.is_dir():
                raise


def _walk(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(tree / rel_dir if rel_dir else tree) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                yield rel, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree without following links."""
    if not os.path.lexists(path):
        return
    for root, dirnames, _files in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)
