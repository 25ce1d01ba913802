"""Signing bundles: OpenSSH Ed25519 keys, ssh-agent, and signatures made elsewhere.

Keys are plain OpenSSH Ed25519 keys, so `ssh-keygen` can make, read and fingerprint
them, and cryptography reads and writes them: the private key is an "OPENSSH PRIVATE
KEY" PEM file (mode 0600) and the public key, `KEY.pub` beside it, the one-line
`ssh-ed25519 AAAA... identity` form (the comment is kept for people; a signature
carries only the key).

A bundle is signed three ways, all giving the same entry (an SSHSIG signature with
namespace `sandrun` over `signature.signed_message(manifest)`, sandrun/bundle/signature.py):

- with a private key file (`sign_bundle(bundle, KEY)`). A passphrase-protected key is
  read with the passphrase in SANDRUN_KEY_PASSPHRASE (unattended signing, e.g. from a
  CI secret) or, when it is unset and standard input is a terminal, asked for there;
- with a key held by ssh-agent (`agent_key()`, then `sign_bundle`): the agent protocol's
  SIGN_REQUEST over $SSH_AUTH_SOCK, so the private key never leaves the agent (or the
  security key behind it);
- with a signature someone made with `ssh-keygen -Y sign -n sandrun` over the message
  `write_sshsig_files` writes (`attach_signature`), e.g. on an offline machine or with a
  hardware key. It is checked against the bundle before it is attached.

The manifest cannot list the signature (the signature covers the manifest's digest);
`verify` checks it instead. Signing rewrites the bundle with the signature after the
manifest; every other byte stays as the builder wrote it, so a bundle is reproducible
apart from its signature, and Ed25519 signatures are deterministic: the same key signs
the same bundle to the same bytes (the same as `ssh-keygen -Y sign` makes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import socket
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sandrun.bundle.archive import (
    MAX_ARCHIVE_SIZE,
    StrictArchive,
    ZipEntry,
    date_time_from_epoch,
    parse_archive,
    write_archive,
)
from sandrun.bundle.manifest import SIGNATURE_NAME, Manifest
from sandrun.bundle.signature import (  # what signing shares with checking
    DEFAULT_HASH_ALGORITHM,
    KEY_TYPE,
    KEY_TYPES,
    KEYGEN_HINT,
    MAX_SIGNATURE_BYTES,
    NAMESPACE,
    SIGNATURE_MODE,
    PublicKey,
    SignatureInfo,
    SignatureState,
    SignatureStatus,
    SshSignature,
    _identity_problem,
    check_signature,
    parse_key_blob,
    parse_public_key,
    signed_data,
    signed_message,
)
from sandrun.errors import (
    KeyFileError,
    SandrunError,
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


AGENT_SOCKET_ENV = "SSH_AUTH_SOCK"


MESSAGE_FILE = "message"


SIGNATURE_FILE = "message.sig"


_PEM_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"


class Signer(Protocol):
    """What signs: a key file or a key in ssh-agent."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign_data(self, data: bytes) -> bytes:
        """The SSH signature blob (string algorithm, string signature, ...) of `data`."""
        ...


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
        """The raw 64-byte Ed25519 signature."""
        return self.private_key.sign(message)

    def sign_data(self, data: bytes) -> bytes:
        return _ssh_string(KEY_TYPE.encode()) + _ssh_string(self.sign(data))


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def make_sshsig(signer: Signer, message: bytes, namespace: str = NAMESPACE,
                hash_algorithm: str = DEFAULT_HASH_ALGORITHM) -> SshSignature:
    """An SSHSIG signature of `message`, as `ssh-keygen -Y sign -n NAMESPACE` makes it."""
    blob = signer.sign_data(signed_data(namespace, hash_algorithm, message))
    return SshSignature.from_parts(signer.public_key, namespace, hash_algorithm, blob)


