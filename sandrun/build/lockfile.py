"""Hash-pinned inputs: build from a PEP 751 lock file, or write pins from a bundle.

`sandrun bundle --lock pylock.toml` takes exactly the wheels the lock names: for each
package the best wheel for the bundle's target, by the same tags the builder checks.
There is no resolution: packages with only an sdist, VCS or directory sources, or a
wheel without a sha256 are refused, and every file is checked against its sha256
before it is used.

Wheels are fetched here (a `path` relative to the lock file, or the `url` with
urllib), not with `pip download`: pip would resolve `name==version` against an index
and could pick another file of that version, while the lock names the file itself.
urllib verifies TLS by default, honours the usual proxy variables, and the sha256
check makes the transport irrelevant to integrity.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandrun import __version__
from sandrun.bundle.manifest import Manifest, Target
from sandrun.errors import LockFileError, Problem

if TYPE_CHECKING:
    from packaging.pylock import Package, PackageWheel, Pylock
    from packaging.tags import Tag

RELOCK_HINT = ("fix the lock file or regenerate it (e.g. `pip lock`, "
               "`uv export --format pylock.toml`)")
WHEELS_ONLY_HINT = ("sandrun installs wheels only, so no dependency's setup.py ever runs: build "
                    "and review a wheel yourself and lock it by path with its sha256")
CHANGED_HINT = ("the file differs from the one that was locked: do not use it; lock again "
                "from a source you trust")
URL_SCHEMES = ("https", "http", "file")  # integrity comes from the sha256, not the transport
MAX_WHEEL_SIZE = 1 << 30  # refuse absurd downloads when the lock gives no size
DOWNLOAD_TIMEOUT = 60.0
CHUNK = 1 << 20

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class LockedWheel:
    """The wheel a lock file selects for one package on the target."""

    name: str  # canonical project name
    version: str
    filename: str
    sha256: str
    size: int | None
    path: Path | None  # absolute (a relative lock path is relative to the lock file)
    url: str | None
    where: str  # e.g. "pylock.toml: packages[3].wheels[0]"
    # PEP 751 attestation-identities of the package: the publishers its provenance must
    # verify against (validated; plain dicts with "kind" and the kind's keys)
    attestation_identities: tuple[dict[str, str], ...] = ()


def marker_environment(target: Target) -> dict[str, str]:
    """Environment markers of the bundle's target.

    The running interpreter's, with the Python version and the OS/machine of the
    target's first platform tag when the target is another one.
    """
    from packaging import tags
    from packaging.markers import default_environment

    env: dict[str, str] = dict(default_environment())  # type: ignore[arg-type]
    if target.python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        env["python_version"] = target.python
        env["python_full_version"] = f"{target.python}.0"
        env["implementation_version"] = env["python_full_version"]
    platform = target.platforms[0] if target.platforms else ""
    if not platform or platform in set(tags.platform_tags()):
        return env
    if platform.startswith(("manylinux", "musllinux", "linux")):
        env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
                   platform_machine=_machine(platform))
    elif platform.startswith("macosx"):
        env.update(sys_platform="darwin", platform_system="Darwin", os_name="posix",
                   platform_machine=_machine(platform))
    elif platform.startswith("win"):
        machine = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}.get(platform, "")
        env.update(sys_platform="win32", platform_system="Windows", os_name="nt",
                   platform_machine=machine)
    return env


def _machine(platform: str) -> str:
    # manylinux_2_17_x86_64, musllinux_1_2_aarch64, macosx_11_0_arm64: machine after 3 parts;
    # manylinux2014_x86_64, linux_x86_64: after 1.
    parts = platform.split("_")
    if len(parts) > 3 and parts[1].isdigit() and parts[2].isdigit():
        return "_".join(parts[3:])
    return "_".join(parts[1:])


def read_lock(path: Path) -> Pylock:
    """Parse and validate a pylock.toml; LockFileError names the key that is wrong."""
    from packaging.pylock import Pylock, PylockValidationError

    label = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise LockFileError(f"cannot read the lock file {label}",
                            [Problem(label, exc.strerror or str(exc), "check the path")]) from None
    except UnicodeDecodeError as exc:
        raise LockFileError(f"the lock file {label} is not UTF-8",
                            [Problem(label, str(exc), RELOCK_HINT)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # "... (at line 2, column 11)" -> "pylock.toml:2: ... (column 11)", like other files.
        found = re.search(r" \(at line (\d+), column (\d+)\)$", str(exc))
        where, what = label, str(exc)
        if found:
            where = f"{label}:{found.group(1)}"
            what = f"{what[:found.start()]} (column {found.group(2)})"
        raise LockFileError(f"the lock file {label} is not valid TOML",
                            [Problem(where, what, RELOCK_HINT)]) from None
    try:
        return Pylock.from_dict(data)
    except PylockValidationError as exc:
        where = f"{label}: {exc.context}" if exc.context else label
        raise LockFileError(f"the lock file {label} is not a valid PEP 751 lock file",
                            [Problem(where, exc.message, RELOCK_HINT)]) from None


def select_wheels(lock_path: Path, target: Target, supported: Sequence[Tag],
                  allowed_dirs: Sequence[Path] | None = None) -> list[LockedWheel]:
    """The wheel of every package the lock selects for `target`, sorted by name.

    Follows PEP 751's installation steps (markers, requires-python, environments,
    one entry per name) with the default groups and no extras, and reports every
    problem at once. With `allowed_dirs` (callers that take a lock someone else wrote,
    such as `sandrun dev` on a developer's project), a wheel given by `path` or a `file:`
    URL must be beneath the lock's own directory or one of them: the lock's author must
    not make sandrun read, and say things about, any other file.
    """
    from packaging.tags import create_compatible_tags_selector

    lock = read_lock(lock_path)
    label = str(lock_path)
    base = lock_path.resolve().parent
    roots = None if allowed_dirs is None else [
        base, *(Path(os.path.realpath(d)) for d in allowed_dirs)]
    env = marker_environment(target)
    platform = next((p for p in target.platforms if p.startswith("manylinux")),
                    target.platforms[0])
    target_text = f"Python {target.python} ({target.abi}, {platform})"
    problems: list[Problem] = []
    problems += _lock_level_problems(lock, env, label, target_text)
    select = create_compatible_tags_selector(supported)
    marker_env: dict[str, Any] = {**env, "extras": frozenset(),
                                  "dependency_groups": frozenset(lock.default_groups or [])}
    chosen: dict[str, tuple[int, LockedWheel]] = {}
    for index, package in enumerate(lock.packages):
        where = f"{label}: packages[{index}]"
        what = f"package {package.name!r}"
        if package.marker is not None:
            try:
                if not package.marker.evaluate(marker_env, context="lock_file"):
                    continue
            except Exception as exc:
                problems.append(Problem(f"{where}.marker", f"{what}: cannot evaluate the marker "
                                        f"{str(package.marker)!r} ({exc})", RELOCK_HINT))
                continue
        if package.requires_python is not None and not package.requires_python.contains(
                env["python_full_version"], prereleases=True):
            problems.append(Problem(f"{where}.requires-python",
                                    f"{what} requires Python {package.requires_python}, the "
                                    f"target is {target_text}",
                                    "lock for the target's Python or change --python-version"))
            continue
        if package.name in chosen:
            problems.append(Problem(where, f"{what} is selected twice (also at packages"
                                           f"[{chosen[package.name][0]}])",
                                    "give each package one entry, or markers that exclude "
                                    "each other"))
            continue
        locked = _choose(package, index, where, what, base, roots, select, target_text,
                         problems)
        if locked is not None:
            chosen[package.name] = (index, locked)
    if not chosen and not problems:
        problems.append(Problem(label, f"selects no package for {target_text}",
                                "lock the app and its dependencies for this target"))
    if problems:
        count = len(problems)
        raise LockFileError(f"cannot bundle from the lock file {label} "
                            f"({count} problem{'s' if count != 1 else ''})", problems)
    return sorted((w for _, w in chosen.values()), key=lambda w: w.name)


def _lock_level_problems(lock: Pylock, env: dict[str, str], label: str,
                         target_text: str) -> list[Problem]:
    problems = []
    if lock.requires_python is not None and not lock.requires_python.contains(
            env["python_full_version"], prereleases=True):
        problems.append(Problem(f"{label}: requires-python",
                                f"the lock requires Python {lock.requires_python}, the target "
                                f"is {target_text}",
                                "lock for the target's Python or change --python-version"))
    if lock.environments:
        try:
            fits = any(m.evaluate(env) for m in lock.environments)
        except Exception:
            fits = False
        if not fits:
            listed = "; ".join(str(m) for m in lock.environments)
            problems.append(Problem(f"{label}: environments",
                                    f"the target {target_text} matches none of the lock's "
                                    f"environments ({listed})",
                                    "lock for the target or change --python-version/"
                                    "--platform"))
    return problems


def _choose(package: Package, index: int, where: str, what: str, base: Path,
            roots: Sequence[Path] | None, select: Callable[..., Any], target_text: str,
            problems: list[Problem]) -> LockedWheel | None:
    from packaging.utils import parse_wheel_filename

    if package.vcs is not None or package.directory is not None:
        kind = "a VCS checkout" if package.vcs is not None else "a local directory"
        problems.append(Problem(f"{where}.{'vcs' if package.vcs else 'directory'}",
                                f"{what} comes from {kind}, not a wheel", WHEELS_ONLY_HINT))
        return None
    candidates: list[tuple[PackageWheel | Any, str]] = [
        (wheel, f"{where}.wheels[{j}]") for j, wheel in enumerate(package.wheels or [])]
    if package.archive is not None:
        name = _file_name(package.archive.path, package.archive.url)
        if not name.endswith(".whl"):
            problems.append(Problem(f"{where}.archive", f"{what} is an archive ({name or '?'}), "
                                    "not a wheel", WHEELS_ONLY_HINT))
            return None
        candidates.append((package.archive, f"{where}.archive"))
    if not candidates:
        problems.append(Problem(f"{where}.sdist", f"{what} has only an sdist", WHEELS_ONLY_HINT))
        return None
    tagged = []
    for wheel, wwhere in candidates:
        filename = _file_name(getattr(wheel, "name", None) or wheel.path, wheel.url)
        try:
            tagged.append(((wheel, wwhere, filename), parse_wheel_filename(filename)[-1]))
        except Exception:
            problems.append(Problem(wwhere, f"{what}: {filename!r} is not a wheel file name",
                                    RELOCK_HINT))
            return None
    best = next(select(tagged), None)
    if best is None:
        available = ", ".join(sorted(f for (_, _, f), _ in tagged))
        only_sdist = " (and an sdist, which sandrun never builds)" if package.sdist else ""
        problems.append(Problem(f"{where}.wheels", f"{what}: no wheel fits the target "
                                f"{target_text}; the lock has {available}{only_sdist}",
                                "lock a wheel built for the target, or change "
                                "--python-version/--platform"))
        return None
    wheel, wwhere, filename = best
    sha256 = str(wheel.hashes.get("sha256", "")).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        have = ", ".join(sorted(wheel.hashes)) or "none"
        problems.append(Problem(f"{wwhere}.hashes", f"{what}: {filename} has no valid sha256 "
                                f"hash (has: {have})",
                                "sandrun checks every wheel against its sha256: lock with "
                                "sha256 hashes"))
        return None
    path = None
    if wheel.path:
        path = Path(wheel.path)
        path = path if path.is_absolute() else base / path
    url = None if path is not None else wheel.url
    if url is not None and urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        problems.append(Problem(f"{wwhere}.url", f"{what}: URL scheme of {url!r} is not "
                                f"supported (use {', '.join(URL_SCHEMES)})", RELOCK_HINT))
        return None
    local = path
    if url is not None and urllib.parse.urlsplit(url).scheme == "file":
        local = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    if local is not None and roots is not None and not _beneath_any(local, roots):
        problems.append(Problem(f"{wwhere}.path", f"{what}: {filename} is outside the lock's "
                                "directory and every --find-links directory",
                                "put the wheel next to the lock file (or below it), or give "
                                "its directory with --find-links"))
        return None
    from packaging.utils import canonicalize_name

    from sandrun.supply.provenance import lock_identities

    identities, identity_problems = lock_identities(package.attestation_identities, where)
    if identity_problems:
        problems += identity_problems
        return None
    _name, version, _build, _tags = parse_wheel_filename(filename)
    return LockedWheel(name=canonicalize_name(package.name), version=str(version),
                       filename=filename, sha256=sha256, size=wheel.size, path=path, url=url,
                       where=wwhere,
                       attestation_identities=tuple(dict(i) for i in identities))


def _beneath_any(path: Path, roots: Sequence[Path]) -> bool:
    """Lexically (after normalising `..`) beneath one of `roots`; the file itself is then
    opened without following a final link (_copy_checked)."""
    normal = os.path.normpath(path)
    return any(normal == str(root) or normal.startswith(str(root).rstrip("/") + "/")
               for root in roots)


def _file_name(path: str | None, url: str | None) -> str:
    """The last component of a path or URL (the same rule packaging.pylock uses)."""
    if path:
        return path.replace("\\", "/").rsplit("/", 1)[-1]
    if url:
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    return ""


def fetch_wheels(wheels: Sequence[LockedWheel], dest: Path,
                 progress: Progress = _quiet) -> list[Path]:
    """Copy or download every locked wheel into `dest`, each checked against its sha256.

    A file that fails its check is removed; every failure is reported at once.
    """
    problems: list[Problem] = []
    paths: list[Path] = []
    for wheel in wheels:
        target = dest / wheel.filename
        source = str(wheel.path) if wheel.path is not None else str(wheel.url)
        progress(f"fetching {wheel.filename}")
        try:
            digest, size = _copy_checked(wheel, target)
        except _FetchError as exc:
            target.unlink(missing_ok=True)
            key = "path" if wheel.path is not None else "url"
            problems.append(Problem(f"{wheel.where}.{key}", f"{wheel.filename}: cannot "
                                    f"{'read' if wheel.path else 'download'} {source}: {exc}",
                                    exc.hint))
            continue
        if digest != wheel.sha256 or (wheel.size is not None and size != wheel.size):
            target.unlink(missing_ok=True)
            # Never the digest or size sandrun computed: the lock's author chose the file.
            what = (f"{source} does not match the sha256 the lock gives ({wheel.sha256})"
                    if digest != wheel.sha256 else
                    f"{source} does not have the size the lock gives ({wheel.size} bytes)")
            problems.append(Problem(f"{wheel.where}.hashes" if digest != wheel.sha256
                                    else f"{wheel.where}.size", what, CHANGED_HINT))
            continue
        paths.append(target)
    if problems:
        count = len(problems)
        raise LockFileError(f"{count} locked wheel{'s' if count != 1 else ''} cannot be used",
                            problems)
    return paths


class _FetchError(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _copy_checked(wheel: LockedWheel, target: Path) -> tuple[str, int]:
    limit = wheel.size if wheel.size is not None else MAX_WHEEL_SIZE
    digest = hashlib.sha256()
    size = 0
    try:
        if wheel.path is not None:
            fd = os.open(wheel.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise _FetchError("not a regular file", "lock wheel files")
            source: Any = os.fdopen(fd, "rb")
        else:
            assert wheel.url is not None
            request = urllib.request.Request(wheel.url, headers={
                "User-Agent": f"sandrun/{__version__}"})
            source = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT)
    except FileNotFoundError:
        raise _FetchError("no such file", "check the path, which is relative to the lock "
                                          "file's directory") from None
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise _FetchError(str(reason), "check the URL or path and the network") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with source, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > limit:  # stop early: it cannot match the lock
                    raise _FetchError(f"larger than {limit} bytes" + (
                        ", the size the lock gives" if wheel.size is not None else ""),
                        CHANGED_HINT if wheel.size is not None else "lock a smaller file")
                digest.update(chunk)
                out.write(chunk)
    except (OSError, urllib.error.URLError) as exc:
        raise _FetchError(str(exc), "check the network and try again") from None
    return digest.hexdigest(), size


def requirements_from_manifest(manifest: Manifest) -> str:
    """requirements.txt text pinning every wheel of a bundle by version and sha256.

    `sandrun bundle -r FILE` with the same wheels (e.g. --no-index --find-links DIR), the
    same entry point, profile and target rebuilds the bundle byte for byte.
    """
    target = manifest.target
    entry = (f"-c {manifest.console_script}" if manifest.console_script
             else f"-e {manifest.entry_point}")
    platform = next((p for p in target.platforms if p.startswith("manylinux")),
                    target.platforms[0])
    more = len(target.platforms) - 1
    lines = [
        f"# Hash-pinned requirements of {manifest.app_name} {manifest.app_version}, "
        f"written by sandrun {__version__}",
        f"# from the bundle manifest sha256 {manifest.digest()}.",
        f"# Made for Python {target.python} ({target.abi}) on {platform}"
        + (f" (and {more} more platform tags)" if more else "") + ":",
        "# the hashes pin the wheels of that target; rebuild for the same target with",
        f"#   sandrun bundle -r THIS_FILE {entry} --name {manifest.app_name} -p PROFILE "
        "[--no-index --find-links WHEELS] -o OUT.pyz",
    ]
    for dep in sorted(manifest.dependencies, key=lambda d: d.name):
        lines.append(f"{dep.name}=={dep.version} --hash=sha256:{dep.sha256}")
    return "\n".join(lines) + "\n"



PYLOCK_HINT = ("rebuild the bundle with this sandrun from wheels it can find again (an index, "
               "or --find-links DIR), then lock it")


def pylock_from_manifest(manifest: Manifest, lock_path: Path | None = None) -> str:
    """PEP 751 pylock.toml text naming exactly the wheels of a bundle: each with its
    recorded origin (`url`, or `path`: relative to the lock's directory when the wheel
    is below it), its sha256 and, for a dependency with provenance, the publisher it was
    verified against as `attestation-identities`. `sandrun bundle --lock` takes it back.

    LockFileError for a bundle that records no origins (format 1) or that holds a wheel
    built from a local project (that wheel was never kept anywhere).
    """
    import urllib.parse
    import urllib.request

    label = "the bundle"
    problems: list[Problem] = []
    if manifest.resolution is None:
        problems.append(Problem(label, f"manifest format {manifest.format} records no "
                                "origins, so the lock could not say where its wheels are",
                                PYLOCK_HINT))
    base = lock_path.resolve().parent if lock_path is not None else None
    target = manifest.target
    lines = [
        f"# PEP 751 lock file of {manifest.app_name} {manifest.app_version}, written by "
        f"sandrun {__version__}",
        f"# from the bundle manifest sha256 {manifest.digest()}.",
        f"# Made for Python {target.python} ({target.abi}) on {_main_platform(target)}; "
        "rebuild with",
        "#   sandrun bundle --lock THIS_FILE "
        + (f"-c {manifest.console_script}" if manifest.console_script
           else f"-e {manifest.entry_point}")
        + f" --name {manifest.app_name} -p PROFILE -o OUT.pyz",
        'lock-version = "1.0"',
        'created-by = "sandrun"',
        f"requires-python = {_toml(f'=={target.python}.*')}",
        "",
    ]
    for dep in sorted(manifest.dependencies, key=lambda d: d.name):
        origin = dep.origin
        where = f"{dep.name} {dep.version}"
        if manifest.resolution is None:
            continue
        if origin is None or origin.startswith("project:"):
            problems.append(Problem(where, f"was built from the local project "
                                    f"{(origin or '')[len('project:'):]!r}, and that wheel is "
                                    "not kept anywhere a lock file could name",
                                    "build the project into a wheelhouse (`pip wheel --no-deps "
                                    "-w DIR PROJECT`), bundle with --find-links DIR, then lock"))
            continue
        location: tuple[str, str]
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme == "file":
            path = Path(urllib.request.url2pathname(parts.path))
            if base is not None and path.is_relative_to(base):
                location = ("path", path.relative_to(base).as_posix())
            else:
                location = ("path", path.as_posix())
        else:
            location = ("url", origin)
        wheel = (f"{{ name = {_toml(dep.wheel)}, {location[0]} = {_toml(location[1])}, "
                 f"hashes = {{ sha256 = {_toml(dep.sha256)} }} }}")
        lines += ["[[packages]]", f"name = {_toml(dep.name)}", f"version = {_toml(dep.version)}",
                  f"wheels = [{wheel}]"]
        if dep.provenance is not None:
            identity = ", ".join(f"{key} = {_toml(value)}" for key, value in
                                 sorted(dep.provenance.publisher.items(),
                                        key=lambda kv: (kv[0] != "kind", kv[0])))
            lines.append(f"attestation-identities = [{{ {identity} }}]")
        lines.append("")
    if problems:
        count = len(problems)
        raise LockFileError(f"cannot write a pylock.toml for this bundle ({count} problem"
                            f"{'s' if count != 1 else ''})", problems)
    return "\n".join(lines)


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, with ASCII-only output)."""
    import json

    return json.dumps(value, ensure_ascii=True)


def _main_platform(target: Target) -> str:
    return next((p for p in target.platforms if p.startswith("manylinux")), target.platforms[0])
