"""Ed25519 signatures on bundles: OpenSSH keys, the `.sandrun/signature` entry, its check.

Keys are plain OpenSSH Ed25519 keys, so `ssh-keygen` can make, read and fingerprint
them: the private key is an unencrypted "OPENSSH PRIVATE KEY" PEM file (mode 0600) and
the public key the one-line `ssh-ed25519 AAAA... identity` form.

The signature entry `.sandrun/signature` is canonical JSON (sorted keys, one line):

    {"algorithm": "ed25519",
     "app_name": "httpbin", "app_version": "0.10.2",
     "fingerprint": "SHA256:...",               # of public_key, as `ssh-keygen -l` prints it
     "format": 1,
     "manifest_sha256": "<hex>",                # Manifest.digest(): every entry + preamble
     "public_key": "ssh-ed25519 AAAA...",       # OpenSSH line without comment
     "signature": "<base64 of 64 bytes>",
     "signed_at": "2024-05-01T12:00:00Z",       # UTC, seconds
     "signer": "release@example.org"}           # the key's comment (self-asserted)

The Ed25519 signature covers SIGNATURE_DOMAIN + the canonical JSON of every other
field, so the signer, time, app and version are authenticated along with the manifest
digest, and the message cannot be mistaken for anything else the key might sign. The
entry must be byte-for-byte canonical: one meaning, one encoding.

The manifest cannot list the signature (it signs the manifest's digest); `verify`
checks it instead. Signing rewrites the bundle with the signature after the manifest;
every other byte stays as the builder wrote it, so a bundle is reproducible apart from
its signature.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import enum
import errno
import hashlib
import io
import json
import os
import re
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandrun.archive import (
    MAX_ARCHIVE_SIZE,
    StrictArchive,
    ZipEntry,
    date_time_from_epoch,
    parse_archive,
    write_archive,
)
from sandrun.errors import (
    ArchiveError,
    KeyFileError,
    Problem,
    SignatureError,
    VerificationError,
)
from sandrun.manifest import SIGNATURE_NAME, Manifest, canonical_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# cryptography is imported where it is used: verifying an unsigned bundle (every warm
# `sandrun exec` of one) should not pay for loading it.

SIGNATURE_FORMAT = 1
ALGORITHM = "ed25519"
# Prefixed to the signed JSON: a signature made for a bundle can never be valid for any
# other protocol that uses the same key, nor the other way round.
SIGNATURE_DOMAIN = b"sandrun-signature-v1\0"
KEY_TYPE = "ssh-ed25519"
SIGNATURE_MODE = 0o644
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644
BUNDLE_MODE = 0o444
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 16 * 1024
MAX_IDENTITY_CHARS = 256

SIGNATURE_FIELDS = frozenset({"algorithm", "app_name", "app_version", "fingerprint", "format",
                              "manifest_sha256", "public_key", "signature", "signed_at",
                              "signer"})

KEYGEN_HINT = "create an Ed25519 signing key with `ssh-keygen -t ed25519 -N '' -f KEY`"
SIGN_HINT = "sign it with `sandrun sign --key KEY BUNDLE`"
RESIGN_HINT = ("get the bundle exactly as its publisher signed it, or check its contents and "
               "re-sign it (signing replaces the signature entry)")

_OPENSSH_MAGIC = b"openssh-key-v1\0"
_PEM_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_END = b"-----END OPENSSH PRIVATE KEY-----"
_SIGNED_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_OTHER_KEY_TYPES = {"ssh-rsa": "RSA", "ssh-dss": "DSA", "ecdsa-sha2-nistp256": "ECDSA",
                    "ecdsa-sha2-nistp384": "ECDSA", "ecdsa-sha2-nistp521": "ECDSA",
                    "sk-ssh-ed25519@openssh.com": "security-key Ed25519",
                    "sk-ecdsa-sha2-nistp256@openssh.com": "security-key ECDSA"}


# ---------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key; equal keys compare equal whatever their comments."""

    raw: bytes  # the 32 key bytes
    comment: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint}, comment={self.comment!r})"

    @property
    def key(self) -> Ed25519PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw)

    @property
    def blob(self) -> bytes:
        """The SSH wire encoding, which fingerprints hash."""
        return _ssh_string(KEY_TYPE.encode()) + _ssh_string(self.raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)

    def openssh(self, *, with_comment: bool = True) -> str:
        """The one-line OpenSSH form: `ssh-ed25519 AAAA... [comment]`."""
        line = f"{KEY_TYPE} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{line} {self.comment}" if with_comment and self.comment else line

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key; `identity` is its comment (e.g. user@host)."""

    path: Path
    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: PublicKey

    @property
    def identity(self) -> str:
        return self.public_key.comment

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def fingerprint(public_key: PublicKey) -> str:
    """`SHA256:<base64 without padding>`, exactly as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(public_key.blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def default_identity() -> str:
    """user@hostname, as ssh-keygen's default comment."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def generate_key(path: Path, identity: str | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: `path` (private, 0600) and `path.pub` (0644).

    Refuses, writing nothing, when either file already exists: a signing key is never
    overwritten. Returns (private key path, public key path).
    """
    path = Path(path)
    public_path = path.with_name(path.name + ".pub")
    identity = default_identity() if identity is None else identity
    problem = _identity_problem(identity)
    if problem:
        raise KeyFileError(f"cannot use {identity!r} as the key's identity: {problem}",
                           "give a one-line identity such as release@example.org")
    for existing in (path, public_path):
        if os.path.lexists(existing):
            raise KeyFileError(f"{existing} already exists; a key is never overwritten",
                               "choose another path, or move the old key pair away first")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_key = Ed25519PrivateKey.generate()
    public_key = PublicKey(_public_raw(private_key), identity)
    private_pem = _openssh_private_pem(private_key, identity)
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
    """Read an unencrypted OpenSSH Ed25519 private key that only its owner can read."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_key_file(path)
    stripped = data.lstrip()
    if _PEM_BEGIN not in data:
        raise KeyFileError(f"{path} is not an OpenSSH private key ({_describe_key_data(stripped)})",
                           KEYGEN_HINT + "; sandrun reads OpenSSH-format Ed25519 keys")
    try:
        private_key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "needs a password"
        raise KeyFileError(f"{path} is encrypted with a passphrase, which sandrun cannot "
                           "prompt for when it signs",
                           "use a dedicated signing key without a passphrase (`ssh-keygen "
                           "-t ed25519 -N '' -f KEY`) and protect it with mode 0600 on the "
                           "signing machine") from None
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"{path}: unsupported key ({exc})", KEYGEN_HINT) from None
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a valid OpenSSH private key ({exc})",
                           "the file is damaged or truncated; " + KEYGEN_HINT) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

        kind = ("an RSA" if isinstance(private_key, rsa.RSAPrivateKey) else
                "an ECDSA" if isinstance(private_key, ec.EllipticCurvePrivateKey) else
                "a DSA" if isinstance(private_key, dsa.DSAPrivateKey) else "another")
        raise KeyFileError(f"{path} holds {kind} key, not an Ed25519 one; sandrun signs only "
                           "with Ed25519 keys", KEYGEN_HINT)
    try:
        comment = _openssh_private_comment(data)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a valid OpenSSH private key ({exc})",
                           "the file is damaged; " + KEYGEN_HINT) from None
    problem = _identity_problem(comment)
    if problem:
        raise KeyFileError(f"{path}: the key's comment (its identity) {problem}",
                           f"set a one-line comment: `ssh-keygen -c -C 'name@host' -f {path}`")
    return SigningKey(path, private_key, PublicKey(_public_raw(private_key), comment))


def parse_public_key(line: str, where: str) -> PublicKey:
    """Parse `ssh-ed25519 AAAA... [comment]`; `where` (file:line, key) prefixes errors."""
    try:
        return _parse_public_key(line)
    except KeyFileError as exc:
        raise KeyFileError(f"{where}: {exc.message}", exc.hint) from None


def _parse_public_key(line: str) -> PublicKey:
    example = "expected one line `ssh-ed25519 AAAA... [comment]`, the content of a .pub file"
    fields = line.strip().split(None, 2)
    if not fields:
        raise KeyFileError("public key is empty", example)
    if len(fields) < 2:
        raise KeyFileError(f"not an OpenSSH public key: {_shorten(line.strip())!r}", example)
    key_type, data = fields[0], fields[1]
    if key_type != KEY_TYPE:
        if key_type in _OTHER_KEY_TYPES:
            raise KeyFileError(f"{key_type} keys ({_OTHER_KEY_TYPES[key_type]}) are not "
                               f"supported; only {KEY_TYPE} keys are", KEYGEN_HINT)
        raise KeyFileError(f"not an OpenSSH public key: it starts with {_shorten(key_type)!r}, "
                           f"not {KEY_TYPE!r} (options before the key type are not supported)",
                           example)
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("the key data is not valid base64", "copy the whole line from the "
                           ".pub file; it must not be wrapped or shortened") from None
    reader = _SshReader(blob)
    try:
        blob_type = reader.string()
        raw = reader.string()
        reader.end()
    except ValueError:
        raise KeyFileError("the key data is truncated or malformed",
                           "copy the whole line from the .pub file") from None
    if blob_type != KEY_TYPE.encode() or len(raw) != 32:
        raise KeyFileError(f"the key data is not an Ed25519 key (it says {blob_type[:40]!r}, "
                           f"{len(raw)} key bytes)", "copy the whole line from the .pub file")
    comment = fields[2].strip() if len(fields) > 2 else ""
    problem = _identity_problem(comment)
    if problem:
        raise KeyFileError(f"the key's comment {problem}", "keep the comment on one line")
    return PublicKey(raw, comment)


def _public_raw(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def _identity_problem(identity: str) -> str | None:
    if len(identity) > MAX_IDENTITY_CHARS:
        return f"is longer than {MAX_IDENTITY_CHARS} characters"
    if not identity.isprintable():  # also catches newlines, which would split the .pub line
        return "contains control characters"
    return None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _SshReader:
    """Reads the SSH wire format (uint32 and length-prefixed strings)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ValueError("truncated")
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        if self.pos + length > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("trailing data")


def _openssh_private_pem(private_key: Ed25519PrivateKey, comment: str) -> bytes:
    """The unencrypted "openssh-key-v1" format, as ssh-keygen writes it, with a comment.

    (cryptography writes the same container but without a comment, and the comment is
    where the key's identity lives.)
    """
    from cryptography.hazmat.primitives import serialization

    public_raw = _public_raw(private_key)
    seed = private_key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    public_blob = _ssh_string(KEY_TYPE.encode()) + _ssh_string(public_raw)
    check = os.urandom(4)
    private = (check + check + _ssh_string(KEY_TYPE.encode()) + _ssh_string(public_raw)
               + _ssh_string(seed + public_raw) + _ssh_string(comment.encode("utf-8")))
    private += bytes(range(1, 1 + (-len(private)) % 8))  # pad to the "none" cipher's block
    body = (_OPENSSH_MAGIC + _ssh_string(b"none") + _ssh_string(b"none") + _ssh_string(b"")
            + struct.pack(">I", 1) + _ssh_string(public_blob) + _ssh_string(private))
    encoded = base64.b64encode(body)
    lines = [encoded[i:i + 70] for i in range(0, len(encoded), 70)]
    return b"\n".join([_PEM_BEGIN, *lines, _PEM_END]) + b"\n"


def _openssh_private_comment(data: bytes) -> str:
    """The comment of an unencrypted one-key OpenSSH private key (cryptography drops it)."""
    start = data.index(_PEM_BEGIN) + len(_PEM_BEGIN)
    end = data.find(_PEM_END, start)
    if end < 0:
        raise ValueError("no END line")
    try:
        body = base64.b64decode(b"".join(data[start:end].split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None
    if not body.startswith(_OPENSSH_MAGIC):
        raise ValueError("bad magic")
    reader = _SshReader(body[len(_OPENSSH_MAGIC):])
    cipher, _kdf, _kdf_options = reader.string(), reader.string(), reader.string()
    if cipher != b"none" or reader.uint32() != 1:
        raise ValueError("expected one unencrypted key")
    reader.string()  # public key blob
    private = _SshReader(reader.string())
    private.uint32()
    private.uint32()  # the two check integers
    private.string()  # key type
    private.string()  # public key
    private.string()  # private key
    try:
        return private.string().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the comment is not UTF-8") from None


# ---------------------------------------------------------------------------------------
# The signature entry


@dataclass(frozen=True)
class SignatureInfo:
    """The content of `.sandrun/signature` (see the module docstring)."""

    manifest_sha256: str
    app_name: str
    app_version: str
    public_key: PublicKey
    signer: str
    signed_at: str  # UTC, "YYYY-MM-DDTHH:MM:SSZ"
    signature: bytes = field(repr=False)
    format: int = SIGNATURE_FORMAT
    algorithm: str = ALGORITHM

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def describe(self) -> str:
        """For people: `signed by NAME (SHA256:...) at TIME`."""
        who = f"{self.signer} ({self.fingerprint})" if self.signer else self.fingerprint
        return f"signed by {who} at {self.signed_at}"

    def signed_fields(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "app_name": self.app_name,
                "app_version": self.app_version, "fingerprint": self.fingerprint,
                "format": self.format, "manifest_sha256": self.manifest_sha256,
                "public_key": self.public_key.openssh(with_comment=False),
                "signed_at": self.signed_at, "signer": self.signer}

    def signed_message(self) -> bytes:
        """What the Ed25519 signature covers: every field but the signature itself."""
        return SIGNATURE_DOMAIN + canonical_json(self.signed_fields())

    def to_bytes(self) -> bytes:
        fields = self.signed_fields()
        fields["signature"] = base64.b64encode(self.signature).decode("ascii")
        return canonical_json(fields)

    def verifies(self) -> bool:
        return self.public_key.verify(self.signature, self.signed_message())

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureInfo:
        """Parse and check the fields (not the signature); SignatureError says what is wrong."""
        hint = RESIGN_HINT
        try:
            obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, json.JSONDecodeError, _DuplicateKey) as exc:
            raise SignatureError(f"is not valid JSON ({exc})", hint) from None
        if not isinstance(obj, dict):
            raise SignatureError(f"is JSON {type(obj).__name__}, not an object", hint)
        version = obj.get("format", SIGNATURE_FORMAT)  # a missing field is reported below
        if version != SIGNATURE_FORMAT or isinstance(version, bool):
            raise SignatureError(f"has format {version!r}; this sandrun reads signature "
                                 f"format {SIGNATURE_FORMAT}",
                                 "re-sign the bundle with this sandrun, or upgrade sandrun")
        missing = sorted(SIGNATURE_FIELDS - obj.keys())
        unknown = sorted(obj.keys() - SIGNATURE_FIELDS)
        if missing or unknown:
            parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            raise SignatureError(f"has wrong fields: {'; '.join(parts)}", hint)
        wrong_type = sorted(k for k in SIGNATURE_FIELDS - {"format"}
                            if not isinstance(obj[k], str))
        if wrong_type:
            raise SignatureError(f"field(s) {', '.join(wrong_type)} must be strings", hint)
        if obj["algorithm"] != ALGORITHM:
            raise SignatureError(f"algorithm {obj['algorithm']!r} is not supported (only "
                                 f"{ALGORITHM!r})", hint)
        if not _SHA256_HEX_RE.match(obj["manifest_sha256"]):
            raise SignatureError("manifest_sha256 is not 64 lower-case hex digits", hint)
        try:
            public_key = _parse_public_key(obj["public_key"])
        except KeyFileError as exc:
            raise SignatureError(f"public_key: {exc.message}", hint) from None
        if public_key.comment:
            raise SignatureError("public_key carries a comment; the identity belongs in "
                                 "'signer'", hint)
        if obj["fingerprint"] != fingerprint(public_key):
            raise SignatureError(f"fingerprint {obj['fingerprint']!r} is not the fingerprint "
                                 f"of public_key ({fingerprint(public_key)})", hint)
        for key in ("signer", "app_name", "app_version"):
            problem = _identity_problem(obj[key])
            if problem:
                raise SignatureError(f"{key} {problem}", hint)
        if not _valid_signed_at(obj["signed_at"]):
            raise SignatureError(f"signed_at {obj['signed_at']!r} is not a UTC time like "
                                 "2024-05-01T12:00:00Z", hint)
        try:
            raw_signature = base64.b64decode(obj["signature"], validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature is not valid base64", hint) from None
        if len(raw_signature) != 64:
            raise SignatureError(f"signature is {len(raw_signature)} bytes; an Ed25519 "
                                 "signature is 64", hint)
        info = cls(manifest_sha256=obj["manifest_sha256"], app_name=obj["app_name"],
                   app_version=obj["app_version"], public_key=public_key, signer=obj["signer"],
                   signed_at=obj["signed_at"], signature=raw_signature)
        if info.to_bytes() != data:
            # One meaning, one encoding: other tools must not read something else into it.
            raise SignatureError("is not canonical JSON (sorted keys, no spaces, ASCII, one "
                                 "trailing newline)", hint)
        return info


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"key {key!r} appears twice")
        obj[key] = value
    return obj


def _valid_signed_at(text: str) -> bool:
    if not _SIGNED_AT_RE.match(text):
        return False
    try:
        datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def format_signed_at(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SignatureState(enum.Enum):
    UNSIGNED = "unsigned"
    VALID = "valid"
    INVALID = "invalid"


@dataclass(frozen=True)
class SignatureStatus:
    """What `verify` found: no signature, a valid one (`info`), or an invalid one (`problems`).

    `info` is set only when the signature is valid for this bundle's manifest: an invalid
    entry's claims (signer, key) are never handed out.
    """

    state: SignatureState
    info: SignatureInfo | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def signed(self) -> bool:
        return self.state is not SignatureState.UNSIGNED

    def describe(self) -> str:
        """One line for people: `signed by X (SHA256:...) at T`, `unsigned`, or why invalid."""
        if self.state is SignatureState.VALID and self.info is not None:
            return self.info.describe()
        if self.state is SignatureState.UNSIGNED:
            return "unsigned"
        return "invalid signature: " + "; ".join(p.what for p in self.problems)


UNSIGNED = SignatureStatus(SignatureState.UNSIGNED)


def signature_status(archive: StrictArchive, manifest: Manifest | None) -> SignatureStatus:
    """Check the signature entry, if any, against `manifest` (the bundle's own, verified).

    Every finding is a Problem on `.sandrun/signature`. A valid signature says only that
    the key signed this manifest; whether that key is trusted is trust.check_trust's job.
    """
    entries = [e for e in archive.entries if e.name == SIGNATURE_NAME]
    if not entries:
        return UNSIGNED

    def invalid(what: str, hint: str = RESIGN_HINT) -> SignatureStatus:
        return SignatureStatus(SignatureState.INVALID,
                               problems=(Problem(SIGNATURE_NAME, what, hint),))

    if len(entries) > 1:
        return invalid(f"{len(entries)} signature entries; a bundle carries at most one",
                       "re-sign the bundle: signing replaces every signature entry")
    entry = entries[0]
    mode = entry.mode & 0o7777
    if mode != SIGNATURE_MODE:
        return invalid(f"mode {mode:04o}; the signature entry is always {SIGNATURE_MODE:04o}")
    if entry.size > MAX_SIGNATURE_BYTES:
        return invalid(f"is {entry.size} bytes; a signature entry is at most "
                       f"{MAX_SIGNATURE_BYTES}")
    if archive.read_problem(entry) is not None:
        return invalid("cannot be read, so the signature cannot be checked")
    try:
        data = archive.read(entry)
    except ArchiveError as exc:
        return invalid(f"cannot be read ({exc.message.removeprefix(SIGNATURE_NAME + ': ')})")
    if manifest is None:
        return invalid("cannot be checked: the manifest it signs is missing or malformed",
                       "rebuild the bundle with `sandrun bundle`, then sign it")
    try:
        info = SignatureInfo.from_bytes(data)
    except SignatureError as exc:
        return invalid(exc.message, exc.hint)

    problems = []
    if not info.verifies():
        problems.append(Problem(
            SIGNATURE_NAME, f"the Ed25519 signature does not verify with the key it names "
                            f"({info.fingerprint}): the entry was altered after signing (its "
                            "signer, time, app or digest) or was not made with that key",
            RESIGN_HINT))
    digest = manifest.digest()
    if info.manifest_sha256 != digest:
        problems.append(Problem(
            SIGNATURE_NAME, f"signs manifest sha256 {info.manifest_sha256}, but this bundle's "
                            f"manifest is {digest}: the signature was copied from another "
                            "bundle, or the bundle changed after signing", RESIGN_HINT))
    if (info.app_name, info.app_version) != (manifest.app_name, manifest.app_version):
        problems.append(Problem(
            SIGNATURE_NAME, f"names app {info.app_name} {info.app_version}, but the manifest "
                            f"says {manifest.app_name} {manifest.app_version}", RESIGN_HINT))
    if problems:
        return SignatureStatus(SignatureState.INVALID, problems=tuple(problems))
    return SignatureStatus(SignatureState.VALID, info)


def read_signature(archive: StrictArchive, manifest: Manifest) -> SignatureInfo | None:
    """The valid signature of a bundle, None when unsigned; SignatureError when invalid."""
    status = signature_status(archive, manifest)
    if status.state is SignatureState.INVALID:
        raise SignatureError(f"{SIGNATURE_NAME}: " + "; ".join(p.what for p in status.problems),
                             status.problems[0].hint)
    return status.info


# ---------------------------------------------------------------------------------------
# Signing


def sign_bundle(bundle: Path, key_path: Path, *, signed_at: int | None = None) -> SignatureInfo:
    """Sign a bundle that verifies, in place: add (or replace) `.sandrun/signature`.

    The archive is rewritten atomically (mode 0444) with the builder's order and
    timestamps and the signature after the manifest; every other entry keeps its exact
    bytes, which is checked before anything is written.
    """
    bundle = Path(bundle)
    key = load_private_key(key_path)
    data = _read_bundle(bundle)
    archive = parse_archive(data, str(bundle))

    from sandrun.verify import verify_archive  # verify imports this module

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
    from sandrun.verify import verify_archive

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
