"""Hash-pinned inputs: bundling from pylock.toml, and pins written from a bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import TESTS
from wheelcraft import hello_wheelhouse, make_wheel

from sandrun.build.builder import BundleRequest, _target, build_bundle
from sandrun.build.lockfile import marker_environment, requirements_from_manifest, select_wheels
from sandrun.bundle.manifest import SBOM_NAME, Target
from sandrun.bundle.verify import verify_bundle
from sandrun.errors import LockFileError, UsageError

HERE = TESTS
INVALID = HERE / "lock" / "invalid"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hello_wheelhouse(tmp_path_factory.mktemp("lock-wheels"))


@pytest.fixture(scope="module")
def reference(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hello bundle resolved by pip from the wheelhouse."""
    out = tmp_path_factory.mktemp("ref") / "hello.pyz"
    build_bundle(BundleRequest(output=out, requirements=("hellopkg",), console_script="hello",
                               find_links=(str(wheelhouse),), no_index=True))
    return out


def write_lock(directory: Path, wheelhouse: Path, *, helper_sha: str | None = None,
               helper_size: int | None = None) -> Path:
    """A lock naming hellopkg by relative path and helperlib by file: URL.

    hellopkg also lists a Windows wheel (never selected) and a package that only
    Windows needs (skipped by its marker).
    """
    wheels = directory / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    hello = next(wheelhouse.glob("hellopkg-*.whl"))
    (wheels / hello.name).write_bytes(hello.read_bytes())
    helper = next(wheelhouse.glob("helperlib-*.whl"))
    size = f"\nsize = {helper_size}" if helper_size is not None else ""
    lock = directory / "pylock.toml"
    lock.write_text(f"""\
lock-version = "1.0"
created-by = "sandrun tests"
requires-python = ">=3.9"

[[packages]]
name = "hellopkg"
version = "1.2.0"

[[packages.wheels]]
url = "https://example.org/hellopkg-1.2.0-cp311-cp311-win_amd64.whl"
hashes = {{ sha256 = "{'1' * 64}" }}

[[packages.wheels]]
path = "wheels/{hello.name}"
hashes = {{ sha256 = "{sha256(hello)}" }}

[[packages]]
name = "helperlib"
version = "0.3"

[[packages.wheels]]
url = "{helper.as_uri()}"
hashes = {{ sha256 = "{helper_sha or sha256(helper)}" }}{size}

[[packages]]
name = "pywin32"
version = "306"
marker = "sys_platform == 'win32'"

[[packages.wheels]]
url = "https://example.org/pywin32-306-cp311-cp311-win_amd64.whl"
hashes = {{ sha256 = "{'2' * 64}" }}
""")
    return lock


def test_bundle_from_lock_equals_the_resolved_bundle(wheelhouse: Path, reference: Path,
                                                     tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "project", wheelhouse)
    out = tmp_path / "locked.pyz"
    messages: list[str] = []
    result = build_bundle(BundleRequest(output=out, lock=lock, console_script="hello"),
                          progress=messages.append)
    assert [d.name for d in result.manifest.dependencies] == ["hellopkg", "helperlib"]
    # The same wheels and files; only the recorded origins differ (a lock, not pip).
    ref = verify_bundle(reference).manifest
    assert ref is not None
    assert [(d.name, d.version, d.wheel, d.sha256) for d in result.manifest.dependencies] == \
        [(d.name, d.version, d.wheel, d.sha256) for d in ref.dependencies]
    assert {n: e for n, e in result.manifest.entries.items() if n != SBOM_NAME} == \
        {n: e for n, e in ref.entries.items() if n != SBOM_NAME}
    res = result.manifest.resolution
    assert res is not None and res.resolver == "pylock" and res.lock_sha256 == sha256(lock)
    assert [d.origin for d in result.manifest.dependencies] == [
        (lock.parent / "wheels" / next(wheelhouse.glob("hellopkg-*")).name).as_uri(),
        next(wheelhouse.glob("helperlib-*")).as_uri()]
    assert any("fetching helperlib-0.3-py3-none-any.whl" in m for m in messages)


