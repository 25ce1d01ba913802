"""Signing: OpenSSH Ed25519 keys, the `.sandrun/signature` entry (SSHSIG), and what
verify says.

Real keys (made by sandrun and by ssh-keygen), real bundles (tests/bundlecraft.py and
one from the builder), no mocked crypto. Altered signatures are crafted by rewriting
the archive with the same writer the builder uses. Interoperability with ssh-keygen and
ssh-agent, and exec's refusals, are in test_sshsig.py.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bundlecraft import (
    CORE,
    DATE_TIME,
    MAIN,
    RawEntry,
    build_raw,
    bundle_bytes,
    default_files,
    make_bundle,
    make_manifest,
    write,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from helpers import TESTS
from wheelcraft import hello_wheelhouse

from sandrun.bundle.archive import END_RECORD, open_archive, write_archive
from sandrun.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, canonical_json
from sandrun.bundle.signature import (
    ED25519,
    SK_ED25519,
    PublicKey,
    SignatureState,
    SshSignature,
    fingerprint,
    parse_public_key,
    signature_status,
    signed_data,
    signed_message,
)
from sandrun.bundle.verify import VerifyResult, verify_bundle
from sandrun.errors import KeyFileError, SignatureError, VerificationError
from sandrun.supply.signing import (
    PASSPHRASE_ENV,
    default_identity,
    generate_key,
    load_private_key,
    sign_bundle,
)

SSH_KEYGEN = shutil.which("ssh-keygen")


def new_key(tmp_path: Path, name: str = "release", identity: str = "release@example.org"
            ) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    private, _public = generate_key(keys / name, identity)
    return private


def ssh_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    assert SSH_KEYGEN, "ssh-keygen is needed to prove the key format interoperates"
    return subprocess.run([SSH_KEYGEN, *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)


def signed(tmp_path: Path, key: Path, name: str = "app.pyz", files: Any = None) -> Path:
    bundle = make_bundle(tmp_path, name, files)
    sign_bundle(bundle, key)
    return bundle


def entries(bundle: Path) -> list[tuple[str, bytes, int]]:
    archive = open_archive(bundle)
    return [(e.name, archive.read(e), e.mode & 0o7777) for e in archive.entries]


def rewrite(bundle: Path, out: Path, change: Callable[[list[tuple[str, bytes, int]]], None]
            ) -> Path:
    """Write `bundle`'s entries, as changed in place by `change`, to `out`."""
    files = entries(bundle)
    change(files)
    out.unlink(missing_ok=True)
    with out.open("wb") as handle:
        write_archive(handle, open_archive(bundle).preamble, files, date_time=DATE_TIME)
    return out


def signature_entry(bundle: Path) -> bytes:
    return dict((n, c) for n, c, _ in entries(bundle))[SIGNATURE_NAME]


def sshsig_of(bundle: Path) -> SshSignature:
    return SshSignature.from_armor(signature_entry(bundle), canonical=True)


def with_signature(bundle: Path, out: Path, content: bytes, mode: int = 0o644) -> Path:
    def change(files: list[tuple[str, bytes, int]]) -> None:
        files[:] = [f for f in files if f[0] != SIGNATURE_NAME]
        files.append((SIGNATURE_NAME, content, mode))
    return rewrite(bundle, out, change)


def signature_problems(result: VerifyResult) -> list[str]:
    return [p.what for p in result.problems if p.where == SIGNATURE_NAME]


def assert_signature_problem(result: VerifyResult, *words: str) -> None:
    assert not result.ok
    assert result.signature_status.state is SignatureState.INVALID
    assert result.signature is None  # an invalid entry's claims are never handed out
    found = signature_problems(result)
    assert any(all(w.lower() in what.lower() for w in words) for what in found), (
        f"no {SIGNATURE_NAME} problem saying {words}; got {result.problems}")
    for problem in result.problems:
        assert problem.hint, f"problem without a hint: {problem}"


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_generate_key_writes_openssh_pair_with_exact_modes(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        private, public = generate_key(tmp_path / "k", "release@example.org")
    finally:
        os.umask(old)
    assert (private, public) == (tmp_path / "k", tmp_path / "k.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pem = private.read_bytes()
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert isinstance(serialization.load_ssh_private_key(pem, None), Ed25519PrivateKey)
    line = public.read_text()
    assert line.endswith(" release@example.org\n") and line.count("\n") == 1
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA")
    key = load_private_key(private)
    assert key.identity == "release@example.org"
    assert key.public_key == parse_public_key(line, "k.pub")
    assert key.public_key.openssh() + "\n" == line


def test_default_identity_is_user_at_host(tmp_path: Path) -> None:
    _, public = generate_key(tmp_path / "k")
    assert public.read_text().split()[2] == default_identity()
    assert "@" in default_identity()


def test_ssh_keygen_reads_our_keys_with_the_same_fingerprint(tmp_path: Path) -> None:
    private, public = generate_key(tmp_path / "k", "release@example.org")
    ours = fingerprint(parse_public_key(public.read_text(), "k.pub"))
    for path in (public, private):  # for the private key, ssh-keygen reads KEY.pub's comment
        listed = ssh_keygen("-l", "-f", str(path))
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split()[1] == ours
        assert "release@example.org" in listed.stdout
    derived = ssh_keygen("-y", "-f", str(private))
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == public.read_text().split()[:2]


def test_keys_made_by_ssh_keygen_sign_and_verify(tmp_path: Path) -> None:
    made = ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "ops@example.org",
                      "-f", str(tmp_path / "ssh"))
    assert made.returncode == 0, made.stderr
    key = load_private_key(tmp_path / "ssh")
    assert key.identity == "ops@example.org"
    listed = ssh_keygen("-l", "-f", str(tmp_path / "ssh.pub")).stdout.split()[1]
    assert key.public_key.fingerprint == listed
    bundle = make_bundle(tmp_path)
    info = sign_bundle(bundle, tmp_path / "ssh")
    assert info.fingerprint == listed
    assert verify_bundle(bundle).signature == info


def test_generate_key_never_overwrites_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("precious")
    with pytest.raises(KeyFileError) as info:
        generate_key(tmp_path / "old")
    assert "already exists" in info.value.message and info.value.hint
    assert (tmp_path / "old").read_text() == "precious"
    assert not (tmp_path / "old.pub").exists()

    (tmp_path / "pubonly.pub").write_text("ssh-ed25519 AAAA old\n")
    with pytest.raises(KeyFileError, match=r"pubonly\.pub already exists"):
        generate_key(tmp_path / "pubonly")
    assert not (tmp_path / "pubonly").exists()
    assert (tmp_path / "pubonly.pub").read_text() == "ssh-ed25519 AAAA old\n"

    (tmp_path / "link").symlink_to(tmp_path / "nowhere")  # dangling: still refused
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "link.pub").exists()


