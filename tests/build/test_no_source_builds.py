"""`sandrun bundle` never builds a dependency: no build backend (setup.py) runs while
resolving, whatever asks for it (a wheel's `Requires-Dist: x @ file:///dir`, an sdist or
VCS URL, an editable or a `--no-binary` line in a -r file), and pip is never imported from
the working directory.

Every attack is real and runs as nobody: the projects' build backends (and setup.py)
write a marker when anything imports them, and each test asserts sandrun's refusal and
that the marker was never written. Offline: the projects use in-tree build backends
(`build-system.requires = []`), so pip needs no index to run them.
"""

from __future__ import annotations

import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NOBODY, ROOT, drop_to_nobody
from wheelcraft import make_wheel

from sandrun.build.builder import (
    BundleRequest,
    _direct_reference,
    _is_wheel_location,
    _metadata_direct_references,
    _not_wheels,
    _pip,
    _requirement_file_references,
)
from sandrun.errors import ResolveError

TIMEOUT = 120
REFUSED = ", which is not a wheel: sandrun bundles wheels only and never builds dependencies"

PYPROJECT = ('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
             'backend-path = ["."]\n')
# An in-tree PEP 517 backend: importing it writes the marker; build_wheel makes a real
# wheel (for the local project that is built on purpose).
BACKEND = '''\
import base64, hashlib, os, zipfile
from pathlib import Path
Path({marker!r}).write_text("build backend ran as uid %d" % os.getuid())
NAME, VERSION = {name!r}, "1.0"

def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist_info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        f"{{NAME}}.py": b"def main():\\n    print('built')\\n",
        f"{{dist_info}}/METADATA":
            f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n".encode(),
        f"{{dist_info}}/WHEEL":
            b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    record = "".join(f"{{n}},{{_digest(d)}},{{len(d)}}\\n" for n, d in files.items())
    files[f"{{dist_info}}/RECORD"] = (record + f"{{dist_info}}/RECORD,,\\n").encode()
    filename = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for n, d in sorted(files.items()):
            zf.writestr(n, d)
    return filename
'''
SETUP_PY = "from pathlib import Path\nPath({marker!r}).write_text('setup.py ran')\n"


def project_files(name: str, marker: Path) -> dict[str, str]:
    return {"pyproject.toml": PYPROJECT,
            "backend.py": BACKEND.format(marker=str(marker), name=name),
            "setup.py": SETUP_PY.format(marker=str(marker))}


def write_project(directory: Path, name: str, marker: Path) -> Path:
    directory.mkdir(parents=True)
    for filename, text in project_files(name, marker).items():
        (directory / filename).write_text(text)
    return directory


