"""The security review of `sandrun dev` / `sandrun test` (issue 15), each attack attempted.

Root runs the commands on a project another local user owns and can change at any
time: here that user is `nobody`, and every change an attacker makes (a pyproject.toml
that injects metadata, links where root writes or reads, a lock naming root's files) is
made by a process forked as nobody (helpers.fork_and_report). Each test asserts the
refusal (exit 125, the reason) and that nothing was made or overwritten: no bundle, no
user, no results directory, no victim file changed, no connection, no digest printed.
The pure-logic checks (what a field may hold, the lock's sources, the watcher) run
without root.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NOBODY, fork_and_report, run_sandrun
from helpers import users_removed_after as removed_after
from wheelcraft import make_wheel
from wheelhouse import local_wheelhouse

from sandrun.dev import bundles, project_files
from sandrun.dev.project import Project, ProjectError, load_project, parse_project
from sandrun.dev.watch import Watcher
from sandrun.errors import BundleError, EnforcementError, LockFileError

FIXTURE = Path(__file__).parent / "fixtures" / "wronglower"
APP = "t-h15sec"
PROFILE_APP = "t-h15prof"
USERS = (f"sandrun-{APP}", f"sandrun-{APP}-test", f"sandrun-{APP}-th",
         f"sandrun-{PROFILE_APP}", f"sandrun-{PROFILE_APP}-test")
TIMEOUT = 180
as_root = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")


# ---------------------------------------------------------------- 1. the stub's metadata

EVIL = "evil @ file:///srv/evil"
INJECTIONS = [
    ({"requires-python": f">=3.8\nRequires-Dist: {EVIL}"}, "project.requires-python"),
    ({"requires-python": ">=3.8, <<4"}, "project.requires-python"),
    ({"optional-dependencies": {f"x\nRequires-Dist: {EVIL}": ["click"]}},
     "project.optional-dependencies"),
    ({"optional-dependencies": {"a": ["click"], "A": ["click"]}},
     "project.optional-dependencies.A"),
    ({"dependencies": [f'click; os_name == "a\nRequires-Dist: {EVIL}"']},
     "project.dependencies[0]"),
    ({"dependencies": ['click; os_name == "a --index-url=http://10.0.0.1/"']},
     "project.dependencies[0]"),
    ({"dependencies": ['click; os_name == "a\\"']}, "project.dependencies[0]"),
    ({"optional-dependencies": {"t": [EVIL]}}, "project.optional-dependencies.t[0]"),
    ({"scripts": {"a\n[x]": "m:f"}}, "project.scripts.'a\\n[x]'"),
    ({"scripts": {"a": "m:f\nevil = os:system"}}, "project.scripts.a"),
]


@pytest.mark.parametrize(("fields", "where"), INJECTIONS)
def test_metadata_fields_are_checked_when_read(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ProjectError) as caught:
        parse_project({"project": {"name": "a", **fields}}, Path("/srv/p"))
    assert any(p.where.startswith(where) for p in caught.value.problems), \
        caught.value.diagnostics()


def test_direct_references_in_groups_are_refused() -> None:
    with pytest.raises(ProjectError, match="1 problem") as caught:
        parse_project({"project": {"name": "a"}, "dependency-groups": {"test": [EVIL]}},
                      Path("/srv/p"))
    assert "direct reference" in caught.value.diagnostics()


def _raw_project(**fields: Any) -> Project:
    """A Project made without parse_project's checks: what stub_wheel must still refuse."""
    base: dict[str, Any] = {"root": Path("/srv/p"), "name": "a", "version": "1",
                            "dependencies": (), "optional_dependencies": {}, "groups": {},
                            "scripts": {}, "requires_python": None, "dynamic": ()}
    return Project(**{**base, **fields})


@pytest.mark.parametrize("fields", [
    {"requires_python": f">=3.8\nRequires-Dist: {EVIL}"},
    {"optional_dependencies": {f"x\nRequires-Dist: {EVIL}": ("click",)}},
    {"dependencies": (EVIL,)},
    {"dependencies": (f'click; os_name == "\nRequires-Dist: {EVIL}"',)},
    {"name": "a\nRequires-Dist: evil"},
    {"root": Path("/srv/p\nRequires-Dist: evil @ file:///srv/evil")},
    {"scripts": {"x": "m:f\n[other]"}},
    {"scripts": {"x = y": "m:f"}},
])
def test_the_stub_wheel_refuses_what_would_inject(tmp_path: Path, fields: dict[str, Any]
                                                  ) -> None:
    """Defence in depth: even a Project that bypassed the checks of parse_project never
    becomes a METADATA or entry_points.txt saying more than it means."""
    with pytest.raises((ProjectError, BundleError)):
        bundles.stub_wheel(_raw_project(**fields), tmp_path)
    assert list(tmp_path.iterdir()) == []  # no wheel written


