"""Build sandrun's native supervisor; everything else is declared in pyproject.toml.

sandrun/launch/native/supervise.c becomes the executable
sandrun/launch/native/sandrun-supervise inside the package (in place for an editable
install): the process that stays resident next to a running app instead of a root
Python interpreter (sandrun/launch/runner.py). It needs a C compiler (`cc`, or $CC;
Debian: `apt-get install gcc`). Without one the install still succeeds and launches
fall back to the Python supervisor, which `sandrun exec --dry-run` reports.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SUPERVISOR = "sandrun.launch.native.sandrun-supervise"
SOURCES = ["sandrun/launch/native/supervise.c"]
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


setup(ext_modules=[Extension(SUPERVISOR, SOURCES)], cmdclass={"build_ext": BuildNative})
