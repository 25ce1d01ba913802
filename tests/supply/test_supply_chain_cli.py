"""The supply-chain commands through the real CLI: `audit` (exit 0/1, --json), `exec
--audit-db` (refusal 125 at or above the severity, unknown severity fails closed),
`inspect --sbom`, and `lock` feeding a byte-identical rebuild."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TESTS, run_sandrun
from wheelcraft import hello_wheelhouse

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
