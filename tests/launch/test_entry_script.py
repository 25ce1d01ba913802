"""The `sandrun` command setup.py writes (ENTRY_SCRIPT): `python -I -S`, sandrun found
without site, site.main() only for what needs it, and the install check over every
directory code is imported from, including those site adds late.

Each test makes a throwaway venv (no pip: fast) whose site-packages names this checkout
in a .pth path line (as a compat editable install does) and sandrun's dependencies in a
.pth *import* line, which only site.main() runs: a command that needs click works only
if site ran before it, and a warm launch shows that it did not.
"""

from __future__ import annotations

import os
import runpy
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, fork_and_report, need, run_sandrun, users_removed_after
from wheelcraft import make_wheel

SETUP: dict[str, Any] = runpy.run_path(str(ROOT / "setup.py"), run_name="sandrun_setup")
VERSION = f"python{sys.version_info[0]}.{sys.version_info[1]}"
DEPENDENCIES = site.getsitepackages()[0]  # this venv's: click, pyseccomp, ...
MARKER_CODE = "open({marker!r}, 'w').write('ran as uid %d' % __import__('os').getuid())\n"


def make_venv(where: Path, *, sandrun_pth: str | None = None) -> dict[str, Path]:
    """A venv without pip and the entry script as `<venv>/bin/sandrun` (-I -S)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site_packages = where / "lib" / VERSION / "site-packages"
    (site_packages / "sandrun-checkout.pth").write_text(
        f"# this checkout, as a compat editable install names it\n{ROOT}\n"
        if sandrun_pth is None else sandrun_pth)
    (site_packages / "zz-dependencies.pth").write_text(
        f"import sys; sys.path.append({DEPENDENCIES!r})\n")
    python = where / "bin" / "python"
    script = where / "bin" / "sandrun"
    script.write_text(SETUP["entry_script"](f"{python} -IS"))
    script.chmod(0o755)
    return {"venv": where, "python": python, "script": script, "site": site_packages}


def imported(stderr: str) -> list[str]:
    """Module names in `-X importtime` output, in import order."""
    return [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line][1:]


def run(argv: list[str | Path], cwd: str | Path = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=180, cwd=cwd, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- the script


def test_site_runs_only_once_the_cli_needs_it(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv")
    assert venv["script"].read_text().startswith(f"#!{venv['python']} -IS\n")
    proc = run([venv["script"], "-V"])  # click: only through the import line
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sandrun ")
    # An exec the warm path declines (no record): sandrun, then site, then the cold
    # launch, without click (cli_exec); also through a link elsewhere (README:
    # /usr/local/bin/sandrun). Words only click parses (--dry-run): the CLI, after site.
    link = tmp_path / "elsewhere" / "sandrun"
    link.parent.mkdir()
    link.symlink_to(venv["script"])
    for script in (venv["script"], link):
        proc = run([venv["python"], "-I", "-S", "-X", "importtime", script, "exec",
                    "--store", tmp_path / "no-store", tmp_path / "missing.pyz"])
        names = imported(proc.stderr)
        assert proc.returncode != 0 and "missing.pyz" in proc.stderr
        assert names.index("sandrun.launch.warm_exec") < names.index("site") < \
            names.index("sandrun.cli_exec")
        assert "click" not in names and "sandrun.cli" not in names
        proc = run([venv["python"], "-I", "-S", "-X", "importtime", script, "exec",
                    "--dry-run", "--store", tmp_path / "no-store", tmp_path / "missing.pyz"])
        names = imported(proc.stderr)
        assert proc.returncode != 0 and "missing.pyz" in proc.stderr
        assert names.index("site") < names.index("click") < names.index("sandrun.cli")
    assert run([link, "-V"]).returncode == 0


def test_the_script_run_with_site_works_too(tmp_path: Path) -> None:
    """pip's `#!python` variant (entry_interpreter said no): site already ran."""
    venv = make_venv(tmp_path / "venv")
    proc = run([venv["python"], "-X", "importtime", venv["script"], "-V"])
    assert proc.returncode == 0, proc.stderr
    assert imported(proc.stderr).count("site") == 1


