"""The bundle signature as the bundle format knows it: an SSHSIG signature (the format of
`ssh-keygen -Y sign`, which git uses for SSH signing) in the `.sandrun/signature` entry,
and the check that it signs this bundle.

Reading and checking a signature belongs to the bundle format (every `verify` and
`exec` does it, on untrusted input); making keys and signing is the publisher's side,
in sandrun.supply.signing.

What is signed (`signed_message`, what `sandrun inspect --sshsig DIR` writes to
DIR/message) is four lines of ASCII, each ending in a newline:

    sandrun signed bundle v1
    app: httpbin
    version: 0.10.2
    manifest-sha256: <64 lower-case hex digits: Manifest.digest()>

The manifest digest covers every entry, the SBOM, the shebang and (inside the manifest)
the app name and version; the app name and version are repeated so that a person or a
script looking at the message sees what it is about. The message is a function of the
manifest alone: anyone holding the bundle can rebuild it, and `ssh-keygen -Y verify -n
sandrun` checks it as any other file.

The signature is SSHSIG (OpenSSH's PROTOCOL.sshsig): the blob

    "SSHSIG" | uint32 1 | string publickey | string namespace | string reserved ("")
           | string hash_algorithm | string signature

signs "SSHSIG" | string namespace | string reserved | string hash_algorithm |
string H(message). The namespace is always `sandrun` (a signature made for git or for
files cannot be passed off as a bundle signature); the hash is sha512 (what ssh-keygen
uses) or sha256. The entry is the signature exactly as `ssh-keygen -Y sign` armors it
("-----BEGIN SSH SIGNATURE-----", base64 in lines of 70, "-----END SSH SIGNATURE-----"
and a newline) and nothing else: one meaning, one encoding.

Keys: `ssh-ed25519` and `sk-ssh-ed25519@openssh.com` (an Ed25519 key on a FIDO security
key; `ssh-keygen -t ed25519-sk`). A security key signs SHA256(application) | flags |
uint32 counter | SHA256(signed data) and appends the flags and counter to the
signature; sandrun requires the user-presence flag (the key was touched), as sshd does
by default. RSA, DSA and ECDSA keys (including sk-ecdsa) are refused with a message
that says so: one signature algorithm, with deterministic signatures and no nonce to
get wrong, keeps the verifier small.

The parser is strict because the bundle author is an adversary: every length is checked
against what is left and bounded, nothing may trail, reserved must be empty, and the
signature's algorithm must be its key's. A key that is a point of small order, or not
canonically encoded, is refused wherever a key is read (signatures, trust policies,
agents): with such a key anyone can forge a signature that cryptography accepts, e.g.
the identity point with R = identity and S = 0. Signatures of sandrun before SSHSIG (a JSON
entry) are refused with a message saying to re-sign: accepting two formats would keep
the weaker one alive.

cryptography is imported only where a signature is checked: verifying an unsigned
bundle never loads it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct
from dataclasses import dataclass, field

from sandrun.bundle.archive import StrictArchive
from sandrun.bundle.manifest import SIGNATURE_NAME, Manifest
from sandrun.errors import ArchiveError, KeyFileError, Problem, SignatureError

SIGNATURE_MODE = 0o644

NAMESPACE = "sandrun"

MESSAGE_HEADER = "sandrun signed bundle v1"

SSHSIG_MAGIC = b"SSHSIG"

SSHSIG_VERSION = 1

HASH_ALGORITHMS = ("sha512", "sha256")

DEFAULT_HASH_ALGORITHM = "sha512"  # what ssh-keygen -Y sign uses

ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"

ARMOR_END = "-----END SSH SIGNATURE-----"

ARMOR_WIDTH = 70  # ssh-keygen's line length

ED25519 = "ssh-ed25519"

SK_ED25519 = "sk-ssh-ed25519@openssh.com"

KEY_TYPE = ED25519  # what sandrun makes and signs with itself

KEY_TYPES = (ED25519, SK_ED25519)

SK_USER_PRESENT = 0x01  # FIDO flag: the user touched the key

MAX_SIGNATURE_BYTES = 16 * 1024  # the entry

MAX_BLOB_BYTES = 4 * 1024  # a decoded SSHSIG blob (an Ed25519 one is ~150 bytes)

MAX_APPLICATION_CHARS = 256

MAX_NAMESPACE_CHARS = 64

MAX_IDENTITY_CHARS = 256

KEYGEN_HINT = "create an Ed25519 signing key with `ssh-keygen -t ed25519 -N '' -f KEY`"

SIGN_HINT = "sign it with `sandrun sign --key KEY BUNDLE`"

RESIGN_HINT = ("get the bundle exactly as its publisher signed it, or check its contents and "
               "re-sign it with `sandrun sign` (signing replaces the signature entry)")

OLD_FORMAT_HINT = ("re-sign the bundle: `sandrun sign -k KEY BUNDLE`, `sandrun sign --agent "
                   "BUNDLE`, or `ssh-keygen -Y sign -n sandrun` over the message `sandrun "
                   "inspect --sshsig DIR BUNDLE` writes, then `sandrun sign --sshsig "
                   "DIR/message.sig BUNDLE`")

_OTHER_KEY_TYPES = {"ssh-rsa": "RSA", "ssh-dss": "DSA", "ecdsa-sha2-nistp256": "ECDSA",
                    "ecdsa-sha2-nistp384": "ECDSA", "ecdsa-sha2-nistp521": "ECDSA",
                    "sk-ecdsa-sha2-nistp256@openssh.com": "security-key ECDSA",
                    "rsa-sha2-256": "RSA", "rsa-sha2-512": "RSA"}

_UNSUPPORTED_HINT = ("use an Ed25519 key: `ssh-keygen -t ed25519`, or `ssh-keygen -t "
                     "ed25519-sk` for one on a security key")


class _Malformed(ValueError):
    """Wire data that does not parse; the message says what is wrong."""


class _UnusableKey(_Malformed):
    """Well-formed key data that is no Ed25519 key anyone holds a private key for."""


class _Wire:
    """A reader of SSH wire encoding (RFC 4251) that checks every length."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def left(self) -> int:
        return len(self.data) - self.offset

    def take(self, count: int, what: str) -> bytes:
        if count > self.left():
            raise _Malformed(f"{what} is truncated ({count} bytes announced, "
                             f"{self.left()} left)")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def string(self, what: str, limit: int) -> bytes:
        length = self.u32(f"the length of {what}")
        if length > limit:
            raise _Malformed(f"{what} is {length} bytes long (at most {limit})")
        return self.take(length, what)

    def text(self, what: str, limit: int) -> str:
        raw = self.string(what, limit)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} is not ASCII") from None
        if not text.isprintable():
            raise _Malformed(f"{what} contains control characters")
        return text

    def end(self, what: str) -> None:
        if self.left():
            raise _Malformed(f"{self.left()} unexpected bytes follow {what}")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


