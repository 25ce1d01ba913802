"""-q and --json on `exec --dry-run`, `approve` and `learn` (issue 14): -q prints nothing
on stdout with the same exit code (errors still on stderr, in the usual format); --json
prints one JSON document on stdout; the two exclude each other."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_sandrun, users_removed_after
from wheelcraft import make_wheel

APP = "reportapp"
APP_SOURCE = '''\
import os, sys

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    print("app output", flush=True)
    for path in sys.argv[1:]:
        with open(path) as f:
            print("read", f.read().strip(), flush=True)
    return 0
'''
ASKS = 'extends = "default"\n[network]\nbind_tcp = [8000]\n'


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int,
        require_seccomp: None) -> Iterator[dict[str, Path]]:
    """A bundle whose embedded profile asks for a port (so it needs approval) and a file
    the default profile does not grant, under /var/lib (the sandbox's /tmp is private)."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-report-", dir="/var/lib"))
    base.chmod(0o755)
    with users_removed_after(f"sandrun-{APP}"):
        try:
            make_wheel(base / "wheels", APP, "1.0", {f"{APP}.py": APP_SOURCE})
            profile = base / "asks.toml"
            profile.write_text(ASKS)
            bundle = base / f"{APP}.pyz"
            proc = run_sandrun("bundle", APP, "--no-index", "--find-links",
                               str(base / "wheels"), "-e", f"{APP}:main", "-p", str(profile),
                               "-o", str(bundle))
            assert proc.returncode == 0, proc.stderr
            data = base / "data.txt"
            data.write_text("report data\n")
            data.chmod(0o644)
            yield {"base": base, "bundle": bundle, "data": data}
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def store(lab: dict[str, Path]) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="store-", dir=lab["base"]))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sandrun(store: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_sandrun(command, "--store", str(store), *args)


def test_dry_run(lab: dict[str, Path], store: Path) -> None:
    bundle = str(lab["bundle"])
    quiet = sandrun(store, "exec", "--dry-run", "-q", "-p", "default", bundle)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    data = json.loads(sandrun(store, "exec", "--dry-run", "--json", "-p", "default",
                              bundle).stdout)
    assert data["verdict"] == "run"
    # Not approved: refused, exit 125; -q says why on stderr, as an error.
    refused = sandrun(store, "exec", "--dry-run", "-q", bundle)
    assert refused.returncode == 125 and refused.stdout == ""
    assert refused.stderr.startswith("sandrun: error: would refuse: the profile embedded")
    for flags in (["-q"], ["--json"], ["--dry-run", "-q", "--json"]):
        usage = sandrun(store, "exec", *flags, bundle)
        assert usage.returncode == 2 and usage.stdout == "", flags
    assert not (store / "apps").exists()  # nothing was installed


def test_approve(lab: dict[str, Path], store: Path) -> None:
    bundle = str(lab["bundle"])
    asks = sandrun(store, "approve", "--json", bundle)  # never asks: --yes is needed
    assert asks.returncode == 2 and "--json does not ask: pass --yes" in asks.stderr
    assert asks.stdout == "" and not (store / "approvals").exists()
    done = sandrun(store, "approve", "--json", "--yes", bundle)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["app"] == APP and report["approved"] is True
    assert report["grants"] == [{"key": "network.bind_tcp", "value": "8000", "danger": "",
                                 "approved_before": False}]
    assert Path(report["record"]).is_file()
    again = json.loads(sandrun(store, "approve", "--json", bundle).stdout)
    assert again["approval_needed"] is False and again["approved"] is False
    assert again["grants"][0]["approved_before"] is True
    quiet = sandrun(store, "approve", "-q", "--yes", bundle)
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_learn(lab: dict[str, Path], store: Path) -> None:
    bundle, data = str(lab["bundle"]), str(lab["data"])
    learned = sandrun(store, "learn", "-p", "default", "--json", bundle, "--", data)
    assert learned.returncode == 0, learned.stderr
    report = json.loads(learned.stdout)  # the app's stdout went to stderr
    assert "app output" in learned.stderr and "read report data" in learned.stderr
    assert report["mode"] == "learn" and report["exit_code"] == 0
    assert {"key": "filesystem.read", "value": data, "review": "",
            "removed": False} in report["changes"]
    assert report["output"] is None and isinstance(report["not_granted"], list)
    assert isinstance(report["denials"], list)

    quiet = sandrun(store, "learn", "-p", "default", "-q", bundle, "--", data)
    assert (quiet.returncode, quiet.stdout) == (0, "")
    assert "app output" in quiet.stderr

    check = sandrun(store, "learn", "--check", "default", "--json", bundle, "--", data)
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert report["mode"] == "check" and report["ok"] is False
    assert f"filesystem read: {data}" in report["still_denied"]
    assert "learn --check: FAILED" in check.stderr  # the verdict stays on stderr
    quiet_check = sandrun(store, "learn", "--check", "default", "-q", bundle, "--", data)
    assert quiet_check.returncode == 1 and quiet_check.stdout == ""
    assert "denied: filesystem read" not in quiet_check.stderr  # the report is dropped

    usage = sandrun(store, "learn", "-q", "--json", bundle)
    assert usage.returncode == 2 and "choose one" in usage.stderr
