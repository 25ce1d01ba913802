"""PEP 740 provenance, offline, with real published files (tests/provenance/: abi3info
2024.10.8, published by GitHub woodruffw/abi3info release.yml): verified against pinned
publishers at bundle time, embedded and covered by the manifest, re-verified by `verify`,
shown by `inspect` and the SBOM; a tampered wheel, a wrong publisher, a provenance of
another file, an altered provenance and a missing required one are refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TESTS, run_sandrun
from wheelcraft import make_wheel

from sandrun.bundle.archive import write_archive
from sandrun.bundle.manifest import MANIFEST_NAME, PROVENANCE_DIR, SBOM_NAME, canonical_json
from sandrun.supply.provenance import (
    ProvenanceError,
    check_provenance_table,
    verify_provenance,
)

FIXTURES = TESTS / "provenance"
WHEEL = "abi3info-2024.10.8-py3-none-any.whl"
OTHER_RELEASE = "abi3info-2024.10.3-py3-none-any.whl"
WHEEL_SHA256 = "b0236c6707783f93971274101e119055192cef0925f5b7cebdad03c69dc5a499"
PUBLISHER = {"kind": "GitHub", "repository": "woodruffw/abi3info", "workflow": "release.yml"}
WRONG_REPOSITORY = {**PUBLISHER, "repository": "woodruffw/not-abi3info"}
WRONG_WORKFLOW = {**PUBLISHER, "workflow": "other.yml"}
PROVENANCE = (FIXTURES / f"{WHEEL}.provenance").read_bytes()
ENTRY = f"{PROVENANCE_DIR}{WHEEL}.provenance"


def policy_text(publisher: dict[str, str] = PUBLISHER, require: bool = True) -> str:
    fields = ", ".join(f'{k} = "{v}"' for k, v in publisher.items())
    return ("[provenance]\n" + ('require = ["abi3info"]\n' if require else "")
            + f"[provenance.publishers]\nabi3info = {{ {fields} }}\n")


def tampered_wheel(directory: Path) -> Path:
    """The real wheel with a zip comment added: still a valid wheel whose every file
    matches its RECORD, but not the file that was published (another sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = (FIXTURES / WHEEL).read_bytes()
    assert data[-2:] == b"\x00\x00"  # no comment yet
    target = directory / WHEEL
    target.write_bytes(data[:-2] + b"\x05\x00hello")
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None
    return target


# ---------------------------------------------------------------------------------------
# verify_provenance


def test_real_provenance_verifies_offline_pinned_and_unpinned() -> None:
    pinned = verify_provenance(PROVENANCE, WHEEL, WHEEL_SHA256, [PUBLISHER])
    assert pinned.pinned and pinned.publisher == PUBLISHER
    claimed = verify_provenance(PROVENANCE, WHEEL, WHEEL_SHA256)
    assert not claimed.pinned and claimed.publisher == PUBLISHER
    # One of several pins is enough.
    assert verify_provenance(PROVENANCE, WHEEL, WHEEL_SHA256,
                             [WRONG_REPOSITORY, PUBLISHER]).pinned


@pytest.mark.parametrize(("publisher", "why"), [
    (WRONG_REPOSITORY, "OIDCSourceRepositoryURI does not match"),
    (WRONG_WORKFLOW, "does not match expected Trusted Publisher"),
    ({"kind": "GitLab", "repository": "a/b", "workflow_filepath": "ci.yml"},
     "is from a GitHub publisher"),
])
def test_wrong_publisher_is_refused(publisher: dict[str, str], why: str) -> None:
    with pytest.raises(ProvenanceError) as info:
        verify_provenance(PROVENANCE, WHEEL, WHEEL_SHA256, [publisher])
    assert why in info.value.diagnostics()
    assert "published by someone else" in info.value.hint


def test_tampered_wheel_other_file_and_altered_provenance_are_refused(tmp_path: Path) -> None:
    tampered = hashlib.sha256(tampered_wheel(tmp_path).read_bytes()).hexdigest()
    with pytest.raises(ProvenanceError, match="does not verify") as info:
        verify_provenance(PROVENANCE, WHEEL, tampered, [PUBLISHER])
    assert f"this wheel's is {tampered}" in info.value.diagnostics()
    other = (FIXTURES / f"{OTHER_RELEASE}.provenance").read_bytes()
    with pytest.raises(ProvenanceError) as info:
        verify_provenance(other, WHEEL, WHEEL_SHA256, [PUBLISHER])
    assert f"it is about '{OTHER_RELEASE}', not {WHEEL}" in info.value.diagnostics()
    doc = json.loads(PROVENANCE)
    envelope = doc["attestation_bundles"][0]["attestations"][0]["envelope"]
    signature = envelope["signature"]
    envelope["signature"] = signature[:10] + ("A" if signature[10] != "A" else "B") + \
        signature[11:]
    with pytest.raises(ProvenanceError, match="does not verify"):
        verify_provenance(json.dumps(doc).encode(), WHEEL, WHEEL_SHA256)
    with pytest.raises(ProvenanceError, match="not a PEP 740 provenance"):
        verify_provenance(b'{"version": 1}', WHEEL, WHEEL_SHA256)


def test_offline_verification_touches_no_cache(tmp_path: Path) -> None:
    """The embedded trusted root is used: no network, and nothing is written to (or read
    from) the user's sigstore/TUF cache."""
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys; from sandrun.supply.provenance import verify_provenance\n"
            f"r = verify_provenance(open({str(FIXTURES / (WHEEL + '.provenance'))!r}, 'rb')"
            f".read(), {WHEEL!r}, {WHEEL_SHA256!r}, [{PUBLISHER!r}])\n"
            "print(r.publisher['repository'])")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "woodruffw/abi3info"
    assert list(home.rglob("*")) == []


