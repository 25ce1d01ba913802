"""Trust policy: invalid files (table-driven), every refusal rule, and the key attack.

Every tests/trust/invalid/NAME.toml must fail to load, and the error must contain each
line of its sibling NAME.expect (as tests/profiles/invalid does for profiles). Bundles
are real: built with tests/bundlecraft.py and signed with freshly generated keys.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bundlecraft import CORE, DATE_TIME, bundle_bytes, default_files, make_manifest, write
from helpers import NOBODY, TESTS, fork_and_report, run_sandrun

from sandrun.bundle.archive import open_archive, write_archive
from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, EntryRecord
from sandrun.bundle.signature import SignatureState, SshSignature
from sandrun.bundle.verify import VerifyResult, verify_bundle
from sandrun.errors import EXIT_REFUSED, Problem, TrustError
from sandrun.supply.signing import generate_key, load_private_key, sign_bundle
from sandrun.supply.trust import (
    DEFAULT_TRUST_PATH,
    TrustPolicy,
    add_signer,
    app_glob_matches,
    check_trust,
    export_allowed_signers,
    find_trust_policy,
    glob_principals,
    load_trust_policy,
    parse_ssh_time,
    require_trust,
    ssh_pattern_list_matches,
    trusted_until,
    utc_ssh_time,
)

HERE = TESTS / "trust"
INVALID = sorted((HERE / "invalid").glob("*.toml"))
SIGNED_AT = 1700000000


@pytest.fixture()
def fixtures(tmp_path: Path) -> Path:
    """A copy of tests/trust whose modes pass the policy's permission checks whatever the
    checkout's umask was."""
    copy = tmp_path / "trust"
    shutil.copytree(HERE, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o022)
    return copy


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """Private keys: release (release@example.org), ops, and stranger (in no policy)."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: generate_key(directory / name, f"{name}@example.org")[0]
            for name in ("release", "ops", "stranger")}


def pub(key: Path) -> str:
    return load_private_key(key).public_key.openssh()


def write_policy(directory: Path, text: str, name: str = "trust.toml") -> Path:
    path = directory / name
    path.write_text(text, "utf-8")
    path.chmod(0o644)
    return path


def standard_policy(tmp_path: Path, keys: dict[str, Path], extra: str = "") -> TrustPolicy:
    return load_trust_policy(write_policy(tmp_path, f'''\
[[signer]]
name = "release-team"
public_key = "{pub(keys["release"])}"
apps = ["demo", "web-*"]

[[signer]]
name = "ops"
public_key_file = "keys/ops.pub"
apps = ["tool?", "[ab]pp"]

[min_version]
demo = "1.0"
web-api = "2.0"
{extra}'''))


def make(tmp_path: Path, key: Path | None, *, app: str = "demo", version: str = "1.0",
         label: str | None = None) -> VerifyResult:
    """A verified bundle of `app` `version`, signed by `key` (None: unsigned)."""
    files = default_files()
    manifest = dataclasses.replace(make_manifest(files), app_name=app, app_version=version)
    label = label or f"{app}-{version}.pyz"
    (tmp_path / label).unlink(missing_ok=True)  # a signed bundle is 0444: replace, not rewrite
    path = write(tmp_path, bundle_bytes(files, manifest=manifest), label)
    if key is not None:
        sign_bundle(path, key)
    result = verify_bundle(path)
    assert result.ok, result.problems
    return result


def check(policy: TrustPolicy, result: VerifyResult, label: str = "app.pyz") -> list[Problem]:
    assert result.manifest is not None
    problems = check_trust(policy, result.manifest, result.signature_status, label)
    for problem in problems:
        assert problem.where == label and problem.hint, problem
    return problems


def only(problems: list[Problem], *words: str) -> Problem:
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0].what, f"{word!r} not in {problems[0].what!r}"
    return problems[0]


# ---------------------------------------------------------------- invalid policies


def test_every_invalid_fixture_has_an_expect_file() -> None:
    assert len(INVALID) >= 11
    assert {p.stem for p in (HERE / "invalid").glob("*.expect")} == {p.stem for p in INVALID}


@pytest.mark.parametrize("name", [p.name for p in INVALID], ids=[p.stem for p in INVALID])
def test_invalid_policy_reports_expected_problems(name: str, fixtures: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # From the fixture dir, so `where` shows short, predictable file names.
    monkeypatch.chdir(fixtures / "invalid")
    with pytest.raises(TrustError) as info:
        load_trust_policy(Path(name))
    error = info.value
    assert error.exit_code == EXIT_REFUSED
    assert error.problems, "a TrustError lists its problems"
    text = error.diagnostics()
    for needle in (fixtures / "invalid" / name).with_suffix(".expect").read_text().splitlines():
        if needle:
            assert needle in text, f"{needle!r} missing from:\n{text}"
    for problem in error.problems:
        assert problem.hint, f"problem without a hint: {problem}"


def test_every_problem_is_reported_at_once(fixtures: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(fixtures / "invalid")
    with pytest.raises(TrustError) as info:
        load_trust_policy(Path("bad_public_key.toml"))
    assert [p.where for p in info.value.problems] == [
        "bad_public_key.toml:3: signer[1].public_key",
        "bad_public_key.toml:8: signer[2].public_key",
        "bad_public_key.toml:13: signer[3].public_key",
        "bad_public_key.toml:18: signer[4].public_key",
        "bad_public_key.toml:23: signer[5].public_key",
        "bad_public_key.toml:28: signer[6].public_key_file",
    ]
    assert info.value.message == "trust policy bad_public_key.toml is invalid (6 problems)"


def policy_error(path: Path) -> TrustError:
    with pytest.raises(TrustError) as info:
        load_trust_policy(path)
    for problem in info.value.problems:
        assert problem.hint
    return info.value


def test_unreadable_policy_files(tmp_path: Path) -> None:
    with pytest.raises(TrustError) as info:  # missing is not "invalid": it says so
        load_trust_policy(tmp_path / "missing.toml")
    assert info.value.message == f"trust policy {tmp_path / 'missing.toml'} does not exist"
    assert "invalid" not in info.value.diagnostics()
    assert "sandrun trust add KEY.pub --apps APP" in info.value.hint
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "gone")
    error = policy_error(tmp_path / "dangling.toml")  # something is there: broken, not absent
    # Below /tmp no link is followed (test_links_on_the_way_follow_the_exec_rule has the
    # dangling link that is followed, and found missing).
    assert "dangling.toml" in error.problems[0].what
    assert "not a regular file" in policy_error(tmp_path).problems[0].what
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "\xff"\n')
    assert "is not UTF-8" in policy_error(binary).problems[0].what
    huge = write_policy(tmp_path, "# x\n" * 300_000, "huge.toml")
    assert "larger than 1048576 bytes" in policy_error(huge).problems[0].what


def test_policy_others_can_change_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    good = '[[signer]]\nname = "r"\npublic_key_file = "keys/release.pub"\napps = ["*"]\n'
    path = write_policy(tmp_path, good)
    load_trust_policy(path)

    path.chmod(0o664)
    error = policy_error(path)
    assert "is writable by group or others (mode 0664)" in error.problems[0].what
    assert "chmod go-w" in error.problems[0].hint
    path.chmod(0o644)

    (tmp_path / "keys" / "release.pub").chmod(0o646)
    error = policy_error(path)
    assert error.problems[0].where == f"{path}:3: signer[1].public_key_file"
    assert "public key file" in error.problems[0].what and "(mode 0646)" in error.problems[0].what
    (tmp_path / "keys" / "release.pub").chmod(0o644)

    original = stat.S_IMODE(tmp_path.stat().st_mode)
    try:
        tmp_path.chmod(0o777)
        assert f"the directory {tmp_path}" in policy_error(path).problems[0].what
        tmp_path.chmod(0o1777)  # sticky, like /tmp: others cannot replace our files
        load_trust_policy(path)
    finally:
        tmp_path.chmod(original)



def test_policy_owned_by_another_user_is_refused(tmp_path: Path, keys: dict[str, Path],
                                                 require_root: None) -> None:
    good = '[[signer]]\nname = "r"\npublic_key_file = "keys/release.pub"\napps = ["*"]\n'
    path = write_policy(tmp_path, good)
    os.chown(path, 65534, 65534)
    assert "is owned by uid 65534, not by root" in policy_error(path).problems[0].what


def test_find_trust_policy(tmp_path: Path, keys: dict[str, Path]) -> None:
    assert Path("/etc/sandrun/trust.toml") == DEFAULT_TRUST_PATH
    assert find_trust_policy(tmp_path / "none.toml") is None  # no file: no policy in force
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "gone.toml")
    with pytest.raises(TrustError):  # something is there: a broken policy is never "none"
        find_trust_policy(tmp_path / "dangling.toml")
    policy = standard_policy(tmp_path, keys)
    found = find_trust_policy(policy.path)
    assert found is not None and found.signers == policy.signers


def test_valid_policy(tmp_path: Path, keys: dict[str, Path]) -> None:
    absolute = keys["stranger"].with_name("stranger.pub")
    policy = standard_policy(tmp_path, keys, f'''
[[signer]]
name = "absolute-path"
public_key_file = "{absolute}"
apps = ["x", "x", "y"]
''')
    assert [s.name for s in policy.signers] == ["release-team", "ops", "absolute-path"]
    release, ops, other = policy.signers
    assert release.public_key == load_private_key(keys["release"]).public_key
    assert ops.public_key == load_private_key(keys["ops"]).public_key  # relative to the file
    assert other.public_key.comment == "stranger@example.org"
    assert other.apps == ("x", "y")
    assert release.where == f"{policy.path}:1: signer[1]"
    assert ops.apps_where == f"{policy.path}:9: signer[2].apps"
    assert {a: (str(m.version), m.where) for a, m in policy.min_versions.items()} == {
        "demo": ("1.0", f"{policy.path}:12: min_version.demo"),
        "web-api": ("2.0", f"{policy.path}:13: min_version.web-api")}
    assert policy.signer_for(load_private_key(keys["ops"]).public_key) is ops


# ---------------------------------------------------------------- refusal rules


def test_signed_by_a_listed_key_for_a_listed_app_is_trusted(tmp_path: Path,
                                                             keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    assert check(policy, make(tmp_path, keys["release"])) == []
    assert check(policy, make(tmp_path, keys["release"], app="web-api", version="2.0")) == []
    assert check(policy, make(tmp_path, keys["ops"], app="tool1")) == []
    assert check(policy, make(tmp_path, keys["ops"], app="bpp")) == []
    require_trust(policy, make(tmp_path, keys["release"]).manifest,  # type: ignore[arg-type]
                  make(tmp_path, keys["release"]).signature_status, "app.pyz")


def test_unsigned_bundle_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    problem = only(check(policy, make(tmp_path, None)), "is not signed",
                   f"the trust policy {policy.path}")
    assert "sandrun sign" in problem.hint


def test_invalid_signature_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    result = make(tmp_path, keys["release"])
    # A copy of the same bundle whose Ed25519 signature has one bit flipped.
    archive = result.archive
    files = [(e.name, archive.read(e), e.mode & 0o7777) for e in archive.entries]
    name, content, mode = files[-1]
    assert name == SIGNATURE_NAME
    sshsig = SshSignature.from_armor(content, canonical=True)
    flipped = bytes([sshsig.signature[0] ^ 1]) + sshsig.signature[1:]
    files[-1] = (name, dataclasses.replace(sshsig, signature=flipped).armor(), mode)
    broken = tmp_path / "broken.pyz"
    with broken.open("wb") as out:
        write_archive(out, archive.preamble, files, date_time=DATE_TIME)
    tampered = verify_bundle(broken)
    assert tampered.signature_status.state is SignatureState.INVALID
    only(check(policy, tampered), "has an invalid signature", "does not verify",
         "only validly signed bundles")


def test_key_not_in_the_policy_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    stranger = load_private_key(keys["stranger"]).public_key
    problem = only(check(policy, make(tmp_path, keys["stranger"])),
                   f"is signed by ssh-ed25519 key {stranger.fingerprint}",
                   "which is not in the trust policy")
    assert "stranger@example.org" not in problem.what  # a key's comment is not evidence
    assert stranger.openssh(with_comment=False) in problem.hint
    assert f"sandrun trust add KEY.pub --apps demo --policy {policy.path}" in problem.hint
    assert "demo may be signed by: 'release-team'" in problem.hint


def test_key_not_allowed_for_the_app_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    ops = load_private_key(keys["ops"]).public_key
    problem = only(check(policy, make(tmp_path, keys["ops"])),
                   f"is signed by 'ops' ({ops.fingerprint})",
                   "may sign only apps matching 'tool?', '[ab]pp', not 'demo'",
                   f"(rule {policy.path}:9: signer[2].apps)")
    assert "add \"demo\" to its apps" in problem.hint
    # Globs match whole names, case-sensitively.
    for app in ("tool", "tool12", "cpp", "webapi"):
        assert check(policy, make(tmp_path, keys["ops"], app=app)), app
    only(check(policy, make(tmp_path, keys["release"], app="webapi")), "not 'webapi'")


@pytest.mark.parametrize(("version", "refused"), [
    ("1.9", True), ("2.0rc1", True), ("2.0.dev3", True), ("1.10", True),
    ("2.0", False), ("2", False), ("2.0.post1", False), ("2.0.1", False), ("10.0", False),
])
def test_min_version_is_a_pep440_comparison(tmp_path: Path, keys: dict[str, Path],
                                            version: str, refused: bool) -> None:
    policy = standard_policy(tmp_path, keys)
    problems = check(policy, make(tmp_path, keys["release"], app="web-api", version=version))
    if refused:
        problem = only(problems, f"web-api {version} is older than the minimum version 2.0 set "
                                 f"by {policy.path}:13: min_version.web-api (rollback "
                                 "protection)")
        assert "deploy web-api 2.0 or later" in problem.hint
    else:
        assert problems == []


def test_min_version_with_an_unparsable_app_version(tmp_path: Path,
                                                    keys: dict[str, Path]) -> None:
    # The manifest itself refuses a version that is not PEP 440 ...
    files = default_files()
    nightly = dataclasses.replace(make_manifest(files), app_version="nightly")
    result = verify_bundle(write(tmp_path, bundle_bytes(files, manifest=nightly), "n.pyz"))
    assert [(p.where, "not a PEP 440 version" in p.what) for p in result.problems] == [
        (f"{MANIFEST_NAME}: app.version", True)]
    # ... and the policy still refuses one it is handed (defence in depth).
    policy = standard_policy(tmp_path, keys)
    signed = make(tmp_path, keys["release"])
    assert signed.manifest is not None
    problems = check_trust(policy, dataclasses.replace(signed.manifest, app_version="nightly"),
                           signed.signature_status, "app.pyz")
    assert any("demo version 'nightly' is not a PEP 440 version" in p.what
               and "minimum 1.0" in p.what for p in problems), problems
    # Apps without a floor are not compared at all.
    web_x = make(tmp_path, keys["release"], app="web-x")
    assert web_x.manifest is not None
    problems = check_trust(policy, dataclasses.replace(web_x.manifest, app_version="nightly"),
                           web_x.signature_status, "app.pyz")
    assert not any("PEP 440" in p.what for p in problems), problems


def test_every_failing_rule_is_reported(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    unsigned_old = check(policy, make(tmp_path, None, app="web-api", version="1.0"))
    assert [p.what.split(",")[0] for p in unsigned_old] == [
        "is not signed", "web-api 1.0 is older than the minimum version 2.0 set by "
        f"{policy.path}:13: min_version.web-api (rollback protection)"]
    stranger_old = check(policy, make(tmp_path, keys["stranger"], app="web-api", version="1.5"))
    assert len(stranger_old) == 2
    assert "not in the trust policy" in stranger_old[0].what
    assert "older than the minimum" in stranger_old[1].what

    result = make(tmp_path, None, app="web-api", version="1.0")
    with pytest.raises(TrustError) as info:
        require_trust(policy, result.manifest, result.signature_status,  # type: ignore[arg-type]
                      "web.pyz")
    assert info.value.exit_code == EXIT_REFUSED
    assert info.value.message == f"web.pyz is not trusted by {policy.path} (2 rules failed)"
    assert list(info.value.problems) == check(policy, result, "web.pyz")


def test_signature_checked_against_another_manifest(tmp_path: Path,
                                                    keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    signed = make(tmp_path, keys["release"])
    other = make(tmp_path, None, version="1.1")
    assert other.manifest is not None
    problems = check_trust(policy, other.manifest, signed.signature_status, "app.pyz")
    only(problems, "is for another manifest")


# ---------------------------------------------------------------- the key attack


def forge(bundle: Path, out: Path, *, keep_signature: bool) -> Path:
    """Change CORE and rewrite the manifest to match, as an attacker without the key can:
    the result passes every content check; only the signature can give it away."""
    archive = open_archive(bundle)
    files = {e.name: (archive.read(e), e.mode & 0o7777) for e in archive.entries}
    evil = b"import os\nos.system('id')\n"
    files[CORE] = (evil, 0o644)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    entries = dict(manifest.entries)
    entries[CORE] = EntryRecord(hashlib.sha256(evil).hexdigest(), len(evil), 0o644)
    files[MANIFEST_NAME] = (dataclasses.replace(manifest, entries=entries).to_bytes(), 0o644)
    signature = files.pop(SIGNATURE_NAME)
    ordered = [(n, c, m) for n, (c, m) in files.items()]
    if keep_signature:
        ordered.append((SIGNATURE_NAME, *signature))
    with out.open("wb") as handle:
        write_archive(handle, archive.preamble, ordered, date_time=DATE_TIME)
    return out


def test_consistent_rewrite_with_the_signature_kept_fails_verification(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    genuine = make(tmp_path, keys["release"], label="genuine.pyz")
    result = verify_bundle(forge(tmp_path / "genuine.pyz", tmp_path / "forged.pyz",
                                 keep_signature=True))
    # Every entry matches the (rewritten) manifest: only the signature catches it.
    assert [p.where for p in result.problems] == [SIGNATURE_NAME]
    assert "does not verify" in result.problems[0].what
    assert "the bundle changed after signing" in result.problems[0].what
    assert genuine.signature is not None and result.manifest is not None
    assert genuine.signature.manifest_sha256 != result.manifest.digest()
    assert result.manifest.digest() in result.problems[0].what
    assert result.signature is None
    only(check(policy, result), "has an invalid signature")


def test_consistent_rewrite_with_the_signature_dropped_is_refused_as_unsigned(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    make(tmp_path, keys["release"], label="genuine.pyz")
    result = verify_bundle(forge(tmp_path / "genuine.pyz", tmp_path / "forged.pyz",
                                 keep_signature=False))
    assert result.ok  # intact as far as integrity goes: unsigned is a policy matter
    assert result.signature_status.state is SignatureState.UNSIGNED
    only(check(policy, result), "is not signed")


def test_consistent_rewrite_resigned_with_the_attackers_key_is_refused(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys)
    make(tmp_path, keys["release"], label="genuine.pyz")
    forged = forge(tmp_path / "genuine.pyz", tmp_path / "forged.pyz", keep_signature=False)
    sign_bundle(forged, keys["stranger"])
    result = verify_bundle(forged)
    assert result.ok and result.signature is not None
    only(check(policy, result), "which is not in the trust policy")


# ---------------------------------------------------------------- allowed_signers semantics

Y2025 = 1735689600  # 2025-01-01T00:00:00Z
Y2026 = 1767225600  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("text", "epoch"), [
    ("20250101Z", Y2025), ("20250101z", Y2025), ("202501010000Z", Y2025),
    ("20250101000000Z", Y2025), ("20251231235959Z", Y2026 - 1), ("20240229Z", 1709164800),
])
def test_parse_ssh_time_utc(text: str, epoch: int) -> None:
    assert parse_ssh_time(text) == epoch


def test_parse_ssh_time_without_z_is_local_standard_time(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import time

    monkeypatch.setenv("TZ", "EST+5")  # no DST rules: local = UTC-5 all year
    time.tzset()
    try:
        assert parse_ssh_time("20250101") == Y2025 + 5 * 3600
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("text", ["2025010", "2025-01-01", "20250101T0000Z", "20250230Z",
                                  "20251301Z", "202501011Z", "20250101ZZ", "19690101Z", ""])
def test_parse_ssh_time_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ssh_time(text)


def test_ssh_pattern_lists() -> None:
    assert ssh_pattern_list_matches("sandrun", ["sandrun"])
    assert ssh_pattern_list_matches("sandrun", ["git", "sand*"])
    assert ssh_pattern_list_matches("sandrun", ["s?ndrun"])
    assert not ssh_pattern_list_matches("sandrun", ["*", "!sandrun"])
    assert not ssh_pattern_list_matches("sandrun", ["!git"])  # a negation alone allows nothing
    assert not ssh_pattern_list_matches("sandrun", ["Sandrun"])  # case-sensitive, as ssh's


def window_policy(tmp_path: Path, keys: dict[str, Path], options: str) -> TrustPolicy:
    return load_trust_policy(write_policy(tmp_path, f'''\
[[signer]]
name = "release-team"
public_key = "{pub(keys["release"])}"
apps = ["demo"]
{options}
''', "window.toml"))


def test_validity_window_is_checked_at_the_time_of_use(tmp_path: Path,
                                                        keys: dict[str, Path]) -> None:
    policy = window_policy(tmp_path, keys, 'valid_after = "20250101Z"\n'
                                           'valid_before = "20260101Z"')
    signer = policy.signers[0]
    assert (signer.valid_after and signer.valid_after.epoch,
            signer.valid_before and signer.valid_before.epoch) == (Y2025, Y2026)
    result = make(tmp_path, keys["release"])
    import time

    assert check(policy, result) == check_trust(  # without `now`: the real clock
        policy, result.manifest, result.signature_status, "app.pyz",  # type: ignore[arg-type]
        now=time.time())
    for inside in (Y2025, Y2025 + 1, Y2026 - 1, Y2026):  # both ends count, as in ssh-keygen
        assert check_trust(policy, result.manifest, result.signature_status,  # type: ignore
                           "app.pyz", now=inside) == [], inside
    early = check_trust(policy, result.manifest, result.signature_status,  # type: ignore
                        "app.pyz", now=Y2025 - 1)
    problem = only(early, "whose key is valid only from 20250101Z (2025-01-01 00:00:00 UTC) on",
                   f"(rule {policy.path}:5: signer[1].valid_after)",
                   "it is now 2024-12-31 23:59:59 UTC")
    assert "valid_after" in problem.hint
    late = check_trust(policy, result.manifest, result.signature_status,  # type: ignore
                       "app.pyz", now=Y2026 + 1)
    problem = only(late, "whose key expired at 20260101Z (2026-01-01 00:00:00 UTC)",
                   f"(rule {policy.path}:6: signer[1].valid_before)")
    assert "re-signed" in problem.hint
    assert trusted_until(policy, result.signature_status) == Y2026
    assert trusted_until(policy, make(tmp_path, None).signature_status) is None


def test_an_expired_key_for_the_wrong_app_reports_both(tmp_path: Path,
                                                       keys: dict[str, Path]) -> None:
    policy = window_policy(tmp_path, keys, 'valid_before = "20250101Z"')
    problems = check(policy, make(tmp_path, keys["release"], app="other"))
    assert [p.what.split(",")[1].strip().split(" ")[0] for p in problems] == ["which", "whose"]


def test_namespaces_are_patterns_that_must_allow_sandrun(tmp_path: Path,
                                                         keys: dict[str, Path]) -> None:
    policy = window_policy(tmp_path, keys, 'namespaces = ["git", "sand*"]')
    assert policy.signers[0].namespaces == ("git", "sand*")
    assert check(policy, make(tmp_path, keys["release"])) == []
    assert window_policy(tmp_path, keys, "").signers[0].namespaces == ("sandrun",)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(("glob", "principals"), [
    ("demo", ["demo"]), ("web-*", ["web-*"]), ("tool?", ["tool?"]), ("*", ["*"]),
    ("[ab]pp", ["app", "bpp"]), ("v[0-2]", ["v0", "v1", "v2"]),
    ("x[!a-z0-9]", ["x-", "x.", "x_"]), ("no!pe", []), ("[A-Z]x", []), ("lit[", []),
])
def test_glob_principals(glob: str, principals: list[str]) -> None:
    assert glob_principals(glob) == principals


def test_exported_principals_match_exactly_what_the_globs_match() -> None:
    names = ["demo", "web-api", "web-", "web", "tool1", "tool", "tool12", "app", "bpp", "cpp",
             "v0", "v3", "x-", "xa", "x_", "a.b", "a-b", "z" * 24]
    for glob in ("demo", "web-*", "tool?", "[ab]pp", "v[0-2]", "x[!a-z0-9]", "*", "a[.-]b",
                 "*[0-9]", "[!w]*"):
        patterns = glob_principals(glob)
        for name in names:
            assert ssh_pattern_list_matches(name, patterns) == app_glob_matches(glob, name), (
                glob, name)
    with pytest.raises(ValueError, match="more than 1024"):
        glob_principals("[a-z][a-z][a-z]")


def test_export_allowed_signers(tmp_path: Path, keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys, '''
[[signer]]
name = "windowed"
public_key_file = "keys/stranger.pub"
apps = ["web-*", "no!pe"]
namespaces = ["sandrun", "git"]
valid_after = "20250101"
valid_before = "20260101Z"
''')
    text = export_allowed_signers(policy)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    release, ops, stranger = (load_private_key(keys[n]).public_key.openssh(with_comment=False)
                              for n in ("release", "ops", "stranger"))
    assert lines == [
        f'demo,web-* namespaces="sandrun" {release}',
        f'tool?,app,bpp namespaces="sandrun" {ops}',
        f'web-* namespaces="sandrun,git",valid-after="20250101",valid-before="20260101Z" '
        f"{stranger}"]
    assert "min_version demo >= 1.0, web-api >= 2.0" in text
    assert f'# signer "ops" ({policy.path}:6: signer[2])' in text


# ---------------------------------------------------------------- trust add


def test_add_signer_creates_then_appends(tmp_path: Path, keys: dict[str, Path]) -> None:
    path = tmp_path / "etc" / "trust.toml"
    first = add_signer(path, keys["release"].with_name("release.pub"), ["demo", "web-*"],
                       valid_before="20990101Z")
    assert first.created and first.signer.name == "release@example.org"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.stat().st_uid == os.geteuid()
    assert path.read_text().startswith("# sandrun trust policy")
    with path.open("a") as out:  # an operator's edits survive the next add
        out.write("\n# keep me\n[min_version]\ndemo = \"1.0\"\n")
    os.chmod(path, 0o644)
    second = add_signer(path, keys["ops"].with_name("ops.pub"), ["tool?"], name="ops",
                        namespaces=["sandrun", "git"], valid_after="20240101")
    assert not second.created
    policy = load_trust_policy(path)
    assert [s.name for s in policy.signers] == ["release@example.org", "ops"]
    assert policy.signers[0].valid_before is not None
    assert policy.signers[1].namespaces == ("sandrun", "git")
    assert "# keep me" in path.read_text() and policy.min_versions["demo"].text == "1.0"
    assert check(policy, make(tmp_path, keys["release"])) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["trust.toml"]  # no temp left


def test_add_signer_refusals_write_nothing(tmp_path: Path, keys: dict[str, Path]) -> None:
    path = tmp_path / "trust.toml"
    release_pub = keys["release"].with_name("release.pub")
    add_signer(path, release_pub, ["demo"])
    before = path.read_bytes()

    def refused(*args: object, **kwargs: object) -> TrustError:
        with pytest.raises(TrustError) as info:
            add_signer(*args, **kwargs)  # type: ignore[arg-type]
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "trust.toml"]
        assert info.value.hint
        return info.value

    error = refused(path, release_pub, ["web-*"])
    assert "is already in" in error.message and "signer 'release@example.org'" in error.message
    error = refused(path, keys["ops"].with_name("ops.pub"), ["x"], name="release@example.org")
    assert "would be invalid" in error.message
    assert "name 'release@example.org' is already used" in str(error.problems[0])
    error = refused(path, keys["ops"].with_name("ops.pub"), ["Web-*"])
    assert "never matches: app names are lower case" in str(error.problems[0])
    error = refused(path, keys["ops"].with_name("ops.pub"), ["x"], valid_before="tomorrow")
    assert "'tomorrow' is not a valid time" in str(error.problems[0])
    error = refused(path, keys["ops"], ["x"])  # the private key
    assert "is not a public key" in error.message
    error = refused(path, tmp_path / "nope.pub", ["x"])
    assert "cannot read the public key" in error.message

    path.write_text(path.read_text() + "oops = 1\n")  # an invalid policy is not extended
    before = path.read_bytes()
    error = refused(path, keys["ops"].with_name("ops.pub"), ["x"])
    assert "is invalid" in error.message and "unknown key 'oops'" in str(error.problems[0])


def test_trust_cli_check_add_and_export(tmp_path: Path, keys: dict[str, Path]) -> None:
    import json

    missing = tmp_path / "missing.toml"
    proc = run_sandrun("trust", "check", str(missing))
    assert proc.returncode == EXIT_REFUSED and proc.stdout == ""
    assert f"trust policy {missing} does not exist" in proc.stderr
    assert "invalid" not in proc.stderr

    policy = tmp_path / "trust.toml"
    proc = run_sandrun("trust", "add", str(keys["release"]) + ".pub", "--apps", "demo,web-*",
                       "--apps", "api", "--valid-before", "20991231Z", "--policy", str(policy),
                       "--json")
    assert proc.returncode == 0, proc.stderr
    added = json.loads(proc.stdout)
    assert added["created"] is True and added["added"]["apps"] == ["demo", "web-*", "api"]
    assert added["added"]["valid_before"] == "20991231Z"
    proc = run_sandrun("trust", "add", str(keys["release"]) + ".pub", "--apps", "x",
                       "--policy", str(policy))
    assert proc.returncode == EXIT_REFUSED and "is already in" in proc.stderr

    proc = run_sandrun("trust", "check", "--json", str(policy))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and [s["name"] for s in doc["signers"]] == ["release@example.org"]
    quiet = run_sandrun("trust", "check", "-q", str(policy))
    assert (quiet.returncode, quiet.stdout) == (0, "")
    text = run_sandrun("trust", "check", str(policy)).stdout
    assert "valid before 20991231Z (2099-12-31 00:00:00 UTC)" in text

    exported = run_sandrun("trust", "export-allowed-signers", str(policy))
    assert exported.returncode == 0, exported.stderr
    assert 'demo,web-*,api namespaces="sandrun",valid-before="20991231Z" ssh-ed25519 ' in (
        exported.stdout)

    link = tmp_path / "link.toml"
    link.symlink_to(policy)
    proc = run_sandrun("trust", "add", str(keys["ops"]) + ".pub", "--apps", "x",
                       "--policy", str(link))
    assert proc.returncode == EXIT_REFUSED and "is a symlink" in proc.stderr


# ---------------------------------------------------------------- review of issue 16


@pytest.fixture()
def owned(require_root: None) -> Iterator[Path]:
    """A root-owned directory below none that others can write (/var/lib, not /tmp):
    there root's links are followed and nobody can reach in; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="sandrun-trust-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(body: Callable[[], object]) -> None:
    report = fork_and_report(body)
    assert report.exit_code == 0 and report.value is True, report


