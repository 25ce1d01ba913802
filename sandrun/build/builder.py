"""`sandrun bundle`: resolve wheels only, freeze them with shiv, embed manifest and profile.

Build time is unprivileged and deterministic: the same inputs give the same
bytes whatever the working directory, umask, clock or staging path.

Resolution is hermetic: pip runs with `--isolated` and PIP_CONFIG_FILE=/dev/null, and
without the PIP_* variables, so neither /etc/pip.conf, a user's pip.conf nor the
environment can add an index, find-links or constraints (`--use-pip-config` lets them,
and says so). pip only resolves (`pip install --dry-run --report`); its report names the
URL of every wheel, each is checked to come from the indexes and find-links pip
searched (which its "Looking in ..." lines name), and the manifest and SBOM record
them, the resolver and each wheel's origin. Wheels are then taken from exactly those
URLs, checked against the sha256 the resolution saw.

Nothing is built but the local project directories given as requirements (on purpose,
first). `--only-binary=:all:` does not stop pip from building a direct reference
(`x @ file:///dir`, an sdist or VCS URL, in a wheel's metadata or a -r file), an editable
or what a `--no-binary` line in a -r file lets through, so: such requirements on the
command line or in -r files are refused before anything runs; pip runs through
pipguard.py, which refuses to prepare anything but a wheel file (and refuses to run a pip
it cannot guard); and a direct reference in a resolved wheel's metadata is refused unless
it names exactly a wheel file the user named. pip runs under `python -I`, so neither
PYTHON* variables nor a `pip.py` in the working directory reach it.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import hashlib
import json
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
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from sandrun import __version__
from sandrun.build import bootstrap
from sandrun.build.wheels import Wheel, check_target, install_wheel, read_wheel
from sandrun.bundle.manifest import (
    BOOTSTRAP_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_SOURCE_DATE_EPOCH,
    MIN_SOURCE_DATE_EPOCH,
    PLATFORM_RE,
    PROFILE_NAME,
    SBOM_NAME,
    TARGET_PYTHON_RE,
    Dependency,
    DependencyProvenance,
    EntryRecord,
    Manifest,
    Resolution,
    Target,
    app_name_problem,
    console_script_problem,
    entry_point_problem,
    manifest_field_problems,
    normalise_mode,
    provenance_entry_name,
)
from sandrun.errors import BundleError, Problem, ResolveError, UsageError

if TYPE_CHECKING:
    from sandrun.supply.provenance import ProvenancePolicy, Publisher

# zip cannot store times before 1980; shiv uses the same default.
DEFAULT_SOURCE_DATE_EPOCH = MIN_SOURCE_DATE_EPOCH
PREAMBLE = b"#!/usr/bin/env python3\n"
PYPI_SIMPLE = "https://pypi.org/simple"
INDEX_TIMEOUT = 30.0

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
    use_pip_config: bool = False  # let pip read its config files and PIP_* variables
    provenance_dir: Path | None = None  # <wheel file name>.provenance files (PEP 740)
    trust: Path | None = None  # trust policy: its [provenance] pins and requirements
    # `sandrun dev`/`test`: a project source dir the bootstrap puts first on sys.path (the
    # entry point lives there, not in the bundled wheels: no entry point check at build).
    dev_source: str | None = None


@dataclass(frozen=True)
class BundleResult:
    path: Path
    sha256: str
    manifest: Manifest
    warnings: tuple[str, ...] = field(default=())

    @property
    def resolution(self) -> Resolution:
        assert self.manifest.resolution is not None  # every bundle built here has one
        return self.manifest.resolution


def _quiet(_: str) -> None:
    pass


def build_bundle(request: BundleRequest, progress: Progress = _quiet,
                 warn: Progress = _quiet) -> BundleResult:
    """Build the bundle described by `request`; raise a SandrunError on any problem."""
    _check_request(request)
    if request.lock is None:
        _refuse_source_requirements(request)
    from sandrun.config.profile import load_profile, render_toml  # validated before any work

    profile_text = render_toml(load_profile(request.profile))
    target, supported = _target(request)
    epoch = _source_date_epoch(request)
    policy = None
    if request.trust is not None:
        from sandrun.supply.provenance import load_provenance_policy

        policy = load_provenance_policy(request.trust)
    if request.use_pip_config:
        warn("--use-pip-config: pip reads its configuration files and PIP_* environment "
             "variables; the indexes and find-links they add are recorded in the bundle")

    with tempfile.TemporaryDirectory(prefix="sandrun-build-") as tmp:
        work = Path(tmp)
        wheelhouse = work / "wheels"
        wheelhouse.mkdir()
        local = _build_local_projects(request, work / "local", epoch, progress, warn)
        lock_pins: dict[str, tuple[Publisher, ...]] = {}
        if request.lock is not None:
            progress(f"selecting wheels from {request.lock}")
            origins, resolution, lock_pins = _fetch_locked(request.lock, wheelhouse, target,
                                                           supported, progress)
        else:
            progress("resolving wheels")
            resolved, resolution = _resolve(request, work, local, target)
            progress("fetching wheels")
            origins = _fetch_resolved(request, resolved, work, wheelhouse, target)
        wheels = sorted((read_wheel(p) for p in wheelhouse.glob("*.whl")),
                        key=lambda w: w.name)
        if not wheels:
            raise ResolveError("no wheels were resolved", "give at least one requirement")
        provenance = _provenance(request, wheels, origins, resolution, lock_pins, policy,
                                 progress, warn)
        site_packages = work / "site-packages"
        site_packages.mkdir()
        target_text = f"cp{target.python.replace('.', '')} on {target.platforms[0]}"
        for wheel in wheels:
            progress(f"installing {wheel.filename}")
            check_target(wheel, supported, target_text)
            install_wheel(wheel, site_packages, warn=warn, python_version=target.python)

        entry_point, console_script, provider = _entry_point(request, site_packages, wheels)
        if request.dev_source is None:  # a dev bundle's module is in the project's tree
            _check_entry_object(entry_point, console_script, site_packages)
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
        files[BOOTSTRAP_NAME] = (bootstrap.render(app_name, entry_point,
                                                  dev_source=request.dev_source), 0o644)
        progress("writing the SBOM")
        dependencies = tuple(
            Dependency(w.name, w.version, w.filename, w.sha256, origin=origins[w.filename],
                       provenance=provenance[w.filename][1] if w.filename in provenance
                       else None)
            for w in wheels)
        for data, record in provenance.values():
            files[record.entry] = (data, 0o644)
        files[SBOM_NAME] = (_sbom(app_name, app_version, entry_point, console_script, provider,
                                  wheels, target, epoch, warn, resolution, dependencies),
                            0o644)
        entries = {name: EntryRecord(hashlib.sha256(data).hexdigest(), len(data), mode)
                   for name, (data, mode) in sorted(files.items())}
        manifest = Manifest(
            app_name=app_name, app_version=app_version, entry_point=entry_point,
            console_script=console_script, target=target, source_date_epoch=epoch,
            preamble_sha256=hashlib.sha256(PREAMBLE).hexdigest(),
            dependencies=dependencies, entries=entries, sandrun_version=__version__,
            format=FORMAT_VERSION, resolution=resolution)
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
        if request.find_links or request.index_url or request.use_pip_config:
            # Silently ignoring them would suggest they were used.
            raise UsageError("--find-links, --index-url and --use-pip-config have no effect "
                             "with --lock",
                             "the lock file names every wheel's path or URL; drop them")
        try:
            request.lock.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read lock file {request.lock}: {exc.strerror}",
                             "check the path and its permissions") from None
    elif not request.requirements and not request.requirement_files:
        raise UsageError("nothing to bundle",
                         "give requirements, a project dir, -r FILE or --lock pylock.toml")
    if request.provenance_dir is not None and not request.provenance_dir.is_dir():
        raise UsageError(f"--provenance {request.provenance_dir} is not a directory",
                         "give a directory of <wheel file name>.provenance files")
    out_dir = request.output.parent
    try:
        out_dir_exists = out_dir.is_dir()
    except OSError as exc:  # e.g. EACCES on a parent
        raise UsageError(f"cannot reach output directory {out_dir}: {exc.strerror}",
                         "choose another --output") from None
    if not out_dir_exists:
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


def _pip_command(request: BundleRequest, args: Sequence[str], refusals: str) -> list[str]:
    """pip through sandrun's guard (pipguard.py), under `python -I`: neither PYTHON*
    variables nor the working directory (where a `pip.py` of another user may wait) reach
    sys.path; pip is imported from the directory this process imports it from.
    `refusals`: the file the guard records refused source builds in, or BUILDS_ALLOWED."""
    from sandrun.build.pipguard import __file__ as guard

    isolation = [] if request.use_pip_config else ["--isolated"]
    return [sys.executable, "-I", os.path.abspath(guard), _pip_parent(), refusals, "--",
            *isolation, "--disable-pip-version-check", *args]


def _pip_parent() -> str:
    """The directory holding the pip package this process would import."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ResolveError("pip is not installed for this Python "
                           f"({sys.executable})", "install pip >= 23.0 next to sandrun")
    return os.path.dirname(os.path.realpath(locations[0]))


