"""The bundle signature as the bundle format knows it: the `.sandrun/signature` entry,
the public key it names, and the check that it signs this bundle's manifest.

Reading and checking a signature belongs to the bundle format (every `verify` and
`exec` does it, on untrusted input); making keys and signing is the publisher's side,
in sandrun.supply.signing.

The entry is canonical JSON (sorted keys, one line):

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

Public keys are read and written with cryptography's OpenSSH serialisation; a key's
comment (its self-asserted identity) is kept beside it, since cryptography drops
comments. cryptography is imported only where a key is parsed or a signature checked:
verifying an unsigned bundle never loads it.
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandrun.bundle.archive import StrictArchive
from sandrun.bundle.manifest import SIGNATURE_NAME, Manifest, canonical_json
from sandrun.errors import ArchiveError, KeyFileError, Problem, SignatureError

SIGNATURE_MODE = 0o644


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_FORMAT = 1


ALGORITHM = "ed25519"


SIGNATURE_DOMAIN = b"sandrun-signature-v1\0"


KEY_TYPE = "ssh-ed25519"


MAX_SIGNATURE_BYTES = 16 * 1024


MAX_IDENTITY_CHARS = 256


SIGNATURE_FIELDS = frozenset({"algorithm", "app_name", "app_version", "fingerprint", "format",
                              "manifest_sha256", "public_key", "signature", "signed_at",
                              "signer"})


KEYGEN_HINT = "create an Ed25519 signing key with `ssh-keygen -t ed25519 -N '' -f KEY`"


SIGN_HINT = "sign it with `sandrun sign --key KEY BUNDLE`"


RESIGN_HINT = ("get the bundle exactly as its publisher signed it, or check its contents and "
               "re-sign it (signing replaces the signature entry)")


_SIGNED_AT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


_OTHER_KEY_TYPES = {"ssh-rsa": "RSA", "ssh-dss": "DSA", "ecdsa-sha2-nistp256": "ECDSA",
                    "ecdsa-sha2-nistp384": "ECDSA", "ecdsa-sha2-nistp521": "ECDSA",
                    "sk-ssh-ed25519@openssh.com": "security-key Ed25519",
                    "sk-ecdsa-sha2-nistp256@openssh.com": "security-key ECDSA"}


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key; equal keys compare equal whatever their comments."""

    raw: bytes  # the 32 key bytes
    comment: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint}, comment={self.comment!r})"

    @classmethod
    def from_key(cls, key: Ed25519PublicKey, comment: str = "") -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return cls(key.public_bytes(Encoding.Raw, PublicFormat.Raw), comment)

    @property
    def key(self) -> Ed25519PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)

    def openssh(self, *, with_comment: bool = True) -> str:
        """The one-line OpenSSH form: `ssh-ed25519 AAAA... [comment]`."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        line = self.key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode("ascii")
        return f"{line} {self.comment}" if with_comment and self.comment else line

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def fingerprint(public_key: PublicKey) -> str:
    """`SHA256:<base64 without padding>`, exactly as `ssh-keygen -l` prints it: the hash
    of the key's SSH wire encoding, which is the base64 field of its OpenSSH line."""
    blob = base64.b64decode(public_key.openssh(with_comment=False).split()[1])
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


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
        base64.b64decode(data, validate=True)  # for a clearer message than cryptography's
    except ValueError:  # binascii.Error, or non-ASCII text
        raise KeyFileError("the key data is not valid base64", "copy the whole line from the "
                           ".pub file; it must not be wrapped or shortened") from None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(f"{KEY_TYPE} {data}".encode("ascii"))
    except ValueError as exc:
        raise KeyFileError(f"the key data is truncated or malformed ({exc})",
                           "copy the whole line from the .pub file") from None
    if not isinstance(key, Ed25519PublicKey):  # the label said ssh-ed25519, so never
        raise KeyFileError("the key data is not an Ed25519 key",
                           "copy the whole line from the .pub file")
    comment = fields[2].strip() if len(fields) > 2 else ""
    problem = _identity_problem(comment)
    if problem:
        raise KeyFileError(f"the key's comment {problem}", "keep the comment on one line")
    return PublicKey.from_key(key, comment)


def _identity_problem(identity: str) -> str | None:
    if len(identity) > MAX_IDENTITY_CHARS:
        return f"is longer than {MAX_IDENTITY_CHARS} characters"
    if not identity.isprintable():  # also catches newlines, which would split the .pub line
        return "contains control characters"
    return None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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
        except ValueError:  # binascii.Error, or non-ASCII text
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