def test_sandrun_found_by_an_import_hook_only(tmp_path: Path) -> None:
    """The default editable mode: only a .pth import line makes sandrun importable."""
    venv = make_venv(tmp_path / "venv",
                     sandrun_pth=f"import sys; sys.path.append({str(ROOT)!r})\n")
    proc = run([venv["python"], "-I", "-S", "-X", "importtime", venv["script"], "-V"])
    assert proc.returncode == 0, proc.stderr
    names = imported(proc.stderr)  # failed imports are listed too: sandrun, at first
    assert names.index("site") < len(names) - names[::-1].index("sandrun.__main__") - 1


def test_python_dash_m_sandrun_is_unchanged() -> None:
    proc = run_sandrun("-V")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sandrun ")


# ---------------------------------------------------------------- the install check


def _plant_click(directory: Path, marker: Path) -> None:
    """As nobody: a `click` package in a directory root would import code from."""
    def plant() -> bool:
        (directory / "click").mkdir()
        (directory / "click" / "__init__.py").write_text(MARKER_CODE.format(marker=str(marker)))
        return True

    assert fork_and_report(plant).value is True


@pytest.mark.parametrize("how", ["path line", "import line"])
def test_a_directory_others_can_write_is_refused(require_root: None, tmp_path: Path,
                                                 how: str) -> None:
    """A .pth file names a directory nobody can write: its path line is on sys.path
    before sandrun starts, its import line adds it only when site.main() runs late;
    either way the check refuses before the CLI imports the planted click."""
    venv = make_venv(tmp_path / "venv")
    shared = Path(tempfile.mkdtemp(prefix="sandrun-entry-shared-"))
    marker = tmp_path / "marker"
    try:
        shared.chmod(0o777)
        _plant_click(shared, marker)
        line = str(shared) if how == "path line" else \
            f"import sys; sys.path.insert(0, {str(shared)!r})"
        (venv["site"] / "aa-shared.pth").write_text(line + "\n")
        proc = run([venv["script"], "-V"])
        assert proc.returncode == 125, proc.stdout + proc.stderr
        assert f"imports code from {shared}" in proc.stderr
        assert "mode 0777" in proc.stderr
        assert not marker.exists()
        assert proc.stdout == ""
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_the_package_found_by_a_hook_is_checked(require_root: None, tmp_path: Path) -> None:
    """An import hook (an editable finder) finds sandrun outside sys.path: its directory
    is checked all the same."""
    shared = Path(tempfile.mkdtemp(prefix="sandrun-entry-pkg-"))
    marker = tmp_path / "marker"
    try:
        shutil.copytree(ROOT / "sandrun", shared / "sandrun",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shared.chmod(0o777)
        _plant_click(shared, marker)
        hook = ("import sys\n"
                "from importlib.machinery import PathFinder\n"
                "class Finder:\n"
                "    @classmethod\n"
                "    def find_spec(cls, name, path=None, target=None):\n"
                f"        return PathFinder.find_spec(name, [{str(shared)!r}]) "
                "if name == 'sandrun' else None\n"
                "sys.meta_path.append(Finder)\n"
                "from sandrun.__main__ import main\n"
                "main(['-V'])\n")
        proc = run([sys.executable, "-I", "-S", "-B", "-c", hook])
        assert proc.returncode == 125, proc.stdout + proc.stderr
        assert f"imports code from {shared}" in proc.stderr
        assert not marker.exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# ---------------------------------------------------------------- which shebang


@pytest.fixture
def root_only(require_root: None) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-entry-", dir="/var/lib"))
    base.chmod(0o755)
    (base / "venv" / "bin").mkdir(parents=True)
    (base / "venv" / "lib" / VERSION / "site-packages" / "pip").mkdir(parents=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_the_venv_interpreter_only_where_root_alone_can_write(root_only: Path,
                                                            tmp_path: Path) -> None:
    decide = SETUP["entry_interpreter"]
    venv = root_only / "venv"
    exe = str(venv / "bin" / "python3")
    assert decide(exe, str(venv), "/usr") == f"{exe} -IS"
    assert decide(exe, "/usr", "/usr") == "python"  # not a venv
    assert decide(exe, str(root_only), "/usr") == "python"  # not the venv's bin/
    assert decide("python3", "venv", "/usr") == "python"
    assert decide(f"{venv}/bin/../bin/python3", str(venv), "/usr") == "python"
    pip = venv / "lib" / VERSION / "site-packages" / "pip"
    pip.rename(pip.with_name("no-pip"))  # a build tool's throwaway env (uv, hatch)
    assert decide(exe, str(venv), "/usr") == "python"
    pip.with_name("no-pip").rename(pip)
    (venv / "bin").chmod(0o775)
    assert decide(exe, str(venv), "/usr") == "python"  # group-writable
    (venv / "bin").chmod(0o755)
    os.chown(venv, 65534, 65534)
    assert decide(exe, str(venv), "/usr") == "python"  # another user's
    os.chown(venv, 0, 0)
    (root_only / "link").symlink_to(venv)
    assert decide(str(root_only / "link" / "bin" / "python3"), str(root_only / "link"),
                  "/usr") == "python"
    for name in ("x" * 120, "a b"):  # a shebang too long for the kernel; split at spaces
        other = root_only / name
        shutil.copytree(venv, other)
        assert decide(str(other / "bin" / "python3"), str(other), "/usr") == "python"
    # A build environment in the temp dir: gone after the build.
    shutil.copytree(venv, tmp_path / "venv")
    assert decide(str(tmp_path / "venv" / "bin" / "python3"), str(tmp_path / "venv"),
                  "/usr") == "python"


def copy_source(source: Path) -> None:
    """What an sdist of this checkout holds, at `source` (no build products)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard",
                            "--", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md",
                            "sandrun"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(ROOT / name) and "/native/sandrun-supervise" not in name:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def have_compiler() -> bool:
    return shutil.which(os.environ.get("CC", "cc").split()[0]) is not None


@pytest.mark.network  # pip fetches the build backend (setuptools) for its isolated build
def test_pip_installs_the_script_regular_and_editable(root_only: Path) -> None:
    """What the README and CI run (sandrun's dependencies come from this venv): the
    native front as `sandrun`, the entry script as `sandrun-py`."""
    need(have_compiler(), "no C compiler: the front cannot be built")
    source = root_only / "src"
    copy_source(source)
    venv = root_only / "venv"
    shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, script = venv / "bin" / "python", venv / "bin" / "sandrun-py"
    front = venv / "bin" / "sandrun"
    site_packages = venv / "lib" / VERSION / "site-packages"
    (site_packages / "zz-dependencies.pth").write_text(
        f"import sys; sys.path.append({DEPENDENCIES!r})\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps",
           "--disable-pip-version-check"]
    for editable in ([], ["--config-settings", "editable_mode=compat", "-e"]):
        proc = run([*pip, *editable, source], cwd=root_only)
        assert proc.returncode == 0, proc.stderr
        assert script.read_text().startswith(f"#!{python} -IS\n")
        entry_points = list(site_packages.glob("sandrun-*.dist-info/entry_points.txt"))
        assert not entry_points or "console_scripts" not in entry_points[0].read_text()
        proc = run([python, "-I", "-S", "-X", "importtime", script, "-V"])
        assert proc.returncode == 0, proc.stderr
        names = imported(proc.stderr)
        assert names.index("sandrun.__main__") < names.index("site"), "found without site"
        where = "src" if editable else "site-packages"
        assert f"{source if editable else site_packages}/sandrun/launch/native" in \
            proc.stdout, where
        assert f"front:       Python only: {front} is the Python entry script" not in \
            proc.stdout
        assert is_elf(front), where
        proc = run([front, "-V"])  # the front execs sandrun-py next to it
        assert proc.returncode == 0, proc.stderr
        assert f"front:       native ({front})" in proc.stdout.splitlines(), where
        for program in (front, script):  # click names the program `sandrun` either way
            assert run([program, "--help"]).stdout.startswith("Usage: sandrun [OPTIONS]")


def build_scripts(source: Path, into: Path, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "setup.py", "-q", "build_scripts", "--build-dir",
                           str(into)], cwd=source, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_the_front_and_the_entry_script_are_built(tmp_path: Path) -> None:
    """setup.py's build_scripts: `sandrun` is the native front (with a compiler, without
    a warning), `sandrun-py` the entry script; without a compiler both are the script."""
    need(have_compiler(), "no C compiler: the front cannot be built")
    source = tmp_path / "src"
    copy_source(source)
    proc = build_scripts(source, tmp_path / "native")
    assert proc.returncode == 0, proc.stderr
    assert "warning:" not in proc.stderr and "cannot build" not in proc.stderr, proc.stderr
    front, script = tmp_path / "native" / "sandrun", tmp_path / "native" / "sandrun-py"
    assert is_elf(front) and front.stat().st_mode & 0o777 == 0o755
    assert script.read_text().startswith("#!") and "sandrun.__main__" in script.read_text()
    assert script.stat().st_mode & 0o777 == 0o755
    proc = build_scripts(source, tmp_path / "native", env={"CC": "false"})
    assert proc.returncode == 0, proc.stderr
    assert "cannot build the native front" in proc.stderr
    assert front.read_text() == script.read_text()  # the old front did not survive


def test_the_sdist_holds_the_front_s_sources(tmp_path: Path) -> None:
    source = tmp_path / "src"
    copy_source(source)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                          cwd=source, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (sdist,) = tmp_path.glob("sandrun-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {m.name.split("/", 1)[1] for m in archive.getmembers()
                 if m.isfile() and "/" in m.name}
    native = ROOT / "sandrun" / "launch" / "native"
    wanted = {f"sandrun/launch/native/{p.name}" for p in native.iterdir()
              if p.suffix in (".c", ".h")}
    assert wanted >= {f"sandrun/launch/native/{n}" for n in (
        "front.c", "sandbox.c", "cgroup.c", "front.h", "supervise.c", "cgroupfs.c",
        "cgroupfs.h")}
    assert wanted <= names, sorted(wanted - names)
    assert "sandrun" not in names and "sandrun-py" not in names  # generated at build


# ---------------------------------------------------------------- a warm launch

APP = "import os\n\ndef main():\n    print('entry', os.getuid())\n    return 0\n"


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Path]]:
    if os.geteuid() != 0:
        need(os.geteuid() == 0, "this test needs root")  # fails under CI=true
    base = Path(tempfile.mkdtemp(prefix="sandrun-entry-world-", dir="/var/lib"))
    base.chmod(0o755)
    try:
        with users_removed_after("sandrun-entryapp"):
            make_wheel(base / "wheels", "entryapp", "1.0", {"entryapp.py": APP})
            bundle = base / "entryapp.pyz"
            proc = run_sandrun("bundle", "entryapp", "--no-index", "--find-links",
                               str(base / "wheels"), "-e", "entryapp:main", "-o", str(bundle))
            assert proc.returncode == 0, proc.stderr
            yield {"base": base, "bundle": bundle, "store": base / "store"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_warm_launch_imports_neither_site_nor_ctypes(
        require_root: None, require_landlock: int, require_seccomp: None,
        world: dict[str, Path], tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv")
    argv = ["exec", "--store", str(world["store"]), str(world["bundle"])]
    for _attempt in range(3):  # another test's useradd changes /etc/passwd: cold again
        cold = run_sandrun(*argv, cwd=world["base"])
        assert cold.returncode == 0, cold.stderr
        proc = run([venv["python"], "-I", "-S", "-X", "importtime", venv["script"], *argv],
                   cwd=world["base"])
        assert proc.returncode == 0, proc.stderr
        names = imported(proc.stderr)
        if "sandrun.launch.launcher" not in names:
            break
    assert proc.stdout.startswith("entry ") and proc.stdout.split()[1] != "0"
    assert "sandrun.launch.warm_exec" in names and "_ctypes" in names
    heavy = {"site", "click", "ctypes", "types", "struct", "re", "typing", "json",
             "sandrun.launch.launcher", "sandrun.cli"}
    assert heavy.isdisjoint(names), sorted(heavy.intersection(names))
    # The same through the script as the kernel runs it (the shebang's -IS).
    proc = run([venv["script"], *argv], cwd=world["base"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("entry ")


def test_the_script_is_what_setup_writes() -> None:
    text = SETUP["entry_script"]("python")
    assert text.startswith("#!python\n")  # pip writes its interpreter there
    compile(text, "sandrun", "exec")
    assert text.isascii()
