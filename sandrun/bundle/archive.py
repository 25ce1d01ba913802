"""The one strict zip parser (for verification and extraction) and the deterministic writer.

The parser never trusts a single structure: it reads the end record, walks the whole
central directory, cross-checks every local header, accounts for every byte of the file
(preamble, entries, central directory, end record) and records each finding as a
`Problem`, continuing wherever it safely can so that `sandrun verify` lists everything
at once. Only a file that cannot be read as a zip at all raises `ArchiveError`.

The writer produces exactly the subset the parser accepts: one shebang line, then local
headers with no extra fields and no data descriptors, then the central directory
directly followed by an end record without comment. Offsets are absolute file offsets.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import sys
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator

from sandrun.errors import ArchiveError, Problem

TYPE_CHECKING = False  # not typing's: the cold start imports this before it forks
if TYPE_CHECKING:
    from typing import BinaryIO

STORED = 0
DEFLATED = 8
SUPPORTED_METHODS = frozenset({STORED, DEFLATED})

# Limits against decompression bombs and absurd archives.
MAX_ENTRY_SIZE = 1 << 30  # uncompressed bytes of one entry
MAX_TOTAL_SIZE = 4 << 30  # uncompressed bytes of all entries together
MAX_RATIO = 1000  # uncompressed:compressed, checked for entries over RATIO_MIN_SIZE
RATIO_MIN_SIZE = 1 << 20
MAX_ENTRIES = 100_000
MAX_PREAMBLE_SIZE = 256
MAX_ARCHIVE_SIZE = 4 << 30  # a zip without zip64 cannot address more
MAX_NAME_BYTES = 4095  # PATH_MAX - 1
MAX_COMPONENT_BYTES = 255  # NAME_MAX

# `where` of problems that concern no single entry.
ARCHIVE = "<archive>"
PREAMBLE = "<preamble>"
EMPTY_NAME = "<empty name>"

FLAG_ENCRYPTED = 0x0001
FLAG_DEFLATE_OPTIONS = 0x0006  # compression level hints, harmless
FLAG_DATA_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_DEFLATE_OPTIONS | FLAG_DATA_DESCRIPTOR | FLAG_UTF8

ZIP_VERSION = 20  # 2.0: deflate, no zip64
CREATE_SYSTEM_UNIX = 3
ZIP64_EXTRA_ID = 0x0001
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
DATA_DESCRIPTOR_SIG = b"PK\x07\x08"

# sig, version needed, flags, method, time, date, crc32, compressed size, size, name len,
# extra len
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
# sig, version made by, system, version needed, reserved, flags, method, time, date, crc32,
# compressed size, size, name len, extra len, comment len, disk, internal attr,
# external attr, local header offset
CENTRAL_HEADER = struct.Struct("<4sBBBBHHHHIIIHHHHHII")
# sig, this disk, central directory disk, entries on this disk, entries, cd size,
# cd offset, comment len
END_RECORD = struct.Struct("<4sHHHHIIH")
ZIP64_LOCATOR_SIZE = 20

CHUNK = 1 << 20
# Decompressed bytes sha256() keeps for the extraction that follows verification.
CONTENTS_LIMIT = 256 << 20

REBUILD_HINT = "rebuild the bundle with `sandrun bundle` and do not modify it afterwards"
ZIP64_HINT = "sandrun bundles are plain zips: at most 65535 entries and 4 GiB"
ZIP64_UNSUPPORTED = "zip64 is not supported"


class ZipEntry:
    """One entry as the central directory describes it (the authority for extraction).

    A plain immutable class rather than a dataclass: a cold launch imports this module
    before it forks the child that hashes the entries (launch.prefetch), and every
    millisecond of imports before the fork is one the child starts later; `dataclasses`
    alone costs ~15 ms."""

    __slots__ = ("compressed_size", "crc32", "data_offset", "flags", "header_offset",
                 "method", "mode", "name", "size")
    name: str
    mode: int  # st_mode from external_attr >> 16 (file type + permission bits)
    method: int
    flags: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int  # -1 when the local header is missing or unreadable

    def __init__(self, name: str, mode: int, method: int, flags: int, crc32: int,
                 compressed_size: int, size: int, header_offset: int,
                 data_offset: int) -> None:
        for field, value in (("name", name), ("mode", mode), ("method", method),
                             ("flags", flags), ("crc32", crc32),
                             ("compressed_size", compressed_size), ("size", size),
                             ("header_offset", header_offset), ("data_offset", data_offset)):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ZipEntry is immutable (cannot set {name})")

    def _key(self) -> tuple[str, int, int, int, int, int, int, int, int]:
        return (self.name, self.mode, self.method, self.flags, self.crc32,
                self.compressed_size, self.size, self.header_offset, self.data_offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ZipEntry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[type[ZipEntry], tuple[str, int, int, int, int, int, int,
                                                         int, int]]:
        return (ZipEntry, self._key())  # copy and pickle (slots cannot be set back)

    def __repr__(self) -> str:
        return "ZipEntry(" + ", ".join(
            f"{name}={value!r}" for name, value in zip(
                ("name", "mode", "method", "flags", "crc32", "compressed_size", "size",
                 "header_offset", "data_offset"), self._key(), strict=True)) + ")"


class StrictArchive:
    """A parsed archive held in memory; `problems` lists every structural finding."""

    def __init__(self, data: bytes | bytearray, preamble: bytes, entries: tuple[ZipEntry, ...],
                 problems: tuple[Problem, ...]) -> None:
        self._data = data
        self.preamble = preamble
        self.entries = entries
        self.problems = problems
        self.size = len(data)
        # Data decompressed by sha256(), checked against its CRC-32 and size, kept for the
        # read() of the extraction that follows verification (inflating once, not twice).
        self._contents: dict[ZipEntry, bytes | memoryview] = {}
        self._contents_size = 0

    def __repr__(self) -> str:
        return (f"<StrictArchive size={self.size} entries={len(self.entries)} "
                f"problems={len(self.problems)}>")

    @property
    def total_size(self) -> int:
        """Declared uncompressed size of all entries (zip64 placeholders not counted)."""
        return sum(e.size for e in self.entries if e.size != U32_MAX)

    def file_sha256(self) -> str:
        """sha256 of the whole archive file as it was read (one read, no race)."""
        return hashlib.sha256(self._data).hexdigest()

    def read_problem(self, entry: ZipEntry) -> Problem | None:
        """Why `read` would refuse `entry` before decompressing anything, or None.

        Every such refusal is also among `problems`.
        """
        if entry.data_offset < 0:
            return Problem(display_name(entry.name), "local header is missing or unreadable",
                           REBUILD_HINT)
        found = _data_problems(entry, self.size)
        return found[0] if found else None

    def read(self, entry: ZipEntry) -> bytes:
        """The decompressed data, checked against the declared size and CRC-32."""
        kept = self._contents.get(entry)
        if kept is not None:
            return kept if isinstance(kept, bytes) else bytes(kept)
        return b"".join(self._chunks(entry))

    def read_buffer(self, entry: ZipEntry) -> bytes | memoryview:
        """read(), without copying data kept in shared memory (BackgroundHashes): for
        writing it out."""
        kept = self._contents.get(entry)
        return kept if kept is not None else b"".join(self._chunks(entry))

    def sha256(self, entry: ZipEntry) -> tuple[str, int]:
        """sha256 hex digest and size of the decompressed data, same checks.

        The data of the first CONTENTS_LIMIT bytes of entries hashed stays in memory, so
        that the extraction after verification writes exactly what was hashed without
        inflating it again (drop_contents() lets it go); larger ones are streamed."""
        kept = self._contents.get(entry)
        if kept is not None:
            return hashlib.sha256(kept).hexdigest(), len(kept)
        digest, size, data = self._digest(
            entry, keep=self._contents_size + entry.size <= CONTENTS_LIMIT)
        if data is not None:
            self._contents[entry] = data
            self._contents_size += size
        return digest.hex(), size

    def _digest(self, entry: ZipEntry, *, keep: bool) -> tuple[bytes, int, bytes | None]:
        """sha256 digest and size of the decompressed data (size and CRC-32 checked), and
        the data itself when `keep` (else streamed); ArchiveError before anything is
        returned. sha256() and the hashing child (BackgroundHashes) both use it."""
        if keep:
            data = b"".join(self._chunks(entry))
            return hashlib.sha256(data).digest(), len(data), data
        digest = hashlib.sha256()
        size = 0
        for chunk in self._chunks(entry):
            digest.update(chunk)
            size += len(chunk)
        return digest.digest(), size, None

    def drop_contents(self) -> None:
        """Forget the data kept by sha256() (once it is extracted)."""
        self._contents = {}
        self._contents_size = 0

    def hash_in_background(self) -> BackgroundHashes | None:
        """sha256() of every readable entry, computed by a forked child on another CPU while
        this process goes on (a launch imports and decides meanwhile); collect() waits.
        None when that is not worth it or not safe: an archive with structural problems
        (its verification fails anyway), one over MAX_TOTAL_SIZE (not hashed at all), or
        a process with threads (fork would copy their locks held)."""
        threading = sys.modules.get("threading")
        if self.problems or self.total_size > MAX_TOTAL_SIZE or (
                threading is not None and threading.active_count() > 1):
            return None
        return BackgroundHashes.start(
            self, [i for i, e in enumerate(self.entries) if self.read_problem(e) is None])

    def _chunks(self, entry: ZipEntry) -> Iterator[bytes | memoryview]:
        refusal = self.read_problem(entry)
        if refusal is not None:
            raise ArchiveError(str(refusal), refusal.hint)
        where = display_name(entry.name)
        raw = memoryview(self._data)[entry.data_offset:entry.data_offset + entry.compressed_size]
        crc = 0
        produced = 0
        if entry.method == STORED:
            for start in range(0, len(raw), CHUNK):
                piece = raw[start:start + CHUNK]
                crc = zlib.crc32(piece, crc)
                produced += len(piece)
                yield piece
        else:
            for chunk in _inflate(raw, entry, where):
                crc = zlib.crc32(chunk, crc)
                produced += len(chunk)
                yield chunk
        if produced != entry.size:
            raise ArchiveError(f"{where}: data is {produced} bytes but the archive declares "
                               f"{entry.size}", REBUILD_HINT)
        if crc != entry.crc32:
            raise ArchiveError(f"{where}: CRC-32 mismatch (data has {crc:08x}, archive declares "
                               f"{entry.crc32:08x}): the entry was altered or corrupted",
                               REBUILD_HINT)


_HASH_RECORD = struct.Struct("<B32sQ")  # state, sha256 digest, size
_HASHED, _FAILED = 1, 2
_CHILD_SIGNALS = {2, 1, 3, 15}  # SIGINT, SIGHUP, SIGQUIT, SIGTERM (no enum import here)


class BackgroundHashes:
    """What sha256() returns for some entries, computed by a forked child.

    Inflating and hashing is most of verifying a bundle, and neither needs this process:
    the child does it on another CPU (no GIL to share). It writes one record per entry,
    and the data sha256() would keep, into anonymous shared memory laid out beforehand
    from the declared sizes; collect() reaps it and takes both over, so the extraction
    writes what the child hashed without inflating it again. The child is a copy of this
    process reading memory both already hold: it opens, runs and trusts nothing new. An
    entry it could not hash is hashed again by the caller, which meets the ArchiveError
    itself; a child that died is replaced by hashing everything here. Use start()."""

    @classmethod
    def start(cls, archive: StrictArchive, indexes: list[int]) -> BackgroundHashes | None:
        """The child at work, or None when it cannot be started (no memory, no process
        left under pids.max or RLIMIT_NPROC): the caller then hashes by itself."""
        try:
            return cls(archive, indexes)
        except OSError:
            return None

    def __init__(self, archive: StrictArchive, indexes: list[int]) -> None:
        import mmap
        import signal

        self._archive = archive
        self._indexes = indexes
        self._kept: dict[int, int] = {}  # entry index -> offset of its data
        room = CONTENTS_LIMIT - archive._contents_size
        used = 0
        for index in indexes:
            size = archive.entries[index].size
            if used + size <= room:
                self._kept[index] = used
                used += size
        self._data_start = len(archive.entries) * _HASH_RECORD.size
        self._shared: mmap.mmap | None = mmap.mmap(-1, self._data_start + used or 1)
        # Until the child has reset them: a Ctrl-C (sent to the whole process group) must
        # not raise KeyboardInterrupt in it before its try, unwinding the caller's stack.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    self._hash_and_exit(blocked)
                finally:
                    os._exit(1)  # never back into the caller's code
        except BaseException:
            self._shared.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        # The child by its pidfd: no signal can reach a recycled pid, even if SIGCHLD was
        # inherited ignored (the kernel then reaps it itself).
        try:
            self._pidfd = os.pidfd_open(pid)
        except BaseException:
            try:  # (not contextlib: ~7 ms of imports before the fork)
                os.kill(pid, signal.SIGKILL)  # not reaped yet: still this child's pid
                os.waitpid(pid, 0)
            except OSError:
                pass
            self._shared.close()
            raise
        self._pid = pid

    def _hash_and_exit(self, mask: Iterable[int]) -> None:
        code = 1
        try:
            import gc
            import signal

            for number in _CHILD_SIGNALS:  # die of them, as any process does
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            gc.disable()  # nothing here makes cycles; a collection would copy pages
            archive, shared = self._archive, self._shared
            assert shared is not None
            for index in self._indexes:
                entry = archive.entries[index]
                at = self._kept.get(index)
                try:
                    digest, size, data = archive._digest(entry, keep=at is not None)
                    if at is not None and data is not None:
                        start = self._data_start + at
                        shared[start:start + size] = data
                    record = _HASH_RECORD.pack(_HASHED, digest, size)
                except ArchiveError:
                    record = _HASH_RECORD.pack(_FAILED, b"", 0)
                shared[index * _HASH_RECORD.size:(index + 1) * _HASH_RECORD.size] = record
            code = 0
        finally:
            os._exit(code)

    def collect(self) -> dict[int, tuple[str, int]]:
        """Wait for the child: (sha256 hex, size) of every entry it hashed, as sha256()
        returns them. An entry missing from the result was not hashed (it cannot be read,
        or the child died): sha256() says why."""
        status = self._reap()
        archive, shared = self._archive, self._shared
        self._shared = None  # from here the views below own the mapping (unmapped with them)
        hashes: dict[int, tuple[str, int]] = {}
        if shared is None:
            return hashes
        if status != 0:
            shared.close()
            return hashes
        view = memoryview(shared)
        for index in self._indexes:
            state, digest, size = _HASH_RECORD.unpack_from(shared, index * _HASH_RECORD.size)
            entry = archive.entries[index]
            if state != _HASHED or size != entry.size:  # (_chunks checked it: belt and braces)
                continue
            at = self._kept.get(index)
            if at is not None and entry not in archive._contents:
                start = self._data_start + at
                archive._contents[entry] = view[start:start + size]  # no copy
                archive._contents_size += size
            hashes[index] = digest.hex(), size
        view.release()
        return hashes

    def cancel(self) -> None:
        """Kill and reap the child if it still runs (the caller gave up); idempotent."""
        if self._pid:
            import signal

            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self._reap()
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def _reap(self) -> int:
        """The child's wait status (-1: reaped by the kernel, SIGCHLD ignored); once."""
        if not self._pid:
            return -1
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            status = -1
        self._pid = 0
        os.close(self._pidfd)
        return status


