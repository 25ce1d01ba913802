"""Offline audit against an OSV database: ranges, lists, aliases, severity, failures."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import TESTS
from wheelcraft import hello_wheelhouse

from sandrun.build.builder import BundleRequest, build_bundle
from sandrun.errors import AuditError, UsageError, VerificationError
from sandrun.supply.audit import (
    SEVERITY_LEVELS,
    AuditReport,
    Finding,
    OsvDatabase,
    audit_bundle,
    audit_dependencies,
    check_severity_level,
    cvss_score,
    is_at_or_above,
    load_osv_database,
    render_text,
    report_to_json,
)

HERE = TESTS
DB = HERE / "osv" / "db"
INVALID = HERE / "osv" / "invalid"


@pytest.fixture(scope="module")
def db() -> OsvDatabase:
    return load_osv_database(DB)


def one(db: OsvDatabase, name: str, version: str) -> Finding:
    findings = audit_dependencies([(name, version)], db)
    assert len(findings) == 1, findings
    return findings[0]


def test_database_counts(db: OsvDatabase) -> None:
    assert db.advisories == 8  # every file, other ecosystems and withdrawn ones included
    assert db.withdrawn == 1
    assert set(db.by_name) == {"helperlib", "weird-pkg-name", "listed", "limited", "oddver"}


def test_fixed_range_aliases_merged_and_database_severity(db: OsvDatabase) -> None:
    finding = one(db, "helperlib", "0.3")
    # GHSA and PYSEC describe one CVE: one finding, the GHSA one (it has a severity).
    assert finding.advisory_id == "GHSA-h3lp-0001-aaaa"
    assert set(finding.aliases) == {"CVE-2024-0001", "PYSEC-2024-11"}
    assert finding.summary == "helperlib evaluates VALUE from untrusted input"
    assert finding.affected == "<0.4"
    assert finding.fixed == ("0.4",)
    # database_specific.severity wins over the (moderate) CVSS vector.
    assert (finding.severity, finding.severity_source) == ("high", "database_specific")
    assert not finding.uncertain
    assert audit_dependencies([("helperlib", "0.4")], db) == []


def test_withdrawn_and_other_ecosystems_are_ignored(db: OsvDatabase) -> None:
    # The withdrawn advisory and the npm one would both be critical for every version.
    findings = audit_dependencies([("helperlib", "0.5"), ("HelperLib", "0.1")], db)
    assert [(f.version, f.advisory_id) for f in findings] == [("0.1", "GHSA-h3lp-0001-aaaa")]
    assert all(f.severity != "critical" for f in findings)


@pytest.mark.parametrize(("name", "version", "affected", "fixed"), [
    ("weird-pkg-name", "1.1", ">=1.0, <1.2.3", ("1.2.3",)),
    ("Weird.Pkg_Name", "1.0", ">=1.0, <1.2.3", ("1.2.3",)),
    ("WEIRD_PKG_NAME", "2.1.0", ">=2.0.0, <=2.1.0", ()),  # last_affected is inclusive
    ("weird-pkg-name", "2.0", ">=2.0.0, <=2.1.0", ()),
])
def test_multiple_ranges_and_name_normalisation(db: OsvDatabase, name: str, version: str,
                                                affected: str, fixed: tuple[str, ...]) -> None:
    finding = one(db, name, version)
    assert finding.name == "weird-pkg-name"
    assert finding.version == version
    assert (finding.affected, finding.fixed) == (affected, fixed)
    # Only a CVSS v3 vector: its base score (9.8) gives the level.
    assert (finding.severity, finding.cvss_score) == ("critical", 9.8)
    assert finding.severity_source.startswith("CVSS:3.1/AV:N")


@pytest.mark.parametrize("version", ["0.9", "1.2.3", "1.5", "2.1.1", "3.0"])
def test_outside_the_ranges(db: OsvDatabase, version: str) -> None:
    assert audit_dependencies([("weird-pkg-name", version)], db) == []


def test_versions_list_and_a_cvss4_only_advisory(db: OsvDatabase) -> None:
    finding = one(db, "listed", "0.6")  # listed as "0.6.0": equal as PEP 440 versions
    assert finding.affected == "==0.6.0 (listed)"
    # Only a CVSS v4 vector (FIRST's example AV:N/.../VA:H, 9.3): its score gives the level.
    assert (finding.severity, finding.cvss_score) == ("critical", 9.3)
    assert finding.severity_source.startswith("CVSS:4.0/")
    assert finding.fixed == ()
    assert one(db, "listed", "0.5").advisory_id == "OSV-2024-list"
    assert audit_dependencies([("listed", "0.7")], db) == []


def test_limit_event(db: OsvDatabase) -> None:
    finding = one(db, "limited", "2.9")
    assert (finding.severity, finding.affected) == ("low", "<3.0")
    assert audit_dependencies([("limited", "3.0")], db) == []


def test_unparsable_bound_is_reported_as_uncertain_not_clean(db: OsvDatabase) -> None:
    finding = one(db, "oddver", "2.0")
    assert finding.uncertain
    assert "'1.0-final-really!' is not a PEP 440 version" in finding.affected
    assert finding.severity == "unknown"
    assert "[UNCERTAIN MATCH]" in render_text(_report([finding]))


def test_zip_database_gives_the_same_results(db: OsvDatabase, tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(DB.rglob("*.json")):
            zf.write(path, path.relative_to(DB).as_posix())
        zf.writestr("README.txt", "not an advisory")
    from_zip = load_osv_database(archive)
    assert (from_zip.advisories, from_zip.withdrawn) == (db.advisories, db.withdrawn)
    deps = [("helperlib", "0.3"), ("weird-pkg-name", "1.1"), ("listed", "0.5"),
            ("limited", "1"), ("oddver", "1"), ("unrelated", "1.0")]
    assert ([f.advisory_id for f in audit_dependencies(deps, from_zip)]
            == [f.advisory_id for f in audit_dependencies(deps, db)]
            == ["GHSA-h3lp-0001-aaaa", "GHSA-m1xd-ecos-ys00", "OSV-2024-list", "PYSEC-2023-99",
                "GHSA-mu1t-rang-es00"])
    assert one(from_zip, "helperlib", "0.3").source.startswith(f"{archive}:")


@pytest.mark.parametrize("case", sorted(p.stem for p in INVALID.glob("*.json")))
def test_malformed_advisory_is_an_error_naming_file_and_key(case: str, tmp_path: Path) -> None:
    shutil.copy(INVALID / f"{case}.json", tmp_path)
    expected = (INVALID / f"{case}.expect").read_text().strip()
    with pytest.raises(AuditError) as info:
        load_osv_database(tmp_path)
    assert f"{tmp_path}/{expected}" in info.value.message
    assert "download the database again" in info.value.hint


def test_every_malformed_advisory_is_listed_at_once(tmp_path: Path) -> None:
    shutil.copytree(INVALID, tmp_path / "db", ignore=shutil.ignore_patterns("*.expect"))
    shutil.copytree(DB, tmp_path / "db" / "good")
    with pytest.raises(AuditError) as info:
        load_osv_database(tmp_path / "db")
    count = len(list(INVALID.glob("*.json")))
    assert f"has {count} malformed advisories" in info.value.message
    assert info.value.message.count("\n  - ") == count


@pytest.mark.parametrize(("setup", "words"), [
    ("missing", "does not exist"),
    ("empty", "contains no advisories"),
    ("text", "neither a directory of OSV advisories nor a zip"),
    ("badzip", "neither a directory"),
])
def test_unusable_database_paths(tmp_path: Path, setup: str, words: str) -> None:
    path = tmp_path / "db"
    if setup == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("nothing")
    elif setup == "text":
        path.write_text("{}")
    elif setup == "badzip":
        path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(AuditError, match=words):
        load_osv_database(path)


def test_severity_threshold_fails_closed_on_unknown() -> None:
    assert SEVERITY_LEVELS == ("low", "moderate", "high", "critical")
    assert is_at_or_above("high", "moderate")
    assert is_at_or_above("high", "high")
    assert not is_at_or_above("moderate", "high")
    assert is_at_or_above("critical", "critical")
    for level in SEVERITY_LEVELS:
        assert is_at_or_above("unknown", level)
    assert check_severity_level(" HIGH ") == "high"
    with pytest.raises(UsageError, match="'severe' is not a severity level") as info:
        check_severity_level("severe")
    assert info.value.hint == "use one of low, moderate, high, critical"


# Scores published by NVD and in FIRST's specification examples; the v3 ones are also
# what sandrun's own calculator gave before it used the cvss package.
@pytest.mark.parametrize(("vector", "score"), [
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),  # CVE-2014-6271 (Shellshock)
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),  # CVE-2021-44228 (Log4Shell)
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),  # CVE-2014-0160 (Heartbleed)
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),  # CVE-2013-1937
    ("CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:N/A:N", 3.1),  # CVE-2014-3566 (POODLE)
    ("CVSS:3.1/AV:A/AC:L/PR:N/UI:N/S:C/C:H/I:N/A:H", 9.3),  # CVE-2013-6014
    ("CVSS:3.1/AV:L/AC:L/PR:H/UI:N/S:U/C:L/I:L/A:L", 4.2),  # CVE-2009-0783
    ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N", 5.5),
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H", 9.9),  # CVE-2012-1516
    ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
    ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:P/RL:O", 9.8),  # temporal: base only
])
def test_cvss3_base_score(vector: str, score: float) -> None:
    assert cvss_score("CVSS_V3", vector) == score
    assert cvss_score("CVSS_V3", f" {vector}\n") == score  # as loosely as JSON may carry it


@pytest.mark.parametrize(("vector", "score"), [
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", 9.3),
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:H/SI:H/SA:H", 10.0),
    ("CVSS:4.0/AV:L/AC:L/AT:P/PR:L/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", 7.3),
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:L/VI:L/VA:L/SC:N/SI:N/SA:N", 6.9),
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:L/UI:N/VC:N/VI:L/VA:N/SC:N/SI:N/SA:N", 5.3),  # CVE-2024-7657
    ("CVSS:4.0/AV:L/AC:L/AT:N/PR:N/UI:A/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N", 4.6),
    ("CVSS:4.0/AV:N/AC:L/AT:P/PR:N/UI:P/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/E:U", 5.2),  # threat
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:N/SC:N/SI:N/SA:N", 0.0),
])
def test_cvss4_score(vector: str, score: float) -> None:
    assert cvss_score("CVSS_V4", vector) == score


@pytest.mark.parametrize(("kind", "vector"), [
    ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H"),  # incomplete
    ("CVSS_V3", "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),  # no such value
    ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/A:L"),  # doubled metric
    ("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/XX:Y"),  # unknown metric
    ("CVSS_V3", "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),  # no version prefix
    ("CVSS_V3", "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"),
    ("CVSS_V4", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),  # type and vector disagree
    ("CVSS_V4", "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H"),  # incomplete
    ("CVSS_V4", "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/"),
    ("CVSS_V4", ""),
    ("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:P/A:P"),  # v2 is not scored (it has no "critical")
    ("UBUNTU", "high"),
])
def test_malformed_or_unscored_vectors_have_no_score(kind: str, vector: str) -> None:
    assert cvss_score(kind, vector) is None


def advisory(severity: list[dict[str, str]]) -> dict[str, object]:
    return {"id": "OSV-X-1", "severity": severity,
            "affected": [{"package": {"ecosystem": "PyPI", "name": "pkg"}, "versions": ["1"]}]}


V3_MODERATE = "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N"  # 6.4
V4_CRITICAL = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"  # 9.3


@pytest.mark.parametrize(("severity", "expected"), [
    ([{"type": "CVSS_V4", "score": V4_CRITICAL}], ("critical", 9.3, V4_CRITICAL)),
    # v3 first, as before v4 was scored: an advisory with both keeps its v3 level.
    ([{"type": "CVSS_V4", "score": V4_CRITICAL}, {"type": "CVSS_V3", "score": V3_MODERATE}],
     ("moderate", 6.4, V3_MODERATE)),
    # A malformed v3 vector does not hide a v4 one that scores.
    ([{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}, {"type": "CVSS_V4", "score": V4_CRITICAL}],
     ("critical", 9.3, V4_CRITICAL)),
    # Nothing scores: unknown (which fails closed), naming the vector it could not rate.
    ([{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N"}], ("unknown", None, "CVSS:4.0/AV:N")),
])
def test_severity_from_cvss_vectors(tmp_path: Path, severity: list[dict[str, str]],
                                    expected: tuple[str, float | None, str]) -> None:
    (tmp_path / "a.json").write_text(json.dumps(advisory(severity)))
    finding = one(load_osv_database(tmp_path), "pkg", "1")
    assert (finding.severity, finding.cvss_score, finding.severity_source) == expected
    assert is_at_or_above(finding, "critical") == (finding.severity in ("critical", "unknown"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("audit")
    wheels = hello_wheelhouse(tmp / "wheels")
    out = tmp / "hello.pyz"
    build_bundle(BundleRequest(output=out, requirements=("hellopkg",), console_script="hello",
                               find_links=(str(wheels),), no_index=True))
    return out


def test_audit_bundle_reads_the_verified_manifest(bundle: Path, db: OsvDatabase) -> None:
    report = audit_bundle(bundle, db)
    assert report.vulnerable
    assert (report.app_name, report.app_version) == ("hello", "1.2.0")
    assert report.dependencies == (("hellopkg", "1.2.0"), ("helperlib", "0.3"))
    assert [f.advisory_id for f in report.findings] == ["GHSA-h3lp-0001-aaaa"]
    assert report.at_or_above("high") == report.findings
    assert report.at_or_above("critical") == ()

    text = render_text(report)
    assert f"audit of hello 1.2.0 ({bundle})" in text
    assert ("helperlib 0.3: GHSA-h3lp-0001-aaaa (CVE-2024-0001, PYSEC-2024-11) severity HIGH"
            in text)
    assert "affected: <0.4" in text and "fix: upgrade to 0.4" in text
    assert text.endswith("1 known vulnerability in 1 dependency (1 high)")

    data = report_to_json(report)
    json.dumps(data)  # serialisable as is
    assert data["vulnerable"] is True
    deps = {d["name"]: d["vulns"] for d in data["dependencies"]}
    assert deps["hellopkg"] == []
    assert deps["helperlib"][0]["id"] == "GHSA-h3lp-0001-aaaa"
    assert deps["helperlib"][0]["fix_versions"] == ["0.4"]
    assert deps["helperlib"][0]["severity"] == "high"


def test_clean_bundle(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"id": "X-1", "affected": []}))
    report = audit_bundle(bundle, load_osv_database(tmp_path))
    assert not report.vulnerable
    assert render_text(report).endswith("no known vulnerabilities")
    assert report_to_json(report)["vulnerable"] is False


def test_a_bundle_that_fails_verification_is_not_audited(bundle: Path, tmp_path: Path,
                                                         db: OsvDatabase) -> None:
    tampered = tmp_path / "t.pyz"
    tampered.write_bytes(bundle.read_bytes() + b"appended")
    with pytest.raises(VerificationError):
        audit_bundle(tampered, db)


def _report(findings: list[Finding]) -> AuditReport:
    return AuditReport(database="db", advisories=1,
                       dependencies=tuple((f.name, f.version) for f in findings),
                       findings=tuple(findings))


# ---------------------------------------------------------------------------------------
# The index (`sandrun audit --index DB -o FILE`)


def test_index_gives_the_same_findings(db: OsvDatabase, tmp_path: Path) -> None:
    from sandrun.supply.audit import parse_osv_index, write_osv_index

    index = tmp_path / "osv.idx"
    header = write_osv_index(db, index)
    assert header["advisories"] == 8 and header["names"] == 5 and header["withdrawn"] == 1
    assert len(header["database_sha256"]) == 64
    assert index.stat().st_mode & 0o777 == 0o644
    loaded = load_osv_database(index)  # detected by its header, wherever a db is taken
    assert loaded.index == str(index) and loaded.digest == db.digest
    assert f"(index {index})" in loaded.source
    deps = [("helperlib", "0.3"), ("Weird_Pkg.Name", "1.5"), ("listed", "2.0"),
            ("limited", "1.0"), ("oddver", "1.0"), ("absent", "1.0")]
    assert audit_dependencies(deps, loaded) == audit_dependencies(deps, db)
    assert set(loaded.by_name) == set(db.by_name)
    # The digest names the database's contents: another database, another digest.
    other = tmp_path / "other"
    shutil.copytree(DB, other)
    next(other.rglob("*.json")).write_text(json.dumps({"id": "X-1", "affected": []}))
    assert load_osv_database(other).digest != db.digest
    with index.open("rb") as f:
        assert parse_osv_index(f, "x").digest == db.digest


def test_zip_and_directory_digests_agree(db: OsvDatabase, tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(DB.rglob("*.json")):
            zf.write(path, path.relative_to(DB).as_posix())
    assert load_osv_database(archive).digest == db.digest


@pytest.mark.parametrize(("edit", "words"), [
    (lambda b: b.replace(b'"names": 5', b'"names": 6'), "not 6 lines"),
    (lambda b: b.replace(b'[{"affected"', b'{{"affected"', 1), "corrupt at 'helperlib'"),
    (lambda b: b.split(b"\n", 1)[0] + b"\nnot json\n", "is corrupt"),
    (lambda b: b[:-40], "truncated"),
    (lambda b: b"not an index", "neither a directory"),
])
def test_corrupt_index_fails_closed(db: OsvDatabase, tmp_path: Path, edit, words: str  # type: ignore[no-untyped-def]
                                    ) -> None:
    from sandrun.supply.audit import write_osv_index

    index = tmp_path / "osv.idx"
    write_osv_index(db, index)
    index.write_bytes(edit(index.read_bytes()))
    with pytest.raises(AuditError, match=words):
        loaded = load_osv_database(index)
        audit_dependencies([("helperlib", "0.3"), ("oddver", "1.0")], loaded)


def test_index_cli(tmp_path: Path) -> None:
    from helpers import run_sandrun

    index = tmp_path / "osv.idx"
    proc = run_sandrun("audit", "--index", str(DB), "-o", str(index), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["index"] == str(index) and info["names"] == 5
    quiet = run_sandrun("audit", "--index", str(DB), "-o", str(index), "-q")
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert run_sandrun("audit", "--index", str(DB)).returncode == 2  # no -o
    broken = run_sandrun("audit", "--index", str(INVALID), "-o", str(tmp_path / "b.idx"))
    assert broken.returncode == 125 and not (tmp_path / "b.idx").exists()
