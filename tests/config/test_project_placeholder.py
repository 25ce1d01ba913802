"""{project}: the project directory of the working directory, as black, mypy, ruff and
pytest find it (the nearest directory upwards holding a project marker), decided by lstat
alone, never `/`, and never widened by a marker another user planted.

Pure logic on directory trees first; then real launches as root under the shipped `cli`
profile from a project's `src/`: the app reads the project's config in the parent
directory but cannot write it, nor read outside the project, nor follow a marker that is a
link out of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NOBODY, run_sandrun, users_removed_after
from wheelcraft import make_wheel

from sandrun.config.profile import (
    CALLER_PLACEHOLDERS,
    PLACEHOLDERS,
    PROJECT_MARKERS,
    load_profile,
    load_profile_text,
    project_dir,
)
from sandrun.errors import ProfileError

APP = "projtest"
APP_USER = f"sandrun-{APP}"

APP_SOURCE = '''\
import errno, os, sys

def attempt(name, action):
    try:
        action()
        print(name, "ok", flush=True)
    except OSError as exc:
        print(name, errno.errorcode[exc.errno], flush=True)

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    for spec in sys.argv[1:]:
        verb, path = spec.split("=", 1)
        if verb == "read":
            attempt(spec, lambda: open(path).read())
        elif verb == "write":
            attempt(spec, lambda: open(path, "a").close())
    return 0
'''


# ---------------------------------------------------------------- pure logic


def tree(base: Path, *paths: str) -> None:
    """Directories (ending in /) and empty files under base."""
    for path in paths:
        target = base / path
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")


def test_the_nearest_marked_directory_is_the_project(tmp_path: Path) -> None:
    tree(tmp_path, "outer/pyproject.toml", "outer/inner/setup.cfg", "outer/inner/src/pkg/")
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    assert project_dir(str(inner / "src" / "pkg"))[:2] == (str(inner), "setup.cfg")
    assert project_dir(str(inner))[:2] == (str(inner), "setup.cfg")  # cwd included
    assert project_dir(str(outer / "."))[:2] == (str(outer), "pyproject.toml")


@pytest.mark.parametrize("marker", PROJECT_MARKERS)
def test_each_marker_makes_a_project(tmp_path: Path, marker: str) -> None:
    tree(tmp_path, f"proj/{marker}", "proj/src/")
    assert project_dir(str(tmp_path / "proj" / "src"))[:2] == (str(tmp_path / "proj"), marker)


def test_without_a_marker_it_is_the_working_directory(tmp_path: Path) -> None:
    # tmp_path's ancestors (/tmp: world-writable) end the search whatever they hold.
    tree(tmp_path, "plain/sub/")
    cwd = str(tmp_path / "plain" / "sub")
    found, marker, checked = project_dir(cwd)
    assert (found, marker) == (cwd, "")
    assert f"{cwd}/pyproject.toml" in checked  # what a warm start must see unchanged


def test_never_the_root_directory() -> None:
    assert project_dir("/")[:2] == ("/", "")
    profile = load_profile_text('[filesystem]\nread = ["{project}"]\n', "t.toml")
    with pytest.raises(ProfileError) as info:
        profile.expand({"project": "/"})
    assert "placeholder {project} is '/'" in info.value.diagnostics()
    assert {"cwd", "project"} == CALLER_PLACEHOLDERS and "project" in PLACEHOLDERS


def test_markers_are_only_looked_at(tmp_path: Path) -> None:
    """lstat only: a FIFO named pyproject.toml would block an open() forever; a link
    named setup.cfg counts as a marker without being followed (dangling here)."""
    tree(tmp_path, "fifo/src/", "link/src/")
    os.mkfifo(tmp_path / "fifo" / "pyproject.toml")
    (tmp_path / "link" / "setup.cfg").symlink_to(tmp_path / "nowhere")
    result: list[tuple[str, str, tuple[str, ...]]] = []
    worker = threading.Thread(target=lambda: result.append(
        project_dir(str(tmp_path / "fifo" / "src"))), daemon=True)
    worker.start()
    worker.join(10)
    assert result and result[0][:2] == (str(tmp_path / "fifo"), "pyproject.toml")
    assert project_dir(str(tmp_path / "link" / "src"))[:2] == (str(tmp_path / "link"),
                                                               "setup.cfg")


def test_placeholder_is_checked_where_it_is_written() -> None:
    ok = load_profile_text('[filesystem]\nread = ["{project}/pyproject.toml"]\n', "t.toml")
    assert ok.placeholders_used() == {"project"}
    assert ok.expand({"project": "/srv/p"}).read == ("/srv/p/pyproject.toml",)
    with pytest.raises(ProfileError) as info:
        load_profile_text('[filesystem]\nread = ["/x/{project}"]\n', "t.toml")
    assert "must start the path" in info.value.diagnostics()


def test_cli_profile_reads_the_project_and_writes_the_working_directory() -> None:
    cli = load_profile("cli")
    assert cli.read == ("{project}",) and cli.read_write == ("{state}", "{cwd}")
    assert load_profile("git").read == ("{project}",)  # presets based on cli keep it


def test_an_ancestor_others_can_write_ends_the_search(require_root: None,
                                                      tmp_path: Path) -> None:
    """A marker in a directory another user can write (or owns) is not the project's."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-project-", dir="/var/lib"))
    try:
        tree(base, "shared/pyproject.toml", "shared/work/src/", "theirs/pyproject.toml",
             "theirs/work/src/")
        (base / "shared").chmod(0o777)  # anyone could have put pyproject.toml there
        os.chown(base / "theirs", NOBODY, NOBODY)  # another user's directory
        for name in ("shared", "theirs"):
            cwd = str(base / name / "work" / "src")
            assert project_dir(cwd)[:2] == (cwd, ""), name
        (base / "shared").chmod(0o755)
        os.chown(base / "theirs", 0, 0)
        for name in ("shared", "theirs"):
            assert project_dir(str(base / name / "work" / "src"))[0] == str(base / name)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- real launches


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int,
        require_seccomp: None) -> Iterator[dict[str, Path]]:
    """Under /var/lib (the sandbox's /tmp is private): the bundle, a store, a project
    whose src/ the app user owns, a world-writable dir holding a planted marker with a
    project below it, and a secret outside every project."""
    from sandrun.launch.users import resolve_user

    base = Path(tempfile.mkdtemp(prefix="sandrun-project-", dir="/var/lib"))
    base.chmod(0o755)
    with users_removed_after(APP_USER):
        try:
            wheels = base / "wheels"
            make_wheel(wheels, APP, "1.0", {f"{APP}.py": APP_SOURCE})
            bundle = base / f"{APP}.pyz"
            proc = run_sandrun("bundle", APP, "--no-index", "--find-links", str(wheels),
                               "-e", f"{APP}:main", "-p", "cli", "-o", str(bundle))
            assert proc.returncode == 0, proc.stderr
            secret = base / "secret.txt"
            secret.write_text("outside every project\n")
            secret.chmod(0o644)  # Unix permissions allow it: only Landlock denies it
            tree(base, "proj/pyproject.toml", "proj/src/", "shared/pyproject.toml",
                 "shared/proj/src/")
            (base / "proj" / "setup.cfg").symlink_to(secret)  # a marker linking out
            (base / "shared").chmod(0o777)
            for path in (base / "proj", base / "shared" / "proj"):
                path.chmod(0o755)
                (path / "src").chmod(0o755)
            (base / "proj" / "pyproject.toml").chmod(0o666)  # only Landlock may refuse
            (base / "shared" / "pyproject.toml").chmod(0o644)
            user = resolve_user(None, APP, create=True)
            for src in (base / "proj" / "src", base / "shared" / "proj" / "src"):
                os.chown(src, user.uid, user.gid)
            yield {"base": base, "bundle": bundle, "store": base / "store",
                   "secret": secret}
        finally:
            shutil.rmtree(base, ignore_errors=True)


