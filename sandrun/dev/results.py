"""The results directory of `sandrun test`: written by root, where nobody else can write.

`--results DIR` names a path another user may control (a project, a home directory).
The directory is either made fresh, by sandrun, below a parent reached without
following a link another user controls (open_trusted_path), or, when it exists, must
be a directory of root or the invoking user that neither group nor others may write,
reached the same way. Every file and subdirectory is then made relative to its fd,
O_CREAT|O_EXCL|O_NOFOLLOW: no path is resolved again, no link followed, nothing of
anyone else's truncated. Only root and the invoking user can have put anything there,
so an earlier run's file is replaced (unlinked, then made anew).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from sandrun.errors import EnforcementError, UsageError

DIR_MODE = 0o755  # the developer may read the results, only sandrun's user writes them
FILE_MODE = 0o644
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
HINT = ("give --results a new directory (sandrun makes it), or one of yours (or root's) "
        "that neither group nor others may write, reached without another user's links")


class ResultsDir:
    """An open results directory: `path` for messages, `fd` for every operation."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.created: set[str] = set()  # files made through this object (appendable)

    def __repr__(self) -> str:
        return f"ResultsDir({self.path!r})"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self, name: str) -> int:
        """A new file `name` (an earlier one replaced), open for writing."""
        _check_name(name)
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise EnforcementError(f"cannot replace {self.file(name)}: {exc.strerror}",
                                   "remove it") from None
        fd = os.open(name, CREATE_FLAGS, FILE_MODE, dir_fd=self.fd)
        self.created.add(name)
        return fd

    def append(self, name: str) -> int:
        """`name` open for appending if this object made it, else a new file."""
        if name not in self.created:
            return self.create(name)
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=self.fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise EnforcementError(f"{self.file(name)} is not the file sandrun made",
                                   HINT)
        return fd

    def write(self, name: str, data: bytes) -> str:
        """Write `data` to a new file `name`; its path."""
        fd = self.create(name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return self.file(name)

    def subdir(self, name: str) -> ResultsDir:
        """The subdirectory `name`, made if missing (an existing one must be trusted)."""
        _check_name(name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=self.fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        try:
            _check_trusted(fd, self.file(name))
            os.fchmod(fd, DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
        return ResultsDir(self.file(name), fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")


def _check_trusted(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise EnforcementError(f"--results {path} is not a directory", HINT)
    if st.st_uid not in (0, os.geteuid()):
        raise EnforcementError(f"--results {path} is owned by uid {st.st_uid}: sandrun "
                               "would write its results where that user can replace "
                               "them by links to any file", HINT)
    if st.st_mode & 0o022:
        raise EnforcementError(f"--results {path} is writable by group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): they could put links "
                               "where sandrun writes", HINT)


def open_results_dir(path: str | None, prefix: str) -> ResultsDir:
    """--results DIR (made fresh, or an existing trusted one), else a new private
    directory in $TMPDIR. Refused (EnforcementError/UsageError) before anything is
    made when DIR cannot be used safely."""
    if path is None:
        made = tempfile.mkdtemp(prefix=prefix)
        parent, name = os.path.split(made)
        return _open_made(parent, name, made)
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    if not name:
        raise UsageError(f"--results {path}: not a directory sandrun can make", HINT)
    try:
        existing = _trusted_open(absolute)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        try:
            dir_fd = os.open(".", DIR_FLAGS, dir_fd=existing)  # O_PATH -> a real dir fd
        finally:
            os.close(existing)
        try:
            _check_trusted(dir_fd, absolute)
        except BaseException:
            os.close(dir_fd)
            raise
        return ResultsDir(absolute, dir_fd)
    try:
        parent_fd = _trusted_open(parent)
    except FileNotFoundError:
        raise UsageError(f"--results {absolute}: {parent} does not exist",
                         "give a directory whose parent exists") from None
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except OSError as exc:
            raise UsageError(f"cannot make --results {absolute}: {exc.strerror}",
                             HINT) from None
        return _open_made(parent_fd, name, absolute)
    finally:
        os.close(parent_fd)


def _trusted_open(path: str) -> int:
    """An O_PATH fd of the directory `path`: as root, never through a link another
    user could have made (open_trusted_path); otherwise as the user sees it."""
    if os.geteuid() == 0:
        from sandrun.sandbox.kernel import open_trusted_path

        try:
            return open_trusted_path(path, directory=True)
        except EnforcementError as exc:
            raise EnforcementError(f"--results: {exc.message}", HINT) from None
        except NotADirectoryError:
            raise UsageError(f"--results {path} is not a directory", HINT) from None
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise UsageError(f"--results {path} is not a directory", HINT) from None


def _open_made(parent: int | str, name: str, path: str) -> ResultsDir:
    """The directory sandrun just made: opened without following anything, checked to
    be that one (ours, a directory: not what someone put in its place), mode set."""
    if isinstance(parent, str):
        fd = os.open(path, DIR_FLAGS)
    else:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise EnforcementError(f"--results {path} was replaced while sandrun made it",
                                   HINT)
        os.fchmod(fd, DIR_MODE if not isinstance(parent, str) else 0o700)
    except BaseException:
        os.close(fd)
        raise
    return ResultsDir(path, fd)