def default_identity() -> str:
    """user@hostname, as ssh-keygen's default comment."""
    import getpass

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
    data, mode = _read_key_file(path)
    # What the file is comes first: a public key's mode is not a problem, it is the
    # wrong file.
    if data.lstrip().startswith(b"ssh-") or data.lstrip().startswith(b"sk-"):
        raise KeyFileError(f"{path} is a public key, not a private one",
                           f"pass the private key (the file without .pub); to sign with a "
                           f"key held by ssh-agent, use `sandrun sign --agent -k {path} "
                           "BUNDLE`")
    if mode & 0o077:
        raise KeyFileError(f"{path} is accessible by group or others (mode {mode:04o}); a "
                           "signing key that others can read is no longer secret",
                           f"chmod 600 {path}; if others may have copied it, make a new "
                           "key and remove the old one from every trust policy")
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
        raise KeyFileError(f"{path}: unsupported key ({exc})",
                           KEYGEN_HINT + "; a security-key (-sk) key signs through "
                           "`ssh-keygen -Y sign` or ssh-agent (`sandrun sign --agent`)"
                           ) from None
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
                           "sign on a terminal, use ssh-agent (`ssh-add KEY`, then `sandrun "
                           "sign --agent`), or use a key without a passphrase "
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
    if data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"):
        return "it is an encrypted PKCS#8 key"
    if data.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return "it is an SSH signature"
    if data.startswith(b"-----BEGIN "):
        label = data.split(b"\n", 1)[0].decode("ascii", "replace").strip("- \r")
        return f"it is a PEM {label.removeprefix('BEGIN ')} file"
    return "no '-----BEGIN OPENSSH PRIVATE KEY-----' line"


def _read_key_file(path: Path) -> tuple[bytes, int]:
    """A key file's bytes and permission bits (regular file, size-limited)."""
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
        try:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read private key {path}: {exc.strerror}",
                               "check the file") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key",
                           "pass the private key file")
    return data, stat.S_IMODE(info.st_mode)


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


# ---------------------------------------------------------------------------------------
# ssh-agent (draft-miller-ssh-agent): the private key stays in the agent

_AGENT_FAILURE = 5
_AGENTC_REQUEST_IDENTITIES = 11
_AGENT_IDENTITIES_ANSWER = 12
_AGENTC_SIGN_REQUEST = 13
_AGENT_SIGN_RESPONSE = 14
MAX_AGENT_REPLY = 256 * 1024
AGENT_TIMEOUT = 120.0  # seconds: a security key behind the agent waits for a touch


@dataclass(frozen=True)
class AgentKey:
    """A key held by the ssh-agent at `socket_path`."""

    socket_path: str
    public_key: PublicKey

    def sign_data(self, data: bytes) -> bytes:
        request = (bytes([_AGENTC_SIGN_REQUEST]) + _ssh_string(self.public_key.blob)
                   + _ssh_string(data) + struct.pack(">I", 0))
        reply = _agent_call(self.socket_path, request)
        if reply[:1] == bytes([_AGENT_FAILURE]):
            raise KeyFileError(f"ssh-agent ({self.socket_path}) refused to sign with "
                               f"{self.public_key.fingerprint}",
                               "the agent may ask for a confirmation (ssh-add -c) or a touch "
                               "of the security key; check that the key is still loaded "
                               "(`ssh-add -l`)")
        if reply[:1] != bytes([_AGENT_SIGN_RESPONSE]):
            raise KeyFileError(f"ssh-agent ({self.socket_path}) answered a signing request "
                               f"with message type {reply[0]}", "is it an ssh-agent?")
        signature = _agent_strings(reply[1:], 1, self.socket_path)[0]
        return signature


def _agent_call(socket_path: str, request: bytes) -> bytes:
    """One request, one reply (its type byte and payload)."""
    hint = (f"start an agent (`eval $(ssh-agent)`) and add the key (`ssh-add KEY`); "
            f"{AGENT_SOCKET_ENV} must name its socket")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(AGENT_TIMEOUT)
            conn.connect(socket_path)
            conn.sendall(struct.pack(">I", len(request)) + request)
            length = struct.unpack(">I", _recv_exactly(conn, 4))[0]
            if not 0 < length <= MAX_AGENT_REPLY:
                raise KeyFileError(f"ssh-agent ({socket_path}) sent a reply of {length} bytes",
                                   "is it an ssh-agent?")
            return _recv_exactly(conn, length)
    except TimeoutError:
        raise KeyFileError(f"ssh-agent ({socket_path}) did not answer within "
                           f"{AGENT_TIMEOUT:.0f} s", "touch the security key or confirm the "
                           "request when the agent asks") from None
    except OSError as exc:
        raise KeyFileError(f"cannot talk to ssh-agent at {socket_path}: "
                           f"{exc.strerror or exc}", hint) from None


