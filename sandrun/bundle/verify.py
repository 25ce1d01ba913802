"""Verify a bundle: its zip structure, every entry against the manifest, and the signature.

Every problem is reported, never only the first: structural findings of the strict
parser, unreadable or corrupt entries, every invalid manifest field (`manifest.
manifest_field_problems`), precompiled bytecode (a bundle ships sources only: the
store compiles them itself), each difference from the manifest, and a signature entry
that is malformed, signs another manifest or does not verify. An unsigned bundle
verifies: whether a signature is required is the trust policy's call.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from sandrun.bundle.archive import (
    ARCHIVE,
    MAX_TOTAL_SIZE,
    PREAMBLE,
    BackgroundHashes,
    StrictArchive,
    ZipEntry,
    display_name,
    open_archive,
)
from sandrun.bundle.manifest import (
    BYTECODE_HINT,
    MANIFEST_NAME,
    NORMALISED_MODES,
    UNLISTED_ENTRIES,
    Manifest,
    is_bytecode_name,
)
from sandrun.bundle.signature import UNSIGNED, SignatureInfo, SignatureStatus, signature_status
from sandrun.errors import ArchiveError, BundleError, Problem, VerificationError

REBUILD_HINT = "rebuild the bundle with `sandrun bundle` and do not modify it afterwards"
BYTECODE_WHAT = ("precompiled bytecode (__pycache__, .pyc or .pyo): a bundle carries none, "
                 "the store compiles bytecode from the verified sources itself")
ADDED_HINT = ("an entry added after the build (such as a .pth file, which Python runs at "
              "start-up) would run with the app; rebuild the bundle from trusted inputs")


@dataclass(frozen=True)
class VerifyResult:
    manifest: Manifest | None  # None when missing or malformed (that is then a problem)
    problems: tuple[Problem, ...]  # archive-wide first, then by entry name; deterministic
    archive: StrictArchive
    # Unsigned, valid (with the signer) or invalid (its problems are also in `problems`).
    signature_status: SignatureStatus = UNSIGNED

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def signature(self) -> SignatureInfo | None:
        """The signature when it is valid for this bundle's manifest, else None."""
        return self.signature_status.info

    def raise_for_problems(self, what: str = "bundle") -> None:
        """Raise VerificationError listing every problem, unless there are none."""
        if self.problems:
            count = len(self.problems)
            raise VerificationError(
                f"{what} failed verification ({count} problem{'s' if count != 1 else ''})",
                self.problems, "never run a bundle that fails verification; " + REBUILD_HINT)


def verify_bundle(source: str | os.PathLike[str] | int) -> VerifyResult:
    """open_archive + verify_archive; ArchiveError (not a readable zip) propagates."""
    return verify_archive(open_archive(source))


def verify_archive(archive: StrictArchive) -> VerifyResult:
    """Structural problems plus every difference between the entries and the manifest."""
    problems = list(archive.problems)
    manifest = _load_manifest(archive, problems)
    return _compare(archive, manifest, _hash_entries(archive, problems), problems)


class PendingVerification:
    """verify_archive() in two halves, for a launch: the manifest (loaded and checked) and
    the signature now, the entries' hashes by a forked child on another CPU while the
    caller decides the rest; result() waits and compares. Only a bundle whose structure
    and manifest passed is hashed in the background (anything else fails anyway)."""

    def __init__(self, archive: StrictArchive, hashing: BackgroundHashes | None = None
                 ) -> None:
        """`hashing`: the child archive.hash_in_background() started for this archive
        earlier (prefetch), adopted instead of starting one."""
        self.archive = archive
        self._problems = list(archive.problems)
        self.manifest = _load_manifest(archive, self._problems)
        self.signature_status = signature_status(archive, self.manifest)
        self._hashing = hashing
        if self.manifest is None or self._problems or self.signature_status.problems:
            self.cancel()  # fails anyway: result() reports it at once
        elif hashing is None:
            self._hashing = archive.hash_in_background()

    @property
    def in_background(self) -> bool:
        """The entries are being hashed by the child (else result() hashes them itself)."""
        return self._hashing is not None

    def result(self) -> VerifyResult:
        """The VerifyResult verify_archive() returns for the same archive."""
        problems = self._problems
        if self._hashing is None:
            return _compare(self.archive, self.manifest, _hash_entries(self.archive, problems),
                            problems, self.signature_status)
        hashes = self._hashing.collect()
        self._hashing = None
        for index, entry in enumerate(self.archive.entries):
            if index not in hashes and self.archive.read_problem(entry) is None:
                try:  # the child did not hash it: this says why (or hashes it after all)
                    hashes[index] = self.archive.sha256(entry)
                except ArchiveError as exc:
                    problems.append(_entry_problem(entry, exc))
        return _compare(self.archive, self.manifest, hashes, problems, self.signature_status)

    def cancel(self) -> None:
        """Stop the child (the launch failed for another reason first)."""
        if self._hashing is not None:
            self._hashing.cancel()
            self._hashing = None


