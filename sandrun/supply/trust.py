"""Trust policy: which keys may sign which apps, when, and how old an app may be.

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
    namespaces = ["sandrun"]            # optional: SSHSIG namespaces (the default); patterns
    valid_after = "20240101"            # optional: ssh-keygen's YYYYMMDD[HHMM[SS]][Z]
    valid_before = "20260101Z"          #   (Z: UTC; without: local time, as ssh-keygen reads it)

    [[signer]]
    name = "ops"
    public_key_file = "/etc/sandrun/keys/ops.pub"
    apps = ["*"]                        # may sign any app

    [min_version]                       # optional rollback protection
    httpbin = "0.10.2"                  # PEP 440; older httpbin bundles are refused

A [[signer]] is a line of an ssh-keygen `allowed_signers` file with the app names as its
principals: `apps` are the principals, `namespaces`, `valid_after` and `valid_before` its
options `namespaces=`, `valid-after=` and `valid-before=`, with the same meanings (the key
is valid from valid_after through valid_before, checked against the time of `exec`).
`export_allowed_signers` writes that file, so that `ssh-keygen -Y verify -f FILE -I APP
-n sandrun` decides as sandrun does (min_version has no allowed_signers equivalent).

Rules, each refusing with its own problem: the bundle is unsigned; its signature is
malformed or does not verify; the key is in no [[signer]] (the fingerprint is shown);
the key's `apps` globs do not match the app name; its `namespaces` exclude `sandrun`;
it is used before valid_after or after valid_before; the app's version is below its
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
app name, invalid times or versions are errors. The policy file and key files must be
owned by root (or the user running sandrun) and not writable by group or others, and so
must every directory on the way to them (a sticky one such as /tmp passes: others cannot
replace what is in it); a symbolic link on the way is followed only when it is root's
(or the user's) in directories nobody else can write (open_owned_path, the rule of
`open_trusted_path`): whoever can edit or redirect the policy decides what runs.
`add_signer` (`sandrun trust add`) checks everything first (the new [[signer]], the
resulting policy, and that the directories pass the reading check), then creates what
is missing and replaces the file atomically (0644, owned by whoever runs it: root for
/etc/sandrun). It writes times in UTC with Z: a time without Z is local time, which
each process reads in its own TZ (`exec` under another TZ, a warm decision cached by
an earlier run, ssh-keygen), so `trust add` converts it and `trust check` warns
(local_time_warnings).
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import difflib
import errno
import fcntl
import functools
import json
import os
import re
import stat
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from sandrun.bundle.manifest import APP_NAME_RE, SIGNATURE_NAME, Manifest
from sandrun.bundle.signature import (
    NAMESPACE,
    SIGN_HINT,
    PublicKey,
    SignatureState,
    SignatureStatus,
    parse_public_key,
)
from sandrun.config.profile import (  # the same line finder and TOML string writer
    TomlLocator,
    _toml_string,  # json.dumps writes non-BMP characters as surrogates: TOML refuses those
)
from sandrun.errors import KeyFileError, Problem, TrustError

DEFAULT_TRUST_PATH = Path("/etc/sandrun/trust.toml")
MAX_POLICY_BYTES = 1 << 20
MAX_KEY_FILE_BYTES = 64 * 1024
TOP_KEYS = ("signer", "min_version", "provenance")
SIGNER_KEYS = ("name", "public_key", "public_key_file", "apps", "namespaces", "valid_after",
               "valid_before")
DEFAULT_NAMESPACES = (NAMESPACE,)
# ssh-keygen's absolute times (parse_absolute_time): YYYYMMDD[HHMM[SS]], Z for UTC.
_SSH_TIME_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?([zZ]?)\Z")
# An SSHSIG namespace pattern as allowed_signers has them: no separators or quotes.
_NAMESPACE_RE = re.compile(r"^!?[A-Za-z0-9_.@*?+-]+\Z")
# The characters of app names (manifest.APP_NAME_RE): what a glob is expanded over.
_APP_NAME_CHARS = "-.0123456789_abcdefghijklmnopqrstuvwxyz"
MAX_EXPORTED_PRINCIPALS = 1024
# What a glob can contain and still match such a name.
_APPS_GLOB_RE = re.compile(r"^[a-z0-9_.*?\[\]!-]+\Z")
_SIGNER_HEADER_RE = re.compile(r"""^\s*\[\[\s*(?:signer|"signer"|'signer')\s*\]\]\s*(?:#.*)?$""")
_TOML_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

FORMAT_HINT = "the format is in README.md, section \"Trust policy\""
PERMISSION_HINT = ("whoever can change the trust policy decides what runs: make it "
                   "root-owned and `chmod go-w` it")


@dataclass(frozen=True)
class ValidityTime:
    """valid_after / valid_before: the policy's text and the instant it means."""

    text: str  # as written, e.g. "20260101Z" (exported to allowed_signers unchanged)
    epoch: int
    where: str  # "file:line: signer[N].valid_before"

    def describe(self) -> str:
        return f"{self.text} ({format_utc(self.epoch)})"


@dataclass(frozen=True)
class TrustedSigner:
    name: str
    public_key: PublicKey
    apps: tuple[str, ...]  # app name globs (see app_glob_matches)
    where: str  # "file:line: signer[N]" of its table, for messages
    apps_where: str  # "file:line: signer[N].apps"
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES  # SSHSIG namespace patterns
    valid_after: ValidityTime | None = None
    valid_before: ValidityTime | None = None
    namespaces_where: str = ""

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    def allows(self, app_name: str) -> bool:
        return any(app_glob_matches(glob, app_name) for glob in self.apps)

    def allows_namespace(self, namespace: str) -> bool:
        return ssh_pattern_list_matches(namespace, self.namespaces)

    def window_problem(self, now: float) -> tuple[str, str] | None:
        """(what, hint) when `now` is outside [valid_after, valid_before], as ssh-keygen
        decides: not yet valid before valid_after, expired after valid_before."""
        shown = f"{self.name!r} ({self.fingerprint})"
        if self.valid_after is not None and now < self.valid_after.epoch:
            return (f"is signed by {shown}, whose key is valid only from "
                    f"{self.valid_after.describe()} on (rule {self.valid_after.where}); it is "
                    f"now {format_utc(now)}",
                    f"wait until then, or move valid_after of {self.name!r} if the key is to "
                    "be trusted now")
        if self.valid_before is not None and now > self.valid_before.epoch:
            return (f"is signed by {shown}, whose key expired at "
                    f"{self.valid_before.describe()} (rule {self.valid_before.where}); it is "
                    f"now {format_utc(now)}",
                    "get the bundle re-signed with a key that is valid now, or extend "
                    f"valid_before of {self.name!r} if this key is still to be trusted")
        return None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key_type": self.public_key.key_type,
                "fingerprint": self.fingerprint,
                "public_key": self.public_key.openssh(with_comment=False),
                "apps": list(self.apps), "namespaces": list(self.namespaces),
                "valid_after": self.valid_after.text if self.valid_after else None,
                "valid_before": self.valid_before.text if self.valid_before else None,
                "where": self.where}


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

    def to_json(self) -> dict[str, Any]:
        return {"policy": str(self.path), "signers": [s.to_json() for s in self.signers],
                "min_version": {app: m.text for app, m in sorted(self.min_versions.items())}}


