"""The bundle manifest: what every entry of a bundle must be, in canonical JSON.

The manifest lists the sha256, size and normalised mode of every archive entry
except itself and the signature, plus the sha256 of the preamble (shebang), so
that one digest (`Manifest.digest`) covers the whole bundle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandrun.errors import BundleError

FORMAT_VERSION = 1
# An app name becomes part of its user name, sandrun-<app>: Linux user names stop at 32.
APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,23}$")
SANDRUN_DIR = ".sandrun/"
MANIFEST_NAME = ".sandrun/manifest.json"
PROFILE_NAME = ".sandrun/profile.toml"
BOOTSTRAP_NAME = ".sandrun/bootstrap.py"
SIGNATURE_NAME = ".sandrun/signature"
# CycloneDX JSON SBOM; an ordinary entry, so the manifest digest (and a signature) covers it.
SBOM_NAME = ".sandrun/sbom.cdx.json"
# Entries that the manifest cannot list: itself, and the signature over its digest.
UNLISTED_ENTRIES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

FILE_MODE = 0o644
EXEC_MODE = 0o755
NORMALISED_MODES = frozenset({FILE_MODE, EXEC_MODE})


def normalise_mode(mode: int) -> int:
    """0755 when any execute bit is set, else 0644: umask and builder never leak."""
    return EXEC_MODE if mode & 0o111 else FILE_MODE


@dataclass(frozen=True)
class EntryRecord:
    sha256: str
    size: int
    mode: int  # normalised: 0o644 or 0o755

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "mode": f"{self.mode:04o}"}


@dataclass(frozen=True)
class Dependency:
    name: str
    version: str
    wheel: str  # wheel file name, which carries its tags
    sha256: str  # of the wheel file

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "wheel": self.wheel,
                "sha256": self.sha256}


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
    format: int = FORMAT_VERSION
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
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}",
                              "rebuild the bundle with `sandrun bundle`") from None
        try:
            return cls._from_obj(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{MANIFEST_NAME} is malformed ({type(exc).__name__}: {exc})",
                              "rebuild the bundle with `sandrun bundle`") from None

    @classmethod
    def _from_obj(cls, obj: dict[str, Any]) -> Manifest:
        if obj["format"] != FORMAT_VERSION:
            raise ValueError(f"format {obj['format']!r} is not supported (this sandrun reads "
                             f"format {FORMAT_VERSION})")
        app, target = obj["app"], obj["target"]
        entries = {}
        for name, rec in obj["entries"].items():
            mode = int(rec["mode"], 8)
            entries[str(name)] = EntryRecord(str(rec["sha256"]), int(rec["size"]), mode)
        known = {"format", "sandrun_version", "app", "target", "source_date_epoch",
                 "preamble_sha256", "dependencies", "entries"}
        return cls(
            app_name=str(app["name"]),
            app_version=str(app["version"]),
            entry_point=str(app["entry_point"]),
            console_script=app.get("console_script"),
            target=Target(str(target["python"]), str(target["implementation"]),
                          str(target["abi"]), tuple(target["platforms"])),
            source_date_epoch=int(obj["source_date_epoch"]),
            preamble_sha256=str(obj["preamble_sha256"]),
            dependencies=tuple(Dependency(d["name"], d["version"], d["wheel"], d["sha256"])
                               for d in obj["dependencies"]),
            entries=entries,
            sandrun_version=str(obj["sandrun_version"]),
            extra={k: v for k, v in obj.items() if k not in known},
        )


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            + "\n").encode("ascii")
