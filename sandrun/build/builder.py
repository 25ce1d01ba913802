"""`sandrun bundle`: resolve wheels only, freeze them with shiv, embed manifest and profile.

Build time is unprivileged and deterministic: the same inputs give the same
bytes whatever the working directory, umask, clock or staging path.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from sandrun import __version__
from sandrun.build import bootstrap
from sandrun.build.wheels import Wheel, check_target, install_wheel, read_wheel
from sandrun.bundle.manifest import (
    BOOTSTRAP_NAME,
    MANIFEST_NAME,
    MAX_SOURCE_DATE_EPOCH,
    MIN_SOURCE_DATE_EPOCH,
    PLATFORM_RE,
    PROFILE_NAME,
    SBOM_NAME,
    TARGET_PYTHON_RE,
    Dependency,
    EntryRecord,
    Manifest,
    Target,
    app_name_problem,
    console_script_problem,
    entry_point_problem,
    manifest_field_problems,
    normalise_mode,
)
from sandrun.errors import BundleError, ResolveError, UsageError

# zip cannot store times before 1980; shiv uses the same default.
DEFAULT_SOURCE_DATE_EPOCH = MIN_SOURCE_DATE_EPOCH
PREAMBLE = b"#!/usr/bin/env python3\n"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BundleRequest:
    output: Path
    requirements: tuple[str, ...] = ()
    requirement_files: tuple[Path, ...] = ()
    entry_point: str | None = None
    console_script: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    index_url: str | None = None
    profile: str = "default"
    name: str | None = None
    python_version: str | None = None
    platforms: tuple[str, ...] = ()
    source_date_epoch: int | None = None
    lock: Path | None = None  # PEP 751 pylock.toml: exactly its wheels, no resolution


@dataclass(frozen=True)
class BundleResult:
    path: Path
    sha256: str
    manifest: Manifest
    warnings: tuple[str, ...] = field(default=())


def _quiet(_: str) -> None:
    pass


def build_bundle(request: BundleRequest, progress: Progress = _quiet,
                 warn: Progress = _quiet) -> BundleResult:
    """Build the bundle described by `request`; raise a SandrunError on any problem."""
    _check_request(request)
    from sandrun.config.profile import load_profile, render_toml  # validated before any work

    profile_text = render_toml(load_profile(request.profile))
    target, supported = _target(request)
    epoch = _source_date_epoch(request)

    with tempfile.TemporaryDirectory(prefix="sandrun-build-") as tmp:
        work = Path(tmp)
        wheelhouse = work / "wheels"
        wheelhouse.mkdir()
        local = _build_local_projects(request, work / "local", epoch, progress, warn)
        if request.lock is not None:
            progress(f"selecting wheels from {request.lock}")
            _fetch_locked(request.lock, wheelhouse, target, supported, progress)
        else:
            progress("resolving wheels")
            _download(request, wheelhouse, local, target)
        wheels = sorted((read_wheel(p) for p in wheelhouse.glob("*.whl")),
                        key=lambda w: w.name)
        if not wheels:
            raise ResolveError("no wheels were resolved", "give at least one requirement")
        site_packages = work / "site-packages"
        site_packages.mkdir()
        target_text = f"cp{target.python.replace('.', '')} on {target.platforms[0]}"
        for wheel in wheels:
            progress(f"installing {wheel.filename}")
            check_target(wheel, supported, target_text)
            install_wheel(wheel, site_packages, warn=warn, python_version=target.python)

        entry_point, console_script, provider = _entry_point(request, site_packages, wheels)
        app_name = request.name or console_script or entry_point.split(":")[0].split(".")[0]
        app_name = app_name.lower().replace("_", "-")
        problem = app_name_problem(app_name)
        if problem:
            raise UsageError(f"app name {problem}; it becomes the user name sandrun-<name> "
                             "and the name of the app's state dir",
                             "pass --name with 1-24 characters of a-z, 0-9, '.', '_' or '-'")
        app_version = provider.version if provider else "0"
        if request.name:  # `--name httpbin` for gunicorn serving httpbin: httpbin's version
            named = next((w for w in wheels if canonicalize_name(w.name) == app_name), None)
            if named is not None:
                app_version = named.version

        progress("building the zipapp with shiv")
        shiv_pyz = work / "shiv.pyz"
        _shiv_archive(site_packages, shiv_pyz, entry_point, console_script, epoch)

        progress("hashing entries")
        files = _normalised_entries(shiv_pyz)
        files[PROFILE_NAME] = (profile_text.encode("utf-8"), 0o644)
        files[BOOTSTRAP_NAME] = (bootstrap.render(app_name, entry_point), 0o644)
        progress("writing the SBOM")
        files[SBOM_NAME] = (_sbom(app_name, app_version, entry_point, console_script, provider,
                                  wheels, target, epoch, warn), 0o644)
        entries = {name: EntryRecord(hashlib.sha256(data).hexdigest(), len(data), mode)
                   for name, (data, mode) in sorted(files.items())}
        manifest = Manifest(
            app_name=app_name, app_version=app_version, entry_point=entry_point,
            console_script=console_script, target=target, source_date_epoch=epoch,
            preamble_sha256=hashlib.sha256(PREAMBLE).hexdigest(),
            dependencies=tuple(Dependency(w.name, w.version, w.filename, w.sha256)
                               for w in wheels),
            entries=entries, sandrun_version=__version__)
        # Never write a manifest that `sandrun verify` would refuse.
        problems = manifest_field_problems(manifest.to_json_obj())
        if problems:
            raise BundleError("the manifest would be invalid:\n" + "\n".join(
                f"    {p}" for p in problems), "fix the inputs named above")
        ordered = [(name, data, mode) for name, (data, mode) in sorted(files.items())]
        ordered.append((MANIFEST_NAME, manifest.to_bytes(), 0o644))
        sha256 = _write_atomically(request.output, ordered, epoch)
    return BundleResult(request.output, sha256, manifest)


def _check_request(request: BundleRequest) -> None:
    if bool(request.entry_point) == bool(request.console_script):
        raise UsageError("give exactly one of --entry-point and --console-script",
                         "e.g. -c gunicorn, or -e myapp.main:run")
    if request.entry_point and entry_point_problem(request.entry_point):
        raise UsageError(f"--entry-point {request.entry_point!r} is not MODULE:FUNCTION",
                         "e.g. -e myapp.main:run")
    if request.console_script and console_script_problem(request.console_script):
        raise UsageError(f"--console-script {request.console_script!r} is not a console "
                         "script name", "e.g. -c gunicorn")
    if request.lock is not None:
        if request.requirements or request.requirement_files:
            raise UsageError("--lock cannot be combined with requirements or -r",
                             "the lock file already names every wheel: give only --lock, or "
                             "drop --lock to resolve requirements")
        if request.find_links or request.index_url:
            # Silently ignoring them would suggest they were used.
            raise UsageError("--find-links and --index-url have no effect with --lock",
                             "the lock file names every wheel's path or URL; drop them")
        try:
            request.lock.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read lock file {request.lock}: {exc.strerror}",
                             "check the path and its permissions") from None
    elif not request.requirements and not request.requirement_files:
        raise UsageError("nothing to bundle",
                         "give requirements, a project dir, -r FILE or --lock pylock.toml")
    out_dir = request.output.parent
    if not out_dir.is_dir():
        raise UsageError(f"output directory {out_dir} does not exist",
                         "create it first or choose another --output")
    for req_file in request.requirement_files:
        try:
            req_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read requirement file {req_file}: {exc.strerror}",
                             "check the path and its permissions") from None


def _source_date_epoch(request: BundleRequest) -> int:
    if request.source_date_epoch is not None:
        epoch = request.source_date_epoch
    else:
        raw = os.environ.get("SOURCE_DATE_EPOCH")
        if raw is None:
            return DEFAULT_SOURCE_DATE_EPOCH
        try:
            epoch = int(raw)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                             "set it to seconds since 1970, e.g. $(git log -1 --format=%ct)"
                             ) from None
    if epoch > MAX_SOURCE_DATE_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch} is after 2107, the last date a zip can "
                         "store", "set it to seconds since 1970, e.g. $(git log -1 --format=%ct)")
    return max(epoch, DEFAULT_SOURCE_DATE_EPOCH)


def _target(request: BundleRequest) -> tuple[Target, list[Any]]:
    from packaging import tags

    if request.python_version:
        if not TARGET_PYTHON_RE.match(request.python_version):
            raise UsageError(f"--python-version {request.python_version!r} is not 3.N",
                             "e.g. --python-version 3.11")
        major, minor = (int(x) for x in request.python_version.split("."))
    else:
        major, minor = sys.version_info[:2]
    for platform in request.platforms:
        if not PLATFORM_RE.match(platform):
            raise UsageError(f"--platform {platform!r} is not a platform tag",
                             "e.g. --platform manylinux_2_17_x86_64 (lower case, '_' "
                             "between the parts)")
    platforms = list(dict.fromkeys(request.platforms)) or list(tags.platform_tags())
    abi = f"cp{major}{minor}"
    supported = [*tags.cpython_tags((major, minor), abis=[abi], platforms=platforms),
                 *tags.compatible_tags((major, minor), interpreter=abi, platforms=platforms)]
    return Target(f"{major}.{minor}", "cp", abi, tuple(platforms)), supported


def _pip(args: Sequence[str], epoch: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if epoch is not None:  # wheel builders date their zip entries with it
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, check=False)


def _build_local_projects(request: BundleRequest, dest: Path, epoch: int,
                          progress: Progress, warn: Progress) -> list[Path]:
    """Build local project directories given as REQ into wheels."""
    wheels: list[Path] = []
    for req in request.requirements:
        path = Path(req)
        if not (path.is_dir() and ((path / "pyproject.toml").exists()
                                   or (path / "setup.py").exists())):
            continue
        if os.geteuid() == 0:
            warn(f"building {path} as root: its build backend is unreviewed code running as "
                 "root; build bundles as an unprivileged user")
        progress(f"building a wheel of {path}")
        dest.mkdir(exist_ok=True)
        before = set(dest.glob("*.whl"))
        # Build from a fresh copy: setuptools writes build/ and *.egg-info into the source
        # dir and packages a stale build/lib, so building in place leaks old files into the
        # bundle and breaks "same inputs, same bytes". An absolute path, because pip takes
        # a bare "proj" for a package name.
        source = dest.parent / f"src-{len(wheels)}-{path.resolve().name}"
        shutil.copytree(path, source, symlinks=True, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", "*.pyc", ".venv", ".tox", ".nox"))
        proc = _pip(["wheel", "--no-deps", "-q", "--wheel-dir", str(dest),
                     *_index_args(request), str(source.resolve())], epoch)
        if proc.returncode != 0:
            raise BundleError(f"building a wheel of the project {path} failed:\n"
                              f"{_pip_errors(proc.stderr)}",
                              "fix the project's build (try `pip wheel` in it)")
        wheels += sorted(set(dest.glob("*.whl")) - before)
    return wheels


def _index_args(request: BundleRequest) -> list[str]:
    args: list[str] = []
    for link in request.find_links:
        args += ["--find-links", link]
    if request.no_index:
        args.append("--no-index")
    if request.index_url:
        args += ["--index-url", request.index_url]
    return args


def _download(request: BundleRequest, dest: Path, local: list[Path], target: Target) -> None:
    args = ["download", "--only-binary=:all:", "--dest", str(dest), "--progress-bar", "off",
            *_index_args(request)]
    if request.python_version or request.platforms:
        args += ["--python-version", target.python, "--implementation", "cp",
                 "--abi", target.abi]
        for platform in target.platforms:
            args += ["--platform", platform]
    for req_file in request.requirement_files:
        args += ["-r", str(req_file)]
    local_projects = {str(Path(r)) for r in request.requirements if Path(r).is_dir()}
    for req in request.requirements:
        if str(Path(req)) in local_projects:
            continue
        args.append(str(Path(req).resolve()) if req.endswith(".whl") else req)
    args += [str(p) for p in local]
    proc = _pip(args)
    if proc.returncode != 0:
        raise _explain_pip_failure(proc.stderr, target)


def _fetch_locked(lock: Path, dest: Path, target: Target, supported: list[Any],
                  progress: Progress) -> None:
    from sandrun.build.lockfile import fetch_wheels, select_wheels

    locked = select_wheels(lock, target, supported)
    fetch_wheels(locked, dest, progress)


def _sbom(app_name: str, app_version: str, entry_point: str, console_script: str | None,
          provider: Wheel | None, wheels: list[Wheel], target: Target, epoch: int,
          warn: Progress) -> bytes:
    from sandrun.build.sbom import build_sbom

    return build_sbom(app_name=app_name, app_version=app_version, entry_point=entry_point,
                      console_script=console_script,
                      provider=provider.name if provider else None, wheels=wheels,
                      target=target, source_date_epoch=epoch, warn=warn)


def _pip_errors(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines[-5:]
    return "\n".join(f"    {ln}" for ln in errors)


def _explain_pip_failure(stderr: str, target: Target) -> ResolveError:
    missing = re.findall(r"No matching distribution found for (\S+)", stderr)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        return ResolveError(
            f"no wheel of {names} fits the target (Python {target.python}, "
            f"{target.platforms[0]}): sandrun installs wheels only, so no dependency's "
            "setup.py ever runs",
            f"the project may publish only an sdist: build a wheel of {names} yourself "
            "(`pip wheel --no-deps NAME`), review it, and pass it with --find-links DIR")
    if "DO NOT MATCH THE HASHES" in stderr or "Hashes are required" in stderr:
        detail = "\n".join(f"    {ln.strip()}" for ln in stderr.splitlines()
                           if ln.strip() and not ln.startswith(("WARNING", "DEPRECATION")))
        return ResolveError(f"hash checking failed:\n{detail}",
                            "every requirement must carry a --hash that matches its wheel; "
                            "regenerate the pins (e.g. pip-compile --generate-hashes)")
    return ResolveError(f"resolving the requirements failed:\n{_pip_errors(stderr)}",
                        "check the requirement names and the index options")


def _dist_infos(site_packages: Path) -> list[Path]:
    return sorted(site_packages.glob("*.dist-info"))


def _entry_point(request: BundleRequest, site_packages: Path,
                 wheels: list[Wheel]) -> tuple[str, str | None, Wheel | None]:
    by_name = {w.name: w for w in wheels}

    def provider_of(dist_info: Path) -> Wheel | None:
        from packaging.utils import canonicalize_name

        project = dist_info.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        return by_name.get(canonicalize_name(project))

    if request.console_script:
        found: list[str] = []
        for dist_info in _dist_infos(site_packages):
            eps = dist_info / "entry_points.txt"
            if not eps.exists():
                continue
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read(eps, encoding="utf-8")
            if parser.has_section("console_scripts"):
                scripts = dict(parser.items("console_scripts"))
                found += scripts
                if request.console_script in scripts:
                    value = _object_reference(scripts[request.console_script])
                    problem = entry_point_problem(value)
                    if problem:
                        raise BundleError(
                            f"console script {request.console_script!r} of {dist_info.name} "
                            f"points to an object sandrun cannot run: {problem}",
                            "bundle with -e MODULE:FUNCTION instead")
                    return value, request.console_script, provider_of(dist_info)
        hint = (f"available: {', '.join(sorted(found))}" if found
                else "no installed distribution declares console scripts; use -e MOD:FUNC")
        raise BundleError(f"console script {request.console_script!r} is not provided by any "
                          "bundled distribution", hint)
    assert request.entry_point is not None
    top = request.entry_point.split(":")[0].split(".")[0]
    if not ((site_packages / top).is_dir() or (site_packages / f"{top}.py").exists()
            or any(site_packages.glob(f"{top}.*.so"))):
        raise BundleError(f"entry point module {top!r} is not in any bundled distribution",
                          "add the project that provides it to the requirements")
    for dist_info in _dist_infos(site_packages):
        record = dist_info / "RECORD"
        if record.exists() and any(line.startswith((f"{top}/", f"{top}.py", f"{top}."))
                                   for line in record.read_text("utf-8").splitlines()):
            return request.entry_point, None, provider_of(dist_info)
    return request.entry_point, None, None


def _object_reference(value: str) -> str:
    """`module.path:attr` of an entry point value, without extras and the spaces the
    entry point specification allows around the colon."""
    module, colon, attr = value.split("[")[0].partition(":")
    return f"{module.strip()}{colon}{attr.strip()}"


def _shiv_archive(site_packages: Path, target: Path, entry_point: str,
                  console_script: str | None, epoch: int) -> None:
    import shiv
    from shiv.bootstrap.environment import Environment
    from shiv.builder import create_archive
    from shiv.constants import BUILD_AT_TIMESTAMP_FORMAT

    env = Environment(
        built_at=time.strftime(BUILD_AT_TIMESTAMP_FORMAT, time.gmtime(epoch)),
        shiv_version=shiv.__version__, entry_point=entry_point, script=None,
        reproducible=True, compile_pyc=False)
    create_archive([site_packages], target, "/usr/bin/env python3", "_bootstrap:bootstrap",
                   env, compressed=True)


def _normalised_entries(shiv_pyz: Path) -> dict[str, tuple[bytes, int]]:
    """Read shiv's archive back and normalise every mode.

    This is our own fresh temp file, so zipfile is fine here; the strict parser is
    for bundles that come from outside (verify, exec).
    """
    import zipfile

    with zipfile.ZipFile(shiv_pyz) as zf:
        return {i.filename: (zf.read(i), normalise_mode(i.external_attr >> 16))
                for i in zf.infolist() if not i.is_dir()}


def _write_atomically(output: Path, files: list[tuple[str, bytes, int]], epoch: int) -> str:
    from sandrun.bundle.archive import write_archive

    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "w+b") as out:
            write_archive(out, PREAMBLE, files, date_time=time.gmtime(epoch)[:6])
            out.flush()
            os.fsync(out.fileno())
            out.seek(0)
            digest = hashlib.sha256()
            for chunk in iter(lambda: out.read(1 << 20), b""):
                digest.update(chunk)
        os.chmod(tmp_name, 0o444)
        os.replace(tmp_name, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return digest.hexdigest()
