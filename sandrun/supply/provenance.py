"""PEP 740 provenance of dependencies: who published each wheel, checked offline.

A provenance file (`<wheel file name>.provenance`, the JSON object PyPI's integrity API
serves) holds attestation bundles: each names a Trusted Publisher (e.g. GitHub
`owner/repo`, workflow `release.yml`) and carries Sigstore-signed in-toto statements
whose subject is the wheel's file name and sha256. A wheel's provenance is valid for a
publisher when one of its attestations verifies, offline, against that publisher:
the certificate chains to Sigstore's Fulcio and the signature is in Rekor, both checked
with the trusted root embedded in sigstore-python (no network, no TUF cache read or
written), the certificate's identity is that publisher's, and the statement's subject
is exactly this wheel (name, version, tags and sha256).

Whom to expect is pinned per package, never taken from the file itself: a provenance
that verifies against the publisher it claims proves only that *someone* with a
Sigstore identity signed these bytes. Pins come from PEP 751 `attestation-identities`
in a lock file (`bundle --lock`) or from the `[provenance]` table of a trust policy,
which may also require provenance for named packages:

    [provenance]
    require = ["abi3info"]                 # these must carry valid, pinned provenance
    [provenance.publishers]                # one identity, or an array of them
    abi3info = { kind = "GitHub", repository = "woodruffw/abi3info", workflow = "release.yml" }

Identities use PEP 740's publisher keys: GitHub (`repository`, `workflow`, optional
`environment`), GitLab (`repository`, `workflow_filepath`, optional `environment`) and
Google (`email`). A provenance without a pin is still verified (against the publisher
it names) and recorded as unpinned.

sigstore and pypi-attestations take about a second to import: they are imported only
when a provenance is actually verified, never on the warm exec path.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandrun.bundle.manifest import (
    PUBLISHER_FIELDS,
    PUBLISHER_KINDS,
    Manifest,
    describe_publisher,
)
from sandrun.errors import Problem, ProblemsError

MAX_PROVENANCE_BYTES = 1 << 20  # a provenance is ~10 KB per attestation
MAX_POLICY_BYTES = 1 << 20
POLICY_KEYS = ("require", "publishers")
# What each kind must name; the others of PUBLISHER_FIELDS are optional.
REQUIRED_PUBLISHER_FIELDS = {"GitHub": ("repository", "workflow"),
                             "GitLab": ("repository", "workflow_filepath"),
                             "Google": ("email",)}
_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+\Z")
_DIST_NAME_RE = re.compile(r"^(?:[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
POLICY_HINT = ("see the [provenance] table in README.md: require = [\"pkg\"] and "
               "[provenance.publishers] pkg = { kind = \"GitHub\", repository = "
               "\"owner/repo\", workflow = \"release.yml\" }")
PIN_HINT = ("pin the publisher in the trust policy's [provenance.publishers] or in the "
            "lock file's attestation-identities")
# PEP 740 / in-toto: the statement type and the predicate types PyPI knows.
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPES = ("https://docs.pypi.org/attestations/publish/v1",
                   "https://slsa.dev/provenance/v1")
SIGSTORE_TUF_URL = "https://tuf-repo-cdn.sigstore.dev"

Publisher = Mapping[str, str]


class ProvenanceError(ProblemsError):
    """A dependency's provenance is missing where required, malformed, or does not verify
    against its pinned publisher (exec: exit 125)."""


@dataclass(frozen=True)
class ProvenancePolicy:
    """The `[provenance]` table of a trust policy."""

    source: str
    require: tuple[str, ...] = ()  # canonical names
    publishers: Mapping[str, tuple[Publisher, ...]] = field(default_factory=dict)

    def pins_for(self, name: str) -> tuple[Publisher, ...]:
        from packaging.utils import canonicalize_name

        return self.publishers.get(canonicalize_name(name), ())

    def requires(self, name: str) -> bool:
        from packaging.utils import canonicalize_name

        return canonicalize_name(name) in self.require

    @property
    def empty(self) -> bool:
        return not self.require and not self.publishers


# ---------------------------------------------------------------------------------------
# Publishers and the policy table


def publisher_problems(value: object, where: str) -> tuple[dict[str, str] | None, list[Problem]]:
    """A publisher identity (PEP 740 keys) as a plain dict, or None and what is wrong."""
    problems: list[Problem] = []
    if not isinstance(value, Mapping):
        return None, [Problem(where, f"must be a table with kind = \"GitHub\" (or GitLab, "
                                     f"Google) and its keys, got {type(value).__name__}",
                              POLICY_HINT)]
    kind = value.get("kind")
    if kind not in PUBLISHER_FIELDS:
        return None, [Problem(f"{where}.kind", f"{kind!r} is not a publisher kind sandrun "
                                               f"verifies ({', '.join(PUBLISHER_KINDS)})",
                              POLICY_HINT)]
    allowed = PUBLISHER_FIELDS[kind]
    identity = {"kind": str(kind)}
    for key, item in value.items():
        if key == "kind":
            continue
        if key not in allowed:
            problems.append(Problem(f"{where}.{key}", f"unknown key for a {kind} publisher "
                                    f"(it has {', '.join(allowed)})", POLICY_HINT))
        elif not isinstance(item, str) or not item or not item.isprintable() \
                or len(item) > 256:
            problems.append(Problem(f"{where}.{key}", "must be a non-empty string of at most "
                                    "256 printable characters", POLICY_HINT))
        else:
            identity[key] = item
    for key in REQUIRED_PUBLISHER_FIELDS[kind]:
        if key not in value:
            problems.append(Problem(f"{where}.{key}", f"is missing: a {kind} publisher is "
                                    f"pinned by {' and '.join(REQUIRED_PUBLISHER_FIELDS[kind])}",
                                    POLICY_HINT))
    repository = identity.get("repository")
    if repository is not None and not _REPOSITORY_RE.match(repository):
        problems.append(Problem(f"{where}.repository", f"{repository!r} is not owner/name",
                                POLICY_HINT))
    return (None if problems else identity), problems


def check_provenance_table(value: object, label: str) -> tuple[ProvenancePolicy | None,
                                                                 list[Problem]]:
    """Validate a trust policy's `[provenance]` table (what trust.py delegates to);
    every problem at once, `where` = "FILE: provenance.KEY"."""
    from packaging.utils import canonicalize_name

    where = f"{label}: provenance"
    if not isinstance(value, Mapping):
        return None, [Problem(where, "must be a table", POLICY_HINT)]
    problems: list[Problem] = []
    for key in value:
        if key not in POLICY_KEYS:
            problems.append(Problem(f"{where}.{key}", f"unknown key (the table has "
                                    f"{', '.join(POLICY_KEYS)})", POLICY_HINT))
    require: list[str] = []
    raw_require = value.get("require", [])
    if not isinstance(raw_require, list):
        problems.append(Problem(f"{where}.require", "must be an array of package names",
                                POLICY_HINT))
        raw_require = []
    for index, name in enumerate(raw_require):
        if not isinstance(name, str) or not _DIST_NAME_RE.match(name):
            problems.append(Problem(f"{where}.require[{index}]", f"{name!r} is not a package "
                                    "name", POLICY_HINT))
        else:
            require.append(canonicalize_name(name))
    publishers: dict[str, tuple[Publisher, ...]] = {}
    raw_publishers = value.get("publishers", {})
    if not isinstance(raw_publishers, Mapping):
        problems.append(Problem(f"{where}.publishers", "must be a table of package = "
                                "publisher", POLICY_HINT))
        raw_publishers = {}
    for name, raw in raw_publishers.items():
        pwhere = f"{where}.publishers.{name}"
        if not _DIST_NAME_RE.match(name):
            problems.append(Problem(pwhere, f"{name!r} is not a package name", POLICY_HINT))
            continue
        entries = raw if isinstance(raw, list) else [raw]
        if not entries:
            problems.append(Problem(pwhere, "is empty: give at least one publisher",
                                    POLICY_HINT))
            continue
        found: list[Publisher] = []
        for index, entry in enumerate(entries):
            identity, more = publisher_problems(
                entry, f"{pwhere}[{index}]" if isinstance(raw, list) else pwhere)
            problems += more
            if identity is not None:
                found.append(identity)
        canonical = canonicalize_name(name)
        if canonical in publishers:
            problems.append(Problem(pwhere, f"{canonical!r} is pinned twice (names are "
                                    "compared normalised)", POLICY_HINT))
        publishers[canonical] = tuple(found)
    for name in dict.fromkeys(require):
        if name not in publishers:
            problems.append(Problem(f"{where}.require", f"{name!r} is required but has no "
                                    "publisher in [provenance.publishers]: a provenance "
                                    "checked only against the publisher it names proves "
                                    "nothing about who published the wheel", POLICY_HINT))
    if problems:
        return None, problems
    return ProvenancePolicy(label, tuple(dict.fromkeys(require)), publishers), []


def load_provenance_policy(path: Path) -> ProvenancePolicy:
    """The `[provenance]` table of the trust policy at `path` (empty when it has none).

    The file must be owned by root or the running user and not writable by group or
    others (as trust.py requires of the whole policy); ProvenanceError lists every
    problem of the table. Other tables are trust.py's to validate.
    """
    label = str(path)
    text = _read_policy(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvenanceError(f"trust policy {label} is not valid TOML: {exc}",
                              [Problem(label, str(exc), "fix the syntax")]) from None
    if "provenance" not in data:
        return ProvenancePolicy(label)
    policy, problems = check_provenance_table(data["provenance"], label)
    if policy is None:
        count = len(problems)
        raise ProvenanceError(f"the [provenance] table of {label} is invalid ({count} "
                              f"problem{'s' if count != 1 else ''})", problems,
                              "nothing is checked against an invalid policy; fix every "
                              "problem listed")
    return policy


def _read_policy(path: Path) -> str:
    """The policy's text, read as the trust policy itself is (trust._read_checked: through
    directories and links only root, or we, can change; owned and not writable by others;
    bounded)."""
    from sandrun.supply.trust import _read_checked

    where = str(path)
    problems: list[Problem] = []
    text = _read_checked(path, where, "trust policy", MAX_POLICY_BYTES, problems)
    if text is None:
        first = problems[0].what if problems else f"trust policy {path} cannot be read"
        raise ProvenanceError(first, problems)
    return text


def lock_identities(identities: Iterable[Mapping[str, Any]] | None,
                    where: str) -> tuple[tuple[Publisher, ...], list[Problem]]:
    """PEP 751 `attestation-identities` of a locked package as publisher pins."""
    pins: list[Publisher] = []
    problems: list[Problem] = []
    for index, identity in enumerate(identities or ()):
        pin, more = publisher_problems(identity, f"{where}.attestation-identities[{index}]")
        problems += more
        if pin is not None:
            pins.append(pin)
    return tuple(pins), problems


# ---------------------------------------------------------------------------------------
# Verification


def read_provenance_file(path: Path) -> bytes:
    """A provenance file's bytes (size-limited); ProvenanceError if unreadable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PROVENANCE_BYTES + 1)
    except OSError as exc:
        raise ProvenanceError(f"cannot read provenance {path}: {exc.strerror}",
                              [Problem(str(path), exc.strerror or str(exc),
                                       "check the file")]) from None
    if len(data) > MAX_PROVENANCE_BYTES:
        raise ProvenanceError(f"provenance {path} is larger than {MAX_PROVENANCE_BYTES} bytes",
                              [Problem(str(path), "too large", "this is not a provenance file")])
    return data