def _pip_env(request: BundleRequest, epoch: int | None = None) -> dict[str, str]:
    """pip's environment: without any PIP_* variable and with PIP_CONFIG_FILE=/dev/null
    (which makes pip skip every configuration file: global, user and site), unless
    --use-pip-config. `--isolated` alone would still read /etc/pip.conf."""
    if request.use_pip_config:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PIP_REQUIRE_VIRTUALENV")}
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    if epoch is not None:  # wheel builders date their zip entries with it
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def _pip(request: BundleRequest, args: Sequence[str], epoch: int | None = None, *,
         builds_allowed: bool = False) -> subprocess.CompletedProcess[str]:
    """Run pip. Unless `builds_allowed` (only for the local projects the user gave), pip
    runs guarded: preparing anything that is not a wheel file (a direct reference to a
    directory, an sdist or a VCS URL, an editable) is refused before it is fetched or
    built, and raised here as a BundleError."""
    from sandrun.build.pipguard import BUILDS_ALLOWED, GUARD_MISSING, MISSING_PREFIX

    if builds_allowed:
        return subprocess.run(_pip_command(request, args, BUILDS_ALLOWED), capture_output=True,
                              text=True, env=_pip_env(request, epoch),
                              stdin=subprocess.DEVNULL, check=False)
    with tempfile.TemporaryDirectory(prefix="sandrun-pip-") as tmp:
        refusals = Path(tmp, "refusals.jsonl")
        proc = subprocess.run(_pip_command(request, args, str(refusals)), capture_output=True,
                              text=True, env=_pip_env(request, epoch),
                              stdin=subprocess.DEVNULL, check=False)
        refused = _read_text(refusals)
    if refused:
        raise _source_build_refused(refused)
    if proc.returncode == GUARD_MISSING and MISSING_PREFIX in proc.stderr:
        detail = proc.stderr.split(MISSING_PREFIX, 1)[1].strip()
        raise ResolveError(f"refusing to run pip unguarded: {detail}",
                           "sandrun keeps pip from building dependencies by guarding the "
                           "place it prepares them, which this pip lacks; install a pip it "
                           "supports (23.1 to 26 are known to work) next to sandrun")
    return proc