def format_utc(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def parse_ssh_time(text: str) -> int:
    """An allowed_signers time (YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS; a final Z means
    UTC, else local time as ssh-keygen's mktime reads it) as seconds since the epoch;
    ValueError when it is none of those or not a real date."""
    match = _SSH_TIME_RE.match(text)
    if not match:
        raise ValueError("not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally with a "
                         "final Z for UTC")
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups()[:6])
    datetime.datetime(year, month, day, hour, minute, second)  # ValueError if not a date
    fields = (year, month, day, hour, minute, second, 0, 0, 0)
    # Without Z: local time with tm_isdst=0, exactly what ssh-keygen's mktime sees.
    epoch = calendar.timegm(fields) if match.group(7) else int(time.mktime(fields))
    if epoch <= 0:
        raise ValueError("before 1970")
    return epoch


def is_local_time(text: str) -> bool:
    """Whether an allowed_signers time has no final Z: local time, which each process
    reads in its own time zone (TZ), so that `exec`, a warm decision cached by another
    run and ssh-keygen may disagree on the instant."""
    return not text.endswith(("Z", "z"))


def utc_ssh_time(text: str) -> str:
    """The same instant as an allowed_signers time in UTC, with Z: `20250101` read in
    this process's time zone (EST: 20250101050000Z); a UTC time is kept, its z made
    upper case. As short as the instant allows (YYYYMMDD[HHMM[SS]]Z). ValueError as
    parse_ssh_time."""
    epoch = parse_ssh_time(text)
    if not is_local_time(text):
        return text[:-1] + "Z"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    form = ("%Y%m%d" if (moment.hour, moment.minute, moment.second) == (0, 0, 0) else
            "%Y%m%d%H%M" if moment.second == 0 else "%Y%m%d%H%M%S")
    return moment.strftime(form) + "Z"