def _inflate(raw: memoryview, entry: ZipEntry, where: str) -> Iterator[bytes]:
    """Raw deflate, never producing more than entry.size + 1 bytes (bomb-safe)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pos = 0
    produced = 0
    try:
        while True:
            if inflater.unconsumed_tail:
                buf: bytes | memoryview = inflater.unconsumed_tail
            else:
                buf = raw[pos:pos + CHUNK]
                pos += len(buf)
            out = inflater.decompress(buf, CHUNK)
            if out:
                produced += len(out)
                if produced > entry.size:
                    raise ArchiveError(f"{where}: decompresses to more than its declared size "
                                       f"of {entry.size} bytes", REBUILD_HINT)
                yield out
            if inflater.eof or (not out and not buf):
                break
    except zlib.error as exc:
        raise ArchiveError(f"{where}: corrupt deflate data ({exc})", REBUILD_HINT) from None
    if not inflater.eof:
        raise ArchiveError(f"{where}: deflate stream ends early (truncated data)", REBUILD_HINT)
    if inflater.unused_data or inflater.unconsumed_tail or pos < len(raw):
        raise ArchiveError(f"{where}: data continues after the end of the deflate stream",
                           REBUILD_HINT)


# ---------------------------------------------------------------------------------------
# Names and modes


def display_name(name: str) -> str:
    """`name` safe to print: control, format and undecodable characters are escaped."""
    if not name:
        return EMPTY_NAME
    if name.isprintable():
        return name
    out = []
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code <= 0xFF else
                       f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def check_name(name: str) -> list[str]:
    """Problems of one entry name as a relative POSIX path inside the bundle (each once)."""
    if not name:
        return ["empty name"]
    found = []
    if not name.isascii() and any("\ud800" <= c <= "\udfff" for c in name):
        found.append("name is not valid UTF-8")
    if name.startswith("/"):
        found.append("absolute path (starts with '/')")
    if name.endswith("/"):
        found.append("directory entry (name ends with '/'): bundles contain only files")
    if "\\" in name:
        found.append("backslash in name (a Windows path separator)")
    if "\x00" in name:
        found.append("NUL byte in name")
    if not (name.isascii() and name.isprintable()):  # fast path for the usual names
        controls = [c for c in name if c != "\x00" and unicodedata.category(c) == "Cc"]
        if controls:
            found.append(f"control character U+{ord(controls[0]):04X} in name")
        formats = [c for c in name if unicodedata.category(c) in ("Cf", "Zl", "Zp")]
        if formats:
            found.append(f"invisible formatting character U+{ord(formats[0]):04X} in name")
    path = name.lstrip("/")
    if path.endswith("/"):
        path = path[:-1]
    components = path.split("/")
    if ".." in components:
        found.append("'..' component in name (path traversal)")
    if "." in components:
        found.append("'.' component in name")
    if path and "" in components:
        found.append("empty path component in name ('//')")
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        found.append(f"name is {len(encoded)} bytes long (limit {MAX_NAME_BYTES})")
    if any(len(c.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES for c in components):
        found.append(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes")
    return found


_FILE_TYPES = {
    stat.S_IFLNK: "symlink entry",
    stat.S_IFDIR: "directory entry (directory mode)",
    stat.S_IFCHR: "character device entry",
    stat.S_IFBLK: "block device entry",
    stat.S_IFIFO: "fifo (named pipe) entry",
    stat.S_IFSOCK: "socket entry",
}


def check_mode(mode: int) -> list[str]:
    """Problems of an entry's st_mode: only plain, non-shared-writable files are allowed."""
    found = []
    file_type = stat.S_IFMT(mode)
    if file_type == 0:
        found.append(f"mode {mode:o} has no file type (expected a regular file)")
    elif file_type != stat.S_IFREG:
        found.append(_FILE_TYPES.get(file_type, f"unknown file type {file_type:o} in mode"))
    special = [label for bit, label in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"),
                                        (stat.S_ISVTX, "sticky")) if mode & bit]
    if special:
        found.append(f"{'/'.join(special)} bit set (mode {mode & 0o7777:04o})")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(f"writable by group or others (mode {mode & 0o7777:04o})")
    return found