def run_in(lab: dict[str, Path], cwd: Path, *specs: str,
           extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run_sandrun("exec", "--store", str(lab["store"]), "-p", "cli", *extra,
                       str(lab["bundle"]), "--", *specs, cwd=cwd)


def test_from_src_the_project_is_readable_not_writable(lab: dict[str, Path]) -> None:
    proj = lab["base"] / "proj"
    config = proj / "pyproject.toml"
    proc = run_in(lab, proj / "src", f"read={config}", f"write={config}", "write=out.txt",
                  f"read={lab['secret']}", f"read={proj / 'setup.cfg'}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"read={config} ok",  # {project} is the parent: readable
        f"write={config} EACCES",  # ... but not writable (0666: Landlock alone refuses)
        "write=out.txt ok",  # {cwd} stays writable
        f"read={lab['secret']} EACCES",  # outside the project
        f"read={proj / 'setup.cfg'} EACCES",  # a marker linking out leads nowhere
    ], proc.stdout
    plan = run_in(lab, proj / "src", extra=("--dry-run",))
    assert f"project      {proj} (holds pyproject.toml)" in plan.stdout, plan.stdout


def test_a_planted_marker_does_not_widen_the_project(lab: dict[str, Path]) -> None:
    """shared/ is world-writable: its pyproject.toml could be anyone's, so the project of
    shared/proj/src is not shared/ (nor shared/proj, which has no marker): it is src/."""
    shared = lab["base"] / "shared"
    planted = shared / "pyproject.toml"
    src = shared / "proj" / "src"
    proc = run_in(lab, src, f"read={planted}", "write=out.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"read={planted} EACCES", "write=out.txt ok"]
    plan = run_in(lab, src, extra=("--dry-run",))
    assert f"project      {src} (no project marker" in plan.stdout, plan.stdout


def test_a_marker_made_later_ends_the_warm_start(lab: dict[str, Path]) -> None:
    """The warm start reuses what the cold path decided only while every input of its
    record is unchanged, and the marker paths the search looked at are inputs: a
    pyproject.toml created later invalidates the record, and the next (cold) launch has
    the new project as {project}."""
    import marshal

    from sandrun.launch import warm_exec
    from sandrun.launch.users import resolve_user

    late = lab["base"] / "late"
    tree(late, "notes.txt", "src/")
    late.chmod(0o755)
    (late / "notes.txt").chmod(0o644)
    user = resolve_user(None, APP, create=True)
    os.chown(late / "src", user.uid, user.gid)
    notes = f"read={late / 'notes.txt'}"
    first = run_in(lab, late / "src", notes)
    assert first.stdout.splitlines() == [f"{notes} EACCES"], first.stderr

    marker = str(late / "pyproject.toml")
    records = [marshal.loads(p.read_bytes()) for p in (lab["store"] / "launch").iterdir()
               if "." not in p.name]
    inputs = [{path: expected for path, _follow, expected in r["inputs"]} for r in records]
    inputs = [i for i in inputs if f"{late}/src/pyproject.toml" in i]  # this launch's
    assert len(inputs) == 1 and inputs[0][marker] is None  # looked at, absent
    Path(marker).write_text("")
    assert warm_exec.identity(marker) != inputs[0][marker]  # so the record is stale
    again = run_in(lab, late / "src", notes)
    assert again.stdout.splitlines() == [f"{notes} ok"], again.stderr