def _source_build_refused(refused: str) -> BundleError:
    """The BundleError for what the guard refused (JSON lines: parent, name, url)."""
    lines: list[str] = []
    names: list[str] = []
    for line in refused.splitlines():
        try:
            entry = json.loads(line)
            parent, name, url = (str(entry[k]) for k in ("parent", "name", "url"))
        except (ValueError, KeyError, TypeError):
            continue
        lines.append(_not_a_wheel(_requirer(parent), name, url))
        names.append(name or url)
    if not lines:
        lines.append("pip was asked to build a dependency, which is not a wheel")
    return BundleError("\n".join(lines), _not_a_wheel_hint(names))


def _requirer(parent: str) -> str:
    """pip's "comes from" in words: a requirement file line, the command line, or a
    dependency as the guard names it."""
    if not parent:
        return "the command line"
    if parent.startswith(("-r ", "-c ")):
        return f"the {'requirement' if parent[1] == 'r' else 'constraint'} file {parent[3:]}"
    return parent


def _not_a_wheel(requirer: str, name: str, url: str) -> str:
    what = f"{name} @ {url}" if name else url
    return (f"{requirer} requires {what}, which is not a wheel: sandrun bundles wheels "
            "only and never builds dependencies")


def _not_a_wheel_hint(names: Sequence[str]) -> str:
    which = ", ".join(dict.fromkeys(names)) or "it"
    return (f"build a wheel of {which} yourself (`pip wheel --no-deps ...`), review it, and "
            "pass the wheel file (or --find-links DIR); a local project directory given on "
            "the command line is built on purpose")


def _build_local_projects(request: BundleRequest, dest: Path, epoch: int,
                          progress: Progress, warn: Progress) -> list[tuple[Path, str]]:
    """Build local project directories given as REQ into wheels: (wheel, REQ as given)."""
    wheels: list[tuple[Path, str]] = []
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
        proc = _pip(request, ["wheel", "--no-deps", "-q", "--wheel-dir", str(dest),
                              *_index_args(request), str(source.resolve())], epoch,
                    builds_allowed=True)
        if proc.returncode != 0:
            raise BundleError(f"building a wheel of the project {path} failed:\n"
                              f"{_pip_errors(proc.stderr)}",
                              "fix the project's build (try `pip wheel` in it)")
        wheels += [(w, req) for w in sorted(set(dest.glob("*.whl")) - before)]
    return wheels


def _index_args(request: BundleRequest, *, name_default_index: bool = False) -> list[str]:
    args: list[str] = []
    for link in request.find_links:
        args += ["--find-links", link]
    if request.no_index:
        args.append("--no-index")
    if request.index_url:
        args += ["--index-url", request.index_url]
    elif name_default_index and not request.no_index and not request.use_pip_config:
        # pip names its indexes ("Looking in indexes: ...") unless it uses exactly PyPI's
        # default URL: this spelling of the same index makes it say so.
        args += ["--index-url", f"{PYPI_SIMPLE}/"]
    return args


def _target_args(request: BundleRequest, target: Target) -> list[str]:
    if not (request.python_version or request.platforms):
        return []
    args = ["--python-version", target.python, "--implementation", "cp", "--abi", target.abi]
    for platform in target.platforms:
        args += ["--platform", platform]
    return args


@dataclass(frozen=True)
class _Resolved:
    """A wheel pip's resolution chose, and where it is to be taken from."""

    name: str
    version: str
    filename: str
    url: str  # without fragment
    sha256: str | None  # what pip saw (from the index, or hashed from the local file)
    origin: str  # what the manifest records
    local: Path | None  # the file of a file: URL


