"""Offline vulnerability audit of a bundle against a local OSV database.

The database is a directory of OSV JSON advisories (searched recursively) or an OSV
ecosystem zip such as PyPI's `all.zip` (read member by member, never extracted).
Only `affected[]` entries of the PyPI ecosystem count; names are compared PEP 503
normalised and versions with packaging.version.

Malformed advisories are errors, all listed at once with their file and key, not
skipped: a database that cannot be read completely cannot show that a bundle is free
of known vulnerabilities, and `sandrun exec --audit-db` must fail closed. For the same
reason a bound that is not a PEP 440 version makes the finding `uncertain` (reported,
never silently clean), and a finding of unknown severity counts as at or above any
threshold.

The index. Reading PyPI's whole database takes over a second (some 17,000 advisories);
`sandrun audit --index DB -o FILE` parses it once into a compact index: a header naming
the database (its source, sha256 and counts) and one line per package name with the
advisories that name it, sorted. Loading reads the file and splits its lines; only the
lines of the bundle's dependencies are parsed (a few milliseconds). `--osv` and
`exec --audit-db` take an index wherever they take a database (`exec` requires it to be
owned by root or the running user and not writable by others, like a trust policy).
The index holds what the audit reads, already validated: a database with a malformed
advisory is refused when the index is built, as it is when audited.

Standard library and packaging at import: `sandrun exec` may import this module. CVSS
scores are computed with the `cvss` package, imported only when a finding is rated.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sandrun.errors import AuditError, UsageError

if TYPE_CHECKING:
    from packaging.version import Version

    from sandrun.bundle.manifest import Manifest

SEVERITY_LEVELS = ("low", "moderate", "high", "critical")
UNKNOWN = "unknown"
ECOSYSTEM = "PyPI"
EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
RANGE_TYPES = ("ECOSYSTEM", "SEMVER", "GIT")
MAX_ADVISORY_SIZE = 16 << 20  # one advisory is a few KB; refuse absurd members
MAX_LISTED_PROBLEMS = 50
# Qualitative names advisories use, mapped to SEVERITY_LEVELS.
_SEVERITY_NAMES = {"low": "low", "moderate": "moderate", "medium": "moderate",
                   "high": "high", "important": "high", "critical": "critical"}
INDEX_MAGIC = b"sandrun-osv-index 1\n"
INDEX_HINT = "rebuild it with `sandrun audit --index DB -o FILE`"
DB_HINT = ("download the database again (e.g. https://osv-vulnerabilities.storage.googleapis"
           ".com/PyPI/all.zip) or remove the broken advisory")


# ---------------------------------------------------------------------------------------
# The database


@dataclass(frozen=True)
class OsvRange:
    type: str  # ECOSYSTEM or SEMVER (GIT ranges are dropped when loading)
    events: tuple[tuple[str, str], ...]  # (kind, version) in file order


@dataclass(frozen=True)
class OsvAffected:
    name: str  # PEP 503 normalised
    ranges: tuple[OsvRange, ...]
    versions: tuple[str, ...]
    severity: tuple[tuple[str, str], ...]  # (type, score) of affected[].severity
    database_severity: str | None  # affected[].database_specific.severity


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    summary: str
    modified: str
    severity: tuple[tuple[str, str], ...]  # (type, score), e.g. ("CVSS_V3", "CVSS:3.1/...")
    database_severity: str | None  # database_specific.severity, e.g. GitHub's "HIGH"
    affected: tuple[OsvAffected, ...]  # PyPI entries only
    source: str  # file (or zip:member) it was read from


@dataclass(frozen=True)
class OsvDatabase:
    source: str
    advisories: int  # advisories read, all ecosystems, withdrawn included
    withdrawn: int
    by_name: Mapping[str, tuple[Advisory, ...]]  # normalised name -> advisories for it
    # sha256 over every document (its name relative to the database and its sha256)
    digest: str = ""
    index: str | None = None  # the index file it was read from, if any

    def advisories_for(self, name: str) -> tuple[Advisory, ...]:
        from packaging.utils import canonicalize_name

        return self.by_name.get(canonicalize_name(name), ())


def load_osv_database(path: Path) -> OsvDatabase:
    """Read every advisory of a directory (recursive *.json) or an OSV zip.

    AuditError when the path is unusable, holds no advisory at all (a wrong path must
    not pass as "no vulnerabilities"), or any advisory is malformed (each one listed).
    """
    label = str(path)
    if path.is_file():
        with path.open("rb") as f:
            is_index = f.read(len(INDEX_MAGIC)) == INDEX_MAGIC
        if is_index:
            import io

            return parse_osv_index(io.BytesIO(path.read_bytes()), label)
    if path.is_dir():
        documents = _directory_documents(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        documents = _zip_documents(path)
    elif path.exists():
        raise AuditError(f"{label} is neither a directory of OSV advisories nor a zip of them",
                         "pass a directory of OSV JSON files or an ecosystem zip such as "
                         "PyPI's all.zip")
    else:
        raise AuditError(f"OSV database {label} does not exist",
                         "check the path; PyPI's advisories are at "
                         "https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip")

    problems: list[str] = []
    by_id: dict[str, Advisory] = {}
    count = withdrawn = 0
    digest = hashlib.sha256()
    for source, data in documents:
        count += 1
        relative = source.removeprefix(f"{label}:").removeprefix(f"{label}/")
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0"
                      + hashlib.sha256(data).hexdigest().encode() + b"\n")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{source}: not valid JSON ({exc})")
            continue
        advisory = _parse_advisory(obj, source, problems)
        if advisory is None:
            continue
        if advisory is _WITHDRAWN:
            withdrawn += 1
            continue
        previous = by_id.get(advisory.id)
        # The same advisory twice (e.g. two copies of a mirror): the newer one wins.
        if previous is None or advisory.modified > previous.modified:
            by_id[advisory.id] = advisory
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        listing = "\n".join(f"  - {p}" for p in shown) + (f"\n  - ... and {more} more"
                                                          if more else "")
        raise AuditError(f"OSV database {label} has {len(problems)} malformed "
                         f"advisor{'ies' if len(problems) != 1 else 'y'}:\n{listing}", DB_HINT)
    if count == 0:
        raise AuditError(f"OSV database {label} contains no advisories (no .json files)",
                         "point to the directory or zip that holds the OSV JSON files")
    index: dict[str, list[Advisory]] = {}
    for advisory in sorted(by_id.values(), key=lambda a: a.id):
        for name in dict.fromkeys(a.name for a in advisory.affected):
            index.setdefault(name, []).append(advisory)
    return OsvDatabase(label, count, withdrawn, {k: tuple(v) for k, v in index.items()},
                       digest=digest.hexdigest())


# ---------------------------------------------------------------------------------------
# The index


def write_osv_index(db: OsvDatabase, output: Path) -> dict[str, Any]:
    """Write the index of `db` to `output` (atomically, mode 0644); returns its header.

    Layout: INDEX_MAGIC, a JSON header line, a table of `name<TAB>offset<TAB>length`
    lines sorted by name (table_bytes long), then each name's advisories as compact JSON
    at its offset (from the end of the table). A lookup reads the table and one body.
    """
    from sandrun import __version__

    table: list[bytes] = []
    bodies: list[bytes] = []
    offset = 0
    for name in sorted(db.by_name):
        if any(c in name for c in "\t\n\r") or not name.isprintable():
            raise AuditError(f"OSV database {db.source} names a package {name!r} with control "
                             "characters", DB_HINT)
        entries = [_advisory_to_index(a, name) for a in db.by_name[name]]
        body = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        table.append(f"{name}\t{offset}\t{len(body)}\n".encode())
        bodies.append(body)
        offset += len(body)
    table_bytes = b"".join(table)
    header = {"source": db.source, "database_sha256": db.digest, "advisories": db.advisories,
              "withdrawn": db.withdrawn, "names": len(table),
              "table_bytes": len(table_bytes), "body_bytes": offset,
              "sandrun_version": __version__}
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp",
                               dir=output.parent if str(output.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(INDEX_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
            out.write(table_bytes)
            out.writelines(bodies)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return {**header, "index": str(output)}


def _advisory_to_index(advisory: Advisory, name: str) -> dict[str, Any]:
    return {"id": advisory.id, "aliases": list(advisory.aliases), "summary": advisory.summary,
            "modified": advisory.modified, "severity": [list(s) for s in advisory.severity],
            "database_severity": advisory.database_severity, "source": advisory.source,
            "affected": [{"ranges": [[r.type, [list(e) for e in r.events]] for r in a.ranges],
                          "versions": list(a.versions),
                          "severity": [list(s) for s in a.severity],
                          "database_severity": a.database_severity}
                         for a in advisory.affected if a.name == name]}


MAX_INDEX_HEADER = 1 << 16
MAX_INDEX_TABLE = 64 << 20


def parse_osv_index(source: BinaryIO, label: str) -> OsvDatabase:
    """The index in `source` (a seekable binary file at its start, kept open while the
    database is used) as a database that reads a name's advisories only when the name
    is looked up. AuditError when it is not an index or is corrupt."""
    if source.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
        raise AuditError(f"{label} is not an OSV index (no {INDEX_MAGIC.strip().decode()!r} "
                         "header)", INDEX_HINT)
    try:
        header = json.loads(source.readline(MAX_INDEX_HEADER))
        source_label = f"{header['source']} (index {label})"
        advisories, withdrawn = int(header["advisories"]), int(header["withdrawn"])
        digest = str(header["database_sha256"])
        names, table_bytes = int(header["names"]), int(header["table_bytes"])
        if not 0 <= table_bytes <= MAX_INDEX_TABLE:
            raise ValueError(f"a table of {table_bytes} bytes")
        table = source.read(table_bytes)
        if len(table) != table_bytes or (table and not table.endswith(b"\n")) \
                or table.count(b"\n") != names:
            raise ValueError(f"the table is not {names} lines of {table_bytes} bytes")
        body_start = source.tell()
        size = source.seek(0, os.SEEK_END)
        if size != body_start + int(header["body_bytes"]):
            raise ValueError(f"it is {size} bytes, the header says "
                             f"{body_start + int(header['body_bytes'])}: truncated or extended")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise AuditError(f"OSV index {label} is corrupt ({exc})", INDEX_HINT) from None
    return OsvDatabase(source_label, advisories, withdrawn,
                       _IndexedAdvisories(source, b"\n" + table, body_start, names, label),
                       digest=digest, index=label)


class _IndexedAdvisories(Mapping[str, tuple[Advisory, ...]]):
    """name -> advisories: the table is searched for the name, its body read and parsed
    on first access."""

    def __init__(self, source: BinaryIO, table: bytes, body_start: int, count: int,
                 label: str) -> None:
        self._source = source
        self._table = table  # starts with "\n", so every line is "\nNAME\t..."
        self._body_start = body_start
        self._count = count
        self._label = label
        self._parsed: dict[str, tuple[Advisory, ...]] = {}

    def __getitem__(self, name: str) -> tuple[Advisory, ...]:
        if name not in self._parsed:
            self._parsed[name] = self._read(name)
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        for line in self._table.split(b"\n"):
            if line:
                yield line.split(b"\t", 1)[0].decode("utf-8", "replace")

    def __len__(self) -> int:
        return self._count

    def _read(self, name: str) -> tuple[Advisory, ...]:
        key = b"\n" + name.encode("utf-8", "replace") + b"\t"
        at = self._table.find(key)
        if at < 0 or "\t" in name or "\n" in name:
            raise KeyError(name)
        line = self._table[at + len(key):self._table.index(b"\n", at + 1)]
        try:
            offset, length = (int(x) for x in line.split(b"\t"))
            self._source.seek(self._body_start + offset)
            body = self._source.read(length)
            if len(body) != length:
                raise ValueError("the file is truncated")
            return self._parse(name, body)
        except (ValueError, OSError) as exc:
            raise AuditError(f"OSV index {self._label} is corrupt at {name!r} ({exc})",
                             INDEX_HINT) from None

    def _parse(self, name: str, body: bytes) -> tuple[Advisory, ...]:
        try:
            result = []
            for a in json.loads(body):
                affected = tuple(
                    OsvAffected(name, tuple(OsvRange(str(t), tuple((str(k), str(v))
                                                                for k, v in events))
                                            for t, events in e["ranges"]),
                                tuple(str(v) for v in e["versions"]),
                                tuple((str(t), str(s)) for t, s in e["severity"]),
                                _optional_str(e["database_severity"]))
                    for e in a["affected"])
                result.append(Advisory(
                    id=str(a["id"]), aliases=tuple(str(x) for x in a["aliases"]),
                    summary=str(a["summary"]), modified=str(a["modified"]),
                    severity=tuple((str(t), str(s)) for t, s in a["severity"]),
                    database_severity=_optional_str(a["database_severity"]),
                    affected=affected, source=str(a["source"])))
            return tuple(result)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"OSV index {self._label} is corrupt at {name!r} ({exc})",
                             INDEX_HINT) from None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _directory_documents(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*.json")):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size > MAX_ADVISORY_SIZE:
            yield str(path), b"\xff"  # reported as malformed, never read
            continue
        try:
            yield str(path), path.read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read {path}: {exc.strerror}",
                             "check the database's permissions") from None


def _zip_documents(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir() or not info.filename.endswith(".json"):
                    continue
                source = f"{path}:{info.filename}"
                if info.file_size > MAX_ADVISORY_SIZE:
                    yield source, b"\xff"
                    continue
                with zf.open(info) as member:
                    # Read at most the limit: the declared size of a zip entry can lie.
                    data = member.read(MAX_ADVISORY_SIZE + 1)
                yield source, data if len(data) <= MAX_ADVISORY_SIZE else b"\xff"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise AuditError(f"cannot read the OSV zip {path}: {exc}", DB_HINT) from None


class _Withdrawn:
    pass


_WITHDRAWN: Any = _Withdrawn()


def _parse_advisory(obj: Any, source: str, problems: list[str]) -> Advisory | None:
    """An Advisory, _WITHDRAWN, or None after appending what is wrong to `problems`."""
    found: list[str] = []

    def bad(key: str, what: str) -> None:
        found.append(f"{source}: {key}: {what}" if key else f"{source}: {what}")

    if not isinstance(obj, dict):
        problems.append(f"{source}: not a JSON object (an OSV advisory is one object)")
        return None
    advisory_id = obj.get("id")
    if not isinstance(advisory_id, str) or not advisory_id:
        bad("id", "missing or not a string")
    withdrawn = obj.get("withdrawn")
    if withdrawn is not None and not isinstance(withdrawn, str):
        bad("withdrawn", "not a string (an RFC 3339 time)")
    elif withdrawn:
        problems.extend(found)
        return None if found else _WITHDRAWN
    aliases = _strings(obj, "aliases", "aliases", bad)
    summary = obj.get("summary")
    details = obj.get("details")
    for key, value in (("summary", summary), ("details", details),
                       ("modified", obj.get("modified"))):
        if value is not None and not isinstance(value, str):
            bad(key, "not a string")
    severity = _severities(obj.get("severity"), "severity", bad)
    database_severity = _database_severity(obj.get("database_specific"), "database_specific",
                                           bad)
    affected: list[OsvAffected] = []
    raw_affected = obj.get("affected", [])
    if not isinstance(raw_affected, list):
        bad("affected", "not a list")
        raw_affected = []
    for i, entry in enumerate(raw_affected):
        parsed = _parse_affected(entry, f"affected[{i}]", bad)
        if parsed is not None:
            affected.append(parsed)
    if found:
        problems.extend(found)
        return None
    text = summary if isinstance(summary, str) and summary.strip() else (
        details.strip().splitlines()[0][:200] if isinstance(details, str) and details.strip()
        else "")
    modified = obj.get("modified")
    return Advisory(id=str(advisory_id), aliases=aliases, summary=text.strip(),
                    modified=modified if isinstance(modified, str) else "", severity=severity,
                    database_severity=database_severity, affected=tuple(affected),
                    source=source)


def _strings(obj: dict[str, Any], key: str, where: str, bad: Any) -> tuple[str, ...]:
    value = obj.get(key, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        bad(where, "not a list of strings")
        return ()
    return tuple(value)


def _severities(value: Any, where: str, bad: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        bad(where, "not a list")
        return ()
    result = []
    for i, item in enumerate(value):
        if (not isinstance(item, dict) or not isinstance(item.get("type"), str)
                or not isinstance(item.get("score"), str)):
            bad(f"{where}[{i}]", "not an object with string 'type' and 'score'")
            continue
        result.append((item["type"], item["score"]))
    return tuple(result)


def _database_severity(value: Any, where: str, bad: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        bad(where, "not an object")
        return None
    severity = value.get("severity")
    if severity is not None and not isinstance(severity, str):
        bad(f"{where}.severity", "not a string")
        return None
    return severity


def _parse_affected(entry: Any, where: str, bad: Any) -> OsvAffected | None:
    from packaging.utils import canonicalize_name

    if not isinstance(entry, dict):
        bad(where, "not an object")
        return None
    package = entry.get("package")
    if package is None:
        return None  # e.g. a GIT-only entry: names no package of any ecosystem
    if not isinstance(package, dict):
        bad(f"{where}.package", "not an object")
        return None
    ecosystem = package.get("ecosystem")
    if not isinstance(ecosystem, str):
        bad(f"{where}.package.ecosystem", "missing or not a string")
        return None
    if ecosystem != ECOSYSTEM:
        return None  # another ecosystem's entry is not ours to check
    name = package.get("name")
    if not isinstance(name, str) or not name:
        bad(f"{where}.package.name", "missing or not a string")
        return None
    ranges: list[OsvRange] = []
    raw_ranges = entry.get("ranges", [])
    if not isinstance(raw_ranges, list):
        bad(f"{where}.ranges", "not a list")
        raw_ranges = []
    for j, raw in enumerate(raw_ranges):
        rwhere = f"{where}.ranges[{j}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            bad(rwhere, "not an object with a string 'type'")
            continue
        if raw["type"] not in RANGE_TYPES:
            bad(f"{rwhere}.type", f"unknown range type {raw['type']!r} (OSV has "
                                  f"{', '.join(RANGE_TYPES)})")
            continue
        events = raw.get("events")
        if not isinstance(events, list) or not events:
            bad(f"{rwhere}.events", "missing, empty or not a list")
            continue
        parsed_events: list[tuple[str, str]] = []
        for k, event in enumerate(events):
            keys = [key for key in EVENT_KINDS if isinstance(event, dict) and key in event]
            if len(keys) != 1 or not isinstance(event[keys[0]], str):
                bad(f"{rwhere}.events[{k}]", "must be an object with exactly one of "
                                             f"{', '.join(EVENT_KINDS)} (a string)")
                continue
            parsed_events.append((keys[0], event[keys[0]]))
        if raw["type"] != "GIT":  # commit ranges say nothing about released versions
            ranges.append(OsvRange(raw["type"], tuple(parsed_events)))
    versions = _strings(entry, "versions", f"{where}.versions", bad)
    severity = _severities(entry.get("severity"), f"{where}.severity", bad)
    database_severity = _database_severity(entry.get("database_specific"),
                                           f"{where}.database_specific", bad)
    return OsvAffected(canonicalize_name(name), tuple(ranges), versions, severity,
                       database_severity)


# ---------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True)
class Finding:
    name: str  # PEP 503 normalised
    version: str  # installed
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    affected: str  # the range that matched, e.g. ">=1.0, <1.2.3"
    fixed: tuple[str, ...]  # fixed versions above the installed one
    severity: str  # one of SEVERITY_LEVELS, or "unknown"
    severity_source: str  # e.g. "database_specific", "CVSS:3.1/AV:N/..." or ""
    cvss_score: float | None = None
    uncertain: bool = False  # a bound could not be parsed: reported, not proven
    source: str = ""  # advisory file

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.advisory_id, *self.aliases)


@dataclass(frozen=True)
class AuditReport:
    database: str
    advisories: int
    dependencies: tuple[tuple[str, str], ...]
    findings: tuple[Finding, ...]  # sorted by name, then advisory id
    bundle: str | None = None
    app_name: str | None = None
    app_version: str | None = None
    database_sha256: str = ""

    @property
    def vulnerable(self) -> bool:
        return bool(self.findings)

    def at_or_above(self, threshold: str) -> tuple[Finding, ...]:
        """Findings that block at `threshold` (unknown severity always does)."""
        level = check_severity_level(threshold)
        return tuple(f for f in self.findings if is_at_or_above(f, level))


def check_severity_level(level: str) -> str:
    """Validate an --audit-severity value; UsageError says which values exist."""
    normalised = level.strip().lower()
    if normalised not in SEVERITY_LEVELS:
        raise UsageError(f"--audit-severity {level!r} is not a severity level",
                         f"use one of {', '.join(SEVERITY_LEVELS)}")
    return normalised


def is_at_or_above(finding: Finding | str, threshold: str) -> bool:
    """Is the finding (or severity name) at or above `threshold`? Unknown: always (fail
    closed: a vulnerability whose severity cannot be told may be critical)."""
    severity = finding.severity if isinstance(finding, Finding) else finding
    threshold = check_severity_level(threshold)
    if severity not in SEVERITY_LEVELS:
        return True
    return SEVERITY_LEVELS.index(severity) >= SEVERITY_LEVELS.index(threshold)


def audit_dependencies(deps: Sequence[tuple[str, str]], db: OsvDatabase) -> list[Finding]:
    """Findings for (name, version) pairs, one per dependency and vulnerability.

    Advisories that are aliases of each other (PYSEC and GHSA ids of one CVE) are merged
    into one finding that keeps the known and highest severity.
    """
    from packaging.utils import canonicalize_name

    findings: list[Finding] = []
    for raw_name, version in deps:
        name = canonicalize_name(raw_name)
        matched = [f for a in db.advisories_for(name)
                   if (f := _match(a, name, version)) is not None]
        findings += _merge_aliases(matched)
    return sorted(findings, key=lambda f: (f.name, f.version, f.advisory_id))


def audit_bundle(bundle_path: str | os.PathLike[str], db: OsvDatabase) -> AuditReport:
    """Audit the dependencies a bundle's verified manifest lists.

    A bundle that fails verification is refused (VerificationError): its manifest
    cannot be trusted to say what it contains.
    """
    from sandrun.bundle.verify import verify_bundle
    from sandrun.errors import BundleError

    result = verify_bundle(bundle_path)
    result.raise_for_problems(str(bundle_path))
    manifest = result.manifest
    if manifest is None:  # pragma: no cover - a missing manifest is a problem above
        raise BundleError(f"{bundle_path} has no manifest", "rebuild it with `sandrun bundle`")
    return audit_manifest(manifest, db, bundle=str(bundle_path))


def audit_manifest(manifest: Manifest, db: OsvDatabase, bundle: str | None = None
                   ) -> AuditReport:
    """Audit an already verified manifest (what `sandrun exec` holds after verifying)."""
    deps = tuple((d.name, d.version) for d in manifest.dependencies)
    return AuditReport(database=db.source, advisories=db.advisories, dependencies=deps,
                       findings=tuple(audit_dependencies(deps, db)), bundle=bundle,
                       app_name=manifest.app_name, app_version=manifest.app_version,
                       database_sha256=db.digest)


def _parse_version(text: str) -> Version | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def _match(advisory: Advisory, name: str, version: str) -> Finding | None:
    installed = _parse_version(version)
    texts: list[str] = []
    fixed: set[str] = set()
    uncertain = False
    hit = False
    entries = [a for a in advisory.affected if a.name == name]
    for entry in entries:
        for osv_range in entry.ranges:
            fixed.update(v for kind, v in osv_range.events if kind == "fixed")
            verdict, text = _in_range(osv_range, installed)
            if verdict is True:
                hit = True
                texts.append(text)
            elif verdict is None:
                uncertain = True
                texts.append(text)
        listed = [v for v in entry.versions
                  if v == version or (installed is not None and _parse_version(v) == installed)]
        if listed:
            hit = True
            texts.append(f"=={listed[0]} (listed)")
        if not entry.ranges and not entry.versions:
            uncertain = True  # names the package but no versions: assume all (fail closed)
            texts.append("all versions (no ranges or versions given)")
    if not hit and not uncertain:
        return None
    severity, source, score = _severity(advisory, entries)
    above = sorted((v for v in fixed if installed is None or
                    ((p := _parse_version(v)) is not None and p > installed)),
                   key=_version_sort_key)
    return Finding(name=name, version=version, advisory_id=advisory.id,
                   aliases=advisory.aliases, summary=advisory.summary,
                   affected="; ".join(dict.fromkeys(texts)), fixed=tuple(above),
                   severity=severity, severity_source=source, cvss_score=score,
                   uncertain=uncertain and not hit, source=advisory.source)


def _version_sort_key(text: str) -> tuple[int, Any]:
    parsed = _parse_version(text)
    return (0, parsed) if parsed is not None else (1, text)


def _in_range(osv_range: OsvRange, installed: Version | None) -> tuple[bool | None, str]:
    """(affected?, text of the interval that decided) for one ECOSYSTEM/SEMVER range.

    The OSV evaluation: events sorted by version, "introduced" opens an interval
    ("0" = from the beginning), "fixed" and "limit" close it exclusively,
    "last_affected" inclusively. None means undecidable (an unparsable bound).
    """
    events: list[tuple[str, str, Version | None]] = []
    for kind, raw in osv_range.events:
        if kind == "introduced" and raw == "0":
            events.append((kind, raw, None))
            continue
        if kind == "limit" and raw == "*":
            continue  # no limit
        parsed = _parse_version(raw)
        if parsed is None:
            return None, f"{kind} {raw!r} is not a PEP 440 version"
        events.append((kind, raw, parsed))
    if installed is None:
        return None, "installed version is not a PEP 440 version"
    # "introduced: 0" sorts before every version.
    events.sort(key=lambda e: (0, "") if e[2] is None else (1, e[2]))
    intervals: list[tuple[str | None, Version | None, str | None, Version | None, bool]] = []
    open_at: tuple[str | None, Version | None] | None = None
    for kind, raw, parsed in events:
        if kind == "introduced":
            if open_at is None:
                open_at = (None, None) if parsed is None else (raw, parsed)
        elif open_at is not None:
            intervals.append((*open_at, raw, parsed, kind == "last_affected"))
            open_at = None
    if open_at is not None:
        intervals.append((*open_at, None, None, False))
    for low_text, low, high_text, high, inclusive in intervals:
        if low is not None and installed < low:
            continue
        if high is not None and (installed > high if inclusive else installed >= high):
            continue
        bounds = [f">={low_text}"] if low_text else []
        if high_text:
            bounds.append(f"{'<=' if inclusive else '<'}{high_text}")
        return True, ", ".join(bounds) or "all versions"
    return False, ""


# ---------------------------------------------------------------------------------------
# Severity


def _severity(advisory: Advisory,
              entries: Sequence[OsvAffected]) -> tuple[str, str, float | None]:
    """(level, where it came from, CVSS score or None).

    A qualitative database severity first (GitHub's database_specific.severity), then
    the first CVSS v3 vector that scores, then the first CVSS v4 one (v3 first, so an
    advisory that has both keeps the level it had before v4 was read). Any other vector
    (CVSS v2 has no "critical") or a malformed one leaves the level "unknown", which
    fails closed.
    """
    for value in (advisory.database_severity, *(e.database_severity for e in entries)):
        if value and value.strip().lower() in _SEVERITY_NAMES:
            return _SEVERITY_NAMES[value.strip().lower()], "database_specific", None
    vectors = [*advisory.severity, *(s for e in entries for s in e.severity)]
    for wanted in _CVSS_TYPES:
        for kind, vector in vectors:
            score = cvss_score(kind, vector) if kind == wanted else None
            if score is not None:
                return _cvss_level(score), vector, score
    if vectors:
        return UNKNOWN, vectors[0][1], None
    return UNKNOWN, "", None


_CVSS_TYPES = ("CVSS_V3", "CVSS_V4")  # the OSV severity types that are scored, in order


def cvss_score(kind: str, vector: str) -> float | None:
    """The score of an OSV severity entry: CVSS_V3 gives the CVSS v3.0/v3.1 base score,
    CVSS_V4 the CVSS v4.0 score. None for another type or a malformed vector."""
    import cvss  # type: ignore[import-untyped]  # no stubs; only rating a finding needs it

    calculator = {"CVSS_V3": cvss.CVSS3, "CVSS_V4": cvss.CVSS4}.get(kind)
    if calculator is None:
        return None
    try:
        return float(calculator(vector.strip()).scores()[0])
    except (cvss.CVSSError, ArithmeticError, LookupError, ValueError):
        # CVSSError says what is malformed; the others would be the calculator's bug on
        # a hostile vector, which must not crash an exec: unknown fails closed.
        return None


def _cvss_level(score: float) -> str:
    """The CVSS qualitative rating (the same bands in v3 and v4), as a SEVERITY_LEVELS
    name; a score of 0.0 ("None") counts as low."""
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "moderate"
    return "low"


def _rank(finding: Finding) -> int:
    return SEVERITY_LEVELS.index(finding.severity) if finding.severity in SEVERITY_LEVELS else -1


def _merge_aliases(findings: list[Finding]) -> list[Finding]:
    """One finding per vulnerability: advisories sharing an id or alias are merged."""
    groups: list[list[Finding]] = []
    for finding in sorted(findings, key=lambda f: f.advisory_id):
        ids = set(finding.ids)
        joined = [g for g in groups if any(ids & set(f.ids) for f in g)]
        merged = [finding]
        for group in joined:
            groups.remove(group)
            merged += group
        groups.append(merged)
    result = []
    for group in groups:
        # Keep the advisory with a known, highest severity; prefer a certain match.
        best = max(group, key=lambda f: (not f.uncertain, _rank(f), f.advisory_id.startswith(
            "GHSA-"), f.advisory_id))
        others = sorted({i for f in group for i in f.ids} - {best.advisory_id})
        fixed = sorted({v for f in group for v in f.fixed}, key=_version_sort_key)
        result.append(Finding(
            name=best.name, version=best.version, advisory_id=best.advisory_id,
            aliases=tuple(others), summary=best.summary or next(
                (f.summary for f in group if f.summary), ""),
            affected=best.affected, fixed=tuple(fixed), severity=best.severity,
            severity_source=best.severity_source, cvss_score=best.cvss_score,
            uncertain=all(f.uncertain for f in group), source=best.source))
    return result


# ---------------------------------------------------------------------------------------
# Output


def render_text(report: AuditReport) -> str:
    """Human report for `sandrun audit`: one block per finding, then a summary line."""
    subject = (f"{report.app_name} {report.app_version} ({report.bundle})"
               if report.app_name else "dependencies")
    lines = [f"audit of {subject}: {len(report.dependencies)} dependencies against "
             f"{report.database} ({report.advisories} advisories)"]
    for f in report.findings:
        ids = f.advisory_id + (f" ({', '.join(f.aliases)})" if f.aliases else "")
        severity = f.severity.upper() + (f" {f.cvss_score}" if f.cvss_score is not None else "")
        if f.severity == UNKNOWN and f.severity_source:
            severity += f" ({f.severity_source})"
        lines.append(f"{f.name} {f.version}: {ids} severity {severity}"
                     + (" [UNCERTAIN MATCH]" if f.uncertain else ""))
        if f.summary:
            lines.append(f"  {f.summary}")
        lines.append(f"  affected: {f.affected}")
        lines.append(f"  fix: upgrade to {' or '.join(f.fixed)}" if f.fixed
                     else "  fix: no fixed version is known")
    if report.findings:
        vulnerable = len({f.name for f in report.findings})
        counts = ", ".join(f"{n} {level}" for level in (*reversed(SEVERITY_LEVELS), UNKNOWN)
                           if (n := sum(1 for f in report.findings if f.severity == level)))
        lines.append(f"{len(report.findings)} known vulnerabilit"
                     f"{'ies' if len(report.findings) != 1 else 'y'} in {vulnerable} "
                     f"dependenc{'ies' if vulnerable != 1 else 'y'} ({counts})")
    else:
        lines.append("no known vulnerabilities")
    return "\n".join(lines)


def _finding_to_json(finding: Finding) -> dict[str, Any]:
    return {"id": finding.advisory_id, "aliases": list(finding.aliases),
            "summary": finding.summary, "affected": finding.affected,
            "fix_versions": list(finding.fixed), "severity": finding.severity,
            "severity_source": finding.severity_source, "cvss_score": finding.cvss_score,
            "uncertain": finding.uncertain, "source": finding.source}


def report_to_json(report: AuditReport) -> dict[str, Any]:
    """pip-audit-like JSON: every dependency with its (possibly empty) list of vulns."""
    by_dep: dict[tuple[str, str], list[Finding]] = {}
    for f in report.findings:
        by_dep.setdefault((f.name, f.version), []).append(f)
    from packaging.utils import canonicalize_name

    return {
        "bundle": report.bundle,
        "app": ({"name": report.app_name, "version": report.app_version}
                if report.app_name else None),
        "database": {"source": report.database, "advisories": report.advisories,
                     "sha256": report.database_sha256 or None},
        "vulnerable": report.vulnerable,
        "dependencies": [
            {"name": name, "version": version,
             "vulns": [_finding_to_json(f)
                       for f in by_dep.get((canonicalize_name(name), version), [])]}
            for name, version in report.dependencies],
    }
