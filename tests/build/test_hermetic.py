"""Hermetic resolution: ambient pip configuration never changes what is bundled unless
`--use-pip-config` says so (and then it is printed and recorded); every wheel's origin
is recorded and must be one of the sources pip searched; a misspelled name says "not
found"; an entry point whose attribute does not exist is refused at build time."""

from __future__ import annotations

import ast
import json
import os
import zipfile
from pathlib import Path

import pytest
from helpers import run_sandrun
from wheelcraft import hello_wheelhouse, make_wheel

from sandrun.build.builder import _binds, _origin
from sandrun.bundle.manifest import MANIFEST_NAME, SBOM_NAME, Resolution
from sandrun.errors import Problem


@pytest.fixture(autouse=True)
def no_ambient_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def sixes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real `six 1.0` in real/, a fake `six 9.9.9` in fake/, and a pip.conf naming
    fake/ (with a constraint that would exclude the real one)."""
    base = tmp_path_factory.mktemp("sixes")
    make_wheel(base / "real", "six", "1.0", {"six.py": "def main():\n    print('real')\n"})
    make_wheel(base / "fake", "six", "9.9.9", {"six.py": "def main():\n    print('FAKE')\n"})
    (base / "constraints.txt").write_text("six>=9\n")
    (base / "pip.conf").write_text(f"[global]\nfind-links = {base / 'fake'}\n"
                                   f"constraint = {base / 'constraints.txt'}\n")
    return {"base": base, "real": base / "real", "fake": base / "fake",
            "conf": base / "pip.conf"}


def manifest_of(bundle: Path) -> dict:
    with zipfile.ZipFile(bundle) as zf:
        return json.loads(zf.read(MANIFEST_NAME))


def sbom_properties(bundle: Path) -> tuple[list[tuple[str, str]], dict[str, list]]:
    with zipfile.ZipFile(bundle) as zf:
        sbom = json.loads(zf.read(SBOM_NAME))
    meta = [(p["name"], p["value"]) for p in sbom["metadata"].get("properties", [])]
    return meta, {c["name"]: c.get("properties", []) for c in sbom["components"]}


def test_ambient_find_links_and_config_are_ignored(sixes: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """PIP_FIND_LINKS and a pip.conf (PIP_CONFIG_FILE) pointing at a fake six 9.9.9 do
    not reach the bundle: only --find-links decides, and that is what is recorded."""
    out = tmp_path / "six.pyz"
    env = {"PIP_FIND_LINKS": str(sixes["fake"]), "PIP_CONFIG_FILE": str(sixes["conf"]),
           "PIP_CONSTRAINT": str(sixes["base"] / "constraints.txt")}
    proc = run_sandrun("bundle", "six", "--no-index", "--find-links", str(sixes["real"]),
                       "-e", "six:main", "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "app          six 1.0" in proc.stdout
    assert f"find-links   {sixes['real']}" in proc.stdout
    assert "indexes      none" in proc.stdout and "--use-pip-config" not in proc.stdout
    assert str(sixes["fake"]) not in proc.stdout + proc.stderr
    manifest = manifest_of(out)
    assert manifest["format"] == 2
    assert manifest["resolution"]["find_links"] == [str(sixes["real"])]
    assert manifest["resolution"]["indexes"] == []
    assert manifest["resolution"]["pip_config"] is False
    assert manifest["resolution"]["resolver"].startswith("pip ")
    [dep] = manifest["dependencies"]
    assert (dep["name"], dep["version"]) == ("six", "1.0")
    assert dep["origin"] == (sixes["real"] / "six-1.0-py3-none-any.whl").as_uri()
    meta, components = sbom_properties(out)
    assert ("sandrun:find-links", str(sixes["real"])) in meta
    assert ("sandrun:pip-config", "false") in meta
    assert {"name": "sandrun:origin", "value": dep["origin"]} in components["six"]


def test_use_pip_config_takes_ambient_sources_and_says_so(sixes: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "six.pyz"
    proc = run_sandrun("bundle", "six", "--no-index", "--find-links", str(sixes["real"]),
                       "-e", "six:main", "-o", str(out), "--use-pip-config",
                       env={"PIP_FIND_LINKS": str(sixes["fake"]), "PIP_CONFIG_FILE": None})
    assert proc.returncode == 0, proc.stderr
    assert "--use-pip-config: pip reads its configuration files" in proc.stderr
    assert "app          six 9.9.9" in proc.stdout
    assert "(pip configuration and PIP_* variables read: --use-pip-config)" in proc.stdout
    assert str(sixes["fake"]) in proc.stdout  # printed as a find-links location
    manifest = manifest_of(out)
    assert manifest["resolution"]["pip_config"] is True
    assert str(sixes["fake"]) in manifest["resolution"]["find_links"]
    assert manifest["dependencies"][0]["origin"] == \
        (sixes["fake"] / "six-9.9.9-py3-none-any.whl").as_uri()
    meta, _ = sbom_properties(out)
    assert ("sandrun:find-links", str(sixes["fake"])) in meta
    assert ("sandrun:pip-config", "true") in meta
    info = json.loads(run_sandrun("inspect", "--json", str(out)).stdout)
    assert info["resolution"]["pip_config"] is True


@pytest.mark.network
@pytest.mark.skipif(not os.path.exists("/etc/pip.conf") and
                    not os.path.exists("/etc/xdg/pip/pip.conf"),
                    reason="needs a global pip configuration (this machine's /etc/pip.conf)")
def test_global_pip_conf_is_ignored(tmp_path: Path) -> None:
    """This machine's /etc/pip.conf adds find-links and file:// indexes and a constraint
    file; the default build records PyPI alone and takes six from it."""
    out = tmp_path / "six.pyz"
    proc = run_sandrun("bundle", "six", "-e", "six:print_", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = manifest_of(out)
    assert manifest["resolution"]["indexes"] == ["https://pypi.org/simple"]
    assert manifest["resolution"]["find_links"] == []
    assert manifest["dependencies"][0]["origin"].startswith("https://")
    assert "indexes      https://pypi.org/simple" in proc.stdout


def test_misspelled_package_is_not_found(tmp_path: Path) -> None:
    wheels = hello_wheelhouse(tmp_path / "wheels")
    proc = run_sandrun("bundle", "hellopgk", "--no-index", "--find-links", str(wheels),
                       "-c", "hello", "-o", str(tmp_path / "x.pyz"))
    assert proc.returncode == 125, proc.stdout
    assert "hellopgk not found" in proc.stderr
    assert f"find-links: {wheels}" in proc.stderr
    assert "sdist" not in proc.stderr and "check the spelling" in proc.stderr
    version = run_sandrun("bundle", "hellopkg==9", "--no-index", "--find-links", str(wheels),
                          "-c", "hello", "-o", str(tmp_path / "x.pyz"))
    assert version.returncode == 125
    assert "no wheel satisfies hellopkg==9 (wheels for the target: 1.2.0)" in version.stderr
    assert not (tmp_path / "x.pyz").exists()


ENTRY_MODULE = '''\
import os as operating_system
from json import dumps as to_json
if operating_system.name == "posix":
    def posix_main():
        return 0
else:
    def posix_main():
        return 1
try:
    import nothing_here
except ImportError:
    fallback = None
runner: object = None
def main():
    return 0
class App:
    def run(self):
        return 0
'''


@pytest.mark.parametrize(("name", "expected"), [
    ("main", True), ("App", True), ("posix_main", True), ("fallback", True),
    ("runner", True), ("operating_system", True), ("to_json", True), ("mian", False),
    ("run", False), ("dumps", False)])
def test_static_binding_check(name: str, expected: bool) -> None:
    assert _binds(ast.parse(ENTRY_MODULE).body, name) is expected


@pytest.mark.parametrize("source", ["from os.path import *\n",
                                    "def __getattr__(name):\n    return name\n",
                                    "globals()['main'] = print\n",
                                    "exec('def main(): pass')\n"])
def test_dynamic_modules_are_not_judged(source: str) -> None:
    assert _binds(ast.parse(source).body, "main") is None


def test_missing_entry_point_attribute_is_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    make_wheel(links, "tool", "1.0", {"tool/__init__.py": "def main():\n    return 0\n",
                                      "tool/cli.py": "def run():\n    return 0\n"},
               console_scripts={"tool": "tool:mian", "tool-ok": "tool.cli:run"})
    out = tmp_path / "x.pyz"
    common = ("tool", "--no-index", "--find-links", str(links), "-o", str(out))
    typo = run_sandrun("bundle", *common, "-e", "tool:mian")
    assert typo.returncode == 125, typo.stdout
    assert "entry point 'tool:mian': module 'tool' defines no 'mian'" in typo.stderr
    script = run_sandrun("bundle", *common, "-c", "tool")
    assert script.returncode == 125
    assert "console script 'tool' (tool:mian): module 'tool' defines no 'mian'" in script.stderr
    sub = run_sandrun("bundle", *common, "-e", "tool.cli:nope")
    assert sub.returncode == 125 and "module 'tool.cli' defines no 'nope'" in sub.stderr
    assert not out.exists()
    for args in (("-e", "tool:main"), ("-c", "tool-ok"), ("-e", "tool:cli.run")):
        proc = run_sandrun("bundle", *common, *args)
        assert proc.returncode == 0, (args, proc.stderr)


def origin_problems(url: str, resolution: Resolution, *, direct: bool = False,
                    explicit: frozenset[str] = frozenset()) -> list[Problem]:
    problems: list[Problem] = []
    item = {"metadata": {"name": "six", "version": "1.0"}, "is_direct": direct,
            "download_info": {"url": url, "archive_info": {"hashes": {"sha256": "0" * 64}}}}
    _origin(item, resolution, {}, set(), set(explicit), problems)
    return problems


def test_origins_outside_the_searched_sources_are_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    local = Resolution("pip 23", (), (str(links),))
    assert not origin_problems((links / "six-1.0-py3-none-any.whl").as_uri(), local)
    elsewhere = origin_problems((tmp_path / "six-1.0-py3-none-any.whl").as_uri(), local)
    assert "which is in none of the find-links or file indexes" in elsewhere[0].what
    https = "https://files.example.org/six-1.0-py3-none-any.whl"
    assert "pip searched no http(s) index" in origin_problems(https, local)[0].what
    assert not origin_problems(https, Resolution("pip 23", ("https://pypi.org/simple",)))
    # A direct URL is an origin only when a requirement names it.
    assert "that no requirement" in origin_problems(https, local, direct=True)[0].what
    assert not origin_problems(https, local, direct=True, explicit=frozenset({https}))
    file_index = Resolution("pip 23", ((tmp_path / "pypi" / "simple").as_uri(),))
    assert not origin_problems((tmp_path / "pypi" / "files" / "six-1.0-py3-none-any.whl")
                               .as_uri(), file_index)
    assert origin_problems("ftp://example.org/six-1.0-py3-none-any.whl", local)


def test_requirement_file_index_options_are_recorded(sixes: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """A -r file's own --find-links is a source pip searched: recorded, not hidden."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"--find-links {sixes['real']}\nsix\n")
    out = tmp_path / "six.pyz"
    proc = run_sandrun("bundle", "-r", str(reqs), "--no-index", "-e", "six:main",
                       "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert manifest_of(out)["resolution"]["find_links"] == [str(sixes["real"])]


def test_json_and_quiet(sixes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "six.pyz"
    common = ("six", "--no-index", "--find-links", str(sixes["real"]), "-e", "six:main",
              "-o", str(out))
    proc = run_sandrun("bundle", *common, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["app"]["name"] == "six" and info["resolution"]["find_links"] == \
        [str(sixes["real"])]
    assert info["dependencies"][0]["origin"].startswith("file://")
    quiet = run_sandrun("bundle", *common, "-q")
    assert quiet.returncode == 0 and quiet.stdout == ""
    failed = run_sandrun("bundle", "nosuchthing", "--no-index", "--find-links",
                         str(sixes["real"]), "-e", "x:y", "-o", str(out), "-q")
    assert failed.returncode == 125 and failed.stdout == "" and "not found" in failed.stderr
