"""Ed25519 signatures on bundles: OpenSSH keys, the `.sandrun/signature` entry, its check.

Keys are plain OpenSSH Ed25519 keys, so `ssh-keygen` can make, read and fingerprint
them, and cryptography reads and writes them: the private key is an "OPENSSH PRIVATE
KEY" PEM file (mode 0600) and the public key, `KEY.pub` beside it, the one-line
`ssh-ed25519 AAAA... identity` form. The identity (the signer name put in signatures)
is the comment of `KEY.pub` (user@host when there is none): cryptography drops the
comment of a private key, and `KEY.pub` is where ssh-keygen puts it too.

A passphrase-protected private key is read with the passphrase in the environment
variable SANDRUN_KEY_PASSPHRASE (for unattended signing, e.g. from a CI secret) or,
when it is unset and standard input is a terminal, asked for there.

The format of the signature entry and its check are the bundle format's
(sandrun/bundle/signature.py); this module makes keys and signs.

The manifest cannot list the signature (it signs the manifest's digest); `verify`
checks it instead. Signing rewrites the bundle with the signature after the manifest;
every other byte stays as the builder wrote it, so a bundle is reproducible apart from
its signature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandrun.bundle.archive import (
    MAX_ARCHIVE_SIZE,
    StrictArchive,
    ZipEntry,
    date_time_from_epoch,
    parse_archive,
    write_archive,
)
from sandrun.bundle.manifest import SIGNATURE_NAME
from sandrun.bundle.signature import (  # what signing shares with checking
    KEY_TYPE,
    KEYGEN_HINT,
    SIGNATURE_MODE,
    PublicKey,
    SignatureInfo,
    SignatureState,
    _identity_problem,
    format_signed_at,
    parse_public_key,
)
from sandrun.errors import (
    KeyFileError,
    SignatureError,
    VerificationError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

# cryptography is imported where it is used: verifying an unsigned bundle (every warm
# `sandrun exec` of one) should not pay for loading it.

PRIVATE_KEY_MODE = 0o600


PUBLIC_KEY_MODE = 0o644


BUNDLE_MODE = 0o444


MAX_KEY_FILE_BYTES = 64 * 1024


PASSPHRASE_ENV = "SANDRUN_KEY_PASSPHRASE"


_PEM_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key; `identity` is the comment of its .pub (e.g. user@host)."""

    path: Path
    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: PublicKey

    @property
    def identity(self) -> str:
        return self.public_key.comment

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def default_identity() -> str:
    """user@hostname, as ssh-keygen's default comment."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _public_key_path(path: Path) -> Path:
    """Where a private key's public key (and so its identity) lives: KEY.pub."""
    return path.with_name(path.name + ".pub")


def generate_key(path: Path, identity: str | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: `path` (private, 0600) and `path.pub` (0644), whose
    comment is `identity` (default user@host).

    Refuses, writing nothing, when either file already exists: a signing key is never
    overwritten. Returns (private key path, public key path).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    path = Path(path)
    public_path = _public_key_path(path)
    identity = default_identity() if identity is None else identity
    problem = _identity_problem(identity)
    if problem:
        raise KeyFileError(f"cannot use {identity!r} as the key's identity: {problem}",
                           "give a one-line identity such as release@example.org")
    for existing in (path, public_path):
        if os.path.lexists(existing):
            raise KeyFileError(f"{existing} already exists; a key is never overwritten",
                               "choose another path, or move the old key pair away first")
    private_key = Ed25519PrivateKey.generate()
    public_key = PublicKey.from_key(private_key.public_key(), identity)
    private_pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH,
                                            NoEncryption())
    _write_new_file(path, private_pem, PRIVATE_KEY_MODE)
    try:
        _write_new_file(public_path, (public_key.openssh() + "\n").encode("utf-8"),
                        PUBLIC_KEY_MODE)
    except BaseException:
        # The pair is written together or not at all.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path, public_path


