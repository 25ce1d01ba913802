"""Trust policy: which keys may sign which apps, and how old an app may be.

When a policy is in force (by default when `/etc/sandrun/trust.toml` exists), a bundle
runs only if it passes every rule; each failing rule is reported on its own, saying
which rule and how to fix it. Verification (`sandrun.bundle.verify`) proves that a bundle is
intact and, if signed, which key signed it; the policy decides whether that is enough.

    # /etc/sandrun/trust.toml   (owned by root, not writable by group or others)

    [[signer]]                          # one table per trusted key
    name = "release-team"               # required, unique: how messages name this key
    public_key = "ssh-ed25519 AAAA... release@example.org"
    # or instead of public_key:
    # public_key_file = "keys/release.pub"    # relative to this file's directory
    apps = ["httpbin", "web-*"]         # required: app names or globs (*, ?, [...]) it may sign

    [[signer]]
    name = "ops"
    public_key_file = "/etc/sandrun/keys/ops.pub"
    apps = ["*"]                        # may sign any app

    [min_version]                       # optional rollback protection
    httpbin = "0.10.2"                  # PEP 440; older httpbin bundles are refused

Rules, each refusing with its own problem: the bundle is unsigned; its signature is
malformed or does not verify; the key is in no [[signer]] (the fingerprint is shown);
the key's `apps` globs do not match the app name; the app's version is below its
`min_version` (compared as PEP 440 versions with `packaging`).

Why `min_version` is a table per app and not a key of each signer: rollback protection
is a property of the app (never run httpbin older than 0.10.2, whoever signed it). A
per-signer floor would apply one version number to every app the key signs, whose
version schemes are unrelated, and an attacker replaying an old bundle would only need
one signer without a floor. The app name is exact here (no globs): a version floor
only means something within one app's version history.

Validation reports every problem at once as a TrustError, each with `file:line: key`
(signers are counted from 1: `signer[2].apps`). Unknown keys, a missing or doubled
public key, the same key in two signers, empty `apps`, globs that can never match an
app name and invalid versions are errors. The policy file and key files must be owned
by root (or the user running sandrun) and not writable by group or others, and so must
their directories: whoever can edit the policy decides what runs.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from sandrun.bundle.manifest import APP_NAME_RE, SIGNATURE_NAME, Manifest
from sandrun.bundle.signature import (
    SIGN_HINT,
    PublicKey,
    SignatureState,
    SignatureStatus,
    parse_public_key,
)
from sandrun.config.profile import TomlLocator  # the same best-effort line finder as profiles
from sandrun.errors import KeyFileError, Problem, TrustError

DEFAULT_TRUST_PATH = Path("/etc/sandrun/trust.toml")
MAX_POLICY_BYTES = 1 << 20
MAX_KEY_FILE_BYTES = 64 * 1024
TOP_KEYS = ("signer", "min_version")
SIGNER_KEYS = ("name", "public_key", "public_key_file", "apps")
# What a glob can contain and still match such a name.
_APPS_GLOB_RE = re.compile(r"^[a-z0-9_.*?\[\]!-]+\Z")
_SIGNER_HEADER_RE = re.compile(r"""^\s*\[\[\s*(?:signer|"signer"|'signer')\s*\]\]\s*(?:#.*)?$""")
_TOML_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

FORMAT_HINT = "the format is in README.md, section \"Trust policy\""
PERMISSION_HINT = ("whoever can change the trust policy decides what runs: make it "
                   "root-owned and `chmod go-w` it")


@dataclass(frozen=True)
class TrustedSigner:
    name: str
    public_key: PublicKey
    apps: tuple[str, ...]  # app name globs (see app_glob_matches)
    where: str  # "file:line: signer[N]" of its table, for messages
    apps_where: str  # "file:line: signer[N].apps"

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    def allows(self, app_name: str) -> bool:
        return any(app_glob_matches(glob, app_name) for glob in self.apps)


@dataclass(frozen=True)
class MinimumVersion:
    app: str
    version: Version
    text: str  # as written in the policy
    where: str  # "file:line: min_version.<app>"


@dataclass(frozen=True)
class TrustPolicy:
    path: Path
    signers: tuple[TrustedSigner, ...]
    min_versions: Mapping[str, MinimumVersion]
    # Every file read (the policy and its public_key_file keys): the warm exec path
    # trusts a cached decision only while none of them changed.
    files: tuple[str, ...] = ()

    def signer_for(self, public_key: PublicKey) -> TrustedSigner | None:
        return next((s for s in self.signers if s.public_key == public_key), None)

    def signers_allowing(self, app_name: str) -> list[TrustedSigner]:
        return [s for s in self.signers if s.allows(app_name)]


# ---------------------------------------------------------------------------------------
# App name globs


def app_glob_matches(glob: str, app_name: str) -> bool:
    """Whether the policy glob `glob` matches the whole of `app_name`.

    A name that is not a valid app name matches nothing, whatever the glob. `*` matches
    any run of characters and `?` any one character, but neither ever matches `/`
    (unlike fnmatch's); `[...]` and `[!...]` are character classes, also without `/`.
    A glob that cannot be translated (an empty range such as `[z-a]`) matches nothing;
    the policy loader refuses such globs.
    """
    if not APP_NAME_RE.match(app_name):
        return False
    try:
        pattern = app_glob_pattern(glob)
    except ValueError:
        return False
    return pattern.match(app_name) is not None


@functools.lru_cache(maxsize=256)
def app_glob_pattern(glob: str) -> re.Pattern[str]:
    """The regular expression of a policy glob; ValueError for an invalid class.

    Translated here rather than by fnmatch, whose `*` also matches `/`.
    """
    out: list[str] = []
    index, end = 0, len(glob)
    while index < end:
        char = glob[index]
        index += 1
        if char == "*":
            if not out or out[-1] != "[^/]*":  # runs of * are one *
                out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            close = index
            if close < end and glob[close] == "!":
                close += 1
            if close < end and glob[close] == "]":  # a leading ] is a member
                close += 1
            while close < end and glob[close] != "]":
                close += 1
            if close >= end:  # no closing ]: a literal [
                out.append(re.escape(char))
                continue
            body, index = glob[index:close], close + 1
            negated = body.startswith("!")
            out.append(_glob_class(body[1:] if negated else body, negated))
        else:
            out.append(re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _glob_class(body: str, negated: bool) -> str:
    """A regex character class for the members of a glob class; never matches `/`."""
    members: list[str] = []
    index = 0
    while index < len(body):
        first = body[index]
        if index + 2 < len(body) and body[index + 1] == "-":
            last = body[index + 2]
            if first > last:
                raise ValueError(f"empty range {first}-{last}")
            members.append(f"{re.escape(first)}-{re.escape(last)}")
            index += 3
        else:
            members.append(re.escape(first))
            index += 1
    if not members:
        raise ValueError("empty character class")
    inner = "".join(members)
    # A positive range such as [.-0] spans '/': exclude it explicitly either way.
    return f"[^/{inner}]" if negated else f"(?!/)[{inner}]"


# ---------------------------------------------------------------------------------------
# Checking a bundle


def check_trust(policy: TrustPolicy, manifest: Manifest, signature: SignatureStatus,
                bundle_label: str) -> list[Problem]:
    """Every rule of `policy` that the bundle fails; an empty list means trusted.

    `manifest` and `signature` must come from a bundle that passed verification
    (`VerifyResult.manifest` and `.signature_status`, or `signing.signature_status`).
    """
    problems: list[Problem] = []
    app, version = manifest.app_name, manifest.app_version

    def refuse(what: str, hint: str) -> None:
        problems.append(Problem(bundle_label, what, hint))

    if signature.state is SignatureState.UNSIGNED:
        refuse(f"is not signed, and the trust policy {policy.path} runs only bundles signed "
               "by a key it lists",
               f"get a signed bundle from its publisher, or {SIGN_HINT} using a key listed "
               f"in {policy.path}")
    elif signature.state is SignatureState.INVALID or signature.info is None:
        why = "; ".join(p.what for p in signature.problems) or "it could not be checked"
        refuse(f"has an invalid signature ({why}), and the trust policy {policy.path} runs "
               "only validly signed bundles",
               "get the bundle exactly as its publisher signed it; `sandrun verify` shows "
               "the details")
    else:
        info = signature.info
        signer = policy.signer_for(info.public_key)
        allowed = ", ".join(repr(s.name) for s in policy.signers_allowing(app)) or "no signer"
        if info.manifest_sha256 != manifest.digest():
            refuse(f"its signature ({SIGNATURE_NAME}) is for another manifest",
                   "get the bundle exactly as its publisher signed it")
        elif signer is None:
            claimed = f" (it calls itself {info.signer!r})" if info.signer else ""
            refuse(f"is signed by key {info.fingerprint}{claimed}, which is not in the trust "
                   f"policy {policy.path}",
                   f"if you trust this key for {app}, add a [[signer]] with public_key = "
                   f"\"{info.public_key.openssh(with_comment=False)}\" and apps = [\"{app}\"]; "
                   f"{app} may be signed by: {allowed}")
        elif not signer.allows(app):
            globs = ", ".join(repr(g) for g in signer.apps)
            refuse(f"is signed by {signer.name!r} ({signer.fingerprint}), which may sign only "
                   f"apps matching {globs}, not {app!r} (rule {signer.apps_where})",
                   f"if {signer.name!r} may sign {app}, add \"{app}\" to its apps; {app} may "
                   f"be signed by: {allowed}")

    floor = policy.min_versions.get(app)
    if floor is not None:
        try:
            current: Version | None = Version(version)
        except InvalidVersion:
            current = None
            refuse(f"{app} version {version!r} is not a PEP 440 version, so it cannot be "
                   f"checked against the minimum {floor.text} ({floor.where})",
                   f"deploy a release of {app} with a proper version number, or remove "
                   f"min_version.{app} from the policy")
        if current is not None and current < floor.version:
            refuse(f"{app} {version} is older than the minimum version {floor.text} set by "
                   f"{floor.where} (rollback protection)",
                   f"deploy {app} {floor.text} or later; lower min_version.{app} only if "
                   "running the older version is really intended")
    return problems


def require_trust(policy: TrustPolicy, manifest: Manifest, signature: SignatureStatus,
                  bundle_label: str) -> None:
    """check_trust, raising TrustError with every failing rule (exit 125)."""
    problems = check_trust(policy, manifest, signature, bundle_label)
    if problems:
        count = len(problems)
        raise TrustError(f"{bundle_label} is not trusted by {policy.path} ({count} "
                         f"rule{'s' if count != 1 else ''} failed)", problems,
                         "sandrun runs a bundle only when it passes every rule of the trust "
                         "policy")


# ---------------------------------------------------------------------------------------
# Loading the policy


def find_trust_policy(path: Path = DEFAULT_TRUST_PATH) -> TrustPolicy | None:
    """The policy at `path`, or None when nothing exists there (no policy in force).

    Anything that exists but cannot be loaded (a dangling symlink, no permission, an
    invalid file) raises TrustError: a broken policy never means "no policy".
    """
    if not os.path.lexists(path):
        return None
    return load_trust_policy(path)


def load_trust_policy(path: Path = DEFAULT_TRUST_PATH) -> TrustPolicy:
    """Read and validate a policy file; TrustError lists every problem at once."""
    path = Path(path)
    label = str(path)
    problems: list[Problem] = []
    text = _read_checked(path, label, "trust policy", MAX_POLICY_BYTES, problems)
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            match = _TOML_ERROR_POSITION.search(message)
            if match:
                where = f"{label}:{match.group(1)}"
                message = f"{message[:match.start()]} (column {match.group(2)})"
            else:  # "at end of document"
                where = f"{label}:{max(1, len(text.splitlines()))}"
            problems.append(Problem(where, f"invalid TOML: {message}",
                                    "fix the syntax; " + FORMAT_HINT))
        else:
            policy = _Checker(path, text, problems).check(data)
            if not problems:
                return policy
    count = len(problems)
    raise TrustError(f"trust policy {path} is invalid ({count} problem"
                     f"{'s' if count != 1 else ''})", problems,
                     "sandrun runs no bundle under an invalid trust policy; fix every "
                     "problem listed")


def _read_checked(path: Path, where: str, what: str, limit: int,
                  problems: list[Problem]) -> str | None:
    """A small UTF-8 file that only root (or we) can change, or None with a problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        problems.append(Problem(where, f"{what} {path} does not exist",
                                "check the path (a dangling symlink also counts)"))
        return None
    except OSError as exc:
        problems.append(Problem(where, f"cannot open {what} {path}: {exc.strerror}",
                                "check the path and its permissions"))
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses directories
        os.close(fd)
        problems.append(Problem(where, f"{what} {path} is not a regular file",
                                "give the path of a file"))
        return None
    with os.fdopen(fd, "rb") as handle:
        found = [f"{what} {path} {p}" for p in [_write_access_problem(info, False)] if p]
        try:
            directory = os.stat(path.parent)
        except OSError:
            directory = None
        problem = directory and _write_access_problem(directory, True)
        if problem:
            found.append(f"the directory {path.parent} of {what} {path} {problem}")
        if found:
            problems.extend(Problem(where, f, PERMISSION_HINT) for f in found)
            return None
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            problems.append(Problem(where, f"cannot read {what} {path}: {exc.strerror}",
                                    "check the file"))
            return None
    if len(data) > limit:
        problems.append(Problem(where, f"{what} {path} is larger than {limit} bytes",
                                f"a {what} is a short text file"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(where, f"{what} {path} is not UTF-8 ({exc.reason} at byte "
                                f"{exc.start})", "save it as UTF-8"))
        return None


def _write_access_problem(info: os.stat_result, is_directory: bool) -> str | None:
    """Why someone other than root or us could change this file or directory, if so."""
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {info.st_uid}, not by root"
    mode = stat.S_IMODE(info.st_mode)
    # In a sticky directory (like /tmp) others cannot replace or rename our files.
    if mode & 0o022 and not (is_directory and mode & stat.S_ISVTX):
        return f"is writable by group or others (mode {mode:04o})"
    return None


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
             dict: "table"}
    return names.get(type(value), "date/time")


def _signer_sections(text: str) -> list[tuple[int, TomlLocator]]:
    """(line offset, locator) of each [[signer]] table, so keys of the Nth table get its
    lines (the profile locator alone knows only the first table of an array)."""
    lines = text.splitlines()
    starts = [n for n, line in enumerate(lines) if _SIGNER_HEADER_RE.match(line)]
    ends = [*starts[1:], len(lines)] if starts else []
    return [(start, TomlLocator("\n".join(lines[start:end])))
            for start, end in zip(starts, ends, strict=True)]


class _Checker:
    """Validates a parsed policy, appending every problem with its place."""

    def __init__(self, path: Path, text: str, problems: list[Problem]) -> None:
        self.path = path
        self.label = str(path)
        self.locator = TomlLocator(text)
        self.sections = _signer_sections(text)
        self.problems = problems
        self.key_files: list[str] = []

    def where(self, dotted: str, element: object = None) -> str:
        line = self.locator.line_of(dotted, element)
        return f"{self.label}:{line}: {dotted}" if line else f"{self.label}: {dotted}"

    def signer_where(self, index: int, key: str = "", element: object = None) -> str:
        shown = f"signer[{index + 1}]" + (f".{key}" if key else "")
        line = None
        if index < len(self.sections):
            offset, locator = self.sections[index]
            found = locator.line_of(f"signer.{key}" if key else "signer", element)
            line = found + offset if found else None
        return f"{self.label}:{line}: {shown}" if line else f"{self.label}: {shown}"

    def add(self, where: str, what: str, hint: str) -> None:
        self.problems.append(Problem(where, what, hint))

    def check(self, data: dict[str, Any]) -> TrustPolicy:
        signers: list[TrustedSigner] = []
        min_versions: dict[str, MinimumVersion] = {}
        for key, value in data.items():
            if key == "signer":
                signers = self.check_signers(value)
            elif key == "min_version":
                min_versions = self.check_min_versions(value)
            elif key in SIGNER_KEYS:
                self.add(self.where(key), f"{key} must be inside a [[signer]] table",
                         f"put a [[signer]] line before it; {FORMAT_HINT}")
            else:
                close = _closest(key, TOP_KEYS)
                self.add(self.where(key), f"unknown key {key!r}",
                         (f"did you mean {close!r}? " if close else "")
                         + "the policy has [[signer]] tables and a [min_version] table")
        if "signer" not in data:
            self.add(self.label, "no [[signer]] table: every bundle would be refused",
                     "add a [[signer]] with name, public_key and apps for each key you "
                     f"trust; {FORMAT_HINT}")
        return TrustPolicy(self.path, tuple(signers), min_versions,
                           (os.path.abspath(self.path), *self.key_files))

    def check_signers(self, value: object) -> list[TrustedSigner]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.add(self.where("signer"), f"signer must be an array of tables, got "
                     f"{_type_name(value)}", "write each signer as a [[signer]] table")
            return []
        if len(self.sections) != len(value):
            self.sections = []  # e.g. inline tables: better no line than a wrong one
        signers: list[TrustedSigner] = []
        names: dict[str, int] = {}
        keys: dict[PublicKey, TrustedSigner] = {}
        for index, table in enumerate(value):
            signer = self.check_signer(index, table)
            if signer is None:
                continue
            first = names.setdefault(signer.name, index)
            if first != index:
                self.add(self.signer_where(index, "name"), f"name {signer.name!r} is already "
                         f"used by {self.signer_where(first)}", "give each signer its own name")
                continue
            earlier = keys.setdefault(signer.public_key, signer)
            if earlier is not signer:
                self.add(self.signer_where(index, _key_field(table)),
                         f"the same key ({signer.fingerprint}) as {earlier.where} "
                         f"({earlier.name!r}); each key appears once",
                         "merge the two [[signer]] tables: one key, with every app it may sign")
                continue
            signers.append(signer)
        return signers

    def check_signer(self, index: int, table: dict[str, Any]) -> TrustedSigner | None:
        ok = True
        for key in table:
            if key in SIGNER_KEYS:
                continue
            ok = False
            if key == "min_version":
                hint = ("minimum versions are per app, whoever signs: write them in a "
                        "[min_version] table, e.g. `httpbin = \"0.10.2\"`")
            else:
                close = _closest(key, SIGNER_KEYS)
                hint = ((f"did you mean {close!r}? " if close else "")
                        + f"a [[signer]] has {', '.join(SIGNER_KEYS)}")
            self.add(self.signer_where(index, key), f"unknown key {key!r}", hint)

        name = table.get("name")
        if name is None:
            ok = False
            self.add(self.signer_where(index), "has no name",
                     "add name = \"...\": refusals and logs name the signer by it")
        elif not isinstance(name, str) or not name.strip() or not name.isprintable():
            ok = False
            self.add(self.signer_where(index, "name"), "name must be a non-empty one-line "
                     f"string, got {_type_name(name) if not isinstance(name, str) else repr(name)}",
                     "write e.g. name = \"release-team\"")

        public_key = self.check_public_key(index, table)
        apps = self.check_apps(index, table.get("apps"))
        if not ok or public_key is None or apps is None:
            return None
        assert isinstance(name, str)
        return TrustedSigner(name, public_key, apps, self.signer_where(index),
                             self.signer_where(index, "apps"))

    def check_public_key(self, index: int, table: dict[str, Any]) -> PublicKey | None:
        line, file = table.get("public_key"), table.get("public_key_file")
        if line is not None and file is not None:
            self.add(self.signer_where(index, "public_key_file"), "give public_key or "
                     "public_key_file, not both", "keep one of the two")
            return None
        if line is None and file is None:
            self.add(self.signer_where(index), "has no public_key (or public_key_file)",
                     "add public_key = \"ssh-ed25519 AAAA...\", the content of the signer's "
                     ".pub file")
            return None
        key = "public_key" if line is not None else "public_key_file"
        where = self.signer_where(index, key)
        value = line if line is not None else file
        if not isinstance(value, str) or not value.strip():
            self.add(where, f"{key} must be a non-empty string, got "
                     f"{_type_name(value) if not isinstance(value, str) else 'an empty one'}",
                     "write it in double quotes")
            return None
        if file is not None:
            key_path = Path(value)
            if not key_path.is_absolute():
                key_path = self.path.parent / key_path
            self.key_files.append(os.path.abspath(key_path))
            content = _read_checked(key_path, where, "public key file", MAX_KEY_FILE_BYTES,
                                    self.problems)
            if content is None:
                return None
            lines = [x for x in content.splitlines() if x.strip() and not x.startswith("#")]
            if len(lines) != 1:
                self.add(where, f"public key file {key_path} holds {len(lines)} keys, not one",
                         "one [[signer]] per key: give each key its own file and table")
                return None
            value = lines[0]
        try:
            return parse_public_key(value, where)
        except KeyFileError as exc:
            self.add(where, exc.message.removeprefix(f"{where}: "), exc.hint)
            return None

    def check_apps(self, index: int, apps: object) -> tuple[str, ...] | None:
        where = self.signer_where(index, "apps")
        if apps is None:
            self.add(self.signer_where(index), "has no apps: the key could sign nothing",
                     "add apps = [\"myapp\"] (fnmatch globs such as \"web-*\", or \"*\" for "
                     "any app)")
            return None
        if not isinstance(apps, list):
            example = f"apps = [\"{apps}\"]" if isinstance(apps, str) else "apps = [\"myapp\"]"
            self.add(where, f"apps must be an array of app name globs, got {_type_name(apps)}",
                     f"write {example}")
            return None
        if not apps:
            self.add(where, "apps is empty: the key could sign nothing",
                     "list the apps this key may sign, or remove the [[signer]]")
            return None
        ok = True
        for glob in apps:
            if not isinstance(glob, str) or not glob:
                ok = False
                self.add(where, f"apps entries must be non-empty strings, got "
                         f"{_type_name(glob) if not isinstance(glob, str) else 'an empty one'}",
                         "write each app name or glob in double quotes")
            elif glob != glob.lower():
                ok = False
                self.add(self.signer_where(index, "apps", glob),
                         f"{glob!r} never matches: app names are lower case",
                         f"write \"{glob.lower()}\"")
            elif not _APPS_GLOB_RE.match(glob):
                ok = False
                self.add(self.signer_where(index, "apps", glob),
                         f"{glob!r} can never match an app name (a-z, 0-9, '.', '_', '-')",
                         "use app names and the globs *, ? and [...]")
            else:
                try:
                    app_glob_pattern(glob)
                except ValueError as exc:
                    ok = False
                    self.add(self.signer_where(index, "apps", glob),
                             f"{glob!r} is not a valid glob ({exc})",
                             "write a character class as [abc] or [a-z], low end first")
        return tuple(dict.fromkeys(apps)) if ok else None

    def check_min_versions(self, value: object) -> dict[str, MinimumVersion]:
        if not isinstance(value, dict):
            self.add(self.where("min_version"), f"min_version must be a table, got "
                     f"{_type_name(value)}", "write [min_version] and below it lines like "
                     "`httpbin = \"0.10.2\"`")
            return {}
        floors: dict[str, MinimumVersion] = {}
        for app, text in value.items():
            where = self.where(f"min_version.{app}")
            if not APP_NAME_RE.match(app):
                globby = any(c in app for c in "*?[")
                self.add(where, f"{app!r} is not an app name" + (
                    " (min_version takes exact app names, not globs)" if globby else ""),
                    "use the app's exact name, as `sandrun inspect` shows it")
                continue
            if not isinstance(text, str):
                self.add(where, f"the minimum version must be a string, got {_type_name(text)}",
                         f"quote it: {app} = \"{text}\"")
                continue
            try:
                version = Version(text)
            except InvalidVersion:
                self.add(where, f"{text!r} is not a valid version (PEP 440)",
                         "write a version such as \"1.2.3\"")
                continue
            floors[app] = MinimumVersion(app, version, text, where)
        return floors


def _key_field(table: dict[str, Any]) -> str:
    return "public_key" if "public_key" in table else "public_key_file"
