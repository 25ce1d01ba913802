"""Build sandrun's native programs; everything else is declared in pyproject.toml.

sandrun/launch/native/supervise.c (with cgroupfs.c, the cgroup removal it shares with
the front) becomes the executable sandrun/launch/native/sandrun-supervise inside the
package (in place for an editable
install): the process that stays resident next to a running app instead of a root
Python interpreter (sandrun/launch/runner.py). It needs a C compiler (`cc`, or $CC;
Debian: `apt-get install gcc`). Without one the install still succeeds and launches
fall back to the Python supervisor, which `sandrun exec --dry-run` reports.

The `sandrun` command is the native front (BuildEntryScript): sandrun/launch/native/
front.c, sandbox.c, cgroup.c and cgroupfs.c compiled into one program that serves a warm
`sandrun exec` as root without starting Python, and execs `sandrun-py` next to it for
everything else. `sandrun-py` is ENTRY_SCRIPT, not pip's console script: it starts the
venv's interpreter with -I -S, without site, whose .pth import lines and sitecustomize
cost ~2 ms of every warm start (see ENTRY_SCRIPT and entry_interpreter). Without a C
compiler, `sandrun` is ENTRY_SCRIPT too (sandrun then starts as it always did).
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

SUPERVISOR = "sandrun.launch.native.sandrun-supervise"
SOURCES = ["sandrun/launch/native/supervise.c", "sandrun/launch/native/cgroupfs.c"]
FRONT_SOURCES = ["sandrun/launch/native/front.c", "sandrun/launch/native/sandbox.c",
                 "sandrun/launch/native/cgroup.c", "sandrun/launch/native/cgroupfs.c"]
CFLAGS = ["-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
          "-fPIE", "-pie", "-Wl,-z,relro,-z,now"]


class BuildNative(build_ext):
    """Compile each "extension" as a plain executable at the module's place."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split("."))  # no .cpython-*.so suffix

    def build_extension(self, ext: Extension) -> None:
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compiler = shlex.split(os.environ.get("CC", "cc"))
        command = [*compiler, *CFLAGS, "-o", target, *ext.sources]
        try:
            subprocess.run(command, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            # Not fatal: runner.py supervises in Python when the binary is missing.
            self.warn(f"cannot build {target} ({exc}): sandrun will supervise launches "
                      "with a resident Python interpreter; install gcc and reinstall")
            if os.path.exists(target):
                os.remove(target)
            return
        os.chmod(target, 0o755)

    def copy_extensions_to_source(self) -> None:
        """Editable installs: copy what was built (nothing, without a compiler)."""
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, built = self._get_inplace_equivalent(build_py, ext)
            if os.path.exists(built):
                self.copy_file(built, inplace, level=self.verbose)


# The `sandrun` command. pip's console script runs `#!<venv>/bin/python3` with site: the
# venv's .pth files (setuptools' distutils hack imports a module) and Debian's
# sitecustomize run before sandrun does, ~2 ms of every warm start. This runs without site
# and puts on sys.path what site would: the venv's site-packages, then the directories its
# .pth files name (an editable install's tree). Their import lines and sitecustomize run
# later, for every command but a warm exec (sandrun.__main__.main(site_pending=True)), or
# here when sandrun is not found without them (the default editable mode's import hook).
# No `-I -S` is possible without the venv's path (pip rewrites `#!python` to
# `#!<interpreter>` and drops what follows): see entry_interpreter.
ENTRY_SCRIPT = """\
#!{interpreter}
\"""The `sandrun` command, written by sandrun's setup.py (ENTRY_SCRIPT there).\"""
import sys


def add_venv_paths() -> None:
    \"""What site would put on sys.path in the venv this script is installed in (even
    when its interpreter is another venv's): its site-packages, then the directories
    its .pth files name; their import lines wait for site.main().\"""
    import os

    venv = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    version = f"python{{sys.version_info[0]}}.{{sys.version_info[1]}}"
    for lib in dict.fromkeys((sys.platlibdir, "lib")):
        site_packages = os.path.join(venv, lib, version, "site-packages")
        if site_packages in sys.path or not os.path.isdir(site_packages):
            continue
        sys.path.append(site_packages)
        try:
            names = sorted(os.listdir(site_packages))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".pth") or name.startswith("."):
                continue
            try:
                with open(os.path.join(site_packages, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue  # site.main() reports it
            for line in lines:
                if not line.strip() or line.startswith(("#", "import ", "import\\t")):
                    continue
                path = os.path.abspath(os.path.join(site_packages, line.rstrip()))
                if path not in sys.path and os.path.exists(path):
                    sys.path.append(path)


site_pending = sys.flags.no_site and "site" not in sys.modules
if site_pending:
    add_venv_paths()
try:
    from sandrun.__main__ import main
except ModuleNotFoundError as exc:
    if exc.name != "sandrun" or not site_pending:
        raise
    import site  # sandrun is found by an import hook that a .pth file installs

    site.main()
    site_pending = False
    from sandrun.__main__ import main
sys.exit(main(site_pending=bool(site_pending)))
"""
MAX_SHEBANG = 127  # bytes, with "#!" and the newline: what every kernel reads whole


def entry_interpreter(exe: str = sys.executable, prefix: str = sys.prefix,
                      base_prefix: str = sys.base_prefix) -> str:
    """`<this venv's python> -IS` if no one but root can ever put a program at that path,
    else `python` (pip makes it `#!<interpreter>`, without -I -S: ~2 ms slower).

    The path is the interpreter building sandrun, which `pip install` runs from the
    venv it installs into (README: Install; CI's editable install). A wheel built in one
    venv and installed in another names the first one's interpreter (the script still
    imports from its own venv; once that interpreter is gone: "bad interpreter"). So
    only a venv with pip (build tools' throwaway environments have none: uv, hatch),
    not under the temp dir (`python -m build`), whose directories from / down to bin/
    are root's and writable by no one else: if it goes away, no other user can put a
    program there for root to run. Anything else, a user's venv too, gets `python`.
    Wheels for other machines: `python -m build` or `uv build`, not `pip wheel`.
    """
    import tempfile

    bindir = os.path.dirname(exe)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if prefix == base_prefix or not os.path.isabs(exe) or os.path.normpath(exe) != exe or \
            bindir != os.path.join(prefix, "bin") or \
            len(f"#!{exe} -IS\n".encode()) > MAX_SHEBANG or \
            not exe.isascii() or any(c.isspace() for c in exe) or \
            not os.path.isdir(os.path.join(prefix, "lib", version, "site-packages", "pip")) or \
            _inside(prefix, os.path.realpath(tempfile.gettempdir())):
        return "python"
    path = "/"
    for part in ["", *bindir.strip("/").split("/")]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except OSError:
            return "python"
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            return "python"
    return f"{exe} -IS"


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def entry_script(interpreter: str) -> str:
    return ENTRY_SCRIPT.format(interpreter=interpreter)


# setuptools.command.build_scripts exists only since setuptools 69: the class it uses.
build_scripts = Distribution().get_command_class("build_scripts")


def sandrun_version(source: str = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "sandrun", "__init__.py")) -> str:
    """sandrun.__version__ (read, not imported): the front's record key names it, and
    must name what the Python side's key names (native_record.key_bytes)."""
    import ast

    with open(source, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, str) and value.isprintable() and '"' not in value and \
                    "\\" not in value:
                return value
    raise RuntimeError(f"no plain __version__ string in {source}")