def local_time_warnings(policy: TrustPolicy) -> list[Problem]:
    """A warning for each valid_after/valid_before without Z (`sandrun trust check`)."""
    warnings = []
    for signer in policy.signers:
        for label, moment in (("valid_after", signer.valid_after),
                              ("valid_before", signer.valid_before)):
            if moment is None or not is_local_time(moment.text):
                continue
            zone = time.tzname[0] or "UTC"
            warnings.append(Problem(
                moment.where, f"{label} {moment.text!r} has no Z: it is local time, read in "
                f"the time zone of each process that checks it (here {zone}: "
                f"{format_utc(moment.epoch)}); sandrun exec under another TZ, a decision "
                "cached by an earlier exec, and ssh-keygen may take it for another instant",
                f"write it in UTC: {label} = \"{utc_ssh_time(moment.text)}\" (this instant "
                f"in {zone}), as `sandrun trust add` does"))
    return warnings


def ssh_pattern_list_matches(name: str, patterns: Sequence[str]) -> bool:
    """OpenSSH's match_pattern_list: some pattern matches and no negated (!) one does;
    `*` and `?` are the only wildcards."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        if re.fullmatch(regex, name, re.DOTALL):
            if negated:
                return False
            matched = True
    return matched


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
                bundle_label: str, now: float | None = None) -> list[Problem]:
    """Every rule of `policy` that the bundle fails at time `now` (default: now); an empty
    list means trusted.

    `manifest` and `signature` must come from a bundle that passed verification
    (`VerifyResult.manifest` and `.signature_status`, or `signature.signature_status`).
    """
    problems: list[Problem] = []
    app, version = manifest.app_name, manifest.app_version
    now = time.time() if now is None else now

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
            refuse(f"is signed by {info.key_type} key {info.fingerprint}, which is not in "
                   f"the trust policy {policy.path}",
                   f"if you trust this key for {app}, add it: `sandrun trust add KEY.pub "
                   f"--apps {app} --policy {policy.path}` (or a [[signer]] with public_key = "
                   f"\"{info.public_key.openssh(with_comment=False)}\" and apps = "
                   f"[\"{app}\"]); {app} may be signed by: {allowed}")
        else:
            if not signer.allows(app):
                globs = ", ".join(repr(g) for g in signer.apps)
                refuse(f"is signed by {signer.name!r} ({signer.fingerprint}), which may sign "
                       f"only apps matching {globs}, not {app!r} (rule {signer.apps_where})",
                       f"if {signer.name!r} may sign {app}, add \"{app}\" to its apps; {app} "
                       f"may be signed by: {allowed}")
            namespace = info.sshsig.namespace
            if not signer.allows_namespace(namespace):
                refuse(f"is signed by {signer.name!r} ({signer.fingerprint}), whose namespaces "
                       f"{list(signer.namespaces)} do not include {namespace!r} (rule "
                       f"{signer.namespaces_where or signer.where})",
                       f"add \"{namespace}\" to its namespaces if the key may sign bundles")
            window = signer.window_problem(now)
            if window is not None:
                refuse(*window)

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
                  bundle_label: str, now: float | None = None) -> None:
    """check_trust, raising TrustError with every failing rule (exit 125)."""
    problems = check_trust(policy, manifest, signature, bundle_label, now)
    if problems:
        count = len(problems)
        raise TrustError(f"{bundle_label} is not trusted by {policy.path} ({count} "
                         f"rule{'s' if count != 1 else ''} failed)", problems,
                         "sandrun runs a bundle only when it passes every rule of the trust "
                         "policy")


def trusted_until(policy: TrustPolicy, signature: SignatureStatus) -> int | None:
    """When the policy's acceptance of this signature's key ends by itself (its signer's
    valid_before), None if never: a cached decision must not outlive it."""
    info = signature.info
    signer = policy.signer_for(info.public_key) if info is not None else None
    if signer is None or signer.valid_before is None:
        return None
    return signer.valid_before.epoch


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
    """Read and validate a policy file; TrustError lists every problem at once, or says
    that there is no such file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise TrustError(f"trust policy {path} does not exist", [],
                         f"check the path; create a policy with `sandrun trust add KEY.pub "
                         f"--apps APP` (--policy FILE for another path than "
                         f"{DEFAULT_TRUST_PATH}). Without {DEFAULT_TRUST_PATH}, `sandrun "
                         "exec` runs any bundle, signed or not")
    problems: list[Problem] = []
    text = _read_checked(path, str(path), "trust policy", MAX_POLICY_BYTES, problems)
    if text is not None:
        policy = _check_policy_text(path, text, problems)
        if policy is not None and not problems:
            return policy
    raise _invalid(path, problems)


