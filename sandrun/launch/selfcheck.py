"""Refuse to run privileged from an installation that someone else could change.

sandrun started as root imports its own code, its dependencies and the standard library
from the directories on sys.path: if another user can write one of them (a checkout in a
home directory, an editable install, a venv made as a user, `python -m sandrun` started
in /tmp), that user's code runs as root. So as root, every existing sys.path directory
must be reached from "/" through root-owned directories nobody else may write
(safefile.open_trusted_dir: sticky root-owned ancestors such as /tmp are fine, a symlink
only where root alone can change it), and must itself not be writable by group or
others, sticky or not: in a sticky dir anyone may add a module. The directory holding
the sandrun package is checked too (an editable install's import hook finds it without
sys.path), and sandrun.__main__ checks again once site.main() ran late (the entry script
setup.py writes starts without site: its .pth import lines may add directories).

Standard library only and cheap (a few dozen stat calls): every warm start pays for it.
"""

from __future__ import annotations

import os
import stat
import sys

from sandrun.errors import EnforcementError
from sandrun.launch import safefile

INSTALL_HINT = ("install sandrun root-owned, e.g. `python3 -m venv /opt/sandrun && "
                "/opt/sandrun/bin/pip install /path/to/sandrun` as root (README: Install), "
                "and run that `sandrun`")


# The directory holding the sandrun package: on sys.path, unless an import hook finds it
# (an editable install's finder), which is checked all the same.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_install(paths: list[str] | None = None) -> None:
    """As root: EnforcementError naming the first directory others can change among
    `paths` (default: sys.path and PACKAGE_PARENT)."""
    if os.geteuid() != 0:
        return  # runs as the invoking user: it can only hurt itself
    checked = set()
    for entry in ([*sys.path, PACKAGE_PARENT] if paths is None else paths):
        directory = os.path.abspath(entry or os.curdir)
        if directory in checked or not os.path.isdir(directory):
            continue  # absent entries (python311.zip) import nothing
        checked.add(directory)
        try:
            fd = safefile.open_trusted_dir(directory, 0)
        except safefile.UnsafePath as exc:
            raise EnforcementError(
                f"sandrun runs as root but imports code from {directory}, and {exc.path} "
                f"{exc.why}: whoever can change it would run code as root",
                INSTALL_HINT) from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_mode & 0o022:
            raise EnforcementError(
                f"sandrun runs as root but imports code from {directory}, which is mode "
                f"{stat.S_IMODE(st.st_mode):04o}: others can add modules there (started "
                "with `python -m sandrun` in a shared directory?)", INSTALL_HINT)