# ---------------------------------------------------------------------------------------
# Public keys


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, plain or on a security key; equal keys compare equal
    whatever their comments."""

    key_type: str  # ssh-ed25519 or sk-ssh-ed25519@openssh.com
    raw: bytes  # the 32 Ed25519 key bytes
    application: str = ""  # a security key's FIDO application (usually "ssh:")
    comment: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_type} {self.fingerprint}, comment={self.comment!r})"

    @classmethod
    def from_key(cls, key: object, comment: str = "") -> PublicKey:
        """From cryptography's Ed25519PublicKey."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        assert isinstance(key, Ed25519PublicKey)
        return cls(ED25519, key.public_bytes(Encoding.Raw, PublicFormat.Raw), "", comment)

    @property
    def blob(self) -> bytes:
        """The SSH wire encoding: the base64 field of the OpenSSH line."""
        blob = _string(self.key_type.encode()) + _string(self.raw)
        if self.key_type == SK_ED25519:
            blob += _string(self.application.encode())
        return blob

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)

    @property
    def on_security_key(self) -> bool:
        return self.key_type == SK_ED25519

    def openssh(self, *, with_comment: bool = True) -> str:
        """The one-line OpenSSH form: `ssh-ed25519 AAAA... [comment]`."""
        line = f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{line} {self.comment}" if with_comment and self.comment else line

    def verify(self, signature: bytes, message: bytes) -> bool:
        """The raw Ed25519 check (no SSH framing)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if ed25519_key_problem(self.raw) is not None:  # parse_key_blob refuses these
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def fingerprint(public_key: PublicKey) -> str:
    """`SHA256:<base64 without padding>`, exactly as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(public_key.blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _unsupported_type(key_type: str) -> str:
    kind = _OTHER_KEY_TYPES.get(key_type)
    shown = _shorten(key_type)
    if kind:
        return (f"{shown} keys ({kind}) are not supported; only {ED25519} and {SK_ED25519} "
                "keys are")
    return f"key type {shown!r} is not supported; only {ED25519} and {SK_ED25519} keys are"


# Ed25519 points of small order (the 8-torsion: orders 1, 2, 4 and 8), by their y
# coordinate (little-endian, sign bit aside). With such a "public key" no private key is
# needed: the identity with R = identity, S = 0 verifies any message with cryptography
# 50 (OpenSSL), so a signature by one proves nothing. libsodium refuses the same points.
_ED25519_P = 2**255 - 19
_ED25519_ORDER8_Y = int.from_bytes(bytes.fromhex(
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
_SMALL_ORDER_Y = frozenset((0, 1, _ED25519_P - 1, _ED25519_ORDER8_Y,
                            _ED25519_P - _ED25519_ORDER8_Y))


def ed25519_key_problem(raw: bytes) -> str | None:
    """Why 32 bytes are not an Ed25519 public key anyone could have a private key for:
    a non-canonical encoding (y >= p), or a point of small order (whatever the sign
    bit); None for a usable key."""
    if len(raw) != 32:
        return f"is {len(raw)} bytes, not 32"
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _ED25519_P:
        return "is not canonically encoded (its y coordinate is not below 2^255 - 19)"
    if y in _SMALL_ORDER_Y:
        return ("is a point of small order, for which anyone can forge signatures without "
                "a private key")
    return None


def parse_key_blob(blob: bytes) -> PublicKey:
    """A public key from its wire encoding; _Malformed says what is wrong."""
    wire = _Wire(blob)
    key_type = wire.text("the key type", 64)
    if key_type not in KEY_TYPES:
        raise _Malformed(_unsupported_type(key_type))
    raw = wire.string("the Ed25519 key", 32)
    if len(raw) != 32:
        raise _Malformed(f"the Ed25519 key is {len(raw)} bytes, not 32")
    problem = ed25519_key_problem(raw)
    if problem:
        raise _UnusableKey(f"the Ed25519 key {problem}")
    application = ""
    if key_type == SK_ED25519:
        application = wire.text("the security key's application", MAX_APPLICATION_CHARS)
        if not application:
            raise _Malformed("the security key's application is empty")
    wire.end("the key")
    return PublicKey(key_type, raw, application)


def parse_public_key(line: str, where: str) -> PublicKey:
    """Parse `ssh-ed25519 AAAA... [comment]` (or sk-ssh-ed25519@openssh.com); `where`
    (file:line, key) prefixes errors."""
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
    if key_type not in KEY_TYPES:
        if key_type in _OTHER_KEY_TYPES:
            raise KeyFileError(_unsupported_type(key_type), _UNSUPPORTED_HINT)
        raise KeyFileError(f"not an OpenSSH public key: it starts with {_shorten(key_type)!r}, "
                           f"not {ED25519!r} or {SK_ED25519!r} (options before the key type "
                           "are not supported)", example)
    try:
        blob = base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise KeyFileError("the key data is not valid base64", "copy the whole line from the "
                           ".pub file; it must not be wrapped or shortened") from None
    try:
        key = parse_key_blob(blob)
    except _UnusableKey as exc:
        raise KeyFileError(f"not a usable public key: {exc}",
                           "trust only a key its signer made (ssh-keygen never makes such a "
                           "key): ask them for their .pub file") from None
    except _Malformed as exc:
        raise KeyFileError(f"the key data is truncated or malformed ({exc})",
                           "copy the whole line from the .pub file") from None
    if key.key_type != key_type:
        raise KeyFileError(f"the key data is truncated or malformed (it holds a {key.key_type} "
                           f"key, but the line says {key_type})",
                           "copy the whole line from the .pub file")
    comment = fields[2].strip() if len(fields) > 2 else ""
    problem = _identity_problem(comment)
    if problem:
        raise KeyFileError(f"the key's comment {problem}", "keep the comment on one line")
    return PublicKey(key.key_type, key.raw, key.application, comment)


def _identity_problem(identity: str) -> str | None:
    if len(identity) > MAX_IDENTITY_CHARS:
        return f"is longer than {MAX_IDENTITY_CHARS} characters"
    if not identity.isprintable():  # also catches newlines, which would split the .pub line
        return "contains control characters"
    return None


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------
# The signed message and SSHSIG


def signed_message(manifest: Manifest) -> bytes:
    """The exact bytes a bundle signature signs (see the module docstring)."""
    return (f"{MESSAGE_HEADER}\n"
            f"app: {manifest.app_name}\n"
            f"version: {manifest.app_version}\n"
            f"manifest-sha256: {manifest.digest()}\n").encode("ascii")


def signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key signs for an SSHSIG signature of `message` (PROTOCOL.sshsig)."""
    digest = hashlib.new(hash_algorithm, message).digest()
    return (SSHSIG_MAGIC + _string(namespace.encode()) + _string(b"")
            + _string(hash_algorithm.encode()) + _string(digest))


@dataclass(frozen=True)
class SshSignature:
    """A parsed SSHSIG signature: the key, namespace and hash it names, and the Ed25519
    signature (with a security key's flags and counter)."""

    public_key: PublicKey
    namespace: str
    hash_algorithm: str
    signature: bytes = field(repr=False)  # the 64 Ed25519 signature bytes
    sk_flags: int | None = None  # security keys only
    sk_counter: int | None = None

    def signature_blob(self) -> bytes:
        """The SSH signature encoding: string type, string signature [, flags, counter]."""
        blob = _string(self.public_key.key_type.encode()) + _string(self.signature)
        if self.public_key.on_security_key:
            assert self.sk_flags is not None and self.sk_counter is not None
            blob += bytes([self.sk_flags]) + struct.pack(">I", self.sk_counter)
        return blob

    def to_blob(self) -> bytes:
        return (SSHSIG_MAGIC + struct.pack(">I", SSHSIG_VERSION)
                + _string(self.public_key.blob) + _string(self.namespace.encode())
                + _string(b"") + _string(self.hash_algorithm.encode())
                + _string(self.signature_blob()))

    def armor(self) -> bytes:
        """As ssh-keygen writes it, and the only form a bundle's entry may take."""
        text = base64.b64encode(self.to_blob()).decode("ascii")
        lines = [text[i:i + ARMOR_WIDTH] for i in range(0, len(text), ARMOR_WIDTH)]
        return ("\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n").encode("ascii")

    def verifies(self, message: bytes) -> bool:
        """Whether this is a valid signature of `message` by its key, in its namespace.
        (The namespace and the user-presence flag are policy: checked by the caller.)"""
        data = signed_data(self.namespace, self.hash_algorithm, message)
        if self.public_key.on_security_key:
            assert self.sk_flags is not None and self.sk_counter is not None
            data = (hashlib.sha256(self.public_key.application.encode()).digest()
                    + bytes([self.sk_flags]) + struct.pack(">I", self.sk_counter)
                    + hashlib.sha256(data).digest())
        return self.public_key.verify(self.signature, data)

    @property
    def user_present(self) -> bool:
        return not self.public_key.on_security_key or bool(
            (self.sk_flags or 0) & SK_USER_PRESENT)

    @classmethod
    def from_parts(cls, public_key: PublicKey, namespace: str, hash_algorithm: str,
                   signature_blob: bytes) -> SshSignature:
        """Wrap an SSH signature blob (what a key or ssh-agent returns); SignatureError."""
        try:
            return cls._from_parts(public_key, namespace, hash_algorithm, signature_blob)
        except _Malformed as exc:
            raise SignatureError(f"the signature is malformed: {exc}", KEYGEN_HINT) from None

    @classmethod
    def _from_parts(cls, public_key: PublicKey, namespace: str, hash_algorithm: str,
                    signature_blob: bytes) -> SshSignature:
        wire = _Wire(signature_blob)
        algorithm = wire.text("the signature algorithm", 64)
        if algorithm != public_key.key_type:
            raise _Malformed(f"the signature algorithm is {_shorten(algorithm)!r}, but the "
                             f"key is {public_key.key_type}")
        signature = wire.string("the Ed25519 signature", 64)
        if len(signature) != 64:
            raise _Malformed(f"the Ed25519 signature is {len(signature)} bytes, not 64")
        flags = counter = None
        if public_key.on_security_key:
            flags = wire.byte("the security key's flags")
            counter = wire.u32("the security key's counter")
        wire.end("the signature")
        return cls(public_key, namespace, hash_algorithm, signature, flags, counter)

    @classmethod
    def from_blob(cls, blob: bytes) -> SshSignature:
        """Parse a decoded SSHSIG blob strictly; SignatureError says what is wrong."""
        try:
            return cls._from_blob(blob)
        except _Malformed as exc:
            raise SignatureError(f"is not a valid SSH signature: {exc}", RESIGN_HINT) from None

    @classmethod
    def _from_blob(cls, blob: bytes) -> SshSignature:
        if len(blob) > MAX_BLOB_BYTES:
            raise _Malformed(f"it is {len(blob)} bytes (at most {MAX_BLOB_BYTES})")
        wire = _Wire(blob)
        if wire.take(len(SSHSIG_MAGIC), "the SSHSIG magic") != SSHSIG_MAGIC:
            raise _Malformed("it does not start with the SSHSIG magic")
        version = wire.u32("the version")
        if version != SSHSIG_VERSION:
            raise _Malformed(f"it is SSHSIG version {version}; this sandrun reads version "
                             f"{SSHSIG_VERSION}")
        key_blob = wire.string("the public key", 1024)
        try:
            public_key = parse_key_blob(key_blob)
        except _Malformed as exc:
            raise _Malformed(f"its public key: {exc}") from None
        namespace = wire.text("the namespace", MAX_NAMESPACE_CHARS)
        if wire.string("the reserved field", 1024):
            raise _Malformed("its reserved field is not empty")
        hash_algorithm = wire.text("the hash algorithm", 64)
        if hash_algorithm not in HASH_ALGORITHMS:
            raise _Malformed(f"hash algorithm {_shorten(hash_algorithm)!r} is not one of "
                             f"{', '.join(HASH_ALGORITHMS)}")
        signature_blob = wire.string("the signature", 1024)
        wire.end("the signature")
        return cls._from_parts(public_key, namespace, hash_algorithm, signature_blob)

    @classmethod
    def from_armor(cls, data: bytes, *, canonical: bool) -> SshSignature:
        """Parse an armored signature. `canonical`: it must be exactly as `armor()` writes
        it (a bundle entry); otherwise CRLF line ends, surrounding blank space and other
        line lengths are accepted (a file someone made), but nothing else."""
        hint = RESIGN_HINT
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("is not an armored SSH signature (it is not ASCII text)",
                                 hint) from None
        lines = text.replace("\r\n", "\n").strip().split("\n") if not canonical else (
            text.split("\n"))
        if canonical:
            if not text.endswith("\n"):
                raise SignatureError("is not an armored SSH signature exactly as ssh-keygen "
                                     "writes it (no final newline)", hint)
            lines = lines[:-1]
        if not lines or lines[0].strip() != ARMOR_BEGIN:
            raise SignatureError(f"is not an armored SSH signature (the first line is not "
                                 f"{ARMOR_BEGIN!r})", hint)
        if len(lines) < 3 or lines[-1].strip() != ARMOR_END:
            raise SignatureError(f"is not an armored SSH signature (the last line is not "
                                 f"{ARMOR_END!r}): truncated?", hint)
        body = [line.strip() for line in lines[1:-1]]
        try:
            blob = base64.b64decode("".join(body).encode("ascii"), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("is not an armored SSH signature (its body is not valid "
                                 "base64): damaged or truncated", hint) from None
        signature = cls.from_blob(blob)
        if canonical and signature.armor() != data:
            # One meaning, one encoding: other tools must not read something else into it.
            raise SignatureError("is not armored exactly as ssh-keygen writes it (lines of "
                                 f"{ARMOR_WIDTH} base64 characters, no other text)", hint)
        return signature


# ---------------------------------------------------------------------------------------
# The signature of a bundle


@dataclass(frozen=True)
class SignatureInfo:
    """A bundle signature that verified: the manifest it signs and the SSHSIG."""

    manifest_sha256: str
    app_name: str
    app_version: str
    sshsig: SshSignature

    @property
    def public_key(self) -> PublicKey:
        return self.sshsig.public_key

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def key_type(self) -> str:
        return self.public_key.key_type

    def describe(self) -> str:
        """For people: `signed by ssh-ed25519 key SHA256:...`."""
        text = f"signed by {self.key_type} key {self.fingerprint}"
        if self.public_key.on_security_key:
            text += f" (security key, touched, counter {self.sshsig.sk_counter})"
        return text

    def to_bytes(self) -> bytes:
        """The entry: the armored SSHSIG."""
        return self.sshsig.armor()

    def to_json(self) -> dict[str, object]:
        info: dict[str, object] = {
            "format": "sshsig", "namespace": self.sshsig.namespace,
            "hash_algorithm": self.sshsig.hash_algorithm, "key_type": self.key_type,
            "fingerprint": self.fingerprint,
            "public_key": self.public_key.openssh(with_comment=False),
            "manifest_sha256": self.manifest_sha256}
        if self.public_key.on_security_key:
            info.update(sk_application=self.public_key.application,
                        sk_flags=self.sshsig.sk_flags, sk_counter=self.sshsig.sk_counter)
        return info


class SignatureState(enum.Enum):
    UNSIGNED = "unsigned"
    VALID = "valid"
    INVALID = "invalid"


@dataclass(frozen=True)
class SignatureStatus:
    """What `verify` found: no signature, a valid one (`info`), or an invalid one (`problems`).

    `info` is set only when the signature is valid for this bundle's manifest: an invalid
    entry's claims (its key) are never handed out.
    """

    state: SignatureState
    info: SignatureInfo | None = None
    problems: tuple[Problem, ...] = ()

    def describe(self) -> str:
        """One line for people: `signed by ... key SHA256:...`, `unsigned`, or why invalid."""
        if self.state is SignatureState.VALID and self.info is not None:
            return self.info.describe()
        if self.state is SignatureState.UNSIGNED:
            return "unsigned"
        return "invalid signature: " + "; ".join(p.what for p in self.problems)


UNSIGNED = SignatureStatus(SignatureState.UNSIGNED)


def check_signature(sshsig: SshSignature, manifest: Manifest) -> list[str]:
    """Why `sshsig` is not a valid signature of this manifest's bundle ([] if it is)."""
    if sshsig.namespace != NAMESPACE:
        return [f"was made for namespace {sshsig.namespace!r}, not {NAMESPACE!r}: a signature "
                "made for another purpose (git, files) is not a bundle signature"]
    if not sshsig.verifies(signed_message(manifest)):
        return [f"does not verify with the key it names ({sshsig.public_key.key_type} "
                f"{fingerprint(sshsig.public_key)}) over this bundle's signed message (app "
                f"{manifest.app_name} {manifest.app_version}, manifest sha256 "
                f"{manifest.digest()}): the bundle changed after signing, the signature was "
                "made for another bundle, or it was not made with that key"]
    if not sshsig.user_present:
        return ["was made by a security key without the user's touch (the user-presence "
                "flag is not set); sandrun requires it"]
    return []


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
    if data.lstrip()[:1] == b"{":
        return invalid("is a signature in the format of sandrun before SSHSIG signatures "
                       "(JSON); this sandrun accepts only SSHSIG signatures, so the bundle "
                       "must be re-signed", OLD_FORMAT_HINT)
    try:
        sshsig = SshSignature.from_armor(data, canonical=True)
    except SignatureError as exc:
        return invalid(exc.message, exc.hint)
    problems = check_signature(sshsig, manifest)
    if problems:
        return SignatureStatus(SignatureState.INVALID, problems=tuple(
            Problem(SIGNATURE_NAME, what, RESIGN_HINT) for what in problems))
    return SignatureStatus(SignatureState.VALID, SignatureInfo(
        manifest.digest(), manifest.app_name, manifest.app_version, sshsig))