def _resolve(request: BundleRequest, work: Path, local: list[tuple[Path, str]],
             target: Target) -> tuple[list[_Resolved], Resolution]:
    """Let pip resolve (only: `install --dry-run --report`, guarded: it builds nothing),
    refuse direct references in the resolved wheels' metadata that the user did not name,
    then check every wheel's origin against the indexes and find-links pip searched."""
    report = work / "pip-report.json"
    args = ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
            "--report", str(report), "--target", str(work / "unused-target"),
            "--progress-bar", "off", *_index_args(request, name_default_index=True),
            *_target_args(request, target)]
    for req_file in request.requirement_files:
        args += ["-r", str(req_file)]
    local_projects = {str(Path(r)) for r in request.requirements if Path(r).is_dir()}
    for req in request.requirements:
        if str(Path(req)) in local_projects:
            continue
        wheel_path = _local_wheel_path(req)
        args.append(str(Path(wheel_path).resolve()) if wheel_path else req)
    args += [str(p) for p, _ in local]
    proc = _pip(request, args)
    if proc.returncode != 0:
        raise _explain_pip_failure(request, proc.stdout, proc.stderr, target)
    try:
        data = json.loads(report.read_text("utf-8"))
        items = data["install"]
        pip_version = str(data.get("pip_version") or "?")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResolveError(f"pip wrote no usable installation report ({exc})",
                           "sandrun needs pip >= 23.0 (`pip install --report`)") from None
    indexes, find_links = _searched(request, proc.stdout)
    resolution = Resolution(resolver=f"pip {pip_version}", indexes=tuple(indexes),
                            find_links=tuple(find_links), pip_config=request.use_pip_config)
    built = {os.path.realpath(p): f"project:{req}" for p, req in local}
    given = _named_wheel_files(request)
    explicit = _explicit_urls(request)
    chosen = _metadata_direct_references(items, data.get("environment"), given, explicit)
    chosen += _not_wheels(items)
    if chosen:
        raise BundleError("\n".join(chosen), "a wheel's metadata may not choose where a "
                          "dependency comes from: review that wheel, and if you trust it, "
                          "name it yourself on the command line or in a -r file "
                          "(NAME @ URL-of-the-wheel, or the wheel file's path)")
    problems: list[Problem] = []
    resolved = [_origin(item, resolution, built, given, explicit, problems) for item in items]
    if problems:
        raise ResolveError(
            "refusing wheels from outside the recorded sources:\n" + "\n".join(
                f"    {p}" for p in problems) + "\n  searched: " + _describe_sources(resolution),
            "give each location with --find-links or --index-url (or a requirement's URL), so "
            "that the bundle records where its wheels came from")
    return [r for r in resolved if r is not None], resolution


def _searched(request: BundleRequest, stdout: str) -> tuple[list[str], list[str]]:
    """The indexes and find-links pip searched, from its "Looking in ..." lines (which
    include what requirement files and, with --use-pip-config, configuration added)."""
    indexes: list[str] | None = None
    links: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("Looking in indexes: "):
            indexes = [u.strip().rstrip("/") for u in line.split(": ", 1)[1].split(", ")]
        elif line.startswith("Looking in links: "):
            links = [u.strip() for u in line.split(": ", 1)[1].split(", ")]
    if indexes is None:  # pip names no index when it searched none, or only PyPI's default
        no_index = request.no_index or any(
            "--no-index" in _read_text(f) for f in request.requirement_files)
        indexes = [] if (no_index or not request.use_pip_config) else [PYPI_SIMPLE]
    return indexes, links


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def _explicit_urls(request: BundleRequest) -> set[str]:
    """URLs a requirement names itself (`name @ URL`), on the command line or in -r files:
    such a wheel's origin is that requirement, not an index."""
    texts = [*request.requirements, *(_read_text(f) for f in request.requirement_files)]
    found: set[str] = set()
    for text in texts:
        for url in re.findall(r"(?:https?|file)://[^\s;#]+|file:[^\s;#]+", text):
            found.add(url.split("#", 1)[0])
    return found


_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz",
                     ".txz", ".tar")
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|/)")