def test_metadata_is_parsed_back_and_compared() -> None:
    expected = [("Name", "a"), ("Version", "1")]
    with pytest.raises(BundleError, match="does not say what sandrun wrote"):
        bundles.check_metadata(f"Name: a\nVersion: 1\nRequires-Dist: {EVIL}\n", expected)
    with pytest.raises(BundleError, match="does not say what sandrun wrote"):
        bundles.check_metadata("Name: a\nVersion: 1\n\nbody\n", expected)
    with pytest.raises(BundleError, match="a direct reference"):
        bundles.check_metadata(f"Requires-Dist: {EVIL}\n", [("Requires-Dist", EVIL)])


def test_the_stub_of_a_sound_project_says_exactly_its_metadata(tmp_path: Path) -> None:
    from packaging.metadata import Metadata

    project = parse_project({"project": {
        "name": "My_App", "version": "1.2", "requires-python": ">=3.11",
        "dependencies": ["click>=8.1", "attrs; python_version < '3.12'"],
        "optional-dependencies": {"Fast_IO": ["ujson>=5; sys_platform == 'linux'"]},
        "scripts": {"my-app": "my_app.cli:main"}}}, Path("/srv/p"))
    text = bundles.stub_metadata(project)
    metadata = Metadata.from_email(text, validate=True)
    assert [str(r) for r in metadata.requires_dist or []] == [
        "click>=8.1", 'attrs; python_version < "3.12"',
        'ujson>=5; sys_platform == "linux" and extra == "fast-io"']
    assert metadata.provides_extra == ["fast-io"]  # normalised (PEP 685)
    assert str(metadata.requires_python) == ">=3.11"


# ---------------------------------------------------------------- 4. a project's lock


SHA = "0" * 64


def _lock(**source: str) -> dict[str, Any]:
    return {"packages": [{"name": "x", "version": "1",
                          "wheels": [{**source, "hashes": {"sha256": SHA}}]}]}


@pytest.mark.parametrize(("source", "why"), [
    ({"path": "/root/secret-1.0-py3-none-any.whl"}, "not a file under a --find-links"),
    ({"path": "/srv/wheels/../../root/x-1-py3-none-any.whl"}, "not a file under"),
    ({"path": "x-1-py3-none-any.whl"}, "not a file under"),
    ({"url": "file:///etc/x-1-py3-none-any.whl"}, "not an https URL"),
    ({"url": "http://169.254.169.254/x-1-py3-none-any.whl"}, "not an https URL"),
    ({"url": "https:///x-1-py3-none-any.whl"}, "not an https URL"),
])
def test_a_project_lock_names_only_https_and_find_links(source: dict[str, str], why: str
                                                        ) -> None:
    with pytest.raises(LockFileError) as caught:
        bundles.check_lock_sources(_lock(**source), ("/srv/wheels",), "pylock.toml")
    assert why in caught.value.diagnostics()


def test_lock_sources_that_are_fine_and_directory_sources() -> None:
    bundles.check_lock_sources(_lock(url="https://files.example/x-1-py3-none-any.whl"), (),
                               "pylock.toml")
    bundles.check_lock_sources(_lock(path="/srv/wheels/x-1-py3-none-any.whl"),
                               ("/srv/wheels/",), "pylock.toml")
    for key, value in (("directory", {"path": "/srv/evil"}),
                       ("vcs", {"type": "git", "url": "https://e.org/x"})):
        data = {"packages": [{"name": "x", "version": "1", key: value}]}
        with pytest.raises(LockFileError, match="sources sandrun does not read"):
            bundles.check_lock_sources(data, ("/srv",), "pylock.toml")


# ---------------------------------------------------------------- 5. reading the tree


