"""A hostile bundle author writes the manifest: every field is validated where it is parsed.

Each crafted bundle differs from the valid bundlecraft bundle in one manifest field (or a
shipped .pyc). `sandrun verify` must exit 1 naming the field and what is wrong, and
`sandrun exec` as root must exit 125 having created nothing: no user, no store, no state
dir, nothing at a traversal target. Unit tests cover the interpreter name rule (a
`python3-config` is never run), trust-policy globs (`*` never crosses `/`) and the reuse
of an existing `sandrun-<app>` account.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bundlecraft import (
    PROFILE,
    bundle_bytes,
    bundle_with_manifest_bytes,
    default_files,
    make_manifest,
    write,
)
from helpers import run_sandrun, user_exists, users_removed_after
from wheelcraft import make_wheel

from sandrun.bundle.manifest import MANIFEST_NAME, Manifest, canonical_json, manifest_field_problems
from sandrun.bundle.verify import verify_bundle
from sandrun.errors import (
    BundleError,
    InterpreterNotFound,
    UserError,
    VerificationError,
)
from sandrun.launch.interpreter import (
    candidates,
    describe_interpreter,
    find_interpreter,
    name_version,
)
from sandrun.launch.users import (
    check_user,
    default_user_name,
    default_user_problems,
    resolve_user,
)
from sandrun.supply.trust import app_glob_matches, app_glob_pattern

LONG_A = "a" * 24 + "x"  # 25 characters: sandrun-<name> would be 33
LONG_B = "a" * 24 + "y"  # shares the 24-character prefix: truncation would merge them


def manifest_obj() -> dict[str, Any]:
    """The valid bundle's manifest as JSON data, to be edited."""
    return json.loads(make_manifest(default_files()).to_bytes())


def edited(change: Callable[[dict[str, Any]], object]) -> bytes:
    """A bundle whose manifest is the valid one after `change(obj)` (canonical JSON)."""
    obj = manifest_obj()
    change(obj)
    return bundle_with_manifest_bytes(canonical_json(obj))


def setter(*path: str | int, value: object) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        node: Any = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def dependency(**fields: object) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        dep = {"name": "demo", "version": "1.0", "wheel": "demo-1.0-py3-none-any.whl",
               "sha256": "ab" * 32}
        obj["dependencies"] = [{**dep, **fields}]
    return change


def with_bytecode(names: list[str], listed: bool = True) -> bytes:
    files = default_files()
    extra = {name: (b"\x00" * 16 + b"bytecode", 0o644) for name in names}
    manifest = make_manifest({**files, **extra} if listed else files)
    return bundle_bytes({**files, **extra}, manifest=manifest)


