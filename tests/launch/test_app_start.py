"""The app's own start (sandrun/build/bootstrap.py): what a venv gives the app, and
nothing of the system's site.

The launcher starts a bundle's bootstrap as `python -I -B -S bootstrap.py` (BOOTSTRAP_API
2). Without `site` running, the bootstrap itself gives the app what site gives a venv's
program: the bundle's site-packages with its .pth files (path entries, import lines such
as setuptools' distutils-precedence.pth and old-style namespace packages), exit(),
quit(), help()..., and the same again in a multiprocessing spawn child. Nothing of the
system's site-/dist-packages (.pth files, sitecustomize) runs in the app. Started
without -S (an older launcher), the app still gets the same sys.path.

The probe app reports what it sees as JSON. The direct runs execute the bootstrap from an
extracted tree with Debian's interpreter, as the launcher starts it (no sandbox: the
probe only reads); the last tests run it through `sandrun exec`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import need, run_sandrun, users_removed_after
from wheelcraft import make_wheel

from sandrun.build import bootstrap

PYTHON = "/usr/bin/python3"  # the app's interpreter (Debian's: it has a system site)
APP = "startprobe"
APP_USER = f"sandrun-{APP}"
BUILTINS = ("copyright", "credits", "exit", "help", "license", "quit")

PROBE = '''\
import builtins, json, os, sys

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rel(path):
    return "{tree}" + path[len(TREE):] if path.startswith(TREE + "/") else path


def report():
    import importlib.metadata as metadata
    import site

    import nsold.sub
    import extramod

    outside = sorted(
        name for name, module in list(sys.modules.items())
        if (getattr(module, "__file__", None) or "").startswith(("/usr/lib/python3/",
                                                                 "/usr/local/lib/python"))
        or name in ("sitecustomize", "usercustomize", "certifi", "apport_python_hook"))
    return {
        "argv0": sys.argv[0],
        "no_site": sys.flags.no_site,
        "path": [_rel(p) for p in sys.path],
        "builtins": sorted(n for n in BUILTINS if hasattr(builtins, n)),
        "enable_user_site": site.ENABLE_USER_SITE,
        "user_site": site.USER_SITE is not None,
        "outside": outside,
        "hook_runs": getattr(sys, "startprobe_hook_runs", 0),
        "shim": _rel(getattr(sys, "startprobe_shim", "")),
        "extramod": _rel(extramod.__file__),
        "nsold": [_rel(p) for p in nsold.__path__] + [_rel(nsold.sub.__file__)],
        "version": metadata.version("startprobe"),
        "scripts": sorted(ep.value for ep in metadata.entry_points(group="console_scripts")
                          if ep.name == "startprobe"),
        "executable": sys.executable,
        "uid": os.getuid(),
    }


def child():
    print("child", json.dumps(report()), flush=True)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "report"
    if mode == "exit":
        exit(7)  # the builtin site installs, as scripts use it
    if mode == "spawn":
        import multiprocessing

        process = multiprocessing.get_context("spawn").Process(target=child)
        process.start()
        process.join(60)
        print("child-exit", process.exitcode, flush=True)
    print("parent", json.dumps(report()), flush=True)
    return 0
'''.replace("BUILTINS", repr(BUILTINS))

# setuptools' own lines, as its wheels and `pip install` of a namespace package write them.
DISTUTILS_PTH = ("import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, "
                 "'local') == 'local'; enabled and __import__('_distutils_hack').add_shim(); \n")
NSPKG_PTH = (
    "import sys, types, os;has_mfs = sys.version_info > (3, 5);p = os.path.join("
    "sys._getframe(1).f_locals['sitedir'], *('nsold',));importlib = has_mfs and "
    "__import__('importlib.util');has_mfs and __import__('importlib.machinery');m = has_mfs "
    "and sys.modules.setdefault('nsold', importlib.util.module_from_spec(importlib.machinery."
    "PathFinder.find_spec('nsold', [os.path.dirname(p)])));m = m or sys.modules.setdefault("
    "'nsold', types.ModuleType('nsold'));mp = (m or []) and m.__dict__.setdefault('__path__',"
    "[]);(p not in mp) and mp.append(p)\n")

FILES: dict[str, str | bytes] = {
    "startprobe/__init__.py": "",
    "startprobe/cli.py": PROBE,
    "startprobe_hook.py": ("import sys\n"
                           "sys.startprobe_hook_runs = getattr(sys, 'startprobe_hook_runs', 0)"
                           " + 1\n"),
    "startprobe-hook.pth": "# a comment line, then an import line\nimport startprobe_hook\n",
    "startprobe-extra.pth": "extra_dir\nno_such_dir\n",
    "extra_dir/extramod.py": "",
    "_distutils_hack/__init__.py": ("def add_shim():\n    import sys\n"
                                    "    sys.startprobe_shim = __file__\n"),
    "distutils-precedence.pth": DISTUTILS_PTH,
    "nsold/sub/__init__.py": "",
    "startprobe-1.0-py3.11-nspkg.pth": NSPKG_PTH,
}

SITE = "{tree}/site-packages"
BUNDLE_PATH = [SITE, f"{SITE}/extra_dir"]  # what the bundle adds to the stdlib's entries


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A 0755 directory, so that an app user can reach a store made inside it."""
    path = Path(tempfile.mkdtemp(prefix="sandrun-appstart-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def probe_bundle(base: Path) -> Path:
    make_wheel(base / "wheels", APP, "1.0", FILES,
               console_scripts={APP: "startprobe.cli:main"})
    out = base / "probe.pyz"
    proc = run_sandrun("bundle", APP, "--no-index", "--find-links", str(base / "wheels"),
                       "-c", APP, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def tree(probe_bundle: Path, base: Path) -> Path:
    """The bundle extracted, as the store holds it (read-only for the probe's runs)."""
    where = base / "tree"
    with zipfile.ZipFile(probe_bundle) as zf:
        zf.extractall(where)
    return where


def stdlib_path() -> list[str]:
    """The interpreter's own sys.path entries (no site, no script directory)."""
    out = subprocess.run([PYTHON, "-I", "-S", "-c",
                          "import json, sys; print(json.dumps(sys.path))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return [p for p in json.loads(out.stdout) if p]


def run_bootstrap(tree: Path, *flags: str, args: tuple[str, ...] = (),
                  bootstrap_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    need(os.access(PYTHON, os.X_OK), f"{PYTHON} (Debian's python3) is needed")
    script = bootstrap_file or tree / ".sandrun" / "bootstrap.py"
    return subprocess.run([PYTHON, *flags, str(script), *args], capture_output=True,
                          text=True, check=False, timeout=120, stdin=subprocess.DEVNULL,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def reports(stdout: str) -> dict[str, Any]:
    """The JSON reports by role ("parent", "child") and the child's exit code."""
    found: dict[str, Any] = {}
    for line in stdout.splitlines():
        role, _, rest = line.partition(" ")
        found[role] = json.loads(rest) if role in ("parent", "child") else rest
    return found


def check_bundle_site(report: dict[str, Any]) -> None:
    """What holds with or without -S: the app sees the bundle's site as a venv's program
    sees its site-packages."""
    assert report["argv0"] == APP
    assert report["path"][-2:] == BUNDLE_PATH, report["path"]
    assert not [p for p in report["path"][:-2] if p.endswith(("site-packages", "dist-packages"))]
    assert report["hook_runs"] == 1  # the .pth import line ran, once
    assert report["extramod"] == f"{SITE}/extra_dir/extramod.py"  # a .pth path entry
    assert report["nsold"] == [f"{SITE}/nsold", f"{SITE}/nsold/sub/__init__.py"]
    assert report["builtins"] == sorted(BUILTINS)
    assert (report["enable_user_site"], report["user_site"]) == (False, True)
    assert report["version"] == "1.0"
    assert report["scripts"] == ["startprobe.cli:main"]


def check_nothing_of_the_system(report: dict[str, Any]) -> None:
    """With -S: no system .pth or sitecustomize ran; the .pth shim is the bundle's."""
    assert report["no_site"] == 1
    assert report["outside"] == [], report["outside"]
    assert report["shim"] == f"{SITE}/_distutils_hack/__init__.py"


# ---------------------------------------------------------------- the bootstrap, directly


def test_rendered_bootstrap_is_the_template_without_its_renderer(tree: Path) -> None:
    text = (tree / ".sandrun" / "bootstrap.py").read_text()
    assert "\nBOOTSTRAP_API = 2  #" in text
    assert "APP_NAME = 'startprobe'\n" in text and "ENTRY_POINT = 'startprobe.cli:main'\n" in text
    assert "DEV_SOURCE = None\n" in text
    assert "def render" not in text and "_MARKER" not in text and text.endswith(")\n")
    compile(text, "bootstrap.py", "exec")


def test_with_S_the_app_gets_its_bundle_site_and_nothing_of_the_system(tree: Path) -> None:
    proc = run_bootstrap(tree, "-I", "-B", "-S")
    assert proc.returncode == 0, proc.stderr
    report = reports(proc.stdout)["parent"]
    check_bundle_site(report)
    check_nothing_of_the_system(report)
    assert report["path"][:-2] == stdlib_path()
    assert report["executable"] == PYTHON or os.path.realpath(report["executable"]) == \
        os.path.realpath(PYTHON)


def test_without_S_the_app_gets_the_same_sys_path(tree: Path) -> None:
    with_s = reports(run_bootstrap(tree, "-I", "-B", "-S").stdout)["parent"]
    proc = run_bootstrap(tree, "-I", "-B")
    assert proc.returncode == 0, proc.stderr
    report = reports(proc.stdout)["parent"]
    check_bundle_site(report)
    assert report["no_site"] == 0
    assert report["path"] == with_s["path"]


def test_exit_builtin_works_with_S(tree: Path) -> None:
    proc = run_bootstrap(tree, "-I", "-B", "-S", args=("exit",))
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "", "")


def test_a_spawn_child_starts_as_its_parent(tree: Path) -> None:
    proc = run_bootstrap(tree, "-I", "-B", "-S", args=("spawn",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = reports(proc.stdout)
    assert found["child-exit"] == "0", proc.stderr
    for role in ("parent", "child"):
        check_bundle_site(found[role])
        check_nothing_of_the_system(found[role])
    assert found["child"]["path"] == found["parent"]["path"]


def test_dev_source_goes_first(tree: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "extramod.py").parent.mkdir()
    (source / "extramod.py").write_text("")  # the project's module wins over the bundle's
    script = tree / ".sandrun" / "dev-bootstrap.py"
    script.write_bytes(bootstrap.render(APP, "startprobe.cli:main", dev_source=str(source)))
    try:
        proc = run_bootstrap(tree, "-I", "-B", "-S", bootstrap_file=script)
    finally:
        script.unlink()
    assert proc.returncode == 0, proc.stderr
    report = reports(proc.stdout)["parent"]
    assert report["path"][0] == str(source) and report["path"][-2:] == BUNDLE_PATH
    assert report["extramod"] == str(source / "extramod.py")
    check_nothing_of_the_system(report)


# ---------------------------------------------------------------- through sandrun exec


@pytest.fixture()
def app_user() -> Iterator[None]:
    with users_removed_after(APP_USER):
        yield


def test_in_the_sandbox(require_root: None, require_landlock: int, require_seccomp: None,
                        app_user: None, probe_bundle: Path, base: Path) -> None:
    store = base / "store"
    run = run_sandrun("exec", "--store", str(store), str(probe_bundle), "spawn")
    assert run.returncode == 0, run.stdout + run.stderr
    found = reports(run.stdout)
    assert found["child-exit"] == "0", run.stderr
    for role in ("parent", "child"):
        check_bundle_site(found[role])
        if found[role]["no_site"]:  # the launcher starts the bootstrap with -S
            check_nothing_of_the_system(found[role])
    assert found["child"]["path"] == found["parent"]["path"]
    assert found["parent"]["executable"].startswith("/usr/bin/python3")
    assert found["parent"]["uid"] != 0 and found["child"]["uid"] == found["parent"]["uid"]
    run = run_sandrun("exec", "--store", str(store), str(probe_bundle), "exit")
    assert (run.returncode, run.stdout) == (7, ""), run.stderr
