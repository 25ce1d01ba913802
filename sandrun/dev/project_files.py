"""Reading a developer's project as root: every file through the project directory's fd.

The developer owns the tree and can change it at any moment, so nothing in it may lead
root elsewhere. The project directory is opened once (as root with open_trusted_path:
no link another user controls is followed on the way to it) and everything below it is
reached from that fd one component at a time, each O_NOFOLLOW: a symbolic link is
refused, never followed; a file must be a regular file (a FIFO or a device is refused
before it is opened for reading), not a hard link to another user's file, and no larger
than its cap.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sandrun.errors import EnforcementError, UsageError

MAX_PYPROJECT_SIZE = 1 << 20
MAX_LOCK_SIZE = 16 << 20
MAX_CONFIG_SIZE = 1 << 20  # pytest's configuration files, the project's profile
PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
LINK_HINT = ("replace the link by the file or directory itself: as root, sandrun never "
             "follows a link in a tree another user can change")


def open_project_dir(root: Path) -> int:
    """An O_PATH fd of the project directory `root` (absolute). As root it is reached
    with open_trusted_path (a link on the way is followed only if root alone could have
    made it); otherwise as the invoking user sees it (nothing to protect)."""
    path = str(root)
    try:
        if os.geteuid() == 0:
            from sandrun.sandbox.kernel import open_trusted_path

            return open_trusted_path(path, directory=True)
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"{path} is not a directory",
                         "give the project directory (the one with pyproject.toml)") from None
    except OSError as exc:
        raise UsageError(f"cannot open the project directory {path}: "
                         f"{exc.strerror or exc}", "check the path") from None


@contextlib.contextmanager
def project_dir(root: Path) -> Iterator[int]:
    """open_project_dir, closed on exit."""
    fd = open_project_dir(root)
    try:
        yield fd
    finally:
        os.close(fd)


def _parts(rel: str, label: str) -> list[str]:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or "\0" in rel:
        raise EnforcementError(f"{label}: {rel!r} is not a path inside the project",
                               "give a relative path without '..'")
    return parts


def open_beneath(dir_fd: int, rel: str, label: str) -> int | None:
    """An O_PATH fd of `rel` below `dir_fd`, every component opened O_NOFOLLOW; None
    when it (or a directory on the way) does not exist. A symbolic link anywhere on
    the way is refused (EnforcementError), as is a non-directory in the middle."""
    current = os.dup(dir_fd)
    try:
        for part in _parts(rel, label):
            try:
                fd = os.open(part, PATH_FLAGS, dir_fd=current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            os.close(current)
            current = fd
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise EnforcementError(f"{label} is a symbolic link ({part} in {rel!r})",
                                       LINK_HINT)
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)


def is_dir_beneath(dir_fd: int, rel: str, label: str) -> bool:
    """Whether `rel` is a directory below `dir_fd`, reached without following a link."""
    fd = open_beneath(dir_fd, rel, label)
    if fd is None:
        return False
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def exists_beneath(dir_fd: int, rel: str) -> bool:
    """Whether anything (a link included, not followed) is at `rel` below `dir_fd`."""
    try:
        os.stat(rel, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def read_beneath(dir_fd: int, rel: str, max_size: int, label: str) -> bytes | None:
    """The bytes of the regular file `rel` below `dir_fd`, or None when there is none.

    Refused (EnforcementError): a link on the way, anything but a regular file (checked
    on an O_PATH fd, before the file is opened for reading: a FIFO never blocks root, a
    device is never opened), a hard link to a file of a user other than the directory's
    owner, and more than `max_size` bytes."""
    parts = _parts(rel, label)
    if not parts:
        raise EnforcementError(f"{label}: no file name", "a sandrun bug")
    parent = open_beneath(dir_fd, "/".join(parts[:-1]), label)
    if parent is None:
        return None
    try:
        owner = os.fstat(parent).st_uid
        fd = os.open(parts[-1], PATH_FLAGS, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise EnforcementError(f"{label} is a symbolic link", LINK_HINT)
        if not stat.S_ISREG(st.st_mode):
            raise EnforcementError(f"{label} is {_kind(st.st_mode)}, not a regular file",
                                   "make it a regular file")
        if st.st_uid not in (0, os.geteuid(), owner) or (st.st_nlink > 1
                                                         and st.st_uid != owner):
            raise EnforcementError(f"{label} is a file of uid {st.st_uid} with "
                                   f"{st.st_nlink} links in a directory of uid {owner}",
                                   "the project's own files only: copy the file into it")
        if st.st_size > max_size:
            raise EnforcementError(f"{label} is {st.st_size} bytes, more than {max_size}",
                                   "sandrun reads files of at most that size from a project")
        # The O_PATH fd pins the inode checked above: reopen exactly that one to read it.
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise EnforcementError(f"cannot read {label}: {exc.strerror or exc}",
                               "check the file") from None
    finally:
        os.close(fd)
    try:
        chunks: list[bytes] = []
        left = max_size + 1
        while left > 0:
            chunk = os.read(reader, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(reader)
    data = b"".join(chunks)
    if len(data) > max_size:
        raise EnforcementError(f"{label} grew beyond {max_size} bytes while it was read",
                               "do not change it while sandrun reads it")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"

