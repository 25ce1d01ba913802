"""Fast tests of what `sandrun dev` and `sandrun test` decide without running anything:
pyproject.toml read statically, the entry point and app name, the stub wheel, pytest's
configuration file, the matrix strategies, the quick record's key, the watcher."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sandrun.dev import bundles, matrix, quick, testing
from sandrun.dev.project import (
    ProjectError,
    app_name,
    choose_entry,
    load_project,
    parse_project,
    requested_profile,
)
from sandrun.dev.watch import Watcher, ignored
from sandrun.errors import BundleError, UsageError


def project_of(text: str, root: Path = Path("/srv/p")) -> Any:
    return parse_project(tomllib.loads(text), root)


BASIC = '''
[project]
name = "My_App"
version = "1.2"
requires-python = ">=3.11"
dependencies = ["click>=8.1", "attrs; python_version < '3.12'"]
[project.optional-dependencies]
fast = ["ujson>=5; sys_platform == 'linux'"]
[project.scripts]
my-app = "my_app.cli:main [fast]"
'''


def test_static_metadata() -> None:
    p = project_of(BASIC)
    assert (p.name, p.version, p.requires_python) == ("My_App", "1.2", ">=3.11")
    assert p.dependencies == ("click>=8.1", "attrs; python_version < '3.12'")
    assert p.scripts == {"my-app": "my_app.cli:main"}  # extras and spaces dropped
    assert p.optional_dependencies == {"fast": ("ujson>=5; sys_platform == 'linux'",)}


def test_dynamic_dependencies_are_refused_with_the_way_out() -> None:
    with pytest.raises(ProjectError) as caught:
        project_of('[project]\nname = "a"\ndynamic = ["dependencies", "version"]\n')
    text = caught.value.diagnostics()
    assert "dependencies are dynamic" in text and "list them statically" in text


def test_dynamic_version_is_fine() -> None:
    p = project_of('[project]\nname = "a"\ndynamic = ["version"]\ndependencies = []\n')
    assert p.version == "0"


def test_every_problem_is_listed() -> None:
    with pytest.raises(ProjectError) as caught:
        project_of('[project]\nname = 3\ndependencies = ["ok", "not a req ((", 4]\n'
                   '[project.scripts]\nx = 5\n[tool.sandrun]\ncolour = "red"\n')
    wheres = [p.where for p in caught.value.problems]
    assert wheres == ["project.name", "project.dependencies[1]", "project.dependencies[2]",
                      "project.scripts.x", "tool.sandrun.colour"]


def test_direct_references_are_refused() -> None:
    with pytest.raises(ProjectError, match="1 problem") as caught:
        project_of('[project]\nname = "a"\ndependencies = ["x @ https://e.org/x.whl"]\n')
    assert "direct reference" in caught.value.diagnostics()


def test_no_project_table() -> None:
    with pytest.raises(ProjectError, match=r"no \[project\] table"):
        project_of('[tool.poetry]\nname = "a"\n')


GROUPS = '''
[project]
name = "a"
[project.optional-dependencies]
test = ["nose"]
[dependency-groups]
Lint = ["ruff"]
typing = ["mypy", {include-group = "lint"}]
test = ["pytest>=8", {include-group = "typing"}, "pytest>=8"]
'''


def test_dependency_groups_win_over_the_test_extra_and_include_groups() -> None:
    p = project_of(GROUPS)
    assert p.groups["lint"] == ("ruff",)  # names normalised
    assert p.test_requirements() == ("pytest>=8", "mypy", "ruff")  # expanded, once each


def test_the_test_extra_when_there_is_no_group() -> None:
    p = project_of('[project]\nname = "a"\n[project.optional-dependencies]\nTest = ["x"]\n')
    assert p.test_requirements() == ("x",)


def test_no_test_dependencies() -> None:
    with pytest.raises(ProjectError, match="declares no test dependencies") as caught:
        project_of('[project]\nname = "a"\n').test_requirements()
    assert "[dependency-groups] test" in caught.value.diagnostics()


@pytest.mark.parametrize(("groups", "message"), [
    ('a = [{include-group = "b"}]\nb = [{include-group = "a"}]', "include-group cycle"),
    ('a = [{include-group = "nope"}]', "unknown group 'nope'"),
    ('a = [{include = "b"}]', 'neither a requirement string nor {include-group'),
])
def test_bad_dependency_groups(groups: str, message: str) -> None:
    with pytest.raises(ProjectError) as caught:
        project_of(f'[project]\nname = "x"\n[dependency-groups]\n{groups}\n')
    assert message in caught.value.diagnostics()


def test_source_directory_src_layout_or_flat(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\n')
    assert load_project(tmp_path).source_dir == tmp_path
    (tmp_path / "src").mkdir()
    assert load_project(tmp_path).source_dir == tmp_path / "src"
    (tmp_path / "lib").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\n'
                                             '[tool.sandrun]\nsource = "lib"\n')
    assert load_project(tmp_path).source_dir == tmp_path / "lib"


@pytest.mark.parametrize("source", ["../elsewhere", "/srv/x", "missing"])
def test_source_must_be_a_directory_inside(tmp_path: Path, source: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "a"\n'
                                             f'[tool.sandrun]\nsource = "{source}"\n')
    with pytest.raises(ProjectError) as caught:
        load_project(tmp_path)
    assert "tool.sandrun.source" in caught.value.diagnostics()


def test_entry_point_choice() -> None:
    p = project_of(BASIC)
    assert choose_entry(p).entry_point == "my_app.cli:main"
    assert choose_entry(p).script == "my-app"
    assert choose_entry(p, entry_point="pkg.mod:run").script is None
    with pytest.raises(UsageError, match="not a script"):
        choose_entry(p, script="other")
    with pytest.raises(UsageError, match="at most one"):
        choose_entry(p, script="my-app", entry_point="a:b")
    two = project_of('[project]\nname = "a"\n[project.scripts]\nx = "a:x"\ny = "a:y"\n')
    with pytest.raises(UsageError, match="2 scripts") as caught:
        choose_entry(two)
    assert "--script NAME" in caught.value.hint
    with pytest.raises(UsageError, match="no script to run"):
        choose_entry(project_of('[project]\nname = "a"\n'))


def test_app_name_and_profile(tmp_path: Path) -> None:
    p = project_of(BASIC)
    assert app_name(p, choose_entry(p)) == "my-app"
    assert app_name(p, choose_entry(p, entry_point="a:b")) == "my-app"  # the project's
    assert app_name(p, choose_entry(p), "Other_Name") == "other-name"
    with pytest.raises(UsageError, match="app name"):
        app_name(p, choose_entry(p), "x" * 30)
    # The project's profile is a request (embedded in the bundle), never the operator's
    # -p: a file is read with the project (no link followed) and rendered self-contained.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.toml").write_text('extends = "default"\n'
                                                '[filesystem]\nread = ["/etc/hostname"]\n')
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\n[tool.sandrun]\n'
                                             'name = "b"\nprofile = "conf/app.toml"\n')
    requested = requested_profile(load_project(tmp_path))
    assert requested is not None and requested.source == str(tmp_path / "conf/app.toml")
    assert requested.shipped is None and requested.text and "/etc/hostname" in requested.text
    assert requested.name == "app"
    shipped = requested_profile(project_of('[project]\nname = "a"\n[tool.sandrun]\n'
                                           'profile = "cli"\n'))
    assert shipped is not None and (shipped.shipped, shipped.text) == ("cli", None)
    assert requested_profile(project_of(BASIC)) is None


def test_test_app_names_are_never_truncated() -> None:
    assert testing.test_app_name(project_of(BASIC)) == "my-app-test"
    p = project_of('[project]\nname = "a-long-project-name-22"\n')
    with pytest.raises(UsageError, match="longer than 24") as caught:
        testing.test_app_name(p)
    assert "at most 19 characters" in caught.value.hint


# ---------------------------------------------------------------- the stub wheel


def test_stub_wheel_is_metadata_only_and_reproducible(tmp_path: Path) -> None:
    p = project_of(BASIC)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = bundles.stub_wheel(p, tmp_path / "a")
    second = bundles.stub_wheel(p, tmp_path / "b")
    assert first.name == "my_app-1.2-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        metadata = zf.read("my_app-1.2.dist-info/METADATA").decode()
        scripts = zf.read("my_app-1.2.dist-info/entry_points.txt").decode()
    assert all(n.startswith("my_app-1.2.dist-info/") for n in names)  # no code
    assert "Requires-Dist: click>=8.1\n" in metadata
    assert 'Requires-Dist: ujson>=5; (sys_platform == "linux") and extra == "fast"' in metadata
    assert "my-app = my_app.cli:main" in scripts


def test_bundle_key_ignores_source_but_not_metadata(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(BASIC)
    (tmp_path / "my_app.py").write_text("x = 1\n")
    p = load_project(tmp_path)
    spec = bundles.DevBundleSpec(project=p, entry=choose_entry(p), app="my-app")
    key = spec.key()
    (tmp_path / "my_app.py").write_text("x = 2\n")
    assert bundles.DevBundleSpec(project=load_project(tmp_path), entry=choose_entry(p),
                                 app="my-app").key() == key
    (tmp_path / "pyproject.toml").write_text(BASIC.replace("click>=8.1", "click>=8.2"))
    assert bundles.DevBundleSpec(project=load_project(tmp_path), entry=choose_entry(p),
                                 app="my-app").key() != key


def test_lock_with_stub(tmp_path: Path) -> None:
    stub = bundles.stub_wheel(project_of(BASIC), tmp_path)
    lock = tmp_path / "pylock.toml"
    lock.write_text('lock-version = "1.0"\ncreated-by = "x"\n[[packages]]\nname = "click"\n'
                    'version = "8.1"\nwheels = [{ url = "https://e.org/click-8.1-py3-none-'
                    'any.whl", hashes = { sha256 = "' + "0" * 64 + '" } }]\n')
    (tmp_path / "out").mkdir()
    copy = bundles.lock_with_stub(lock.read_bytes(), stub, tmp_path / "out")
    data = tomllib.loads(copy.read_text())
    assert [p["name"] for p in data["packages"]] == ["click", "my-app"]
    assert data["packages"][1]["archive"]["hashes"]["sha256"] == \
        hashlib.sha256(stub.read_bytes()).hexdigest()
    lock.write_text(lock.read_text() + '[[packages]]\nname = "My-App"\nversion = "1"\n'
                    'directory = { path = "." }\n')
    with pytest.raises(BundleError, match="locks the project my-app itself"):
        bundles.lock_with_stub(lock.read_bytes(), stub, tmp_path / "out")


# ---------------------------------------------------------------- pytest, matrix, quick


@pytest.mark.parametrize(("files", "expected"), [
    ({}, os.devnull),
    ({"pyproject.toml": "[project]\nname = 'a'\n"}, os.devnull),
    ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "pyproject.toml"),
    ({"pyproject.toml": "[tool.pytest.ini_options]\n", "pytest.ini": ""}, "pytest.ini"),
    ({"tox.ini": "[tox]\n", "setup.cfg": "[tool:pytest]\n"}, "setup.cfg"),
    ({"tox.ini": "[pytest]\n", "setup.cfg": "[tool:pytest]\n"}, "tox.ini"),
    ({".pytest.toml": ""}, ".pytest.toml"),
])
def test_pytest_configuration_is_the_projects_own(tmp_path: Path, files: dict[str, str],
                                                   expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = testing.pytest_config(tmp_path)
    assert found == (expected if expected == os.devnull else str(tmp_path / expected))
    args = testing.pytest_args(tmp_path, "/state/j.xml", ("-k", "x"))
    assert args[:8] == ("--rootdir", str(tmp_path), "-c", found, "--confcutdir",
                        str(tmp_path), "-p", "no:cacheprovider")
    assert args[-3:] == ("--junitxml=/state/j.xml", "-k", "x")


def test_junit_counts() -> None:
    result = testing.TestResult(exit_code=1, results_dir="/r")
    testing._count(result, b'<testsuites><testsuite tests="5" failures="1" errors="1" '
                           b'skipped="1"/></testsuites>')
    assert (result.tests, result.passed, result.failed, result.errors, result.skipped) == \
        (5, 2, 1, 1, 1)


def test_matrix_strategies() -> None:
    assert matrix.parse_strategies("lowest-direct, highest,highest") == ["lowest-direct",
                                                                          "highest"]
    with pytest.raises(UsageError, match="unknown strategy newest"):
        matrix.parse_strategies("highest,newest")


def test_uv_command_is_wheels_only_and_offline_when_asked(tmp_path: Path) -> None:
    request = testing.TestRequest(find_links=("wh",), no_index=True)
    command = matrix.uv_command("lowest-direct", tmp_path / "in", tmp_path / "out.toml",
                                "3.11", request, "2025-01-01")
    assert command[1:3] == ["pip", "compile"] and Path(command[0]).name == "uv"
    joined = " ".join(command)
    for part in ("--format pylock.toml", "--resolution lowest-direct",
                 "--only-binary :all:", "--python-version 3.11", "--no-index",
                 f"--find-links {os.path.abspath('wh')}", "--exclude-newer 2025-01-01",
                 "--no-config"):
        assert part in joined


def test_quick_key_is_stable_and_names_the_words() -> None:
    words = ["--find-links", "wh", "proj"]
    assert quick._name(quick.quick_key(words)) == quick._name(quick.quick_key(list(words)))
    assert quick._name(quick.quick_key(words)) != quick._name(quick.quick_key(["proj"]))
    assert quick.split_words(["a", "--", "b", "--", "c"]) == (["a"], ["b", "--", "c"])


# ---------------------------------------------------------------- the watcher


def test_watcher_sees_an_edit_and_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "m.py"
    module.write_text("x = 1\n")
    watcher = Watcher(tmp_path)
    try:
        assert watcher.mode == "inotify"
        (tmp_path / "pkg" / "__pycache__").mkdir()
        (tmp_path / "pkg" / "m.cpython-311.pyc").write_bytes(b"")
        assert watcher.wait(0.2) == []
        timer = threading.Timer(0.05, lambda: module.write_text("x = 2\n"))
        timer.start()
        began = time.monotonic()
        changed = watcher.wait(5)
        assert changed == [str(module)] and time.monotonic() - began < 1
        (tmp_path / "pkg" / "new").mkdir()  # a new directory is watched too
        watcher.wait(0.2)
        (tmp_path / "pkg" / "new" / "n.py").write_text("")
        assert watcher.wait(5) == [str(tmp_path / "pkg" / "new" / "n.py")]
    finally:
        watcher.close()


def test_ignored_names() -> None:
    assert all(ignored(n) for n in ("a.pyc", ".m.py.swp", "m.py~", ".#m.py", "4913",
                                    "__pycache__", ".git", "x.egg-info"))
    assert not any(ignored(n) for n in ("m.py", "data.json", "pyproject.toml"))


def test_the_quick_path_imports_only_what_loads_in_microseconds() -> None:
    """`sandrun dev`'s quick path runs before the full command on every edit -> result
    loop: like the warm exec path, the standard library's cheap modules only."""
    import subprocess
    import sys

    code = ("import sys\nfrom sandrun.dev import quick\n"
            "heavy = {'click', 'json', 'dataclasses', 'typing', 'pathlib', 're', 'tomllib',"
            " 'packaging', 'sandrun.dev.project', 'sandrun.launch.launcher'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]"