@dataclass(frozen=True)
class VerifiedProvenance:
    publisher: dict[str, str]  # the identity that verified (the pin when pinned)
    pinned: bool


def verify_provenance(data: bytes, wheel: str, sha256: str,
                      expected: Sequence[Publisher] = (), where: str = "") -> VerifiedProvenance:
    """Verify a PEP 740 provenance for the wheel file `wheel` with this sha256, offline.

    With `expected` (pins), one attestation must verify against one of them; without,
    against the publisher its own bundle names (recorded as unpinned). ProvenanceError
    says which attestation failed and why.
    """
    label = where or f"{wheel}.provenance"
    attestation_bundles = _parse(data, label)
    failures: list[str] = []
    for number, (claimed, attestations) in enumerate(attestation_bundles, 1):
        identities = list(expected) if expected else [claimed]
        for identity in identities:
            if identity.get("kind") != claimed.get("kind") and expected:
                failures.append(f"bundle {number} is from a {claimed.get('kind')} publisher "
                                f"({describe_publisher(claimed)}), the pin is "
                                f"{describe_publisher(identity)}")
                continue
            for index, attestation in enumerate(attestations, 1):
                problem = _verify_one(attestation, identity, wheel, sha256)
                if problem is None:
                    return VerifiedProvenance(dict(identity), bool(expected))
                failures.append(f"attestation {number}.{index} against "
                                f"{describe_publisher(identity)}: {_readable(problem)}")
    if not attestation_bundles:
        failures.append("it holds no attestation bundle")
    hint = ("the wheel or its provenance was altered, or the wheel was published by "
            "someone else: do not use it" if expected else
            "the wheel or its provenance was altered: do not use it")
    raise ProvenanceError(f"the provenance of {wheel} does not verify",
                          [Problem(label, f) for f in dict.fromkeys(failures)], hint)