def _fold(name: str) -> str:
    """The key under which two names would collide on a case-insensitive or normalising FS."""
    if name.isascii():  # NFC leaves ASCII as it is, and casefold() of ASCII is lower()
        return name.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _name_set_problems(names: list[str]) -> list[Problem]:
    """Duplicates (exact, case-folded, normalised) and file-versus-directory collisions."""
    found = []
    exact: dict[str, int] = {}
    folded: dict[str, str] = {}
    for index, name in enumerate(names):
        where = display_name(name)
        if name in exact:
            found.append(Problem(where, f"duplicate name (entries #{exact[name] + 1} and "
                                        f"#{index + 1})", REBUILD_HINT))
            continue
        exact[name] = index
        key = _fold(name)
        other = folded.setdefault(key, name)
        if other == name:
            continue
        if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
            found.append(Problem(where, f"duplicate name: same as '{display_name(other)}' after "
                                        "Unicode normalisation (NFC)", REBUILD_HINT))
        else:
            found.append(Problem(where, f"duplicate name: same as '{display_name(other)}' after "
                                        "case folding", REBUILD_HINT))
    files = {_fold(n): n for n in names if n and not n.endswith("/")}
    reported = set()
    for name in names:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts)):
            prefix = _fold("/".join(parts[:depth]))
            owner = files.get(prefix)
            if owner is not None and owner not in reported:
                reported.add(owner)
                found.append(Problem(display_name(owner),
                                     f"is a file but '{display_name(name)}' uses it as a "
                                     "directory", REBUILD_HINT))
    return found


