"""The bundle manifest: what every entry of a bundle must be, in canonical JSON.

The manifest lists the sha256, size and normalised mode of every archive entry
except itself and the signature, plus the sha256 of the preamble (shebang), so
that one digest (`Manifest.digest`) covers the whole bundle.

Every field is validated where it is parsed (`Manifest.from_bytes`): the bundle
author wrote it, and root later uses the app name for a user and a directory, the
target Python to find an interpreter, and so on. `manifest_field_problems` lists
every invalid field at once; `sandrun verify` reports them and `sandrun exec`
refuses the bundle before it acts on anything.

Formats. Each format has an exact set of fields; a field of another format is refused
as unknown, never ignored.
  1  (sandrun before origins were recorded) app, target, source_date_epoch,
     preamble_sha256, dependencies (name, version, wheel, sha256), entries. Still
     read and verified by the same rules; its dependencies have no recorded origin
     and no provenance, so a trust policy that requires provenance refuses it.
  2  adds `resolution` (the resolver, the indexes and find-links it used, whether pip
     configuration was read, the lock file's sha256) and per dependency `origin` (the
     URL the wheel was taken from; `project:REQ` for a project built from source) and
     an optional `provenance` (the PEP 740 provenance entry embedded in the bundle and
     the publisher it was verified against at build time).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandrun.errors import BundleError, Problem, VerificationError

FORMAT_VERSION = 2  # what this sandrun writes
READABLE_FORMATS = (1, 2)
# An app name becomes part of its user name, sandrun-<app>: Linux user names stop at 32.
APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,23}\Z")
USER_PREFIX = "sandrun-"
MAX_APP_NAME = 32 - len(USER_PREFIX)
SANDRUN_DIR = ".sandrun/"
MANIFEST_NAME = ".sandrun/manifest.json"
PROFILE_NAME = ".sandrun/profile.toml"
BOOTSTRAP_NAME = ".sandrun/bootstrap.py"
SIGNATURE_NAME = ".sandrun/signature"
# CycloneDX JSON SBOM; an ordinary entry, so the manifest digest (and a signature) covers it.
SBOM_NAME = ".sandrun/sbom.cdx.json"
# PEP 740 provenance of a dependency: .sandrun/provenance/<wheel file name>.provenance
PROVENANCE_DIR = ".sandrun/provenance/"
PROVENANCE_SUFFIX = ".provenance"
# Entries that the manifest cannot list: itself, and the signature over its digest.
UNLISTED_ENTRIES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

FILE_MODE = 0o644
EXEC_MODE = 0o755
NORMALISED_MODES = frozenset({FILE_MODE, EXEC_MODE})

# zip stores DOS dates: 1980-01-01 to 2107-12-31 (UTC), so SOURCE_DATE_EPOCH stays inside.
MIN_SOURCE_DATE_EPOCH = 315532800
MAX_SOURCE_DATE_EPOCH = 4354819199

# Syntax of the fields root acts on or shows; each is validated by manifest_field_problems.
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
# module.path:attr.sub — pip's console-script wrappers accept a dotted attribute too.
ENTRY_POINT_RE = re.compile(rf"^{_DOTTED}:{_DOTTED}\Z")
MAX_ENTRY_POINT = 256
CONSOLE_SCRIPT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
MAX_CONSOLE_SCRIPT = 128
TARGET_PYTHON_RE = re.compile(r"^3\.(?:0|[1-9][0-9]?)\Z")  # 3.0 ... 3.99, no leading zero
IMPLEMENTATION_RE = re.compile(r"^[a-z]{2,16}\Z")  # cp, py, pp, ...
ABI_RE = re.compile(r"^[a-z0-9_]{1,32}\Z")  # cp311, cp313t, abi3, none
PLATFORM_RE = re.compile(r"^[a-z0-9_]{1,128}\Z")  # manylinux_2_17_x86_64, linux_x86_64, any
MAX_PLATFORMS = 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
# PEP 508 distribution names (what packaging.utils.canonicalize_name normalises).
DIST_NAME_RE = re.compile(r"^(?:[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
WHEEL_FILE_RE = re.compile(r"^[A-Za-z0-9._+!-]{1,251}\.whl\Z")
MAX_VERSION = 64
MAX_SANDRUN_VERSION = 64
MODE_TEXTS = {"0644": FILE_MODE, "0755": EXEC_MODE}
# Recorded origins: URLs, find-links and index locations (credentials are never recorded).
MAX_LOCATION = 2048
MAX_LOCATIONS = 64
MAX_RESOLVER = 64
MAX_PUBLISHER_FIELD = 256
PUBLISHER_KINDS = ("GitHub", "GitLab", "Google")
PUBLISHER_FIELDS = {"GitHub": ("repository", "workflow", "environment"),
                    "GitLab": ("repository", "workflow_filepath", "environment"),
                    "Google": ("email",)}

REBUILD_HINT = "rebuild the bundle with `sandrun bundle`; never edit a manifest by hand"
BYTECODE_HINT = ("rebuild the bundle with a current `sandrun bundle`, which leaves bytecode "
                 "out, so that what runs is what a reviewer reads")


def normalise_mode(mode: int) -> int:
    """0755 when any execute bit is set, else 0644: umask and builder never leak."""
    return EXEC_MODE if mode & 0o111 else FILE_MODE


def is_bytecode_name(name: str) -> bool:
    """Precompiled code: an entry in a `__pycache__` directory or a `.pyc`/`.pyo` file.

    A bundle carries none: what runs must be what a reviewer reads, and the store
    compiles bytecode from the verified sources itself.
    """
    return "__pycache__" in name.split("/") or name.lower().endswith((".pyc", ".pyo"))


def app_name_problem(name: object) -> str | None:
    """Why `name` cannot be an app name (part of the user name sandrun-<name> and of
    the state dir path), or None when it can. Too long is refused, never truncated."""
    if not isinstance(name, str):
        return f"must be a string, got {_json_type(name)}"
    if not name:
        return "is empty"
    if len(name) > MAX_APP_NAME:
        return (f"{name[:40]!r}{'...' if len(name) > 40 else ''} is {len(name)} characters "
                f"long; at most {MAX_APP_NAME}, so that the user name "
                f"{USER_PREFIX}<name> fits the 32 characters Linux allows (it is never "
                "truncated: two apps would share a user)")
    if not APP_NAME_RE.match(name):
        bad = sorted({c for c in name if not re.match(r"[a-z0-9_.-]", c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            return (f"{name!r} contains {shown}: an app name is 1-{MAX_APP_NAME} characters "
                    "of a-z, 0-9, '.', '_' and '-'")
        return f"{name!r} must start with a letter or digit (a-z, 0-9)"
    return None


def target_python_problem(version: object) -> str | None:
    """Why `version` is not a target Python `3.N`, or None."""
    if not isinstance(version, str):
        return f"must be a string like \"3.11\", got {_json_type(version)}"
    if not TARGET_PYTHON_RE.match(version):
        return f"{_shown(version)} is not a Python version of the form 3.N (e.g. \"3.11\")"
    return None


def entry_point_problem(entry_point: object) -> str | None:
    """Why `entry_point` is not `module.path:attr[.sub]`, or None."""
    if not isinstance(entry_point, str):
        return f"must be a string like \"pkg.module:main\", got {_json_type(entry_point)}"
    if len(entry_point) > MAX_ENTRY_POINT:
        return f"is {len(entry_point)} characters long (at most {MAX_ENTRY_POINT})"
    if not ENTRY_POINT_RE.match(entry_point):
        return (f"{_shown(entry_point)} is not MODULE:ATTRIBUTE (dotted Python identifiers "
                "on each side, e.g. \"pkg.module:main\")")
    return None


def console_script_problem(script: object) -> str | None:
    """Why `script` is not a console script name (null is allowed), or None."""
    if script is None:
        return None
    if not isinstance(script, str):
        return f"must be null or a string, got {_json_type(script)}"
    if len(script) > MAX_CONSOLE_SCRIPT:
        return f"is {len(script)} characters long (at most {MAX_CONSOLE_SCRIPT})"
    if not CONSOLE_SCRIPT_RE.match(script):
        return (f"{_shown(script)} is not a console script name (letters, digits, '.', '_' "
                "and '-', starting with a letter or digit)")
    return None


def version_problem(version: object) -> str | None:
    """Why `version` is not a PEP 440 version of at most 64 printable ASCII characters."""
    if not isinstance(version, str):
        return f"must be a string, got {_json_type(version)}"
    if len(version) > MAX_VERSION:
        return f"is {len(version)} characters long (at most {MAX_VERSION})"
    if not (version.isascii() and version.isprintable()):
        return f"{_shown(version)} contains characters other than printable ASCII"
    from packaging.version import InvalidVersion, Version

    try:
        Version(version)
    except InvalidVersion:
        return f"{_shown(version)} is not a PEP 440 version (e.g. \"1.2.3\")"
    return None


@dataclass(frozen=True)
class EntryRecord:
    sha256: str
    size: int
    mode: int  # normalised: 0o644 or 0o755

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "mode": f"{self.mode:04o}"}


def provenance_entry_name(wheel: str) -> str:
    """Where the PEP 740 provenance of `wheel` (a file name) is in a bundle."""
    return f"{PROVENANCE_DIR}{wheel}{PROVENANCE_SUFFIX}"


@dataclass(frozen=True)
class DependencyProvenance:
    """A dependency's PEP 740 provenance as embedded and verified at build time."""

    entry: str  # provenance_entry_name(wheel)
    publisher: Mapping[str, str]  # kind + the kind's fields, e.g. GitHub repository/workflow
    pinned: bool  # verified against a publisher the builder pinned (lock file or policy)

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "publisher": dict(sorted(self.publisher.items())),
                "pinned": self.pinned}

    def describe_publisher(self) -> str:
        return describe_publisher(self.publisher)


