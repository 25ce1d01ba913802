"""Bundle signatures are SSHSIG: interoperability with the real OpenSSH tools, both ways.

- sandrun signs (key file, ssh-agent) -> `ssh-keygen -Y verify` accepts, with the
  allowed_signers file `sandrun trust export-allowed-signers` writes;
- `ssh-keygen -Y sign -n sandrun` signs the message `sandrun inspect --sshsig` writes ->
  `sandrun sign --sshsig` attaches it -> `verify` and `exec` accept it;
- a security key (sk-ssh-ed25519) signature, made as the hardware would (PROTOCOL.u2f),
  is accepted by both; without the user's touch only ssh-keygen accepts it;
- tampered messages, wrong namespaces, expired or not yet valid keys, principal
  mismatches, garbage and truncated armor are refused by verify and by exec (125,
  nothing created), and policy decisions agree with ssh-keygen's at the same instants.

Needs OpenSSH's client tools (Debian: openssh-client): ssh-keygen, ssh-agent, ssh-add.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundlecraft import make_bundle
from helpers import run_sandrun, user_exists, users_removed_after
from wheelcraft import make_wheel

from sandrun.bundle.archive import open_archive, write_archive
from sandrun.bundle.manifest import SIGNATURE_NAME
from sandrun.bundle.signature import (
    ED25519,
    SK_ED25519,
    PublicKey,
    SignatureState,
    SshSignature,
    signed_data,
    signed_message,
)
from sandrun.bundle.verify import verify_bundle
from sandrun.supply.trust import check_trust

SSH_KEYGEN = shutil.which("ssh-keygen")
SSH_AGENT = shutil.which("ssh-agent")
SSH_ADD = shutil.which("ssh-add")
APP = "sshsigapp"
USER = f"sandrun-{APP}"
APP_CODE = '''\
import os

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    print("signed app ran"); return 0
'''


@pytest.fixture(scope="module", autouse=True)
def openssh() -> None:
    assert SSH_KEYGEN and SSH_AGENT and SSH_ADD, (
        "OpenSSH's client tools are needed (Debian: apt-get install openssh-client)")


def ssh_keygen(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[bytes]:
    assert SSH_KEYGEN
    return subprocess.run([SSH_KEYGEN, *args], input=stdin, capture_output=True, check=False,
                          timeout=60, env=env,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def sandrun(*args: str, env: dict[str, str | None] | None = None
            ) -> subprocess.CompletedProcess[str]:
    proc = run_sandrun(*args, env=env)
    return proc


def ok(*args: str, env: dict[str, str | None] | None = None) -> str:
    proc = sandrun(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def keygen(directory: Path, name: str) -> Path:
    ok("keygen", "-q", "-o", str(directory / name), "--identity", f"{name}@example.org")
    return directory / name


def ssh_verify(allowed: Path, principal: str, sig: Path, message: Path,
               *options: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[bytes]:
    return ssh_keygen("-Y", "verify", "-f", str(allowed), "-I", principal, "-n", "sandrun",
                      "-s", str(sig), *options, stdin=message.read_bytes(), env=env)


def policy_for(directory: Path, key: Path, apps: str, *extra: str, name: str = "trust.toml"
               ) -> Path:
    path = directory / name
    path.unlink(missing_ok=True)
    ok("trust", "add", "-q", f"{key}.pub", "--apps", apps, "--policy", str(path), *extra)
    return path


def allowed_signers(policy: Path) -> Path:
    out = policy.with_suffix(".allowed_signers")
    ok("trust", "export-allowed-signers", str(policy), "-o", str(out))
    return out


def replace_signature(bundle: Path, out: Path, content: bytes | None) -> Path:
    """`bundle` with its signature entry replaced by `content` (None: removed), rewritten
    as an attacker would, with the archive writer."""
    archive = open_archive(bundle)
    files = [(e.name, archive.read(e), e.mode & 0o7777) for e in archive.entries
             if e.name != SIGNATURE_NAME]
    if content is not None:
        files.append((SIGNATURE_NAME, content, 0o644))
    out.unlink(missing_ok=True)
    with out.open("wb") as handle:
        write_archive(handle, archive.preamble, files, date_time=(2020, 1, 1, 0, 0, 0))
    return out


# ---------------------------------------------------------------- sandrun -> ssh-keygen


def test_sandrun_signatures_verify_with_ssh_keygen(tmp_path: Path) -> None:
    key = keygen(tmp_path, "release")
    bundle = make_bundle(tmp_path)
    ok("sign", "-q", "-k", str(key), str(bundle))
    out = ok("inspect", "--sshsig", str(tmp_path / "sig"), str(bundle))
    message, sig = tmp_path / "sig" / "message", tmp_path / "sig" / "message.sig"
    assert f"{sig}  signed by ssh-ed25519 key" in out
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    assert message.read_bytes() == signed_message(manifest)
    assert sig.read_bytes() == dict((e.name, open_archive(bundle).read(e))
                                    for e in open_archive(bundle).entries)[SIGNATURE_NAME]

    allowed = allowed_signers(policy_for(tmp_path, key, "demo,web-*"))
    proc = ssh_verify(allowed, "demo", sig, message)
    assert proc.returncode == 0, proc.stderr
    assert b'Good "sandrun" signature for demo with ED25519 key' in proc.stdout
    # ssh-keygen, too, refuses another principal, namespace or message.
    assert ssh_verify(allowed, "other", sig, message).returncode != 0
    wrong_ns = ssh_keygen("-Y", "verify", "-f", str(allowed), "-I", "demo", "-n", "git",
                          "-s", str(sig), stdin=message.read_bytes())
    assert wrong_ns.returncode != 0
    tampered = tmp_path / "tampered"
    tampered.write_bytes(message.read_bytes().replace(b"version: 1.0", b"version: 9.0"))
    assert ssh_verify(allowed, "demo", sig, tampered).returncode != 0


def test_inspect_sshsig_json_and_unsigned_bundles(tmp_path: Path) -> None:
    import json

    bundle = make_bundle(tmp_path)
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "message.sig").write_text("stale\n")
    doc = json.loads(ok("inspect", "--json", "--sshsig", str(directory), str(bundle)))
    assert doc["signature"] is None and doc["removed_stale_signature"] is True
    assert doc["signature_state"] == "unsigned"
    assert sorted(p.name for p in directory.iterdir()) == ["message"]
    assert ok("inspect", "-q", "--sshsig", str(directory), str(bundle)) == ""


# ---------------------------------------------------------------- ssh-keygen -> sandrun


def test_ssh_keygen_signatures_are_attached_and_accepted(tmp_path: Path) -> None:
    key = keygen(tmp_path, "release")
    bundle = make_bundle(tmp_path, "app.pyz")
    out = ok("inspect", "--sshsig", str(tmp_path / "d"), str(bundle))
    assert "unsigned; sign: ssh-keygen -Y sign -n sandrun" in out
    message = tmp_path / "d" / "message"
    made = ssh_keygen("-Y", "sign", "-n", "sandrun", "-f", str(key), str(message))
    assert made.returncode == 0, made.stderr
    sig = tmp_path / "d" / "message.sig"
    attached = ok("sign", "--sshsig", str(sig), str(bundle))
    assert f"attached {sig}" in attached
    result = verify_bundle(bundle)
    assert result.ok and result.signature_status.state is SignatureState.VALID
    assert "trusted by" in ok("verify", str(bundle), "--trust",
                               str(policy_for(tmp_path, key, "demo")))
    # Ed25519 is deterministic: ssh-keygen's signature is byte for byte sandrun's own.
    ours = make_bundle(tmp_path, "ours.pyz")
    ok("sign", "-q", "-k", str(key), str(ours))
    assert ours.read_bytes() == bundle.read_bytes()


def test_attach_refuses_what_does_not_sign_this_bundle(tmp_path: Path) -> None:
    key = keygen(tmp_path, "release")
    bundle = make_bundle(tmp_path, "app.pyz")
    ok("inspect", "-q", "--sshsig", str(tmp_path / "d"), str(bundle))
    message = tmp_path / "d" / "message"
    before = bundle.read_bytes()

    def refused(sig: Path, *words: str) -> None:
        proc = sandrun("sign", "--sshsig", str(sig), str(bundle))
        assert proc.returncode == 125, proc.stderr
        for word in words:
            assert word in proc.stderr, proc.stderr
        assert bundle.read_bytes() == before  # nothing was written

    tampered = tmp_path / "tampered"
    tampered.write_bytes(message.read_bytes().replace(b"version: 1.0", b"version: 9.0"))
    assert ssh_keygen("-Y", "sign", "-n", "sandrun", "-f", str(key), str(tampered)
                      ).returncode == 0
    refused(tmp_path / "tampered.sig", "is not a signature of", "does not verify",
            "sandrun inspect --sshsig DIR")
    git = tmp_path / "git"
    git.write_bytes(message.read_bytes())
    assert ssh_keygen("-Y", "sign", "-n", "git", "-f", str(key), str(git)).returncode == 0
    refused(tmp_path / "git.sig", "made for namespace 'git', not 'sandrun'")
    good = ssh_keygen("-Y", "sign", "-n", "sandrun", "-f", str(key), str(message))
    assert good.returncode == 0
    text = (tmp_path / "d" / "message.sig").read_bytes()
    (tmp_path / "trunc.sig").write_bytes(b"\n".join(text.split(b"\n")[:3]) + b"\n")
    refused(tmp_path / "trunc.sig", "last line is not", "truncated")
    (tmp_path / "garbage.sig").write_bytes(b"-----BEGIN SSH SIGNATURE-----\nAAAA\n"
                                           b"-----END SSH SIGNATURE-----\n")
    refused(tmp_path / "garbage.sig", "not a valid SSH signature")
    refused(tmp_path / "missing.sig", "cannot open signature")
    proc = sandrun("sign", "--sshsig", str(tmp_path / "d" / "message.sig"), "-k", str(key),
                   str(bundle))
    assert proc.returncode == 2 and "takes no -k" in proc.stderr


def test_passphrase_protected_key_and_quiet_sign(tmp_path: Path) -> None:
    made = ssh_keygen("-q", "-t", "ed25519", "-N", "s3cret", "-C", "ci@example.org",
                      "-f", str(tmp_path / "enc"))
    assert made.returncode == 0, made.stderr
    bundle = make_bundle(tmp_path)
    proc = sandrun("sign", "-q", "-k", str(tmp_path / "enc"), str(bundle),
                   env={"SANDRUN_KEY_PASSPHRASE": "s3cret"})
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert verify_bundle(bundle).signature is not None


def test_keygen_and_sign_json(tmp_path: Path) -> None:
    import json

    made = json.loads(ok("keygen", "--json", "-o", str(tmp_path / "k")))
    assert made["public_key_file"] == f"{tmp_path / 'k'}.pub"
    listed = ssh_keygen("-l", "-f", made["public_key_file"]).stdout.split()[1].decode()
    assert made["fingerprint"] == listed
    bundle = make_bundle(tmp_path)
    signed = json.loads(ok("sign", "--json", "-k", str(tmp_path / "k"), str(bundle)))
    assert signed["signature"]["fingerprint"] == listed
    assert signed["signature"]["namespace"] == "sandrun"
    assert ok("keygen", "-q", "-o", str(tmp_path / "k2")) == ""
    proc = sandrun("sign", str(bundle))
    assert proc.returncode == 2 and "-k KEY" in proc.stderr and "--sshsig FILE" in proc.stderr


def test_sign_with_a_public_key_says_so_first(tmp_path: Path) -> None:
    key = keygen(tmp_path, "release")
    os.chmod(f"{key}.pub", 0o644)
    proc = sandrun("sign", "-k", f"{key}.pub", str(make_bundle(tmp_path)))
    assert proc.returncode == 125
    assert f"{key}.pub is a public key, not a private one" in proc.stderr
    assert "accessible by group or others" not in proc.stderr


# ---------------------------------------------------------------- ssh-agent


@pytest.fixture()
def agent() -> Iterator[str]:
    """A real ssh-agent on a private socket, killed afterwards."""
    assert SSH_AGENT
    directory = tempfile.mkdtemp(prefix="sandrun-agent-", dir="/tmp")
    sock = os.path.join(directory, "agent.sock")
    proc = subprocess.Popen([SSH_AGENT, "-D", "-a", sock], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.path.exists(sock), "ssh-agent did not create its socket"
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def ssh_add(sock: str, key: Path) -> None:
    assert SSH_ADD
    proc = subprocess.run([SSH_ADD, "-q", str(key)], capture_output=True, text=True,
                          check=False, timeout=30, stdin=subprocess.DEVNULL,
                          env={**os.environ, "SSH_AUTH_SOCK": sock})
    assert proc.returncode == 0, proc.stderr


def test_sign_with_ssh_agent(tmp_path: Path, agent: str) -> None:
    env: dict[str, str | None] = {"SSH_AUTH_SOCK": agent}
    first, second = keygen(tmp_path, "first"), keygen(tmp_path, "second")
    bundle = make_bundle(tmp_path, "app.pyz")
    proc = sandrun("sign", "--agent", str(bundle), env=env)
    assert proc.returncode == 125 and "holds no Ed25519 key" in proc.stderr
    ssh_add(agent, first)
    assert "(signed by ssh-agent)" in ok("sign", "--agent", str(bundle), env=env)
    by_file = make_bundle(tmp_path, "file.pyz")
    ok("sign", "-q", "-k", str(first), str(by_file))
    assert bundle.read_bytes() == by_file.read_bytes()  # the agent made the same signature

    ssh_add(agent, second)
    proc = sandrun("sign", "--agent", str(bundle), env=env)
    assert proc.returncode == 125 and "holds 2 Ed25519 keys; which one" in proc.stderr
    assert "-k KEY.pub" in proc.stderr
    for chosen in (f"{second}.pub", str(second)):  # the .pub, or the key beside it
        ok("sign", "-q", "--agent", "-k", chosen, str(bundle), env=env)
        info = verify_bundle(bundle).signature
        assert info is not None
        assert info.public_key.openssh(with_comment=False) in Path(f"{second}.pub").read_text()
    stranger = keygen(tmp_path, "stranger")
    proc = sandrun("sign", "--agent", "-k", f"{stranger}.pub", str(bundle), env=env)
    assert proc.returncode == 125 and "does not hold the key of" in proc.stderr
    proc = sandrun("sign", "--agent", str(bundle), env={"SSH_AUTH_SOCK": None})
    assert proc.returncode == 125 and "SSH_AUTH_SOCK is not set" in proc.stderr


# ---------------------------------------------------------------- security keys


def sk_signature(message: bytes, *, flags: int = 0x01, counter: int = 42
                 ) -> tuple[PublicKey, SshSignature]:
    """What `ssh-keygen -Y sign` with an sk-ssh-ed25519 key makes (PROTOCOL.u2f): the
    authenticator signs SHA256(application) | flags | counter | SHA256(data)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public = PublicKey(SK_ED25519, raw, "ssh:", "token")
    data = signed_data("sandrun", "sha512", message)
    signature = private.sign(hashlib.sha256(b"ssh:").digest() + bytes([flags])
                             + struct.pack(">I", counter) + hashlib.sha256(data).digest())
    return public, SshSignature(public, "sandrun", "sha512", signature, flags, counter)


