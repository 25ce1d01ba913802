"""Craft test bundles: a small valid one, and broken variants of it.

`make_bundle(tmp_path) -> Path` writes a valid bundle (with `write_archive` and a real
`Manifest`) that `python app.pyz` runs and `sandrun verify` accepts. Its files are
`default_files()`; pass `files=` to change them.

For broken variants, `raw_entries()` returns the same bundle as a list of `RawEntry`
whose every header field can be changed (local and central separately), and
`build_raw()` assembles them byte by byte, with optional data between entries, after
the central directory, after the end record, and so on. `build_raw(raw_entries(f))`
equals `bundle_bytes(f)` (a test checks it), so a variant differs from a valid bundle
only by what the test changed.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandrun.bundle.archive import (
    CENTRAL_HEADER,
    CENTRAL_SIG,
    CREATE_SYSTEM_UNIX,
    DEFLATED,
    END_RECORD,
    EOCD_SIG,
    FLAG_UTF8,
    LOCAL_HEADER,
    LOCAL_SIG,
    STORED,
    ZIP_VERSION,
    write_archive,
)
from sandrun.bundle.manifest import MANIFEST_NAME, EntryRecord, Manifest, Target, normalise_mode

PREAMBLE = b"#!/usr/bin/env python3\n"
DATE_TIME = (2020, 1, 1, 0, 0, 0)
SOURCE_DATE_EPOCH = 1577836800  # DATE_TIME in UTC

MAIN = "__main__.py"
CORE = "site-packages/demo/core.py"
TOOL = "site-packages/demo/bin/tool"
PROFILE = ".sandrun/profile.toml"

Files = Mapping[str, tuple[bytes, int]]  # name -> (content, permission bits)


def default_files() -> dict[str, tuple[bytes, int]]:
    """The files of the small valid bundle: name -> (content, mode)."""
    return {
        MAIN: (b'print("hello from the bundle")\n', 0o644),
        "site-packages/demo/__init__.py": (b'"""Demo package."""\nVERSION = "1.0"\n', 0o644),
        CORE: (b"def answer():\n    return 42\n\n" * 40, 0o644),
        TOOL: (b"#!/bin/sh\necho tool\n", 0o755),
        "site-packages/demo-1.0.dist-info/METADATA":
            (b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n", 0o644),
        PROFILE: (b'extends = "default"\n', 0o644),
    }


def make_manifest(files: Files, preamble: bytes = PREAMBLE) -> Manifest:
    """The manifest that describes exactly `files` and `preamble`."""
    entries = {name: EntryRecord(hashlib.sha256(content).hexdigest(), len(content),
                                 normalise_mode(mode))
               for name, (content, mode) in sorted(files.items())}
    return Manifest(
        app_name="demo", app_version="1.0", entry_point="demo.core:answer",
        console_script=None,
        target=Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64", "any")),
        source_date_epoch=SOURCE_DATE_EPOCH,
        preamble_sha256=hashlib.sha256(preamble).hexdigest(),
        dependencies=(), entries=entries, sandrun_version="0.1.0")


def bundle_files(files: Files, manifest: Manifest) -> list[tuple[str, bytes, int]]:
    """The writer's input: files sorted by name, then the manifest last."""
    return ([(name, content, mode) for name, (content, mode) in sorted(files.items())]
            + [(MANIFEST_NAME, manifest.to_bytes(), 0o644)])


def bundle_bytes(files: Files | None = None, preamble: bytes = PREAMBLE,
                 manifest: Manifest | None = None) -> bytes:
    """A valid bundle written by `write_archive` (manifest defaults to one matching files)."""
    files = default_files() if files is None else files
    manifest = make_manifest(files, preamble) if manifest is None else manifest
    out = io.BytesIO()
    write_archive(out, preamble, bundle_files(files, manifest), date_time=DATE_TIME)
    return out.getvalue()


def bundle_with_manifest_bytes(data: bytes, files: Files | None = None,
                               preamble: bytes = PREAMBLE) -> bytes:
    """A bundle of `files` whose manifest entry holds exactly `data` (any JSON, or none)."""
    files = default_files() if files is None else files
    out = io.BytesIO()
    write_archive(out, preamble,
                  [(name, content, mode) for name, (content, mode) in sorted(files.items())]
                  + [(MANIFEST_NAME, data, 0o644)], date_time=DATE_TIME)
    return out.getvalue()


def make_bundle(tmp_path: Path, name: str = "app.pyz", files: Files | None = None) -> Path:
    """Write the small valid bundle to tmp_path/name and return its path."""
    return write(tmp_path, bundle_bytes(files), name)