def _readable(message: str) -> str:
    """sigstore prints a whole certificate extension where the URI in it is what matters."""
    return re.sub(r"<Extension\(oid=.*?(https://[^'\s]+)'\)>\)>", r"\1", message)


def _parse(data: bytes, label: str) -> list[tuple[dict[str, str], list[Any]]]:
    """(claimed publisher, attestations) of every attestation bundle."""
    from pydantic import ValidationError
    from pypi_attestations import Provenance

    try:
        provenance = Provenance.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProvenanceError(f"{label} is not a PEP 740 provenance: {first}",
                              [Problem(label, "not a PEP 740 provenance object",
                                       "give the file PyPI's integrity API serves for this "
                                       "wheel")]) from None
    bundles = []
    for bundle in provenance.attestation_bundles:
        claimed = {k: str(v) for k, v in bundle.publisher.model_dump().items()
                   if v not in (None, "") and k in ("kind", *PUBLISHER_FIELDS.get(
                       str(bundle.publisher.kind), ()))}
        bundles.append((claimed, list(bundle.attestations)))
    return bundles


_VERIFIER: Any = None


def _verifier() -> Any:
    """A Sigstore verifier over the trusted root embedded in sigstore-python: offline,
    and it neither reads nor writes the user's TUF cache."""
    global _VERIFIER
    if _VERIFIER is None:
        from importlib import resources

        from sigstore.models import TrustedRoot
        from sigstore.verify import Verifier

        root = resources.files("sigstore._store").joinpath(
            SIGSTORE_TUF_URL.replace(":", "%3A").replace("/", "%2F"), "trusted_root.json")
        with resources.as_file(root) as path:
            _VERIFIER = Verifier(trusted_root=TrustedRoot.from_file(str(path)))
    return _VERIFIER