def load_private_key(path: Path) -> SigningKey:
    """Read an OpenSSH Ed25519 private key that only its owner can read, and its identity
    from KEY.pub; a passphrase comes from SANDRUN_KEY_PASSPHRASE or the terminal."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_key_file(path)
    if _PEM_BEGIN not in data:
        raise KeyFileError(f"{path} is not an OpenSSH private key "
                           f"({_describe_key_data(data.lstrip())})",
                           KEYGEN_HINT + "; sandrun reads OpenSSH-format Ed25519 keys")
    private_key = _load_openssh_private_key(path, data)
    if not isinstance(private_key, Ed25519PrivateKey):
        from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

        kind = ("an RSA" if isinstance(private_key, rsa.RSAPrivateKey) else
                "an ECDSA" if isinstance(private_key, ec.EllipticCurvePrivateKey) else
                "a DSA" if isinstance(private_key, dsa.DSAPrivateKey) else "another")
        raise KeyFileError(f"{path} holds {kind} key, not an Ed25519 one; sandrun signs only "
                           "with Ed25519 keys", KEYGEN_HINT)
    public_key = PublicKey.from_key(private_key.public_key())
    identity = _identity(path, public_key)
    return SigningKey(path, private_key, dataclasses.replace(public_key, comment=identity))


def _load_openssh_private_key(path: Path, data: bytes) -> object:
    """cryptography's key object (of any type); asks for a passphrase only when needed."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    damaged = "the file is damaged or truncated; " + KEYGEN_HINT
    try:
        return load_ssh_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "needs a passphrase"
        pass
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"{path}: unsupported key ({exc})", KEYGEN_HINT) from None
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a valid OpenSSH private key ({exc})",
                           damaged) from None
    passphrase = _passphrase(path)
    try:
        return load_ssh_private_key(data, password=passphrase)
    except UnsupportedAlgorithm as exc:  # e.g. bcrypt, which encrypted keys need, missing
        raise KeyFileError(f"{path}: cannot decrypt this key ({exc})",
                           "install sandrun with its dependencies (bcrypt)") from None
    except (TypeError, ValueError):
        raise KeyFileError(f"{path}: wrong passphrase (or the key file is damaged)",
                           f"check the passphrase (from {PASSPHRASE_ENV} when it is set, "
                           "else typed on the terminal)") from None


def _passphrase(path: Path) -> bytes:
    """From $SANDRUN_KEY_PASSPHRASE, else asked on the terminal; KeyFileError when neither."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None and sys.stdin is not None and sys.stdin.isatty():
        import getpass

        try:
            value = getpass.getpass(f"Passphrase for {path}: ")
        except EOFError:
            value = ""
    if value is None:
        raise KeyFileError(f"{path} is encrypted with a passphrase, and there is no terminal "
                           "to ask for it",
                           f"set {PASSPHRASE_ENV} to the passphrase (e.g. from a CI secret), "
                           "sign on a terminal, or use a key without a passphrase "
                           "(`ssh-keygen -t ed25519 -N '' -f KEY`) kept at mode 0600")
    if not value:
        raise KeyFileError(f"{path} is encrypted with a passphrase, and the one given is empty",
                           f"give its passphrase (in {PASSPHRASE_ENV} or on the terminal)")
    return value.encode("utf-8")


def _identity(path: Path, public_key: PublicKey) -> str:
    """The comment of KEY.pub, which must hold this key; user@host without one."""
    public_path = _public_key_path(path)
    line = _read_public_key_line(public_path)
    if line is None:
        identity = default_identity()
    else:
        found = parse_public_key(line, str(public_path))
        if found != public_key:
            raise KeyFileError(f"{public_path} holds another key ({found.fingerprint}) than "
                               f"{path} ({public_key.fingerprint}), so it cannot name its "
                               "signer",
                               f"put the public key made with {path} there (`ssh-keygen -y "
                               f"-f {path}` prints it; append the identity to the line)")
        identity = found.comment or default_identity()
    problem = _identity_problem(identity)
    if problem:
        raise KeyFileError(f"{path}: the key's identity {identity!r} {problem}",
                           f"write a one-line comment after the key in {public_path}")
    return identity


def _read_public_key_line(path: Path) -> str | None:
    """The one key line of a .pub file, None when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot open public key {path}: {exc.strerror}",
                           "make it readable, or move it away to sign as user@host") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses directories
        os.close(fd)
        raise KeyFileError(f"{path} is not a regular file", "it should hold the public key")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    lines = [x for x in (text or "").splitlines() if x.strip() and not x.startswith("#")]
    if len(data) > MAX_KEY_FILE_BYTES or len(lines) != 1:
        raise KeyFileError(f"{path} does not hold one public key line",
                           "it should be the one-line `ssh-ed25519 AAAA... identity` file "
                           "made with the key")
    return lines[0]


