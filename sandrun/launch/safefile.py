"""Files and directories root opens without following what others control.

- `read_bundle`: the bundle, opened O_NOFOLLOW|O_NONBLOCK (a FIFO cannot hang root),
  a regular file only, its size limited before a byte is read.
- `open_trusted_dir`: a directory reached from "/" one component at a time, each
  opened O_PATH|O_NOFOLLOW relative to the previous one and checked (owner, mode);
  the fd it returns is what later operations use, so nothing re-resolves the path.
- `open_private_dir`, `read_private`, `write_private`: 0700 dirs and 0600 files of the
  running uid (launch records, tree snapshots), read and replaced through dir fds.

Standard library only, and cheap: the warm exec path imports this module.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from collections.abc import Iterator

# The largest zip sandrun's parser reads (archive.MAX_ARCHIVE_SIZE: without zip64 a zip
# cannot address more), which is also the largest bundle `sandrun bundle` writes.
MAX_BUNDLE_SIZE = 4 << 30
MAX_PRIVATE_SIZE = 64 << 20  # launch records and tree snapshots (numpy's tree: ~1 MB)
MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)
_READ_CHUNK = 0x7FFFF000  # Linux's per-read maximum: a bundle under 2 GiB is one read


class UnsafePath(Exception):
    """A path component root must not trust: `path` names it, `why` says why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path} {why}")
        self.path = path
        self.why = why


def file_kind(mode: int) -> str:
    """`a FIFO (named pipe)`, `a directory`, ... for messages."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"a file of unknown type {stat.S_IFMT(mode):o}"


# ---------------------------------------------------------------- the bundle


def read_bundle(path: str, max_size: int = MAX_BUNDLE_SIZE) -> tuple[bytes, str]:
    """The bundle's bytes and their sha256 (hex), read once (read_bundle_bytes)."""
    data = read_bundle_bytes(path, max_size)
    import hashlib  # here, not at the top: OpenSSL costs the warm path ~2 ms

    return data, hashlib.sha256(data).hexdigest()