def describe_publisher(publisher: Mapping[str, str]) -> str:
    """`GitHub woodruffw/abi3info (release.yml)`: one line for messages and listings."""
    kind = publisher.get("kind", "?")
    if kind == "Google":
        return f"Google {publisher.get('email', '?')}"
    workflow = publisher.get("workflow") or publisher.get("workflow_filepath") or "?"
    environment = publisher.get("environment")
    return (f"{kind} {publisher.get('repository', '?')} ({workflow}"
            + (f", environment {environment}" if environment else "") + ")")


@dataclass(frozen=True)
class Dependency:
    name: str
    version: str
    wheel: str  # wheel file name, which carries its tags
    sha256: str  # of the wheel file
    origin: str | None = None  # format 2: where the wheel was taken from
    provenance: DependencyProvenance | None = None  # format 2, optional

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"name": self.name, "version": self.version,
                               "wheel": self.wheel, "sha256": self.sha256}
        if self.origin is not None:
            obj["origin"] = self.origin
        if self.provenance is not None:
            obj["provenance"] = self.provenance.to_json()
        return obj


@dataclass(frozen=True)
class Resolution:
    """Format 2: how the wheels were chosen, so that a bundle's origin is on record."""

    resolver: str  # "pip 23.2.1", or "pylock" (a PEP 751 lock file, no resolution)
    indexes: tuple[str, ...] = ()  # package indexes pip searched (none with --no-index)
    find_links: tuple[str, ...] = ()  # find-links locations pip searched
    pip_config: bool = False  # pip read its configuration files and PIP_* variables
    lock_sha256: str | None = None  # sha256 of the lock file (resolver "pylock")

    def to_json(self) -> dict[str, Any]:
        return {"resolver": self.resolver, "indexes": list(self.indexes),
                "find_links": list(self.find_links), "pip_config": self.pip_config,
                "lock_sha256": self.lock_sha256}