def _recv_exactly(conn: socket.socket, count: int) -> bytes:
    chunks = b""
    while len(chunks) < count:
        chunk = conn.recv(count - len(chunks))
        if not chunk:
            raise OSError(errno.ECONNRESET, "the agent closed the connection")
        chunks += chunk
    return chunks


def _agent_strings(payload: bytes, count: int, socket_path: str) -> list[bytes]:
    """`count` SSH strings filling `payload` exactly."""
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(payload):
            break
        length = struct.unpack(">I", payload[offset:offset + 4])[0]
        if offset + 4 + length > len(payload):
            break
        out.append(payload[offset + 4:offset + 4 + length])
        offset += 4 + length
    if len(out) != count or offset != len(payload):
        raise KeyFileError(f"ssh-agent ({socket_path}) sent a malformed reply",
                           "is it an ssh-agent?")
    return out


def agent_identities(socket_path: str) -> list[tuple[bytes, str]]:
    """(key blob, comment) of every key the agent holds."""
    reply = _agent_call(socket_path, bytes([_AGENTC_REQUEST_IDENTITIES]))
    if reply[:1] != bytes([_AGENT_IDENTITIES_ANSWER]) or len(reply) < 5:
        raise KeyFileError(f"ssh-agent ({socket_path}) did not list its keys",
                           "is it an ssh-agent?")
    count = struct.unpack(">I", reply[1:5])[0]
    if count > 1024:
        raise KeyFileError(f"ssh-agent ({socket_path}) claims {count} keys",
                           "is it an ssh-agent?")
    fields = _agent_strings(reply[5:], 2 * count, socket_path)
    return [(fields[2 * i], fields[2 * i + 1].decode("utf-8", "replace"))
            for i in range(count)]


def agent_key(public_key_file: Path | None = None, socket_path: str | None = None
              ) -> AgentKey:
    """The agent's key to sign with: the one `public_key_file` names (KEY.pub, or KEY
    with KEY.pub beside it), else its only Ed25519 key."""
    socket_path = socket_path or os.environ.get(AGENT_SOCKET_ENV)
    if not socket_path:
        raise KeyFileError(f"no ssh-agent to sign with: {AGENT_SOCKET_ENV} is not set",
                           "start one (`eval $(ssh-agent)`) and add the key (`ssh-add KEY`), "
                           "or sign with a key file (`sandrun sign -k KEY BUNDLE`)")
    usable: list[PublicKey] = []
    other_types: list[str] = []
    for blob, comment in agent_identities(socket_path):
        try:
            key = parse_key_blob(blob)
        except ValueError:
            other_types.append(_blob_type(blob))
            continue
        comment = comment if _identity_problem(comment) is None else ""
        usable.append(dataclasses.replace(key, comment=comment))
    held = ", ".join(f"{k.fingerprint} ({k.comment or k.key_type})" for k in usable) or "none"
    if public_key_file is not None:
        wanted = _public_key_for_agent(Path(public_key_file))
        found = next((k for k in usable if k == wanted), None)
        if found is None:
            raise KeyFileError(f"ssh-agent ({socket_path}) does not hold the key of "
                               f"{public_key_file} ({wanted.fingerprint})",
                               f"add it with `ssh-add PRIVATE_KEY`; the agent's Ed25519 keys: "
                               f"{held}")
        return AgentKey(socket_path, found)
    if len(usable) == 1:
        return AgentKey(socket_path, usable[0])
    if not usable:
        others = (f" (it holds {len(other_types)} key(s) of other types: "
                  f"{', '.join(sorted(set(other_types)))})" if other_types else "")
        raise KeyFileError(f"ssh-agent ({socket_path}) holds no Ed25519 key{others}",
                           "add one with `ssh-add KEY`; sandrun signs with "
                           f"{' or '.join(KEY_TYPES)} keys")
    raise KeyFileError(f"ssh-agent ({socket_path}) holds {len(usable)} Ed25519 keys; which "
                       "one should sign?", "name it by its public key: `sandrun sign --agent "
                       f"-k KEY.pub BUNDLE`; the agent holds: {held}")


def _blob_type(blob: bytes) -> str:
    if len(blob) >= 4:
        length = struct.unpack(">I", blob[:4])[0]
        if length <= 64 and len(blob) >= 4 + length:
            return blob[4:4 + length].decode("ascii", "replace")
    return "unknown"