def _verify_one(attestation: Any, identity: Publisher, wheel: str, sha256: str) -> str | None:
    """None if `attestation` verifies for `identity` and this wheel, else why not.

    pypi-attestations' Attestation.verify does the same, but only with a verifier that
    reads (and writes) the trusted root in the user's TUF cache: here the embedded root.
    """
    import json

    import sigstore.errors
    from pydantic import TypeAdapter, ValidationError
    from pypi_attestations import Publisher as PublisherModel

    try:
        policy = TypeAdapter(PublisherModel).validate_python(dict(identity))._as_policy()
        bundle = attestation.to_bundle()
        kind, payload = _verifier().verify_dsse(bundle, policy)
    except sigstore.errors.VerificationError as exc:
        return str(exc).splitlines()[0]
    except (ValidationError, ValueError) as exc:
        return f"malformed attestation ({str(exc).splitlines()[0] if str(exc) else exc!r})"
    if kind != "application/vnd.in-toto+json":
        return f"the envelope holds {kind}, not an in-toto statement"
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        subject_name = subjects[0]["name"]
        digest = subjects[0]["digest"]["sha256"]
        predicate_type = statement["predicateType"]
        statement_type = statement["_type"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "the signed statement is not an in-toto statement with a subject"
    if statement_type != STATEMENT_TYPE:
        return f"the statement type is {statement_type!r}, not {STATEMENT_TYPE}"
    if len(subjects) != 1:
        return "the statement has more than one subject"
    if not _same_wheel(subject_name, wheel):
        return f"it is about {subject_name!r}, not {wheel}"
    if digest != sha256:
        return (f"it is about a file with sha256 {digest}, this wheel's is {sha256} (the "
                "wheel was altered or is another build)")
    if predicate_type not in PREDICATE_TYPES:
        return f"unknown attestation type {predicate_type!r}"
    return None


def _same_wheel(subject: object, wheel: str) -> bool:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    if not isinstance(subject, str):
        return False
    try:
        return parse_wheel_filename(subject) == parse_wheel_filename(wheel)
    except InvalidWheelFilename:
        return False


# ---------------------------------------------------------------------------------------
# Bundles


@dataclass(frozen=True)
class DependencyCheck:
    name: str
    version: str
    publisher: str | None  # describe_publisher of the recorded publisher, if any
    pinned: bool
    verified: bool
    problem: str = ""


def check_bundle_provenance(manifest: Manifest, read_entry: Any,
                            policy: ProvenancePolicy | None = None, *,
                            only_required: bool = False
                            ) -> tuple[list[DependencyCheck], list[Problem]]:
    """Re-verify, offline, the provenance a bundle embeds, and check it against `policy`.

    `read_entry(name)` returns an entry's bytes (the bundle is verified already, so they
    are what the manifest lists). Each embedded provenance must verify for its wheel's
    recorded file name and sha256 against the publisher the manifest records; with a
    policy, a pinned package's provenance must verify against its pin, and a required
    package must have one. `only_required` (exec) skips what the policy does not require,
    so that sigstore is imported only when something is required.
    """
    checks: list[DependencyCheck] = []
    problems: list[Problem] = []
    for dep in manifest.dependencies:
        required = policy is not None and policy.requires(dep.name)
        pins = policy.pins_for(dep.name) if policy is not None else ()
        where = f"{dep.name} {dep.version}"
        prov = dep.provenance
        if only_required and not required:
            continue
        if prov is None:
            if required:
                assert policy is not None
                problem = (f"has no provenance, and the trust policy {policy.source} "
                           "requires one" + (" (the bundle's manifest format 1 records "
                                              "none)" if manifest.format < 2 else ""))
                problems.append(Problem(where, problem,
                                        "rebuild the bundle with `sandrun bundle --provenance "
                                        "DIR` (or from an index that serves PEP 740 "
                                        "provenance)"))
                checks.append(DependencyCheck(dep.name, dep.version, None, False, False,
                                              problem))
            continue
        recorded = prov.describe_publisher()
        expected = pins or (prov.publisher,)
        try:
            result = verify_provenance(read_entry(prov.entry), dep.wheel, dep.sha256,
                                       expected, where=prov.entry)
        except ProvenanceError as exc:
            detail = "; ".join(p.what for p in exc.problems) or exc.message
            problem = ("provenance does not verify against "
                       + (" or ".join(describe_publisher(p) for p in pins) + " (pinned by "
                          f"{policy.source})" if pins and policy is not None
                          else f"the recorded publisher {recorded}") + f": {detail}")
            problems.append(Problem(where, problem, exc.hint))
            checks.append(DependencyCheck(dep.name, dep.version, recorded, bool(pins), False,
                                          problem))
            continue
        checks.append(DependencyCheck(dep.name, dep.version,
                                      describe_publisher(result.publisher),
                                      bool(pins) or prov.pinned, True))
    return checks, problems


def require_provenance(manifest: Manifest, read_entry: Any, policy: ProvenancePolicy,
                       bundle: str) -> str | None:
    """exec: refuse (ProvenanceError, 125) when a package the policy requires lacks valid
    provenance from its pinned publisher. Returns a note for the plan, or None when the
    policy requires nothing of this bundle (sigstore is then never imported)."""
    from packaging.utils import canonicalize_name

    needed = [d for d in manifest.dependencies if canonicalize_name(d.name) in policy.require]
    if not needed:
        return None
    checks, problems = check_bundle_provenance(manifest, read_entry, policy,
                                               only_required=True)
    if problems:
        count = len(problems)
        raise ProvenanceError(f"{bundle}: {count} required provenance{'s' if count != 1 else ''}"
                              f" missing or invalid (trust policy {policy.source})", problems,
                              "rebuild the bundle from wheels whose provenance verifies "
                              "against the pinned publishers, or change the policy")
    return ("provenance   " + ", ".join(f"{c.name} from {c.publisher}" for c in checks)
            + f" (required by {policy.source})")
