"""Trust policy: invalid files (table-driven), every refusal rule, and the key attack.

Every tests/trust/invalid/NAME.toml must fail to load, and the error must contain each
line of its sibling NAME.expect (as tests/profiles/invalid does for profiles). Bundles
are real: built with tests/bundlecraft.py and signed with freshly generated keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from bundlecraft import CORE, DATE_TIME, bundle_bytes, default_files, make_manifest, write
from helpers import TESTS

from sandrun.bundle.archive import open_archive, write_archive
from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, EntryRecord
from sandrun.bundle.signature import SignatureState
from sandrun.bundle.verify import VerifyResult, verify_bundle
from sandrun.errors import EXIT_REFUSED, Problem, TrustError
from sandrun.supply.signing import generate_key, load_private_key, sign_bundle
from sandrun.supply.trust import (
    DEFAULT_TRUST_PATH,
    TrustPolicy,
    check_trust,
    find_trust_policy,
    load_trust_policy,
    require_trust,
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
        sign_bundle(path, key, signed_at=SIGNED_AT)
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
    error = policy_error(tmp_path / "missing.toml")
    assert "does not exist" in error.problems[0].what
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
    # A copy of the same bundle whose signer field was edited after signing.
    archive = result.archive
    files = [(e.name, archive.read(e), e.mode & 0o7777) for e in archive.entries]
    name, content, mode = files[-1]
    assert name == SIGNATURE_NAME
    files[-1] = (name, content.replace(b'"signer":"release', b'"signer":"Release'), mode)
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
                   f"is signed by key {stranger.fingerprint}",
                   "(it calls itself 'stranger@example.org')", "which is not in the trust policy")
    assert stranger.openssh(with_comment=False) in problem.hint
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
    assert "copied from another bundle, or the bundle changed after signing" in (
        result.problems[0].what)
    assert genuine.signature is not None
    assert genuine.signature.manifest_sha256 in result.problems[0].what
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
