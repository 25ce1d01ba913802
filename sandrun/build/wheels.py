"""Wheels: check them against the target and their own RECORD, then unpack them.

sandrun installs wheels itself instead of calling `pip install`: unpacking is
all a wheel needs, it runs no code, writes no build paths (pip writes
direct_url.json and script shebangs naming the build machine) and lets us
normalise every mode.

No precompiled code goes into a bundle: what runs must be what a reviewer reads,
and the store compiles bytecode from the verified sources itself. A `__pycache__`
file in a wheel is a leftover cache that CPython uses only beside its source (numpy
ships one): it is checked against RECORD like every file, then left out, with a
warning. A `.pyc`/`.pyo` anywhere else is sourceless code that Python would import
instead of reading a source: the wheel is refused.

Every file an installer would install is kept, laid out as `pip install --target
site-packages` lays it out (which is also what shiv does), so that code that finds
its files the pip way finds them in the store too:
  `<name>.data/purelib/`, `platlib/`  merged into site-packages, as every installer does;
  `<name>.data/scripts/`  into `site-packages/bin/`, mode 0755 (the wheel spec: "Unix
      installers may need to add the +x bit"). That is where ruff and uv look for
      their native executable outside a venv (`pip install --target` puts it there), and
      what a profile grants: `execute = ["{store}/site-packages/bin/ruff"]`;
  `<name>.data/data/`  relative to site-packages, as `--target` treats it as the prefix;
  `<name>.data/headers/`  into `site-packages/include/site/python3.N/<project>/`, as
      `--target` does: inert at run time (nothing compiles in the sandbox), kept so the
      tree holds everything the wheel's RECORD lists.
Files are byte-identical to the wheel, so each still matches its RECORD hash. A script
whose first line is `#!python` keeps it: installers rewrite it to the installing
interpreter, but the interpreter that runs the app is chosen at launch, and the tree is
verified by content, so no path can be baked in (`#!/usr/bin/env python3` would run
PATH's python3 with the system's packages instead of the verified tree). Such a script
cannot be executed directly (the kernel resolves a relative interpreter against the cwd,
where Landlock grants no execute): the app runs the project's entry point instead.
A wheel with any other `.data` scheme is refused, as pip refuses it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import stat
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from sandrun.bundle.manifest import EXEC_MODE, is_bytecode_name, normalise_mode
from sandrun.errors import BundleError

# What a RECORD may leave unhashed: itself and its signatures.
_RECORD_SELF = ("RECORD", "RECORD.jws", "RECORD.p7s")


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical project name
    version: str
    tags: frozenset[Tag]
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name


def read_wheel(path: Path) -> Wheel:
    """Parse a wheel's file name and hash its bytes."""
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise BundleError(f"{path.name}: not a valid wheel file name ({exc})",
                          "pass wheel files as produced by `pip wheel` or PyPI") from None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Wheel(path, str(name), str(version), frozenset(tags), digest.hexdigest())


def check_target(wheel: Wheel, supported: Iterable[Tag], target_text: str) -> None:
    """Refuse a wheel that the target interpreter and platform cannot use."""
    if wheel.tags.isdisjoint(set(supported)):
        tags = ", ".join(sorted(str(t) for t in wheel.tags))
        raise BundleError(
            f"{wheel.filename}: built for {tags}, which the target ({target_text}) cannot load",
            "pick a wheel for the target, or change --python-version/--platform")


def _safe_member(name: str, wheel: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))):
        raise BundleError(f"{wheel}: unsafe path {name!r} in the wheel",
                          "this wheel is malformed or malicious; do not use it")
    return path


def _record_digest(data: bytes, algorithm: str) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _ignore(_: str) -> None:
    pass