def _preamble_problem(preamble: bytes) -> str | None:
    """The preamble may only be empty or one `#!` line (shiv's shebang)."""
    if not preamble:
        return None
    line = preamble[:-1]
    ok = (len(preamble) <= MAX_PREAMBLE_SIZE and preamble.startswith(b"#!")
          and preamble.endswith(b"\n") and not any((b < 0x20 and b != 0x09) or b == 0x7F
                                                   for b in line))
    if ok:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
    if ok:
        return None
    return (f"data before the first entry: {len(preamble)} bytes that are not a single "
            f"'#!' line of at most {MAX_PREAMBLE_SIZE} bytes ending in a newline")


# ---------------------------------------------------------------------------------------
# Parser


def open_archive(source: str | os.PathLike[str] | int) -> StrictArchive:
    """Read and parse a bundle from a path (never following a symlink) or an open fd.

    An fd is read with pread, so its offset is untouched, and it is not closed.
    """
    if isinstance(source, int):
        return parse_archive(_read_fd(source, f"fd {source}"), f"fd {source}")
    label = os.fsdecode(source)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArchiveError(f"{label} is a symlink; bundles are opened without following "
                               "symlinks", "pass the path of the bundle file itself") from None
        if exc.errno == errno.ENOENT:
            raise ArchiveError(f"{label}: no such file", "check the bundle path") from None
        raise ArchiveError(f"cannot open {label}: {exc.strerror}",
                           "check the path and its permissions") from None
    try:
        data = _read_fd(fd, label)
    finally:
        os.close(fd)
    return parse_archive(data, label)


