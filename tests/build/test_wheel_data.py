"""What a wheel's installer would install, kept in the bundle: `.data/` scripts (shell
scripts and native executables), data, headers, purelib and platlib; entry points with
a dotted attribute run as pip's console-script wrapper runs them.

The layout is `pip install --target site-packages` (sandrun/build/wheels.py): scripts
in site-packages/bin (0755), data relative to site-packages, headers under
site-packages/include/site/pythonX.Y/<project>/. The end-to-end test runs them in the
sandbox under an operator profile that grants them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_sandrun, users_removed_after
from wheelcraft import make_wheel

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
APP = "wheeldata"
APP_USER = f"sandrun-{APP}"
TRUE = Path("/bin/true").read_bytes()  # a small dynamically linked ELF executable
SHELL_SCRIPT = '#!/bin/sh\necho "script-ran $*"\n'
PYTHON_SCRIPT = "#!python\nprint('a #!python script ran')\n"

INIT = '''\
"""Imports none of its submodules: `datapkg.cli` is loaded only by importing it."""
import sys

CLI_LOADED_BY_INIT = "datapkg.cli" in sys.modules


class App:
    @staticmethod
    def run():
        print("App.run ran")
        return 0
'''

CLI = '''\
import sys

import datapkg
import datapkg_extra
import datapkg_plat


def entrypoint():
    print("cli.entrypoint ran", sys.argv[0], sys.argv[1:], datapkg.CLI_LOADED_BY_INIT,
          datapkg_extra.VALUE, datapkg_plat.VALUE)
    return 3
'''

# Finds its programs as ruff's find_ruff_bin does outside a venv: `bin` beside the
# package root, where `pip install --target` puts a wheel's scripts.
RUNNER = '''\
import errno, os, subprocess, sys

SITE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    for name in sys.argv[1:]:
        if name == "data":
            with open(os.path.join(SITE, "share", "datapkg", "readme.txt")) as f:
                print("data", f.read().strip())
            continue
        try:
            proc = subprocess.run([os.path.join(SITE, "bin", name), "arg"],
                                  capture_output=True, text=True, timeout=30)
            print(name, "exit", proc.returncode, *proc.stdout.split())
        except OSError as exc:
            print(name, errno.errorcode[exc.errno])
    return 0
'''

DATA = "datapkg-1.0.data"
FILES: dict[str, str | bytes] = {
    "datapkg/__init__.py": INIT,
    "datapkg/cli.py": CLI,
    "datapkg/runner.py": RUNNER,
    f"{DATA}/scripts/hello.sh": SHELL_SCRIPT,
    f"{DATA}/scripts/tiny-true": TRUE,
    f"{DATA}/scripts/pyscript": PYTHON_SCRIPT,
    f"{DATA}/data/share/datapkg/readme.txt": "installed relative to the prefix\n",
    f"{DATA}/headers/datapkg.h": "int datapkg(void);\n",
    f"{DATA}/purelib/datapkg_extra.py": "VALUE = 'purelib'\n",
    f"{DATA}/platlib/datapkg_plat.py": "VALUE = 'platlib'\n",
}
# hello.sh as a wheel built on Windows ships it (no execute bit): installed 0755 anyway.
MODES = {f"{DATA}/scripts/tiny-true": 0o755, f"{DATA}/scripts/hello.sh": 0o644,
         f"{DATA}/data/share/datapkg/readme.txt": 0o644}

# Where each lands in the bundle, and its normalised mode.
EXPECTED = {
    "site-packages/bin/hello.sh": (SHELL_SCRIPT.encode(), "0755"),
    "site-packages/bin/tiny-true": (TRUE, "0755"),
    "site-packages/bin/pyscript": (PYTHON_SCRIPT.encode(), "0755"),  # kept as shipped
    "site-packages/share/datapkg/readme.txt": (b"installed relative to the prefix\n", "0644"),
    f"site-packages/include/site/python{PY}/datapkg/datapkg.h": (b"int datapkg(void);\n",
                                                                  "0644"),
    "site-packages/datapkg_extra.py": (b"VALUE = 'purelib'\n", "0644"),
    "site-packages/datapkg_plat.py": (b"VALUE = 'platlib'\n", "0644"),
}


@pytest.fixture(autouse=True)
def no_ambient_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A 0755 directory, so that an app user can reach a store made inside it."""
    path = Path(tempfile.mkdtemp(prefix="sandrun-wheeldata-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheels(base: Path) -> Path:
    make_wheel(base / "wheels", "datapkg", "1.0", FILES, modes=MODES,
               console_scripts={"datapkg": "datapkg:cli.entrypoint"})
    return base / "wheels"


def bundle(wheels: Path, out: Path, *how: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_sandrun("bundle", "datapkg", "--no-index", "--find-links", str(wheels),
                       "--name", APP, *how, "-o", str(out), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def console_bundle(wheels: Path, base: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = base / "console.pyz"
    proc = bundle(wheels, out, "-c", "datapkg")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def manifest_of(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(".sandrun/manifest.json"))  # type: ignore[no-any-return]


def test_every_installed_part_is_kept_normalised(
        console_bundle: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = console_bundle
    entries = manifest_of(out)["entries"]
    assert isinstance(entries, dict)
    with zipfile.ZipFile(out) as zf:
        for name, (data, mode) in EXPECTED.items():
            assert entries[name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                     "size": len(data), "mode": mode}, name
            assert zf.read(name) == data
            assert (zf.getinfo(name).external_attr >> 16) & 0o7777 == int(mode, 8)
    assert not [n for n in entries if ".data/" in n]
    # The #!python script is kept as shipped, and the builder says why it cannot run.
    assert "'#!python' script(s) as shipped (bin/pyscript)" in proc.stderr
    verify = run_sandrun("verify", str(out))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_bundle_with_wheel_data_is_reproducible(wheels: Path, tmp_path: Path) -> None:
    outs = []
    for sub, umask in (("a", 0o022), ("other-dir", 0o077)):
        (tmp_path / sub).mkdir()
        out = tmp_path / sub / "d.pyz"
        proc = bundle(wheels, out, "-c", "datapkg", cwd=tmp_path / sub, umask=umask)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def run_bootstrap(bundle_path: Path, where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the bundle's own bootstrap from an extracted tree, as the launcher starts it."""
    with zipfile.ZipFile(bundle_path) as zf:
        zf.extractall(where)
    return subprocess.run([sys.executable, "-I", "-B", str(where / ".sandrun/bootstrap.py"),
                           *args], capture_output=True, text=True, check=False, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=where)


def test_dotted_entry_point_imports_the_submodule_like_pip(
        console_bundle: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    out, _ = console_bundle
    assert manifest_of(out)["app"] == {"name": APP, "version": "1.0",
                                       "entry_point": "datapkg:cli.entrypoint",
                                       "console_script": "datapkg"}
    proc = run_bootstrap(out, tmp_path, "a", "b")
    # __init__ did not import cli: the bootstrap did, as `from datapkg import cli` does.
    assert (proc.returncode, proc.stdout) == (
        3, f"cli.entrypoint ran {APP} ['a', 'b'] False purelib platlib\n"), proc.stderr


@pytest.mark.parametrize(("entry_point", "code", "output"), [
    ("datapkg:App.run", 0, "App.run ran\n"),  # an attribute chain on a class still works
    ("datapkg.cli:entrypoint", 3, f"cli.entrypoint ran {APP} [] False purelib platlib\n"),
])
def test_other_entry_point_forms(wheels: Path, tmp_path: Path, entry_point: str, code: int,
                                 output: str) -> None:
    out = tmp_path / "e.pyz"
    proc = bundle(wheels, out, "-e", entry_point)
    assert proc.returncode == 0, proc.stderr
    run = run_bootstrap(out, tmp_path / "tree")
    assert (run.returncode, run.stdout) == (code, output), run.stderr


def test_missing_first_attribute_fails_as_the_pip_wrapper_does(wheels: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "m.pyz"
    assert bundle(wheels, out, "-e", "datapkg:nosuch.entry").returncode == 0
    run = run_bootstrap(out, tmp_path / "tree")
    assert run.returncode == 1
    assert "ImportError: cannot import name 'nosuch' from 'datapkg'" in run.stderr


@pytest.mark.parametrize(("files", "words"), [
    ({"bad/__init__.py": "", "bad-1.0.data/lib/x.py": ""},
     "bad-1.0.data/lib/x.py is in the unknown install scheme 'lib'"),
    ({"bad/__init__.py": "", "bad-1.0.data/purelib/bad/__init__.py": "# again\n"},
     "installs bad/__init__.py twice"),
])
def test_malformed_data_is_refused(tmp_path: Path, files: dict[str, str | bytes],
                                   words: str) -> None:
    links = tmp_path / "links"
    make_wheel(links, "bad", "1.0", files)
    out = tmp_path / "x.pyz"
    proc = run_sandrun("bundle", "bad", "--no-index", "--find-links", str(links), "-e",
                       "bad:main", "-o", str(out))
    assert proc.returncode == 125, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_file_where_another_wheel_has_a_directory_is_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    make_wheel(links, "first", "1.0", {"first.py": "def main(): pass\n",
                                       "first-1.0.data/data/share": "a file\n"},
               requires=["second"])
    make_wheel(links, "second", "1.0", {"second.py": "",
                                        "second-1.0.data/data/share/doc.txt": "x\n"})
    out = tmp_path / "x.pyz"
    proc = run_sandrun("bundle", "first", "--no-index", "--find-links", str(links), "-e",
                       "first:main", "-o", str(out))
    assert proc.returncode == 125, proc.stderr
    assert "conflicts with a file or directory that another wheel installs" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


# ------------------------------------------------------------- in the sandbox, as root

GRANTING_PROFILE = '''\
extends = "default"

[filesystem]
execute = ["{{store}}/site-packages/bin/tiny-true", "{{store}}/site-packages/bin/hello.sh",
           "{shell}"]

[process]
subprocess = true
'''


@pytest.fixture()
def app_user() -> Iterator[None]:
    with users_removed_after(APP_USER):
        yield


def test_store_programs_run_in_the_sandbox_only_when_granted(
        require_root: None, require_landlock: int, require_seccomp: None, app_user: None,
        wheels: Path, base: Path) -> None:
    out = base / "runner.pyz"
    proc = bundle(wheels, out, "-e", "datapkg.runner:main")
    assert proc.returncode == 0, proc.stderr
    store = base / "store"
    # The default profile (no subprocess, no execute grant) runs none of them. This first
    # launch also installs the tree, which the launcher wants present before it accepts
    # an execute grant inside {store}.
    run = run_sandrun("exec", "--store", str(store), str(out), "tiny-true", "hello.sh")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["tiny-true EACCES", "hello.sh EACCES"], run.stderr

    profile = base / "grants.toml"
    # The script's #!/bin/sh is resolved by the kernel: Landlock checks the real file.
    profile.write_text(GRANTING_PROFILE.format(shell=os.path.realpath("/bin/sh")))
    run = run_sandrun("exec", "--store", str(store), "-p", str(profile), str(out),
                      "tiny-true", "hello.sh", "pyscript", "data")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == [
        "tiny-true exit 0",
        "hello.sh exit 0 script-ran arg",
        # Not granted: Landlock refuses to execute it (and a #!python script could not run).
        "pyscript EACCES",
        "data installed relative to the prefix",
    ], run.stderr
    tree = store / "apps" / hashlib.sha256(out.read_bytes()).hexdigest()
    for name in ("tiny-true", "hello.sh", "pyscript"):
        st = (tree / "site-packages" / "bin" / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o555), name
    st = (tree / "site-packages" / "share" / "datapkg" / "readme.txt").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o444)