# (manifest change, app name it claims, where (after "manifest.json: "), words of `what`)
CASES: dict[str, tuple[bytes, str, str, tuple[str, ...]]] = {
    "name traversal": (edited(setter("app", "name", value="../../etc/x")), "../../etc/x",
                       "app.name", ("'../../etc/x' contains '/'",)),
    "name long 1": (edited(setter("app", "name", value=LONG_A)), LONG_A, "app.name",
                    ("25 characters long", "at most 24", "never truncated")),
    "name long 2": (edited(setter("app", "name", value=LONG_B)), LONG_B, "app.name",
                    ("25 characters long",)),
    "name glob": (edited(setter("app", "name", value="web-*")), "web-*", "app.name",
                  ("contains '*'",)),
    "name slash": (edited(setter("app", "name", value="a/b")), "a/b", "app.name",
                   ("contains '/'",)),
    "name newline": (edited(setter("app", "name", value="demo\n")), "demo\n", "app.name",
                     ("contains '\\n'",)),
    "name upper": (edited(setter("app", "name", value="Demo")), "Demo", "app.name",
                   ("contains 'D'",)),
    "name dot": (edited(setter("app", "name", value="..")), "..", "app.name",
                 ("must start with a letter or digit",)),
    "name type": (edited(setter("app", "name", value=["demo"])), "demo", "app.name",
                  ("must be a string, got an array",)),
    "python config": (edited(setter("target", "python", value="3-config")), "demo",
                      "target.python", ("'3-config' is not a Python version of the form 3.N",)),
    "python path": (edited(setter("target", "python", value="3.11/../x")), "demo",
                    "target.python", ("'3.11/../x' is not",)),
    "python major": (edited(setter("target", "python", value="3")), "demo", "target.python",
                     ("'3' is not",)),
    "python number": (edited(setter("target", "python", value=3.11)), "demo", "target.python",
                      ("must be a string", "got a number")),
    "entry point code": (edited(setter("app", "entry_point", value="os:system;import os")),
                         "demo", "app.entry_point", ("is not MODULE:ATTRIBUTE",)),
    "entry point no attr": (edited(setter("app", "entry_point", value="demo.core")), "demo",
                            "app.entry_point", ("is not MODULE:ATTRIBUTE",)),
    "console script": (edited(setter("app", "console_script", value="../bin/sh")), "demo",
                       "app.console_script", ("is not a console script name",)),
    "version": (edited(setter("app", "version", value="nightly")), "demo", "app.version",
                ("not a PEP 440 version",)),
    "version escape": (edited(setter("app", "version", value="1.0\x1b[2J")), "demo",
                       "app.version", ("printable ASCII",)),
    "platforms empty": (edited(setter("target", "platforms", value=[])), "demo",
                        "target.platforms", ("is empty",)),
    "platform path": (edited(setter("target", "platforms", value=["../x"])), "demo",
                      "target.platforms[0]", ("is not a platform tag",)),
    "abi": (edited(setter("target", "abi", value="cp311;rm")), "demo", "target.abi",
            ("is not an ABI tag",)),
    "epoch negative": (edited(setter("source_date_epoch", value=-1)), "demo",
                       "source_date_epoch", ("out of range",)),
    "epoch string": (edited(setter("source_date_epoch", value="1577836800")), "demo",
                     "source_date_epoch", ("must be an integer", "got a string")),
    "epoch bool": (edited(setter("source_date_epoch", value=True)), "demo",
                   "source_date_epoch", ("got a boolean",)),
    "preamble hash": (edited(setter("preamble_sha256", value="AB" * 32)), "demo",
                      "preamble_sha256", ("64 lower-case hex digits",)),
    "format": (edited(setter("format", value="1")), "demo", "format",
               ("not a manifest format",)),
    "unknown field": (edited(setter("run_as", value="root")), "demo", "run_as",
                      ("unknown field",)),
    "unknown app field": (edited(setter("app", "user", value="root")), "demo", "app.user",
                          ("unknown field in app",)),
    "missing field": (edited(lambda obj: obj["target"].pop("python")), "demo",
                      "target.python", ("is missing",)),
    "dependency name": (edited(dependency(name="../x")), "demo", "dependencies[0].name",
                        ("is not a distribution name",)),
    "dependency wheel traversal": (
        edited(dependency(wheel="../../demo-1.0-py3-none-any.whl")), "demo",
        "dependencies[0].wheel", ("is not a wheel file name",)),
    "dependency wheel other": (edited(dependency(wheel="other-1.0-py3-none-any.whl")), "demo",
                               "dependencies[0].wheel", ("is a wheel of 'other'",)),
    "dependency wheel version": (edited(dependency(wheel="demo-2.0-py3-none-any.whl")),
                                 "demo", "dependencies[0].wheel", ("is version 2.0",)),
    "dependency wheel invalid": (edited(dependency(wheel="demo.whl")), "demo",
                                 "dependencies[0].wheel", ("is not a valid wheel file name",)),
    "dependency hash": (edited(dependency(sha256="x")), "demo", "dependencies[0].sha256",
                        ("64 lower-case hex digits",)),
    "entry size": (edited(setter("entries", "__main__.py", "size", value="31")), "demo",
                   "entries['__main__.py'].size", ("must be an integer",)),
    "entry mode": (edited(setter("entries", "__main__.py", "mode", value="4755")), "demo",
                   "entries['__main__.py'].mode", ("not a normalised mode",)),
    "entry mode int": (edited(setter("entries", "__main__.py", "mode", value=420)), "demo",
                       "entries['__main__.py'].mode", ("must be the string",)),
    "entry record": (edited(setter("entries", "__main__.py", value="0644")), "demo",
                     "entries['__main__.py']", ("must be a JSON object",)),
    "duplicate key": (bundle_with_manifest_bytes(
        b'{"format":1,' + canonical_json(manifest_obj())[1:]), "demo", "format",
        ("given more than once",)),
}
BYTECODE_CASES: dict[str, tuple[bytes, str]] = {
    "pycache listed": (with_bytecode(["site-packages/demo/__pycache__/core.cpython-311.pyc"]),
                       "site-packages/demo/__pycache__/core.cpython-311.pyc"),
    "sourceless pyc": (with_bytecode(["site-packages/demo/evil.pyc"]),
                       "site-packages/demo/evil.pyc"),
    "pyo unlisted": (with_bytecode(["site-packages/demo/old.pyo"], listed=False),
                     "site-packages/demo/old.pyo"),
}