def write_sdist(directory: Path, name: str, marker: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {**project_files(name, marker),
             "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"}
    path = directory / f"{name}-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for filename, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{filename}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def chown_tree(top: Path) -> None:
    for current, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(os.path.join(current, name), NOBODY, NOBODY, follow_symlinks=False)
    os.chown(top, NOBODY, NOBODY)


@pytest.fixture(scope="module")
def world(require_root: None) -> Iterator[dict[str, Any]]:
    """Owned by nobody: evil projects (a directory, a local sdist, a git repo, an sdist
    served over http), wheels that require them by direct reference, a plain wheelhouse.
    Under /tmp itself: pytest's base dir is private to root, nobody could not reach it."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-nosource-"))
    base.chmod(0o755)
    try:
        yield from _world(base)
    finally:
        shutil.rmtree(base)


def _world(base: Path) -> Iterator[dict[str, Any]]:
    marker = base / "MARKER"
    evil_dir = write_project(base / "evil", "evil", marker)
    sdist = write_sdist(base / "sdists", "evil", marker)
    served = write_sdist(base / "served", "evil", marker)
    repo = write_project(base / "evilrepo", "evil", marker)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "evil"]):
        subprocess.run([*git, *args], check=True, capture_output=True)

    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served.parent), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{served.name}"
    references = {"dir": evil_dir.as_uri(), "sdist": sdist.as_uri(), "http": url,
                  # with a host: pip's packaging rejects git+file:/// in metadata
                  "git": f"git+file://localhost{repo}"}
    for kind, where in references.items():
        make_wheel(base / f"wheels-{kind}", "app", "1.0", {"app.py": "def main(): pass\n"},
                   requires=[f"evil @ {where}"])
    helper = make_wheel(base / "plain", "helper", "1.0", {"helper.py": "def main(): pass\n"})
    make_wheel(base / "wheels-whl", "app", "1.0", {"app.py": "def main(): pass\n"},
               requires=[f"helper @ {helper.as_uri()}"])
    (base / "home").mkdir()
    (base / "out").mkdir()
    chown_tree(base)
    try:
        yield {"base": base, "marker": marker, "references": references, "requests": requests,
               "helper": helper, "evil_dir": evil_dir, "out": base / "out"}
    finally:
        server.shutdown()
        server.server_close()


def bundle_as_nobody(world: dict[str, Any], *args: str, cwd: Path | None = None
                     ) -> subprocess.CompletedProcess[str]:
    """`sandrun bundle ARGS` as nobody with Debian's python3 (the venv's interpreter lives
    under /root, which nobody cannot read), a HOME (and pip cache) in the test's dir."""
    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {"HOME": str(world["base"] / "home"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": f"{ROOT}:{site}", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["/usr/bin/python3", "-P", "-m", "sandrun", "bundle", *args],
                          env=env, cwd=cwd or world["base"], preexec_fn=drop_to_nobody,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)


def assert_refused(world: dict[str, Any], proc: subprocess.CompletedProcess[str],
                   out: Path, message: str) -> None:
    assert proc.returncode == 125, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "hint: build a wheel of " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not world["marker"].exists(), world["marker"].read_text()
    assert not out.exists()


@pytest.mark.parametrize("kind", ["dir", "sdist", "http", "git"])
def test_a_wheels_direct_reference_is_never_built(world: dict[str, Any], kind: str) -> None:
    """The wheel is fine; its metadata requires `evil @ <directory | sdist file | sdist
    URL | git URL>`. pip would prepare (download, clone, build) it to read its metadata;
    the guard refuses before any of that: nothing is fetched, nothing runs."""
    out = world["out"] / f"{kind}.pyz"
    proc = bundle_as_nobody(world, "app", "--no-index", "--find-links",
                            str(world["base"] / f"wheels-{kind}"), "-e", "app:main",
                            "-o", str(out))
    url = world["references"][kind]
    assert_refused(world, proc, out,
                   f"app (app-1.0-py3-none-any.whl) requires evil @ {url}{REFUSED}")
    assert world["requests"] == []  # the sdist URL was not even downloaded


def test_no_binary_in_a_requirement_file_builds_nothing(world: dict[str, Any]) -> None:
    """`--no-binary :all:` in a -r file overrides --only-binary, and pip would build the
    sdist it then finds on the find-links: the guard refuses it (no direct reference
    for a static check to see)."""
    req = world["base"] / "home" / "nobinary.txt"
    req.write_text("--no-binary :all:\nevil\n")
    out = world["out"] / "nobinary.pyz"
    proc = bundle_as_nobody(world, "-r", str(req), "--no-index", "--find-links",
                            str(world["base"] / "sdists"), "-e", "evil:main", "-o", str(out))
    sdist = (world["base"] / "sdists" / "evil-1.0.tar.gz").as_uri()
    assert_refused(world, proc, out, f"the requirement file {req} (line 2) requires "
                   f"evil @ {sdist}{REFUSED}")


@pytest.mark.parametrize(("line", "shown"), [
    ("evil @ {dir}", "evil @ {dir}"),
    ("{dir_path}", "{dir_path}"),
    ("evil @ {git}", "evil @ {git}"),
    ("evil @ {http} \\\n    --hash=sha256:00", "evil @ {http}"),
])
def test_direct_references_in_requirement_files_are_refused_first(
        world: dict[str, Any], line: str, shown: str) -> None:
    """Refused before anything runs (no pip, no build), naming the file and line."""
    fmt = {**world["references"], "dir_path": str(world["evil_dir"])}
    req = world["base"] / "home" / "direct.txt"
    req.write_text("# a comment\n\n" + line.format(**fmt) + "\n")
    out = world["out"] / "direct.pyz"
    proc = bundle_as_nobody(world, "-r", str(req), "--no-index", "-e", "evil:main",
                            "-o", str(out))
    assert_refused(world, proc, out, f"the requirement file {req} (line 3) requires "
                   f"{shown.format(**fmt)}{REFUSED}")


def test_editables_and_nested_files_are_refused(world: dict[str, Any]) -> None:
    home = world["base"] / "home"
    (home / "inner.txt").write_text(f"-e {world['evil_dir']}\n")
    (home / "outer.txt").write_text("-r inner.txt\n")
    out = world["out"] / "editable.pyz"
    proc = bundle_as_nobody(world, "-r", str(home / "outer.txt"), "--no-index",
                            "-e", "evil:main", "-o", str(out))
    assert proc.returncode == 125, proc.stderr
    assert (f"the requirement file {home / 'inner.txt'} (line 1) requires the editable "
            f"{world['evil_dir']}, which pip would build") in proc.stderr
    assert not world["marker"].exists()
    assert not out.exists()


def test_a_direct_reference_on_the_command_line_is_refused(world: dict[str, Any]) -> None:
    out = world["out"] / "cli.pyz"
    sdist = world["references"]["sdist"]
    proc = bundle_as_nobody(world, f"evil @ {sdist}", "--no-index", "-e", "evil:main",
                            "-o", str(out))
    assert_refused(world, proc, out, f"the command line requires evil @ {sdist}{REFUSED}")


def test_a_wheel_a_dependency_points_to_needs_the_users_word(world: dict[str, Any]) -> None:
    """`helper @ file:///.../helper-1.0-py3-none-any.whl` in app's metadata: a wheel, but
    chosen by a dependency: refused, even from a find-links dir, until the user names
    exactly that wheel file."""
    links = world["base"] / "wheels-whl"
    out = world["out"] / "whl.pyz"
    proc = bundle_as_nobody(world, "app", "--no-index", "--find-links", str(links),
                            "--find-links", str(world["base"] / "plain"), "-e", "app:main",
                            "-o", str(out))
    assert proc.returncode == 125, proc.stderr
    assert (f"app 1.0 requires helper @ {world['helper'].as_uri()}, a wheel that no "
            "requirement on the command line or in a -r file names") in proc.stderr
    assert not out.exists()
    proc = bundle_as_nobody(world, "app", str(world["helper"]), "--no-index", "--find-links",
                            str(links), "-e", "app:main", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    out.unlink()


def test_pip_is_never_imported_from_the_working_directory(world: dict[str, Any]) -> None:
    """A `pip.py` in the working directory (another user's, say) is not what runs, neither
    for resolving nor for building a local project on purpose; the local project still
    builds (its backend runs, as intended, writing its own marker)."""
    cwd = world["base"] / "cwd"
    cwd.mkdir()
    pip_marker = world["base"] / "PIP-MARKER"
    (cwd / "pip.py").write_text(f"open({str(pip_marker)!r}, 'w').write('cwd pip.py ran')\n"
                                "raise SystemExit(3)\n")
    built_marker = world["base"] / "LOCAL-BUILT"
    write_project(cwd / "localapp", "localapp", built_marker)
    chown_tree(cwd)
    out = world["out"] / "cwd.pyz"
    proc = bundle_as_nobody(world, "./localapp", "helper", "--no-index", "--find-links",
                            str(world["base"] / "plain"), "-e", "localapp:main",
                            "-o", str(out), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert not pip_marker.exists()
    assert "build backend ran" in built_marker.read_text()  # on purpose, the user's project
    assert out.exists()
    out.unlink()


def test_an_unreachable_output_directory_is_a_usage_error(world: dict[str, Any]) -> None:
    proc = bundle_as_nobody(world, "helper", "--no-index", "-e", "helper:main",
                            "-o", "/root/sub/x.pyz")
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach output directory /root/sub: Permission denied" in proc.stderr


# ---------------------------------------------------------------- the guard fails closed


def test_guard_refuses_to_run_a_pip_it_cannot_patch(world: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A pip without the place the guard patches (another version): sandrun refuses to
    run it at all rather than resolve unprotected. Runs as nobody (the fake pip is
    code from outside sandrun)."""
    fake = world["base"] / "fakepip"
    ran = world["base"] / "FAKE-PIP-RAN"
    files = {
        "pip/__init__.py": "",
        "pip/_internal/__init__.py": "",
        "pip/_internal/exceptions.py": "class InstallationError(Exception):\n    pass\n",
        "pip/_internal/models/__init__.py": "",
        "pip/_internal/models/link.py": "class Link:\n    is_wheel = is_vcs = is_existing_dir "
                                        "= url = None\n",
        "pip/_internal/operations/__init__.py": "",
        "pip/_internal/operations/prepare.py": "class RequirementPreparer:\n"
                                               "    def prepare_editable_requirement(self):"
                                               " pass\n",  # no _prepare_linked_requirement
        "pip/_internal/distributions/__init__.py": "",
        "pip/_internal/distributions/sdist.py": "class SourceDistribution:\n"
                                                "    def prepare_distribution_metadata(self):"
                                                " pass\n",
        "pip/_internal/cli/__init__.py": "",
        "pip/_internal/cli/main.py": f"def main(args):\n    open({str(ran)!r}, 'w')\n"
                                     "    return 0\n",
    }
    for name, text in files.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    chown_tree(fake)
    import sandrun.build.builder as builder

    monkeypatch.setattr(builder, "_pip_parent", lambda: str(fake))
    monkeypatch.setattr(builder.sys, "executable", "/usr/bin/python3")
    real_run = subprocess.run

    def run_as_nobody(*args: Any, **kwargs: Any) -> Any:
        return real_run(*args, **kwargs, preexec_fn=drop_to_nobody, cwd=fake)

    monkeypatch.setattr(builder.subprocess, "run", run_as_nobody)
    request = BundleRequest(output=world["out"] / "never.pyz", requirements=("x",))
    with pytest.raises(ResolveError) as caught:
        _pip(request, ["install", "--dry-run", "x"])
    assert "refusing to run pip unguarded" in caught.value.message
    assert "RequirementPreparer" in caught.value.message
    assert "_prepare_linked_requirement" in caught.value.message
    assert not ran.exists()


# ---------------------------------------------------------------- pure logic


@pytest.mark.parametrize(("spec", "expected"), [
    ("six", None),
    ("six>=1; python_version > '3'", None),
    ("six[extra]==1.0", None),
    ("six @ https://x.org/six-1.0-py3-none-any.whl", ("six", "https://x.org/six-1.0-py3-none-any.whl")),
    ("six @ file:///w/six", ("six", "file:///w/six")),
    ("./six", ("", "./six")),
    ("/abs/six-1.0.tar.gz", ("", "/abs/six-1.0.tar.gz")),
    ("six-1.0-py3-none-any.whl", ("", "six-1.0-py3-none-any.whl")),
    ("git+https://x.org/six.git#egg=six", ("", "git+https://x.org/six.git#egg=six")),
    ("https://x.org/six-1.0.zip ; python_version > '3'", ("", "https://x.org/six-1.0.zip")),
])
def test_direct_reference(spec: str, expected: tuple[str, str] | None) -> None:
    assert _direct_reference(spec) == expected


@pytest.mark.parametrize(("location", "wheel"), [
    ("https://x.org/six-1.0-py3-none-any.whl", True),
    ("https://u:p@x.org/six-1.0-py3-none-any.WHL#sha256=00", True),
    ("file:///w/six-1.0-py3-none-any.whl", True),
    ("six-1.0-py3-none-any.whl", True),
    ("https://x.org/six-1.0.tar.gz", False),
    ("git+https://x.org/six-1.0-py3-none-any.whl", False),
    ("file:///w/six", False),
    ("/tmp", False),
])
def test_is_wheel_location(location: str, wheel: bool) -> None:
    assert _is_wheel_location(location) is wheel


def test_requirement_file_parsing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("x @ file:///c\n")
    (tmp_path / "r.txt").write_text(
        "six  # comment\n--index-url https://x.org/simple\n-c sub/c.txt\n"
        "a @ https://x.org/a.tar.gz \\\n  --hash=sha256:00\n--editable=./e\n-r r.txt\n"
        "b @ https://x.org/b-1-py3-none-any.whl --hash=sha256:00\n")
    found: list[tuple[str, str, str, bool]] = []
    _requirement_file_references(tmp_path / "r.txt", "requirement", set(), found)
    assert found == [
        (f"the constraint file {tmp_path / 'sub' / 'c.txt'} (line 1)", "x", "file:///c", False),
        (f"the requirement file {tmp_path / 'r.txt'} (line 4)", "a",
         "https://x.org/a.tar.gz", False),
        (f"the requirement file {tmp_path / 'r.txt'} (line 6)", "", "./e", True),
        (f"the requirement file {tmp_path / 'r.txt'} (line 8)", "b",
         "https://x.org/b-1-py3-none-any.whl", False),
    ]


def test_report_entries_that_are_not_wheels_are_refused() -> None:
    items = [{"metadata": {"name": "a"}, "download_info": {"url": "https://x.org/a-1.whl"}},
             {"metadata": {"name": "b"}, "download_info": {"url": "https://u:p@x.org/b-1.tar.gz"}},
             {"metadata": {"name": "c"}}]
    assert _not_wheels(items) == [
        f"the resolution requires b @ https://x.org/b-1.tar.gz{REFUSED}",
        f"the resolution requires c @ an unknown location{REFUSED}"]


def test_metadata_direct_references_follow_markers_and_extras() -> None:
    env = {"python_version": "3.11", "sys_platform": "linux"}
    item = {"metadata": {"name": "app", "version": "1", "requires_dist": [
        "a @ https://x.org/a.tar.gz ; python_version < '3'",  # does not apply
        "b @ https://x.org/b.tar.gz ; extra == 'dev'",  # extra not asked
        "c @ https://x.org/c.tar.gz ; extra == 'web'",  # asked
        "d @ https://x.org/d-1-py3-none-any.whl",  # a wheel the user named
        "e @ https://x.org/e-1-py3-none-any.whl",  # a wheel nobody named
        "f>=1",
    ]}, "requested_extras": ["web"]}
    refused = _metadata_direct_references(
        [item], env, set(), {"https://x.org/d-1-py3-none-any.whl"})
    assert refused == [
        f"app 1 requires c @ https://x.org/c.tar.gz{REFUSED}",
        "app 1 requires e @ https://x.org/e-1-py3-none-any.whl, a wheel that no requirement "
        "on the command line or in a -r file names",
    ]