# ---------------------------------------------------------------------------------------
# The policy table


@pytest.mark.parametrize(("table", "problem"), [
    ({"require": ["abi3info"]}, "'abi3info' is required but has no publisher"),
    ({"requires": []}, "provenance.requires: unknown key"),
    ({"publishers": {"x": {"kind": "Gitea", "repository": "a/b"}}}, "'Gitea' is not a "
     "publisher kind"),
    ({"publishers": {"x": {"kind": "GitHub", "repository": "a/b"}}}, "x.workflow: is missing"),
    ({"publishers": {"x": {"kind": "GitHub", "repository": "ab", "workflow": "w.yml"}}},
     "'ab' is not owner/name"),
    ({"publishers": {"x": {"kind": "GitHub", "repository": "a/b", "workflow": "w.yml",
                           "branch": "main"}}}, "x.branch: unknown key for a GitHub publisher"),
    ({"publishers": {"x": []}}, "is empty"),
    ({"require": ["not a name"]}, "is not a package name"),
])
def test_invalid_policy_tables(table: dict, problem: str) -> None:
    policy, problems = check_provenance_table(table, "trust.toml")
    assert policy is None
    assert any(problem in str(p) for p in problems), problems


def test_valid_policy_table() -> None:
    policy, problems = check_provenance_table(
        {"require": ["ABI3Info"], "publishers": {"ABI3INFO": [PUBLISHER, WRONG_WORKFLOW]}},
        "trust.toml")
    assert not problems and policy is not None
    assert policy.requires("abi3info") and policy.pins_for("Abi3Info") == (PUBLISHER,
                                                                            WRONG_WORKFLOW)


# ---------------------------------------------------------------------------------------
# bundle, inspect, SBOM, verify, lock


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("provenance")
    wheels = base / "wheels"
    wheels.mkdir()
    (wheels / WHEEL).write_bytes((FIXTURES / WHEEL).read_bytes())
    make_wheel(wheels, "provapp", "1.0", {"provapp.py": (
        "import abi3info\n\ndef main():\n    print('provapp', len(abi3info.FUNCTIONS) > 0)\n")},
        requires=["abi3info"])
    provenance = base / "provenance"
    provenance.mkdir()
    (provenance / f"{WHEEL}.provenance").write_bytes(PROVENANCE)
    policy = base / "trust.toml"
    policy.write_text(policy_text())
    bundle = base / "provapp.pyz"
    proc = run_sandrun("bundle", "provapp", "--no-index", "--find-links", str(wheels),
                       "-e", "provapp:main", "--provenance", str(provenance), "--trust",
                       str(policy), "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    yield {"base": base, "wheels": wheels, "provenance": provenance, "policy": policy,
           "bundle": bundle, "stdout": Path(proc.stdout)}