# --- sandrun verify: exit 1, every invalid field named ------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_names_the_invalid_field(tmp_path: Path, case: str) -> None:
    data, _app, field, words = CASES[case]
    bundle = write(tmp_path, data)
    where = f"{MANIFEST_NAME}: {field}"
    result = verify_bundle(bundle)
    assert result.manifest is None
    matching = [p for p in result.problems
                if p.where == where and all(w in p.what for w in words)]
    assert matching, "\n".join(str(p) for p in result.problems)
    assert all(p.hint for p in result.problems)
    proc = run_sandrun("verify", str(bundle))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"  - {where}: " in proc.stdout and words[0] in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("case", sorted(BYTECODE_CASES))
def test_verify_refuses_precompiled_bytecode(tmp_path: Path, case: str) -> None:
    data, name = BYTECODE_CASES[case]
    proc = run_sandrun("verify", str(write(tmp_path, data)))
    assert proc.returncode == 1
    assert (f"  - {name}: precompiled bytecode (__pycache__, .pyc or .pyo): a bundle carries "
            "none, the store compiles bytecode from the verified sources itself") in proc.stdout


def test_every_invalid_field_is_listed_at_once(tmp_path: Path) -> None:
    def change(obj: dict[str, Any]) -> None:
        obj["app"]["name"] = "../../etc/x"
        obj["app"]["entry_point"] = "x"
        obj["target"]["python"] = "3-config"
        obj["entries"]["__main__.py"]["size"] = -5
    proc = run_sandrun("verify", str(write(tmp_path, edited(change))))
    assert proc.returncode == 1
    fields = [line.split(": ")[1] for line in proc.stdout.splitlines()
              if line.startswith(f"  - {MANIFEST_NAME}: ")]
    assert fields == ["app.entry_point", "app.name", "entries['__main__.py'].size",
                      "target.python"], proc.stdout
    with pytest.raises(VerificationError) as info:
        Manifest.from_bytes(canonical_json({**manifest_obj(), "format": 1, "app": 5,
                                            "target": None}))
    assert info.value.message == f"{MANIFEST_NAME} has 2 invalid fields"
    assert [p.where for p in info.value.problems] == [f"{MANIFEST_NAME}: app",
                                                      f"{MANIFEST_NAME}: target"]


def test_wrong_types_everywhere_are_problems_not_crashes() -> None:
    for value in (None, 1, "x", [], {"format": 1}, {"format": True}):
        problems = manifest_field_problems(value)
        assert problems and all(p.where.startswith(MANIFEST_NAME) for p in problems), value
    obj = manifest_obj()
    for key in ("app", "target", "dependencies", "entries"):
        for wrong in (None, 1, "x", True):
            bad = {**obj, key: wrong}
            problems = manifest_field_problems(bad)
            assert [p.where for p in problems] == [f"{MANIFEST_NAME}: {key}"], (key, wrong)


def test_non_canonical_manifest_is_refused(tmp_path: Path) -> None:
    data = json.dumps(manifest_obj(), indent=1).encode()
    result = verify_bundle(write(tmp_path, bundle_with_manifest_bytes(data)))
    assert [p.what.split(" (")[0] for p in result.problems] == ["is not in canonical form"]


def test_valid_manifest_round_trips() -> None:
    manifest = make_manifest(default_files())
    dotted = dataclasses.replace(manifest, entry_point="demo.core:Answer.call",
                                 console_script="demo-cli")
    for good in (manifest, dotted):
        assert Manifest.from_bytes(good.to_bytes()) == good


def test_inspect_reports_an_invalid_manifest(tmp_path: Path) -> None:
    bundle = write(tmp_path, CASES["name traversal"][0])
    proc = run_sandrun("inspect", str(bundle))
    assert proc.returncode == 125
    assert "has no valid manifest" in proc.stderr
    assert f"{MANIFEST_NAME}: app.name: '../../etc/x' contains '/'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- sandrun exec as root: exit 125, nothing created -------------------------------------