def _invalid(path: Path, problems: list[Problem]) -> TrustError:
    count = len(problems)
    return TrustError(f"trust policy {path} is invalid ({count} problem"
                      f"{'s' if count != 1 else ''})", problems,
                      "sandrun runs no bundle under an invalid trust policy; fix every "
                      "problem listed")


def _check_policy_text(path: Path, text: str, problems: list[Problem]) -> TrustPolicy | None:
    label = str(path)
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
        return None
    return _Checker(path, text, problems).check(data)


class UnsafePath(Exception):
    """A path that someone other than root (or the user running sandrun) could redirect:
    `what` says which component and why, `hint` how to fix it."""

    def __init__(self, what: str, hint: str = PERMISSION_HINT) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint


MAX_SYMLINKS = 40  # as the kernel's path walk


def open_owned_path(path: str | Path, *, missing_ok: bool = False
                    ) -> tuple[int, os.stat_result, list[str]]:
    """An O_PATH fd of `path` and its stat, resolved so that only root or the user running
    sandrun can change what it names (the rule of sandbox.kernel.open_trusted_path, plus
    ownership of every directory):

    - every directory on the way is owned by root or this user and not writable by group
      or others, except a sticky one such as /tmp (others cannot replace its entries they
      do not own; the next component's owner is checked in turn);
    - a symbolic link is followed only when it is root's or this user's and every
      directory so far, sticky or not, passed the rule above without being writable by
      others: one below /tmp is refused, as `exec` refuses it.

    Relative paths are taken from the working directory (`..` collapsed lexically).
    UnsafePath when a component breaks the rule; FileNotFoundError (a dangling link too)
    and other OSErrors as the walk meets them. With `missing_ok`, a missing component
    ends the walk instead: the fd is the deepest existing directory and the list holds the
    names still to be created under it.
    """
    owners = {0, os.geteuid()}
    absolute = os.path.abspath(path)
    todo = [part for part in reversed(absolute.split("/")) if part not in ("", ".")]
    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parents: list[int] = []
    walked = [""]
    writable_by_others: str | None = None  # the first sticky directory passed
    links = 0
    try:
        st = os.fstat(current)
        while todo:
            name = todo.pop()
            here = "/".join(walked) or "/"
            problem = _write_access_problem(st, True)
            if problem:
                raise UnsafePath(f"the directory {here} {problem}")
            if st.st_mode & 0o022 and writable_by_others is None:
                writable_by_others = f"{here} (mode {stat.S_IMODE(st.st_mode):04o})"
            if name == "..":  # only from a link's target: `path` was collapsed
                if writable_by_others is not None:
                    raise UnsafePath(f"a link's target leads back out of {here}, below "
                                     f"{writable_by_others}, which others can write",
                                     "point the link straight at its target")
                if parents:
                    os.close(current)
                    current = parents.pop()
                    walked.pop()
                    st = os.fstat(current)
                continue
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            except FileNotFoundError:
                if not missing_ok or ".." in todo:
                    raise
                result, current = current, -1
                return result, st, [name, *reversed(todo)]
            found = os.fstat(fd)
            if stat.S_ISLNK(found.st_mode):
                where = "/".join([*walked, name])
                try:
                    if writable_by_others is not None:
                        raise UnsafePath(
                            f"{where} is a symbolic link below {writable_by_others}, which "
                            "others can write: sandrun does not follow it",
                            f"give the real path instead of {where} (links are followed only "
                            "in directories that nobody but root or you can write)")
                    if found.st_uid not in owners:
                        raise UnsafePath(f"{where} is a symbolic link owned by uid "
                                         f"{found.st_uid}: sandrun does not follow it",
                                         f"give the real path instead of {where}")
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), absolute)
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                if target.startswith("/"):
                    for old in (current, *parents):
                        os.close(old)
                    parents, current = [], -1
                    current = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    walked = [""]
                    st = os.fstat(current)
                continue
            parents.append(current)
            current, st = fd, found
            walked.append(name)
        result, current = current, -1
        return result, st, []
    finally:
        for old in (current, *parents):
            if old >= 0:
                os.close(old)