def _direct_reference(spec: str) -> tuple[str, str] | None:
    """(name or "", URL or path) when the requirement `spec` says where to take it from
    (`name @ URL`, a URL, a path, an archive file name), as pip reads it; None when it
    names a project for pip to look up in the indexes and find-links."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = spec.strip()
    try:
        req = Requirement(text)
    except InvalidRequirement:
        pass
    else:
        if req.url:
            return req.name, req.url
        if not text.lower().endswith(_ARCHIVE_SUFFIXES):
            return None
    return "", text.split(";", 1)[0].strip()  # pip allows "PATH-OR-URL ; MARKER"


def _is_wheel_location(location: str) -> bool:
    """Does the URL or path name a wheel file (not a VCS URL, a directory, an sdist)?"""
    import urllib.parse

    if _URL_START.match(location):
        parts = urllib.parse.urlsplit(location)
        if "+" in parts.scheme:  # git+https:// and the like
            return False
        path = urllib.parse.unquote(parts.path)
        if parts.scheme == "file" and os.path.isdir(path):
            return False
    else:
        path = location
        if os.path.isdir(os.path.expanduser(path)):
            return False
    return path.lower().endswith(".whl")


def _local_wheel_path(req: str) -> str | None:
    """The path of a wheel file given as a requirement (`dist/x-1.0-py3-none-any.whl`),
    None for anything else (a name, `name @ URL`, a URL)."""
    reference = _direct_reference(req)
    if reference is None or reference[0] or _URL_START.match(reference[1]):
        return None
    return reference[1] if _is_wheel_location(reference[1]) else None


def _requirement_references(request: BundleRequest) -> list[tuple[str, str, str, bool]]:
    """The direct references and editables the user gave: (who requires it, name or "",
    URL or path, editable), from the command line (local project directories aside: they
    are built on purpose) and from the -r files and the -r/-c files they include."""
    found: list[tuple[str, str, str, bool]] = []
    for req in request.requirements:
        if Path(req).is_dir():
            continue
        reference = _direct_reference(req)
        if reference is not None:
            found.append(("the command line", *reference, False))
    seen: set[str] = set()
    for req_file in request.requirement_files:
        _requirement_file_references(req_file, "requirement", seen, found)
    return found


def _refuse_source_requirements(request: BundleRequest) -> None:
    """Refuse, before anything runs, what the user gave that would make pip build: a
    direct reference to anything but a wheel file (a directory, an sdist, a VCS URL) and
    every editable."""
    lines: list[str] = []
    names: list[str] = []
    for requirer, name, location, editable in _requirement_references(request):
        if editable:
            lines.append(f"{requirer} requires the editable {location}, which pip would "
                         "build: sandrun bundles wheels only and never builds dependencies")
        elif not _is_wheel_location(location):
            lines.append(_not_a_wheel(requirer, name, _without_credentials(location)))
        else:
            continue
        names.append(name or location)
    if lines:
        raise BundleError("\n".join(lines), _not_a_wheel_hint(names))


def _named_wheel_files(request: BundleRequest) -> set[str]:
    """The real paths of the wheel files the user named by path, on the command line or
    in a -r file (pip takes a relative one from the working directory)."""
    return {os.path.realpath(os.path.expanduser(location))
            for _, name, location, editable in _requirement_references(request)
            if not (name or editable or _URL_START.match(location))
            and _is_wheel_location(location)}


_NESTED_FILE = re.compile(r"^(-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+|(?=[^\s-]))(\S+)")
_EDITABLE = re.compile(r"^(?:-e|--editable)(?:\s*=\s*|\s+|(?=\S))(\S.*)$")


def _requirement_file_references(path: Path, kind: str, seen: set[str],
                                 found: list[tuple[str, str, str, bool]]) -> None:
    """Add the direct references and editables of a requirement file, and of the -r/-c
    files it includes, to `found` as pip reads the lines (continuations joined, comments
    dropped, per-requirement options after the requirement)."""
    import urllib.parse
    import urllib.request

    real = os.path.realpath(path)
    if real in seen or len(seen) >= 100:  # bounded: include cycles and fan-out
        return
    seen.add(real)
    number = 0
    pending = ""
    start = 1
    for number, raw in enumerate(_read_text(path).splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = re.sub(r"(^|\s+)#.*$", "", pending + raw).strip()
        pending = ""
        if not line:
            continue
        requirer = f"the {kind} file {path} (line {start})"
        nested = _NESTED_FILE.match(line)
        if nested:
            target = nested.group(2)
            parts = urllib.parse.urlsplit(target)
            if parts.scheme == "file":
                target = urllib.request.url2pathname(parts.path)
            elif _URL_START.match(target):
                continue  # pip fetches it; the guard refuses what it would build
            _requirement_file_references(
                Path(path).parent / target,
                "requirement" if nested.group(1) in ("-r", "--requirement") else "constraint",
                seen, found)
            continue
        editable = _EDITABLE.match(line)
        if editable:
            found.append((requirer, "", editable.group(1).strip(), True))
            continue
        if line.startswith("-"):
            continue  # an option: --index-url, --find-links, --hash ...
        spec: list[str] = []
        for token in line.split(" "):  # as pip's break_args_options
            if token.startswith("-"):
                break
            spec.append(token)
        reference = _direct_reference(" ".join(spec))
        if reference is not None:
            found.append((requirer, *reference, False))


def _metadata_direct_references(items: Sequence[Any], environment: object, given: set[str],
                                explicit: set[str]) -> list[str]:
    """What the resolved wheels' metadata requires by direct reference (`dep @ URL`),
    where the marker applies (pip's environment, the extras asked of the wheel), unless
    it is exactly a wheel file the user named (on the command line or in a -r file)."""
    import urllib.parse
    import urllib.request

    from packaging.requirements import InvalidRequirement, Requirement

    env = {str(k): str(v) for k, v in environment.items()} \
        if isinstance(environment, dict) else {}
    refused: list[str] = []
    for item in items:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            continue
        parent = f"{meta.get('name')} {meta.get('version')}"
        extras = [str(e) for e in item.get("requested_extras") or []] or [""]
        for spec in meta.get("requires_dist") or []:
            try:
                req = Requirement(str(spec))
            except InvalidRequirement:
                continue
            if req.url is None:
                continue
            if req.marker is not None and not any(
                    req.marker.evaluate({**env, "extra": extra}) for extra in extras):
                continue
            url = req.url.split("#", 1)[0]
            shown = _without_credentials(url)
            if not _is_wheel_location(url):
                refused.append(_not_a_wheel(parent, req.name, shown))
                continue
            parts = urllib.parse.urlsplit(url)
            named = (url in explicit or shown in explicit
                     or (parts.scheme == "file" and os.path.realpath(
                         urllib.request.url2pathname(parts.path)) in given))
            if not named:
                refused.append(f"{parent} requires {req.name} @ {shown}, a wheel that no "
                               "requirement on the command line or in a -r file names")
    return refused


def _not_wheels(items: Sequence[Any]) -> list[str]:
    """Report entries whose file is not a wheel. pip may take a distribution's metadata
    from the index (PEP 658) without preparing it, so the guard alone would not see an
    sdist that, say, a `--no-binary` line let through."""
    import urllib.parse

    refused: list[str] = []
    for item in items:
        info = item.get("download_info") if isinstance(item, dict) else None
        url = str(info.get("url", "")) if isinstance(info, dict) else ""
        if not urllib.parse.unquote(urllib.parse.urlsplit(url).path).lower().endswith(".whl"):
            meta = item.get("metadata") if isinstance(item, dict) else None
            name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
            refused.append(_not_a_wheel("the resolution", name,
                                        _without_credentials(url) or "an unknown location"))
    return refused


def _without_credentials(url: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _local_path(location: str) -> str | None:
    """The real path of a find-links or index location on this machine, or None."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return os.path.realpath(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and location[1:2] == ":"):
        return os.path.realpath(location)
    return None


def _origin(item: Any, resolution: Resolution, built: dict[str, str], given: set[str],
            explicit: set[str], problems: list[Problem]) -> _Resolved | None:
    import urllib.parse
    import urllib.request

    try:
        meta = item["metadata"]
        name, version = canonicalize_name(meta["name"]), str(meta["version"])
        info = item.get("download_info") or {}
        url = str(info.get("url", "")).split("#", 1)[0]
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        sha256 = hashes.get("sha256")
    except (KeyError, TypeError, AttributeError):
        problems.append(Problem("pip report", "an entry without metadata or download URL"))
        return None
    parts = urllib.parse.urlsplit(url)
    filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    where = f"{name} {version} ({filename})"
    direct = bool(item.get("is_direct"))
    if parts.scheme == "file":
        path = os.path.realpath(urllib.request.url2pathname(parts.path))
        if path in built:
            origin = built[path]
        elif (path in given or (direct and url in explicit)
              or _under_local_source(path, resolution)):
            origin = url
        else:
            problems.append(Problem(where, f"comes from {url}, which is in none of the "
                                    "find-links or file indexes pip searched"))
            return None
        return _Resolved(name, version, filename, url, sha256, origin, Path(path))
    if parts.scheme in ("http", "https"):
        clean = _without_credentials(url)
        if direct:
            if url not in explicit and clean not in explicit:
                problems.append(Problem(where, f"is a direct URL ({clean}) that no requirement "
                                        "on the command line or in a -r file names (a "
                                        "dependency's metadata chose it)"))
                return None
        elif not any(urllib.parse.urlsplit(loc).scheme in ("http", "https")
                     for loc in (*resolution.indexes, *resolution.find_links)):
            problems.append(Problem(where, f"comes from {clean}, but pip searched no "
                                    "http(s) index or find-links location"))
            return None
        return _Resolved(name, version, filename, url, sha256, clean, None)
    problems.append(Problem(where, f"comes from {url or 'an unknown location'}, which is "
                            "not an http(s) or file URL"))
    return None


def _under_local_source(path: str, resolution: Resolution) -> bool:
    """Is `path` a file pip may have found through a local find-links location (the file
    itself, or a file directly in the directory) or a file:// index (anything under the
    directory that holds the index)?"""
    for location in resolution.find_links:
        local = _local_path(location)
        if local is not None and (path == local or os.path.dirname(path) == local):
            return True
    for index in resolution.indexes:
        local = _local_path(index) if index.startswith("file:") else None
        if local is not None and path.startswith(os.path.dirname(local) + "/"):
            return True
    return False


def _describe_sources(resolution: Resolution) -> str:
    parts = [f"indexes: {', '.join(resolution.indexes) or 'none'}",
             f"find-links: {', '.join(resolution.find_links) or 'none'}"]
    if resolution.pip_config:
        parts.append("pip configuration read (--use-pip-config)")
    return "; ".join(parts)


def _fetch_resolved(request: BundleRequest, resolved: list[_Resolved], work: Path, dest: Path,
                    target: Target) -> dict[str, str]:
    """Take every resolved wheel from exactly its URL into `dest`, checked against the
    sha256 the resolution saw. Returns wheel file name -> origin."""
    origins: dict[str, str] = {}
    remote: list[_Resolved] = []
    problems: list[Problem] = []
    for wheel in resolved:
        origins[wheel.filename] = wheel.origin
        if wheel.local is None:
            remote.append(wheel)
            continue
        target_path = dest / wheel.filename
        digest = hashlib.sha256()
        try:
            with wheel.local.open("rb") as src, target_path.open("xb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            problems.append(Problem(wheel.url, f"cannot copy: {exc.strerror or exc}"))
            continue
        if wheel.sha256 is not None and digest.hexdigest() != wheel.sha256:
            target_path.unlink()
            problems.append(Problem(wheel.url, f"changed since pip read it (sha256 "
                                    f"{digest.hexdigest()}, pip saw {wheel.sha256})"))
    if remote:
        # pip downloads (through its cache: the resolution fetched them already) exactly
        # these URLs; hash-checked when every one has a known sha256.
        pinned = work / "pinned-urls.txt"
        hashed = all(w.sha256 for w in remote)
        pinned.write_text("".join(
            f"{w.name} @ {w.url}" + (f" --hash=sha256:{w.sha256}" if hashed else "") + "\n"
            for w in remote), "utf-8")
        proc = _pip(request, ["download", "--no-deps", "--no-index", "--only-binary=:all:",
                              "--dest", str(dest), "--progress-bar", "off",
                              *_target_args(request, target), "-r", str(pinned)])
        if proc.returncode != 0:
            raise ResolveError(f"downloading the resolved wheels failed:\n"
                               f"{_pip_errors(proc.stderr)}",
                               "check the network and the index, and try again")
    if problems:
        raise ResolveError("some resolved wheels cannot be used:\n" + "\n".join(
            f"    {p}" for p in problems), "try again; if it persists, check the find-links "
                                           "directories for files being replaced")
    missing = sorted(set(origins) - {p.name for p in dest.glob("*.whl")})
    if missing:
        raise ResolveError(f"pip did not deliver {', '.join(missing)}",
                           "try again; check the index")
    return origins


def _fetch_locked(lock: Path, dest: Path, target: Target, supported: list[Any],
                  progress: Progress
                  ) -> tuple[dict[str, str], Resolution, dict[str, tuple[Publisher, ...]]]:
    """The lock's wheels into `dest`: (file name -> origin, the resolution record, the
    lock's attestation identities by package)."""
    from sandrun.build.lockfile import fetch_wheels, select_wheels

    locked = select_wheels(lock, target, supported)
    fetch_wheels(locked, dest, progress)
    origins = {w.filename: _without_credentials(w.url) if w.url is not None
               else (w.path.resolve().as_uri() if w.path is not None else str(lock))
               for w in locked}
    lock_sha256 = hashlib.sha256(lock.read_bytes()).hexdigest()
    pins: dict[str, tuple[Publisher, ...]] = {
        w.name: w.attestation_identities for w in locked if w.attestation_identities}
    return origins, Resolution(resolver="pylock", lock_sha256=lock_sha256), pins


def _provenance(request: BundleRequest, wheels: list[Wheel], origins: dict[str, str],
                resolution: Resolution, lock_pins: dict[str, tuple[Publisher, ...]],
                policy: ProvenancePolicy | None, progress: Progress, warn: Progress
                ) -> dict[str, tuple[bytes, DependencyProvenance]]:
    """Each wheel's PEP 740 provenance (from --provenance DIR, else from the index when a
    publisher is pinned or provenance required), verified offline against the pinned
    publisher (the policy's, else the lock's) or, unpinned, the one it names. Refuses
    (ProvenanceError) any that does not verify and any required one that is missing."""
    found: dict[str, bytes] = {}
    if request.provenance_dir is not None:
        from sandrun.supply.provenance import read_provenance_file

        names = {w.filename for w in wheels}
        for path in sorted(request.provenance_dir.glob("*.provenance")):
            wheel_name = path.name.removesuffix(".provenance")
            if wheel_name in names:
                found[wheel_name] = read_provenance_file(path)
            else:
                warn(f"{path}: no bundled wheel is named {wheel_name}; not used")
    if not found and policy is None and not lock_pins:
        return {}
    from sandrun.supply.provenance import ProvenanceError, verify_provenance

    problems: list[Problem] = []
    result: dict[str, tuple[bytes, DependencyProvenance]] = {}
    for wheel in wheels:
        pins = (policy.pins_for(wheel.name) if policy is not None else ()) or \
            lock_pins.get(wheel.name, ())
        required = policy is not None and policy.requires(wheel.name)
        data = found.get(wheel.filename)
        if data is None and (pins or required):
            data = _index_provenance(resolution.indexes, wheel, origins[wheel.filename])
        if data is None:
            if required:
                assert policy is not None
                problems.append(Problem(wheel.filename, f"has no provenance, and {policy.source}"
                                        " requires one", "give it with --provenance DIR"))
            elif pins:
                warn(f"{wheel.filename}: its publisher is pinned but no provenance was found, "
                     "so it is not verified")
            continue
        progress(f"verifying the provenance of {wheel.filename}")
        try:
            verified = verify_provenance(data, wheel.filename, wheel.sha256, pins,
                                         where=f"{wheel.filename}.provenance")
        except ProvenanceError as exc:
            problems += exc.problems
            continue
        result[wheel.filename] = (data, DependencyProvenance(
            provenance_entry_name(wheel.filename), verified.publisher, verified.pinned))
    if problems:
        count = len(problems)
        raise ProvenanceError(f"provenance check failed ({count} problem"
                              f"{'s' if count != 1 else ''})", problems,
                              "never bundle a wheel whose provenance does not verify against "
                              "its pinned publisher; use the wheel that was published")
    return result


def _index_provenance(indexes: Sequence[str], wheel: Wheel, origin: str) -> bytes | None:
    """The wheel's provenance from an index that serves PEP 740 provenance (the JSON
    simple API's `provenance` URL of the file); None when none does or it fails."""
    import urllib.error
    import urllib.parse
    import urllib.request

    if not origin.startswith(("https://", "http://")):
        return None
    for index in indexes:
        if not index.startswith(("https://", "http://")):
            continue
        page = f"{index.rstrip('/')}/{wheel.name}/"
        try:
            request = urllib.request.Request(page, headers={
                "Accept": "application/vnd.pypi.simple.v1+json",
                "User-Agent": f"sandrun/{__version__}"})
            with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT) as response:
                detail = json.loads(response.read(16 << 20))
            entry = next((f for f in detail.get("files", [])
                          if isinstance(f, dict) and f.get("filename") == wheel.filename), None)
            url = entry.get("provenance") if entry else None
            if not isinstance(url, str):
                continue
            with urllib.request.urlopen(urllib.parse.urljoin(page, url),
                                        timeout=INDEX_TIMEOUT) as response:
                data: bytes = response.read(1 << 20)
                return data
        except (OSError, urllib.error.URLError, ValueError, AttributeError):
            continue
    return None


def _sbom(app_name: str, app_version: str, entry_point: str, console_script: str | None,
          provider: Wheel | None, wheels: list[Wheel], target: Target, epoch: int,
          warn: Progress, resolution: Resolution,
          dependencies: Sequence[Dependency]) -> bytes:
    from sandrun.build.sbom import build_sbom

    return build_sbom(app_name=app_name, app_version=app_version, entry_point=entry_point,
                      console_script=console_script,
                      provider=provider.name if provider else None, wheels=wheels,
                      target=target, source_date_epoch=epoch, warn=warn,
                      resolution=resolution, dependencies=dependencies)


def _pip_errors(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines[-5:]
    return "\n".join(f"    {ln}" for ln in errors)


def _explain_pip_failure(request: BundleRequest, stdout: str, stderr: str,
                         target: Target) -> ResolveError:
    from packaging.requirements import InvalidRequirement, Requirement

    indexes, links = _searched(request, stdout)
    searched = _describe_sources(Resolution("pip", tuple(indexes), tuple(links),
                                            request.use_pip_config))
    unsatisfied = re.findall(r"Could not find a version that satisfies the requirement "
                             r"(\S+)(?: \(from [^)]*\))? \(from versions: ([^)]*)\)", stderr)
    if unsatisfied:
        missing: list[str] = []
        no_wheel: list[str] = []
        other_version: list[str] = []
        for spec, versions in dict.fromkeys(unsatisfied):
            try:
                name = Requirement(spec).name
            except InvalidRequirement:
                name = spec
            if versions.strip() != "none":
                other_version.append(f"{spec} (wheels for the target: {versions})")
            elif _project_exists(request, name):
                no_wheel.append(name)
            else:
                missing.append(name)
        if missing:
            names = ", ".join(missing)
            return ResolveError(f"{names} not found ({searched})",
                                "check the spelling of the name, and the --index-url/"
                                "--find-links options")
        if other_version:
            return ResolveError("no wheel satisfies " + "; ".join(other_version),
                                "relax the version requirement, or change --python-version/"
                                "--platform")
        names = ", ".join(no_wheel)
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


def _project_exists(request: BundleRequest, name: str) -> bool:
    """Does any searched location have a file of `name` (a wheel for another target or an
    sdist: `pip index versions` lists both, and runs no build)?"""
    proc = _pip(request, ["index", "versions", name, *_index_args(request)])
    return proc.returncode == 0 and "versions:" in proc.stdout


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
    if request.dev_source is not None:  # the module is in the project's source tree
        return request.entry_point, None, None
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


def _check_entry_object(entry_point: str, console_script: str | None,
                        site_packages: Path) -> None:
    """Refuse an entry point whose module is in the bundle but does not define the
    attribute (a typo that would otherwise fail at the first start). Static: the module's
    source is parsed with ast, never imported (bundle code does not run at build time).
    Whatever cannot be told statically passes: extension modules, a module `__getattr__`,
    star imports, names made by exec/globals(), a module found only through a .pth file.
    """
    module, _, attrs = entry_point.partition(":")
    first = attrs.split(".")[0]
    what = (f"console script {console_script!r} ({entry_point})" if console_script
            else f"entry point {entry_point!r}")
    source = _module_source(site_packages, module)
    if source is None:
        top = module.split(".")[0]
        if (top in sys.stdlib_module_names or any(site_packages.glob("*.pth"))
                or _module_source(site_packages, top) is not None):
            # The standard library, a path a .pth file adds, or a submodule its package
            # may create at import time (six.moves): not ours to tell.
            return
        raise BundleError(f"{what}: module {top!r} is not in the bundle",
                          "check the module path, or add the project that provides it")
    if isinstance(source, str):
        return  # an extension or namespace module: nothing to parse
    if (source.name == "__init__.py" and _module_source(site_packages, f"{module}.{first}")
            is not None):
        return  # `package:submodule.func`, as pip's wrappers import it
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError):
        return  # e.g. syntax of a newer target Python: left to run time
    bound = _binds(tree.body, first)
    if bound is False:
        raise BundleError(f"{what}: module {module!r} defines no {first!r} (no def, class, "
                          "assignment or import of that name at its top level)",
                          "check the name after the colon (the function to run)")


def _module_source(site_packages: Path, module: str) -> Path | str | None:
    """The source file of `module` in site-packages; "extension"/"namespace" when it is a
    compiled module or a directory without __init__.py; None when it is not there."""
    parts = module.split(".")
    base = site_packages.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    py = base.with_name(f"{parts[-1]}.py")
    if py.is_file():
        return py
    if any(base.parent.glob(f"{parts[-1]}.*.so")) or any(base.parent.glob(f"{parts[-1]}.so")) \
            or (base / "__init__.so").exists() or any(base.glob("__init__.*.so")):
        return "extension"
    if base.is_dir():
        return "namespace"
    return None


_DYNAMIC_NAMES = frozenset({"globals", "exec", "vars", "setattr", "__getattr__", "modules"})


def _binds(body: list[ast.stmt], name: str) -> bool | None:
    """Whether module-level statements bind `name`: True, False, or None when they may
    do so in a way ast cannot see (star import, module __getattr__, exec, globals())."""
    unknown = False
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
            if node.name == "__getattr__":
                unknown = True
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    unknown = True
                elif (alias.asname or alias.name.split(".")[0]) == name:
                    return True
            continue
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
            targets = [node.target]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
        for target in targets:
            if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target)):
                return True
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and sub.target.id == name:
                return True
            if isinstance(sub, (ast.Name, ast.Attribute)) and \
                    (getattr(sub, "id", None) or getattr(sub, "attr", None)) in _DYNAMIC_NAMES:
                unknown = True
        for block in _blocks(node):
            found = _binds(block, name)
            if found:
                return True
            if found is None:
                unknown = True
    return None if unknown else False


def _blocks(node: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists that run at module level inside `node` (not function bodies)."""
    blocks: list[list[ast.stmt]] = []
    for attr in ("body", "orelse", "finalbody"):
        value = getattr(node, attr, None)
        if isinstance(value, list) and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            blocks.append(value)
    for handler in getattr(node, "handlers", []) or []:
        blocks.append(handler.body)
    for case in getattr(node, "cases", []) or []:
        blocks.append(case.body)
    return blocks


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