def test_generate_key_refusals(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="control characters"):
        generate_key(tmp_path / "k", "two\nlines")
    with pytest.raises(KeyFileError) as info:
        generate_key(tmp_path / "missing-dir" / "k")
    assert "No such file" in info.value.message and "create the directory" in info.value.hint
    assert list(tmp_path.iterdir()) == []


def make_ssh_key(tmp_path: Path, name: str, *args: str) -> Path:
    made = ssh_keygen("-q", "-C", "x@example.org", "-f", str(tmp_path / name), *args)
    assert made.returncode == 0, made.stderr
    return tmp_path / name


def key_refusal(path: Path) -> KeyFileError:
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.hint, "every refusal says how to fix it"
    return info.value


def test_load_private_key_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    assert "no such private key file" in key_refusal(tmp_path / "nope").message

    private = new_key(tmp_path)
    for mode in (0o640, 0o604, 0o660):
        private.chmod(mode)
        error = key_refusal(private)
        assert f"accessible by group or others (mode {mode:04o})" in error.message
        assert f"chmod 600 {private}" in error.hint
    private.chmod(0o600)
    load_private_key(private)

    encrypted = make_ssh_key(tmp_path, "enc", "-t", "ed25519", "-N", "secret")
    error = key_refusal(encrypted)  # no SANDRUN_KEY_PASSPHRASE, no terminal to ask on
    assert "encrypted with a passphrase, and there is no terminal" in error.message
    assert PASSPHRASE_ENV in error.hint and "-N ''" in error.hint

    ecdsa = make_ssh_key(tmp_path, "ecdsa", "-t", "ecdsa", "-N", "")
    assert "an ECDSA key, not an Ed25519 one" in key_refusal(ecdsa).message
    rsa_pem = make_ssh_key(tmp_path, "rsa", "-t", "rsa", "-b", "2048", "-N", "", "-m", "PEM")
    error = key_refusal(rsa_pem)
    assert "not an OpenSSH private key (it is a PEM RSA PRIVATE KEY file)" in error.message
    assert "ssh-keygen -t ed25519" in error.hint

    public = tmp_path / "keys" / "release.pub"  # 0644: what it is comes before its mode
    error = key_refusal(public)
    assert error.message == f"{public} is a public key, not a private one"
    assert "the file without .pub" in error.hint and "--agent" in error.hint
    signature = tmp_path / "sig"
    signature.write_bytes(b"-----BEGIN SSH SIGNATURE-----\nU1NI\n-----END SSH SIGNATURE-----\n")
    signature.chmod(0o600)
    assert "(it is an SSH signature)" in key_refusal(signature).message

    truncated = tmp_path / "truncated"
    pem = private.read_bytes().splitlines()
    truncated.write_bytes(b"\n".join(pem[:3] + pem[-1:]) + b"\n")
    truncated.chmod(0o600)
    assert "not a valid OpenSSH private key" in key_refusal(truncated).message

    assert "not a regular file" in key_refusal(tmp_path / "keys").message


def test_identity_comes_from_the_pub_file(tmp_path: Path) -> None:
    private = new_key(tmp_path, "k", "release@example.org")
    public = private.with_name("k.pub")
    assert b"release@example.org" not in private.read_bytes()  # cryptography keeps no comment
    line = public.read_text()
    public.write_text(line.replace("release@example.org", "renamed@example.org"))
    assert load_private_key(private).identity == "renamed@example.org"
    public.write_text(" ".join(line.split()[:2]) + "\n")  # no comment
    assert load_private_key(private).identity == default_identity()
    public.unlink()  # no .pub at all
    key = load_private_key(private)
    assert key.identity == default_identity() and key.public_key.comment == default_identity()
    # The identity is for people; a signature carries only the key.
    info = sign_bundle(make_bundle(tmp_path), key)
    assert default_identity().encode() not in info.to_bytes()


