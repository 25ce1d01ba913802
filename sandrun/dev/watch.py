"""Watch a project tree for changes, on the developer's side (never inside the sandbox).

inotify (through ctypes: no dependency) on every directory of the tree but the ones no
edit matters in (.git, __pycache__, virtual environments, caches); a polling fallback
when inotify is unavailable or out of watches. `wait()` returns the changed paths once
the burst of events an editor's save makes has settled.

The tree is the developer's and can change under the walk: it is reached from one fd
of the project directory (project_files: a new directory's path is followed component
by component, O_NOFOLLOW), walked with fds (os.fwalk, links never followed), and each
directory is watched through the fd the walk opened (/proc/self/fd/N): a directory
replaced by a link is never watched or listed through it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from sandrun.dev.launching import SKIPPED_DIRS

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF)
_EVENT = struct.Struct("iIII")
SETTLE = 0.01  # seconds without events that end a burst (an editor's save)
MAX_SETTLE = 0.3
POLL_INTERVAL = 0.25
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swx", ".swo", "~", ".tmp")


def ignored(name: str) -> bool:
    """Files whose change is not an edit: bytecode, editor swap/backup/lock files."""
    return (name.endswith(IGNORED_SUFFIXES) or name.startswith(".#") or name == "4913"
            or name in SKIPPED_DIRS or name.endswith(".egg-info"))


def _walk(top_fd: int, shown: str) -> Iterator[tuple[str, list[str], list[str], int]]:
    """os.fwalk of the directory `top_fd` (shown as `shown`) without following any
    link, skipping ignored directories: (path, subdirs, files, the directory's fd)."""
    for current, subdirs, files, dir_fd in os.fwalk(".", dir_fd=top_fd,
                                                    follow_symlinks=False):
        subdirs[:] = [d for d in subdirs if not ignored(d)]
        yield os.path.normpath(os.path.join(shown, current)), subdirs, files, dir_fd


class Watcher:
    """Changes under `root`. fileno() is readable when something may have changed
    (inotify); use wait() either way."""

    def __init__(self, root: Path) -> None:
        from sandrun.dev.project_files import open_project_dir

        self.root = root
        self.fd = -1
        self.root_fd = open_project_dir(root)
        self.dirs: dict[int, str] = {}
        self.snapshot: dict[str, tuple[int, int, int]] = {}
        self.mode = "inotify"
        self.note = ""
        try:
            self._start_inotify()
        except OSError as exc:
            self._close_inotify()
            self.mode = "polling"
            self.note = f"inotify unavailable ({exc.strerror or exc}): polling every " \
                        f"{POLL_INTERVAL:g} s"
            self.snapshot = self._scan()

    # ------------------------------------------------------------ inotify

    def _start_inotify(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd
        self._add_tree(str(self.root))

    def _add_tree(self, top: str) -> None:
        """Watch `top` (the root or a directory below it) and every directory under it,
        reached from the root's fd without following a link."""
        from sandrun.dev.project_files import open_beneath
        from sandrun.errors import SandrunError

        rel = os.path.relpath(top, self.root)
        try:
            top_fd = open_beneath(self.root_fd, "" if rel == "." else rel, top)
        except (SandrunError, OSError):
            return  # a link (never followed) or gone
        if top_fd is None:
            return
        try:
            for directory, _subdirs, _files, dir_fd in _walk(top_fd, top):
                self._add(directory, dir_fd)
        finally:
            os.close(top_fd)

    def _add(self, directory: str, dir_fd: int) -> None:
        # The directory the walk opened, by its fd: no path is resolved again.
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(f"/proc/self/fd/{dir_fd}"),
                                          WATCH_MASK | IN_ONLYDIR)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return  # gone already, or not ours to watch
            raise OSError(code, os.strerror(code))
        self.dirs[wd] = directory

    def _read_events(self) -> list[str]:
        changed: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size:offset + _EVENT.size + length]
                offset += _EVENT.size + length
                name = os.fsdecode(raw.rstrip(b"\0"))
                if mask & IN_Q_OVERFLOW:
                    changed.append(str(self.root))
                    continue
                base = self.dirs.get(wd)
                if base is None or (name and ignored(name)):
                    continue
                path = os.path.join(base, name) if name else base
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    self._add_tree(path)
                if mask & IN_ISDIR and not mask & (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM
                                                   | IN_DELETE):
                    continue  # attributes of a directory
                changed.append(path)

    # ------------------------------------------------------------ polling

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        found = {}
        for current, _subdirs, files, dir_fd in _walk(self.root_fd, str(self.root)):
            for name in files:
                if ignored(name):
                    continue
                path = os.path.join(current, name)
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                found[path] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        return found

    def _poll(self) -> list[str]:
        now = self._scan()
        old, self.snapshot = self.snapshot, now
        return sorted(p for p in set(old) | set(now) if old.get(p) != now.get(p))

    # ------------------------------------------------------------ both

    def fileno(self) -> int:
        return self.fd

    def wait(self, timeout: float | None, wake_fds: tuple[int, ...] = ()) -> list[str] | None:
        """The changed paths (after the burst settled), [] when `timeout` passed or a
        wake fd became readable first (None then: the caller checks why)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.mode == "polling":
                step = POLL_INTERVAL if left is None else min(POLL_INTERVAL, left)
                ready = select.select(list(wake_fds), [], [], step)[0]
                if ready:
                    return None
                changed = self._poll()
            else:
                ready = select.select([self.fd, *wake_fds], [], [], left)[0]
                if any(fd in ready for fd in wake_fds):
                    return None
                changed = self._read_events() if ready else []
            if changed:
                return self._settle(changed)
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _settle(self, changed: list[str]) -> list[str]:
        end = time.monotonic() + MAX_SETTLE
        while time.monotonic() < end:
            if self.mode == "polling":
                break
            if not select.select([self.fd], [], [], SETTLE)[0]:
                break
            changed += self._read_events()
        return sorted(set(changed))

    def _close_inotify(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self._close_inotify()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1