def _read_fd(fd: int, label: str) -> bytearray:
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise ArchiveError(f"cannot read {label}: {exc.strerror}", "pass an open file") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArchiveError(f"{label} is not a regular file", "pass the path of a bundle file")
    if info.st_size == 0:
        raise ArchiveError(f"{label} is empty", REBUILD_HINT)
    if info.st_size > MAX_ARCHIVE_SIZE:
        raise ArchiveError(f"{label} is {info.st_size} bytes, more than a bundle can be "
                           f"({MAX_ARCHIVE_SIZE})", ZIP64_HINT)
    # One private copy read with pread: later changes to the file cannot reach the parser
    # (an mmap could change under us or SIGBUS on truncation).
    data = bytearray(info.st_size)
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            count = os.preadv(fd, [view[done:]], done)
            if count == 0:
                raise ArchiveError(f"{label} shrank while being read", "retry; do not modify "
                                   "the bundle while sandrun reads it")
            done += count
        if os.pread(fd, 1, done):
            raise ArchiveError(f"{label} grew while being read", "retry; do not modify the "
                               "bundle while sandrun reads it")
    except OSError as exc:
        raise ArchiveError(f"cannot read {label}: {exc.strerror}",
                           "check the file and its permissions") from None
    finally:
        view.release()
    return data


def _find_end_record(data: bytes | bytearray) -> int:
    """Offset of the last end record whose central directory pointer is consistent."""
    size = len(data)
    if size < END_RECORD.size:
        raise ArchiveError(f"file is only {size} bytes: too small to be a zip archive",
                           REBUILD_HINT)
    low = max(0, size - END_RECORD.size - U16_MAX)
    pos = size - END_RECORD.size
    seen = False
    while pos >= low:
        pos = data.rfind(EOCD_SIG, low, pos + len(EOCD_SIG))
        if pos < 0:
            break
        seen = True
        _, _, _, _, count, cd_size, cd_offset, _ = END_RECORD.unpack_from(data, pos)
        if count == U16_MAX or cd_size == U32_MAX or cd_offset == U32_MAX:
            return pos  # zip64: the caller says so
        if cd_offset + cd_size <= pos and (
                (cd_size == 0 and count == 0)
                or data[cd_offset:cd_offset + len(CENTRAL_SIG)] == CENTRAL_SIG):
            return pos
        pos -= 1
    if seen:
        raise ArchiveError("the end of central directory record points outside the file or "
                           "at no central directory (corrupt, or offsets relative to a "
                           "prepended file)", REBUILD_HINT)
    raise ArchiveError("no end of central directory record: not a zip archive, or truncated",
                       REBUILD_HINT)


def parse_archive(data: bytes | bytearray, label: str | None = None) -> StrictArchive:
    """Parse an archive held in memory; see the module docstring. `label` (the file's
    name) prefixes the message when the data is no usable zip at all."""
    try:
        return _parse_archive(data)
    except ArchiveError as exc:
        if label is None:
            raise
        raise ArchiveError(f"{label}: {exc.message}", exc.hint) from None


