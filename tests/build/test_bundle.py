"""`sandrun bundle`: wheels only, reproducible, verifiable, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import run_sandrun
from wheelcraft import hello_wheelhouse, make_sdist, make_wheel


@pytest.fixture(autouse=True)
def no_ambient_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds here are reproducible by themselves: only a test that sets it has it."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hello_wheelhouse(tmp_path_factory.mktemp("wheels"))


def build_hello(wheelhouse: Path, out: Path, *extra: str, **kw: object):
    return run_sandrun("bundle", "hellopkg", "--no-index", "--find-links", str(wheelhouse),
                       "-c", "hello", "-o", str(out), *extra, **kw)  # type: ignore[arg-type]


def test_bundle_reports_and_runs_with_plain_python(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "hello.pyz"
    proc = build_hello(wheelhouse, out)
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert sha in proc.stdout
    assert "hello 1.2.0" in proc.stdout and "hellopkg:main" in proc.stdout
    assert "2 wheels" in proc.stdout
    assert out.stat().st_mode & 0o777 == 0o444
    # Still a shiv zipapp for development.
    run = subprocess.run([sys.executable, str(out), "a", "b"], capture_output=True, text=True,
                         env={**os.environ, "SHIV_ROOT": str(tmp_path / "shiv")}, check=False)
    assert run.returncode == 0, run.stderr
    assert "hello a b" in run.stdout


def test_two_builds_are_byte_identical(wheelhouse: Path, tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = build_hello(wheelhouse, a_dir / "x.pyz", cwd=a_dir, umask=0o022)
    b = build_hello(wheelhouse, b_dir / "x.pyz", cwd=b_dir, umask=0o077)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert (a_dir / "x.pyz").read_bytes() == (b_dir / "x.pyz").read_bytes()
    data = (a_dir / "x.pyz").read_bytes()
    assert str(tmp_path).encode() not in data  # no build paths leak
    with zipfile.ZipFile(a_dir / "x.pyz") as zf:
        modes = {(i.external_attr >> 16) & 0o7777 for i in zf.infolist()}
        assert modes <= {0o644, 0o755}
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_source_date_epoch_is_honoured(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.pyz"
    proc = build_hello(wheelhouse, out, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}
        manifest = json.loads(zf.read(".sandrun/manifest.json"))
    assert manifest["source_date_epoch"] == 1700000000


def test_manifest_lists_every_entry(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pyz"
    assert build_hello(wheelhouse, out).returncode == 0
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read(".sandrun/manifest.json"))
        names = {i.filename for i in zf.infolist()} - {".sandrun/manifest.json"}
        assert set(manifest["entries"]) == names
        for name in names:
            rec = manifest["entries"][name]
            assert rec["sha256"] == hashlib.sha256(zf.read(name)).hexdigest()
    assert [d["name"] for d in manifest["dependencies"]] == ["hellopkg", "helperlib"]
    assert manifest["app"] == {"name": "hello", "version": "1.2.0",
                               "entry_point": "hellopkg:main", "console_script": "hello"}
    verify = run_sandrun("verify", str(out))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_inspect_json(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "i.pyz"
    assert build_hello(wheelhouse, out).returncode == 0
    proc = run_sandrun("inspect", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["app"]["name"] == "hello"
    assert {d["name"] for d in info["dependencies"]} == {"hellopkg", "helperlib"}
    assert all(len(d["sha256"]) == 64 for d in info["dependencies"])
    assert info["profile"]["name"]
    text = run_sandrun("inspect", str(out))
    assert "hellopkg 1.2.0" in text.stdout


def test_entry_point_option(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "ep.pyz"
    proc = run_sandrun("bundle", "hellopkg", "--no-index", "--find-links", str(wheelhouse),
                       "-e", "hellopkg:main", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "hellopkg 1.2.0" in proc.stdout  # name derived from the module, version found


def test_sdist_only_dependency_is_refused_and_never_run(tmp_path: Path) -> None:
    links = tmp_path / "links"
    marker = tmp_path / "setup-py-ran"
    make_sdist(links, "onlysdist", "1.0", marker)
    make_wheel(links, "app", "1.0", {"app.py": "def main(): pass\n"},
               requires=["onlysdist"])
    proc = run_sandrun("bundle", "app", "--no-index", "--find-links", str(links), "-e", "app:main",
                       "-o", str(tmp_path / "x.pyz"))
    assert proc.returncode == 125
    assert "onlysdist" in proc.stderr and "wheel" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "x.pyz").exists()


def test_tampered_wheel_is_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    make_wheel(links, "bad", "1.0", {"bad.py": "def main(): pass\n"}, tamper="bad.py")
    proc = run_sandrun("bundle", "bad", "--no-index", "--find-links", str(links), "-e", "bad:main",
                       "-o", str(tmp_path / "x.pyz"))
    assert proc.returncode == 125
    assert "bad.py does not match its RECORD" in proc.stderr


def test_wheel_for_another_platform_is_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    wheel = make_wheel(links, "winonly", "1.0", {"winonly.py": ""}, tag="cp311-cp311-win_amd64")
    proc = run_sandrun("bundle", str(wheel), "--no-index", "-e", "winonly:main",
                       "-o", str(tmp_path / "x.pyz"))
    assert proc.returncode == 125
    assert "winonly" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hash_pinned_requirements(wheelhouse: Path, tmp_path: Path) -> None:
    def sha(name: str) -> str:
        path = next(wheelhouse.glob(f"{name}-*.whl"))
        return hashlib.sha256(path.read_bytes()).hexdigest()

    good = tmp_path / "good.txt"
    good.write_text(f"hellopkg==1.2.0 --hash=sha256:{sha('hellopkg')}\n"
                    f"helperlib==0.3 --hash=sha256:{sha('helperlib')}\n")
    proc = run_sandrun("bundle", "-r", str(good), "--no-index", "--find-links", str(wheelhouse),
                       "-c", "hello", "-o", str(tmp_path / "g.pyz"))
    assert proc.returncode == 0, proc.stderr
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"hellopkg==1.2.0 --hash=sha256:{'0' * 64}\n"
                     f"helperlib==0.3 --hash=sha256:{sha('helperlib')}\n")
    proc = run_sandrun("bundle", "-r", str(wrong), "--no-index", "--find-links", str(wheelhouse),
                       "-c", "hello", "-o", str(tmp_path / "w.pyz"))
    assert proc.returncode == 125 and "hash" in proc.stderr.lower()
    partial = tmp_path / "partial.txt"
    partial.write_text(f"hellopkg==1.2.0 --hash=sha256:{sha('hellopkg')}\nhelperlib==0.3\n")
    proc = run_sandrun("bundle", "-r", str(partial), "--no-index", "--find-links", str(wheelhouse),
                       "-c", "hello", "-o", str(tmp_path / "p.pyz"))
    assert proc.returncode == 125 and "helperlib" in proc.stderr


@pytest.mark.parametrize(("args", "code", "words"), [
    (["hellopkg", "-o", "OUT"], 2, "exactly one of --entry-point and --console-script"),
    (["hellopkg", "-e", "a:b", "-c", "x", "-o", "OUT"], 2, "exactly one of"),
    (["hellopkg", "-c", "hello", "-o", "/nonexistent/dir/x.pyz"], 2,
     "output directory /nonexistent/dir does not exist"),
    (["-r", "/nonexistent/req.txt", "-c", "hello", "-o", "OUT"], 2,
     "cannot read requirement file /nonexistent/req.txt"),
    (["hellopkg", "-e", "not an entry", "-o", "OUT"], 2, "is not MODULE:FUNCTION"),
    (["hellopkg", "-c", "nosuch", "-o", "OUT"], 125, "console script 'nosuch'"),
    (["hellopkg", "-c", "hello", "-p", "/nonexistent.toml", "-o", "OUT"], 125,
     "/nonexistent.toml"),
    (["-c", "hello", "-o", "OUT"], 2, "nothing to bundle"),
])
def test_invalid_invocations(wheelhouse: Path, tmp_path: Path, args: list[str], code: int,
                             words: str) -> None:
    args = [str(tmp_path / "o.pyz") if a == "OUT" else a for a in args]
    proc = run_sandrun("bundle", "--no-index", "--find-links", str(wheelhouse), *args)
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sandrun: error:")


def test_verify_cli_exit_codes(wheelhouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.pyz"
    assert build_hello(wheelhouse, out).returncode == 0
    assert run_sandrun("verify", str(out)).returncode == 0
    tampered = tmp_path / "t.pyz"
    tampered.write_bytes(out.read_bytes() + b"garbage")
    proc = run_sandrun("verify", str(tampered))
    assert proc.returncode == 1 and "problem" in proc.stdout
    notzip = tmp_path / "n.pyz"
    notzip.write_text("#!/bin/sh\necho not a zip\n")
    proc = run_sandrun("verify", str(notzip))
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sandrun: error: {notzip}: ")  # names the file
    assert "Traceback" not in proc.stderr


def test_cross_target_refuses_wheels_for_another_python(tmp_path: Path) -> None:
    links = tmp_path / "links"
    make_wheel(links, "native", "1.0", {"native.py": "def main(): pass\n"},
               tag="cp311-cp311-manylinux_2_17_x86_64")
    ok = run_sandrun("bundle", "native", "--no-index", "--find-links", str(links),
                     "-e", "native:main", "--python-version", "3.11",
                     "--platform", "manylinux_2_17_x86_64", "-o", str(tmp_path / "ok.pyz"))
    assert ok.returncode == 0, ok.stderr
    assert "Python 3.11 (cp311, manylinux_2_17_x86_64)" in ok.stdout
    bad = run_sandrun("bundle", "native", "--no-index", "--find-links", str(links),
                      "-e", "native:main", "--python-version", "3.12",
                      "--platform", "manylinux_2_17_x86_64", "-o", str(tmp_path / "bad.pyz"))
    assert bad.returncode == 125
    assert "no wheel of native fits the target (Python 3.12" in bad.stderr


def test_invalid_profile_is_never_embedded(wheelhouse: Path, tmp_path: Path) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text('[network]\nbind_tcp = [0]\n[filesystem]\nread = ["relative"]\n')
    out = tmp_path / "p.pyz"
    proc = build_hello(wheelhouse, out, "-p", str(profile))
    assert proc.returncode == 125
    assert f"{profile}:2: network.bind_tcp" in proc.stderr
    assert f"{profile}:4: filesystem.read" in proc.stderr
    assert not out.exists()


@pytest.mark.network  # pip fetches the build backend (setuptools) for its isolated build
def test_local_project_is_built_from_a_clean_copy(tmp_path: Path) -> None:
    """`./proj` (relative) builds; a stale build/lib never reaches the bundle; nothing is
    written into the project; two builds are byte-identical."""
    project = tmp_path / "proj"
    (project / "localapp").mkdir(parents=True)
    (project / "localapp" / "__init__.py").write_text("def main():\n    return 0\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=65"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "localapp"\nversion = "1.0"\n')
    stale = project / "build" / "lib" / "localapp" / "stale.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("LEFT_OVER = True\n")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    outs = []
    for name in ("a.pyz", "b.pyz"):
        proc = run_sandrun("bundle", "./proj", "-e", "localapp:main", "-o", name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    with zipfile.ZipFile(tmp_path / "a.pyz") as zf:
        assert not [n for n in zf.namelist() if "stale" in n]
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