def test_requirements_from_manifest_rebuilds_byte_identical(wheelhouse: Path, reference: Path,
                                                            tmp_path: Path) -> None:
    manifest = verify_bundle(reference).manifest
    assert manifest is not None
    text = requirements_from_manifest(manifest)
    lines = text.splitlines()
    assert lines[0].startswith("# Hash-pinned requirements of hello 1.2.0")
    assert f"# Made for Python 3.11 ({manifest.target.abi}) on manylinux_" in text
    assert "sandrun bundle -r THIS_FILE -c hello --name hello -p PROFILE" in text
    assert [ln for ln in lines if not ln.startswith("#")] == [
        f"hellopkg==1.2.0 --hash=sha256:{sha256(next(wheelhouse.glob('hellopkg-*')))}",
        f"helperlib==0.3 --hash=sha256:{sha256(next(wheelhouse.glob('helperlib-*')))}",
    ]
    pins = tmp_path / "requirements.txt"
    pins.write_text(text)
    out = tmp_path / "rebuilt.pyz"
    build_bundle(BundleRequest(output=out, requirement_files=(pins,), console_script="hello",
                               find_links=(str(wheelhouse),), no_index=True))
    assert out.read_bytes() == reference.read_bytes()


def test_a_file_that_differs_from_the_lock_is_refused(wheelhouse: Path, tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "project", wheelhouse, helper_sha="ab" * 32)
    hello_wheel = next((tmp_path / "project" / "wheels").glob("hellopkg-*.whl"))
    hello_wheel.write_bytes(hello_wheel.read_bytes() + b"tampered")
    out = tmp_path / "x.pyz"
    with pytest.raises(LockFileError) as info:
        build_bundle(BundleRequest(output=out, lock=lock, console_script="hello"))
    text = info.value.diagnostics()
    assert text.startswith("2 locked wheels cannot be used")
    assert (f"{lock}: packages[0].wheels[1].hashes: {hello_wheel} does not match the "
            "sha256 the lock gives (") in text
    assert (f"{lock}: packages[1].wheels[0].hashes: "
            f"{next(wheelhouse.glob('helperlib-*')).as_uri()} does not match the sha256 the "
            f"lock gives ({'ab' * 32})") in text
    # Never the digest sandrun computed: the lock's author chose the file (a hash oracle).
    assert hashlib.sha256(hello_wheel.read_bytes()).hexdigest() not in text
    assert "the file differs from the one that was locked" in text
    assert not out.exists()


def test_missing_file_and_wrong_size(wheelhouse: Path, tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "project", wheelhouse, helper_size=10)
    next((tmp_path / "project" / "wheels").glob("hellopkg-*.whl")).unlink()
    with pytest.raises(LockFileError) as info:
        build_bundle(BundleRequest(output=tmp_path / "x.pyz", lock=lock, console_script="hello"))
    text = info.value.diagnostics()
    assert (f"{lock}: packages[0].wheels[1].path: hellopkg-1.2.0-py3-none-any.whl: cannot read "
            f"{tmp_path}/project/wheels/hellopkg-1.2.0-py3-none-any.whl: no such file") in text
    assert "relative to the lock file's directory" in text
    assert (f"{lock}: packages[1].wheels[0].url: helperlib-0.3-py3-none-any.whl: cannot "
            "download") in text
    assert "larger than 10 bytes, the size the lock gives" in text


@pytest.fixture(scope="module")
def target() -> tuple[Target, list]:
    return _target(BundleRequest(output=Path("x"), python_version="3.11",
                                 platforms=("manylinux_2_17_x86_64",)))


@pytest.mark.parametrize("case", sorted(p.stem for p in INVALID.glob("*.toml")))
def test_invalid_lock_files(case: str, target: tuple[Target, list]) -> None:
    lock = INVALID / f"{case}.toml"
    with pytest.raises(LockFileError) as info:
        select_wheels(lock, *target)
    text = info.value.diagnostics()
    for line in (INVALID / f"{case}.expect").read_text().splitlines():
        assert line.replace("LOCK", str(lock)) in text, text


def test_every_problem_is_listed_at_once(target: tuple[Target, list], tmp_path: Path) -> None:
    lock = tmp_path / "pylock.toml"
    body = (INVALID / "sdist_only.toml").read_text().replace(
        'hashes = { sha256 = "' + "0" * 64 + '" } }]', 'hashes = { md5 = "x" } }]', 1)
    lock.write_text(body)
    with pytest.raises(LockFileError) as info:
        select_wheels(lock, *target)
    assert info.value.message == f"cannot bundle from the lock file {lock} (2 problems)"
    assert [p.where for p in info.value.problems] == [f"{lock}: packages[0].wheels[0].hashes",
                                                      f"{lock}: packages[1].sdist"]