def _public_key_for_agent(path: Path) -> PublicKey:
    """The public key in `path`, or in `path`.pub when `path` is the private key."""
    line = _read_public_key_line(path) if not _looks_private(path) else None
    if line is None:
        public_path = _public_key_path(path)
        line = _read_public_key_line(public_path)
        if line is None:
            raise KeyFileError(f"{path}: no such public key file",
                               "pass the key's .pub file with -k")
        path = public_path
    return parse_public_key(line, str(path))


def _looks_private(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False  # _read_public_key_line says why
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return False
        return handle.read(64).lstrip().startswith(b"-----BEGIN ")


# ---------------------------------------------------------------------------------------
# Signing a bundle


def sign_bundle(bundle: Path, key: Signer | Path | str) -> SignatureInfo:
    """Sign a bundle that verifies, in place: add (or replace) `.sandrun/signature`.

    `key` is a loaded key, an agent key (agent_key()) or the path of a private key
    (loaded here; pass a loaded key to ask for a passphrase once when the key was
    checked earlier). The archive is rewritten atomically (mode 0444) with the builder's
    order and timestamps and the signature after the manifest; every other entry keeps
    its exact bytes, which is checked before anything is written.
    """
    bundle = Path(bundle)
    signer: Signer = load_private_key(Path(key)) if isinstance(key, str | os.PathLike) else key
    data, archive, manifest = _signable(bundle)
    sshsig = make_sshsig(signer, signed_message(manifest))
    problems = check_signature(sshsig, manifest)
    if problems:
        raise SignatureError(f"cannot sign {bundle}: the signature made with "
                             f"{signer.public_key.fingerprint} {problems[0]}",
                             "check the key (or the agent holding it) and try again")
    return _write_signature(bundle, data, archive, manifest, sshsig)


def attach_signature(bundle: Path, signature_file: Path) -> SignatureInfo:
    """Attach a signature made by `ssh-keygen -Y sign -n sandrun` over the bundle's message
    (write_sshsig_files), after checking that it verifies against the bundle."""
    bundle, signature_file = Path(bundle), Path(signature_file)
    text = _read_signature_file(signature_file)
    try:
        sshsig = SshSignature.from_armor(text, canonical=False)
    except SignatureError as exc:
        raise SignatureError(f"{signature_file} {exc.message}",
                             "pass the .sig file `ssh-keygen -Y sign -n sandrun -f KEY "
                             "DIR/message` wrote") from None
    data, archive, manifest = _signable(bundle)
    problems = check_signature(sshsig, manifest)
    if problems:
        raise SignatureError(f"{signature_file} is not a signature of {bundle}: it "
                             f"{problems[0]}",
                             f"write the message with `sandrun inspect --sshsig DIR {bundle}`, "
                             "sign exactly that file with `ssh-keygen -Y sign -n sandrun -f "
                             "KEY DIR/message`, and attach DIR/message.sig")
    return _write_signature(bundle, data, archive, manifest, sshsig)


def _read_signature_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise SignatureError(f"cannot open signature {path}: {exc.strerror}",
                             "check the path") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SignatureError(f"{path} is not a regular file", "pass the .sig file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_SIGNATURE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{path} is larger than {MAX_SIGNATURE_BYTES} bytes: not an SSH "
                             "signature", "pass the .sig file ssh-keygen -Y sign wrote")
    return data


@dataclass(frozen=True)
class SshsigFiles:
    """What write_sshsig_files wrote: DIR/message, and DIR/message.sig when the bundle
    carries a signature that parses (valid or not: `status` says which)."""

    message: Path
    signature: Path | None
    removed_stale: bool  # an unsigned bundle: an older DIR/message.sig was removed
    status: SignatureStatus


def write_sshsig_files(bundle: Path, directory: Path) -> SshsigFiles:
    """Write DIR/message (exactly the bytes a signature of `bundle` signs) and, if the
    bundle is signed, DIR/message.sig (its SSHSIG signature, armored), so that
    `ssh-keygen -Y verify -f ALLOWED_SIGNERS -I APP -n sandrun -s DIR/message.sig <
    DIR/message` checks it, or `ssh-keygen -Y sign -n sandrun -f KEY DIR/message` signs
    it. DIR is created (0755) if missing.

    DIR is a working directory for these two names: running this again refreshes them,
    so existing regular files there are replaced (as `ssh-keygen -Y sign` replaces
    message.sig), and an unsigned bundle's DIR has no message.sig, so that ssh-keygen can
    write one. Nothing is written through a link: DIR is reached as open_output_directory
    says, each file is created O_CREAT|O_EXCL|O_NOFOLLOW (a temp file renamed over an old
    one), and a link or other non-regular file at either name is refused, not replaced."""
    from sandrun.bundle.archive import open_archive

    bundle, directory = Path(bundle), Path(directory)
    archive = open_archive(str(bundle))
    manifest, status = _verified(archive, bundle)
    entry = next((e for e in archive.entries if e.name == SIGNATURE_NAME), None)
    sshsig = None
    if entry is not None and archive.read_problem(entry) is None \
            and entry.size <= MAX_SIGNATURE_BYTES:
        with contextlib.suppress(SignatureError, ValueError):
            sshsig = SshSignature.from_armor(archive.read(entry), canonical=False)
    message_path, signature_path = directory / MESSAGE_FILE, directory / SIGNATURE_FILE
    dir_fd = open_output_directory(directory, create=True)
    removed = False
    try:
        old_signature = _existing_output(dir_fd, SIGNATURE_FILE, signature_path)
        write_output_file(dir_fd, MESSAGE_FILE, signed_message(manifest), message_path,
                          replace=True)
        if sshsig is not None:
            write_output_file(dir_fd, SIGNATURE_FILE, sshsig.armor(), signature_path,
                              replace=True)
        elif old_signature is not None:
            try:
                os.unlink(SIGNATURE_FILE, dir_fd=dir_fd)
            except OSError as exc:
                raise SignatureError(f"cannot remove {signature_path}: {exc.strerror}",
                                     "remove it: the bundle is unsigned, and ssh-keygen -Y "
                                     "sign writes its signature there") from None
            removed = True
    finally:
        os.close(dir_fd)
    return SshsigFiles(message_path, signature_path if sshsig else None, removed, status)


def write_output(path: Path, data: bytes, *, replace: bool, mode: int = 0o644) -> None:
    """Write a file the user named (e.g. `trust export-allowed-signers -o OUT`): its
    directory reached as open_output_directory says, the file as write_output_file
    writes it (an existing one refused unless `replace`; never through a link)."""
    path = Path(path)
    if Path(os.path.abspath(path)).name != path.name or not path.name:
        raise SandrunError(f"{path} is not a file name", "give the path of the file to write")
    dir_fd = open_output_directory(path.parent)
    try:
        write_output_file(dir_fd, path.name, data, path, replace=replace, mode=mode)
    finally:
        os.close(dir_fd)


def open_output_directory(directory: Path, *, create: bool = False) -> int:
    """An O_RDONLY fd of the directory an output file goes to, reached as a trust policy
    is (trust.open_owned_path): through directories only root or this user can change,
    following only links nobody else could have planted (for root: none below /tmp).
    `create`: make it (0755) when only its last component is missing. SandrunError
    otherwise, before anything is written."""
    from sandrun.supply.trust import UnsafePath, open_owned_path

    try:
        path_fd, info, missing = open_owned_path(directory, missing_ok=create)
    except UnsafePath as exc:
        raise SandrunError(f"cannot write in {directory}: {exc.what}", exc.hint) from None
    except OSError as exc:
        raise SandrunError(f"cannot use the directory {directory}: {exc.strerror}",
                           "create it, or choose another") from None
    try:
        if len(missing) > 1:
            raise SandrunError(f"cannot create {directory}: {directory.parent} does not "
                               "exist", "create the parent directory first, or choose another")
        if missing:
            try:
                os.mkdir(missing[0], 0o755, dir_fd=path_fd)
                made = os.open(missing[0], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                               | os.O_CLOEXEC, dir_fd=path_fd)
            except OSError as exc:
                raise SandrunError(f"cannot create {directory}: {exc.strerror}",
                                   "create the directory, or choose another") from None
            os.close(path_fd)
            path_fd = made
            info = os.fstat(path_fd)
        if not stat.S_ISDIR(info.st_mode):
            raise SandrunError(f"{directory} is not a directory", "choose a directory")
        try:  # the directory the walk found, not the path again
            return os.open(f"/proc/self/fd/{path_fd}",
                           os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandrunError(f"cannot open the directory {directory}: {exc.strerror}",
                               "choose a directory you can write") from None
    finally:
        os.close(path_fd)


def _existing_output(dir_fd: int, name: str, shown: Path) -> os.stat_result | None:
    """What is at `name` already: None, or a regular file; SandrunError for a link or
    anything else, which is never written through nor replaced."""
    try:
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandrunError(f"cannot check {shown}: {exc.strerror}",
                           "check the directory's permissions") from None
    if stat.S_ISLNK(found.st_mode):
        raise SandrunError(f"{shown} is a symbolic link: sandrun does not write through it, "
                           "nor replace it", f"remove {shown}, or choose another path")
    if not stat.S_ISREG(found.st_mode):
        raise SandrunError(f"{shown} exists and is not a regular file",
                           "remove it, or choose another path")
    return found


def write_output_file(dir_fd: int, name: str, data: bytes, shown: Path, *, replace: bool,
                      mode: int = 0o644) -> None:
    """Write the file `name` in the directory `dir_fd` (open_output_directory), never
    through a link: a new file is created O_CREAT|O_EXCL|O_NOFOLLOW; an existing regular
    file is refused unless `replace`, then replaced by a temp file created the same way
    and renamed over it (the old file is never opened); a link or other non-regular file
    is always refused. `shown` is the path messages use."""
    old = _existing_output(dir_fd, name, shown)
    if old is not None and not replace:
        raise SandrunError(f"{shown} already exists",
                           "choose another path, or pass --force to replace it")
    target = name if old is None else f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except FileExistsError:  # appeared since: whatever it is, it is not ours to write
        raise SandrunError(f"{shown} already exists (it appeared while sandrun wrote)",
                           "check who else writes there, and retry") from None
    except OSError as exc:
        raise SandrunError(f"cannot create {shown}: {exc.strerror}",
                           "check the directory's permissions") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)  # the umask must not change it
            os.fsync(out.fileno())
        if target != name:
            os.replace(target, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(target, dir_fd=dir_fd)
        raise SandrunError(f"cannot write {shown}: {exc.strerror}",
                           "check free space and permissions") from None


def _verified(archive: StrictArchive, bundle: Path) -> tuple[Manifest, SignatureStatus]:
    """The manifest of a bundle that verifies (its signature aside: it is about to be
    replaced or shown); VerificationError otherwise."""
    from sandrun.bundle.verify import verify_archive  # verify imports bundle.signature

    result = verify_archive(archive)
    blocking = [p for p in result.problems if p.where != SIGNATURE_NAME]
    if blocking or result.manifest is None:
        count = len(blocking)
        raise VerificationError(f"{bundle} fails verification ({count} "
                                f"problem{'s' if count != 1 else ''}): there is nothing "
                                "trustworthy to sign", blocking,
                                "sign only a bundle that verifies: rebuild it with "
                                "`sandrun bundle`")
    return result.manifest, result.signature_status


def _signable(bundle: Path) -> tuple[bytes, StrictArchive, Manifest]:
    data = _read_bundle(bundle)
    archive = parse_archive(data, str(bundle))
    try:
        manifest, _ = _verified(archive, bundle)
    except VerificationError as exc:
        raise VerificationError(f"cannot sign {bundle}: it fails verification "
                                f"({len(exc.problems)} problem"
                                f"{'s' if len(exc.problems) != 1 else ''})", exc.problems,
                                exc.hint) from None
    return data, archive, manifest


def _write_signature(bundle: Path, data: bytes, archive: StrictArchive, manifest: Manifest,
                     sshsig: SshSignature) -> SignatureInfo:
    kept = [e for e in archive.entries if e.name != SIGNATURE_NAME]
    files = [(e.name, archive.read(e), e.mode & 0o7777) for e in kept]
    files.append((SIGNATURE_NAME, sshsig.armor(), SIGNATURE_MODE))
    out = io.BytesIO()
    write_archive(out, archive.preamble, files,
                  date_time=date_time_from_epoch(manifest.source_date_epoch))
    signed = out.getvalue()
    info = _check_unchanged(bundle, data, archive, kept, signed)
    _write_atomically(bundle, signed)
    return info


def _check_unchanged(bundle: Path, old_data: bytes, old: StrictArchive,
                     kept: list[ZipEntry], new_data: bytes) -> SignatureInfo:
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
    status = result.signature_status
    if not result.ok or status.state is not SignatureState.VALID or status.info is None:
        raise SignatureError(f"cannot sign {bundle}: the signed archive does not verify ("
                             + "; ".join(str(p) for p in result.problems) + ")",
                             "this is a bug in sandrun; please report it")
    return status.info


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
