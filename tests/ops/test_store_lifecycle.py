"""`sandrun list`, `gc` and `rm` (issue 14): a store stays clean across upgrades, and
nothing in use is ever removed."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import remove_user, run_sandrun, sandrun_argv, user_exists
from wheelcraft import make_wheel

APP = '''\
import sys, time
VERSION = "{version}"
def main():
    if len(sys.argv) > 1 and sys.argv[1] == "sleep":
        print("ready", flush=True)
        time.sleep(30)
    print("lifecycle", VERSION)
    return 0
'''
USER = "sandrun-lifecycle"


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int,
        require_seccomp: None) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-lifecycle-", dir="/var/lib"))
    base.chmod(0o755)
    bundles = {}
    for version in ("1.0", "2.0"):
        wheels = base / f"wheels-{version}"
        make_wheel(wheels, "lifecycle", version, {"lifecycle.py": APP.format(version=version)})
        out = base / f"lifecycle-{version}.pyz"
        proc = run_sandrun("bundle", "lifecycle", "--no-index", "--find-links", str(wheels),
                           "-e", "lifecycle:main", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        bundles[version] = out
    remove_user(USER)
    yield {"base": base, "v1": bundles["1.0"], "v2": bundles["2.0"], "store": base / "store"}
    remove_user(USER)
    shutil.rmtree(base, ignore_errors=True)


def store_run(lab: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return run_sandrun(*args[:1], "--store", str(lab["store"]), *args[1:])


def listing(lab: dict[str, Path]) -> list[dict[str, object]]:
    proc = store_run(lab, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_upgrade_then_gc_keeps_the_newest(lab: dict[str, Path]) -> None:
    assert store_run(lab, "exec", str(lab["v1"])).stdout.strip() == "lifecycle 1.0"
    time.sleep(1.1)  # installed times differ by at least a second
    assert store_run(lab, "exec", str(lab["v2"])).stdout.strip() == "lifecycle 2.0"
    trees = listing(lab)
    assert [(t["app"], t["version"]) for t in trees] == [("lifecycle", "2.0"),
                                                        ("lifecycle", "1.0")]
    assert all(t["running"] == [] and t["last_used"] for t in trees)
    dry = store_run(lab, "gc", "--dry-run")
    assert dry.returncode == 0 and "would remove lifecycle 1.0" in dry.stdout, dry.stdout
    assert len(listing(lab)) == 2
    done = store_run(lab, "gc")
    assert done.returncode == 0 and "removed lifecycle 1.0" in done.stdout, done.stdout
    assert [t["version"] for t in listing(lab)] == ["2.0"]
    old = lab["store"] / "apps" / str(trees[1]["sha256"])
    assert not old.exists()
    assert not any(str(trees[1]["sha256"]) in p.name for p in (lab["store"] / "launch").iterdir())
    # v2 still runs warm and v1 reinstalls cold
    assert store_run(lab, "exec", str(lab["v2"])).returncode == 0
    assert store_run(lab, "exec", str(lab["v1"])).stdout.strip() == "lifecycle 1.0"


def test_nothing_in_use_is_removed(lab: dict[str, Path]) -> None:
    assert store_run(lab, "rm", "lifecycle").returncode == 0  # v1 older, v2 newest
    assert store_run(lab, "exec", str(lab["v1"])).returncode == 0
    time.sleep(1.1)
    assert store_run(lab, "exec", str(lab["v2"])).returncode == 0
    app = subprocess.Popen(sandrun_argv("exec", "--store", str(lab["store"]), str(lab["v1"]),
                                        "sleep"), stdout=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        running = [t for t in listing(lab) if t["version"] == "1.0"]
        assert running and running[0]["running"], running
        gc = store_run(lab, "gc")
        assert "in use by pid" in gc.stdout, gc.stdout
        assert {t["version"] for t in listing(lab)} == {"1.0", "2.0"}
        rm = store_run(lab, "rm", "lifecycle")
        assert rm.returncode == 125 and "is running" in rm.stderr, rm.stderr
    finally:
        app.terminate()
        app.wait(timeout=30)


def test_rm_with_state_and_user(lab: dict[str, Path]) -> None:
    assert store_run(lab, "exec", str(lab["v2"])).returncode == 0
    assert user_exists(USER)
    state = lab["store"] / "state" / "lifecycle"
    assert state.is_dir()
    plain = store_run(lab, "rm", "lifecycle")
    assert plain.returncode == 0, plain.stderr
    assert listing(lab) == [] and state.is_dir() and user_exists(USER)  # data kept
    full = store_run(lab, "rm", "lifecycle", "--state", "--user")
    assert full.returncode == 0, full.stderr
    assert "removed state dir" in full.stdout and f"removed system user {USER}" in full.stdout
    assert not state.exists() and not user_exists(USER)
    assert not (lab["store"] / "owners" / "lifecycle.json").exists()
    missing = store_run(lab, "rm", "lifecycle")
    assert missing.returncode == 125 and "not installed" in missing.stderr


def test_rm_never_removes_a_foreign_account(lab: dict[str, Path]) -> None:
    name = "sandrun-notours"
    subprocess.run(["useradd", "--shell", "/bin/bash", name], check=True)
    try:
        proc = store_run(lab, "rm", "notours", "--user")
        assert proc.returncode == 125 and "not an account sandrun created" in proc.stderr
        assert user_exists(name)
    finally:
        remove_user(name)


def test_rm_takes_app_names_not_paths(lab: dict[str, Path]) -> None:
    outside = lab["base"] / "outside"
    outside.mkdir()
    proc = store_run(lab, "rm", "../../outside", "--state")
    assert proc.returncode == 2 and "is not an app name" in proc.stderr, proc.stderr
    assert outside.is_dir()


def test_quiet_and_json_reports(lab: dict[str, Path]) -> None:
    """-q: nothing on stdout, same exit code, errors on stderr as usual; --json: one
    document (gc and rm say what they removed)."""
    assert store_run(lab, "exec", str(lab["v1"])).returncode == 0
    time.sleep(1.1)
    assert store_run(lab, "exec", str(lab["v2"])).returncode == 0
    quiet = store_run(lab, "list", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    dry = json.loads(store_run(lab, "gc", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and [t["version"] for t in dry["removed"]] == ["1.0"]
    gc = store_run(lab, "gc", "-q")
    assert (gc.returncode, gc.stdout) == (0, "")
    assert [t["version"] for t in listing(lab)] == ["2.0"]
    newest = listing(lab)[0]["sha256"]
    rm = store_run(lab, "rm", "lifecycle", "--json")
    assert rm.returncode == 0, rm.stderr
    assert json.loads(rm.stdout) | {"records": []} == {
        "app": "lifecycle", "trees": [newest], "records": [], "state_dir": None,
        "forgotten": [], "user": None}
    gone = store_run(lab, "rm", "lifecycle", "-q")
    assert gone.returncode == 125 and gone.stdout == ""
    assert gone.stderr.startswith("sandrun: error: app 'lifecycle' is not installed")
    for command in (["list"], ["gc"], ["rm", "lifecycle"]):
        usage = store_run(lab, *command, "-q", "--json")
        assert usage.returncode == 2 and "choose one" in usage.stderr, command