def _parse_archive(data: bytes | bytearray) -> StrictArchive:
    problems: list[Problem] = []

    def add(where: str, what: str, hint: str = REBUILD_HINT) -> None:
        problems.append(Problem(where, what, hint))

    size = len(data)
    eocd = _find_end_record(data)
    (_, disk, cd_disk, disk_count, count, cd_size, cd_offset,
     comment_len) = END_RECORD.unpack_from(data, eocd)
    if count == U16_MAX or disk_count == U16_MAX or cd_size == U32_MAX or cd_offset == U32_MAX:
        raise ArchiveError("zip64 is not supported (the end record defers to a zip64 record)",
                           ZIP64_HINT)
    if eocd >= ZIP64_LOCATOR_SIZE and data[eocd - ZIP64_LOCATOR_SIZE:
                                           eocd - ZIP64_LOCATOR_SIZE + 4] == ZIP64_LOCATOR_SIG:
        add(ARCHIVE, "zip64 is not supported (zip64 end of central directory locator)",
            ZIP64_HINT)
    if disk or cd_disk or disk_count != count:
        add(ARCHIVE, "multi-disk (split) archives are not supported")
    after = size - eocd - END_RECORD.size
    if comment_len and after >= comment_len:
        add(ARCHIVE, f"archive comment of {comment_len} bytes (data outside the entries)")
    if after > comment_len:
        add(ARCHIVE, f"{after - comment_len} bytes of data after the end of central directory "
                     "record (trailing data)")
    elif after < comment_len:
        add(ARCHIVE, f"end record declares a {comment_len}-byte comment but only {after} bytes "
                     "follow (truncated)")
    cd_end = cd_offset + cd_size
    if cd_end < eocd:
        add(ARCHIVE, f"{eocd - cd_end} bytes between the central directory and the end record "
                     "(the central directory must be directly followed by the end record)")

    entries: list[ZipEntry] = []
    spans: list[tuple[int, int, str]] = []  # start, end, entry name
    pos = cd_offset
    while pos < cd_end:
        if len(entries) >= MAX_ENTRIES:
            add(ARCHIVE, f"more than {MAX_ENTRIES} entries; the rest were not parsed")
            break
        if pos + CENTRAL_HEADER.size > cd_end:
            raise ArchiveError(f"central directory is truncated (record at offset {pos})",
                               REBUILD_HINT)
        (sig, _made_by, _system, _needed, _reserved, flags, method, _time, _date, crc,
         csize, usize, name_len, extra_len, entry_comment_len, disk_start, _internal,
         external, header_offset) = CENTRAL_HEADER.unpack_from(data, pos)
        if sig != CENTRAL_SIG:
            raise ArchiveError(f"central directory is corrupt: no entry record at offset {pos}",
                               REBUILD_HINT)
        name_start = pos + CENTRAL_HEADER.size
        next_pos = name_start + name_len + extra_len + entry_comment_len
        if next_pos > cd_end:
            raise ArchiveError(f"central directory is truncated (record at offset {pos})",
                               REBUILD_HINT)
        raw_name = bytes(data[name_start:name_start + name_len])
        extra = bytes(data[name_start + name_len:name_start + name_len + extra_len])
        pos = next_pos

        if flags & FLAG_UTF8 or raw_name.isascii():
            # Invalid UTF-8 survives as surrogates, which check_name reports.
            name = raw_name.decode("utf-8", "surrogateescape")
            where = display_name(name)
        else:
            name = raw_name.decode("cp437")  # as zipfile and zipimport do
            where = display_name(name)
            add(where, "non-ASCII name without the UTF-8 flag (bit 11)")
        for what in check_name(name):
            add(where, what)
        for what in check_mode(external >> 16):
            add(where, what)

        if flags & FLAG_DATA_DESCRIPTOR:
            add(where, "uses a data descriptor (flag bit 3), which sandrun bundles never do")
        if flags & ~KNOWN_FLAGS:
            add(where, f"unsupported flag bits 0x{flags & ~KNOWN_FLAGS:04x}")
        if disk_start:
            add(where, "multi-disk (split) archives are not supported")
        # Sentinel sizes are reported by _data_problems (they also forbid reading).
        extra_problem = _extra_problem(extra)
        if U32_MAX not in (csize, usize) and (header_offset == U32_MAX
                                              or extra_problem == "zip64"):
            add(where, ZIP64_UNSUPPORTED, ZIP64_HINT)
        elif extra_problem and extra_problem != "zip64":
            add(where, f"central directory {extra_problem}")
        if entry_comment_len:
            add(where, f"entry comment of {entry_comment_len} bytes (data outside the entries)")

        def report(what: str, w: str = where) -> None:
            add(w, what)

        data_offset, span_end = _check_local_header(data, cd_offset, header_offset, raw_name,
                                                    flags, method, crc, csize, usize, report)
        entry = ZipEntry(name=name, mode=external >> 16, method=method, flags=flags, crc32=crc,
                         compressed_size=csize, size=usize, header_offset=header_offset,
                         data_offset=data_offset)
        entries.append(entry)
        problems.extend(_data_problems(entry, size))
        if data_offset >= 0:
            if cd_offset < span_end <= size:
                add(where, "entry data overlaps the central directory")
            elif span_end > size and data_offset + csize <= size:  # else already reported
                add(where, "entry runs past the end of the file (truncated)")
            spans.append((header_offset, span_end, name))
    if len(entries) != count and len(entries) < MAX_ENTRIES:
        add(ARCHIVE, f"end record declares {count} entries but the central directory holds "
                     f"{len(entries)}")

    problems.extend(_name_set_problems([e.name for e in entries]))
    total = sum(e.size for e in entries if e.size != U32_MAX)  # as StrictArchive.total_size
    if total > MAX_TOTAL_SIZE:
        add(ARCHIVE, f"total uncompressed size {total} exceeds the limit of {MAX_TOTAL_SIZE} "
                     "bytes")

    spans.sort(key=lambda s: (s[0], s[1]))
    first = min([s[0] for s in spans] + [cd_offset])
    cursor = first
    previous: str | None = None  # the name of the entry that reaches furthest so far
    for start, end, name in spans:
        if start < cursor and previous is not None:
            add(display_name(name), f"overlaps entry '{display_name(previous)}' "
                                    f"(local header at offset {start})")
        elif start > cursor:
            after_what = (f"entry '{display_name(previous)}'" if previous is not None
                          else "the preamble")
            add(display_name(name), f"{start - cursor} bytes of data between "
                                    f"{after_what} and this entry (data between entries)")
        if previous is None or end > cursor:
            previous = name
        cursor = max(cursor, end)
    if cursor < cd_offset:
        last = (f"the last entry '{display_name(previous)}'" if previous is not None
                else "the preamble")
        add(ARCHIVE, f"{cd_offset - cursor} bytes of data between {last} and the central "
                     "directory (data between entries)")
    preamble = bytes(data[:first])
    preamble_problem = _preamble_problem(preamble)
    if preamble_problem:
        add(PREAMBLE, preamble_problem)
    return StrictArchive(data, preamble, tuple(entries), tuple(problems))