def test_links_on_the_way_follow_the_exec_rule(owned: Path, keys: dict[str, Path]) -> None:
    real = owned / "real"
    real.mkdir()
    shutil.copy(keys["release"].with_name("release.pub"), real / "release.pub")
    write_policy(real, f'[[signer]]\nname = "r"\npublic_key_file = "{real}/release.pub"\n'
                 'apps = ["*"]\n')
    (owned / "etc").symlink_to(real)  # root's links in root's directories are followed
    assert load_trust_policy(owned / "etc" / "trust.toml").signers[0].name == "r"
    (owned / "link.toml").symlink_to(real / "trust.toml")
    assert load_trust_policy(owned / "link.toml").signers[0].name == "r"
    (owned / "dangling.toml").symlink_to(owned / "gone.toml")
    error = policy_error(owned / "dangling.toml")
    assert "does not exist" in error.problems[0].what and "dangling" in error.problems[0].hint

    (owned / "nobodys.toml").symlink_to(real / "trust.toml")
    os.chown(owned / "nobodys.toml", NOBODY, NOBODY, follow_symlinks=False)
    assert (f"{owned}/nobodys.toml is a symbolic link owned by uid 65534: sandrun does not "
            "follow it") in policy_error(owned / "nobodys.toml").problems[0].what

    sticky = owned / "sticky"  # like /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "trust.toml").symlink_to(real / "trust.toml")  # root's, but below /tmp-like
    assert (f"{sticky}/trust.toml is a symbolic link below {sticky} (mode 1777), which "
            "others can write") in policy_error(sticky / "trust.toml").problems[0].what
    shutil.copy(real / "trust.toml", sticky / "plain.toml")  # a root file there is fine
    load_trust_policy(sticky / "plain.toml")

    (sticky / "release.pub").symlink_to(real / "release.pub")  # key files: the same rule
    bad = write_policy(real, f'[[signer]]\nname = "r"\npublic_key_file = "{sticky}/release.pub"'
                       '\napps = ["*"]\n', "bad.toml")
    error = policy_error(bad)
    assert error.problems[0].where == f"{bad}:3: signer[1].public_key_file"
    assert "is a symbolic link below" in error.problems[0].what


