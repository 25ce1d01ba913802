"""Dependencies-only bundles of a local project, built once and cached.

A development bundle holds the project's dependencies (wheels only, resolved as `sandrun
bundle` resolves them) and a metadata-only wheel of the project itself, made here from
pyproject.toml (`stub_wheel`): `importlib.metadata` finds the project, its console
scripts and its version, and no build backend ever runs. The project's code is not in
the bundle: the bootstrap puts the source directory first on sys.path (DEV_SOURCE).

The bundle depends only on the project's dependency metadata (and its lock, the index
options and the target), so editing source files never changes it: the cache key is a
digest of exactly those inputs, the bundle is rebuilt only when one of them changes,
and the warm launch record of `sandrun exec` stays valid across edits.

Cache: <store>/dev/ (0700, the store owner's), one `<project key>-<inputs key>.pyz` per
project and kind; a rebuild removes the older bundle of the same project and kind.

What the developer wrote reaches pip and uv only checked: the stub's METADATA and
entry_points.txt are made of validated fields (no control character anywhere), then
parsed back and compared with what was meant, and no requirement in them may be a
direct reference (pip would fetch and build it, running its build backend as root).
A project's own pylock.toml may name only https URLs and files under an operator's
--find-links directory: root fetches what a lock names and reports its digest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sandrun import __version__
from sandrun.dev.project import (
    CONTROL_RE,
    LOCK_NAME,
    Entry,
    Project,
    ProjectError,
    RequestedProfile,
    extra_name_problem,
    normalise_extra,
    requirement_problem,
    requires_python_problem,
    shown_key,
)
from sandrun.errors import BundleError, LockFileError, Problem, StoreError

CACHE_DIR = "dev"
KEY_FORMAT = 2  # 2: the project profile embedded; project locks checked
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class DevBundleSpec:
    """Everything a development bundle is built from (and keyed by)."""

    project: Project
    entry: Entry  # for a test bundle: pytest's console script
    app: str
    kind: str = "dev"  # "dev", "test", or a matrix cell's name
    extra_requirements: tuple[str, ...] = ()  # the test dependencies
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    index_url: str | None = None
    # A lock sandrun made (a matrix cell's, in a root-private directory): exactly its
    # wheels; it names the stub already.
    lock: Path | None = None
    # The project's own pylock.toml as read: its wheels (checked: https URLs and files
    # under --find-links only) and the stub.
    project_lock: bytes | None = None
    profile: RequestedProfile | None = None  # the project's, embedded as a request
    python_version: str | None = None
    notes: list[str] = field(default_factory=list, compare=False)

    def key_inputs(self) -> dict[str, object]:
        p = self.project
        lock_digest = None
        if self.lock is not None:
            try:
                lock_digest = hashlib.sha256(self.lock.read_bytes()).hexdigest()
            except OSError as exc:
                raise BundleError(f"cannot read the lock file {self.lock}: {exc.strerror}",
                                  "check the path and its permissions") from None
        elif self.project_lock is not None:
            lock_digest = hashlib.sha256(self.project_lock).hexdigest()
        profile = None
        if self.profile is not None:
            profile = [self.profile.source, self.profile.shipped, self.profile.text]
        return {
            "format": KEY_FORMAT, "sandrun": __version__, "root": str(p.root),
            "source": str(p.source_dir), "name": p.name, "version": p.version,
            "dependencies": list(p.dependencies),
            "optional": {k: list(v) for k, v in sorted(p.optional_dependencies.items())},
            "requires_python": p.requires_python, "scripts": dict(sorted(p.scripts.items())),
            "entry": [self.entry.entry_point, self.entry.script], "app": self.app,
            "kind": self.kind, "extra": list(self.extra_requirements),
            "lock": lock_digest, "sandrun_lock": self.lock is not None, "profile": profile,
            "find_links": [os.path.abspath(f) for f in self.find_links],
            "no_index": self.no_index, "index_url": self.index_url,
            "python": self.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}",
        }

    def key(self) -> str:
        data = json.dumps(self.key_inputs(), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:32]

    def project_key(self) -> str:
        data = json.dumps([str(self.project.root), self.app, self.kind]).encode()
        return hashlib.sha256(data).hexdigest()[:16]


def cache_dir(store_root: str) -> Path:
    """<store>/dev/, created (with the store) if missing: a private directory of the
    store owner, reached through the checked store root."""
    from sandrun.launch import safefile
    from sandrun.launch.store import Store

    store = Store(Path(store_root), os.geteuid())
    store.ensure_layout()
    try:
        fd = safefile.open_private_dir(CACHE_DIR, dir_fd=store.dir_fd(), create=True)
    except safefile.UnsafePath as exc:
        raise StoreError(f"{store.root / CACHE_DIR} {exc.why}",
                         f"remove it (rm -rf {store.root / CACHE_DIR}); sandrun dev makes it "
                         "again") from None
    os.close(fd)
    return store.root / CACHE_DIR


def cached_bundle(spec: DevBundleSpec, store_root: str) -> Path:
    """Where the bundle of `spec` is (or would be) cached."""
    return cache_dir(store_root) / f"{spec.project_key()}-{spec.key()}.pyz"


def ensure_bundle(spec: DevBundleSpec, store_root: str, *, rebuild: bool = False,
                  progress: Progress = _quiet, warn: Progress = _quiet) -> tuple[Path, bool]:
    """The cached bundle of `spec`, built first when missing (or `rebuild`); returns it
    and whether it was built now."""
    path = cached_bundle(spec, store_root)
    if path.is_file() and not rebuild:
        return path, False
    build_bundle(spec, path, progress=progress, warn=warn)
    prefix = f"{spec.project_key()}-"
    for old in path.parent.glob(f"{prefix}*.pyz"):  # the same project's older bundles
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return path, True


def build_bundle(spec: DevBundleSpec, output: Path, *, progress: Progress = _quiet,
                 warn: Progress = _quiet) -> None:
    """Build the development bundle of `spec` at `output` (wheels only; the project is
    represented by its stub wheel, its source by the bootstrap's DEV_SOURCE)."""
    import tempfile

    from sandrun.build.builder import BundleRequest
    from sandrun.build.builder import build_bundle as build

    with tempfile.TemporaryDirectory(prefix="sandrun-dev-") as tmp:
        work = Path(tmp)
        stub = stub_wheel(spec.project, work)
        find_links = tuple(os.path.abspath(f) for f in spec.find_links)
        lock = spec.lock
        if lock is None and spec.project_lock is not None:
            lock = lock_with_stub(spec.project_lock, stub, work, find_links=find_links,
                                  label=str(spec.project.root / LOCK_NAME))
        profile = "default"
        if spec.profile is not None:
            profile = spec.profile.shipped or str(work / "profile" /
                                                  f"{spec.profile.name}.toml")
            if spec.profile.text is not None:
                (work / "profile").mkdir(mode=0o700)
                Path(profile).write_text(spec.profile.text, "utf-8")
        entry_point = None if spec.entry.script else spec.entry.entry_point
        request = BundleRequest(
            output=output,
            requirements=() if lock is not None else (str(stub), *spec.extra_requirements),
            entry_point=entry_point, console_script=spec.entry.script,
            find_links=() if lock is not None else find_links,
            no_index=spec.no_index, index_url=None if lock is not None else spec.index_url,
            name=spec.app, python_version=spec.python_version, lock=lock,
            dev_source=str(spec.project.source_dir), profile=profile)
        try:
            # From our own empty directory: `python -m pip` imports from its working
            # directory, and a requirement must never be taken for a local project dir.
            with _working_dir(work):
                build(request, progress=progress, warn=warn)
        except BundleError as exc:
            if spec.entry.script == "pytest" and "console script 'pytest'" in exc.message:
                raise BundleError(f"the test dependencies of {spec.project.name} do not "
                                  "include pytest", "add it, e.g. [dependency-groups] test = "
                                  '["pytest>=8"]') from None
            raise


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------- the project's stub


def stub_filename(project: Project) -> str:
    from packaging.utils import canonicalize_name

    return f"{canonicalize_name(project.name).replace('-', '_')}-{_version(project)}" \
           "-py3-none-any.whl"


def _version(project: Project) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(project.version))
    except InvalidVersion:
        return "0"