@pytest.fixture(scope="module")
def exec_base(require_root: None) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-hostile-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def assert_refused_and_nothing_created(base: Path, bundle: Path, app: str,
                                       *words: str) -> None:
    store = base / "store"
    before = sorted(p.name for p in base.iterdir())
    proc = run_sandrun("exec", "--store", str(store), str(bundle))
    assert proc.returncode == 125, proc.stdout + proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in base.iterdir()) == before  # no store, no traversal target
    assert not store.exists()
    for user in {f"sandrun-{app}", f"sandrun-{app}"[:32]}:
        assert not user_exists(user), user


@pytest.mark.parametrize("case", sorted(CASES))
def test_exec_refuses_and_creates_nothing(exec_base: Path, case: str) -> None:
    data, app, field, words = CASES[case]
    bundle = write(exec_base, data, f"{case.replace(' ', '-')}.pyz")
    try:
        assert_refused_and_nothing_created(exec_base, bundle, app,
                                           f"{MANIFEST_NAME}: {field}", words[0])
        # ../../etc/x from <store>/state would be <base>/etc/x
        assert not (exec_base / "etc").exists()
    finally:
        bundle.unlink()


@pytest.mark.parametrize("case", sorted(BYTECODE_CASES))
def test_exec_refuses_bytecode_and_creates_nothing(exec_base: Path, case: str) -> None:
    data, name = BYTECODE_CASES[case]
    bundle = write(exec_base, data, "bytecode.pyz")
    try:
        assert_refused_and_nothing_created(exec_base, bundle, "demo", name,
                                           "precompiled bytecode")
    finally:
        bundle.unlink()


def test_exec_refuses_an_embedded_profile_that_is_not_utf8(exec_base: Path) -> None:
    """Listed in the manifest (it verifies): refused as what it is, no traceback."""
    files = default_files()
    files[PROFILE] = (b'extends = "default"\n# \xff\xfe\n', 0o644)
    bundle = write(exec_base, bundle_bytes(files), "latin.pyz")
    try:
        assert_refused_and_nothing_created(exec_base, bundle, "demo",
                                           f"{PROFILE} is not UTF-8", "invalid start byte")
    finally:
        bundle.unlink()


def test_exec_refuses_a_changed_embedded_profile_as_failing_verification(
        exec_base: Path) -> None:
    """The entries are hashed while the launch decides (it reads the profile meanwhile):
    a profile changed after the build, here to bytes that do not even decode, is refused
    as a bundle failing verification, not as a bad profile."""
    files = default_files()
    manifest = make_manifest(files)
    files[PROFILE] = (files[PROFILE][0].replace(b"ul", b"\xff\xfe"), 0o644)  # same size
    bundle = write(exec_base, bundle_bytes(files, manifest=manifest), "changed.pyz")
    try:
        assert_refused_and_nothing_created(exec_base, bundle, "demo", "failed verification",
                                           f"{PROFILE}: content differs from manifest")
        assert "not UTF-8" not in run_sandrun("exec", "--store", str(exec_base / "store"),
                                              str(bundle)).stderr
    finally:
        bundle.unlink()


# --- the build never writes what verify refuses -----------------------------------------