def test_a_directory_another_user_owns_cannot_redirect_the_policy(owned: Path,
                                                                   keys: dict[str, Path]
                                                                   ) -> None:
    """Checking only the file and its lexical parent let nobody, who owns a directory
    higher up, swap in another root-owned (permissive) policy by a rename and a link."""
    release = pub(keys["release"])
    user = owned / "user"
    (user / "sub").mkdir(parents=True)
    os.chown(user, NOBODY, NOBODY)
    write_policy(user / "sub", f'[[signer]]\nname = "r"\npublic_key = "{release}"\n'
                 'apps = ["nothing"]\n')
    (owned / "permissive").mkdir()
    write_policy(owned / "permissive", f'[[signer]]\nname = "r"\npublic_key = "{release}"\n'
                 'apps = ["*"]\n')
    path = user / "sub" / "trust.toml"  # root's file in root's directory, below nobody's
    assert (f"the directory {user} is owned by uid 65534, not by root"
            in policy_error(path).problems[0].what)

    def swap() -> bool:
        os.rename(user / "sub", user / "old")
        os.symlink(owned / "permissive", user / "sub")
        return True

    as_nobody(swap)
    assert load_trust_policy(owned / "permissive" / "trust.toml").signers[0].apps == ("*",)
    assert "is owned by uid 65534" in policy_error(path).problems[0].what


