"""The supply-chain commands through the real CLI: `audit` (exit 0/1, --json), `exec
--audit-db` with a database or its index (refusal 125 at or above the severity, unknown
severity fails closed, an index others could change is refused), `inspect --sbom`, `lock`
feeding a byte-identical rebuild, and a trust policy that requires PEP 740 provenance
(`verify --trust` and `exec` refuse a bundle without valid provenance from the pinned
publisher; nothing is created)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NOBODY, TESTS, run_sandrun, user_exists, users_removed_after
from wheelcraft import hello_wheelhouse, make_wheel

OSV_DB = TESTS / "osv" / "db"


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-supply-", dir="/tmp"))
    base.chmod(0o755)
    wheels = hello_wheelhouse(base / "wheels")
    bundle = base / "hello.pyz"
    proc = run_sandrun("bundle", "hellopkg", "--no-index", "--find-links", str(wheels),
                       "-c", "hello", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    yield {"base": base, "bundle": bundle, "wheels": wheels}
    shutil.rmtree(base, ignore_errors=True)


def test_audit_exit_codes_and_json(lab: dict[str, Path], tmp_path: Path) -> None:
    proc = run_sandrun("audit", str(lab["bundle"]), "--osv", str(OSV_DB))
    assert proc.returncode == 1, proc.stderr
    assert "helperlib 0.3: GHSA-h3lp-0001-aaaa" in proc.stdout
    data = json.loads(run_sandrun("audit", str(lab["bundle"]), "--osv", str(OSV_DB),
                                  "--json").stdout)
    assert data["vulnerable"] is True
    (tmp_path / "empty.json").write_text(json.dumps({"id": "X-1", "affected": []}))
    clean = run_sandrun("audit", str(lab["bundle"]), "--osv", str(tmp_path))
    assert clean.returncode == 0 and "no known vulnerabilities" in clean.stdout
    missing = run_sandrun("audit", str(lab["bundle"]), "--osv", str(tmp_path / "nope"))
    assert missing.returncode == 125 and "Traceback" not in missing.stderr


def test_exec_refuses_known_vulnerabilities(lab: dict[str, Path], require_root: None,
                                            require_landlock: int,
                                            require_seccomp: None) -> None:
    store = lab["base"] / "store"
    proc = run_sandrun("exec", "--store", str(store), "--audit-db", str(OSV_DB),
                       str(lab["bundle"]))
    assert proc.returncode == 125, proc.stdout
    assert "helperlib 0.3: GHSA-h3lp-0001-aaaa" in proc.stderr
    assert "upgrade to 0.4" in proc.stderr
    assert not (store / "apps").exists() or not any((store / "apps").iterdir())
    ok = run_sandrun("exec", "--store", str(store), "--audit-db", str(OSV_DB),
                     "--audit-severity", "critical", "--dry-run", str(lab["bundle"]))
    assert ok.returncode == 0, ok.stderr
    assert "no known vulnerability at or above critical (1 below it" in ok.stdout
    bad = run_sandrun("exec", "--store", str(store), "--audit-db", str(OSV_DB),
                      "--audit-severity", "severe", str(lab["bundle"]))
    assert bad.returncode == 2 and "critical" in bad.stderr


def test_inspect_sbom_is_the_embedded_entry(lab: dict[str, Path]) -> None:
    proc = run_sandrun("inspect", "--sbom", str(lab["bundle"]))
    assert proc.returncode == 0, proc.stderr
    sbom = json.loads(proc.stdout)
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in sbom["components"]}
    assert {"hellopkg", "helperlib"} <= names
    info = json.loads(run_sandrun("inspect", "--json", str(lab["bundle"])).stdout)
    assert info["sbom"]["components"] >= 2 and info["signature"]["state"] == "unsigned"


def test_lock_pins_a_byte_identical_rebuild(lab: dict[str, Path]) -> None:
    pins = lab["base"] / "pins.txt"
    proc = run_sandrun("lock", str(lab["bundle"]), "-o", str(pins))
    assert proc.returncode == 0, proc.stderr
    text = pins.read_text()
    assert "hellopkg==1.2.0 --hash=sha256:" in text and "helperlib==0.3 --hash=sha256:" in text
    again = lab["base"] / "again.pyz"
    proc = run_sandrun("bundle", "-r", str(pins), "--no-index", "--find-links", str(lab["wheels"]),
                       "-c", "hello", "-o", str(again))
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == lab["bundle"].read_bytes()


def test_exec_with_an_audit_index(lab: dict[str, Path], require_root: None,
                                  require_landlock: int, require_seccomp: None) -> None:
    index = lab["base"] / "osv.idx"
    built = run_sandrun("audit", "--index", str(OSV_DB), "-o", str(index))
    assert built.returncode == 0, built.stderr
    store = lab["base"] / "store-index"
    proc = run_sandrun("exec", "--store", str(store), "--audit-db", str(index),
                       str(lab["bundle"]))
    assert proc.returncode == 125, proc.stdout
    assert "helperlib 0.3: GHSA-h3lp-0001-aaaa" in proc.stderr
    assert not (store / "apps").exists() or not any((store / "apps").iterdir())
    ok = run_sandrun("exec", "--store", str(store), "--audit-db", str(index),
                     "--audit-severity", "critical", "--dry-run", str(lab["bundle"]))
    assert ok.returncode == 0, ok.stderr
    assert "no known vulnerability at or above critical (1 below it" in ok.stdout
    assert "raw database" not in ok.stdout
    raw = run_sandrun("exec", "--store", str(store), "--audit-db", str(OSV_DB),
                      "--audit-severity", "critical", "--dry-run", str(lab["bundle"]))
    assert "`sandrun audit --index` builds an index" in raw.stdout


def test_warm_starts_keep_the_audit_until_the_index_changes(
        lab: dict[str, Path], require_root: None, require_landlock: int,
        require_seccomp: None) -> None:
    """--audit-db is served warm (the index's identity is an input of the warm record);
    a new index makes the next start decide again, and refuse."""
    clean_db = lab["base"] / "clean-db"
    clean_db.mkdir()
    (clean_db / "empty.json").write_text(json.dumps({"id": "X-1", "affected": []}))
    index = lab["base"] / "warm.idx"
    built = run_sandrun("audit", "--index", str(clean_db), "-o", str(index))
    assert built.returncode == 0, built.stderr
    store = lab["base"] / "store-warm-audit"
    for _ in range(2):  # cold, then warm
        proc = run_sandrun("exec", "--store", str(store), "--audit-db", str(index),
                           str(lab["bundle"]))
        assert proc.returncode == 0, proc.stderr
    assert any((store / "launch").iterdir())
    fresh = lab["base"] / "warm.idx.new"
    built = run_sandrun("audit", "--index", str(OSV_DB), "-o", str(fresh))
    assert built.returncode == 0, built.stderr
    os.replace(fresh, index)
    proc = run_sandrun("exec", "--store", str(store), "--audit-db", str(index),
                       str(lab["bundle"]))
    assert proc.returncode == 125, proc.stdout
    assert "helperlib 0.3: GHSA-h3lp-0001-aaaa" in proc.stderr


@pytest.mark.parametrize("unsafe", ["owned by nobody", "group writable", "in a 0777 dir"])
def test_exec_refuses_an_index_others_could_change(lab: dict[str, Path], unsafe: str,
                                                   require_root: None, tmp_path: Path) -> None:
    directory = lab["base"] / f"idx-{unsafe.replace(' ', '-')}"
    directory.mkdir()
    index = directory / "osv.idx"
    assert run_sandrun("audit", "--index", str(OSV_DB), "-o", str(index)).returncode == 0
    if unsafe == "owned by nobody":
        os.chown(index, NOBODY, NOBODY)
    elif unsafe == "group writable":
        index.chmod(0o664)
    else:
        directory.chmod(0o777)
    store = lab["base"] / "store-unsafe"
    proc = run_sandrun("exec", "--store", str(store), "--audit-db", str(index),
                       "--audit-severity", "critical", "--dry-run", str(lab["bundle"]))
    assert proc.returncode == 125, proc.stdout
    assert proc.stdout.startswith("would refuse")  # --dry-run lists the reasons
    assert "audit index" in proc.stdout and "sandrun audit --index" in proc.stdout


# ---------------------------------------------------------------------------------------
# A trust policy that requires provenance


PROVENANCE = TESTS / "provenance"
ABI3INFO = "abi3info-2024.10.8-py3-none-any.whl"


@pytest.fixture(scope="module")
def signed_provapp(lab: dict[str, Path]) -> dict[str, Path]:
    base = lab["base"] / "prov"
    wheels = base / "wheels"
    wheels.mkdir(parents=True)
    (wheels / ABI3INFO).write_bytes((PROVENANCE / ABI3INFO).read_bytes())
    make_wheel(wheels, "provapp", "1.0", {"provapp.py": (
        "import abi3info\n\ndef main():\n    print('provapp ran', bool(abi3info.FUNCTIONS))\n")},
        requires=["abi3info"])
    provenance = base / "provenance"
    provenance.mkdir()
    (provenance / f"{ABI3INFO}.provenance").write_bytes(
        (PROVENANCE / f"{ABI3INFO}.provenance").read_bytes())
    key = base / "key"
    assert run_sandrun("keygen", "-o", str(key), "--identity", "test").returncode == 0
    with_prov = base / "provapp.pyz"
    without = base / "provapp-bare.pyz"
    for out, extra in ((with_prov, ("--provenance", str(provenance))), (without, ())):
        proc = run_sandrun("bundle", "provapp", "--no-index", "--find-links", str(wheels),
                           "-e", "provapp:main", "--sign-key", str(key), "-o", str(out),
                           *extra)
        assert proc.returncode == 0, proc.stderr
    return {"base": base, "key": key, "bundle": with_prov, "bare": without}


def provenance_policy(lab: dict[str, Path], signed: dict[str, Path], repository: str) -> Path:
    policy = signed["base"] / f"trust-{repository.replace('/', '-')}.toml"
    policy.write_text(f"""\
[[signer]]
name = "test"
public_key_file = "{signed['key']}.pub"
apps = ["provapp"]

[provenance]
require = ["abi3info"]
[provenance.publishers]
abi3info = {{ kind = "GitHub", repository = "{repository}", workflow = "release.yml" }}
""")
    return policy


def test_policy_requiring_provenance(lab: dict[str, Path], signed_provapp: dict[str, Path],
                                     require_root: None, require_landlock: int,
                                     require_seccomp: None) -> None:
    good = provenance_policy(lab, signed_provapp, "woodruffw/abi3info")
    wrong = provenance_policy(lab, signed_provapp, "woodruffw/not-abi3info")
    bundle, bare = str(signed_provapp["bundle"]), str(signed_provapp["bare"])
    assert run_sandrun("verify", "--trust", str(good), bundle).returncode == 0
    for policy, target, words in ((wrong, bundle, "does not verify against GitHub "
                                                  "woodruffw/not-abi3info (release.yml)"),
                                  (good, bare, "has no provenance, and the trust policy")):
        proc = run_sandrun("verify", "--trust", str(policy), target)
        assert proc.returncode == 1 and words in proc.stdout, proc.stdout
        store = signed_provapp["base"] / "store"
        proc = run_sandrun("exec", "--store", str(store), "--trust", str(policy), target)
        assert proc.returncode == 125, proc.stdout
        assert "required provenance" in proc.stderr and words in proc.stderr
        assert not (store / "apps").exists() or not any((store / "apps").iterdir())
        assert not (store / "state" / "provapp").exists()
        assert not user_exists("sandrun-provapp")
    with users_removed_after("sandrun-provapp"):
        store = signed_provapp["base"] / "store"
        proc = run_sandrun("exec", "--store", str(store), "--trust", str(good), bundle)
        assert proc.returncode == 0, proc.stderr
        assert "provapp ran True" in proc.stdout
        plan = run_sandrun("exec", "--store", str(store), "--trust", str(good), "--dry-run",
                           bundle)
        assert "provenance   abi3info from GitHub woodruffw/abi3info (release.yml)" in \
            plan.stdout