def test_project_files_are_read_without_links_or_blocking(tmp_path: Path) -> None:
    (tmp_path / "target.toml").write_text('[project]\nname = "leaked"\n')
    (tmp_path / "pyproject.toml").symlink_to(tmp_path / "target.toml")
    with pytest.raises(EnforcementError, match="is a symbolic link"):
        load_project(tmp_path)
    (tmp_path / "pyproject.toml").unlink()
    os.mkfifo(tmp_path / "pyproject.toml")  # a read would block root forever
    began = time.monotonic()
    with pytest.raises(EnforcementError, match="a FIFO, not a regular file"):
        load_project(tmp_path)
    assert time.monotonic() - began < 5
    (tmp_path / "pyproject.toml").unlink()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\n')
    with open(tmp_path / "pylock.toml", "wb") as f:  # sparse: no disk used
        f.truncate(project_files.MAX_LOCK_SIZE + 1)
    with pytest.raises(EnforcementError, match="more than 16777216"):
        load_project(tmp_path)
    (tmp_path / "pylock.toml").unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "src").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(EnforcementError, match="is a symbolic link"):
        load_project(tmp_path)


def test_the_watcher_never_follows_a_link(tmp_path: Path) -> None:
    project, outside = tmp_path / "p", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (project / "link").symlink_to(outside)
    watcher = Watcher(project)
    try:
        assert watcher.mode == "inotify"
        watched = dict(watcher.dirs)
        assert list(watched.values()) == [str(project)]
        (outside / "secret.py").write_text("x")
        assert watcher.wait(0.3) == []
        # A new directory replaced by a link before it is walked: not watched through it.
        watcher._add_tree(str(project / "link"))
        assert watcher.dirs == watched
        (project / "real").mkdir()
        assert watcher.wait(5) == [str(project / "real")]
        assert sorted(watcher.dirs.values()) == [str(project), str(project / "real")]
        (project / "real" / "m.py").write_text("")
        # The polling fallback's walk: the files of the tree, none through the link.
        assert sorted(watcher._scan()) == [str(project / "real" / "m.py")]
    finally:
        watcher.close()


# ---------------------------------------------------------------- the world of the attacks


def _chown_tree(top: Path, uid: int) -> None:
    for current, _dirs, files in os.walk(top):
        os.chown(current, uid, uid)
        for name in files:
            os.chown(os.path.join(current, name), uid, uid)


def _copy_for_nobody(dest: Path, name: str) -> Path:
    """The fixture project as the developer's (nobody's) own, app name `name`."""
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = dest / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('name = "t-h15dev"', f'name = "{name}"'))
    for current, _dirs, files in os.walk(dest):
        os.chmod(current, 0o755)
        for file in files:
            os.chmod(os.path.join(current, file), 0o644)
    _chown_tree(dest, NOBODY)
    return dest