def _read_checked(path: Path, where: str, what: str, limit: int,
                  problems: list[Problem]) -> str | None:
    """A small UTF-8 file that only root (or we) can change, reached through directories
    and links only root (or we) can change (open_owned_path), or None with a problem."""
    try:
        path_fd, info, _ = open_owned_path(path)
    except UnsafePath as exc:
        problems.append(Problem(where, f"{what} {path}: {exc.what}", exc.hint))
        return None
    except (FileNotFoundError, NotADirectoryError):
        problems.append(Problem(where, f"{what} {path} does not exist",
                                "check the path (a dangling symlink also counts)"))
        return None
    except OSError as exc:
        problems.append(Problem(where, f"cannot open {what} {path}: {exc.strerror}",
                                "check the path and its permissions"))
        return None
    try:
        if not stat.S_ISREG(info.st_mode):
            problems.append(Problem(where, f"{what} {path} is not a regular file",
                                    "give the path of a file"))
            return None
        problem = _write_access_problem(info, False)
        if problem:
            problems.append(Problem(where, f"{what} {path} {problem}", PERMISSION_HINT))
            return None
        try:  # the file the walk found, not the path again
            fd = os.open(f"/proc/self/fd/{path_fd}",
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            problems.append(Problem(where, f"cannot open {what} {path}: {exc.strerror}",
                                    "check its permissions (and that /proc is mounted)"))
            return None
    finally:
        os.close(path_fd)
    with os.fdopen(fd, "rb") as handle:
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
            elif key == "provenance":  # PEP 740 pins and requirements: provenance.py's table
                from sandrun.supply.provenance import check_provenance_table

                self.problems.extend(check_provenance_table(value, self.label)[1])
            elif key in SIGNER_KEYS:
                self.add(self.where(key), f"{key} must be inside a [[signer]] table",
                         f"put a [[signer]] line before it; {FORMAT_HINT}")
            else:
                close = _closest(key, TOP_KEYS)
                self.add(self.where(key), f"unknown key {key!r}",
                         (f"did you mean {close!r}? " if close else "")
                         + "the policy has [[signer]] tables, a [min_version] and a [provenance] "
                         "table")
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
        namespaces = self.check_namespaces(index, table.get("namespaces", DEFAULT_NAMESPACES))
        found = len(self.problems)
        after = self.check_time(index, "valid_after", table.get("valid_after"))
        before = self.check_time(index, "valid_before", table.get("valid_before"))
        ok = ok and len(self.problems) == found
        if after is not None and before is not None and before.epoch <= after.epoch:
            ok = False
            self.add(before.where, f"valid_before {before.describe()} is not after valid_after "
                     f"{after.describe()}: the key would never be valid",
                     "swap them, or correct one")
        if not ok or public_key is None or apps is None or namespaces is None:
            return None
        assert isinstance(name, str)
        return TrustedSigner(name, public_key, apps, self.signer_where(index),
                             self.signer_where(index, "apps"), namespaces, after, before,
                             self.signer_where(index, "namespaces"))

    def check_namespaces(self, index: int, value: object) -> tuple[str, ...] | None:
        where = self.signer_where(index, "namespaces")
        if value == DEFAULT_NAMESPACES:
            return DEFAULT_NAMESPACES
        if not isinstance(value, list) or not value:
            self.add(where, "namespaces must be a non-empty array of SSHSIG namespaces, got "
                     f"{_type_name(value) if value != [] else 'an empty one'}",
                     f"write namespaces = [\"{NAMESPACE}\"] (the default), or leave it out")
            return None
        ok = True
        for item in value:
            if not isinstance(item, str) or not _NAMESPACE_RE.match(item):
                ok = False
                shown = repr(item) if isinstance(item, str) else _type_name(item)
                self.add(self.signer_where(index, "namespaces", item),
                         f"{shown} is not a namespace pattern (letters, digits, '.', '_', "
                         "'-', '@', '+' and the wildcards * and ?, optionally after !)",
                         f"write e.g. \"{NAMESPACE}\"")
        if not ok:
            return None
        patterns = tuple(dict.fromkeys(value))
        if not ssh_pattern_list_matches(NAMESPACE, patterns):
            self.add(where, f"namespaces {list(patterns)} exclude {NAMESPACE!r}: the key could "
                     "sign no bundle", f"add \"{NAMESPACE}\", or remove the [[signer]]")
            return None
        return patterns

    def check_time(self, index: int, key: str, value: object) -> ValidityTime | None:
        """The time; None when absent or invalid (then a problem was added)."""
        if value is None:
            return None
        where = self.signer_where(index, key)
        if not isinstance(value, str):
            self.add(where, f"{key} must be a string like \"20260101Z\", got "
                     f"{_type_name(value)}", "write it as ssh-keygen does, in quotes: "
                     "YYYYMMDD[HHMM[SS]] with a final Z for UTC")
            return None
        try:
            epoch = parse_ssh_time(value)
        except ValueError as exc:
            self.add(where, f"{value!r} is not a valid time ({exc})",
                     "write e.g. \"20260101\" (midnight) or \"20260101120000Z\" (UTC)")
            return None
        return ValidityTime(value, epoch, where)

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


# ---------------------------------------------------------------------------------------
# allowed_signers


def glob_principals(glob: str) -> list[str]:
    """ssh-keygen principal patterns that match exactly the app names `glob` matches.

    allowed_signers patterns have `*` and `?` but no character classes, so each [...] is
    expanded into the app-name characters it matches (ValueError when that gives more
    than MAX_EXPORTED_PRINCIPALS patterns). `*` and `?` keep their meaning: ssh's also
    match `/`, ours do not, but no app name contains `/`. [] when no app name can match
    (e.g. a character app names never have, such as a literal `!`)."""
    options: list[list[str]] = []
    index, end = 0, len(glob)
    while index < end:
        char = glob[index]
        index += 1
        if char in "*?":
            options.append([char])
            continue
        if char == "[":
            close = index
            if close < end and glob[close] == "!":
                close += 1
            if close < end and glob[close] == "]":
                close += 1
            while close < end and glob[close] != "]":
                close += 1
            if close < end:
                members = [c for c in _APP_NAME_CHARS
                           if app_glob_pattern(glob[index - 1:close + 1]).match(c)]
                index = close + 1
                if not members:
                    return []
                options.append(members)
                continue
        if char not in _APP_NAME_CHARS:
            return []
        options.append([char])
    count = 1
    for choice in options:
        count *= len(choice)
        if count > MAX_EXPORTED_PRINCIPALS:
            raise ValueError(f"its character classes expand to more than "
                             f"{MAX_EXPORTED_PRINCIPALS} patterns")
    patterns = [""]
    for choice in options:
        patterns = [p + c for p in patterns for c in choice]
    return patterns


def export_allowed_signers(policy: TrustPolicy) -> str:
    """The policy as an ssh-keygen allowed_signers file whose principals are app names:
    `ssh-keygen -Y verify -f FILE -I APP -n sandrun -s message.sig < message` accepts a
    signature exactly when the policy's signer rules do. TrustError when a glob cannot be
    written as ssh patterns."""
    lines = [f"# The trust policy {policy.path} as an ssh-keygen allowed_signers file "
             "(`sandrun trust export-allowed-signers`).",
             "# Principals are app names: ssh-keygen -Y verify -f THIS_FILE -I APP -n "
             f"{NAMESPACE} -s DIR/message.sig < DIR/message",
             "# (`sandrun inspect --sshsig DIR BUNDLE` writes DIR/message and "
             "DIR/message.sig)."]
    if policy.min_versions:
        floors = sorted(policy.min_versions.items())
        lines.append("# Not expressible here, enforced by sandrun only: min_version "
                     + ", ".join(f"{app} >= {floor.text}" for app, floor in floors))
    problems: list[Problem] = []
    for signer in policy.signers:
        principals: list[str] = []
        for glob in signer.apps:
            try:
                principals += glob_principals(glob)
            except ValueError as exc:
                problems.append(Problem(signer.apps_where, f"{glob!r} cannot be written as "
                                        f"allowed_signers patterns: {exc}",
                                        "use * and ? or smaller character classes"))
        lines.append(f"# signer {json.dumps(signer.name)} ({signer.where})")
        if not principals:
            lines.append("#   omitted: no app name can match its apps")
            continue
        options = [f'namespaces="{",".join(signer.namespaces)}"']
        if signer.valid_after is not None:
            options.append(f'valid-after="{signer.valid_after.text}"')
        if signer.valid_before is not None:
            options.append(f'valid-before="{signer.valid_before.text}"')
        lines.append(f"{','.join(dict.fromkeys(principals))} {','.join(options)} "
                     f"{signer.public_key.openssh(with_comment=False)}")
    if problems:
        raise TrustError(f"trust policy {policy.path} cannot be exported as allowed_signers",
                         problems, "change the globs listed")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Adding a signer


POLICY_MODE = 0o644
POLICY_HEADER = (
    "# sandrun trust policy: which keys may sign which apps (README.md, \"Trust policy\").\n"
    "# Written by `sandrun trust add`; edit it freely, `sandrun trust check` validates it.\n")


@dataclass(frozen=True)
class AddedSigner:
    policy: TrustPolicy
    signer: TrustedSigner
    created: bool  # the policy file did not exist before
    notes: tuple[str, ...] = ()  # for people: times converted to UTC, exec's view of it


def add_signer(policy_path: Path, public_key_file: Path, apps: Sequence[str], *,
               name: str | None = None, namespaces: Sequence[str] | None = None,
               valid_after: str | None = None, valid_before: str | None = None
               ) -> AddedSigner:
    """Append a [[signer]] for the key in `public_key_file` to the policy (created if
    missing, with its missing directories), after checking that the result is a valid
    policy that the reading side (load_trust_policy, as `exec` uses it) will accept; the
    file is replaced atomically (0644, owned by the caller). Refuses a key or name
    already in the policy. `name` defaults to the key's comment, else the file name
    without .pub. Times are written in UTC with Z (a time without Z is read in this
    process's time zone and converted: `notes` says so).

    Everything is checked before anything is created: a refusal leaves no file and no
    directory behind."""
    policy_path, public_key_file = Path(policy_path), Path(public_key_file)
    key = _read_key_to_add(public_key_file)
    if os.path.islink(policy_path):  # replacing it would turn the link into a file
        raise TrustError(f"{policy_path} is a symlink (to {os.readlink(policy_path)})", [],
                         "pass the policy file itself with --policy")
    notes: list[str] = []
    valid_after = _utc_option("valid-after", valid_after, notes)
    valid_before = _utc_option("valid-before", valid_before, notes)
    name = name if name is not None else _default_name(key, public_key_file)
    table = _signer_table(name, key, apps, namespaces, valid_after, valid_before)
    absolute = Path(os.path.abspath(policy_path))
    directory = absolute.parent
    if not absolute.name:
        raise TrustError(f"{policy_path} is not a file name", [], "give the policy's path")
    try:
        dir_fd, dir_info, missing = open_owned_path(directory, missing_ok=True)
    except UnsafePath as exc:
        raise TrustError(f"cannot write the trust policy {policy_path}: {exc.what}", [],
                         exc.hint + "; nothing was written") from None
    except OSError as exc:
        raise TrustError(f"cannot use the directory {directory}: {exc.strerror}", [],
                         "create it, or give another --policy path") from None
    made: list[tuple[int, str]] = []
    try:
        problem = _write_access_problem(dir_info, True)  # the policy's own directory
        if problem:
            raise TrustError(f"cannot write the trust policy {policy_path}: the directory "
                             f"{directory} {problem}", [], PERMISSION_HINT
                             + "; nothing was written")
        if missing:  # no policy can be there yet: check the new one before mkdir
            _policy_with(policy_path, key, table, public_key_file)
            dir_fd = _make_directories(dir_fd, missing, directory, made)
        try:
            lock_fd = os.open(f"/proc/self/fd/{dir_fd}",
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TrustError(f"cannot open the directory {directory}: {exc.strerror}", [],
                             "give another --policy path") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two `trust add` at once: one after the other
            text, policy, created = _policy_with(policy_path, key, table, public_key_file)
            _replace_policy(lock_fd, absolute, text)
        finally:
            os.close(lock_fd)
    except BaseException:
        for parent_fd, made_name in reversed(made):  # a refusal leaves nothing behind
            with contextlib.suppress(OSError):
                os.rmdir(made_name, dir_fd=parent_fd)
        raise
    finally:
        for fd in {dir_fd, *(parent_fd for parent_fd, _ in made)}:
            os.close(fd)
    if created and os.geteuid() != 0:
        notes.append(f"{policy_path} is owned by uid {os.geteuid()}: `sandrun verify --trust` "
                     "run by this user accepts it, but `sandrun exec` (root) reads only a "
                     "policy that root owns, in directories only root can change; write the "
                     "operator's policy as root")
    signer = policy.signer_for(key)
    assert signer is not None
    return AddedSigner(policy, signer, created, tuple(notes))


def _utc_option(option: str, given: str | None, notes: list[str]) -> str | None:
    """A --valid-after/--valid-before time as written to the policy: in UTC with Z. An
    invalid one is kept as given, for the policy check to report where it would be."""
    if given is None:
        return None
    try:
        utc = utc_ssh_time(given)
    except ValueError:
        return given
    if is_local_time(given):
        notes.append(f"--{option} {given} is local time ({time.tzname[0] or 'UTC'}): "
                     f"written as {utc} (UTC), which every process and ssh-keygen read alike")
    return utc


def _policy_with(policy_path: Path, key: PublicKey, table: str, public_key_file: Path
                 ) -> tuple[str, TrustPolicy, bool]:
    """(new text, its policy, whether the file is new): the current policy (if any) with
    `table` appended, checked as load_trust_policy checks it; TrustError otherwise."""
    created = not os.path.lexists(policy_path)
    text = POLICY_HEADER
    if not created:
        problems: list[Problem] = []
        read = _read_checked(policy_path, str(policy_path), "trust policy",
                             MAX_POLICY_BYTES, problems)
        current = None if read is None else _check_policy_text(policy_path, read, problems)
        if read is None or current is None or problems:
            raise _invalid(policy_path, problems)
        text = read
        same = current.signer_for(key)
        if same is not None:
            raise TrustError(f"key {key.fingerprint} is already in {policy_path}, as "
                             f"signer {same.name!r} ({same.where})", [],
                             "edit that [[signer]] to change its apps, times or "
                             "namespaces; a key appears once")
    new_text = text + ("" if text.endswith("\n") or not text else "\n")
    new_text += ("\n" if new_text.strip() else "") + table
    problems = []
    policy = _check_policy_text(policy_path, new_text, problems)
    if policy is None or problems:
        raise TrustError(f"cannot add {public_key_file} to {policy_path}: the policy "
                         f"would be invalid ({len(problems)} problem"
                         f"{'s' if len(problems) != 1 else ''})", problems,
                         "nothing was written; fix the options (or the policy) and retry")
    return new_text, policy, created


def _make_directories(dir_fd: int, names: list[str], directory: Path,
                      made: list[tuple[int, str]]) -> int:
    """Create `names` one below the other under `dir_fd` (0755, ours, so that they pass
    the reading check); the fd of the last. Each is recorded in `made` as (fd of its
    parent, kept open, name), to be removed after a later refusal. Takes over `dir_fd`."""
    first = dir_fd  # the caller closes it
    for name in names:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            made.append((dir_fd, name))
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as exc:
            if dir_fd != first and all(dir_fd != parent for parent, _ in made):
                os.close(dir_fd)
            raise TrustError(f"cannot create {name!r} on the way to {directory}: "
                             f"{exc.strerror}", [],
                             "create the directory, or give another --policy path") from None
        dir_fd = fd
    return dir_fd


def _read_key_to_add(path: Path) -> PublicKey:
    problems: list[Problem] = []
    text = _read_any(path, problems)
    if text is None:
        raise TrustError(f"cannot read the public key {path}", problems,
                         "pass the signer's .pub file")
    if text.lstrip().startswith("-----BEGIN"):
        raise TrustError(f"{path} is not a public key (it is a private key or another PEM "
                         "file)", [], "pass the signer's public key, KEY.pub: a policy never "
                         "needs the private key")
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("#")]
    if len(lines) != 1:
        raise TrustError(f"{path} holds {len(lines)} key lines, not one", [],
                         "add each key on its own, from its own .pub file")
    try:
        return parse_public_key(lines[0], str(path))
    except KeyFileError as exc:
        raise TrustError(exc.message, [], exc.hint) from None


def _read_any(path: Path, problems: list[Problem]) -> str | None:
    """A small UTF-8 file (a public key: who can write it does not matter, its content is
    copied into the policy and shown)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot open: {exc.strerror}", "check the path"))
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            problems.append(Problem(str(path), "not a regular file", "give a .pub file"))
            return None
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        problems.append(Problem(str(path), f"larger than {MAX_KEY_FILE_BYTES} bytes",
                                "give a .pub file"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem(str(path), "not UTF-8 text", "give a .pub file"))
        return None


def _default_name(key: PublicKey, path: Path) -> str:
    if key.comment and key.comment.strip() and key.comment.isprintable():
        return key.comment
    return path.name.removesuffix(".pub")


def _signer_table(name: str, key: PublicKey, apps: Sequence[str],
                  namespaces: Sequence[str] | None, valid_after: str | None,
                  valid_before: str | None) -> str:
    lines = ["[[signer]]", f"name = {_toml_string(name)}",
             f"public_key = {_toml_string(key.openssh())}",
             f"apps = [{', '.join(_toml_string(a) for a in apps)}]"]
    if namespaces is not None and tuple(namespaces) != DEFAULT_NAMESPACES:
        lines.append(f"namespaces = [{', '.join(_toml_string(n) for n in namespaces)}]")
    if valid_after is not None:
        lines.append(f"valid_after = {_toml_string(valid_after)}")
    if valid_before is not None:
        lines.append(f"valid_before = {_toml_string(valid_before)}")
    return "\n".join(lines) + "\n"


def _replace_policy(dir_fd: int, path: Path, text: str) -> None:
    """Temp file beside it (in the directory `dir_fd`, created O_EXCL|O_NOFOLLOW), 0644,
    fsync, rename: readers see the old or the new policy, and no link is followed."""
    tmp_name = f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise TrustError(f"cannot write next to {path}: {exc.strerror}", [],
                         "run as the policy's owner (root for /etc/sandrun)") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fchmod(out.fileno(), POLICY_MODE)
            os.fsync(out.fileno())
        os.replace(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise TrustError(f"cannot write {path}: {exc.strerror}", [],
                         "check free space and permissions") from None
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)