def install_wheel(wheel: Wheel, site_packages: Path,
                  warn: Callable[[str], None] = _ignore, *,
                  python_version: str | None = None) -> list[str]:
    """Verify every file against RECORD, then unpack into site_packages.

    Returns the installed paths relative to site_packages. Nothing is written
    when the RECORD check fails, the wheel ships sourceless bytecode or a file of an
    unknown `.data` scheme; `__pycache__` files are verified, then left out (one `warn`
    per wheel names them). `python_version` ("3.11", the target's; default: this
    interpreter's) names the headers directory.
    """
    if python_version is None:
        python_version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with zipfile.ZipFile(wheel.path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise BundleError(f"{wheel.filename}: duplicate file names in the wheel",
                              "this wheel is malformed; do not use it")
        for name in names:
            _safe_member(name, wheel.filename)
        caches = _bytecode_caches(names, wheel.filename)
        dist_info = _dist_info_dir(names, wheel)
        record = _read_record(zf, f"{dist_info}/RECORD", wheel)
        data_dir = f"{dist_info[: -len('.dist-info')]}.data/"
        files: list[tuple[str, bytes, int]] = []  # installed name, content, mode
        python_scripts: list[str] = []
        for info in infos:
            data = zf.read(info)
            base = info.filename.rsplit("/", 1)[-1]
            if info.filename.startswith(f"{dist_info}/") and base in _RECORD_SELF:
                continue
            expected = record.pop(info.filename, None)
            if expected is None:
                raise BundleError(f"{wheel.filename}: {info.filename} is not listed in RECORD",
                                  "the wheel was altered after it was built; do not use it")
            algorithm, _, want = expected[0].partition("=")
            if algorithm not in ("sha256", "sha384", "sha512") or not want:
                raise BundleError(
                    f"{wheel.filename}: {info.filename} has no strong hash in RECORD "
                    f"({expected[0] or 'empty'})", "rebuild the wheel with a current build tool")
            if _record_digest(data, algorithm) != want or (
                    expected[1] and int(expected[1]) != len(data)):
                raise BundleError(f"{wheel.filename}: {info.filename} does not match its RECORD "
                                  "hash", "the wheel was altered after it was built; do not use it")
            if info.filename in caches:
                continue  # verified above, but never installed
            target, is_script = _placement(info.filename, data_dir, wheel, python_version)
            mode = EXEC_MODE if is_script else normalise_mode((info.external_attr >> 16) & 0o777)
            if is_script and data.startswith(b"#!python"):
                python_scripts.append(target)
            files.append((target, data, mode))
        missing = [n for n in record if not n.endswith("/") and
                   n.rsplit("/", 1)[-1] not in _RECORD_SELF]
        if missing:
            raise BundleError(f"{wheel.filename}: RECORD lists files the wheel lacks: "
                              f"{', '.join(sorted(missing)[:5])}",
                              "the wheel is truncated or altered; download it again")

    if caches:
        shown = ", ".join(sorted(caches)[:3]) + (", ..." if len(caches) > 3 else "")
        warn(f"{wheel.filename}: left out {len(caches)} precompiled bytecode file(s) "
             f"({shown}); the store compiles bytecode from the sources itself")
    placed = [name for name, _, _ in files]
    if len(set(placed)) != len(placed):
        twice = sorted({n for n in placed if placed.count(n) > 1})
        raise BundleError(f"{wheel.filename}: installs {', '.join(twice[:3])} twice (from the "
                          "package and from its .data directory)",
                          "this wheel is malformed; installers would overwrite one of them")
    if python_scripts:
        shown = ", ".join(sorted(python_scripts)[:3]) + (", ..." if len(python_scripts) > 3
                                                          else "")
        warn(f"{wheel.filename}: kept {len(python_scripts)} '#!python' script(s) as shipped "
             f"({shown}): the interpreter is chosen at launch and the tree is verified by "
             "content, so no interpreter path can be written into them and they cannot be "
             "executed directly; run the project's entry point instead")
    installed: list[str] = []
    for name, data, mode in files:
        _write_new(site_packages, name, data, mode, wheel.filename)
        installed.append(name)
    # RECORD goes along unchanged so that `sandrun inspect` and SBOMs can read it.
    rec_data = _read_raw(wheel.path, f"{dist_info}/RECORD")
    _write_new(site_packages, f"{dist_info}/RECORD", rec_data, 0o644, wheel.filename)
    installed.append(f"{dist_info}/RECORD")
    return installed


# `.data/<scheme>/` of a wheel: where `pip install --target` puts each scheme's files.
SCRIPTS_DIR = "bin"
_DATA_SCHEMES = ("purelib", "platlib", "scripts", "data", "headers")


def _placement(name: str, data_dir: str, wheel: Wheel,
               python_version: str) -> tuple[str, bool]:
    """Where a wheel member goes, relative to site-packages (see the module docstring),
    and whether it is a script (always executable)."""
    if not name.startswith(data_dir):
        return name, False
    scheme, _, rest = name[len(data_dir):].partition("/")
    if scheme not in _DATA_SCHEMES or not rest:
        raise BundleError(f"{wheel.filename}: {name} is in the unknown install scheme "
                          f"{scheme!r} (known: {', '.join(_DATA_SCHEMES)})",
                          "this wheel is malformed; installers refuse it too")
    if scheme == "scripts":
        return f"{SCRIPTS_DIR}/{rest}", True
    if scheme == "headers":
        return f"include/site/python{python_version}/{wheel.name}/{rest}", False
    return rest, False


def _bytecode_caches(names: list[str], wheel: str) -> set[str]:
    """The wheel's `__pycache__` files (left out); BundleError for any other bytecode."""
    caches = set()
    for name in names:
        if not is_bytecode_name(name):
            continue
        if "__pycache__" not in name.split("/")[:-1]:
            raise BundleError(
                f"{wheel}: {name} is precompiled bytecode without a __pycache__ directory: "
                "Python would import it instead of a source that a reviewer can read",
                "sandrun bundles no precompiled code; use a wheel that ships its sources "
                "(or build one from the project's sources with `pip wheel`)")
        caches.add(name)
    return caches


def _write_new(site_packages: Path, name: str, data: bytes, mode: int, wheel: str) -> None:
    target = site_packages / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except (FileExistsError, NotADirectoryError):
        # The same name, or a file where another wheel has a directory (or the reverse).
        raise BundleError(f"{wheel}: {name} conflicts with a file or directory that "
                          "another wheel installs",
                          "two distributions ship the same path; drop one of them") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(target, mode & ~stat.S_IFMT(mode))


def _read_raw(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(member)


def _dist_info_dir(names: list[str], wheel: Wheel) -> str:
    dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")
            and "/" in n}
    if len(dirs) != 1:
        raise BundleError(f"{wheel.filename}: expected exactly one .dist-info directory, "
                          f"found {len(dirs)}", "this wheel is malformed; do not use it")
    return dirs.pop()


def _read_record(zf: zipfile.ZipFile, name: str, wheel: Wheel) -> dict[str, tuple[str, str]]:
    try:
        text = zf.read(name).decode("utf-8")
    except KeyError:
        raise BundleError(f"{wheel.filename}: no {name}",
                          "this wheel is malformed; do not use it") from None
    record: dict[str, tuple[str, str]] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        path = row[0]
        record[path] = (row[1] if len(row) > 1 else "", row[2] if len(row) > 2 else "")
    return record
