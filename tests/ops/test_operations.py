"""Operating sandrun (issue 14): it refuses to run as root from an installation others
can change, and `sandrun -V` says what enforcement depends on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_sandrun

from sandrun.errors import EnforcementError
from sandrun.launch.selfcheck import check_install

NOBODY = 65534


@pytest.fixture
def base(require_root: None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sandrun-selfcheck-", dir="/var/lib"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_version_lists_what_enforcement_depends_on() -> None:
    proc = run_sandrun("-V")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sandrun ")
    for name in ("python:", "kernel:", "landlock:", "seccomp:", "mdwe:", "root:", "supervisor:"):
        assert any(line.startswith(name) for line in lines), (name, lines)
    assert "libseccomp 2." in proc.stdout
    assert "supervisor:  native (" in proc.stdout  # CI installs gcc: the C supervisor


def test_root_refuses_code_dirs_others_can_change(base: Path) -> None:
    owned = base / "nobodys"
    owned.mkdir()
    os.chown(owned, NOBODY, NOBODY)
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    fine = base / "fine"
    fine.mkdir()
    check_install([str(fine), "/nonexistent/is/ignored"])
    with pytest.raises(EnforcementError, match=r"nobodys is owned by uid 65534"):
        check_install([str(owned)])
    with pytest.raises(EnforcementError, match=r"mode 1777: others can add modules"):
        check_install([str(shared)])
    below = owned / "lib"
    below.mkdir()
    with pytest.raises(EnforcementError, match="nobodys"):
        check_install([str(below)])  # root-owned itself, but reached through nobody's dir


def test_python_m_sandrun_in_a_users_directory_is_refused(base: Path) -> None:
    """`python -m` puts the current directory first on sys.path: started as root in a
    directory another user owns, it would import their `click.py`."""
    work = base / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    marker = base / "planted-ran"
    # What nobody could plant; the refusal comes before any import of click.
    (work / "click.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    proc = subprocess.run([sys.executable, "-m", "sandrun", "list"], cwd=work,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 125, proc.stderr
    assert f"imports code from {work}" in proc.stderr
    assert not marker.exists()