def _extra_problem(extra: bytes) -> str | None:
    """'zip64' for a zip64 extra field, a description for a malformed one, else None."""
    pos = 0
    while pos < len(extra):
        if pos + 4 > len(extra):
            return "extra field is malformed"
        field_id, field_len = struct.unpack_from("<HH", extra, pos)
        if field_id == ZIP64_EXTRA_ID:
            return "zip64"
        pos += 4 + field_len
    return "extra field is malformed" if pos != len(extra) else None


def _check_local_header(data: bytes | bytearray, cd_offset: int, offset: int, raw_name: bytes,
                        flags: int, method: int, crc: int, csize: int, usize: int,
                        report: Callable[[str], None]) -> tuple[int, int]:
    """Cross-check a local header with its central record: (data offset, end of entry)."""
    if offset >= cd_offset:
        report(f"local header offset {offset} points outside the entry area (into or beyond "
               "the central directory)")
        return -1, -1
    if offset + LOCAL_HEADER.size > cd_offset:
        report(f"local header at offset {offset} is truncated")
        return -1, -1
    (sig, _needed, lflags, lmethod, _time, _date, lcrc, lcsize, lusize, lname_len,
     lextra_len) = LOCAL_HEADER.unpack_from(data, offset)
    if sig != LOCAL_SIG:
        report(f"no local header at offset {offset}")
        return -1, -1
    name_start = offset + LOCAL_HEADER.size
    data_offset = name_start + lname_len + lextra_len
    if data_offset > cd_offset:
        report(f"local header at offset {offset} is truncated")
        return -1, -1
    lname = bytes(data[name_start:name_start + lname_len])
    if lname != raw_name:
        shown = display_name(lname.decode("utf-8", "surrogateescape"))
        report(f"local header name '{shown}' differs from the central directory name "
               "(local header / central directory disagreement)")
    fields = [("flags", lflags, flags, "0x{:04x}"), ("compression method", lmethod, method,
                                                      "{}")]
    zip64 = U32_MAX in (csize, usize)
    if zip64 and lcsize != U32_MAX:
        csize = lcsize  # only to account for the entry's bytes; it is never read
    elif not flags & FLAG_DATA_DESCRIPTOR:  # with a descriptor the local values are zero
        fields += [("CRC-32", lcrc, crc, "{:08x}"), ("compressed size", lcsize, csize, "{}"),
                   ("size", lusize, usize, "{}")]
    for label, local, central, fmt in fields:
        if local != central:
            report(f"local header {label} {fmt.format(local)} differs from the central "
                   f"directory's {fmt.format(central)} (local header / central directory "
                   "disagreement)")
    lextra = bytes(data[name_start + lname_len:data_offset])
    extra_problem = _extra_problem(lextra)
    if extra_problem == "zip64" and U32_MAX not in (csize, usize):
        report("zip64 is not supported (zip64 extra field in the local header)")
    elif extra_problem and extra_problem != "zip64":
        report(f"local header {extra_problem}")
    end = data_offset + csize
    if flags & FLAG_DATA_DESCRIPTOR:
        end += 16 if data[end:end + 4] == DATA_DESCRIPTOR_SIG else 12
    return data_offset, end


def _data_problems(entry: ZipEntry, archive_size: int) -> list[Problem]:
    """Reasons not to decompress an entry's data at all (shared by parser and read)."""
    where = display_name(entry.name)
    if U32_MAX in (entry.compressed_size, entry.size):
        return [Problem(where, ZIP64_UNSUPPORTED, ZIP64_HINT)]  # the sizes are placeholders
    found = []
    if entry.flags & FLAG_ENCRYPTED:
        found.append(Problem(where, "encrypted entry (flag bit 0): not supported", REBUILD_HINT))
    if entry.method not in SUPPORTED_METHODS:
        found.append(Problem(where, f"compression method {entry.method} is not supported "
                                    "(only stored and deflated)", REBUILD_HINT))
    if entry.size > MAX_ENTRY_SIZE:
        found.append(Problem(where, f"uncompressed size {entry.size} exceeds the limit of "
                                    f"{MAX_ENTRY_SIZE} bytes", REBUILD_HINT))
    if entry.size > RATIO_MIN_SIZE and entry.size > MAX_RATIO * entry.compressed_size:
        ratio = entry.size // max(entry.compressed_size, 1)
        found.append(Problem(where, f"compression ratio {ratio}:1 exceeds the limit of "
                                    f"{MAX_RATIO}:1 (a decompression bomb?)", REBUILD_HINT))
    if entry.method == STORED and entry.compressed_size != entry.size:
        found.append(Problem(where, f"stored entry has compressed size {entry.compressed_size} "
                                    f"but size {entry.size}", REBUILD_HINT))
    if entry.data_offset >= 0 and entry.data_offset + entry.compressed_size > archive_size:
        found.append(Problem(where, "entry data runs past the end of the file (truncated)",
                             REBUILD_HINT))
    return found