def test_a_pub_file_that_cannot_name_the_signer_is_refused(tmp_path: Path) -> None:
    private = new_key(tmp_path, "k")
    other = new_key(tmp_path, "other", "other@example.org")
    public = private.with_name("k.pub")
    public.unlink()
    shutil.copy(other.with_name("other.pub"), public)
    error = key_refusal(private)
    assert f"{public} holds another key" in error.message
    assert load_private_key(other).public_key.fingerprint in error.message
    assert f"ssh-keygen -y -f {private}" in error.hint
    public.write_text("ssh-ed25519 AAAA!!!! x\n")
    assert key_refusal(private).message.startswith(f"{public}: the key data is not valid base64")
    for content in ("", "# nothing\n", public.read_text() * 2, "\xff"):
        public.write_text(content, "latin-1")
        assert "does not hold one public key line" in key_refusal(private).message
    public.unlink()
    public.mkdir()
    assert f"{public} is not a regular file" in key_refusal(private).message


def encrypted_key(tmp_path: Path) -> Path:
    """An ssh-keygen key with passphrase "secret" whose .pub names ops@example.org."""
    made = ssh_keygen("-q", "-t", "ed25519", "-N", "secret", "-C", "ops@example.org",
                      "-f", str(tmp_path / "enc"))
    assert made.returncode == 0, made.stderr
    return tmp_path / "enc"


def test_passphrase_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    encrypted = encrypted_key(tmp_path)
    monkeypatch.setenv(PASSPHRASE_ENV, "secret")
    key = load_private_key(encrypted)
    assert key.identity == "ops@example.org"
    listed = ssh_keygen("-l", "-f", str(tmp_path / "enc.pub")).stdout.split()[1]
    assert key.public_key.fingerprint == listed
    bundle = make_bundle(tmp_path)
    info = sign_bundle(bundle, key)
    assert verify_bundle(bundle).signature == info and info.fingerprint == listed

    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    error = key_refusal(encrypted)
    assert "wrong passphrase" in error.message and PASSPHRASE_ENV in error.hint
    monkeypatch.setenv(PASSPHRASE_ENV, "")
    assert "the one given is empty" in key_refusal(encrypted).message
    # An unencrypted key ignores the variable.
    monkeypatch.setenv(PASSPHRASE_ENV, "secret")
    assert load_private_key(new_key(tmp_path)).identity == "release@example.org"