def test_trust_add_checks_everything_before_creating_anything(tmp_path: Path,
                                                              keys: dict[str, Path]) -> None:
    release_pub = keys["release"].with_name("release.pub")
    target = tmp_path / "x" / "new" / "sub" / "trust.toml"
    proc = run_sandrun("trust", "add", str(release_pub), "--apps", "BAD!", "--policy",
                       str(target))
    assert proc.returncode == EXIT_REFUSED and "nothing was written" in proc.stderr
    assert not (tmp_path / "x").exists(), "a refused trust add created directories"
    for options in ({"valid_before": "tomorrow"}, {"name": "two\nlines"},
                    {"namespaces": ["git"]}):
        with pytest.raises(TrustError):
            add_signer(target, release_pub, ["demo"], **options)  # type: ignore[arg-type]
        assert not (tmp_path / "x").exists(), options

    added = add_signer(target, release_pub, ["demo"])
    assert added.created and load_trust_policy(target).signers[0].apps == ("demo",)
    for directory in (tmp_path / "x", tmp_path / "x" / "new", target.parent):
        info = directory.stat()
        assert info.st_uid == os.geteuid() and not info.st_mode & 0o022, directory
    assert sorted(p.name for p in target.parent.iterdir()) == ["trust.toml"]


def test_trust_add_refuses_a_policy_exec_would_refuse(owned: Path,
                                                      keys: dict[str, Path]) -> None:
    release_pub = keys["release"].with_name("release.pub")
    user = owned / "user"
    user.mkdir()
    os.chown(user, NOBODY, NOBODY)
    with pytest.raises(TrustError) as info:
        add_signer(user / "etc" / "trust.toml", release_pub, ["demo"])
    assert f"the directory {user} is owned by uid 65534" in info.value.message
    assert "nothing was written" in info.value.hint
    assert list(user.iterdir()) == []
    with pytest.raises(TrustError) as info:  # the policy's own directory is checked too
        add_signer(user / "trust.toml", release_pub, ["demo"])
    assert f"the directory {user} is owned by uid 65534" in info.value.message
    assert list(user.iterdir()) == []
    group = owned / "group"
    group.mkdir()
    group.chmod(0o775)
    with pytest.raises(TrustError, match=r"writable by group or others \(mode 0775\)"):
        add_signer(group / "trust.toml", release_pub, ["demo"])
    assert list(group.iterdir()) == []

    real = owned / "real"
    real.mkdir()
    sticky = owned / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    as_nobody(lambda: os.symlink(real, sticky / "etc") is None)  # planted by nobody
    with pytest.raises(TrustError) as info:
        add_signer(sticky / "etc" / "trust.toml", release_pub, ["demo"])
    assert f"{sticky}/etc is a symbolic link below {sticky}" in info.value.message
    assert list(real.iterdir()) == []