def _compare(archive: StrictArchive, manifest: Manifest | None,
             hashes: dict[int, tuple[str, int]], problems: list[Problem],
             status: SignatureStatus | None = None) -> VerifyResult:
    """The entries (hashed) against the manifest; the VerifyResult."""
    names = [entry.name for entry in archive.entries]
    if manifest is not None:
        names += manifest.entries
    for name in dict.fromkeys(names):
        if is_bytecode_name(name):
            problems.append(Problem(display_name(name), BYTECODE_WHAT, BYTECODE_HINT))
    if manifest is not None:
        present = {entry.name for entry in archive.entries}
        for name, listed in manifest.entries.items():
            where = display_name(name)
            if name in UNLISTED_ENTRIES:
                problems.append(Problem(where, "listed in the manifest, which must not list "
                                               "itself or the signature", REBUILD_HINT))
            if listed.mode not in NORMALISED_MODES:
                problems.append(Problem(where, f"manifest lists mode {listed.mode:04o}, not a "
                                               "normalised mode (0644 or 0755)", REBUILD_HINT))
            if name not in present and name not in UNLISTED_ENTRIES:
                problems.append(Problem(where, "missing entry: listed in the manifest but not "
                                               "in the archive", REBUILD_HINT))
        for index, entry in enumerate(archive.entries):
            if entry.name in UNLISTED_ENTRIES:
                continue
            where = display_name(entry.name)
            record = manifest.entries.get(entry.name)
            if record is None:
                problems.append(Problem(where, "not in manifest: entry was added to the bundle",
                                        ADDED_HINT))
                continue
            mode = entry.mode & 0o7777
            if mode != record.mode:
                problems.append(Problem(where, f"mode {mode:04o} differs from manifest "
                                               f"({record.mode:04o})", REBUILD_HINT))
            digest = hashes.get(index)
            if digest is None:
                continue  # unreadable: already reported
            sha256, size = digest
            if size != record.size:
                problems.append(Problem(where, f"size differs from manifest ({size} bytes, "
                                               f"manifest says {record.size})", REBUILD_HINT))
            elif sha256 != record.sha256:
                problems.append(Problem(where, f"content differs from manifest (sha256 "
                                               f"{sha256}, manifest says {record.sha256})",
                                        REBUILD_HINT))
        preamble_sha256 = hashlib.sha256(archive.preamble).hexdigest()
        if preamble_sha256 != manifest.preamble_sha256:
            problems.append(Problem(PREAMBLE, f"preamble (shebang) changed: now "
                                              f"{archive.preamble[:80]!r}, sha256 "
                                              f"{preamble_sha256} differs from the manifest's "
                                              f"{manifest.preamble_sha256}", REBUILD_HINT))
    if status is None:
        status = signature_status(archive, manifest)
    problems.extend(status.problems)
    return VerifyResult(manifest, _ordered(problems), archive, status)


def _load_manifest(archive: StrictArchive, problems: list[Problem]) -> Manifest | None:
    entry = next((e for e in archive.entries if e.name == MANIFEST_NAME), None)
    if entry is None:
        problems.append(Problem(MANIFEST_NAME, "missing: the bundle has no manifest, so its "
                                               "contents cannot be checked", REBUILD_HINT))
        return None
    if archive.read_problem(entry) is not None:
        problems.append(Problem(MANIFEST_NAME, "cannot be read, so the contents cannot be "
                                               "checked", REBUILD_HINT))
        return None
    try:
        return Manifest.from_bytes(archive.read(entry))
    except ArchiveError as exc:
        problems.append(_entry_problem(entry, exc))
    except BundleError as exc:
        problems.append(Problem(MANIFEST_NAME, exc.message, exc.hint))
    except VerificationError as exc:  # every invalid field, one problem each
        problems.extend(exc.problems)
    return None


def _hash_entries(archive: StrictArchive,
                  problems: list[Problem]) -> dict[int, tuple[str, int]]:
    """sha256 and size of every readable entry, by index; read failures become problems."""
    if archive.total_size > MAX_TOTAL_SIZE:
        problems.append(Problem(ARCHIVE, "contents were not hashed: the declared total size "
                                         "exceeds the limit", REBUILD_HINT))
        return {}
    hashes = {}
    for index, entry in enumerate(archive.entries):
        if archive.read_problem(entry) is not None:
            continue  # the parser reported why it cannot be read
        try:
            hashes[index] = archive.sha256(entry)
        except ArchiveError as exc:
            problems.append(_entry_problem(entry, exc))
    return hashes


def _entry_problem(entry: ZipEntry, exc: ArchiveError) -> Problem:
    where = display_name(entry.name)
    return Problem(where, exc.message.removeprefix(f"{where}: "), exc.hint)


def _ordered(problems: list[Problem]) -> tuple[Problem, ...]:
    """Archive-wide problems first, then grouped by entry name; each problem once."""
    unique = list(dict.fromkeys(problems))
    return tuple(sorted(unique, key=lambda p: (not p.where.startswith("<"), p.where)))