def read_bundle_bytes(path: str, max_size: int = MAX_BUNDLE_SIZE) -> bytes:
    """The bundle's bytes, read once.

    Never follows a symlink at `path`; refuses a FIFO, socket, device or directory
    without blocking or reading it, and a file over `max_size` bytes before reading;
    reads exactly the size fstat gave and refuses a file that changed size meanwhile.
    """
    from sandrun.errors import BundleError

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist", "check the path") from None
    except OSError as exc:
        kind = _kind_at(path)
        if kind == "a symbolic link":
            raise BundleError(f"bundle {path} is a symbolic link",
                              "pass the real file: sandrun never follows a link to a bundle"
                              ) from None
        if kind not in ("a regular file", ""):  # a socket cannot be opened at all (ENXIO)
            raise BundleError(f"bundle {path} is {kind}, not a bundle file",
                              "pass the path of a .pyz file made by `sandrun bundle`") from None
        raise BundleError(f"cannot open bundle {path}: {exc.strerror}",
                          "check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"bundle {path} is {file_kind(st.st_mode)}, not a bundle file",
                              "pass the path of a .pyz file made by `sandrun bundle`")
        if st.st_size > max_size:
            why = " (4 GiB: the largest zip sandrun reads)" if max_size == MAX_BUNDLE_SIZE \
                else ""
            raise BundleError(f"bundle {path} is {st.st_size} bytes, more than the limit of "
                              f"{max_size} bytes{why}",
                              "check the path: `sandrun bundle` never writes a bundle this "
                              "large")
        data = _read_exactly(fd, st.st_size)
        if data is None or os.fstat(fd).st_size != st.st_size:
            raise BundleError(f"bundle {path} changed size while it was read",
                              "do not modify the bundle while sandrun reads it; retry")
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}",
                          "check the file") from None
    finally:
        os.close(fd)
    return data


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from the current offset, then end of file; None if the file is
    shorter or longer. At most size / chunk + 2 reads (each read makes progress)."""
    chunks = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, _READ_CHUNK))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    if os.read(fd, 1):
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _kind_at(path: str) -> str:
    try:
        return file_kind(os.lstat(path).st_mode)
    except OSError:
        return ""


# ---------------------------------------------------------------- trusted directories


def dir_problem(st: os.stat_result, owner: int) -> str | None:
    """Why a directory others could change is not trusted, or None.

    Trusted: owned by root or `owner`, and not writable by group or others, unless
    sticky and owned by root (/tmp): there nobody can rename or remove an entry they
    do not own, so the next component, itself owned by root or `owner`, stays put.
    """
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not a directory"
    if st.st_uid not in (0, owner):
        who = "root" if owner == 0 else f"root or uid {owner}"
        return f"is owned by uid {st.st_uid}, not {who}: its owner could replace what is in it"
    if mode & 0o022 and not (mode & stat.S_ISVTX and st.st_uid == 0):
        who = "group and others" if mode & 0o022 == 0o022 else (
            "others" if mode & 0o002 else "its group")
        return f"is writable by {who} (mode {mode:04o}): they could replace what is in it"
    return None


def _link_trusted(link: os.stat_result, parent: os.stat_result) -> bool:
    """A root-owned symlink in a root-owned dir nobody else may write (/var/run -> /run):
    only root can change where it points."""
    return link.st_uid == 0 and parent.st_uid == 0 and not parent.st_mode & 0o022


def open_trusted_dir(path: str, owner: int, *, create_mode: int | None = None) -> int:
    """An O_PATH fd of the directory `path` (relative: to the cwd), every component of
    which is trusted (`dir_problem`), reached from "/" without following a symlink
    unless root owns it and its dir (`_link_trusted`).

    Missing components raise FileNotFoundError, or with `create_mode` are created
    (owned by the running uid, exactly that mode). UnsafePath names the first
    component that is not trusted; nothing is created at or after it.
    """
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    pending = [part for part in reversed(path.split("/")) if part]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stack = [(fd, "", os.fstat(fd))]  # the directories walked so far: "..", links
    links = 0
    try:
        problem = dir_problem(stack[0][2], owner)
        if problem:
            raise UnsafePath("/", problem)
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            parent_fd, parent_path, parent_st = stack[-1]
            where = f"{parent_path}/{name}"
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                            where) from None
                fd = _make_dir(name, parent_fd, create_mode)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                if not _link_trusted(st, parent_st):
                    raise UnsafePath(where, f"is a symbolic link owned by uid {st.st_uid} in "
                                     f"a directory owned by uid {parent_st.st_uid} (mode "
                                     f"{stat.S_IMODE(parent_st.st_mode):04o}): root follows "
                                     "only links that root alone can change")
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafePath(where, "leads through too many symbolic links")
                target = os.readlink(name, dir_fd=parent_fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                pending.extend(part for part in reversed(target.split("/")) if part)
                continue
            problem = dir_problem(st, owner)
            if problem:
                os.close(fd)
                raise UnsafePath(where, problem)
            stack.append((fd, where, st))
        return stack.pop()[0]
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def open_trusted_program(path: str, owners: tuple[int, ...]) -> int | None:
    """An O_RDONLY fd of the program at `path` to exec by fd, when others could not have
    changed it: reached from "/" through trusted directories (open_trusted_dir, for the
    running uid), not a link, a regular file owned by one of `owners`, executable by its
    owner and not writable by group or others; else None."""
    try:
        dir_fd = open_trusted_dir(os.path.dirname(path), os.geteuid())
    except (UnsafePath, OSError):
        return None
    try:
        fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners or \
            st.st_mode & 0o022 or not st.st_mode & 0o100:
        os.close(fd)
        return None
    return fd


def _make_dir(name: str, parent_fd: int, mode: int) -> int:
    """Create `name` (a concurrent creator may win: its dir is then checked as found)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent_fd)
    try:
        os.fchmod(fd, mode)  # exactly: the umask may have taken bits others need (x)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_private_dir(name: str, *, dir_fd: int, create: bool = False) -> int:
    """An O_PATH fd of `name` under dir_fd: a directory of the running uid that nobody
    else may even list (no group or other bits). Never through a link."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            create = False  # made before (or concurrently): checked below as found
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise UnsafePath(name, f"is {file_kind(st.st_mode)} of uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}: expected a directory of uid "
                         f"{os.geteuid()}, mode 0700")
    return fd


def walk_dir(top_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under the directory `top_fd` (opened O_RDONLY): its name relative to
    it and its lstat. Subdirectories are opened relative to top_fd, the last component
    O_NOFOLLOW; the caller owns the tree (no one else can swap a dir for a link)."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        fd = top_fd if not rel_dir else os.open(
            rel_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top_fd)
        try:
            with os.scandir(fd) as it:  # scandir dups fd and rewinds it when closed
                entries = [(entry.name, entry.stat(follow_symlinks=False)) for entry in it]
        finally:
            if fd != top_fd:
                os.close(fd)
        for name, st in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)


# ---------------------------------------------------------------- private files


def read_private(name: str, *, dir_fd: int | None = None,
                 max_size: int = MAX_PRIVATE_SIZE) -> bytes | None:
    """The bytes of a private file (regular, of the running uid, no group or other
    bits, at most max_size bytes), or None when there is none. A link, FIFO, a file of
    another uid or one others may read or write raises UnsafePath."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a socket
            raise UnsafePath(name, "is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise UnsafePath(name, f"is {file_kind(st.st_mode)} of uid {st.st_uid}, mode "
                             f"{stat.S_IMODE(st.st_mode):04o}: expected a file of uid "
                             f"{os.geteuid()}, mode 0600")
        if st.st_size > max_size:
            raise UnsafePath(name, f"is {st.st_size} bytes, more than {max_size}")
        data = _read_exactly(fd, st.st_size)
        if data is None:
            raise UnsafePath(name, "changed size while it was read")
        return data
    finally:
        os.close(fd)


def write_private(name: str, data: bytes, *, dir_fd: int, sync: bool = False) -> None:
    """Replace `name` under dir_fd atomically by a 0600 file holding `data` (a temp file
    renamed over it: readers see the old or the new bytes, never a part). With `sync`,
    the data reaches the disk before the rename."""
    tmp = f".{name}.tmp-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:  # left by a crashed process of the same pid
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_if_there(tmp, dir_fd)
        raise


def _unlink_if_there(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:  # gone, or the error being raised already says what is wrong
        return