def bundle_with(lab: dict[str, Path], out: Path, *extra: str,
                wheels: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_sandrun("bundle", "provapp", "--no-index", "--find-links",
                       str(wheels or lab["wheels"]), "-e", "provapp:main", "-o", str(out),
                       *extra)


def test_bundle_embeds_verified_provenance(lab: dict[str, Path]) -> None:
    printed = str(lab["stdout"])
    assert "provenance   1 of 2 wheels:" in printed
    assert "abi3info 2024.10.8: GitHub woodruffw/abi3info (release.yml)" in printed
    with zipfile.ZipFile(lab["bundle"]) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
        assert zf.read(ENTRY) == PROVENANCE
        sbom = json.loads(zf.read(SBOM_NAME))
    abi3info = next(d for d in manifest["dependencies"] if d["name"] == "abi3info")
    assert abi3info["provenance"] == {"entry": ENTRY, "publisher": PUBLISHER, "pinned": True}
    assert ENTRY in manifest["entries"]  # covered by the manifest digest
    assert "provenance" not in next(d for d in manifest["dependencies"]
                                    if d["name"] == "provapp")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(sbom)) is None
    component = next(c for c in sbom["components"] if c["name"] == "abi3info")
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert props["sandrun:provenance:publisher"] == "GitHub woodruffw/abi3info (release.yml)"
    assert props["sandrun:provenance:pinned"] == "true"
    refs = {r["type"]: r for r in component["externalReferences"]}
    assert refs["attestation"]["url"] == \
        "https://github.com/woodruffw/abi3info/blob/HEAD/.github/workflows/release.yml"
    info = json.loads(run_sandrun("inspect", "--json", str(lab["bundle"])).stdout)
    dep = next(d for d in info["dependencies"] if d["name"] == "abi3info")
    assert dep["publisher"] == "GitHub woodruffw/abi3info (release.yml)"
    text = run_sandrun("inspect", str(lab["bundle"])).stdout
    assert "publisher GitHub woodruffw/abi3info (release.yml): PEP 740 provenance verified " \
           "at build time against the pinned publisher" in text
    assert "publisher unknown (no provenance)" in text  # provapp


