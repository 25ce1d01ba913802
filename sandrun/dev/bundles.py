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
from sandrun.dev.project import Entry, Project
from sandrun.errors import BundleError, StoreError

CACHE_DIR = "dev"
KEY_FORMAT = 1
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
    lock: Path | None = None  # a pylock.toml: exactly its wheels (the stub is added)
    lock_has_stub: bool = False  # the lock already names the stub (a matrix cell's)
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
        return {
            "format": KEY_FORMAT, "sandrun": __version__, "root": str(p.root),
            "source": str(p.source_dir), "name": p.name, "version": p.version,
            "dependencies": list(p.dependencies),
            "optional": {k: list(v) for k, v in sorted(p.optional_dependencies.items())},
            "requires_python": p.requires_python, "scripts": dict(sorted(p.scripts.items())),
            "entry": [self.entry.entry_point, self.entry.script], "app": self.app,
            "kind": self.kind, "extra": list(self.extra_requirements),
            "lock": lock_digest, "lock_has_stub": self.lock_has_stub,
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
        lock = spec.lock
        if lock is not None and not spec.lock_has_stub:
            lock = lock_with_stub(lock, stub, work)
        entry_point = None if spec.entry.script else spec.entry.entry_point
        find_links = tuple(os.path.abspath(f) for f in spec.find_links)
        request = BundleRequest(
            output=output,
            requirements=() if lock is not None else (str(stub), *spec.extra_requirements),
            entry_point=entry_point, console_script=spec.entry.script,
            find_links=() if lock is not None else find_links,
            no_index=spec.no_index, index_url=None if lock is not None else spec.index_url,
            name=spec.app, python_version=spec.python_version, lock=lock,
            dev_source=str(spec.project.source_dir))
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


def stub_metadata(project: Project) -> str:
    """METADATA of the stub: name, version, requires-python and every requirement."""
    from packaging.requirements import Requirement

    lines = ["Metadata-Version: 2.1", f"Name: {project.name}", f"Version: {_version(project)}",
             f"Summary: sandrun development stub of {project.root} (its code is not in this "
             "wheel: the bootstrap puts the source directory on sys.path)"]
    if project.requires_python:
        lines.append(f"Requires-Python: {project.requires_python}")
    lines += [f"Requires-Dist: {req}" for req in project.dependencies]
    for extra, reqs in sorted(project.optional_dependencies.items()):
        lines.append(f"Provides-Extra: {extra}")
        for text in reqs:
            req = Requirement(text)
            marker = f'extra == "{extra}"'
            if req.marker is not None:
                marker = f"({req.marker}) and {marker}"
            req.marker = None
            lines.append(f"Requires-Dist: {req}; {marker}")
    return "\n".join(lines) + "\n"


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
        files[f"{dist_info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{name} = {value}\n" for name, value in sorted(project.scripts.items()))).encode()
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


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def lock_with_stub(lock: Path, stub: Path, directory: Path) -> Path:
    """A copy of a project's pylock.toml with the stub wheel added as one more package
    (its code stays out; the lock's own entry for the project, if any, is refused: a
    directory source would be built)."""
    import tomllib

    from packaging.utils import canonicalize_name

    text = lock.read_text("utf-8")
    data = tomllib.loads(text)
    name = canonicalize_name(stub.name.split("-")[0])
    for package in data.get("packages", []):
        if isinstance(package, dict) and canonicalize_name(str(package.get("name", ""))) == name:
            raise BundleError(f"{lock} locks the project {name} itself",
                              "lock only its dependencies (e.g. `uv export --format "
                              "pylock.toml --no-emit-project`): sandrun dev runs the project "
                              "from its source directory")
    digest = hashlib.sha256(stub.read_bytes()).hexdigest()
    version = stub.name.split("-")[1]
    addition = (f"\n[[packages]]\nname = {json.dumps(name)}\nversion = {json.dumps(version)}\n"
                f"archive = {{ path = {json.dumps(str(stub))}, hashes = {{ sha256 = "
                f"\"{digest}\" }} }}\n")
    if _relative_paths(data):  # relative to the lock's directory: not to the copy's
        raise BundleError(f"{lock} names wheels by relative path",
                          "give the wheels as URLs or absolute paths in the lock")
    copy = directory / "pylock.toml"
    copy.write_text(text.rstrip("\n") + "\n" + addition, "utf-8")
    return copy


def _relative_paths(data: dict[str, object]) -> bool:
    packages = data.get("packages", [])
    for package in packages if isinstance(packages, list) else []:
        if not isinstance(package, dict):
            continue
        files = [*(package.get("wheels") or []), package.get("archive") or {}]
        for item in files:
            path = item.get("path") if isinstance(item, dict) else None
            if isinstance(path, str) and not path.startswith("/"):
                return True
    return False
