"""`sandrun exec --trust`, `bundle --sign-key`, `sign`, `keygen`, `verify --trust`
through the real CLI: each refusal of the trust policy is exit 125 naming the rule, and
the warm exec path never runs a bundle the policy would now refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_sandrun, users_removed_after
from wheelcraft import make_wheel

APP = '''\
import os

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    print("trusted app ran"); return 0
'''


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app user the launches below create goes with the module."""
    with users_removed_after("sandrun-trustapp"):
        yield


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int, require_seccomp: None
        ) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-trust-", dir="/tmp"))
    base.chmod(0o755)
    make_wheel(base / "wheels", "trustapp", "1.5", {"trustapp.py": APP})
    for name in ("release", "intruder"):
        proc = run_sandrun("keygen", "-o", str(base / name), "--identity", f"{name}@example.org")
        assert proc.returncode == 0, proc.stderr
    common = ("trustapp", "--no-index", "--find-links", str(base / "wheels"),
              "-e", "trustapp:main", "--name", "trustapp")
    for out, extra in (("unsigned.pyz", ()), ("signed.pyz", ("--sign-key", str(base / "release"))),
                       ("intruder.pyz", ("--sign-key", str(base / "intruder")))):
        proc = run_sandrun("bundle", *common, *extra, "-o", str(base / out))
        assert proc.returncode == 0, proc.stderr
    yield {"base": base, "store": base / "store"}
    shutil.rmtree(base, ignore_errors=True)


def policy(lab: dict[str, Path], name: str, apps: str = '["trust*"]',
           min_version: str | None = None) -> Path:
    key = (lab["base"] / "release.pub").read_text().strip()
    text = f'[[signer]]\nname = "release"\npublic_key = "{key}"\napps = {apps}\n'
    if min_version:
        text += f'[min_version]\ntrustapp = "{min_version}"\n'
    path = lab["base"] / name
    path.write_text(text)
    return path


def run(lab: dict[str, Path], bundle: str, trust: Path | None,
        *extra: str) -> subprocess.CompletedProcess[str]:
    opts = ["--trust", str(trust)] if trust else []
    return run_sandrun("exec", "--store", str(lab["store"]), *opts, *extra,
                       str(lab["base"] / bundle))


def test_signed_bundle_runs_under_its_policy(lab: dict[str, Path]) -> None:
    trust = policy(lab, "ok.toml")
    for _ in range(2):  # cold, then warm
        proc = run(lab, "signed.pyz", trust)
        assert proc.returncode == 0, proc.stderr
        assert "trusted app ran" in proc.stdout
    proc = run_sandrun("verify", str(lab["base"] / "signed.pyz"), "--trust", str(trust))
    assert proc.returncode == 0
    assert "signed by ssh-ed25519 key SHA256:" in proc.stdout


@pytest.mark.parametrize(("bundle", "apps", "min_version", "words"), [
    ("unsigned.pyz", '["trust*"]', None, "unsigned"),
    ("intruder.pyz", '["trust*"]', None, "not in the trust policy"),
    ("signed.pyz", '["web-*"]', None, "which may sign only apps matching 'web-*'"),
    ("signed.pyz", '["trust*"]', "2.0", "older than the minimum version 2.0"),
])
def test_each_refusal_is_125_naming_the_rule(lab: dict[str, Path], bundle: str, apps: str,
                                            min_version: str | None, words: str) -> None:
    trust = policy(lab, f"refuse-{bundle}-{min_version}.toml", apps, min_version)
    proc = run(lab, bundle, trust)
    assert proc.returncode == 125, proc.stdout
    assert "trusted app ran" not in proc.stdout
    assert "not trusted by" in proc.stderr and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    dry = run(lab, bundle, trust, "--dry-run")
    assert dry.returncode == 125
    first = dry.stdout.splitlines()[0]
    assert first.startswith("would refuse: ") and "not trusted by" in first
    assert words in dry.stdout


def test_without_policy_dry_run_says_so_plainly(lab: dict[str, Path]) -> None:
    # A store of its own: in the lab's, the app name already belongs to the signed
    # bundles' key, so this unsigned one is refused (tests/test_consent.py).
    proc = run_sandrun("exec", "--store", str(lab["base"] / "store-unsigned"), "--dry-run",
                       str(lab["base"] / "unsigned.pyz"))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[0] == "would run"
    assert "signature    unsigned" in proc.stdout
    assert "NO POLICY IN FORCE" in proc.stdout


def test_policy_edit_reaches_the_warm_path(lab: dict[str, Path]) -> None:
    trust = policy(lab, "edited.toml")
    assert run(lab, "signed.pyz", trust).returncode == 0
    assert run(lab, "signed.pyz", trust).returncode == 0  # warm
    policy(lab, "edited.toml", min_version="9")  # rewritten in place: same path
    proc = run(lab, "signed.pyz", trust)
    assert proc.returncode == 125 and "minimum version 9" in proc.stderr


def test_invalid_policy_refuses_everything(lab: dict[str, Path]) -> None:
    bad = lab["base"] / "bad.toml"
    bad.write_text("[[signer]]\nname = 1\n")
    proc = run(lab, "signed.pyz", bad)
    assert proc.returncode == 125 and "bad.toml" in proc.stderr
    check = run_sandrun("trust", "check", str(bad))
    assert check.returncode == 125 and "signer[1]" in check.stderr


def test_keygen_never_overwrites(lab: dict[str, Path]) -> None:
    before = (lab["base"] / "release").read_bytes()
    proc = run_sandrun("keygen", "-o", str(lab["base"] / "release"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert (lab["base"] / "release").read_bytes() == before
    assert os.stat(lab["base"] / "release").st_mode & 0o777 == 0o600


def test_warm_start_ends_with_the_signers_validity_window(lab: dict[str, Path]) -> None:
    """A warm record never outlives the trust it was decided under: once the signer's
    valid_before has passed, the next start is decided again (and refused)."""
    import time

    end = time.time() + 6
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(end)) + "Z"
    trust = policy(lab, "window.toml")
    trust.write_text(trust.read_text() + f'valid_before = "{stamp}"\n')
    for _ in range(2):  # cold, then warm
        proc = run(lab, "signed.pyz", trust)
        assert proc.returncode == 0, proc.stderr
    records = sorted((lab["store"] / "launch").iterdir())
    assert records, "the cold start left no warm record"
    time.sleep(max(0.0, end - time.time()) + 1.5)
    proc = run(lab, "signed.pyz", trust)
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "trusted app ran" not in proc.stdout
    assert "valid" in proc.stderr.lower(), proc.stderr