def test_unpinned_provenance_is_verified_and_marked(lab: dict[str, Path],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "unpinned.pyz"
    proc = bundle_with(lab, out, "--provenance", str(lab["provenance"]))
    assert proc.returncode == 0, proc.stderr
    assert "GitHub woodruffw/abi3info (release.yml) (not pinned)" in proc.stdout


def test_bundle_refuses_wrong_publisher_tampered_wheel_and_missing(lab: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "x.pyz"
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(policy_text(WRONG_REPOSITORY))
    proc = bundle_with(lab, out, "--provenance", str(lab["provenance"]), "--trust", str(wrong))
    assert proc.returncode == 125, proc.stdout
    assert "against GitHub woodruffw/not-abi3info (release.yml)" in proc.stderr
    assert not out.exists()

    tampered = tmp_path / "tampered"
    tampered_wheel(tampered)
    for other in lab["wheels"].glob("provapp-*"):
        (tampered / other.name).write_bytes(other.read_bytes())
    for extra in ((), ("--trust", str(lab["policy"]))):  # unpinned: refused all the same
        proc = bundle_with(lab, out, "--provenance", str(lab["provenance"]), *extra,
                           wheels=tampered)
        assert proc.returncode == 125, proc.stdout
        assert "it is about a file with sha256 " + WHEEL_SHA256 in proc.stderr
        assert not out.exists()

    proc = bundle_with(lab, out, "--trust", str(lab["policy"]))  # no provenance given
    assert proc.returncode == 125
    assert f"{WHEEL}: has no provenance, and {lab['policy']} requires one" in proc.stderr
    assert not out.exists()


def test_lock_attestation_identities_pin_the_publisher(lab: dict[str, Path],
                                                       tmp_path: Path) -> None:
    lock = tmp_path / "pylock.toml"
    proc = run_sandrun("lock", "--format", "pylock", "-o", str(lock), str(lab["bundle"]))
    assert proc.returncode == 0, proc.stderr
    text = lock.read_text()
    assert ('attestation-identities = [{ kind = "GitHub", repository = "woodruffw/abi3info", '
            'workflow = "release.yml" }]') in text
    out = tmp_path / "locked.pyz"
    proc = run_sandrun("bundle", "--lock", str(lock), "-e", "provapp:main", "-o", str(out),
                       "--provenance", str(lab["provenance"]))
    assert proc.returncode == 0, proc.stderr
    assert "GitHub woodruffw/abi3info (release.yml)" in proc.stdout
    assert "(not pinned)" not in proc.stdout  # the lock pinned it
    lock.write_text(text.replace('repository = "woodruffw/abi3info"',
                                 'repository = "woodruffw/not-abi3info"'))
    proc = run_sandrun("bundle", "--lock", str(lock), "-e", "provapp:main", "-o", str(out),
                       "--provenance", str(lab["provenance"]))
    assert proc.returncode == 125 and "woodruffw/not-abi3info" in proc.stderr


def rewrite(bundle: Path, out: Path, edit_manifest=None, edit_entry=None) -> Path:  # type: ignore[no-untyped-def]
    """A bundle author's forgery: change an entry and/or the manifest, and make the
    manifest consistent again, so that only provenance re-verification can catch it."""
    with zipfile.ZipFile(bundle) as zf:
        names = [i.filename for i in zf.infolist()]
        data = {n: zf.read(n) for n in names}
        preamble = bundle.read_bytes()[:bundle.read_bytes().index(b"PK\x03\x04")]
    manifest = json.loads(data.pop(MANIFEST_NAME))
    if edit_entry is not None:
        data[ENTRY] = edit_entry(data[ENTRY])
        manifest["entries"][ENTRY].update(sha256=hashlib.sha256(data[ENTRY]).hexdigest(),
                                          size=len(data[ENTRY]))
    if edit_manifest is not None:
        edit_manifest(manifest)
    files = [(n, data[n], int(manifest["entries"][n]["mode"], 8)) for n in sorted(data)]
    files.append((MANIFEST_NAME, canonical_json(manifest), 0o644))
    buffer = io.BytesIO()
    write_archive(buffer, preamble, files, date_time=(1980, 1, 1, 0, 0, 0))
    out.write_bytes(buffer.getvalue())
    return out


def test_verify_reverifies_embedded_provenance(lab: dict[str, Path], tmp_path: Path) -> None:
    ok = run_sandrun("verify", str(lab["bundle"]))
    assert ok.returncode == 0, ok.stdout
    assert ("provenance: abi3info 2024.10.8: GitHub woodruffw/abi3info (release.yml), "
            "verified offline") in ok.stdout
    data = json.loads(run_sandrun("verify", "--json", str(lab["bundle"])).stdout)
    assert data["ok"] and data["provenance"][0]["verified"]
    assert run_sandrun("verify", "-q", str(lab["bundle"])).stdout == ""

    def other_release(_: bytes) -> bytes:
        return (FIXTURES / f"{OTHER_RELEASE}.provenance").read_bytes()

    forged = rewrite(lab["bundle"], tmp_path / "forged.pyz", edit_entry=other_release)
    proc = run_sandrun("verify", str(forged))
    assert proc.returncode == 1, proc.stdout
    assert "abi3info 2024.10.8: provenance does not verify against the recorded publisher" \
        in proc.stdout
    assert f"it is about '{OTHER_RELEASE}'" in proc.stdout

    def claim_other_publisher(manifest: dict) -> None:
        dep = next(d for d in manifest["dependencies"] if d["name"] == "abi3info")
        dep["provenance"]["publisher"]["repository"] = "woodruffw/not-abi3info"

    claimed = rewrite(lab["bundle"], tmp_path / "claimed.pyz",
                      edit_manifest=claim_other_publisher)
    proc = run_sandrun("verify", "--json", str(claimed))
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"] and "OIDCSourceRepositoryURI does not match" in \
        report["problems"][0]["what"]


def test_manifest_rejects_a_provenance_entry_of_another_wheel(lab: dict[str, Path],
                                                              tmp_path: Path) -> None:
    def misplace(manifest: dict) -> None:
        dep = next(d for d in manifest["dependencies"] if d["name"] == "abi3info")
        dep["provenance"]["entry"] = ".sandrun/provenance/x.provenance"

    bad = rewrite(lab["bundle"], tmp_path / "bad.pyz", edit_manifest=misplace)
    proc = run_sandrun("verify", str(bad))
    assert proc.returncode == 1
    assert "is not the provenance entry of this wheel" in proc.stdout


def test_no_sigstore_import_without_provenance(tmp_path: Path) -> None:
    """Verifying a bundle without provenance never imports sigstore (slow imports)."""
    from bundlecraft import bundle_bytes

    plain = tmp_path / "plain.pyz"
    plain.write_bytes(bundle_bytes())
    code = ("import sys; from sandrun.cli import main\n"
            "try:\n    main(['verify', '-q', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print('sigstore' in sys.modules, 'pypi_attestations' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(plain)], capture_output=True,
                          text=True, env={**os.environ}, timeout=60, check=False)
    assert proc.stdout.strip().endswith("False False"), proc.stdout + proc.stderr


class _Index:
    """A PEP 691 JSON simple index on 127.0.0.1 that serves PEP 740 provenance (as PyPI
    does, via each file's `provenance` URL), with the real wheel and its provenance."""

    def __init__(self, files: dict[str, bytes], provenance: dict[str, bytes]) -> None:
        import http.server
        import threading

        from helpers import free_port
        from packaging.utils import canonicalize_name, parse_wheel_filename

        projects: dict[str, list[dict]] = {}
        for name, data in files.items():
            project = canonicalize_name(parse_wheel_filename(name)[0])
            entry = {"filename": name, "url": f"/files/{name}",
                     "hashes": {"sha256": hashlib.sha256(data).hexdigest()}}
            if name in provenance:
                entry["provenance"] = f"/files/{name}.provenance"
            projects.setdefault(project, []).append(entry)
        self.requests: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2 and parts[1] in projects:
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": parts[1],
                                       "files": projects[parts[1]]}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                elif parts[0] == "files" and len(parts) == 2 and (
                        parts[1] in files or parts[1].removesuffix(".provenance") in provenance):
                    body = files.get(parts[1]) or provenance[parts[1][:-len(".provenance")]]
                    kind = "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/simple"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_provenance_from_an_index_that_serves_it(lab: dict[str, Path], tmp_path: Path) -> None:
    files = {p.name: p.read_bytes() for p in lab["wheels"].glob("*.whl")}
    index = _Index(files, {WHEEL: PROVENANCE})
    try:
        out = tmp_path / "from-index.pyz"
        proc = run_sandrun("bundle", "provapp", "--index-url", index.url, "-e",
                           "provapp:main", "--trust", str(lab["policy"]), "-o", str(out),
                           env={"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})
        assert proc.returncode == 0, proc.stderr
        assert f"indexes      {index.url}" in proc.stdout
        assert "abi3info 2024.10.8: GitHub woodruffw/abi3info (release.yml)" in proc.stdout
        assert f"/files/{WHEEL}.provenance" in index.requests
        with zipfile.ZipFile(out) as zf:
            manifest = json.loads(zf.read(MANIFEST_NAME))
            assert zf.read(ENTRY) == PROVENANCE
        dep = next(d for d in manifest["dependencies"] if d["name"] == "abi3info")
        assert dep["origin"] == f"http://127.0.0.1:{index.port}/files/{WHEEL}"
        assert dep["provenance"]["pinned"] is True
        # An index that serves no provenance: a required package is refused.
        bare = _Index(files, {})
        try:
            proc = run_sandrun("bundle", "provapp", "--index-url", bare.url, "-e",
                               "provapp:main", "--trust", str(lab["policy"]), "-o",
                               str(tmp_path / "x.pyz"),
                               env={"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})
            assert proc.returncode == 125 and "has no provenance" in proc.stderr
        finally:
            bare.close()
    finally:
        index.close()
