"""The operator decides what an app may touch: embedded profiles are requests, app names
belong to their first signer, and a refused launch creates nothing (issue 10).

Pure comparison logic is unit-tested; every refusal is then proven through
`sandrun exec` as root with a crafted bundle, asserting the exit code, the message and
that no user, store tree, state dir or record was created.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import remove_user, run_sandrun
from wheelcraft import make_wheel

from sandrun.config.profile import load_profile, load_profile_text
from sandrun.launch import consent
from sandrun.launch.store import Store

APP = '''\
import os, sys
def main():
    print("consent app", os.getuid())
    return 0
'''

GREEDY = '''\
extends = "default"
[filesystem]
read = ["/"]
[process]
mdwe = false
env = { pass = ["AWS_SECRET_ACCESS_KEY"] }
[syscalls]
allow = ["ptrace"]
'''

MODEST = '''\
extends = "default"
[network]
bind_tcp = [8000]
'''

WIDER = '''\
extends = "default"
[network]
bind_tcp = [8000, 9000]
'''


# ---------------------------------------------------------------- pure logic


def grants(text: str, *allowed: str) -> list[str]:
    requested = load_profile_text(text, "<requested>")
    ceilings = [load_profile("default"), *(load_profile_text(a, "<allowed>") for a in allowed)]
    return [f"{g.key}={g.value}" for g in consent.extra_grants(requested, ceilings)]


def test_default_and_state_paths_grant_nothing() -> None:
    assert grants('extends = "default"\n') == []
    assert grants('extends = "default"\n[filesystem]\nread_write = ["{state}/cache"]\n'
                  'read = ["{store}/x", "{tmp}"]\n[process]\nfork = false\n') == []


def test_every_kind_of_extra_grant_is_listed() -> None:
    found = grants(GREEDY + '[network]\nbind_tcp = [8000]\nconnect_tcp = [443]\ndns = true\n'
                   'unix_sockets = true\n[limits]\nmemory = "infinity"\n')
    assert found == [
        "filesystem.read=/", "network.bind_tcp=8000", "network.connect_tcp=443",
        "network.dns=true", "network.unix_sockets=true", "process.mdwe=false",
        "process.env.pass=AWS_SECRET_ACCESS_KEY",
        "limits.memory=infinity (allowed: 1073741824)", "syscalls.allow=ptrace"]


def test_ceiling_covers_narrower_requests_only() -> None:
    assert grants(MODEST, MODEST) == []
    assert grants(WIDER, MODEST) == ["network.bind_tcp=9000"]
    # a directory grant covers what is inside it, not its parent
    assert grants('[filesystem]\nread = ["/srv/data/x"]\n',
                  '[filesystem]\nread = ["/srv/data"]\n') == []
    assert grants('[filesystem]\nread = ["/srv"]\n',
                  '[filesystem]\nread = ["/srv/data"]\n') == ["filesystem.read=/srv"]


def test_groups_never_bring_dangerous_syscalls() -> None:
    found = grants('[syscalls]\nallow = ["@debug"]\n')
    assert all("ptrace" not in g for g in found)


def test_dangerous_syscall_needs_a_named_approval(tmp_path: Path) -> None:
    requested = load_profile_text(GREEDY, "<requested>")
    store = Store(tmp_path / "store", os.geteuid())
    with pytest.raises(consent.ConsentError) as info:
        consent.record_approval(store, "demo", requested, "0" * 64, ())
    assert "--allow-dangerous ptrace" in info.value.hint
    assert not (tmp_path / "store").exists()
    path = consent.record_approval(store, "demo", requested, "0" * 64, ("ptrace",))
    assert path.stat().st_mode & 0o777 == 0o600
    assert consent.check_consent(requested, consent.load_ceilings(store, "demo")) == []


def test_owner_rules() -> None:
    unsigned = consent.Owner(None, "a" * 64, "t")
    signed = consent.Owner("SHA256:key-a", "a" * 64, "t")
    assert consent.check_owner(None, None, "x", "b.pyz", None) is None
    assert consent.check_owner(unsigned, None, "x", "b.pyz", None) is None
    assert "signed by" in (consent.check_owner(unsigned, "SHA256:k", "x", "b", None) or "")
    assert consent.check_owner(signed, "SHA256:key-a", "x", "b.pyz", None) is None
    for other in ("SHA256:key-b", None):
        with pytest.raises(consent.ConsentError) as info:
            consent.check_owner(signed, other, "x", "b.pyz", "/s")
        assert "--adopt --store /s b.pyz" in info.value.hint


# ---------------------------------------------------------------- through exec, as root

USER = "sandrun-consentapp"


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int,
        require_seccomp: None) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-consent-", dir="/tmp"))
    base.chmod(0o755)
    wheels = base / "wheels"
    make_wheel(wheels, "consentapp", "1.0", {"consentapp.py": APP})
    bundles = {}
    for name, text in (("greedy", GREEDY), ("modest", MODEST), ("wider", WIDER),
                       ("plain", 'extends = "default"\n')):
        profile = base / f"{name}.toml"
        profile.write_text(text)
        out = base / f"{name}.pyz"
        proc = run_sandrun("bundle", "consentapp", "--no-index", "--find-links", str(wheels),
                           "-e", "consentapp:main", "-p", str(profile), "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        bundles[name] = out
    for key in ("a", "b"):
        proc = run_sandrun("keygen", "-o", str(base / f"key-{key}"), "--identity", key)
        assert proc.returncode == 0, proc.stderr
    remove_user(USER)
    yield {"base": base, **bundles}
    remove_user(USER)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def store(lab: dict[str, Path]) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="store-", dir=lab["base"]))
    path.chmod(0o755)
    yield path
    remove_user(USER)
    shutil.rmtree(path, ignore_errors=True)


def assert_nothing_created(store: Path) -> None:
    with pytest.raises(KeyError):
        pwd.getpwnam(USER)
    left = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    assert left == [], f"a refused launch left {left} in the store"


def exec_(store: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_sandrun("exec", "--store", str(store), *extra, str(bundle))


def test_greedy_embedded_profile_is_refused_and_creates_nothing(
        lab: dict[str, Path], store: Path) -> None:
    proc = exec_(store, lab["greedy"])
    assert proc.returncode == 125, proc.stderr
    err = proc.stderr
    assert "asks for 4 grants beyond the default profile" in err
    for line in ("filesystem.read: / (reads system or other users' files)",
                 "process.mdwe: false", "process.env.pass: AWS_SECRET_ACCESS_KEY",
                 "syscalls.allow: ptrace"):
        assert line in err, line
    assert f"sandrun approve --store {store} --allow-dangerous ptrace" in err
    assert_nothing_created(store)


def test_dry_run_verdicts(lab: dict[str, Path], store: Path) -> None:
    proc = exec_(store, lab["greedy"], "--dry-run")
    assert proc.returncode == 125
    assert proc.stdout.splitlines()[0].startswith("would refuse: the profile embedded in")
    assert f"  + system user {USER}" in proc.stdout
    proc = exec_(store, lab["greedy"], "--dry-run", "--json")
    data = json.loads(proc.stdout)
    assert data["verdict"] == "refuse" and data["refusals"][0]["error"] == "ConsentError"
    proc = exec_(store, lab["plain"], "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "would run"
    assert "consent      embedded profile (grants nothing beyond `default`)" in proc.stdout
    assert_nothing_created(store)


def test_operator_profile_needs_no_approval(lab: dict[str, Path], store: Path) -> None:
    proc = exec_(store, lab["greedy"], "-p", "default")
    assert proc.returncode == 0, proc.stderr
    assert "consent app" in proc.stdout
    assert f"created system user {USER}" in proc.stderr
    assert "created state dir" in proc.stderr


def test_approve_run_widen_refuse_approve(lab: dict[str, Path], store: Path) -> None:
    assert exec_(store, lab["modest"]).returncode == 125
    shown = run_sandrun("approve", "--store", str(store), lab["modest"])
    assert shown.returncode == 2 and "--yes" in shown.stderr  # no terminal: never implied
    approved = run_sandrun("approve", "--store", str(store), "--yes", str(lab["modest"]))
    assert approved.returncode == 0, approved.stderr
    assert "network.bind_tcp: 8000" in approved.stdout
    record = store / "approvals" / "consentapp.toml"
    assert record.stat().st_uid == 0 and record.stat().st_mode & 0o777 == 0o600
    proc = exec_(store, lab["modest"])
    assert proc.returncode == 0, proc.stderr
    # a version that asks for less than approved runs too
    assert exec_(store, lab["plain"]).returncode == 0
    wider = exec_(store, lab["wider"])
    assert wider.returncode == 125
    assert "1 grant beyond what was approved" in wider.stderr
    assert "network.bind_tcp: 9000" in wider.stderr and ": 8000" not in wider.stderr
    assert run_sandrun("approve", "--store", str(store), "--yes",
                       str(lab["wider"])).returncode == 0
    assert exec_(store, lab["wider"]).returncode == 0


def test_dangerous_syscall_blanket_approval_refused(lab: dict[str, Path],
                                                    store: Path) -> None:
    proc = run_sandrun("approve", "--store", str(store), "--yes", str(lab["greedy"]))
    assert proc.returncode == 125
    assert "--allow-dangerous ptrace" in proc.stderr
    assert not (store / "approvals").exists()


def test_app_name_belongs_to_its_first_signer(lab: dict[str, Path], store: Path) -> None:
    base = lab["base"]
    bundles = {}
    for key in ("a", "b"):
        bundles[key] = base / f"plain-{key}.pyz"
        shutil.copy(lab["plain"], bundles[key])
        bundles[key].chmod(0o644)
        proc = run_sandrun("sign", str(bundles[key]), "-k", str(base / f"key-{key}"))
        assert proc.returncode == 0, proc.stderr
    assert exec_(store, bundles["a"]).returncode == 0
    owner = json.loads((store / "owners" / "consentapp.json").read_text())
    assert owner["signer"].startswith("SHA256:")
    state = store / "state" / "consentapp"
    (state / "marker").write_text("a's data")
    for intruder in (bundles["b"], lab["plain"]):
        before = sorted(p.name for p in (store / "apps").iterdir())
        proc = exec_(store, intruder)
        assert proc.returncode == 125, proc.stderr
        assert "belongs to signer" in proc.stderr and "--adopt" in proc.stderr
        assert sorted(p.name for p in (store / "apps").iterdir()) == before
    adopted = exec_(store, bundles["b"], "--adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert "adopted" in adopted.stderr
    assert exec_(store, bundles["a"]).returncode == 125  # now b's
    assert (state / "marker").read_text() == "a's data"