def test_build_leaves_out_pycache_and_refuses_sourceless_bytecode(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "cachy", "1.0", {
        "cachy/__init__.py": "def main():\n    return 0\n",
        "cachy/__pycache__/__init__.cpython-311.pyc": b"\x00" * 16 + b"stale cache"})
    out = tmp_path / "cachy.pyz"
    proc = run_sandrun("bundle", "cachy", "--no-index", "--find-links", str(wheels),
                       "-e", "cachy:main", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert ("cachy-1.0-py3-none-any.whl: left out 1 precompiled bytecode file(s) "
            "(cachy/__pycache__/__init__.cpython-311.pyc)") in proc.stderr
    result = verify_bundle(out)
    assert result.ok, result.problems
    assert not [e.name for e in result.archive.entries if "__pycache__" in e.name]

    make_wheel(wheels, "sourceless", "1.0", {"sourceless/__init__.py": "",
                                             "sourceless/core.pyc": b"\x00" * 16})
    proc = run_sandrun("bundle", "sourceless", "--no-index", "--find-links", str(wheels),
                       "-e", "sourceless:main", "-o", str(tmp_path / "s.pyz"))
    assert proc.returncode == 125, proc.stderr
    assert ("sourceless-1.0-py3-none-any.whl: sourceless/core.pyc is precompiled bytecode "
            "without a __pycache__ directory") in proc.stderr
    assert not (tmp_path / "s.pyz").exists()


def test_build_refuses_an_app_name_it_would_have_to_truncate(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "short", "1.0", {"short.py": "def main():\n    return 0\n"})
    proc = run_sandrun("bundle", "short", "--no-index", "--find-links", str(wheels),
                       "-e", "short:main", "--name", LONG_A, "-o", str(tmp_path / "x.pyz"))
    assert proc.returncode == 2
    assert "25 characters long" in proc.stderr and "never truncated" in proc.stderr


def test_build_normalises_spaces_in_a_console_script(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "spaced", "1.0", {"spaced.py": "def main():\n    return 0\n"},
               console_scripts={"spaced": "spaced : main"})
    out = tmp_path / "spaced.pyz"
    proc = run_sandrun("bundle", "spaced", "--no-index", "--find-links", str(wheels),
                       "-c", "spaced", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    result = verify_bundle(out)
    assert result.ok and result.manifest is not None
    assert result.manifest.entry_point == "spaced:main"


# --- the interpreter search runs nothing it finds ------------------------------------------


def fake_python(path: Path, marker: Path) -> Path:
    """A script that would leave `marker` behind if anything ever ran it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {marker}\necho 3.11\n")
    path.chmod(0o755)
    return path


def test_interpreter_name_rule(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bin_dir = tmp_path / "bin"
    config = fake_python(bin_dir / "python3.11-config", marker)
    debian_style = fake_python(bin_dir / "x86_64-linux-gnu-python3.11-config", marker)
    (bin_dir / "python3-config").symlink_to(debian_style.name)
    (bin_dir / "python3").symlink_to("python3-config")
    assert name_version(str(config)) is None
    assert name_version(str(bin_dir / "python3")) is None
    assert name_version(str(bin_dir / "python3-config")) is None
    with pytest.raises(InterpreterNotFound) as info:
        find_interpreter(None, "3.11", os.getuid(), os.getgroups(),
                         search=[str(bin_dir / "python3"), str(config),
                                 str(bin_dir / "python3-config")])
    assert "x86_64-linux-gnu-python3.11-config, not python3.11" in info.value.message
    assert not marker.exists()

    # Exactly pythonX.Y is accepted by its name, still without running it.
    real = fake_python(tmp_path / "prefix" / "bin" / "python3.11", marker)
    stdlib = tmp_path / "prefix" / "lib" / "python3.11"
    (stdlib / "encodings").mkdir(parents=True)
    (stdlib / "os.py").write_text("")
    (stdlib / "encodings" / "__init__.py").write_text("")
    (bin_dir / "py").symlink_to(real)
    interp = find_interpreter(None, "3.11", os.getuid(), os.getgroups(),
                              search=[str(bin_dir / "python3"), str(bin_dir / "py")])
    assert (interp.version, interp.real_path) == ("3.11", str(real))
    assert not marker.exists()
    # A name for another version is not this version.
    with pytest.raises(InterpreterNotFound):
        find_interpreter(None, "3.12", os.getuid(), os.getgroups(), search=[str(real)])
    assert not marker.exists()


@pytest.mark.parametrize("version", ["3-config", "3.11/../x", "3", "3.11-config", "3.011",
                                     "3.11\n", "../../bin/sh"])
def test_interpreter_refuses_a_version_that_is_not_3_n(version: str) -> None:
    with pytest.raises(BundleError, match=r"is not a version of the form 3\.N"):
        find_interpreter(None, version, 65534, [65534])
    with pytest.raises(BundleError):
        candidates(version)


def test_operator_python_still_works() -> None:
    interp = describe_interpreter("/usr/bin/python3")
    assert interp.version == "3.11" and interp.real_path == "/usr/bin/python3.11"


# --- trust policy globs ------------------------------------------------------------------


@pytest.mark.parametrize(("glob", "name", "matches"), [
    ("*", "demo", True), ("web-*", "web-api", True), ("tool?", "tool1", True),
    ("tool?", "tool12", False), ("[ab]pp", "bpp", True), ("[!a]pp", "app", False),
    ("*", "a/b", False), ("web-*", "web-../../etc/x", False), ("?", "/", False),
    ("a[.-0]b", "a/b", False), ("a[.-0]b", "a.b", True), ("a[!x]b", "a/b", False),
    ("web-*", "WEB-x", False), ("*", "", False), ("*", "demo\n", False),
])
def test_app_globs_never_cross_a_slash(glob: str, name: str, matches: bool) -> None:
    assert app_glob_matches(glob, name) is matches


def test_glob_pattern_itself_excludes_slash() -> None:
    # Even without the name check in front, the translated pattern stops at '/'.
    for glob in ("*", "web-*", "?", "[!a]", "a[.-0]b", "*?*"):
        pattern = app_glob_pattern(glob)
        for name in ("/", "web-/x", "a/b", "../../x"):
            assert pattern.match(name) is None, (glob, name)
    with pytest.raises(ValueError, match="empty range"):
        app_glob_pattern("[z-a]")


# --- users: the default account is reused only if sandrun could have made it ------------


@pytest.fixture()
def hijack_name(require_root: None) -> Iterator[str]:
    name = f"sandrun-hijack{secrets.token_hex(3)}"
    with users_removed_after(name):
        yield name


def useradd(*args: str) -> None:
    proc = subprocess.run(["useradd", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_login_account_is_not_reused_as_the_default_user(hijack_name: str,
                                                           exec_base: Path) -> None:
    useradd("--shell", "/bin/bash", "--no-create-home", "--home-dir", "/root", hijack_name)
    app = hijack_name.removeprefix("sandrun-")
    entry = pwd.getpwnam(hijack_name)
    problems = default_user_problems(entry)
    assert any("is not a system uid" in p for p in problems), problems
    assert any("shell /bin/bash allows a login" in p for p in problems)
    assert any("home directory /root" in p for p in problems)
    with pytest.raises(UserError) as info:
        check_user(None, app)
    assert "is not the kind of account sandrun creates" in info.value.message
    assert f"pass --user {hijack_name} deliberately" in info.value.hint
    with pytest.raises(UserError):
        resolve_user(None, app, create=True)
    # The operator may still choose it by name.
    assert check_user(hijack_name, app).uid == entry.pw_uid

    files = default_files()
    manifest = dataclasses.replace(make_manifest(files), app_name=app)
    bundle = write(exec_base, bundle_bytes(files, manifest=manifest), "hijack.pyz")
    try:
        proc = run_sandrun("exec", "--store", str(exec_base / "store"), str(bundle))
        assert proc.returncode == 125, proc.stderr
        assert "is not the kind of account sandrun creates" in proc.stderr
        assert not (exec_base / "store").exists()
    finally:
        bundle.unlink()


def test_a_system_account_with_a_login_shell_is_not_reused(hijack_name: str) -> None:
    useradd("--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/bin/sh", hijack_name)
    with pytest.raises(UserError) as info:
        check_user(None, hijack_name.removeprefix("sandrun-"))
    assert "shell /bin/sh allows a login" in info.value.message
    assert "uid" not in info.value.message.split(": ", 1)[1]  # its uid is fine


def test_a_default_account_in_a_privileged_group_is_not_reused(hijack_name: str) -> None:
    useradd("--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "-G", "adm", hijack_name)
    with pytest.raises(UserError) as info:
        check_user(None, hijack_name.removeprefix("sandrun-"))
    assert "privileged group(s) adm" in info.value.message


def test_the_kind_sandrun_creates_is_reused(hijack_name: str) -> None:
    app = hijack_name.removeprefix("sandrun-")
    assert check_user(None, app).exists is False  # decided, nothing created
    assert not user_exists(hijack_name)
    created = resolve_user(None, app, create=True)
    assert created.exists and created.uid > 0
    entry = pwd.getpwnam(hijack_name)
    assert default_user_problems(entry) == []
    assert check_user(None, app) == created


def test_default_user_names_are_never_truncated() -> None:
    assert default_user_name("a" * 24) == "sandrun-" + "a" * 24
    for name in (LONG_A, LONG_B, "../../etc/x", "web-*", "", "Demo"):
        with pytest.raises(UserError):
            default_user_name(name)
    with pytest.raises(UserError) as info:
        check_user(None, LONG_A)
    assert "25 characters long" in info.value.message