def as_nobody(body: Any) -> Any:
    """Run the attacker's step as nobody (never as root); what it returns."""
    report = fork_and_report(body)
    assert report.exit_code == 0
    return report.value


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-devsec-", dir="/srv"))
    base.chmod(0o755)
    try:
        wheels = local_wheelhouse(base / "wheels")
        make_wheel(wheels, "libx", "2.0", {"libx/__init__.py": "def old():\n    return 1\n"
                                           "def new():\n    return 2\n"})
        for current, _dirs, files in os.walk(base):
            os.chmod(current, 0o755)
            for name in files:
                os.chmod(os.path.join(current, name), 0o644)
        home = base / "home"  # the developer's
        home.mkdir(mode=0o755)
        os.chown(home, NOBODY, NOBODY)
        secret = base / "secret"  # root's: what the attacks aim at
        secret.mkdir(mode=0o700)
        victims = base / "victims"  # root's files and directory another user must not touch
        victims.mkdir(mode=0o755)
        with removed_after(*USERS):
            yield {"base": base, "wheels": wheels, "store": base / "store", "home": home,
                   "secret": secret, "victims": victims}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sandrun(world: dict[str, Any], command: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    return run_sandrun(command, "--no-index", "--find-links", str(world["wheels"]), *args,
                       env={"SANDRUN_STORE": str(world["store"])}, timeout=TIMEOUT,
                       cwd=world["base"])


def made_by_sandrun(world: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The bundles in the dev cache and the app users: what a refusal must not add."""
    cache = world["store"] / "dev"
    found = {p.name for p in cache.glob("*.pyz")} if cache.is_dir() else set()
    users = {u.pw_name for u in pwd.getpwall() if u.pw_name in USERS}
    return found, users


def _write_as_nobody(path: Path, text: str) -> None:
    def body() -> None:
        path.write_text(text)
    as_nobody(body)


# ---------------------------------------------------------------- 1. end to end


def _evil_project(world: dict[str, Any]) -> tuple[Path, Path]:
    """nobody's project whose build backend, if pip ever built it, would leave a marker
    (all it does: it is the proof, not a payload)."""
    evil = world["home"] / "evil"
    marker = world["home"] / "BUILT-BY-PIP"

    def body() -> None:
        evil.mkdir()
        (evil / "pyproject.toml").write_text(
            '[project]\nname = "evil"\nversion = "1"\n[build-system]\nrequires = []\n'
            'build-backend = "backend"\nbackend-path = ["."]\n')
        (evil / "backend.py").write_text(
            f"open({str(marker)!r}, 'a').write(str(__import__('os').getuid()))\n")
    if not evil.exists():
        as_nobody(body)
    return evil, marker


@as_root
@pytest.mark.parametrize("field", ["requires-python", "extra", "marker"])
def test_metadata_injection_never_reaches_pip_or_uv(world: dict[str, Any], field: str
                                                    ) -> None:
    evil, marker = _evil_project(world)
    project = world["home"] / f"inject-{field}"
    if not project.exists():
        _copy_for_nobody(project, APP)
    inject = f"\\nRequires-Dist: evil @ {evil.as_uri()}"
    line = {"requires-python": f'requires-python = ">=3.8{inject}"',
            "extra": f'[project.optional-dependencies]\n"fast{inject}" = ["click"]',
            "marker": f'dependencies = ["libx>=1.0; os_name == \\"posix{inject}\\""]'}[field]
    text = (FIXTURE / "pyproject.toml").read_text().replace('name = "t-h15dev"',
                                                             f'name = "{APP}"')
    text = text.replace('requires-python = ">=3.11"\n', "")
    if field == "marker":
        text = text.replace('dependencies = ["libx>=1.0"]', line)
    elif field == "extra":
        text = text.replace("[project.scripts]", line + "\n\n[project.scripts]")
    else:
        text = text.replace('dependencies = ["libx>=1.0"]',
                            line + '\ndependencies = ["libx>=1.0"]')
    _write_as_nobody(project / "pyproject.toml", text)
    assert "\\nRequires-Dist: evil @ file://" in json.dumps(tomllib.loads(text))
    where = {"requires-python": "project.requires-python",
             "extra": "project.optional-dependencies", "marker": "project.dependencies[0]"}
    before = made_by_sandrun(world)
    proc = sandrun(world, "dev", str(project))
    assert proc.returncode == 125, proc.stderr
    assert where[field] in proc.stderr
    results = world["home"] / f"matrix-{field}"
    proc = sandrun(world, "test", "--matrix", "highest", "--results", str(results),
                   str(project))
    assert proc.returncode == 125, proc.stderr
    assert not marker.exists()  # pip and uv never saw the evil requirement
    assert not results.exists()
    assert made_by_sandrun(world) == before


# ---------------------------------------------------------------- 2. the results directory


def _plant_links(world: dict[str, Any]) -> tuple[Path, Path, dict[Path, bytes]]:
    """nobody's results dir full of links to root's files, and a link to root's dir."""
    victims: dict[Path, bytes] = {}
    for name in ("summary.json", "junit.xml", "output.txt", "matrix.json"):
        victim = world["victims"] / f"victim-{name}"
        victim.write_bytes(b"precious " + name.encode())
        victims[victim] = victim.read_bytes()
    victim_dir = world["victims"] / "dir"
    victim_dir.mkdir(exist_ok=True)
    planted = world["home"] / "results-planted"
    linked = world["home"] / "results-link"

    def body() -> None:
        planted.mkdir()
        for victim in victims:
            (planted / victim.name.removeprefix("victim-")).symlink_to(victim)
        (planted / "highest").symlink_to(victim_dir)
        linked.symlink_to(victim_dir)
    if not planted.exists():
        as_nobody(body)
    return planted, linked, victims


@as_root
def test_results_in_a_directory_of_another_user_are_refused(world: dict[str, Any]) -> None:
    project = world["home"] / "results-project"
    if not project.exists():
        _copy_for_nobody(project, APP)
    planted, linked, victims = _plant_links(world)
    before = made_by_sandrun(world)
    for args in (("--results", str(planted)), ("--results", str(linked)),
                 ("--results", str(planted), "--matrix", "highest"),
                 ("--results", str(linked / "sub"))):
        proc = sandrun(world, "test", "--json", "--no-explain", *args, str(project))
        assert proc.returncode == 125, (args, proc.stderr)
        assert ("owned by uid 65534" in proc.stderr or "symbolic link" in proc.stderr), \
            proc.stderr
        assert "--results" in proc.stderr
    for victim, data in victims.items():
        assert victim.read_bytes() == data and not victim.is_symlink()
    assert list((world["victims"] / "dir").iterdir()) == []  # nothing made through a link
    assert made_by_sandrun(world) == before  # refused before any bundle or user


@as_root
def test_results_are_made_fresh_by_root_and_stay_root_s(world: dict[str, Any]) -> None:
    """A new --results DIR in the developer's directory: made by sandrun, 0755, its files
    regular and root's; the developer cannot plant a link in it (EACCES, as nobody);
    a second run into it replaces its files."""
    project = world["home"] / "fresh-project"
    if not project.exists():
        _copy_for_nobody(project, APP)
    fresh = world["home"] / "results-fresh"
    for _ in range(2):
        proc = sandrun(world, "test", "--json", "--no-explain", "--results", str(fresh),
                       str(project), "--", "-k", "not hostname")
        assert proc.returncode == 0, proc.stderr
        st = os.lstat(fresh)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0
        assert stat.S_IMODE(st.st_mode) == 0o755
        for name in ("junit.xml", "summary.json", "output.txt"):
            st = os.lstat(fresh / name)
            assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1
        assert json.loads((fresh / "summary.json").read_text())["passed"] == 2

    def plant() -> str:
        try:
            (fresh / "next.xml").symlink_to("/etc/passwd")
        except OSError as exc:
            return os.strerror(exc.errno or 0)
        return "ALLOWED"
    assert as_nobody(plant) == os.strerror(13)  # EACCES


# ---------------------------------------------------------------- 3. the project's profile


@as_root
def test_a_project_profile_is_a_request_that_needs_consent(world: dict[str, Any]) -> None:
    """[tool.sandrun] profile asking for more than `default` (read /etc/hostname, which
    one of the fixture's tests needs) is refused with the approve hint (125, before the
    app user exists); it runs with the operator's -p, and after `sandrun approve`."""
    project = world["home"] / "profiled"
    _copy_for_nobody(project, PROFILE_APP)
    profile = ('extends = "default"\n[filesystem]\nread = ["/etc/hostname"]\n')
    text = (project / "pyproject.toml").read_text() + 'profile = "sandrun.toml"\n'

    def body() -> None:
        (project / "sandrun.toml").write_text(profile)
        (project / "pyproject.toml").write_text(text)
    as_nobody(body)
    users = made_by_sandrun(world)[1]
    proc = sandrun(world, "dev", str(project))
    assert proc.returncode == 125, proc.stderr
    assert "needs the operator's approval" in proc.stderr and "sandrun approve" in proc.stderr
    assert "/etc/hostname" in proc.stderr  # the grant asked for, shown to the operator
    proc = sandrun(world, "test", "--no-explain", "--results",
                   str(world["base"] / "profile-refused"), str(project))
    assert proc.returncode == 125, proc.stderr
    assert "sandrun approve" in proc.stderr
    assert made_by_sandrun(world)[1] == users  # refused before any app user was made
    bundle = next(word.rstrip(":`") for word in proc.stderr.split()
                  if word.endswith(".pyz") or word.endswith(".pyz`"))

    proc = sandrun(world, "test", "--no-explain", "-p", str(project / "sandrun.toml"),
                   "--results", str(world["base"] / "profile-p"), str(project))
    assert proc.returncode == 0, proc.stderr  # the operator's -p: hostname readable
    assert "3 passed" in proc.stdout

    approve = run_sandrun("approve", "--yes", bundle, env={"SANDRUN_STORE":
                                                           str(world["store"])})
    assert approve.returncode == 0, approve.stderr
    proc = sandrun(world, "test", "--no-explain", "--results",
                   str(world["base"] / "profile-approved"), str(project))
    assert proc.returncode == 0, proc.stderr
    assert "3 passed" in proc.stdout


# ---------------------------------------------------------------- 4. the project's lock


@as_root
def test_a_project_lock_cannot_make_root_read_or_fetch(world: dict[str, Any]) -> None:
    """nobody's pylock.toml names root's secret file (its digest would be printed), a
    file: URL and an http URL of a local listener: refused before anything is read or
    fetched; a lock naming wheels under --find-links works."""
    secret = world["secret"] / "secret-1.0-py3-none-any.whl"
    secret.write_bytes(b"root's secret bytes")
    secret.chmod(0o600)
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    project = world["home"] / "locked"
    _copy_for_nobody(project, APP)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        lock = ('lock-version = "1.0"\ncreated-by = "nobody"\n'
                f'[[packages]]\nname = "secret"\nversion = "1.0"\n'
                f'archive = {{ path = "{secret}", hashes = {{ sha256 = "{SHA}" }} }}\n'
                f'[[packages]]\nname = "passwd"\nversion = "1.0"\nwheels = [{{ url = '
                f'"file:///etc/passwd-1.0-py3-none-any.whl", hashes = {{ sha256 = "{SHA}" }} }}]\n'
                f'[[packages]]\nname = "internal"\nversion = "1.0"\nwheels = [{{ url = '
                f'"http://127.0.0.1:{port}/internal-1.0-py3-none-any.whl", '
                f'hashes = {{ sha256 = "{SHA}" }} }}]\n')
        _write_as_nobody(project / "pylock.toml", lock)
        before = made_by_sandrun(world)
        proc = sandrun(world, "dev", str(project))
        assert proc.returncode == 125, proc.stderr
        assert "not a file under a --find-links directory" in proc.stderr
        assert proc.stderr.count("is not an https URL") == 2
        assert digest not in proc.stdout + proc.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    assert made_by_sandrun(world) == before

    libx = world["wheels"] / "libx-2.0-py3-none-any.whl"
    good = ('lock-version = "1.0"\ncreated-by = "nobody"\n[[packages]]\nname = "libx"\n'
            f'version = "2.0"\nwheels = [{{ path = "{libx}", hashes = {{ sha256 = '
            f'"{hashlib.sha256(libx.read_bytes()).hexdigest()}" }} }}]\n')
    _write_as_nobody(project / "pylock.toml", good)
    proc = sandrun(world, "dev", str(project), "--", "locked")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:1] == ["hello locked"]


# ---------------------------------------------------------------- 5. links in the tree


@as_root
def test_links_in_the_project_are_never_followed(world: dict[str, Any]) -> None:
    """nobody points pyproject.toml, pylock.toml, the profile and tox.ini at root's
    files, and makes pyproject.toml a FIFO: each refused (125), nothing of root's file
    printed, nothing made, no hang."""
    secret = world["secret"] / "config.toml"
    secret.write_text('[project]\nname = "root-secret-name"\n[tool.pytest.ini_options]\n'
                      '[pytest]\n')
    secret.chmod(0o600)
    project = world["home"] / "linked"
    _copy_for_nobody(project, APP)
    original = (project / "pyproject.toml").read_text()
    cases = {
        "pyproject": lambda: _swap(project / "pyproject.toml", secret),
        "lock": lambda: (project / "pylock.toml").symlink_to(secret),
        "profile": lambda: ((project / "prof.toml").symlink_to(secret),
                            (project / "pyproject.toml").write_text(
                                original + 'profile = "prof.toml"\n')),
        "fifo": lambda: (os.unlink(project / "pyproject.toml"),
                         os.mkfifo(project / "pyproject.toml")),
    }
    before = made_by_sandrun(world)
    for case, attack in cases.items():
        def body(attack: Any = attack) -> None:
            for name in ("pyproject.toml", "pylock.toml", "prof.toml"):
                if os.path.lexists(project / name):
                    os.unlink(project / name)
            (project / "pyproject.toml").write_text(original)
            attack()
        as_nobody(body)
        began = time.monotonic()
        proc = sandrun(world, "dev", str(project))
        assert proc.returncode == 125, (case, proc.stderr)
        assert "symbolic link" in proc.stderr or "a FIFO" in proc.stderr, (case, proc.stderr)
        assert "root-secret-name" not in proc.stdout + proc.stderr
        assert time.monotonic() - began < 60

    def tox_link() -> None:
        os.unlink(project / "pyproject.toml")
        (project / "pyproject.toml").write_text(original)
        (project / "tox.ini").symlink_to(secret)
    as_nobody(tox_link)
    results = world["home"] / "results-tox"
    proc = sandrun(world, "test", "--results", str(results), str(project))
    assert proc.returncode == 125, proc.stderr
    assert "tox.ini is a symbolic link" in proc.stderr
    assert not results.exists()
    assert made_by_sandrun(world) == before


def _swap(path: Path, target: Path) -> None:
    os.unlink(path)
    path.symlink_to(target)