def test_passphrase_asked_on_the_terminal(tmp_path: Path) -> None:
    encrypted = encrypted_key(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    code = ("import sys; from sandrun.supply.signing import load_private_key; "
            "print('identity', load_private_key(sys.argv[1]).identity, flush=True)")
    pid, fd = pty.fork()  # the child gets the pty as its controlling terminal
    if pid == 0:  # pragma: no cover - the child
        try:
            os.execve(sys.executable, [sys.executable, "-c", code, str(encrypted)], env)
        finally:
            os._exit(127)
    output = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and f"Passphrase for {encrypted}: ".encode() in output:
                os.write(fd, b"secret\n")
                answered = True
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert answered, output
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"identity ops@example.org" in output
    assert b"secret" not in output  # not echoed


def test_verifying_an_unsigned_bundle_never_imports_cryptography(tmp_path: Path) -> None:
    unsigned = make_bundle(tmp_path, "unsigned.pyz")
    signed_bundle = signed(tmp_path, new_key(tmp_path), "signed.pyz")
    code = ("import sys; from sandrun.bundle.verify import verify_bundle; "
            "result = verify_bundle(sys.argv[1]); assert result.ok, result.problems; "
            "print(result.signature_status.state.value, "
            "any(m.split('.')[0] == 'cryptography' for m in sys.modules))")
    for bundle, expected in ((unsigned, "unsigned False"), (signed_bundle, "valid True")):
        proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True,
                              text=True, check=False, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected


def test_parse_public_key() -> None:
    line = ((TESTS / "trust" / "keys" / "alice.pub").read_text())
    key = parse_public_key(line, "alice.pub")
    assert key.comment == "alice@example.org"
    bare = parse_public_key(" ".join(line.split()[:2]), "x")  # comment is optional
    assert bare.comment == "" and bare == key and hash(bare) == hash(key)
    assert key.openssh() == line.strip()
    assert fingerprint(key) == "SHA256:dM689t2X5xhG73Pu5ile2KvL8rS/rcFlFU0H88bstpU"
    assert "SHA256:dM689" in repr(key)


def test_parse_security_key_public_key(tmp_path: Path) -> None:
    raw = bytes(range(32))
    blob = (b"\0\0\0\x1ask-ssh-ed25519@openssh.com" + b"\0\0\0\x20" + raw
            + b"\0\0\0\x04ssh:")
    line = f"sk-ssh-ed25519@openssh.com {base64.b64encode(blob).decode()} yubikey"
    key = parse_public_key(line, "x")
    assert (key.key_type, key.raw, key.application, key.comment) == (
        SK_ED25519, raw, "ssh:", "yubikey")
    assert key.openssh() == line and key.blob == blob and key.on_security_key
    (tmp_path / "sk.pub").write_text(line + "\n")
    listed = ssh_keygen("-l", "-f", str(tmp_path / "sk.pub"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[1] == key.fingerprint and "(ED25519-SK)" in listed.stdout


@pytest.mark.parametrize(("line", "words"), [
    ("", "public key is empty"),
    ("sk-ecdsa-sha2-nistp256@openssh.com AAAA x", "(security-key ECDSA) are not supported"),
    ("ecdsa-sha2-nistp256 AAAA x", "(ECDSA) are not supported"),
    ("sk-ssh-ed25519@openssh.com " + base64.b64encode(
        b"\0\0\0\x1ask-ssh-ed25519@openssh.com\0\0\0\x20" + bytes(range(32)) + b"\0\0\0\0")
        .decode(), "application is empty"),
    ("ssh-ed25519", "not an OpenSSH public key"),
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDe x", "ssh-rsa keys (RSA) are not supported"),
    ('command="x" ssh-ed25519 AAAA', "options before the key type are not supported"),
    ("ssh-ed25519 AAAA!!!!", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "truncated or malformed"),
    # A well-formed blob of another type under an ed25519 label; a short key.
    ("ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa\0\0\0\x20" + bytes(32)).decode(),
     "truncated or malformed"),
    ("ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x10" + bytes(16))
     .decode(), "truncated or malformed"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQG3WP1sznt6NepZ2sjh3Y7xOYbZuMc57a1B3QtbmrmAAAA",
     "truncated or malformed"),  # trailing bytes after the key
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQG3WP1sznt6NepZ2sjh3Y7xOYbZuMc57a1B3Qtbmrm "
     "bad\x1bcomment", "comment contains control characters"),
])
def test_parse_public_key_refusals(line: str, words: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_public_key(line, "trust.toml:3: signer[1].public_key")
    assert info.value.message.startswith("trust.toml:3: signer[1].public_key: ")
    assert words in info.value.message
    assert info.value.hint


# ---------------------------------------------------------------- sign and verify


def test_unsigned_bundle_verifies_and_says_unsigned(tmp_path: Path) -> None:
    result = verify_bundle(make_bundle(tmp_path))
    assert result.ok
    assert result.signature_status.state is SignatureState.UNSIGNED
    assert result.signature is None
    assert result.signature_status.describe() == "unsigned"


def test_sign_and_verify_round_trip(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    bundle = make_bundle(tmp_path)
    info = sign_bundle(bundle, key)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o444
    result = verify_bundle(bundle)
    assert result.ok, result.problems
    assert result.signature_status.state is SignatureState.VALID
    assert result.signature == info
    assert result.manifest is not None
    assert info.manifest_sha256 == result.manifest.digest()
    assert (info.app_name, info.app_version) == ("demo", "1.0")
    public = load_private_key(key).public_key
    assert info.public_key == public and info.fingerprint == public.fingerprint
    assert result.signature_status.describe() == f"signed by ssh-ed25519 key {info.fingerprint}"
    assert signature_status(result.archive, result.manifest).info == info

    # The entry: the armored SSHSIG, after the manifest, 0644, and nothing else.
    names = [n for n, _, _ in entries(bundle)]
    assert names[-2:] == [MANIFEST_NAME, SIGNATURE_NAME]
    raw = dict((n, (c, m)) for n, c, m in entries(bundle))[SIGNATURE_NAME]
    assert raw == (info.to_bytes(), 0o644)
    lines = raw[0].decode().splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----"
    assert lines[-1] == "-----END SSH SIGNATURE-----" and raw[0].endswith(b"\n")
    assert all(len(line) == 70 for line in lines[1:-2]) and 0 < len(lines[-2]) <= 70
    sshsig = info.sshsig
    assert (sshsig.namespace, sshsig.hash_algorithm) == ("sandrun", "sha512")
    # What is signed: the documented message, wrapped as PROTOCOL.sshsig says.
    message = signed_message(result.manifest)
    assert message == (f"sandrun signed bundle v1\napp: demo\nversion: 1.0\n"
                       f"manifest-sha256: {result.manifest.digest()}\n").encode()
    import hashlib

    data = (b"SSHSIG" + b"\0\0\0\x07sandrun" + b"\0\0\0\0" + b"\0\0\0\x06sha512"
            + b"\0\0\0\x40" + hashlib.sha512(message).digest())
    assert signed_data("sandrun", "sha512", message) == data
    Ed25519PublicKey.from_public_bytes(public.raw).verify(sshsig.signature, data)  # raises if not


def unsigned_layout(data: bytes) -> tuple[int, int]:
    """(central directory offset, size) of an archive, from its end record."""
    record = END_RECORD.unpack(data[-END_RECORD.size:])
    return record[6], record[5]


def test_signing_changes_nothing_but_the_signature_entry(tmp_path: Path) -> None:
    unsigned = bundle_bytes()
    bundle = write(tmp_path, unsigned)
    sign_bundle(bundle, new_key(tmp_path))
    data = bundle.read_bytes()
    cd_offset, cd_size = unsigned_layout(unsigned)
    # Preamble and every entry: the same bytes at the same offsets; the signature follows.
    assert data[:cd_offset] == unsigned[:cd_offset]
    signature_entry = next(e for e in open_archive(bundle).entries if e.name == SIGNATURE_NAME)
    assert signature_entry.header_offset == cd_offset
    # The central directory keeps every old record and adds one for the signature.
    new_cd_offset, _ = unsigned_layout(data)
    assert data[new_cd_offset:new_cd_offset + cd_size] == unsigned[cd_offset:cd_offset + cd_size]


def test_signing_is_reproducible_for_the_same_key_and_time(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    first, second = make_bundle(tmp_path, "a.pyz"), make_bundle(tmp_path, "b.pyz")
    sign_bundle(first, key)
    sign_bundle(second, key)
    assert first.read_bytes() == second.read_bytes()  # Ed25519 signatures are deterministic


def test_resigning_replaces_the_signature(tmp_path: Path) -> None:
    unsigned = bundle_bytes()
    bundle = write(tmp_path, unsigned)
    first_key, second_key = new_key(tmp_path, "a", "alice@example.org"), new_key(
        tmp_path, "b", "bob@example.org")
    sign_bundle(bundle, first_key)
    sign_bundle(bundle, first_key)  # same key again: still one entry
    second = sign_bundle(bundle, second_key)
    names = [n for n, _, _ in entries(bundle)]
    assert names.count(SIGNATURE_NAME) == 1 and names[-1] == SIGNATURE_NAME
    result = verify_bundle(bundle)
    assert result.ok, result.problems
    assert result.signature == second
    assert result.signature.fingerprint == load_private_key(second_key).public_key.fingerprint
    cd_offset, _ = unsigned_layout(unsigned)
    assert bundle.read_bytes()[:cd_offset] == unsigned[:cd_offset]


def test_resigning_replaces_an_invalid_signature(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    broken = with_signature(make_bundle(tmp_path), tmp_path / "broken.pyz", b"not json\n")
    assert not verify_bundle(broken).ok
    sign_bundle(broken, key)
    assert verify_bundle(broken).ok


def test_a_bundle_from_the_builder_signs_reproducibly(tmp_path: Path) -> None:
    from sandrun.build.builder import BundleRequest, build_bundle

    wheels = hello_wheelhouse(tmp_path / "wheels")
    out = tmp_path / "hello.pyz"
    build_bundle(BundleRequest(output=out, requirements=("hellopkg",), console_script="hello",
                               find_links=(str(wheels),), no_index=True,
                               source_date_epoch=1700000001))  # odd: zip times have 2 s steps
    unsigned = out.read_bytes()
    info = sign_bundle(out, new_key(tmp_path))
    assert info.app_name == "hello" and info.app_version == "1.2.0"
    cd_offset, _ = unsigned_layout(unsigned)
    assert out.read_bytes()[:cd_offset] == unsigned[:cd_offset]
    result = verify_bundle(out)
    assert result.ok, result.problems
    assert result.signature == info


def test_sign_refuses_a_bundle_that_fails_verification(tmp_path: Path) -> None:
    files = default_files()
    old_manifest = make_manifest(files)
    files[CORE] = (b"def answer():\n    return 43\n", 0o644)
    tampered = write(tmp_path, bundle_bytes(files, manifest=old_manifest))
    before = tampered.read_bytes()
    with pytest.raises(VerificationError) as info:
        sign_bundle(tampered, new_key(tmp_path))
    assert "cannot sign" in info.value.message and "fails verification" in info.value.message
    assert [p.where for p in info.value.problems] == [CORE]
    assert "size differs from manifest" in info.value.problems[0].what
    assert tampered.read_bytes() == before


def test_sign_refusals_about_the_bundle_file(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    with pytest.raises(SignatureError, match="no such file"):
        sign_bundle(tmp_path / "nope.pyz", key)
    (tmp_path / "link.pyz").symlink_to(make_bundle(tmp_path))
    with pytest.raises(SignatureError, match="is a symlink"):
        sign_bundle(tmp_path / "link.pyz", key)
    with pytest.raises(KeyFileError, match="no such private key"):
        sign_bundle(tmp_path / "app.pyz", tmp_path / "nokey")
    assert verify_bundle(tmp_path / "app.pyz").signature is None  # nothing was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.pyz", "keys", "link.pyz"]


# ---------------------------------------------------------------- altered signatures


def forged(bundle: Path, out: Path, **changes: Any) -> Path:
    """`bundle` with its signature changed (dataclasses.replace) and re-armored."""
    return with_signature(bundle, out, dataclasses.replace(sshsig_of(bundle), **changes).armor())


def test_tampered_signature_bytes(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    signature = bytearray(sshsig_of(bundle).signature)
    signature[10] ^= 0x01
    result = verify_bundle(forged(bundle, tmp_path / "x.pyz", signature=bytes(signature)))
    assert_signature_problem(result, "does not verify with the key it names")
    assert len(result.problems) == 1  # the rest of the bundle is intact


def test_signature_copied_from_another_bundle(tmp_path: Path) -> None:
    key = new_key(tmp_path)
    other_files = default_files()
    other_files[MAIN] = (b'print("another app")\n', 0o644)
    other = signed(tmp_path, key, "other.pyz", other_files)
    mine = make_bundle(tmp_path, "mine.pyz")
    result = verify_bundle(with_signature(mine, tmp_path / "x.pyz", signature_entry(other)))
    assert_signature_problem(result, "does not verify", "made for another bundle")
    assert result.manifest is not None and result.manifest.digest() in signature_problems(
        result)[0]


def test_signature_for_another_namespace(tmp_path: Path) -> None:
    key = load_private_key(new_key(tmp_path))
    bundle = signed(tmp_path, key.path)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    from sandrun.supply.signing import make_sshsig

    git = make_sshsig(key, signed_message(manifest), namespace="git")
    assert git.verifies(signed_message(manifest))  # a genuine signature, for git
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", git.armor()))
    assert_signature_problem(result, "made for namespace 'git', not 'sandrun'")
    # Relabelling it "sandrun" breaks it: the namespace is signed.
    result = verify_bundle(forged(with_signature(bundle, tmp_path / "y.pyz", git.armor()),
                                  tmp_path / "z.pyz", namespace="sandrun"))
    assert_signature_problem(result, "does not verify")


def test_signature_by_another_key_claiming_the_key(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path, "real"))
    forger = load_private_key(new_key(tmp_path, "forger"))
    sshsig = sshsig_of(bundle)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    data = signed_data("sandrun", "sha512", signed_message(manifest))
    result = verify_bundle(forged(bundle, tmp_path / "x.pyz", signature=forger.sign(data)))
    assert_signature_problem(result, "does not verify", sshsig.public_key.fingerprint)


def test_signature_over_another_app_name(tmp_path: Path) -> None:
    key = load_private_key(new_key(tmp_path))
    bundle = signed(tmp_path, key.path)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    lying = signed_message(manifest).replace(b"app: demo", b"app: other")
    data = signed_data("sandrun", "sha512", lying)
    result = verify_bundle(forged(bundle, tmp_path / "x.pyz", signature=key.sign(data)))
    assert_signature_problem(result, "does not verify")


def test_sha256_signatures_are_accepted(tmp_path: Path) -> None:
    key = load_private_key(new_key(tmp_path))
    bundle = make_bundle(tmp_path)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    from sandrun.supply.signing import make_sshsig

    sha256 = make_sshsig(key, signed_message(manifest), hash_algorithm="sha256")
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", sha256.armor()))
    assert result.ok, result.problems
    assert result.signature is not None and result.signature.sshsig.hash_algorithm == "sha256"


def armored(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"])
            + "\n").encode()


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def blob_with(sshsig: SshSignature, *, magic: bytes = b"SSHSIG", version: int = 1,
              key: bytes | None = None, namespace: bytes = b"sandrun", reserved: bytes = b"",
              hash_algorithm: bytes = b"sha512", signature: bytes | None = None,
              trailing: bytes = b"") -> bytes:
    return (magic + version.to_bytes(4, "big") + ssh_string(key or sshsig.public_key.blob)
            + ssh_string(namespace) + ssh_string(reserved) + ssh_string(hash_algorithm)
            + ssh_string(sshsig.signature_blob() if signature is None else signature)
            + trailing)


RSA_KEY = ssh_string(b"ssh-rsa") + ssh_string(b"\x01\x00\x01") + ssh_string(bytes(129))
MALFORMED: list[tuple[str, Callable[[SshSignature, bytes], bytes], tuple[str, ...]]] = [
    ("old_json_format", lambda s, a: canonical_json({"format": 1, "signature": "x"}),
     ("format of sandrun before SSHSIG", "re-signed")),
    ("not_ascii", lambda s, a: b"\xff\xfe\n", ("not ASCII text",)),
    ("no_armor", lambda s, a: b"garbage\n", ("first line is not",)),
    ("truncated_armor", lambda s, a: b"\n".join(a.split(b"\n")[:2]) + b"\n",
     ("last line is not", "truncated")),
    ("no_final_newline", lambda s, a: a[:-1], ("no final newline",)),
    ("bad_base64", lambda s, a: a.replace(a.split(b"\n")[1][:4], b"!!!!"),
     ("body is not valid base64",)),
    ("crlf", lambda s, a: a.replace(b"\n", b"\r\n"), ("not armored exactly",)),
    ("other_width", lambda s, a: a.replace(b"\n", b"", 2).replace(
        b"-----BEGIN SSH SIGNATURE-----", b"-----BEGIN SSH SIGNATURE-----\n"),
     ("not armored exactly",)),
    ("text_after", lambda s, a: a + b"note\n", ("last line is not",)),
    ("magic", lambda s, a: armored(blob_with(s, magic=b"SSHSIX")), ("SSHSIG magic",)),
    ("version", lambda s, a: armored(blob_with(s, version=2)), ("SSHSIG version 2",)),
    ("reserved", lambda s, a: armored(blob_with(s, reserved=b"x")), ("reserved field",)),
    ("hash", lambda s, a: armored(blob_with(s, hash_algorithm=b"md5")),
     ("hash algorithm 'md5'",)),
    ("rsa_key", lambda s, a: armored(blob_with(s, key=RSA_KEY)),
     ("ssh-rsa keys (RSA) are not supported",)),
    ("short_key", lambda s, a: armored(blob_with(s, key=ssh_string(b"ssh-ed25519")
                                                 + ssh_string(bytes(31)))),
     ("the Ed25519 key is 31 bytes",)),
    ("key_trailing", lambda s, a: armored(blob_with(s, key=s.public_key.blob + b"x")),
     ("unexpected bytes follow the key",)),
    ("sig_algorithm", lambda s, a: armored(blob_with(
        s, signature=ssh_string(b"rsa-sha2-512") + ssh_string(s.signature))),
     ("signature algorithm is 'rsa-sha2-512'",)),
    ("sig_length", lambda s, a: armored(blob_with(
        s, signature=ssh_string(b"ssh-ed25519") + ssh_string(s.signature[:63]))),
     ("63 bytes, not 64",)),
    ("sig_trailing", lambda s, a: armored(blob_with(s, signature=s.signature_blob() + b"\0")),
     ("unexpected bytes follow the signature",)),
    ("blob_trailing", lambda s, a: armored(blob_with(s, trailing=b"\0")),
     ("unexpected bytes follow the signature",)),
    ("truncated_blob", lambda s, a: armored(blob_with(s)[:-10]), ("truncated",)),
    ("huge_length", lambda s, a: armored(b"SSHSIG\0\0\0\x01\xff\xff\xff\xff"),
     ("the public key is 4294967295 bytes long (at most 1024)",)),
    ("namespace_control", lambda s, a: armored(blob_with(s, namespace=b"sand\x1brun")),
     ("namespace contains control characters",)),
    ("oversized_blob", lambda s, a: armored(blob_with(s, trailing=bytes(5000))),
     ("it is 5", "at most 4096")),
]


@pytest.mark.parametrize(("make", "words"), [(m, w) for _, m, w in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_signature_entry(tmp_path: Path, make: Callable[[SshSignature, bytes], bytes],
                                   words: tuple[str, ...]) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    content = make(sshsig_of(bundle), signature_entry(bundle))
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", content))
    assert_signature_problem(result, *words)
    assert [p.where for p in result.problems] == [SIGNATURE_NAME]


def test_old_format_signatures_say_to_resign(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    old = (b'{"algorithm":"ed25519","app_name":"demo","format":1,"signature":"AAAA"}\n')
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", old))
    problem = result.problems[0]
    assert "this sandrun accepts only SSHSIG signatures" in problem.what
    assert "sandrun sign -k KEY BUNDLE" in problem.hint and "ssh-keygen -Y sign" in problem.hint


def test_signature_entry_mode_and_count(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    content = signature_entry(bundle)
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", content, 0o755))
    assert_signature_problem(result, "mode 0755")

    # The writer refuses duplicate names, so build the doubled archive by hand.
    raw = [RawEntry.of(n, c, m) for n, c, m in entries(bundle)]
    raw.append(RawEntry.of(SIGNATURE_NAME, content))
    result = verify_bundle(write(tmp_path, build_raw(raw), "y.pyz"))
    assert_signature_problem(result, "2 signature entries")

    result = verify_bundle(with_signature(bundle, tmp_path / "z.pyz", b"x" * (16 * 1024 + 1)))
    assert_signature_problem(result, "16385 bytes; a signature entry is at most 16384")


def test_signature_without_a_manifest_cannot_be_checked(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    stripped = rewrite(bundle, tmp_path / "x.pyz",
                       lambda fs: fs.remove(next(f for f in fs if f[0] == MANIFEST_NAME)))
    result = verify_bundle(stripped)
    assert_signature_problem(result, "cannot be checked", "manifest")


def test_signature_status_of_an_invalid_signature(tmp_path: Path) -> None:
    bundle = signed(tmp_path, new_key(tmp_path))
    broken = with_signature(bundle, tmp_path / "x.pyz", b"nonsense\n")
    archive = open_archive(broken)
    manifest = verify_bundle(broken).manifest
    assert manifest is not None
    status = signature_status(archive, manifest)
    assert status.state is SignatureState.INVALID and status.info is None
    assert [p.where for p in status.problems] == [SIGNATURE_NAME]
    assert status.problems[0].what.startswith("is not an armored SSH signature")
    assert status.problems[0].hint
    assert status.describe().startswith("invalid signature: is not an armored SSH signature")


def test_public_key_equality_ignores_comment() -> None:
    raw = bytes(range(32))
    assert PublicKey(ED25519, raw, "", "a") == PublicKey(ED25519, raw, "", "b")
    assert PublicKey(ED25519, raw) != PublicKey(ED25519, bytes(32))
    assert PublicKey(ED25519, raw) != PublicKey(SK_ED25519, raw, "ssh:")
    assert PublicKey(SK_ED25519, raw, "ssh:") != PublicKey(SK_ED25519, raw, "ssh:other")


# ---------------------------------------------------------------- small-order keys

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
IDENTITY = b"\x01" + bytes(31)
ORDER8_Y = int.from_bytes(bytes.fromhex(
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
# Every encoding of a point of small order: the y of each (sign bit 0 and 1), and the
# non-canonical y + p of those below 19.
SMALL_ORDER = [((y + extra) | sign << 255).to_bytes(32, "little")
               for y in (0, 1, P - 1, ORDER8_Y, P - ORDER8_Y)
               for extra in ((0, P) if y < 19 else (0,)) for sign in (0, 1)]


def edwards_point(encoding: bytes) -> tuple[int, int] | None:
    """RFC 8032 decoding (y may be non-canonical here), None when not on the curve."""
    value = int.from_bytes(encoding, "little")
    y, sign = (value & ((1 << 255) - 1)) % P, value >> 255
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P:
        return None
    return (P - x if x and x % 2 != sign else x), y


def edwards_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def times8(point: tuple[int, int]) -> tuple[int, int]:
    for _ in range(3):
        point = edwards_add(point, point)
    return point


def test_the_refused_keys_are_exactly_the_small_order_points() -> None:
    from sandrun.bundle.signature import ed25519_key_problem

    points = {edwards_point(e) for e in SMALL_ORDER} - {None}
    assert len(points) == 8  # the whole 8-torsion subgroup
    assert all(p is not None and times8(p) == (0, 1) for p in points)
    for encoding in SMALL_ORDER:
        assert ed25519_key_problem(encoding), encoding.hex()
    real = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    point = edwards_point(real)
    assert point is not None and times8(point) != (0, 1)
    assert ed25519_key_problem(real) is None
    non_canonical = (int.from_bytes(real, "little") % 19 + P).to_bytes(32, "little")
    assert "not canonically encoded" in (ed25519_key_problem(non_canonical) or "")


def identity_forgery(message: bytes) -> SshSignature:
    """A "signature" of anything by the identity point: R = identity, S = 0. cryptography
    50 with OpenSSL accepts it; the key check is what refuses it."""
    key = PublicKey(ED25519, IDENTITY)
    return SshSignature(key, "sandrun", "sha512", IDENTITY + bytes(32))


@pytest.mark.parametrize("encoding", SMALL_ORDER, ids=lambda e: e.hex()[:8] + e.hex()[-2:])
def test_small_order_keys_are_refused(encoding: bytes) -> None:
    line = "ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519")
                                              + ssh_string(encoding)).decode()
    with pytest.raises(KeyFileError) as info:
        parse_public_key(line, "trust.toml:3: signer[1].public_key")
    assert "not a usable public key: the Ed25519 key is" in info.value.message
    assert info.value.hint
    sk_line = "sk-ssh-ed25519@openssh.com " + base64.b64encode(
        ssh_string(SK_ED25519.encode()) + ssh_string(encoding) + ssh_string(b"ssh:")).decode()
    with pytest.raises(KeyFileError, match="not a usable public key"):
        parse_public_key(sk_line, "x")
    key = PublicKey(ED25519, encoding)  # however it was made, it verifies nothing
    assert not key.verify(IDENTITY + bytes(32), b"any message")
    with pytest.raises(SignatureError, match="its public key: the Ed25519 key is"):
        SshSignature.from_blob(SshSignature(key, "sandrun", "sha512", bytes(64)).to_blob())


def test_a_forged_signature_by_the_identity_key_is_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    manifest = verify_bundle(bundle).manifest
    assert manifest is not None
    forgery = identity_forgery(signed_message(manifest))
    data = signed_data("sandrun", "sha512", signed_message(manifest))
    try:  # what the key check stands in for (cryptography 50.0.2 accepts this)
        Ed25519PublicKey.from_public_bytes(IDENTITY).verify(forgery.signature, data)
        raw_accepts = True
    except Exception:
        raw_accepts = False
    result = verify_bundle(with_signature(bundle, tmp_path / "x.pyz", forgery.armor()))
    assert_signature_problem(result, "is not a valid SSH signature: its public key",
                             "point of small order")
    assert result.signature_status.state is SignatureState.INVALID, raw_accepts
    with pytest.raises(SignatureError, match="small order"):
        from sandrun.supply.signing import attach_signature

        sig = tmp_path / "forged.sig"
        sig.write_bytes(forgery.armor())
        attach_signature(bundle, sig)
    assert verify_bundle(bundle).signature is None  # nothing was attached


# ---------------------------------------------------------------- inspect --sshsig DIR


def test_sshsig_files_refresh_regular_files_and_never_follow_links(tmp_path: Path) -> None:
    from sandrun.errors import SandrunError
    from sandrun.supply.signing import write_sshsig_files

    key = new_key(tmp_path)
    bundle = signed(tmp_path, key)
    directory = tmp_path / "d"
    first = write_sshsig_files(bundle, directory)
    assert first.signature is not None
    message = first.message.read_bytes()
    first.message.write_text("stale\n")  # a working directory: re-running refreshes it
    first.signature.write_text("stale\n")
    again = write_sshsig_files(bundle, directory)
    assert again.message.read_bytes() == message
    assert stat.S_IMODE(again.message.stat().st_mode) == 0o644
    assert again.signature is not None and again.signature.read_bytes().startswith(b"-----")

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("message", "message.sig"):
        (directory / name).unlink()
        (directory / name).symlink_to(victim)
        with pytest.raises(SandrunError, match=f"{name} is a symbolic link: sandrun does not "
                           "write through it"):
            write_sshsig_files(bundle, directory)
        assert victim.read_text() == "precious\n" and (directory / name).is_symlink()
        (directory / name).unlink()
        (directory / name).write_text("x\n")
    (directory / "message.sig").unlink()
    (directory / "message.sig").mkdir()
    with pytest.raises(SandrunError, match="exists and is not a regular file"):
        write_sshsig_files(bundle, directory)
    assert (directory / "message").read_text() == "x\n"  # checked before writing anything


@pytest.fixture()
def owned(require_root: None) -> Any:
    """A root-owned directory below none that others can write (/var/lib, not /tmp)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sandrun-signing-", dir="/var/lib"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_inspect_sshsig_never_writes_through_a_planted_link(owned: Path) -> None:
    from helpers import fork_and_report, run_sandrun

    bundle = make_bundle(owned)
    real = owned / "real"
    real.mkdir()
    (real / "message").write_text("precious\n")
    sticky = owned / "sticky"  # like /tmp
    sticky.mkdir()
    sticky.chmod(0o1777)

    def plant() -> bool:
        os.symlink(real, sticky / "d")
        os.mkdir(sticky / "mine")
        os.symlink(real / "message", sticky / "mine" / "message")
        return True

    report = fork_and_report(plant)
    assert report.exit_code == 0 and report.value is True, report
    for directory, words in ((sticky / "d", f"{sticky}/d is a symbolic link below {sticky}"),
                             (sticky / "mine", f"{sticky}/mine/message is a symbolic link: "
                              "sandrun does not write through it")):
        proc = run_sandrun("inspect", "--sshsig", str(directory), str(bundle))
        assert proc.returncode == 125 and words in proc.stderr, proc.stderr
    assert sorted(p.name for p in real.iterdir()) == ["message"]
    assert (real / "message").read_text() == "precious\n"