def _describe_key_data(data: bytes) -> str:
    if data.startswith(KEY_TYPE.encode() + b" ") or data.startswith(b"ssh-"):
        return "it is a public key: pass the private key, the file without .pub"
    if data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"):
        return "it is an encrypted PKCS#8 key"
    if data.startswith(b"-----BEGIN "):
        label = data.split(b"\n", 1)[0].decode("ascii", "replace").strip("- \r")
        return f"it is a PEM {label.removeprefix('BEGIN ')} file"
    return "no '-----BEGIN OPENSSH PRIVATE KEY-----' line"


def _read_key_file(path: Path) -> bytes:
    """Like ssh: refuse a private key that others could read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such private key file",
                           "check the path; " + KEYGEN_HINT) from None
    except OSError as exc:
        raise KeyFileError(f"cannot open private key {path}: {exc.strerror}",
                           "run as the key's owner, or check the path") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses directories
        os.close(fd)
        raise KeyFileError(f"{path} is not a regular file", "pass the private key file")
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{path} is accessible by group or others (mode {mode:04o}); a "
                               "signing key that others can read is no longer secret",
                               f"chmod 600 {path}; if others may have copied it, make a new "
                               "key and remove the old one from every trust policy")
        try:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read private key {path}: {exc.strerror}",
                               "check the file") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key",
                           "pass the private key file")
    return data


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` exclusively (never replacing anything), with exactly `mode`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; a key is never overwritten",
                           "choose another path, or move the old key pair away first") from None
    except OSError as exc:
        hint = ("create the directory first" if exc.errno == errno.ENOENT
                else "check the directory's permissions")
        raise KeyFileError(f"cannot create {path}: {exc.strerror}", hint) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask must not change it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}",
                           "check free space and permissions") from None


def sign_bundle(bundle: Path, key: SigningKey | Path, *,
                signed_at: int | None = None) -> SignatureInfo:
    """Sign a bundle that verifies, in place: add (or replace) `.sandrun/signature`.

    `key` is a loaded key or the path of one (loaded here; pass a loaded key to ask for
    a passphrase once when the key was checked earlier). The archive is rewritten
    atomically (mode 0444) with the builder's order and timestamps and the signature
    after the manifest; every other entry keeps its exact bytes, which is checked
    before anything is written.
    """
    bundle = Path(bundle)
    if not isinstance(key, SigningKey):
        key = load_private_key(key)
    data = _read_bundle(bundle)
    archive = parse_archive(data, str(bundle))

    from sandrun.bundle.verify import verify_archive  # verify imports this module

    result = verify_archive(archive)
    # A previous signature, valid or not, is about to be replaced: only the rest counts.
    blocking = [p for p in result.problems if p.where != SIGNATURE_NAME]
    if blocking or result.manifest is None:
        count = len(blocking)
        raise VerificationError(f"cannot sign {bundle}: it fails verification ({count} "
                                f"problem{'s' if count != 1 else ''})", blocking,
                                "sign only a bundle that verifies: rebuild it with "
                                "`sandrun bundle`")
    manifest = result.manifest
    unsigned = SignatureInfo(manifest_sha256=manifest.digest(), app_name=manifest.app_name,
                             app_version=manifest.app_version, public_key=key.public_key,
                             signer=key.identity,
                             signed_at=format_signed_at(int(time.time()) if signed_at is None
                                                        else signed_at),
                             signature=b"")
    info = dataclasses.replace(unsigned, signature=key.sign(unsigned.signed_message()))

    kept = [e for e in archive.entries if e.name != SIGNATURE_NAME]
    files = [(e.name, archive.read(e), e.mode & 0o7777) for e in kept]
    files.append((SIGNATURE_NAME, info.to_bytes(), SIGNATURE_MODE))
    out = io.BytesIO()
    write_archive(out, archive.preamble, files,
                  date_time=date_time_from_epoch(manifest.source_date_epoch))
    signed = out.getvalue()
    _check_unchanged(bundle, data, archive, kept, signed)
    _write_atomically(bundle, signed)
    return info


def _check_unchanged(bundle: Path, old_data: bytes, old: StrictArchive,
                     kept: list[ZipEntry], new_data: bytes) -> None:
    """Refuse unless every entry but the signature has its old bytes, and the result
    verifies with a valid signature: signing must never change what was built."""
    from sandrun.bundle.verify import verify_archive

    new = parse_archive(new_data, str(bundle))
    hint = ("rebuild the bundle with this sandrun (`sandrun bundle`) and sign it right "
            "after; the bytes differ when another zlib or timestamp wrote it")
    if new.preamble != old.preamble:
        raise SignatureError(f"cannot sign {bundle}: rewriting it would change its preamble",
                             hint)
    for before, after in zip(kept, new.entries, strict=False):
        old_bytes = old_data[before.header_offset:before.data_offset + before.compressed_size]
        new_bytes = new_data[after.header_offset:after.data_offset + after.compressed_size]
        if before.name != after.name or old_bytes != new_bytes:
            raise SignatureError(f"cannot sign {bundle}: rewriting it would change the bytes "
                                 f"of entry {before.name}", hint)
    result = verify_archive(new)
    if not result.ok or result.signature_status.state is not SignatureState.VALID:
        raise SignatureError(f"cannot sign {bundle}: the signed archive does not verify ("
                             + "; ".join(str(p) for p in result.problems) + ")",
                             "this is a bug in sandrun; please report it")


def _read_bundle(bundle: Path) -> bytes:
    """The bundle's bytes, read once without following a symlink (it is replaced later)."""
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SignatureError(f"{bundle} is a symlink; signing replaces the file, so it "
                                 "must be the bundle itself", "pass the bundle's real path"
                                 ) from None
        if exc.errno == errno.ENOENT:
            raise SignatureError(f"{bundle}: no such file", "check the bundle path") from None
        raise SignatureError(f"cannot open {bundle}: {exc.strerror}",
                             "check the path and its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses directories
        os.close(fd)
        raise SignatureError(f"{bundle} is not a regular file", "pass a bundle file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_ARCHIVE_SIZE + 1)
    if len(data) > MAX_ARCHIVE_SIZE:
        raise SignatureError(f"{bundle} is larger than a bundle can be ({MAX_ARCHIVE_SIZE} "
                             "bytes)", "pass a bundle made by `sandrun bundle`")
    return data


def _write_atomically(bundle: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, mode 0444, rename: never a half bundle."""
    import tempfile

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{bundle.name}.", suffix=".tmp",
                                        dir=bundle.parent)
    except OSError as exc:
        raise SignatureError(f"cannot write next to {bundle}: {exc.strerror}",
                             f"signing rewrites the bundle: make {bundle.parent} writable"
                             ) from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), BUNDLE_MODE)
            os.fsync(out.fileno())
        os.replace(tmp_name, bundle)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise SignatureError(f"cannot write {bundle}: {exc.strerror}",
                                 "check free space and permissions") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(bundle.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