# ---------------------------------------------------------------------------------------
# Writer

EPOCH_1980 = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip can store
EPOCH_2107 = 4354819199  # 2107-12-31T23:59:59Z, the latest


def date_time_from_epoch(epoch: int) -> tuple[int, int, int, int, int, int]:
    """SOURCE_DATE_EPOCH as a zip date_time (UTC), clamped to what a zip can store."""
    moment = time.gmtime(min(max(epoch, EPOCH_1980), EPOCH_2107))
    return (moment.tm_year, moment.tm_mon, moment.tm_mday, moment.tm_hour, moment.tm_min,
            moment.tm_sec)


def _dos_date_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    import datetime  # writing only (the launch imports this module early)

    try:
        year, month, day, hour, minute, second = date_time
        datetime.datetime(year, month, day, hour, minute, second)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"invalid zip date_time {date_time!r} ({exc})",
                           "pass (year, month, day, hour, minute, second)") from None
    if not 1980 <= year <= 2107:
        raise ArchiveError(f"zip date_time {date_time!r} is out of range (1980 to 2107)",
                           "use date_time_from_epoch(SOURCE_DATE_EPOCH), which clamps")
    return ((hour << 11) | (minute << 5) | (second // 2),
            ((year - 1980) << 9) | (month << 5) | day)


def write_archive(out: BinaryIO, preamble: bytes, files: Iterable[tuple[str, bytes, int]], *,
                  date_time: tuple[int, int, int, int, int, int], compresslevel: int = 6) -> None:
    """Write a deterministic zip of `files` (name, content, permission bits) to `out`.

    Entries keep the given order (callers sort). Level 6 (zlib's default): level 9 took
    1.6x the time of shiv on httpbin + gunicorn for under 1% smaller output.
    `out` must be at the start of the file:
    offsets are absolute, counting the preamble. Same input, same bytes (for a given zlib).
    The writer refuses anything the parser would flag, so its output always parses clean.
    """
    files = list(files)
    refusals: list[str] = []
    preamble_problem = _preamble_problem(preamble)
    if preamble_problem:
        refusals.append(f"{PREAMBLE}: {preamble_problem}")
    for name, _content, mode in files:
        if mode & ~0o7777:
            refusals.append(f"{display_name(name)}: mode {mode:o} must be permission bits only")
            continue
        refusals += [f"{display_name(name)}: {what}"
                     for what in check_name(name) + check_mode(stat.S_IFREG | mode)]
    refusals += [str(p) for p in _name_set_problems([name for name, _, _ in files])]
    if len(files) > U16_MAX - 1:
        refusals.append(f"{len(files)} entries: zip64 is not supported")
    total = sum(len(content) for _, content, _ in files)
    if total > MAX_TOTAL_SIZE:
        refusals.append(f"total size {total} exceeds the limit of {MAX_TOTAL_SIZE} bytes")
    if refusals:
        raise ArchiveError("cannot write the archive: " + "; ".join(refusals),
                           "fix the file list given to the bundle writer")
    dos_time, dos_date = _dos_date_time(date_time)

    out.write(preamble)
    offset = len(preamble)
    central = []
    for name, content, mode in files:
        raw_name = name.encode("utf-8")
        flags = 0 if raw_name.isascii() else FLAG_UTF8
        size = len(content)
        if size > MAX_ENTRY_SIZE:
            raise ArchiveError(f"{display_name(name)}: {size} bytes exceed the entry limit of "
                               f"{MAX_ENTRY_SIZE} bytes", "leave such data out of the bundle")
        crc = zlib.crc32(content)
        method, payload = STORED, content
        if size:
            compressor = zlib.compressobj(compresslevel, zlib.DEFLATED, -zlib.MAX_WBITS)
            deflated = compressor.compress(content) + compressor.flush()
            # Store what would exceed the ratio limit (e.g. megabytes of zeros), so that
            # our own bundles never trip the bomb check.
            if not (size > RATIO_MIN_SIZE and size > MAX_RATIO * len(deflated)):
                method, payload = DEFLATED, deflated
        out.write(LOCAL_HEADER.pack(LOCAL_SIG, ZIP_VERSION, flags, method, dos_time, dos_date,
                                    crc, len(payload), size, len(raw_name), 0))
        out.write(raw_name)
        out.write(payload)
        central.append(CENTRAL_HEADER.pack(
            CENTRAL_SIG, ZIP_VERSION, CREATE_SYSTEM_UNIX, ZIP_VERSION, 0, flags, method,
            dos_time, dos_date, crc, len(payload), size, len(raw_name), 0, 0, 0, 0,
            (stat.S_IFREG | mode) << 16, offset) + raw_name)
        offset += LOCAL_HEADER.size + len(raw_name) + len(payload)
    directory = b"".join(central)
    if offset + len(directory) > U32_MAX:
        raise ArchiveError("the archive would exceed 4 GiB: zip64 is not supported", ZIP64_HINT)
    out.write(directory)
    out.write(END_RECORD.pack(EOCD_SIG, 0, 0, len(files), len(files), len(directory), offset,
                              0))
