"""The strict parser, the deterministic writer and open_archive."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from bundlecraft import (
    CORE,
    DATE_TIME,
    MAIN,
    PREAMBLE,
    TOOL,
    RawEntry,
    build_raw,
    bundle_bytes,
    default_files,
    find,
    make_bundle,
    raw_entries,
    write,
)

from sandrun.bundle import archive as archive_module
from sandrun.bundle.archive import (
    ARCHIVE,
    DEFLATED,
    MAX_RATIO,
    STORED,
    StrictArchive,
    ZipEntry,
    check_mode,
    check_name,
    date_time_from_epoch,
    display_name,
    open_archive,
    parse_archive,
    write_archive,
)
from sandrun.bundle.archive import PREAMBLE as PREAMBLE_WHERE
from sandrun.errors import ArchiveError


def written(files: list[tuple[str, bytes, int]], preamble: bytes = PREAMBLE) -> bytes:
    out = io.BytesIO()
    write_archive(out, preamble, files, date_time=DATE_TIME)
    return out.getvalue()


def problems_at(archive: StrictArchive, where: str) -> list[str]:
    return [p.what for p in archive.problems if p.where == where]


def assert_problem(archive: StrictArchive, where: str, *words: str) -> None:
    for what in problems_at(archive, where):
        if all(w.lower() in what.lower() for w in words):
            return
    listing = "\n".join(f"  {p}" for p in archive.problems)
    raise AssertionError(f"no problem at {where!r} saying {words}; got:\n{listing}")


# --- the writer ------------------------------------------------------------------------


def test_writer_is_byte_reproducible(tmp_path: Path) -> None:
    first = make_bundle(tmp_path, "one.pyz").read_bytes()
    second = make_bundle(tmp_path, "two.pyz").read_bytes()
    assert first == second
    # The crafting helpers describe exactly what the writer produces.
    assert build_raw(raw_entries()) == first


def test_writer_output_is_read_by_zipfile(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = {info.filename: info for info in archive.infolist()}
        for name, (content, mode) in default_files().items():
            assert archive.read(name) == content
            assert infos[name].external_attr >> 16 == stat.S_IFREG | mode
            assert infos[name].date_time == DATE_TIME
            assert infos[name].create_system == 3
            assert infos[name].extra == b""
        assert archive.comment == b""
    assert path.read_bytes().startswith(PREAMBLE + b"PK\x03\x04")


def test_writer_output_runs_with_python(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    run = subprocess.run([sys.executable, "-I", str(path)], capture_output=True, timeout=30,
                         check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, b"hello from the bundle\n", b"")


def test_writer_output_parses_clean_with_absolute_offsets() -> None:
    archive = parse_archive(bundle_bytes())
    assert archive.problems == ()
    assert archive.preamble == PREAMBLE
    assert archive.entries[0].header_offset == len(PREAMBLE)
    files = default_files()
    names = [e.name for e in archive.entries]
    assert names == [*sorted(files), ".sandrun/manifest.json"]
    for entry in archive.entries[:-1]:
        content, mode = files[entry.name]
        assert archive.read(entry) == content
        assert archive.sha256(entry) == (hashlib.sha256(content).hexdigest(), len(content))
        assert entry.mode == stat.S_IFREG | mode


def test_writer_non_ascii_names_and_empty_and_incompressible_files() -> None:
    zeros = bytes(3 << 20)  # deflates beyond MAX_RATIO: must be stored, not flagged
    noise = os.urandom(4096)
    data = written([("caf\u00e9.txt", b"hello", 0o644), ("empty", b"", 0o644),
                    ("noise", noise, 0o644), ("zeros", zeros, 0o644)])
    archive = parse_archive(data)
    assert archive.problems == ()
    cafe, empty, _, big = archive.entries
    assert cafe.flags & 0x800 and cafe.name == "caf\u00e9.txt"
    assert (empty.method, empty.compressed_size) == (STORED, 0)
    assert big.method == STORED and archive.read(big) == zeros
    assert MAX_RATIO * len(zlib_deflate(zeros)) < len(zeros)  # deflated, it would be flagged
    with zipfile.ZipFile(io.BytesIO(data)) as archive_zf:
        assert archive_zf.read("caf\u00e9.txt") == b"hello"
        assert archive_zf.read("noise") == noise


def zlib_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(("files", "preamble", "message"), [
    ([("a/../b", b"", 0o644)], PREAMBLE, "'..' component"),
    ([("/abs", b"", 0o644)], PREAMBLE, "absolute path"),
    ([("a", b"", 0o644), ("a", b"", 0o644)], PREAMBLE, "duplicate name"),
    ([("A.py", b"", 0o644), ("a.py", b"", 0o644)], PREAMBLE, "case folding"),
    ([("a", b"", 0o644), ("a/b", b"", 0o644)], PREAMBLE, "uses it as a directory"),
    ([("x", b"", 0o4755)], PREAMBLE, "setuid"),
    ([("x", b"", 0o666)], PREAMBLE, "writable by group or others"),
    ([("x", b"", stat.S_IFLNK | 0o777)], PREAMBLE, "permission bits only"),
    ([("x", b"", 0o644)], b"#!/bin/sh\necho hidden\n", "data before the first entry"),
    ([("x", b"", 0o644)], b"PK\x03\x04", "data before the first entry"),
])
def test_writer_refuses_what_verify_would_reject(files: list[tuple[str, bytes, int]],
                                                  preamble: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match="cannot write the archive") as info:
        written(files, preamble)
    assert message in info.value.message


def test_writer_date_time() -> None:
    assert date_time_from_epoch(0) == (1980, 1, 1, 0, 0, 0)  # clamped, as zip requires
    assert date_time_from_epoch(1577836800) == DATE_TIME
    with pytest.raises(ArchiveError, match="out of range"):
        write_archive(io.BytesIO(), PREAMBLE, [], date_time=(1970, 1, 1, 0, 0, 0))
    with pytest.raises(ArchiveError, match="invalid zip date_time"):
        write_archive(io.BytesIO(), PREAMBLE, [], date_time=(2020, 2, 30, 0, 0, 0))


def test_empty_archive_and_no_preamble_parse_clean() -> None:
    archive = parse_archive(written([], preamble=b""))
    assert (archive.entries, archive.problems, archive.preamble) == ((), (), b"")


def test_zipfile_written_archive_parses_clean() -> None:
    """Interoperability: a plain zipfile archive with unix modes is accepted as is."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (content, mode) in sorted(default_files().items()):
            info = zipfile.ZipInfo(name, DATE_TIME)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    parsed = parse_archive(out.getvalue())
    assert parsed.problems == ()
    assert [parsed.read(e) for e in parsed.entries] == [c for _, (c, _) in
                                                        sorted(default_files().items())]