def front_command(target: str, compiler: list[str] | None = None) -> list[str]:
    """The compiler command that builds the native front into `target`."""
    if compiler is None:
        compiler = shlex.split(os.environ.get("CC", "cc"))
    return [*compiler, *CFLAGS, f'-DSANDRUN_VERSION="{sandrun_version()}"', "-o", target,
            *FRONT_SOURCES]


class BuildEntryScript(build_scripts):  # type: ignore[misc,valid-type]
    """Write `sandrun` (the native front, or ENTRY_SCRIPT without a compiler) and
    `sandrun-py` (ENTRY_SCRIPT) into the build dir (`scripts` below only names them)."""

    def run(self) -> None:
        self.mkpath(self.build_dir)
        text = entry_script(entry_interpreter())
        if self.dry_run:
            return
        for name in ("sandrun-py", "sandrun"):
            target = os.path.join(self.build_dir, name)
            if os.path.lexists(target):
                os.remove(target)  # a front built before must not survive a failed build
            if name == "sandrun" and self.build_front(target):
                continue
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(target, 0o755)

    def build_front(self, target: str) -> bool:
        """Compile the native front into `target`; False (and a warning) without it."""
        try:
            subprocess.run(front_command(target), check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            # Not fatal: `sandrun` is then the Python entry script, as before the front.
            self.warn(f"cannot build the native front {target} ({exc}): `sandrun` will be "
                      "the Python entry script (every start runs Python); install gcc and "
                      "reinstall")
            if os.path.lexists(target):
                os.remove(target)
            return False
        os.chmod(target, 0o755)
        return True

    def get_source_files(self) -> list[str]:
        return []  # generated: nothing for the sdist (MANIFEST.in names the C sources)


if __name__ == "__main__":  # how setuptools runs it; tests import entry_script
    setup(ext_modules=[Extension(SUPERVISOR, SOURCES)], scripts=["sandrun", "sandrun-py"],
          cmdclass={"build_ext": BuildNative, "build_scripts": BuildEntryScript})