def test_security_key_signatures(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    message = tmp_path / "message"
    message.write_bytes(signed_message(manifest))
    public, touched = sk_signature(message.read_bytes())
    (tmp_path / "sk.pub").write_text(public.openssh() + "\n")
    (tmp_path / "touched.sig").write_bytes(touched.armor())
    policy = policy_for(tmp_path, tmp_path / "sk", "demo")
    allowed = allowed_signers(policy)
    assert "sk-ssh-ed25519@openssh.com " in allowed.read_text()
    proc = ssh_verify(allowed, "demo", tmp_path / "touched.sig", message)
    assert proc.returncode == 0, proc.stderr
    assert b"ED25519-SK key" in proc.stdout

    out = ok("sign", "--sshsig", str(tmp_path / "touched.sig"), str(bundle))
    assert "(security key, touched, counter 42)" in out
    result = verify_bundle(bundle)
    assert result.ok and result.signature is not None
    assert result.signature.public_key == public
    assert "trusted by" in ok("verify", str(bundle), "--trust", str(policy))

    # Without the user-presence flag ssh-keygen -Y verify still says "Good"; sandrun
    # requires the touch, as sshd does by default.
    _, untouched = sk_signature(message.read_bytes(), flags=0)
    (tmp_path / "untouched.sig").write_bytes(untouched.armor())
    (tmp_path / "sk.pub").write_text(untouched.public_key.openssh() + "\n")
    allowed = allowed_signers(policy_for(tmp_path, tmp_path / "sk", "demo", name="u.toml"))
    assert ssh_verify(allowed, "demo", tmp_path / "untouched.sig", message).returncode == 0
    proc = sandrun("sign", "--sshsig", str(tmp_path / "untouched.sig"), str(bundle))
    assert proc.returncode == 125 and "without the user's touch" in proc.stderr


# ---------------------------------------------------------------- policy vs ssh-keygen


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle signed in-process, its DIR/message and DIR/message.sig: built once."""
    from sandrun.supply.signing import generate_key, sign_bundle, write_sshsig_files

    base = tmp_path_factory.mktemp("demo")
    key, _ = generate_key(base / "release", "release@example.org")
    bundle = make_bundle(base)
    sign_bundle(bundle, key)
    files = write_sshsig_files(bundle, base / "d")
    assert files.signature is not None
    return {"base": base, "key": key, "bundle": bundle, "message": files.message,
            "sig": files.signature}


@pytest.mark.parametrize(("apps", "options", "at", "trusted"), [
    (["demo"], {}, "20260101Z", True),
    (["web-*"], {}, "20260101Z", False),  # principal mismatch
    (["[a-d]emo"], {}, "20260101Z", True),  # a class, exported as its expansion
    (["[!d]emo"], {}, "20260101Z", False),
    (["demo"], {"valid_before": "20250101Z"}, "20250101000000Z", True),  # the end counts
    (["demo"], {"valid_before": "20250101Z"}, "20250101000001Z", False),  # expired
    (["demo"], {"valid_after": "20250101Z"}, "20241231235959Z", False),  # not yet valid
    (["demo"], {"valid_after": "20250101Z"}, "20250101000000Z", True),
    (["demo"], {"valid_after": "20250101"}, "20250101045959Z", False),  # local time: TZ
    (["demo"], {"valid_after": "20250101"}, "20250101050000Z", True),
    (["demo"], {"valid_after": "202501010600"}, "20250101105959Z", False),
    (["demo"], {"namespaces": ["git", "sand*"]}, "20260101Z", True),
])
def test_policy_decides_as_ssh_keygen_does(demo: dict[str, Path], tmp_path: Path,
                                           apps: list[str], options: dict[str, object],
                                           at: str, trusted: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sandrun.supply.trust import add_signer, export_allowed_signers, parse_ssh_time

    monkeypatch.setenv("TZ", "EST+5")  # for sandrun and ssh-keygen alike
    time.tzset()
    try:
        added = add_signer(tmp_path / "trust.toml", Path(f"{demo['key']}.pub"), apps,
                           **options)  # type: ignore[arg-type]
        result = verify_bundle(demo["bundle"])
        assert result.manifest is not None
        problems = check_trust(added.policy, result.manifest, result.signature_status,
                               "app.pyz", now=parse_ssh_time(at))
        assert (problems == []) is trusted, problems
        allowed = tmp_path / "allowed_signers"
        allowed.write_text(export_allowed_signers(added.policy))
        proc = ssh_verify(allowed, "demo", demo["sig"], demo["message"], f"-Overify-time={at}",
                          env={**os.environ, "TZ": "EST+5"})
        assert (proc.returncode == 0) is trusted, proc.stderr
    finally:
        monkeypatch.undo()
        time.tzset()


# ---------------------------------------------------------------- exec


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int, require_seccomp: None
        ) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-sshsig-", dir="/tmp"))
    base.chmod(0o755)
    with users_removed_after(USER):
        make_wheel(base / "wheels", APP, "1.0", {f"{APP}.py": APP_CODE})
        proc = run_sandrun("bundle", APP, "--no-index", "--find-links", str(base / "wheels"),
                           "-e", f"{APP}:main", "--name", APP, "-o", str(base / "unsigned.pyz"))
        assert proc.returncode == 0, proc.stderr
        key = keygen(base, "release")
        ok("inspect", "-q", "--sshsig", str(base / "d"), str(base / "unsigned.pyz"))
        message = base / "d" / "message"
        assert ssh_keygen("-Y", "sign", "-n", "sandrun", "-f", str(key), str(message)
                          ).returncode == 0
        shutil.copy(base / "unsigned.pyz", base / "signed.pyz")
        (base / "signed.pyz").chmod(0o644)
        ok("sign", "-q", "--sshsig", str(base / "d" / "message.sig"), str(base / "signed.pyz"))
        yield {"base": base, "key": key, "message": message, "signed": base / "signed.pyz"}
        shutil.rmtree(base, ignore_errors=True)


def exec_refused(lab: dict[str, Path], bundle: Path, policy: Path | None, *words: str) -> None:
    store = lab["base"] / f"store-{bundle.stem}"
    opts = ["--trust", str(policy)] if policy else []
    existed = user_exists(USER)
    proc = run_sandrun("exec", "--store", str(store), *opts, str(bundle))
    assert proc.returncode == 125, (proc.returncode, proc.stderr)
    assert "signed app ran" not in proc.stdout
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not store.exists(), "a refused exec created the store"
    assert user_exists(USER) == existed, "a refused exec created the app user"


def test_exec_refuses_bad_signatures(lab: dict[str, Path]) -> None:
    base, signed = lab["base"], lab["signed"]
    assert not user_exists(USER)  # runs before the accepting test: the user is not made yet
    entry = dict((e.name, open_archive(signed).read(e))
                 for e in open_archive(signed).entries)[SIGNATURE_NAME]
    key, message = lab["key"], lab["message"]

    tampered = base / "tampered"
    tampered.write_bytes(message.read_bytes().replace(b"version: 1.0", b"version: 1.1"))
    assert ssh_keygen("-Y", "sign", "-n", "sandrun", "-f", str(key), str(tampered)
                      ).returncode == 0
    git = base / "git"
    git.write_bytes(message.read_bytes())
    assert ssh_keygen("-Y", "sign", "-n", "git", "-f", str(key), str(git)).returncode == 0
    cases = {
        "tampered": ((base / "tampered.sig").read_bytes(), ("does not verify",)),
        "namespace": ((base / "git.sig").read_bytes(), ("made for namespace 'git'",)),
        "garbage": (b"garbage\n", ("is not an armored SSH signature",)),
        "truncated": (b"\n".join(entry.split(b"\n")[:2]) + b"\n", ("truncated",)),
        "old": (b'{"format":1,"signature":"AAAA"}\n', ("re-signed",)),
    }
    for name, (content, words) in cases.items():
        bundle = replace_signature(signed, base / f"{name}.pyz", content)
        assert not verify_bundle(bundle).ok
        exec_refused(lab, bundle, None, "failed verification", *words)


def test_exec_refuses_what_the_policy_refuses(lab: dict[str, Path]) -> None:
    base, signed, key = lab["base"], lab["signed"], lab["key"]
    expired = policy_for(base, key, APP, "--valid-before", "20200101Z", name="expired.toml")
    exec_refused(lab, signed, expired, "not trusted by", "whose key expired at 20200101Z")
    future = policy_for(base, key, APP, "--valid-after", "20990101Z", name="future.toml")
    exec_refused(lab, signed, future, "whose key is valid only from 20990101Z")
    other = policy_for(base, key, "web-*", name="other.toml")
    exec_refused(lab, signed, other, "may sign only apps matching 'web-*'")
    unsigned = policy_for(base, key, APP, name="unsigned.toml")
    exec_refused(lab, base / "unsigned.pyz", unsigned, "is not signed")


def test_a_small_order_key_forgery_is_refused_by_verify_and_exec(lab: dict[str, Path]
                                                                 ) -> None:
    """The identity point as the key, R = identity and S = 0 as the signature: with
    cryptography 50.0.2 this verifies any message. verify and exec refuse it as a key
    nobody holds, in the bundle and in a trust policy."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    base, signed = lab["base"], lab["signed"]
    identity = b"\x01" + bytes(31)
    key = PublicKey(ED25519, identity)
    forgery = SshSignature(key, "sandrun", "sha512", identity + bytes(32))
    data = signed_data("sandrun", "sha512", lab["message"].read_bytes())
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(forgery.signature, data)
        raw = "cryptography alone accepts the forgery"
    except Exception:
        raw = "cryptography alone refuses it too"
    forged = replace_signature(signed, base / "forged.pyz", forgery.armor())
    proc = sandrun("verify", str(forged))
    assert proc.returncode == 1, (raw, proc.stdout, proc.stderr)
    assert "invalid signature" in proc.stdout and "point of small order" in proc.stdout
    exec_refused(lab, forged, None, "failed verification", "point of small order")

    (base / "identity.pub").write_text(key.openssh() + " forger\n")
    proc = sandrun("trust", "add", str(base / "identity.pub"), "--apps", APP, "--policy",
                   str(base / "identity.toml"))
    assert proc.returncode == 125 and "point of small order" in proc.stderr
    assert not (base / "identity.toml").exists()
    policy = base / "identity-by-hand.toml"
    policy.write_text(f'[[signer]]\nname = "forger"\npublic_key = "{key.openssh()}"\n'
                      f'apps = ["{APP}"]\n')
    policy.chmod(0o644)
    exec_refused(lab, signed, policy, "is invalid", "signer[1].public_key", "small order")


def test_exec_runs_a_bundle_signed_with_ssh_keygen(lab: dict[str, Path]) -> None:
    base, signed, key = lab["base"], lab["signed"], lab["key"]
    policy = policy_for(base, key, "sshsig*", "--valid-before", "20991231Z", name="ok.toml")
    proc = run_sandrun("exec", "--store", str(base / "store"), "--trust", str(policy),
                       str(signed))
    assert proc.returncode == 0, proc.stderr
    assert "signed app ran" in proc.stdout