# --- open_archive ----------------------------------------------------------------------


def test_open_archive_from_path_and_fd(tmp_path: Path) -> None:
    path = make_bundle(tmp_path)
    by_path = open_archive(path)
    assert by_path.problems == () and by_path.size == path.stat().st_size
    assert by_path.file_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        by_fd = open_archive(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7  # offset untouched (pread), fd not closed
    finally:
        os.close(fd)
    assert by_fd.entries == by_path.entries


def test_open_archive_refuses_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.pyz"
    link.symlink_to(make_bundle(tmp_path))
    with pytest.raises(ArchiveError, match="is a symlink"):
        open_archive(link)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_open_archive_refuses_non_regular_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "odd"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # must not block waiting for a writer
    with pytest.raises(ArchiveError, match="is not a regular file"):
        open_archive(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"PK\x05\x06", "too small to be a zip"),
    (b"print('not a zip')\n" * 10, "no end of central directory record"),
])
def test_open_archive_refuses_non_zips(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        open_archive(write(tmp_path, content))


def test_open_archive_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such file") as info:
        open_archive(tmp_path / "nope.pyz")
    assert info.value.hint


# --- archives that are not readable at all ---------------------------------------------


def test_zip64_end_record_is_an_archive_error() -> None:
    data = build_raw(raw_entries(), end={"count": 0xFFFF, "disk_count": 0xFFFF})
    with pytest.raises(ArchiveError, match="zip64 is not supported"):
        parse_archive(data)


def test_relative_offsets_are_an_archive_error() -> None:
    """Offsets counted from the end of the preamble (some zip tools) do not resolve."""
    entries = raw_entries()
    for entry in entries:
        entry.central["offset_delta"] = -len(PREAMBLE)
    data = build_raw(entries)
    cd_offset = struct.unpack_from("<I", data, len(data) - 6)[0]
    data = build_raw(entries, end={"cd_offset": cd_offset - len(PREAMBLE)})
    with pytest.raises(ArchiveError, match="points outside the file or at no central"):
        parse_archive(data)


def test_truncated_central_directory_is_an_archive_error() -> None:
    data = build_raw(raw_entries())
    cd_size, cd_offset = struct.unpack_from("<II", data, len(data) - 10)
    data = build_raw(raw_entries(), end={"cd_size": cd_size - 10})
    with pytest.raises(ArchiveError, match="central directory is truncated"):
        parse_archive(data)
    assert cd_offset > 0


# --- structural rules beyond test_verify.py --------------------------------------------

Mutation = Callable[[list[RawEntry]], None]


def _set(name: str, **fields: object) -> Mutation:
    def mutate(entries: list[RawEntry]) -> None:
        entry = find(entries, name)
        for key, value in fields.items():
            setattr(entry, key, value)
    return mutate


def _local(name: str, **fields: object) -> Mutation:
    return lambda entries: find(entries, name).local.update(fields)


def _central(name: str, **fields: object) -> Mutation:
    return lambda entries: find(entries, name).central.update(fields)


def _add(name: str | bytes, content: bytes = b"x", mode: int = 0o644, **fields: object
         ) -> Mutation:
    def mutate(entries: list[RawEntry]) -> None:
        entries.insert(-1, dataclasses.replace(RawEntry.of(name, content, mode), **fields))
    return mutate


def _oversize(name: str, extra: int) -> Mutation:
    def mutate(entries: list[RawEntry]) -> None:
        entry = find(entries, name)
        entry.local["compressed_size"] = entry.central["compressed_size"] = (
            len(entry.payload) + extra)
    return mutate


def _data_descriptor(entries: list[RawEntry]) -> None:
    entry = find(entries, CORE)
    entry.flags |= 0x8
    entry.local.update(crc=0, compressed_size=0, size=0)
    entry.after = struct.pack("<4sIII", b"PK\x07\x08", entry.crc, len(entry.payload),
                              entry.size)


def _shared_local_header(entries: list[RawEntry]) -> None:
    """Two central records pointing at one local header (the other one is skipped)."""
    tool = find(entries, TOOL)
    core = find(entries, CORE)
    core.central["offset_delta"] = -(30 + len(tool.name) + len(tool.payload))


def _nothing(entries: list[RawEntry]) -> None:
    pass


STRUCTURE_CASES = {
    "overlapping entries": (_oversize(TOOL, 40), {}, CORE, ["overlaps entry", TOOL]),
    "shared local header": (_shared_local_header, {}, CORE, ["overlaps entry"]),
    "entry data overlaps the central directory":
        (_oversize(".sandrun/manifest.json", 40), {}, ".sandrun/manifest.json",
         ["overlaps the central directory"]),
    "entry data truncated": (_oversize(".sandrun/manifest.json", 10 << 20), {},
                             ".sandrun/manifest.json", ["runs past the end of the file"]),
    "local header outside the entry area":
        (_central(CORE, header_offset=10 << 20), {}, CORE, ["points outside the entry area"]),
    "no local header": (_central(CORE, offset_delta=1), {}, CORE, ["no local header"]),
    "local crc differs": (_local(CORE, crc=1), {}, CORE, ["local header CRC-32"]),
    "local size differs": (_local(CORE, size=1), {}, CORE, ["local header size 1 differs"]),
    "local method differs": (_local(CORE, method=STORED), {}, CORE,
                             ["local header compression method 0 differs"]),
    "local flags differ": (_local(CORE, flags=0x800), {}, CORE, ["local header flags 0x0800"]),
    "data descriptor": (_data_descriptor, {}, CORE, ["data descriptor"]),
    "unknown flags": (_set(CORE, flags=0x2000), {}, CORE, ["unsupported flag bits 0x2000"]),
    "stored size mismatch": (_set(MAIN, method=STORED), {}, MAIN,
                             ["stored entry has compressed size"]),
    "entry comment": (_central(CORE, comment=b"psst"), {}, CORE, ["entry comment of 4 bytes"]),
    "zip64 extra field": (_local(CORE, extra=struct.pack("<HHQQ", 1, 16, 0, 0)), {}, CORE,
                          ["zip64 is not supported"]),
    "malformed extra field": (_central(CORE, extra=b"\x01"), {}, CORE,
                              ["extra field is malformed"]),
    "multi-disk entry": (_central(CORE, disk=1), {}, CORE, ["multi-disk"]),
    "multi-disk end record": (_nothing, {"end": {"disk_count": 3}}, ARCHIVE, ["multi-disk"]),
    "entry count mismatch": (_nothing, {"end": {"count": 3, "disk_count": 3}}, ARCHIVE,
                             ["declares 3 entries but the central directory holds 7"]),
    "archive comment": (_nothing, {"comment": b"hello"}, ARCHIVE, ["archive comment of 5"]),
    "comment truncated": (_nothing, {"end": {"comment_len": 9}}, ARCHIVE,
                          ["declares a 9-byte comment", "truncated"]),
    "data after the central directory":
        (_nothing, {"before_end": b"xyz"}, ARCHIVE,
         ["3 bytes between the central directory and the end record"]),
    "data before the central directory":
        (_nothing, {"before_directory": b"xyz"}, ARCHIVE,
         ["3 bytes of data between the last entry", "central directory"]),
    "zip64 locator": (_nothing, {"before_end": b"PK\x06\x07" + bytes(16)}, ARCHIVE,
                      ["zip64 is not supported"]),
    "multi-line preamble": (_nothing, {"preamble": b"#!/bin/sh\nexec evil\n"}, PREAMBLE_WHERE,
                            ["data before the first entry"]),
    "binary preamble": (_nothing, {"preamble": b"\x7fELF\x02\x01\x01\n"}, PREAMBLE_WHERE,
                        ["data before the first entry"]),
    "long preamble": (_nothing, {"preamble": b"#!" + b"x" * 300 + b"\n"}, PREAMBLE_WHERE,
                      ["data before the first entry"]),
    "file used as a directory": (_add(CORE + "/x.py"), {}, CORE, ["is a file but",
                                                                  CORE + "/x.py"]),
    "case-folded file used as a directory":
        (_add("site-packages/DEMO/core.py/x.py"), {}, CORE, ["uses it as a directory"]),
    "dot component": (_add("site-packages/./x.py"), {}, "site-packages/./x.py",
                      ["'.' component"]),
    "empty component": (_add("site-packages//x.py"), {}, "site-packages//x.py",
                        ["empty path component"]),
    "empty name": (_add(""), {}, "<empty name>", ["empty name"]),
    "control character": (_add("a\x1b[2Jb.py"), {}, "a\\x1b[2Jb.py",
                           ["control character U+001B"]),
    "bidi override": (_add("evil\u202eyp.txt"), {}, "evil\\u202eyp.txt",
                      ["invisible formatting character U+202E"]),
    "long component": (_add("x" * 256), {}, "x" * 256, ["longer than 255 bytes"]),
    "non-ASCII without UTF-8 flag": (_add(b"caf\xe9.py", flags=0), {}, "caf\u0398.py",
                                     ["without the UTF-8 flag"]),
    "invalid UTF-8 with the flag": (_add(b"bad\xff.py"), {}, "bad\\udcff.py",
                                    ["not valid UTF-8"]),
    "group-writable": (_set(CORE, mode=stat.S_IFREG | 0o664), {}, CORE,
                       ["writable by group or others (mode 0664)"]),
    "setgid and sticky": (_set(CORE, mode=stat.S_IFREG | 0o3644), {}, CORE,
                          ["setgid/sticky bit set"]),
    "fifo": (_set(CORE, mode=stat.S_IFIFO | 0o644), {}, CORE, ["fifo"]),
    "socket": (_set(CORE, mode=stat.S_IFSOCK | 0o644), {}, CORE, ["socket entry"]),
    "block device": (_set(CORE, mode=stat.S_IFBLK | 0o644), {}, CORE, ["block device"]),
    "no file type": (_set(CORE, mode=0o644), {}, CORE, ["has no file type"]),
    "directory mode on a file name": (_set(CORE, mode=stat.S_IFDIR | 0o755), {}, CORE,
                                      ["directory"]),
    "absurd total size": (
        lambda entries: [setattr(find(entries, n), "size", 1 << 30) for n in
                         [MAIN, CORE, TOOL, ".sandrun/profile.toml", ".sandrun/manifest.json"]],
        {}, ARCHIVE, ["total uncompressed size", "exceeds the limit"]),
}


@pytest.mark.parametrize("case", STRUCTURE_CASES)
def test_structural_problem(case: str) -> None:
    mutate, build, where, words = STRUCTURE_CASES[case]
    entries = raw_entries()
    mutate(entries)
    archive = parse_archive(build_raw(entries, **build))  # type: ignore[arg-type]
    assert_problem(archive, where, *words)


def test_parsing_continues_past_problems() -> None:
    entries = raw_entries()
    find(entries, CORE).before = b"junk"
    find(entries, TOOL).mode = stat.S_IFLNK | 0o777
    archive = parse_archive(build_raw(entries, trailing=b"more junk"))
    assert len(archive.entries) == 7
    assert {p.where for p in archive.problems} == {CORE, TOOL, ARCHIVE}
    assert archive.read(find_entry(archive, MAIN)) == default_files()[MAIN][0]


def find_entry(archive: StrictArchive, name: str) -> ZipEntry:
    return next(e for e in archive.entries if e.name == name)


# --- read and sha256 -------------------------------------------------------------------


def test_read_rejects_a_crc_mismatch() -> None:
    entries = raw_entries()
    find(entries, CORE).crc ^= 1
    archive = parse_archive(build_raw(entries))
    entry = find_entry(archive, CORE)
    assert archive.read_problem(entry) is None  # only decompressing finds it
    for read in (archive.read, archive.sha256):
        with pytest.raises(ArchiveError, match=f"{CORE}: CRC-32 mismatch"):
            read(entry)


@pytest.mark.parametrize(("declared", "message"), [
    (10, "decompresses to more than its declared size of 10"),
    (5000, "data is 1160 bytes but the archive declares 5000"),
])
def test_read_rejects_a_size_mismatch(declared: int, message: str) -> None:
    entries = raw_entries()
    find(entries, CORE).size = declared
    archive = parse_archive(build_raw(entries))
    with pytest.raises(ArchiveError, match=message):
        archive.read(find_entry(archive, CORE))


@pytest.mark.parametrize(("payload", "message"), [
    (b"\xff\xff\xff", "corrupt deflate data"),
    (zlib_deflate(b"x" * 1160)[:-3], "deflate stream ends early"),
    (zlib_deflate(b"x" * 1160) + b"tail", "data continues after the end of the deflate"),
])
def test_read_rejects_bad_deflate_data(payload: bytes, message: str) -> None:
    entries = raw_entries()
    find(entries, CORE).payload = payload
    archive = parse_archive(build_raw(entries))
    with pytest.raises(ArchiveError, match=message):
        archive.read(find_entry(archive, CORE))


@pytest.mark.parametrize(("mutate", "message"), [
    (_set(CORE, flags=1), "encrypted entry"),
    (_set(CORE, method=14), "compression method 14 is not supported"),
    (_set(CORE, size=900 << 20), "compression ratio"),
    (_central(CORE, header_offset=0), "local header is missing or unreadable"),
])
def test_read_refuses_unreadable_entries_before_decompressing(mutate: Mutation,
                                                              message: str) -> None:
    entries = raw_entries()
    mutate(entries)
    archive = parse_archive(build_raw(entries))
    entry = find_entry(archive, CORE)
    problem = archive.read_problem(entry)
    assert problem is not None and message in problem.what
    with pytest.raises(ArchiveError, match=message):
        archive.read(entry)


def test_stored_entries_are_read() -> None:
    entries = raw_entries()
    index = entries.index(find(entries, CORE))
    entries[index] = RawEntry.of(CORE, default_files()[CORE][0], method=STORED)
    archive = parse_archive(build_raw(entries))
    assert archive.problems == ()
    entry = find_entry(archive, CORE)
    assert entry.method == STORED and archive.read(entry) == default_files()[CORE][0]
    assert find_entry(archive, MAIN).method == DEFLATED


def test_hashed_data_is_read_without_inflating_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification hashes every entry; the extraction that follows reads the same
    bytes back from memory, and once they are dropped reads (and checks) them again."""
    archive = parse_archive(bundle_bytes())
    digests = {e.name: archive.sha256(e) for e in archive.entries}
    inflated: list[str] = []
    real = archive_module._inflate

    def counting(raw: memoryview, entry: ZipEntry, where: str) -> object:
        inflated.append(entry.name)
        return real(raw, entry, where)

    monkeypatch.setattr(archive_module, "_inflate", counting)
    for entry in archive.entries:
        data = archive.read(entry)
        assert (hashlib.sha256(data).hexdigest(), len(data)) == digests[entry.name]
        assert archive.sha256(entry) == digests[entry.name]
    assert inflated == []
    archive.drop_contents()
    assert archive.read(find_entry(archive, CORE)) == default_files()[CORE][0]
    assert inflated == [CORE]


def test_kept_data_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    core_size = len(default_files()[CORE][0])
    monkeypatch.setattr(archive_module, "CONTENTS_LIMIT", core_size)
    archive = parse_archive(bundle_bytes())
    core = find_entry(archive, CORE)
    archive.sha256(core)  # exactly the limit: kept
    for entry in archive.entries:
        archive.sha256(entry)
    kept = archive._contents
    assert core in kept and sum(len(v) for v in kept.values()) <= core_size
    assert archive.read(find_entry(archive, MAIN)) == default_files()[MAIN][0]


def test_a_corrupt_entry_is_never_kept() -> None:
    entries = raw_entries()
    find(entries, CORE).crc ^= 1
    archive = parse_archive(build_raw(entries))
    entry = find_entry(archive, CORE)
    for _ in range(2):  # the second read fails as the first: nothing was kept
        with pytest.raises(ArchiveError, match="CRC-32 mismatch"):
            archive.sha256(entry)
        with pytest.raises(ArchiveError, match="CRC-32 mismatch"):
            archive.read(entry)


# --- names and modes -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["__main__.py", "site-packages/a/b.py", "caf\u00e9/x",
                                  "a b/c-d_e.f", ".sandrun/manifest.json", "..a/b..", "x" * 255])
def test_good_names(name: str) -> None:
    assert check_name(name) == []


@pytest.mark.parametrize("mode", [stat.S_IFREG | 0o644, stat.S_IFREG | 0o755,
                                  stat.S_IFREG | 0o400, stat.S_IFREG | 0o555])
def test_good_modes(mode: int) -> None:
    assert check_mode(mode) == []


def test_display_name_escapes_terminal_control() -> None:
    assert display_name("plain/caf\u00e9.py") == "plain/caf\u00e9.py"
    assert display_name("a\x1b]0;x\x07\n\u202e\x00") == "a\\x1b]0;x\\x07\\x0a\\u202e\\x00"