@dataclass(frozen=True)
class Target:
    python: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: tuple[str, ...]  # platform tags the wheels were selected for

    def to_json(self) -> dict[str, Any]:
        return {"python": self.python, "implementation": self.implementation,
                "abi": self.abi, "platforms": list(self.platforms)}


@dataclass(frozen=True)
class Manifest:
    app_name: str
    app_version: str
    entry_point: str  # "module:function"
    console_script: str | None
    target: Target
    source_date_epoch: int
    preamble_sha256: str
    dependencies: tuple[Dependency, ...]
    entries: Mapping[str, EntryRecord]
    sandrun_version: str
    # 1 unless given: a manifest built in code without a resolution is a format 1 one.
    format: int = 1
    resolution: Resolution | None = None  # format 2
    # Kept for callers that build a Manifest in code; a parsed manifest never has extra
    # keys (unknown fields are refused).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": self.format,
            "sandrun_version": self.sandrun_version,
            "app": {"name": self.app_name, "version": self.app_version,
                    "entry_point": self.entry_point, "console_script": self.console_script},
            "target": self.target.to_json(),
            "source_date_epoch": self.source_date_epoch,
            "preamble_sha256": self.preamble_sha256,
            "dependencies": [d.to_json() for d in self.dependencies],
            "entries": {name: rec.to_json() for name, rec in self.entries.items()},
        }
        if self.resolution is not None:
            obj["resolution"] = self.resolution.to_json()
        obj.update(self.extra)
        return obj

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no insignificant white space, ASCII only."""
        return canonical_json(self.to_json_obj())

    def digest(self) -> str:
        """sha256 of the canonical manifest: covers every entry and the preamble."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(rec.size for rec in self.entries.values())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate a manifest.

        BundleError when it is not JSON at all; VerificationError listing every invalid
        field (a Problem each, `where` = ".sandrun/manifest.json: app.name") otherwise.
        """
        try:
            obj = json.loads(data.decode("utf-8"), object_pairs_hook=_KeyedObject.of,
                             parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}",
                              "rebuild the bundle with `sandrun bundle`") from None
        problems = manifest_field_problems(obj)
        if not problems:
            manifest = cls._from_obj(obj)
            if manifest.to_bytes() != data:
                problems.append(Problem(
                    MANIFEST_NAME, "is not in canonical form (sorted keys, no white space, "
                    "ASCII escapes, one final newline), so its bytes are not what its digest "
                    "and a signature cover", REBUILD_HINT))
            else:
                return manifest
        count = len(problems)
        raise VerificationError(
            f"{MANIFEST_NAME} has {count} invalid field{'s' if count != 1 else ''}", problems,
            "never run a bundle whose manifest is invalid; " + REBUILD_HINT)

    @classmethod
    def _from_obj(cls, obj: dict[str, Any]) -> Manifest:
        """Build from an object that manifest_field_problems accepted."""
        app, target = obj["app"], obj["target"]
        resolution = obj.get("resolution")
        return cls(
            app_name=app["name"],
            app_version=app["version"],
            entry_point=app["entry_point"],
            console_script=app["console_script"],
            target=Target(target["python"], target["implementation"], target["abi"],
                          tuple(target["platforms"])),
            source_date_epoch=obj["source_date_epoch"],
            preamble_sha256=obj["preamble_sha256"],
            dependencies=tuple(_dependency(d) for d in obj["dependencies"]),
            entries={name: EntryRecord(rec["sha256"], rec["size"], MODE_TEXTS[rec["mode"]])
                     for name, rec in obj["entries"].items()},
            sandrun_version=obj["sandrun_version"],
            format=obj["format"],
            resolution=None if resolution is None else Resolution(
                resolver=resolution["resolver"], indexes=tuple(resolution["indexes"]),
                find_links=tuple(resolution["find_links"]),
                pip_config=resolution["pip_config"],
                lock_sha256=resolution["lock_sha256"]),
        )


def _dependency(d: dict[str, Any]) -> Dependency:
    prov = d.get("provenance")
    return Dependency(d["name"], d["version"], d["wheel"], d["sha256"], origin=d.get("origin"),
                      provenance=None if prov is None else DependencyProvenance(
                          prov["entry"], dict(prov["publisher"]), prov["pinned"]))


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            + "\n").encode("ascii")


# ---------------------------------------------------------------------------------------
# Validation


class _KeyedObject(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys given more than once (json.loads keeps the last
    silently: a reviewer's tool could read the first)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> _KeyedObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            keys = [key for key, _ in pairs]
            obj.duplicates = tuple(sorted({key for key in keys if keys.count(key) > 1}))
        return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array"}
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)


def _shown(text: str) -> str:
    """`text` quoted for a message, with anything unprintable escaped, cut at 80."""
    shown = repr(text[:80])
    return shown + ("..." if len(text) > 80 else "")


_TOP_FIELDS = ("format", "sandrun_version", "app", "target", "source_date_epoch",
               "preamble_sha256", "dependencies", "entries")
_TOP_FIELDS_2 = (*_TOP_FIELDS, "resolution")
_APP_FIELDS = ("name", "version", "entry_point", "console_script")
_TARGET_FIELDS = ("python", "implementation", "abi", "platforms")
_DEPENDENCY_FIELDS = ("name", "version", "wheel", "sha256")
_DEPENDENCY_FIELDS_2 = (*_DEPENDENCY_FIELDS, "origin")
_DEPENDENCY_OPTIONAL_2 = ("provenance",)
_RESOLUTION_FIELDS = ("resolver", "indexes", "find_links", "pip_config", "lock_sha256")
_PROVENANCE_FIELDS = ("entry", "publisher", "pinned")
_ENTRY_FIELDS = ("sha256", "size", "mode")


class _FieldChecker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.format = FORMAT_VERSION

    def add(self, path: str, what: str, hint: str = REBUILD_HINT) -> None:
        self.problems.append(Problem(f"{MANIFEST_NAME}: {path}" if path else MANIFEST_NAME,
                                     what, hint))

    def obj(self, path: str, value: object, fields: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """`value` as an object with exactly `fields` (and any of `optional`); a problem
        per missing, unknown or doubled key. None when it is not an object at all."""
        label = path or "the manifest"
        if not isinstance(value, dict):
            self.add(path, f"must be a JSON object, got {_json_type(value)}")
            return None
        for key in getattr(value, "duplicates", ()):
            self.add(_join(path, key), f"is given more than once in {label}: a reader could "
                     "take either value")
        for key in value:
            if key not in fields and key not in optional:
                self.add(_join(path, key), f"unknown field in {label} (format "
                         f"{self.format} has {', '.join((*fields, *optional))})")
        missing = [k for k in fields if k not in value]
        for key in missing:
            self.add(_join(path, key), "is missing")
        return value

    def text(self, path: str, value: object, regex: re.Pattern[str], describe: str) -> bool:
        if not isinstance(value, str):
            self.add(path, f"must be a string ({describe}), got {_json_type(value)}")
            return False
        if not regex.match(value):
            self.add(path, f"{_shown(value)} is not {describe}")
            return False
        return True

    def integer(self, path: str, value: object, low: int, high: int, describe: str) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(path, f"must be an integer ({describe}), got {_json_type(value)}")
            return False
        if not low <= value <= high:
            self.add(path, f"{value} is out of range: {describe}")
            return False
        return True

    def check(self, value: object) -> list[Problem]:
        fmt = value.get("format") if isinstance(value, dict) else None
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt in READABLE_FORMATS:
            self.format = fmt
        top = self.obj("", value, _TOP_FIELDS_2 if self.format >= 2 else _TOP_FIELDS)
        if top is None:
            return self.problems
        if "format" in top and (not isinstance(fmt, int) or isinstance(fmt, bool)
                                or fmt not in READABLE_FORMATS):
            self.add("format", f"{fmt!r} is not a manifest format this sandrun reads "
                     f"(formats {', '.join(str(f) for f in READABLE_FORMATS)})",
                     "use the sandrun version that built the bundle, or rebuild it with this "
                     "one")
            return self.problems  # the other fields mean something else in another format
        if "sandrun_version" in top:
            version = top["sandrun_version"]
            if not isinstance(version, str):
                self.add("sandrun_version", f"must be a string, got {_json_type(version)}")
            elif (not version or len(version) > MAX_SANDRUN_VERSION or not version.isascii()
                  or not version.isprintable()):
                self.add("sandrun_version", f"{_shown(version)} is not a version string (1-"
                         f"{MAX_SANDRUN_VERSION} printable ASCII characters)")
        self.check_app(top.get("app"), "app" in top)
        self.check_target(top.get("target"), "target" in top)
        if "source_date_epoch" in top:
            self.integer("source_date_epoch", top["source_date_epoch"],
                         MIN_SOURCE_DATE_EPOCH, MAX_SOURCE_DATE_EPOCH,
                         f"seconds since 1970 from {MIN_SOURCE_DATE_EPOCH} (1980, the first "
                         f"date a zip can store) to {MAX_SOURCE_DATE_EPOCH} (2107)")
        if "preamble_sha256" in top:
            self.text("preamble_sha256", top["preamble_sha256"], SHA256_RE,
                      "a sha256: 64 lower-case hex digits")
        if "dependencies" in top:
            self.check_dependencies(top["dependencies"])
        if "entries" in top:
            self.check_entries(top["entries"])
        if "resolution" in top:
            self.check_resolution(top["resolution"])
        if self.format >= 2 and isinstance(top.get("dependencies"), list):
            self.check_provenance_entries(top["dependencies"], top.get("entries"))
        return self.problems

    def check_resolution(self, value: object) -> None:
        res = self.obj("resolution", value, _RESOLUTION_FIELDS)
        if res is None:
            return
        if "resolver" in res:
            self.printable("resolution.resolver", res["resolver"], MAX_RESOLVER,
                           "the resolver, e.g. \"pip 23.2.1\" or \"pylock\"")
        for key in ("indexes", "find_links"):
            if key not in res:
                continue
            items = res[key]
            if not isinstance(items, list):
                self.add(f"resolution.{key}", f"must be an array of locations, got "
                         f"{_json_type(items)}")
            elif len(items) > MAX_LOCATIONS:
                self.add(f"resolution.{key}", f"lists {len(items)} locations (at most "
                         f"{MAX_LOCATIONS})")
            else:
                for index, item in enumerate(items):
                    self.printable(f"resolution.{key}[{index}]", item, MAX_LOCATION,
                                   "a URL or path")
        if "pip_config" in res and not isinstance(res["pip_config"], bool):
            self.add("resolution.pip_config", f"must be true or false, got "
                     f"{_json_type(res['pip_config'])}")
        if "lock_sha256" in res and res["lock_sha256"] is not None:
            self.text("resolution.lock_sha256", res["lock_sha256"], SHA256_RE,
                      "null or a sha256: 64 lower-case hex digits")

    def printable(self, path: str, value: object, limit: int, describe: str) -> bool:
        """A non-empty string of printable ASCII, at most `limit` characters."""
        if not isinstance(value, str):
            self.add(path, f"must be a string ({describe}), got {_json_type(value)}")
            return False
        if not value or len(value) > limit or not value.isascii() or not value.isprintable():
            self.add(path, f"{_shown(value)} is not {describe} (1-{limit} printable ASCII "
                     "characters)")
            return False
        return True

    def check_provenance(self, path: str, value: object, wheel: object) -> None:
        prov = self.obj(path, value, _PROVENANCE_FIELDS)
        if prov is None:
            return
        if "entry" in prov:
            expected = provenance_entry_name(wheel) if isinstance(wheel, str) else None
            if not isinstance(prov["entry"], str):
                self.add(f"{path}.entry", f"must be a string, got {_json_type(prov['entry'])}")
            elif expected is not None and prov["entry"] != expected:
                self.add(f"{path}.entry", f"{_shown(prov['entry'])} is not the provenance "
                         f"entry of this wheel ({expected!r})")
        if "pinned" in prov and not isinstance(prov["pinned"], bool):
            self.add(f"{path}.pinned", f"must be true or false, got "
                     f"{_json_type(prov['pinned'])}")
        if "publisher" not in prov:
            return
        publisher = prov["publisher"]
        kind = publisher.get("kind") if isinstance(publisher, dict) else None
        if not isinstance(kind, str) or kind not in PUBLISHER_FIELDS:
            if isinstance(publisher, dict):
                self.add(f"{path}.publisher.kind", f"{kind!r} is not a publisher kind "
                         f"sandrun verifies ({', '.join(PUBLISHER_KINDS)})")
            else:
                self.add(f"{path}.publisher", f"must be a JSON object, got "
                         f"{_json_type(publisher)}")
            return
        fields = PUBLISHER_FIELDS[kind]
        checked = self.obj(f"{path}.publisher", publisher, ("kind",), fields)
        if checked is None:
            return
        for key in fields:
            if key in checked:
                self.printable(f"{path}.publisher.{key}", checked[key], MAX_PUBLISHER_FIELD,
                               f"the publisher's {key}")

    def check_provenance_entries(self, dependencies: list[Any], entries: object) -> None:
        """Each provenance entry a dependency names is a listed entry of the bundle."""
        if not isinstance(entries, dict):
            return
        for index, dep in enumerate(dependencies):
            prov = dep.get("provenance") if isinstance(dep, dict) else None
            entry = prov.get("entry") if isinstance(prov, dict) else None
            if isinstance(entry, str) and entry not in entries:
                self.add(f"dependencies[{index}].provenance.entry",
                         f"{_shown(entry)} is not an entry of the bundle")

    def check_app(self, value: object, present: bool) -> None:
        if not present:
            return
        app = self.obj("app", value, _APP_FIELDS)
        if app is None:
            return
        checks = (("name", app_name_problem, "rebuild the bundle with `sandrun bundle --name "
                   "NAME`; never edit a manifest by hand"),
                  ("version", version_problem, REBUILD_HINT),
                  ("entry_point", entry_point_problem, REBUILD_HINT),
                  ("console_script", console_script_problem, REBUILD_HINT))
        for key, problem_of, hint in checks:
            if key in app:
                problem = problem_of(app[key])
                if problem:
                    self.add(f"app.{key}", problem, hint)

    def check_target(self, value: object, present: bool) -> None:
        if not present:
            return
        target = self.obj("target", value, _TARGET_FIELDS)
        if target is None:
            return
        if "python" in target:
            problem = target_python_problem(target["python"])
            if problem:
                self.add("target.python", problem, "rebuild the bundle with `sandrun bundle "
                         "--python-version 3.N`; never edit a manifest by hand")
        if "implementation" in target:
            self.text("target.implementation", target["implementation"], IMPLEMENTATION_RE,
                      "an implementation tag such as \"cp\"")
        if "abi" in target:
            self.text("target.abi", target["abi"], ABI_RE, "an ABI tag such as \"cp311\"")
        if "platforms" not in target:
            return
        platforms = target["platforms"]
        if not isinstance(platforms, list):
            self.add("target.platforms", f"must be an array of platform tags, got "
                     f"{_json_type(platforms)}")
        elif not platforms:
            self.add("target.platforms", "is empty: the bundle names no platform")
        elif len(platforms) > MAX_PLATFORMS:
            self.add("target.platforms", f"lists {len(platforms)} platforms (at most "
                     f"{MAX_PLATFORMS})")
        else:
            for index, tag in enumerate(platforms):
                self.text(f"target.platforms[{index}]", tag, PLATFORM_RE,
                          "a platform tag such as \"manylinux_2_17_x86_64\" or \"any\"")
            texts = [p for p in platforms if isinstance(p, str)]
            for tag in sorted({p for p in texts if texts.count(p) > 1}):
                self.add("target.platforms", f"lists {_shown(tag)} more than once")

    def check_dependencies(self, value: object) -> None:
        from packaging.utils import (
            InvalidWheelFilename,
            canonicalize_name,
            parse_wheel_filename,
        )
        from packaging.version import Version

        if not isinstance(value, list):
            self.add("dependencies", f"must be an array, got {_json_type(value)}")
            return
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            path = f"dependencies[{index}]"
            if self.format >= 2:
                dep = self.obj(path, item, _DEPENDENCY_FIELDS_2, _DEPENDENCY_OPTIONAL_2)
            else:
                dep = self.obj(path, item, _DEPENDENCY_FIELDS)
            if dep is None:
                continue
            if "origin" in dep:
                self.printable(f"{path}.origin", dep["origin"], MAX_LOCATION,
                               "where the wheel came from (a URL, or project:REQ)")
            if "provenance" in dep:
                self.check_provenance(f"{path}.provenance", dep["provenance"], dep.get("wheel"))
            name_ok = "name" in dep and self.text(
                f"{path}.name", dep["name"], DIST_NAME_RE,
                "a distribution name (letters, digits, '.', '_', '-')")
            version_ok = False
            if "version" in dep:
                problem = version_problem(dep["version"])
                if problem:
                    self.add(f"{path}.version", problem)
                else:
                    version_ok = True
            if "sha256" in dep:
                self.text(f"{path}.sha256", dep["sha256"], SHA256_RE,
                          "a sha256: 64 lower-case hex digits")
            if name_ok:
                canonical = canonicalize_name(dep["name"])
                first = seen.setdefault(canonical, index)
                if first != index:
                    self.add(f"{path}.name", f"{dep['name']!r} is already dependencies[{first}]"
                             ": a bundle holds one version of each distribution")
            if "wheel" not in dep:
                continue
            wheel = dep["wheel"]
            if not self.text(f"{path}.wheel", wheel, WHEEL_FILE_RE,
                             "a wheel file name (NAME-VERSION-TAGS.whl)"):
                continue
            try:
                wheel_name, wheel_version, _build, _tags = parse_wheel_filename(wheel)
            except InvalidWheelFilename as exc:
                self.add(f"{path}.wheel", f"{_shown(wheel)} is not a valid wheel file name "
                         f"({exc})")
                continue
            if name_ok and wheel_name != canonicalize_name(dep["name"]):
                self.add(f"{path}.wheel", f"{_shown(wheel)} is a wheel of {wheel_name!r}, not "
                         f"of {dep['name']!r}")
            if version_ok and wheel_version != Version(dep["version"]):
                self.add(f"{path}.wheel", f"{_shown(wheel)} is version {wheel_version}, not "
                         f"{dep['version']}")

    def check_entries(self, value: object) -> None:
        from sandrun.bundle.archive import MAX_ENTRY_SIZE, check_name, display_name

        if not isinstance(value, dict):
            self.add("entries", f"must be an object (entry name -> record), got "
                     f"{_json_type(value)}")
            return
        for key in getattr(value, "duplicates", ()):
            self.add(f"entries[{display_name(key)!r}]", "is listed more than once")
        for name, item in value.items():
            path = f"entries[{display_name(name)!r}]"
            for finding in check_name(name):
                self.add(path, finding)
            record = self.obj(path, item, _ENTRY_FIELDS)
            if record is None:
                continue
            if "sha256" in record:
                self.text(f"{path}.sha256", record["sha256"], SHA256_RE,
                          "a sha256: 64 lower-case hex digits")
            if "size" in record:
                self.integer(f"{path}.size", record["size"], 0, MAX_ENTRY_SIZE,
                             f"a size in bytes from 0 to {MAX_ENTRY_SIZE}")
            if "mode" in record:
                mode = record["mode"]
                if not isinstance(mode, str):
                    self.add(f"{path}.mode", f"must be the string \"0644\" or \"0755\", got "
                             f"{_json_type(mode)}")
                elif mode not in MODE_TEXTS:
                    self.add(f"{path}.mode", f"{_shown(mode)} is not a normalised mode "
                             "(\"0644\" or \"0755\")")


def _join(path: str, key: str) -> str:
    shown = key if re.fullmatch(r"[A-Za-z0-9_]+", key) else repr(key)
    return f"{path}.{shown}" if path else shown


def manifest_field_problems(obj: object) -> list[Problem]:
    """Every invalid field of a parsed manifest (`json.loads` output), one Problem each,
    `where` = ".sandrun/manifest.json: <dotted field>"; empty when all are valid.

    Pure: reads nothing but `obj` (and imports packaging for versions and wheel names).
    """
    return _FieldChecker().check(obj)