def test_target_selects_the_wheel(tmp_path: Path) -> None:
    links = tmp_path / "links"
    linux = make_wheel(links, "native", "1.0", {"native.py": ""},
                       tag="cp311-cp311-manylinux_2_17_x86_64")
    mac = make_wheel(links, "native", "1.0", {"native.py": ""}, tag="cp312-cp312-macosx_11_0_arm64")
    lock = tmp_path / "pylock.toml"
    lock.write_text(f"""\
lock-version = "1.0"
created-by = "sandrun tests"

[[packages]]
name = "native"
version = "1.0"
wheels = [
  {{ path = "links/{mac.name}", hashes = {{ sha256 = "{sha256(mac)}" }} }},
  {{ path = "links/{linux.name}", hashes = {{ sha256 = "{sha256(linux)}" }} }},
]

[[packages]]
name = "appnope"
version = "0.1.4"
marker = "sys_platform == 'darwin'"
wheels = [{{ path = "links/appnope-0.1.4-py3-none-any.whl", hashes = {{ sha256 = "{'3' * 64}" }} }}]
""")
    on_linux = select_wheels(lock, *_target(BundleRequest(
        output=Path("x"), python_version="3.11", platforms=("manylinux_2_17_x86_64",))))
    assert [(w.filename, w.path) for w in on_linux] == [(linux.name, linux)]
    assert on_linux[0].where == f"{lock}: packages[0].wheels[1]"
    on_mac = select_wheels(lock, *_target(BundleRequest(
        output=Path("x"), python_version="3.12", platforms=("macosx_11_0_arm64",))))
    assert [w.filename for w in on_mac] == ["appnope-0.1.4-py3-none-any.whl", mac.name]


def test_marker_environment_of_another_target() -> None:
    env = marker_environment(Target("3.12", "cp", "cp312", ("macosx_11_0_arm64",)))
    assert (env["python_version"], env["python_full_version"]) == ("3.12", "3.12.0")
    assert (env["sys_platform"], env["platform_system"], env["platform_machine"]) == (
        "darwin", "Darwin", "arm64")
    env = marker_environment(Target("3.11", "cp", "cp311", ("musllinux_1_2_aarch64",)))
    assert (env["sys_platform"], env["platform_machine"]) == ("linux", "aarch64")
    env = marker_environment(Target("3.11", "cp", "cp311", ("win_amd64",)))
    assert (env["sys_platform"], env["os_name"], env["platform_machine"]) == (
        "win32", "nt", "AMD64")


@pytest.mark.parametrize(("kw", "words"), [
    ({"requirements": ("hellopkg",)}, "--lock cannot be combined with requirements or -r"),
    ({"requirement_files": (Path("r.txt"),)}, "--lock cannot be combined"),
    ({"find_links": ("wheels",)}, "--find-links, --index-url and --use-pip-config have no "
                                  "effect with --lock"),
    ({"use_pip_config": True}, "--use-pip-config have no effect with --lock"),
])
def test_lock_is_exclusive_with_requirements(tmp_path: Path, kw: dict, words: str) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_text("")
    with pytest.raises(UsageError, match=words):
        build_bundle(BundleRequest(output=tmp_path / "x.pyz", lock=lock, console_script="x",
                                   **kw))


def test_unreadable_lock_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"cannot read lock file {tmp_path}/nope.toml"):
        build_bundle(BundleRequest(output=tmp_path / "x.pyz", lock=tmp_path / "nope.toml",
                                   console_script="x"))


# ---------------------------------------------------------------------------------------
# `sandrun lock --format pylock`: a PEP 751 lock file that `bundle --lock` takes back