@pytest.mark.parametrize(("given", "zone", "written"), [
    ("20250101", "EST+5", "202501010500Z"),
    ("20250101123456", "EST+5", "20250101173456Z"),
    ("202501012300", "EST+5", "202501020400Z"),
    ("20250101", "UTC0", "20250101Z"),
    ("20250101Z", "EST+5", "20250101Z"),
    ("20250101z", "EST+5", "20250101Z"),
])
def test_utc_ssh_time(given: str, zone: str, written: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert utc_ssh_time(given) == written
        assert parse_ssh_time(written) == parse_ssh_time(given)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_trust_add_writes_utc_and_check_warns_about_local_times(
        tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    path = tmp_path / "trust.toml"
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        added = add_signer(path, keys["release"].with_name("release.pub"), ["demo"],
                           valid_after="20250101", valid_before="20990101z")
        instant = parse_ssh_time("20250101")
    finally:
        monkeypatch.undo()
        time.tzset()
    text = path.read_text()
    assert 'valid_after = "202501010500Z"' in text and 'valid_before = "20990101Z"' in text
    assert added.notes == ("--valid-after 20250101 is local time (EST): written as "
                           "202501010500Z (UTC), which every process and ssh-keygen read "
                           "alike",)
    signer = load_trust_policy(path).signers[0]  # this process's TZ: the same instant
    assert signer.valid_after is not None and signer.valid_after.epoch == instant
    proc = run_sandrun("trust", "check", str(path))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr

    cli = tmp_path / "cli.toml"
    proc = run_sandrun("trust", "add", str(keys["ops"]) + ".pub", "--apps", "x", "--policy",
                       str(cli), "--valid-before", "20990101", env={"TZ": "EST+5"})
    assert proc.returncode == 0, proc.stderr
    assert "note: --valid-before 20990101 is local time (EST): written as 209901010500Z" in (
        proc.stdout)
    assert 'valid_before = "209901010500Z"' in cli.read_text()

    local = write_policy(tmp_path, f'[[signer]]\nname = "r"\npublic_key = '
                         f'"{pub(keys["release"])}"\napps = ["*"]\nvalid_before = "20990101"\n',
                         "local.toml")
    proc = run_sandrun("trust", "check", str(local), env={"TZ": "EST+5"})
    assert proc.returncode == 0, proc.stderr
    assert (f"sandrun: warning: {local}:5: signer[1].valid_before: valid_before '20990101' "
            "has no Z: it is local time") in proc.stderr
    assert 'write it in UTC: valid_before = "209901010500Z"' in proc.stderr
    proc = run_sandrun("trust", "check", "--json", "-q", str(local))
    assert (proc.returncode, proc.stdout) == (0, "") and "has no Z" in proc.stderr
    doc = json.loads(run_sandrun("trust", "check", "--json", str(local)).stdout)
    assert [w["where"] for w in doc["warnings"]] == [f"{local}:5: signer[1].valid_before"]


def test_trust_add_writes_any_comment_as_toml(tmp_path: Path) -> None:
    """json.dumps wrote non-BMP characters as surrogate pairs, which TOML refuses."""
    comment = 'rel 😀 "quoted" back\\slash é'
    key, public = generate_key(tmp_path / "k", comment)
    path = tmp_path / "trust.toml"
    added = add_signer(path, public, ["demo"])
    assert added.signer.name == comment
    assert "😀" in path.read_text()
    policy = load_trust_policy(path)
    assert policy.signers[0].name == comment
    assert policy.signers[0].public_key == load_private_key(key).public_key


def test_small_order_keys_are_refused_in_policies(tmp_path: Path) -> None:
    identity = "ssh-ed25519 " + base64.b64encode(
        b"\0\0\0\x0bssh-ed25519\0\0\0\x20\x01" + bytes(31)).decode()
    (tmp_path / "identity.pub").write_text(identity + " forger\n")
    with pytest.raises(TrustError) as info:
        add_signer(tmp_path / "trust.toml", tmp_path / "identity.pub", ["*"])
    assert "not a usable public key" in info.value.message and "small order" in (
        info.value.message)
    assert not (tmp_path / "trust.toml").exists()
    path = write_policy(tmp_path, f'[[signer]]\nname = "f"\npublic_key = "{identity}"\n'
                        'apps = ["*"]\n')
    error = policy_error(path)
    assert error.problems[0].where == f"{path}:3: signer[1].public_key"
    assert "is a point of small order" in error.problems[0].what


def test_export_is_never_written_through_a_link(owned: Path, tmp_path: Path,
                                                keys: dict[str, Path]) -> None:
    policy = standard_policy(tmp_path, keys).path
    expected = run_sandrun("trust", "export-allowed-signers", str(policy)).stdout
    out = owned / "allowed_signers"
    assert run_sandrun("trust", "export-allowed-signers", str(policy), "-o", str(out)
                       ).returncode == 0
    assert out.read_text() == expected and stat.S_IMODE(out.stat().st_mode) == 0o644
    out.write_text("edited by hand\n")
    proc = run_sandrun("trust", "export-allowed-signers", str(policy), "-o", str(out))
    assert proc.returncode == EXIT_REFUSED and "already exists" in proc.stderr
    assert "--force" in proc.stderr and out.read_text() == "edited by hand\n"
    proc = run_sandrun("trust", "export-allowed-signers", str(policy), "-o", str(out),
                       "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == expected

    victim = owned / "victim"
    victim.write_text("precious\n")
    sticky = owned / "sticky"  # like /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)
    (owned / "real").mkdir()

    def plant() -> bool:
        os.symlink(victim, sticky / "out")
        os.symlink(owned / "real", sticky / "dir")
        return True

    as_nobody(plant)
    for given, words in ((sticky / "out", "is a symbolic link: sandrun does not write "
                          "through it"),
                         (sticky / "dir" / "out", f"{sticky}/dir is a symbolic link below")):
        for force in ((), ("--force",)):
            proc = run_sandrun("trust", "export-allowed-signers", str(policy), "-o",
                               str(given), *force)
            assert proc.returncode == EXIT_REFUSED and words in proc.stderr, proc.stderr
    assert victim.read_text() == "precious\n" and list((owned / "real").iterdir()) == []


def test_the_provenance_table_is_validated_by_provenance(tmp_path: Path,
                                                         keys: dict[str, Path]) -> None:
    signer = f'[[signer]]\nname = "r"\npublic_key = "{pub(keys["release"])}"\napps = ["*"]\n'
    table = ('[provenance]\nrequire = ["six"]\n[provenance.publishers]\n'
             'six = { kind = "GitHub", repository = "benjaminp/six", workflow = "r.yml" }\n')
    good = write_policy(tmp_path, signer + table)
    assert load_trust_policy(good).signers[0].name == "r"
    bad = write_policy(tmp_path, signer + table.replace("[provenance]\n",
                                                        "[provenance]\nbogus = 1\n"),
                       "bad.toml")
    assert [p.where for p in policy_error(bad).problems] == [f"{bad}: provenance.bogus"]