def write(tmp_path: Path, data: bytes, name: str = "app.pyz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------
# Low level: every field under the test's control


@dataclass
class RawEntry:
    """One entry as written: `payload` is the stored (possibly compressed) data.

    `local` and `central` override header fields of one side only; their keys are
    name (bytes), flags, method, crc, compressed_size, size, extra (bytes), plus for
    `central`: comment (bytes), disk, header_offset (absolute) and offset_delta.
    """

    name: bytes
    payload: bytes
    crc: int
    size: int
    method: int = DEFLATED
    flags: int = 0
    mode: int = stat.S_IFREG | 0o644
    local: dict[str, Any] = field(default_factory=dict)
    central: dict[str, Any] = field(default_factory=dict)
    before: bytes = b""  # written just before the local header (data between entries)
    after: bytes = b""  # written just after the payload (e.g. a data descriptor)

    @classmethod
    def of(cls, name: str | bytes, content: bytes, mode: int = 0o644, *,
           method: int | None = None) -> RawEntry:
        """An entry exactly as write_archive would write it (mode without type = file)."""
        raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
        if method is None:
            method = DEFLATED if content else STORED
        payload = content
        if method == DEFLATED:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            payload = compressor.compress(content) + compressor.flush()
        return cls(name=raw_name, payload=payload, crc=zlib.crc32(content), size=len(content),
                   method=method, flags=0 if raw_name.isascii() else FLAG_UTF8,
                   mode=mode if stat.S_IFMT(mode) else stat.S_IFREG | mode)

    def with_content(self, content: bytes) -> RawEntry:
        """Same name and mode, new content with a valid CRC."""
        fresh = RawEntry.of(self.name, content, self.mode)
        return replace(self, payload=fresh.payload, crc=fresh.crc, size=fresh.size,
                       method=fresh.method)


def raw_entries(files: Files | None = None, preamble: bytes = PREAMBLE,
                manifest: Manifest | None = None) -> list[RawEntry]:
    """The valid bundle as RawEntry objects, in bundle order (manifest last)."""
    files = default_files() if files is None else files
    manifest = make_manifest(files, preamble) if manifest is None else manifest
    return [RawEntry.of(name, content, mode)
            for name, content, mode in bundle_files(files, manifest)]


def find(entries: list[RawEntry], name: str) -> RawEntry:
    raw_name = name.encode()
    return next(e for e in entries if e.name == raw_name)


def remove(entries: list[RawEntry], name: str) -> None:
    entries.remove(find(entries, name))


def build_raw(entries: list[RawEntry], preamble: bytes = PREAMBLE, *,
              before_directory: bytes = b"", before_end: bytes = b"", comment: bytes = b"",
              trailing: bytes = b"", end: Mapping[str, int] | None = None,
              date_time: tuple[int, int, int, int, int, int] = DATE_TIME) -> bytes:
    """Assemble a zip from RawEntry objects; every offset is computed, then overridable.

    before_directory: bytes between the last entry and the central directory;
    before_end: between the central directory and the end record; comment: the archive
    comment (declared); trailing: undeclared bytes after everything. `end` overrides end
    record fields: disk, cd_disk, disk_count, count, cd_size, cd_offset, comment_len.
    """
    year, month, day, hour, minute, second = date_time
    dos_time = (hour << 11) | (minute << 5) | (second // 2)
    dos_date = ((year - 1980) << 9) | (month << 5) | day
    out = bytearray(preamble)
    central = bytearray()
    for entry in entries:
        out += entry.before
        offset = len(out)
        local = {"name": entry.name, "flags": entry.flags, "method": entry.method,
                 "crc": entry.crc, "compressed_size": len(entry.payload), "size": entry.size,
                 "extra": b""} | entry.local
        out += LOCAL_HEADER.pack(LOCAL_SIG, ZIP_VERSION, local["flags"], local["method"],
                                 dos_time, dos_date, local["crc"], local["compressed_size"],
                                 local["size"], len(local["name"]), len(local["extra"]))
        out += local["name"] + local["extra"] + entry.payload + entry.after
        cen = {"name": entry.name, "flags": entry.flags, "method": entry.method,
               "crc": entry.crc, "compressed_size": len(entry.payload), "size": entry.size,
               "extra": b"", "comment": b"", "disk": 0, "header_offset": offset,
               "offset_delta": 0, "create_system": CREATE_SYSTEM_UNIX} | entry.central
        central += CENTRAL_HEADER.pack(
            CENTRAL_SIG, ZIP_VERSION, cen["create_system"], ZIP_VERSION, 0, cen["flags"],
            cen["method"], dos_time, dos_date, cen["crc"], cen["compressed_size"], cen["size"],
            len(cen["name"]), len(cen["extra"]), len(cen["comment"]), cen["disk"], 0,
            entry.mode << 16, cen["header_offset"] + cen["offset_delta"])
        central += cen["name"] + cen["extra"] + cen["comment"]
    out += before_directory
    record = {"disk": 0, "cd_disk": 0, "disk_count": len(entries), "count": len(entries),
              "cd_size": len(central), "cd_offset": len(out),
              "comment_len": len(comment)} | dict(end or {})
    out += central + before_end
    out += END_RECORD.pack(EOCD_SIG, record["disk"], record["cd_disk"], record["disk_count"],
                           record["count"], record["cd_size"], record["cd_offset"],
                           record["comment_len"])
    return bytes(out + comment + trailing)


def zip64_extra(size: int, compressed_size: int) -> bytes:
    """A zip64 extended information extra field carrying the real sizes."""
    return struct.pack("<HHQQ", 0x0001, 16, size, compressed_size)