def test_pylock_round_trip(wheelhouse: Path, reference: Path, tmp_path: Path) -> None:
    from helpers import run_sandrun

    lock = tmp_path / "pylock.toml"
    proc = run_sandrun("lock", "--format", "pylock", "-o", str(lock), str(reference))
    assert proc.returncode == 0, proc.stderr
    assert "2 package(s) in a PEP 751 lock file" in proc.stderr and proc.stdout == ""
    text = lock.read_text()
    assert 'lock-version = "1.0"' in text and 'created-by = "sandrun"' in text
    assert "sandrun bundle --lock THIS_FILE -c hello --name hello" in text
    import tomllib

    from packaging.pylock import Pylock
    parsed = Pylock.from_dict(tomllib.loads(text))
    assert [p.name for p in parsed.packages] == ["hellopkg", "helperlib"]
    wheel = parsed.packages[0].wheels[0]  # type: ignore[index]
    assert wheel.path == str(next(wheelhouse.glob("hellopkg-*")))  # absolute: not below
    assert wheel.hashes["sha256"] == sha256(next(wheelhouse.glob("hellopkg-*")))
    out = tmp_path / "from-lock.pyz"
    proc = run_sandrun("bundle", "--lock", str(lock), "-c", "hello", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rebuilt = verify_bundle(out).manifest
    original = verify_bundle(reference).manifest
    assert rebuilt is not None and original is not None
    assert [(d.name, d.wheel, d.sha256, d.origin) for d in rebuilt.dependencies] == \
        [(d.name, d.wheel, d.sha256, d.origin) for d in original.dependencies]
    assert rebuilt.resolution is not None and rebuilt.resolution.resolver == "pylock"


def test_pylock_paths_below_the_lock_are_relative(wheelhouse: Path, tmp_path: Path) -> None:
    from helpers import run_sandrun

    local = tmp_path / "wheels"
    local.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        (local / wheel.name).write_bytes(wheel.read_bytes())
    bundle = tmp_path / "hello.pyz"
    assert run_sandrun("bundle", "hellopkg", "--no-index", "--find-links", str(local), "-c",
                       "hello", "-o", str(bundle)).returncode == 0
    lock = tmp_path / "deps.toml"  # a .toml name without --format: pylock
    proc = run_sandrun("lock", "-o", str(lock), str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout)["format"] == "pylock"
    assert 'path = "wheels/hellopkg-1.2.0-py3-none-any.whl"' in lock.read_text()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    proc = run_sandrun("bundle", "--lock", str(lock), "-c", "hello", "-o",
                       str(moved / "x.pyz"), cwd=moved)
    assert proc.returncode == 0, proc.stderr


def test_toml_output_is_never_requirements(reference: Path, tmp_path: Path) -> None:
    from helpers import run_sandrun

    out = tmp_path / "pins.toml"
    proc = run_sandrun("lock", "--format", "requirements", "-o", str(out), str(reference))
    assert proc.returncode == 2 and "is a .toml name" in proc.stderr
    assert not out.exists()
    text = run_sandrun("lock", str(reference)).stdout  # stdout: requirements, as before
    assert "hellopkg==1.2.0 --hash=sha256:" in text
    quiet = run_sandrun("lock", "-q", str(reference))
    assert quiet.returncode == 2 and "-q without -o" in quiet.stderr


def test_pylock_needs_recorded_origins(tmp_path: Path) -> None:
    """A format 1 bundle (an older sandrun) records no origins: no lock is invented."""
    from bundlecraft import bundle_bytes
    from helpers import run_sandrun

    old = tmp_path / "old.pyz"
    old.write_bytes(bundle_bytes())
    assert run_sandrun("verify", str(old)).returncode == 0  # still verifies
    proc = run_sandrun("lock", "--format", "pylock", str(old))
    assert proc.returncode == 125
    assert "manifest format 1 records no origins" in proc.stderr


def test_a_lock_someone_else_wrote_names_only_files_beside_it(
        wheelhouse: Path, tmp_path: Path, target: tuple[Target, list]) -> None:
    """With allowed_dirs (sandrun dev on a developer's project), a path or file: URL outside
    the lock's directory and the --find-links dirs is refused before anything is read."""

    lock = write_lock(tmp_path / "project", wheelhouse)  # helperlib: a file: URL outside
    with pytest.raises(LockFileError) as info:
        select_wheels(lock, *target, allowed_dirs=())
    text = info.value.diagnostics()
    assert "helperlib-0.3-py3-none-any.whl is outside the lock's directory" in text
    assert "hellopkg" not in text  # beside the lock: fine
    chosen = select_wheels(lock, *target, allowed_dirs=(wheelhouse,))
    assert [w.name for w in chosen] == ["hellopkg", "helperlib"]