def _stub_fields(project: Project) -> list[tuple[str, str]]:
    """The METADATA fields of the stub, every value checked (BundleError): the name a
    valid distribution name, requires-python a specifier set, extras valid names
    (written normalised, PEP 685), requirements parsed (no direct reference) and
    written as packaging renders them; no control character in any value."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import InvalidName, canonicalize_name

    problems: list[Problem] = []
    try:
        canonicalize_name(project.name, validate=True)
    except InvalidName:
        problems.append(Problem("project.name", f"{project.name!r} is not a valid "
                                "distribution name"))
    fields = [("Metadata-Version", "2.1"), ("Name", project.name),
              ("Version", _version(project)),
              ("Summary", f"sandrun development stub of {project.root} (its code is not in "
                          "this wheel: the bootstrap puts the source directory on sys.path)")]
    if project.requires_python:
        problem = requires_python_problem(project.requires_python)
        if problem:
            problems.append(Problem("project.requires-python", problem))
        else:
            fields.append(("Requires-Python", str(SpecifierSet(project.requires_python))))

    def requirement(text: str, where: str) -> Requirement | None:
        problem = requirement_problem(text)
        if problem:
            problems.append(Problem(where, problem))
            return None
        return Requirement(text)

    for index, text in enumerate(project.dependencies):
        req = requirement(text, f"project.dependencies[{index}]")
        if req is not None:
            fields.append(("Requires-Dist", str(req)))
    for extra, reqs in sorted(project.optional_dependencies.items()):
        problem = extra_name_problem(extra)
        if problem:
            problems.append(Problem(f"project.optional-dependencies.{shown_key(extra)}", problem))
            continue
        name = normalise_extra(extra)
        fields.append(("Provides-Extra", name))
        for index, text in enumerate(reqs):
            req = requirement(text, f"project.optional-dependencies.{shown_key(extra)}[{index}]")
            if req is None:
                continue
            marker = f'extra == "{name}"'
            if req.marker is not None:
                marker = f"({req.marker}) and {marker}"
            req.marker = None
            fields.append(("Requires-Dist", f"{req}; {marker}"))
    for key, value in fields:
        if CONTROL_RE.search(value):
            problems.append(Problem(key, f"{value!r} contains a control character"))
    if problems:
        raise ProjectError(f"{project.pyproject}: the project's metadata cannot be "
                           "written into its stub wheel", problems)
    return fields


def stub_metadata(project: Project) -> str:
    """METADATA of the stub: name, version, requires-python and every requirement;
    parsed back and compared field by field with what was meant (check_metadata)."""
    fields = _stub_fields(project)
    text = "".join(f"{key}: {value}\n" for key, value in fields)
    check_metadata(text, fields)
    return text


def check_metadata(text: str, expected: list[tuple[str, str]]) -> None:
    """Refuse (BundleError) METADATA whose parsed fields are not exactly `expected`, or
    that names any direct reference: what pip reads must be what sandrun meant."""
    from email.parser import HeaderParser

    from packaging.requirements import InvalidRequirement, Requirement

    message = HeaderParser().parsestr(text)
    found = [(key, str(value)) for key, value in message.items()]
    if found != expected or message.get_payload():
        raise BundleError("the stub wheel's METADATA does not say what sandrun wrote into "
                          "it (a field of pyproject.toml ends a line or starts another)",
                          "remove control characters from pyproject.toml")
    for key, value in found:
        if key.lower() != "requires-dist":
            continue
        try:
            url = Requirement(value).url
        except InvalidRequirement as exc:
            raise BundleError(f"the stub wheel would require {value!r}: {exc}",
                              "fix the requirement in pyproject.toml") from None
        if url:
            raise BundleError(f"the stub wheel would require {value!r}, a direct reference",
                              "sandrun never lets pip fetch and build what a project names")


def check_stub(project: Project) -> None:
    """Refuse, before anything is made, a project whose stub wheel cannot be written
    safely (ProjectError/BundleError): what stub_wheel checks."""
    stub_metadata(project)
    if project.scripts:
        entry_points_text(project)


def stub_wheel(project: Project, directory: Path) -> Path:
    """A metadata-only wheel of the project (same bytes for the same metadata)."""
    from packaging.utils import canonicalize_name

    filename = stub_filename(project)
    dist_info = f"{canonicalize_name(project.name).replace('-', '_')}-{_version(project)}" \
                ".dist-info"
    files = {f"{dist_info}/METADATA": stub_metadata(project).encode(),
             f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: sandrun-dev\n"
                                   b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    if project.scripts:
        files[f"{dist_info}/entry_points.txt"] = entry_points_text(project).encode()
    record = "".join(f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}\n"
                     for name, data in sorted(files.items()))
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    path = directory / filename
    path.write_bytes(buffer.getvalue())
    return path


def entry_points_text(project: Project) -> str:
    """entry_points.txt of the stub: every script name and object reference checked,
    the result parsed back and compared (BundleError)."""
    import configparser

    from sandrun.bundle.manifest import console_script_problem, entry_point_problem

    for name, value in project.scripts.items():
        problem = console_script_problem(name) or entry_point_problem(value)
        if problem:
            raise BundleError(f"{project.pyproject}: script {name!r} cannot be written into "
                              f"the stub wheel: {problem}", "use NAME = \"MODULE:FUNCTION\"")
    text = "[console_scripts]\n" + "".join(f"{name} = {value}\n" for name, value in
                                           sorted(project.scripts.items()))
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    if parser.sections() != ["console_scripts"] or \
            dict(parser["console_scripts"]) != dict(project.scripts):
        raise BundleError("the stub wheel's entry_points.txt does not say what sandrun "
                          "wrote into it", "check [project.scripts]")
    return text


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_project_lock(lock: bytes, name: str, find_links: tuple[str, ...],
                       label: str = LOCK_NAME) -> tuple[str, dict[str, object]]:
    """A project's pylock.toml (its bytes as read), checked before anything is made or
    read for it: valid TOML, not locking the project `name` itself (a directory source
    would be built), and naming only https URLs and files under a `find_links`
    directory (check_lock_sources). Returns its text and data."""
    import tomllib

    from packaging.utils import canonicalize_name

    try:
        text = lock.decode("utf-8")
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockFileError(f"{label} is not valid TOML", [Problem(label, str(exc))]) from None
    own = canonicalize_name(name)
    packages = data.get("packages", [])
    for package in packages if isinstance(packages, list) else []:
        if isinstance(package, dict) and canonicalize_name(str(package.get("name", ""))) == own:
            raise BundleError(f"{label} locks the project {own} itself",
                              "lock only its dependencies (e.g. `uv export --format "
                              "pylock.toml --no-emit-project`): sandrun dev runs the project "
                              "from its source directory")
    check_lock_sources(data, find_links, label)
    return text, data


def lock_with_stub(lock: bytes, stub: Path, directory: Path, *,
                   find_links: tuple[str, ...] = (), label: str = LOCK_NAME) -> Path:
    """A copy of a project's pylock.toml (its bytes as read) with the stub wheel added
    as one more package, in `directory` (the build's private one); the lock is checked
    first (check_project_lock)."""
    import tomllib

    from packaging.utils import canonicalize_name

    name = canonicalize_name(stub.name.split("-")[0])
    text, data = check_project_lock(lock, name, find_links, label)
    digest = hashlib.sha256(stub.read_bytes()).hexdigest()
    version = stub.name.split("-")[1]
    addition = (f"\n[[packages]]\nname = {json.dumps(name)}\nversion = {json.dumps(version)}\n"
                f"archive = {{ path = {json.dumps(str(stub))}, hashes = {{ sha256 = "
                f"\"{digest}\" }} }}\n")
    combined = text.rstrip("\n") + "\n" + addition
    # What the builder will read: the project's packages unchanged, then the stub.
    parsed = tomllib.loads(combined)
    packages = parsed.get("packages")
    if not isinstance(packages, list) or packages[:-1] != data.get("packages", []) \
            or packages[-1].get("name") != name:
        raise LockFileError(f"{label}: the stub cannot be added to it", [Problem(
            label, "its [[packages]] are not an array of tables at the end of the file")])
    copy = directory / "pylock.toml"
    copy.write_text(combined, "utf-8")
    return copy


LOCK_SOURCE_HINT = ("name each wheel by an https URL, or by an absolute path in a directory "
                    "the operator gives with --find-links")


def check_lock_sources(data: dict[str, object], find_links: tuple[str, ...],
                       label: str) -> None:
    """Refuse (LockFileError, every problem listed) a project lock that would make root
    read or fetch anything but an https URL or a file under a --find-links directory:
    root reads what a lock names and reports its digest, so a lock of another user must
    not name root's files (a hash oracle), file: or http: URLs, or a directory or VCS
    source (built). Runs before the lock reaches the builder."""
    import urllib.parse

    roots = [os.path.normpath(os.path.abspath(f)) for f in find_links]
    problems: list[Problem] = []
    packages = data.get("packages", [])
    if not isinstance(packages, list):
        raise LockFileError(f"{label}: packages is not an array", [])
    for index, package in enumerate(packages):
        where = f"packages[{index}]"
        if not isinstance(package, dict):
            problems.append(Problem(where, "not a table"))
            continue
        for key in ("directory", "vcs"):
            if key in package:
                problems.append(Problem(f"{where}.{key}", f"a {key} source: sandrun installs "
                                        "wheels only", LOCK_SOURCE_HINT))
        sources: list[tuple[str, object]] = []
        wheels = package.get("wheels", [])
        if isinstance(wheels, list):
            sources += [(f"{where}.wheels[{j}]", w) for j, w in enumerate(wheels)]
        elif wheels is not None:
            problems.append(Problem(f"{where}.wheels", "not an array"))
        for key in ("archive", "sdist"):
            if key in package:
                sources.append((f"{where}.{key}", package[key]))
        for swhere, source in sources:
            if not isinstance(source, dict):
                problems.append(Problem(swhere, "not a table"))
                continue
            url, path = source.get("url"), source.get("path")
            if url is not None:
                parts = urllib.parse.urlsplit(str(url)) if isinstance(url, str) else None
                if parts is None or parts.scheme != "https" or not parts.hostname:
                    problems.append(Problem(f"{swhere}.url", f"{url!r} is not an https URL",
                                            LOCK_SOURCE_HINT))
            if path is not None and not _under(path, roots):
                problems.append(Problem(f"{swhere}.path", f"{path!r} is not a file under a "
                                        "--find-links directory" + (
                                            f" ({', '.join(roots)})" if roots else
                                            " (none given)"), LOCK_SOURCE_HINT))
            if url is None and path is None:
                problems.append(Problem(swhere, "names neither a url nor a path"))
    if problems:
        raise LockFileError(f"{label} names sources sandrun does not read for a project "
                            f"({len(problems)} problem{'s' if len(problems) != 1 else ''})",
                            problems)


def _under(path: object, roots: list[str]) -> bool:
    """`path` is absolute, without '..' or control characters, and inside one of the
    `roots` (absolute, normalised)."""
    if not isinstance(path, str) or not path.startswith("/") or CONTROL_RE.search(path):
        return False
    if ".." in path.split("/"):
        return False
    normal = os.path.normpath(path)
    return any(normal.startswith(root.rstrip("/") + "/") for root in roots)
