"""`sandrun exec`: the privileged launch path.

`prepare()` does everything that needs privileges or may fail with a clear
message (open + verify the bundle, install or re-check the store tree, resolve
profile, user and interpreter, build the environment and the rules) and
returns a LaunchPlan. `launch()` then forks; the child applies the protections
in DESIGN.md's fixed order (`_enter_sandbox`) and execs the interpreter. This
module imports only the standard library and sandrun's enforcement modules.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandrun.bundle.manifest import (
    BOOTSTRAP_NAME,
    MANIFEST_NAME,
    PROFILE_NAME,
    Manifest,
    is_bytecode_name,
)
from sandrun.errors import (
    BundleError,
    EnforcementError,
    LaunchRefused,
    Problem,
    SandrunError,
    StoreError,
    UsageError,
    VerificationError,
    VulnerabilityError,
)
from sandrun.launch import bytecode, consent, runner, warm_exec
from sandrun.launch.interpreter import Interpreter, check_wheel_tags, find_interpreter
from sandrun.launch.safefile import read_bundle
from sandrun.launch.store import Store, default_store_path
from sandrun.launch.users import AppUser, check_user, invoking_user, resolve_user
from sandrun.sandbox import kernel, landlock, seccomp
from sandrun.sandbox.status import ENFORCED, ProtectionStatus, enforcement

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandrun.bundle.archive import StrictArchive
    from sandrun.bundle.signature import SignatureStatus
    from sandrun.bundle.verify import PendingVerification, VerifyResult
    from sandrun.config.profile import Profile
    from sandrun.launch.prefetch import PrefetchedBundle
    from sandrun.supply.trust import TrustPolicy


# Files almost every app needs to read; absent ones are skipped (marked so in --dry-run).
# DNS files come with the profile's `dns = true`, certificates with its read lists.
SYSTEM_READ = ("/etc/ld.so.cache", "/etc/locale.alias", "/usr/share/locale/locale.alias",
               "/etc/localtime",
               "/usr/share/zoneinfo", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
               "/usr/lib/locale", "/etc/mime.types", "/sys/devices/system/cpu",
               "/dev/urandom", "/dev/random")
SYSTEM_READ_WRITE = ("/dev/null", "/dev/zero", "/dev/full")
# Privileged launches get a fresh tmpfs on each (systemd's PrivateTmp; /dev/shm for POSIX
# semaphores and shared memory, which multiprocessing needs): {tmp} is /tmp.
PRIVATE_TMP_DIRS = runner.PRIVATE_TMP_DIRS
# Where shared libraries live: read is all dlopen needs (Landlock's EXECUTE governs execve).
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
                "/usr/local/lib")


@dataclass(frozen=True)
class ExecOptions:
    bundle: str
    args: tuple[str, ...] = ()
    profile: str | None = None
    user: str | None = None
    python: str | None = None
    store: str | None = None
    dry_run: bool = False
    verify_full: bool = False
    trust: str | None = None  # trust policy file (default /etc/sandrun/trust.toml if present)
    audit_db: str | None = None  # OSV database: refuse known-vulnerable dependencies
    audit_severity: str = "high"  # lowest severity that refuses (unknown always does)
    adopt: bool = False  # hand the app name (user, state) to this bundle's signer
    # Operator grants on top of the profile (no approval needed: the operator gives them).
    env: tuple[str, ...] = ()  # NAME=VALUE to set, NAME to pass from sandrun's environment
    env_file: tuple[str, ...] = ()  # files of such lines (-e wins)
    read: tuple[str, ...] = ()
    rw: tuple[str, ...] = ()
    bind_tcp: tuple[str, ...] = ()
    connect_tcp: tuple[str, ...] = ()
    workdir: str | None = None


@dataclass
class LaunchPlan:
    bundle: str
    bundle_sha256: str
    manifest: Manifest
    store: Store
    tree: Path
    installed: bool  # False in a dry run of a bundle not yet installed
    profile: Profile
    user: AppUser
    privileged: bool
    interpreter: Interpreter
    state_dir: Path
    argv: list[str]  # interpreter, flags and bootstrap; the app's args follow
    args: tuple[str, ...]
    base_env: dict[str, str]  # before the profile's env pass and set
    env: dict[str, str]  # what the app gets when started from this environment
    cwd: str
    landlock_policy: landlock.LandlockPolicy
    seccomp_policy: seccomp.SeccompPolicy
    rlimits: dict[str, int | None]
    mdwe: bool
    signature: SignatureStatus
    trust_policy: TrustPolicy | None
    trust_inputs: tuple[str, ...]  # files the trust decision read (an absent one counts too)
    manifest_bytes: bytes = b""
    archive: StrictArchive | None = None
    full_check: bool = False  # the tree was re-hashed in full: snapshot it again
    signer: str | None = None  # fingerprint of a valid signature
    owner_known: bool = False  # an owner record exists for the app name
    refusals: list[SandrunError] = field(default_factory=list)  # every reason not to run
    creates: list[str] = field(default_factory=list)  # what materialise() would create
    notices: list[str] = field(default_factory=list)  # one line per change made
    consent: str = ""  # why the profile may be applied
    operator_grants: list[str] = field(default_factory=list)  # -e, --read, --rw, ... shown
    # The accepted profile before its placeholders were expanded for this host's store.
    requested_profile: Profile | None = None
    seccomp_bpf: bytes = b""  # compiled by decide(): a filter that cannot be built refuses
    limit_rows: list[tuple[str, str, str]] = field(default_factory=list)  # name, status, how
    protections: list[ProtectionStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytecode_pending: bool = False  # installed without its bytecode, added after launch
    # What save_record wrote the records from: (key, inputs, not_after).
    record_inputs: tuple[Any, ...] | None = None

    def raise_for_refusals(self) -> None:
        """Nothing was created: refuse with the one reason (its own exit code) or all."""
        if not self.refusals:
            return
        if len(self.refusals) == 1:
            raise self.refusals[0]
        raise LaunchRefused(self.bundle, self.refusals)


def prepare(options: ExecOptions) -> LaunchPlan:
    """decide(), refuse if anything was refused, then materialise(): the whole privileged
    preparation of a launch. Notices (user or state dir created) are in plan.notices."""
    plan = decide(options)
    plan.raise_for_refusals()
    materialise(plan, options)
    return plan


def decide(options: ExecOptions, prefetched: PrefetchedBundle | None = None) -> LaunchPlan:
    """Everything a launch depends on, decided without a side effect on the host.

    Refusals that do not prevent deciding the rest are collected in plan.refusals (so a
    dry run names every reason); what makes the rest meaningless (an unreadable or
    unverifiable bundle, an untrusted store) raises at once. Nothing is created here: no
    user, no store dir, no tree, no state dir, no record. The bundle is read and its
    manifest and signature checked first; a forked child hashes its entries on another
    CPU while the rest is decided, and a bundle failing verification is refused as that
    before anything else is reported (as if it had been hashed first). `prefetched`: the
    same bundle read and being hashed since the process started (cli_exec), adopted when
    it is the bundle of these options.
    """
    store = Store(Path(options.store) if options.store else default_store_path(), os.geteuid())
    if prefetched is not None and prefetched.path != options.bundle:
        prefetched.cancel()
        prefetched = None
    bundle = _verified_bundle(options, store, prefetched)
    try:
        plan = _decide(options, store, bundle)
    except BaseException as exc:
        # A bundle that fails verification is refused as that, whatever else failed
        # meanwhile on its unverified contents (as when verification finished first);
        # Ctrl-C and exit stop the child.
        if bundle.verifying is not None:
            if isinstance(exc, Exception):
                _finish_verification(options, bundle)
            else:
                bundle.verifying.cancel()
        raise
    _finish_verification(options, bundle)
    _assess(plan)
    return plan


def _decide(options: ExecOptions, store: Store, bundle: _Bundle) -> LaunchPlan:
    """decide() once the bundle is read: what its manifest, the profile and this host say.
    The entries may still be being hashed (bundle.verifying): nothing here acts."""
    from sandrun.config.profile import project_dir
    from sandrun.supply.trust import DEFAULT_TRUST_PATH

    found = _Findings()
    privileged = os.geteuid() == 0
    app = bundle.manifest.app_name
    policy, check_notes = _check_trust_and_audit(options, bundle, found)
    owner = found.attempt(_check_owner, options, store, bundle, found)
    profile, consent_note = _decide_profile(options, bundle.archive, app, store,
                                            found.refusals)
    grants = operator_grants(options)  # usage errors (exit 2) raise: nothing to decide
    profile = grants.apply(profile)
    requested = profile  # what was accepted, placeholders kept (exports expand their own)
    found.attempt(require_kernel_support, profile)
    user = _decide_user(options, app, privileged, found.refusals)
    if not user.exists:
        found.creates.append(f"system user {user.name} (no login shell, no home)")
    interp = _decide_interpreter(options, bundle, user, found)
    state = store.state / app
    _check_state_dir(store, app, user, found)
    # Privileged: a fresh private tmpfs per launch (nothing to follow or clean up);
    # not root: no mount namespace, so TMPDIR stays inside the state dir.
    tmp = PRIVATE_TMP_DIRS[0] if privileged else str(state / "tmp")
    caller_dir = os.getcwd()
    project, marker, marker_paths = project_dir(caller_dir)  # lstat only, nothing opened
    uses_project = "project" in profile.placeholders_used()
    placeholders = {"app": app, "state": str(state), "tmp": tmp,
                    "store": str(bundle.tree), "home": str(state), "cwd": caller_dir,
                    "project": project}
    expanded = found.attempt(profile.expand, placeholders)
    profile = expanded if expanded is not None else _unexpanded_fallback(profile)
    found.refusals += _missing_required_paths(profile, created=(str(state),),
                                              tree=str(bundle.tree), manifest=bundle.manifest)
    cwd = _working_dir(options, profile, state, found)
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(state),
                "TMPDIR": tmp, "LANG": "C.UTF-8"}
    env = {**base_env, **{n: os.environ[n] for n in profile.env_pass if n in os.environ},
           **profile.env_set}

    plan = LaunchPlan(
        bundle=options.bundle, bundle_sha256=bundle.sha256, manifest=bundle.manifest,
        store=store, tree=bundle.tree, installed=bundle.installed, profile=profile, user=user,
        privileged=privileged, interpreter=interp, state_dir=state,
        argv=[interp.path, "-I", "-B", *_bootstrap_flags(bundle),
              str(bundle.tree / BOOTSTRAP_NAME)], args=options.args,
        base_env=base_env, env=env, cwd=cwd,
        landlock_policy=landlock_policy(profile, interp, bundle.tree, state, privileged),
        seccomp_policy=_seccomp_policy(profile),
        rlimits=_rlimits(profile), mdwe=profile.mdwe, signature=bundle.signature,
        trust_policy=policy,
        trust_inputs=(options.trust or str(DEFAULT_TRUST_PATH), *_audit_inputs(options),
                      *(policy.files if policy is not None else ()),
                      *consent.consent_inputs(store.root, app),
                      str(consent.owner_path(store.root, app)),
                      # {project}: a marker made or removed changes it (warm record input)
                      *(marker_paths if uses_project else ())),
        manifest_bytes=bundle.manifest_bytes, archive=bundle.archive,
        full_check=bundle.full_check, signer=bundle.signer, owner_known=owner is not None,
        refusals=found.refusals, creates=found.creates, notices=found.notices,
        consent=consent_note, operator_grants=grants.describe(), requested_profile=requested)
    plan.notes += check_notes
    if uses_project:
        plan.notes.append(f"project      {project} ("
                          + (f"holds {marker}" if marker else "no project marker above the "
                             "working directory: {project} is {cwd}") + ")")
    plan.seccomp_bpf = found.attempt(seccomp.compile_filter, plan.seccomp_policy) or b""
    plan.limit_rows = _limit_rows(profile, privileged, found.refusals)
    if privileged:  # Unix permissions can deny what Landlock grants, and log nothing
        from sandrun.launch.explain import permission_problems

        plan.notes += [f"permissions  {p}" for p in permission_problems(profile, user)]
    return plan


class _Findings:
    """What decide() collects on the way: refusals (each step that can fail without
    making the rest meaningless), and what a launch would create or change."""

    def __init__(self) -> None:
        self.refusals: list[SandrunError] = []
        self.creates: list[str] = []
        self.notices: list[str] = []

    def attempt(self, step: Any, *args: Any) -> Any:
        """step(*args), or None with its SandrunError recorded as a refusal."""
        try:
            return step(*args)
        except SandrunError as exc:
            self.refusals.append(exc)
            return None


@dataclass
class _Bundle:
    """The bundle as verified (or its installed tree as re-checked)."""

    archive: StrictArchive
    manifest: Manifest
    manifest_bytes: bytes
    sha256: str
    tree: Path
    installed: bool
    full_check: bool  # the installed tree is re-hashed in full (then snapshot again)
    signature: SignatureStatus
    verifying: PendingVerification | None = None  # entries still being hashed

    @property
    def signer(self) -> str | None:
        info = self.signature.info
        return info.fingerprint if info is not None else None


def _verified_bundle(options: ExecOptions, store: Store,
                     prefetched: PrefetchedBundle | None = None) -> _Bundle:
    """Read the bundle once (sandrun.launch.safefile: no link, no FIFO, size-limited) and
    verify it, or re-check its installed tree when the same bytes were installed before.
    Raises: nothing else is worth deciding about a bundle that fails here."""
    from sandrun.bundle.archive import parse_archive
    from sandrun.bundle.signature import signature_status
    from sandrun.bundle.verify import PendingVerification

    if prefetched is not None:
        sha256, archive = prefetched.sha256, prefetched.archive
    else:
        data, sha256 = read_bundle(options.bundle)
        archive = parse_archive(data, options.bundle)
    # (The caller cancels the prefetch's child when it ends, whoever adopted it.)
    hashing = prefetched.hashing if prefetched is not None else None
    tree = store.tree(sha256)
    installed = store.has_tree(sha256)  # checks the store path: StoreError if untrusted
    if installed and hashing is not None:  # the tree is checked instead
        hashing.cancel()
        hashing = None
    manifest_entry = next((e for e in archive.entries if e.name == MANIFEST_NAME), None)
    if installed and manifest_entry is not None and not archive.problems:
        # Same bytes as the bundle installed before (the dir is named by its sha256):
        # the cheap tree check is enough unless --verify=full.
        manifest_bytes = archive.read(manifest_entry)
        manifest = Manifest.from_bytes(manifest_bytes)
        bytecode_entries = [n for n in manifest.entries if is_bytecode_name(n)]
        if bytecode_entries:  # installed by an older sandrun: what runs must be readable
            raise VerificationError(
                f"installed tree {tree} lists precompiled code from the bundle",
                [Problem(n, "bytecode entry in the bundle") for n in bytecode_entries],
                f"remove the tree (rm -rf {tree}) and rebuild the bundle")
        # Re-hash in full unless the tree is exactly as it was last fully verified (ctime
        # and inode of every entry): a same-size edit cannot pass the cheap check. (A tree
        # whose deferred bytecode is being published is waited for: snapshot_matches.)
        full_check = options.verify_full or not store.tree_matches_snapshot(sha256)
        store.check_tree(tree, manifest, manifest_bytes, full=full_check)
        return _Bundle(archive, manifest, manifest_bytes, sha256, tree, True, full_check,
                       signature_status(archive, manifest))
    # The entries are hashed by a forked child while decide() goes on (another CPU):
    # _finish_verification() waits for it before decide() returns.
    verifying = PendingVerification(archive, hashing)
    if not verifying.in_background or verifying.manifest is None:
        _raise_unless_verified(options, verifying.result())
    assert verifying.manifest is not None
    manifest_bytes = archive.read(manifest_entry) if manifest_entry else b""
    return _Bundle(archive, verifying.manifest, manifest_bytes, sha256, tree, False, False,
                   verifying.signature_status,
                   verifying if verifying.in_background else None)


def _finish_verification(options: ExecOptions, bundle: _Bundle) -> None:
    """Wait for the entries' hashes (if decide() did not have them yet); refuse a bundle
    that fails verification."""
    verifying, bundle.verifying = bundle.verifying, None
    if verifying is not None:
        try:
            result = verifying.result()
        except BaseException:
            verifying.cancel()  # interrupted while waiting: the child goes too
            raise
        _raise_unless_verified(options, result)


def _raise_unless_verified(options: ExecOptions, result: VerifyResult) -> None:
    if not result.ok or result.manifest is None:
        raise VerificationError(f"bundle {options.bundle} failed verification",
                                result.problems,
                                "rebuild it with `sandrun bundle`; run `sandrun verify` "
                                "for the full report")


def _check_trust_and_audit(options: ExecOptions, bundle: _Bundle, found: _Findings
                           ) -> tuple[TrustPolicy | None, list[str]]:
    """The trust policy (if any) must accept the bundle, and its [provenance] table must be
    met; --audit-db must find nothing at or above the threshold. Returns the policy and
    the notes (provenance, audit) for the plan."""
    from sandrun.supply.trust import (
        DEFAULT_TRUST_PATH,
        find_trust_policy,
        load_trust_policy,
        require_trust,
    )

    policy = found.attempt(lambda: load_trust_policy(Path(options.trust)) if options.trust
                           else find_trust_policy(DEFAULT_TRUST_PATH))
    if policy is not None:
        found.attempt(require_trust, policy, bundle.manifest, bundle.signature,
                      options.bundle)
    notes = [found.attempt(_require_provenance, Path(options.trust or DEFAULT_TRUST_PATH),
                           bundle, options.bundle) if policy is not None else None,
             found.attempt(_audit, options, bundle.manifest) if options.audit_db else None]
    return policy, [n for n in notes if n]


def _require_provenance(path: Path, bundle: _Bundle, label: str) -> str | None:
    """Refuse (ProvenanceError, 125) a bundle lacking the provenance the policy's
    [provenance] table requires. sigstore is imported only when the policy requires
    provenance of a package this bundle holds (cold path only: the warm record keeps the
    verdict while the policy file and the bundle are unchanged)."""
    from sandrun.supply.provenance import load_provenance_policy, require_provenance

    policy = load_provenance_policy(path)
    if not policy.require:
        return None
    entries = {e.name: e for e in bundle.archive.entries}
    return require_provenance(bundle.manifest, lambda name: bundle.archive.read(entries[name]),
                              policy, label)


def _check_owner(options: ExecOptions, store: Store, bundle: _Bundle,
                 found: _Findings) -> consent.Owner | None:
    """Who owns the app name: a bundle claiming another signer's app is refused
    (ConsentError) unless adopted; returns the recorded owner."""
    app, signer = bundle.manifest.app_name, bundle.signer
    owner = consent.load_owner(store, app)
    record = consent.owner_path(store.root, app)
    if options.adopt:
        if owner is not None and owner.signer != signer:
            found.notices.append(f"app {app!r} adopted: it now belongs to "
                                 + (f"signer {signer}" if signer else "unsigned bundles")
                                 + f" (was {owner.describe()})")
            found.creates.append(f"owner record {record} (replaced: --adopt)")
    else:
        notice = consent.check_owner(owner, signer, app, options.bundle, options.store)
        if notice:
            found.notices.append(notice)
            found.creates.append(f"owner record {record} (updated)")
    if owner is None:
        found.creates.append(f"owner record {record} ("
                             + (f"signer {signer}" if signer else "unsigned") + ")")
    elif owner.signer is None and signer is None and owner.first_bundle != bundle.sha256 \
            and not bundle.installed:
        found.notices.append(f"unsigned app {app!r}: this new bundle takes over its state "
                             "(unsigned bundles carry no identity)")
    return owner


class OperatorGrants:
    """What the operator adds on the command line: paths, ports, environment."""

    def __init__(self) -> None:
        self.read: list[str] = []
        self.read_write: list[str] = []
        self.bind_tcp: list[int] = []
        self.connect_tcp: list[int] = []
        self.env_pass: list[str] = []
        self.env_set: dict[str, str] = {}

    def apply(self, profile: Profile) -> Profile:
        from dataclasses import replace
        from types import MappingProxyType

        def add(old: tuple[Any, ...], new: list[Any]) -> tuple[Any, ...]:
            return tuple(dict.fromkeys((*old, *new)))

        env_set = {**profile.env_set, **self.env_set}
        return replace(profile, read=add(profile.read, self.read),
                       read_write=add(profile.read_write, self.read_write),
                       bind_tcp=add(profile.bind_tcp, self.bind_tcp),
                       connect_tcp=add(profile.connect_tcp, self.connect_tcp),
                       env_pass=add(profile.env_pass, self.env_pass),
                       env_set=MappingProxyType(dict(sorted(env_set.items()))))

    def describe(self) -> list[str]:
        lines = [f"--read {p}" for p in self.read] + [f"--rw {p}" for p in self.read_write]
        lines += [f"--bind-tcp {p}" for p in self.bind_tcp]
        lines += [f"--connect-tcp {p}" for p in self.connect_tcp]
        lines += [f"-e {n} (passed)" for n in self.env_pass]
        lines += [f"-e {n}=..." for n in self.env_set]  # values may be secrets
        return lines


def operator_grants(options: ExecOptions) -> OperatorGrants:
    """The command line's grants, checked: a bad one is a usage error (exit 2)."""
    grants = OperatorGrants()

    def path(option: str, raw: str) -> str:
        if not raw or "\0" in raw:
            raise UsageError(f"{option} needs a path", f"e.g. {option} /srv/data")
        if raw.startswith("{"):
            return raw  # a placeholder such as {state}/cache: expanded with the profile
        return os.path.normpath(os.path.abspath(raw))

    def port(option: str, raw: str) -> int:
        try:
            number = int(raw)
        except ValueError:
            number = 0
        if not 1 <= number <= 65535:
            raise UsageError(f"{option} {raw!r}: not a TCP port (1-65535)",
                             f"e.g. {option} 8000")
        return number

    grants.read = [path("--read", p) for p in options.read]
    grants.read_write = [path("--rw", p) for p in options.rw]
    grants.bind_tcp = [port("--bind-tcp", p) for p in options.bind_tcp]
    grants.connect_tcp = [port("--connect-tcp", p) for p in options.connect_tcp]
    entries = [(line, f"{file}:{n}") for file in options.env_file
               for n, line in _env_file_lines(file)]
    entries += [(item, "-e") for item in options.env]
    for item, where in entries:  # later wins: files in order, then -e
        name, eq, value = item.partition("=")
        if not name.replace("_", "a").isalnum() or name[0].isdigit() or not name.isascii():
            raise UsageError(f"{where}: {name!r} is not an environment variable name",
                             "use NAME=VALUE, or NAME to pass it from sandrun's environment")
        if name.startswith("LD_"):
            raise UsageError(f"{where}: {name} would make the dynamic loader load code "
                             "that no profile shows", "give libraries to the app in its "
                             "bundle")
        if eq:
            grants.env_set[name] = value
            if name in grants.env_pass:
                grants.env_pass.remove(name)
        else:
            grants.env_pass.append(name)
            grants.env_set.pop(name, None)
    return grants


def _env_file_lines(path: str) -> list[tuple[int, str]]:
    """docker's --env-file format: NAME=VALUE or NAME per line, # comments, blank lines."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"--env-file {path}: {exc.strerror}", "give a readable file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--env-file {path}: not UTF-8 text", "save it as UTF-8") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _working_dir(options: ExecOptions, profile: Profile, state: Path,
                 found: _Findings) -> str:
    """-w DIR; else the caller's directory when the profile grants it (CLI tools work on
    it); else the state dir (the app's own, always writable)."""
    if options.workdir:
        workdir = os.path.normpath(os.path.abspath(options.workdir))
        if not os.path.isdir(workdir):
            found.refusals.append(EnforcementError(
                f"working directory {workdir} (-w) is not a directory",
                "create it, or pass another -w"))
        return workdir
    cwd = os.getcwd()
    granted = (*profile.read, *profile.read_write)
    if cwd != "/" and any(cwd == g or cwd.startswith(g.rstrip("/") + "/") for g in granted):
        return cwd
    return str(state)


def _decide_interpreter(options: ExecOptions, bundle: _Bundle, user: AppUser,
                        found: _Findings) -> Interpreter:
    """The interpreter the app user can run (checked as an unprivileged uid in no group
    while the user does not exist yet); on first install the wheels must fit it."""
    target = bundle.manifest.target.python
    if user.exists:
        uid, gids = user.uid, os.getgrouplist(user.name, user.gid)
    else:
        uid, gids = 65534, [65534]
    interp: Interpreter | None = found.attempt(find_interpreter, options.python, target,
                                               uid, gids)
    if interp is None:  # refused: a placeholder so that a dry run can still show the rest
        return Interpreter(options.python or f"python{target}",
                           options.python or f"python{target}", target, "", None)
    if not bundle.installed:
        # Install only once the bundle is known to fit this interpreter and machine.
        found.attempt(check_wheel_tags, interp, [d.wheel for d in bundle.manifest.dependencies])
        found.creates.append(f"store tree {bundle.tree} (extracted from the bundle and "
                             "verified)")
    return interp


def _check_state_dir(store: Store, app: str, user: AppUser, found: _Findings) -> None:
    """An existing state dir must belong to the app user; a missing one would be made."""
    state = store.state / app
    existing = found.attempt(lambda: store.state_dir(app, user.uid, user.gid, create=False)) \
        if user.exists else None
    if not os.path.lexists(state):
        found.creates.append(f"state dir {state} (owner {user.name}, mode 0700)")
    elif existing is None and not user.exists:
        found.refusals.append(StoreError(
            f"state dir {state} exists but its user {user.name} does not: it belongs to "
            "an earlier user of that name", f"remove it (rm -rf {state}) or pass --user"))


def _decide_profile(options: ExecOptions, archive: StrictArchive, app: str, store: Store,
                    refusals: list[SandrunError]) -> tuple[Profile, str]:
    """The profile to apply and why it may be applied (the operator's consent)."""
    from sandrun.config.profile import load_profile, load_profile_text

    if options.profile:
        return load_profile(options.profile), f"operator profile -p {options.profile}"
    entry = next((e for e in archive.entries if e.name == PROFILE_NAME), None)
    if entry is None:
        raise BundleError(f"bundle {options.bundle} has no {PROFILE_NAME}",
                          "rebuild it with `sandrun bundle`, or pass the operator's profile "
                          "with -p")
    try:
        text = archive.read(entry).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{options.bundle}:{PROFILE_NAME} is not UTF-8 ({exc.reason} at "
                          f"byte {exc.start})", "rebuild the bundle with `sandrun bundle` "
                          "from a UTF-8 profile, or pass the operator's profile with -p"
                          ) from None
    requested = load_profile_text(text, f"{options.bundle}:{PROFILE_NAME}", None)
    try:
        ceilings = consent.load_ceilings(store, app)
        extra = consent.check_consent(requested, ceilings)
    except SandrunError as exc:
        refusals.append(exc)
        return requested, "embedded profile (approval unreadable)"
    if extra:
        refusals.append(consent.refusal(requested, app, extra, ceilings, options.bundle,
                                        options.store))
        return requested, "embedded profile: NOT APPROVED"
    if ceilings:
        return requested, ("embedded profile, within what the operator approved ("
                           + ", ".join(c.source for c in ceilings) + ")")
    return requested, "embedded profile (grants nothing beyond `default`)"


def _decide_user(options: ExecOptions, app: str, privileged: bool,
                 refusals: list[SandrunError]) -> AppUser:
    if not privileged:
        if options.user:
            refusals.append(EnforcementError(
                "--user needs root: sandrun can switch users only when started as root",
                "run sandrun exec as root, or drop --user"))
        return invoking_user()
    try:
        return check_user(options.user, app)
    except SandrunError as exc:
        refusals.append(exc)
        return AppUser(options.user or f"sandrun-{app}", -1, -1, False)


def _unexpanded_fallback(profile: Profile) -> Profile:
    """For a dry run that already failed expansion: show the rules without the paths
    that could not be expanded."""
    from dataclasses import replace

    keep = [p for p in profile.read if p.startswith("/")]
    return replace(profile, read=tuple(keep), optional_read=(), read_write=(), execute=())


def _missing_required_paths(profile: Profile, created: tuple[str, ...], tree: str,
                            manifest: Manifest) -> list[SandrunError]:
    """Granted paths that must exist at launch (optional_read may be absent; what the
    launch itself creates, the state dir, is not required yet; paths in the app's tree are
    checked against its manifest, since the tree may not be installed yet)."""
    missing: list[SandrunError] = []
    for key, paths in (("filesystem.read", profile.read),
                       ("filesystem.read_write", profile.read_write),
                       ("filesystem.execute", profile.execute)):
        section, name = key.split(".")
        for path in paths:
            if any(path == c or path.startswith(c + "/") for c in created):
                continue
            if path == tree or path.startswith(tree + "/"):
                rel = path[len(tree) + 1:]
                record = manifest.entries.get(rel)
                is_dir = record is None and rel != "" and any(
                    e.startswith(rel + "/") for e in manifest.entries)
                if key == "filesystem.execute" and not is_dir and (
                        record is None or not record.mode & 0o111):
                    missing.append(EnforcementError(
                        f"{path} ([{section}] {name}) is not an executable entry or a "
                        "directory of the bundle", "grant a file the bundle ships with mode "
                        "0755, e.g. {store}/site-packages/bin/NAME, or its directory"))
                elif record is None and not any(e.startswith(rel + "/")
                                                for e in manifest.entries) and rel:
                    missing.append(EnforcementError(
                        f"{path} ([{section}] {name}) is not in the bundle",
                        "check the path against `sandrun inspect --json` (manifest entries)"))
                continue
            if not os.path.exists(path):
                missing.append(EnforcementError(
                    f"required path {path} ([{section}] {name}) does not exist",
                    "create it, or remove it from the profile (or move it to optional_read)"))
    return missing


def _rlimits(profile: Profile) -> dict[str, int | None]:
    """rlimits for the app: [limits] nofile/fsize, tasks as nproc (per app user, a floor
    without cgroups), then [process] rlimits, which win."""
    limits: dict[str, int | None] = {}
    for name, rlimit in (("nofile", "nofile"), ("fsize", "fsize"), ("tasks", "nproc")):
        if name in profile.limits:
            limits[rlimit] = profile.limits[name]
    limits.update(profile.rlimits)
    return limits


def _limit_rows(profile: Profile, privileged: bool,
                refusals: list[SandrunError]) -> list[tuple[str, str, str]]:
    """Per [limits] key: whether and how it is enforced here; a required limit that
    cannot be is a refusal."""
    rows: list[tuple[str, str, str]] = []
    rlimit_of = {"nofile": "RLIMIT_NOFILE", "fsize": "RLIMIT_FSIZE"}
    for name, value in profile.limits.items():
        if name in rlimit_of:
            shown = "infinity" if value is None else value
            rows.append((name, "enforced", f"{rlimit_of[name]}={shown} (per process)"))
    if "tasks" in profile.limits and profile.limits["tasks"] is not None:
        rows.append(("tasks (floor)", "enforced",
                     f"RLIMIT_NPROC={profile.limits['tasks']} for the app user"))
    limits = cgroup_limits(profile)
    if not limits:
        return rows
    if not privileged:
        for name in sorted(set(limits) - {"required"}):
            rows.append((name, "not enforced", "not root: no cgroup of its own"))
        required = [n for n in profile.limits_required if n not in rlimit_of]
        if required:
            refusals.append(EnforcementError(
                f"the profile requires the limit(s) {', '.join(required)}, which need a "
                "cgroup: sandrun is not root", "run sandrun exec as root, or remove them "
                "from [limits] required"))
        return rows
    from sandrun.sandbox import cgroup

    for name, status, detail in cgroup.plan(limits):
        if status != "enforced" and name in limits["required"]:  # type: ignore[operator]
            refusals.append(EnforcementError(
                f"the profile requires the {name} limit, which cannot be enforced here: "
                f"{detail}", "enable that cgroup controller (or delegate it to sandrun), or "
                "remove the limit from [limits] required"))
        if name in limits or status == "enforced":
            rows.append((name, status, detail))
    return rows


def materialise(plan: LaunchPlan, options: ExecOptions,
                progress: Callable[[str], None] | None = None, *,
                defer_bytecode: bool = False) -> None:
    """Create what decide() found missing: the user, the store tree, the state dir, the
    owner record. Each step is idempotent; plan.notices gets one line per creation.
    `progress` gets the cold install's lines (the CLI passes one on a terminal).
    `defer_bytecode`: a root store's tree is installed without its bytecode and
    plan.bytecode_pending is set, for compile_after_launch; without it, bytecode still
    pending from an earlier launch is compiled here."""
    app = plan.manifest.app_name
    if plan.privileged and not plan.user.exists:
        plan.user = resolve_user(options.user, app, create=True)
        plan.notices.append(f"created system user {plan.user.name} (uid {plan.user.uid})")
    if not plan.installed:
        plan.store.ensure_layout()
        assert plan.archive is not None  # decide() read it
        plan.tree = plan.store.install(plan.bundle_sha256, plan.archive, plan.manifest,
                                       plan.interpreter.version, gid=plan.user.gid,
                                       progress=progress, defer_bytecode=defer_bytecode)
        plan.store.check_tree(plan.tree, plan.manifest, plan.manifest_bytes, full=False,
                              gid=plan.user.gid)
        plan.store.save_tree_snapshot(plan.bundle_sha256)
        plan.installed = True
    else:
        plan.store.ensure_layout()
        if plan.store.grant_tree(plan.bundle_sha256, plan.user.gid):
            plan.notices.append(f"store tree {plan.tree} now readable by group "
                                f"{plan.user.gid} (was another app group's)")
        if plan.full_check:
            plan.store.save_tree_snapshot(plan.bundle_sha256)
    plan.bytecode_pending = plan.store.bytecode_pending(plan.bundle_sha256)
    if plan.bytecode_pending and not defer_bytecode:
        plan.store.compile_bytecode(plan.bundle_sha256, plan.manifest, plan.manifest_bytes,
                                    plan.interpreter.version)
        plan.bytecode_pending = False
    existed = os.path.lexists(plan.state_dir)
    plan.store.state_dir(app, plan.user.uid, plan.user.gid, create=True)
    if not existed:
        plan.notices.append(f"created state dir {plan.state_dir} (owner {plan.user.name})")
    if not plan.owner_known or options.adopt or any(
            c.startswith("owner record") and "(updated)" in c for c in plan.creates):
        consent.record_owner(plan.store, app, plan.signer, plan.bundle_sha256)


def _audit_inputs(options: ExecOptions) -> tuple[str, ...]:
    """The files an --audit-db verdict depends on (warm record inputs): an index or zip is
    one file; a directory of advisories is every directory and file in it."""
    if not options.audit_db:
        return ()
    path = os.path.abspath(options.audit_db)
    if not os.path.isdir(path):
        return (path,)
    found = [path]
    for top, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(top, n) for n in (*dirs, *sorted(files))]
    return tuple(found)


def _open_audit_index(path: str) -> Any:  # an open binary file, or None
    """The OSV index at `path`, opened (the caller closes it), or None when `path` is not
    an index (a raw database, read by load_osv_database). An index decides whether root
    starts an app: it and every directory above it must be owned by root (or the running
    user) and not writable by others, else AuditError."""
    import stat as stat_module

    from sandrun.errors import AuditError
    from sandrun.launch.safefile import UnsafePath, open_trusted_dir
    from sandrun.supply.audit import INDEX_MAGIC

    try:
        with open(path, "rb") as probe:
            if probe.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
                return None
    except OSError:
        return None  # load_osv_database says what is wrong with it
    hint = ("build it as root (`sandrun audit --index DB -o FILE`) in a directory only root "
            "can write")
    directory, name = os.path.split(os.path.abspath(path))
    try:
        dir_fd = open_trusted_dir(directory, os.geteuid())
    except (UnsafePath, OSError) as exc:
        raise AuditError(f"audit index {path}: its directory is not trusted ({exc})",
                         hint) from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError as exc:
        raise AuditError(f"cannot open audit index {path}: {exc.strerror}", hint) from None
    finally:
        os.close(dir_fd)
    f = os.fdopen(fd, "rb")
    st = os.fstat(f.fileno())
    if not stat_module.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) \
            or st.st_mode & 0o022:
        f.close()
        raise AuditError(f"audit index {path} is not a regular file owned by root and "
                         f"writable only by it (owner uid {st.st_uid}, mode "
                         f"{stat_module.S_IMODE(st.st_mode):04o})", hint)
    return f


def _audit(options: ExecOptions, manifest: Manifest) -> str:
    """Refuse (AuditError, 125) known vulnerabilities at or above the threshold."""
    from sandrun.supply.audit import (
        audit_manifest,
        check_severity_level,
        load_osv_database,
        parse_osv_index,
    )

    level = check_severity_level(options.audit_severity)
    path = options.audit_db or ""
    index = _open_audit_index(path)
    if index is None:
        report = audit_manifest(manifest, load_osv_database(Path(path)), options.bundle)
    else:
        with index:  # read the table and the bodies of the bundle's dependencies only
            report = audit_manifest(manifest, parse_osv_index(index, path), options.bundle)
    blocking = report.at_or_above(level)
    if blocking:
        problems = [Problem(f"{f.name} {f.version}",
                            f"{f.advisory_id}" + (f" ({', '.join(f.aliases)})" if f.aliases
                                                  else "")
                            + f", severity {f.severity}, affected {f.affected}",
                            f"upgrade to {' or '.join(f.fixed)}" if f.fixed
                            else "no fixed version is known: remove the dependency or "
                                 "accept the risk with a higher --audit-severity")
                    for f in blocking]
        raise VulnerabilityError(
            f"{options.bundle} has {len(blocking)} known vulnerabilit"
            f"{'y' if len(blocking) == 1 else 'ies'} at or above severity {level} "
            f"(database {options.audit_db})", problems,
            "rebuild the bundle with fixed versions (`sandrun audit` lists them), or lower "
            "the bar with --audit-severity")
    others = len(report.findings)
    return (f"audit        {options.audit_db}: no known vulnerability at or above {level}"
            + (f" ({others} below it; run `sandrun audit`)" if others else "")
            + ("" if index is not None else "; a raw database is read in full on every "
               "start: `sandrun audit --index` builds an index that costs milliseconds"))


def landlock_policy(profile: Profile, interp: Interpreter, tree: Path,
                     state: Path, privileged: bool = True) -> landlock.LandlockPolicy:
    """The Landlock rules of a launch (also what the Kubernetes exporter builds for its
    image's paths)."""
    A = landlock.Access
    rules: list[landlock.PathRule] = []
    exec_paths = [interp.real_path]
    if interp.elf_interpreter:
        exec_paths.append(interp.elf_interpreter)
    rules += [landlock.PathRule(p, A.READ_EXEC) for p in dict.fromkeys(exec_paths)]
    rules.append(landlock.PathRule(interp.stdlib, A.READ))
    rules += [landlock.PathRule(p, A.READ, required=False) for p in LIBRARY_DIRS]
    rules += [landlock.PathRule(p, A.READ, required=False) for p in SYSTEM_READ]
    rules += [landlock.PathRule(p, A.READ_WRITE, required=False) for p in SYSTEM_READ_WRITE]
    rules.append(landlock.PathRule(str(tree), A.READ))
    rules.append(landlock.PathRule(str(state), A.READ_WRITE))
    if privileged:  # the launch's own private tmpfs (the runner mounts it before the rules)
        # optional: a system without /var/tmp (or an exported image without /dev/shm)
        rules += [landlock.PathRule(p, A.READ_WRITE, required=False) for p in PRIVATE_TMP_DIRS]
    if profile.dns:
        from sandrun.config.profile import DNS_FILES

        rules += [landlock.PathRule(p, A.READ, required=False) for p in DNS_FILES]
    rules += [landlock.PathRule(p, A.READ) for p in profile.read]
    rules += [landlock.PathRule(p, A.READ, required=False)
              for p in profile.optional_read]
    rules += [landlock.PathRule(p, A.READ_WRITE)
              for p in profile.read_write]
    rules += [landlock.PathRule(p, A.READ_EXEC)
              for p in profile.execute]
    unique = {(r.path, r.access): r for r in reversed(rules)}  # first occurrence wins
    rules = [r for r in rules if unique.get((r.path, r.access)) is r]
    return landlock.LandlockPolicy(
        paths=tuple(rules), bind_tcp=tuple(profile.bind_tcp),
        connect_tcp=tuple(profile.connect_tcp),
        scope_abstract_unix=True, scope_signal=True,
        min_abi=profile.landlock_min_abi)


def _seccomp_policy(profile: Profile) -> seccomp.SeccompPolicy:
    inet = bool(profile.bind_tcp or profile.connect_tcp or profile.dns)
    families = ("AF_UNIX", "AF_INET", "AF_INET6") if inet else ("AF_UNIX",)
    return seccomp.SeccompPolicy(
        allow=tuple(profile.syscalls_allow), deny=tuple(profile.syscalls_deny),
        socket_families=families, allow_subprocess=bool(profile.subprocess),
        allow_fork=bool(profile.fork), udp=bool(profile.dns),
        unix_sockets=bool(profile.unix_sockets),
        allow_listen=bool(profile.bind_tcp or profile.unix_sockets))


def mdwe_supported() -> bool:
    return kernel.mdwe_supported()


def require_kernel_support(profile: Profile) -> None:
    """Refuse (exit 125) a profile whose protections this kernel cannot apply: never
    degrade silently."""
    if profile.mdwe and not mdwe_supported():
        raise EnforcementError("the profile asks for memory-deny-write-execute but this "
                               "kernel lacks PR_SET_MDWE (Linux >= 6.3)",
                               "upgrade the kernel, or set [process] mdwe = false")
    abi = landlock.abi_version()
    if abi < profile.landlock_min_abi:
        raise EnforcementError(
            f"the profile requires Landlock ABI {profile.landlock_min_abi} but this kernel "
            f"offers {abi or 'none'}",
            "upgrade the kernel (Landlock ABI 6 needs Linux 6.12), or lower [kernel] "
            "landlock_min_abi in the profile if you accept weaker isolation")
    sec = seccomp.status()
    if sec.status != ENFORCED:
        raise EnforcementError(f"seccomp cannot be enforced: {sec.detail}",
                               "use a kernel with CONFIG_SECCOMP_FILTER")


def _assess(plan: LaunchPlan) -> None:
    """Fill in what this kernel enforces (require_kernel_support already refused what
    it cannot)."""
    P = ProtectionStatus
    prot = plan.protections
    if plan.privileged:
        who = (f"{plan.user.name} (uid {plan.user.uid})" if plan.user.exists
               else f"{plan.user.name} (to be created)")
        prot.append(P("user switch", "enforced",
                      f"runs as {who}; setuid(0) is proven to fail before exec"))
        prot.append(P("capabilities", "enforced", "bounding, ambient and effective sets empty"))
        prot.append(P("code ownership", "enforced",
                      "store tree owned by root, files 0444/0555, dirs 0555; its top dir "
                      "0750 root:<app group>, so other users cannot read the code or the "
                      "embedded profile"))
        prot.append(P("pid namespace", "enforced",
                      "nothing the app starts outlives it; other processes are invisible"))
        prot.append(P("noexec writable paths", "enforced",
                      "the state dir and every read_write grant are mounted noexec,nosuid,"
                      "nodev in a private mount namespace: files the app writes cannot be "
                      "executed or mmap'd executable"))
        prot.append(P("private /tmp and /run", "enforced",
                      "fresh tmpfs on /tmp, /var/tmp, /dev/shm and /run per launch (noexec), "
                      "gone with the app; granted paths under /run are mounted through"))
        prot.append(P("ipc and uts namespaces", "enforced",
                      "SysV IPC objects die with the sandbox; host name sandrun-<app>"))
        prot.append(P("root never follows", "enforced",
                      "rule paths and mount targets are opened component by component; "
                      "a symlink in a directory the app or another user can write refuses"))
        prot.append(P("die with launcher", "enforced",
                      "PR_SET_PDEATHSIG(SIGKILL) on the namespace's init: killing sandrun "
                      "exec (even SIGKILL) kills the whole sandbox"))
        native, how = runner.supervisor_status()
        prot.append(P("small supervisor", "enforced" if native else "partial",
                      f"{how}: what stays resident as root next to the app (~1.4 MB each for "
                      "the supervisor and the namespace's init)" if native else how))
    else:
        prot.append(P("user switch", "not enforced",
                      f"sandrun is not root: the app runs as the invoking user {plan.user.name}"))
        prot.append(P("code ownership", "partial",
                      "the store belongs to the invoking user: code is protected by Landlock "
                      "alone (no write rights), not by file ownership"))
        prot.append(P("pid namespace", "partial", "not root: a subreaper kills what the app "
                      "leaves behind instead"))
        prot.append(P("noexec writable paths", "not enforced",
                      "not root: no private mount namespace; Landlock still denies execve "
                      "of written files, but not mmap(PROT_EXEC) of them"))
        prot.append(P("private /tmp", "not enforced",
                      "not root: TMPDIR is inside the state dir instead"))
        prot.append(P("ipc and uts namespaces", "not enforced", "not root"))
        prot.append(P("die with launcher", "partial",
                      "not root: the app dies with sandrun exec; what it forked is killed by "
                      "the subreaper while sandrun exec lives"))
    prot.append(P("no_new_privs", "enforced", "setuid binaries and file caps cannot elevate"))
    prot.append(P("fds and environment", "enforced",
                  "every fd above 2 closed; environment built from scratch"))
    if plan.mdwe:
        prot.append(P("memory-deny-write-execute", "enforced",
                      "no writable+executable mappings, no W->X mprotect"))
    else:
        prot.append(P("memory-deny-write-execute", "not enforced", "profile: mdwe = false"))
    for st in landlock.plan(plan.landlock_policy):
        prot.append(P(f"landlock: {st.name}", st.status, st.detail))
    prot.append(seccomp.status())
    for name, status, detail in plan.limit_rows:
        prot.append(P(f"limit: {name}", enforcement(status), detail))


def verdict(plan: LaunchPlan) -> str:
    """The first line of a dry run: `would run` or `would refuse: <every reason>`."""
    if not plan.refusals:
        return "would run"
    return "would refuse: " + "; ".join(r.message for r in plan.refusals)


def render_plan(plan: LaunchPlan) -> str:
    m = plan.manifest
    lines = [verdict(plan)]
    for refusal in plan.refusals:
        lines += [f"  - {line}" if i == 0 else f"    {line}"
                  for i, line in enumerate(refusal.diagnostics().splitlines())]
    if plan.creates:
        lines.append("would create:" if plan.refusals == [] else
                     "would create (if it ran):")
        lines += [f"  + {c}" for c in plan.creates]
    lines += [f"notice: {n}" for n in plan.notices]
    lines += [
        "",
        f"bundle       {plan.bundle}",
        f"  sha256     {plan.bundle_sha256}",
        f"  app        {m.app_name} {m.app_version}  entry {m.entry_point}",
        f"store tree   {plan.tree}" + ("" if plan.installed else "  (not installed yet: "
                                        "would be extracted and verified)"),
        f"state dir    {plan.state_dir}  (HOME; TMPDIR={plan.env.get('TMPDIR', '')})",
        f"user         {plan.user.name}" + (f" (uid {plan.user.uid}, gid {plan.user.gid})"
                                            if plan.user.exists else
                                            "  (missing: would be created as a system user)"),
        f"interpreter  {plan.interpreter.path} (Python {plan.interpreter.version}, "
        f"stdlib {plan.interpreter.stdlib or '?'})",
        "bytecode     " + ("precompiled into the store at install (read-only; re-compiled and "
                             "compared by a full check)"
                             if bytecode.compatible(plan.interpreter.version) else
                             f"not precompiled: sandrun runs Python {sys.version_info[0]}."
                             f"{sys.version_info[1]}, the app {plan.interpreter.version} "
                             "(every start compiles what it imports)"),
        f"command      {' '.join([*plan.argv, *plan.args])}",
        f"cwd          {plan.cwd}",
        f"profile      {plan.profile.source}",
        f"consent      {plan.consent}",
        "operator     " + ("; ".join(plan.operator_grants) if plan.operator_grants
                           else "(no grants on the command line)"),
        "environment  " + " ".join(f"{k}={v}" for k, v in sorted(plan.env.items())),
        "rlimits      " + (" ".join(f"{k}={'infinity' if v is None else v}"
                                    for k, v in sorted(plan.rlimits.items())) or "(inherited)"),
        "",
        "protections",
    ]
    width = max(len(p.name) for p in plan.protections)
    for p in plan.protections:
        lines.append(f"  {p.name:<{width}}  {p.status:<12}  {p.detail}")
    lines += ["", "landlock rules"]
    lines += [f"  {line}" for line in landlock.describe_rules(plan.landlock_policy)]
    lines += ["", "seccomp"]
    lines += [f"  {line}" for line in _seccomp_lines(plan)]
    from sandrun.supply.trust import DEFAULT_TRUST_PATH

    lines += ["", f"signature    {plan.signature.describe()}"]
    if plan.trust_policy is not None:
        ok = not any(type(r).__name__ == "TrustError" for r in plan.refusals)
        lines.append(f"trust        policy {plan.trust_policy.path}: "
                     + ("satisfied" if ok else "NOT satisfied"))
    else:
        lines.append("trust        NO POLICY IN FORCE: any bundle runs, signed or not "
                     f"(create {DEFAULT_TRUST_PATH} or pass --trust FILE to require "
                     "signatures)")
    lines += plan.notes
    return "\n".join(lines)


def _seccomp_lines(plan: LaunchPlan) -> list[str]:
    try:
        return seccomp.describe(plan.seccomp_policy)
    except SandrunError as exc:
        return [f"cannot be built: {exc.message}"]


def plan_to_json(plan: LaunchPlan) -> dict[str, object]:
    """The dry run as data (`sandrun exec --dry-run --json`)."""
    m = plan.manifest
    return {
        "verdict": "run" if not plan.refusals else "refuse",
        "refusals": [{"error": type(r).__name__, "message": r.message, "hint": r.hint,
                      "problems": [str(p) for p in getattr(r, "problems", ())],
                      "exit_code": r.exit_code} for r in plan.refusals],
        "creates": list(plan.creates),
        "notices": list(plan.notices),
        "bundle": {"path": plan.bundle, "sha256": plan.bundle_sha256, "app": m.app_name,
                   "version": m.app_version, "entry_point": m.entry_point,
                   "signature": plan.signature.describe(), "signer": plan.signer},
        "store_tree": {"path": str(plan.tree), "installed": plan.installed},
        "state_dir": str(plan.state_dir),
        "user": {"name": plan.user.name, "uid": plan.user.uid if plan.user.exists else None,
                 "gid": plan.user.gid if plan.user.exists else None,
                 "exists": plan.user.exists},
        "interpreter": {"path": plan.interpreter.path, "version": plan.interpreter.version},
        "command": [*plan.argv, *plan.args],
        "cwd": plan.cwd,
        "profile": {"source": plan.profile.source, "consent": plan.consent},
        "operator_grants": list(plan.operator_grants),
        "environment": dict(sorted(plan.env.items())),
        "rlimits": {k: v for k, v in sorted(plan.rlimits.items())},
        "limits": dict(plan.profile.limits),
        "protections": [{"name": p.name, "status": p.status, "detail": p.detail}
                        for p in plan.protections],
        "landlock_rules": landlock.describe_rules(plan.landlock_policy),
        "seccomp": _seccomp_lines(plan),
        "trust_policy": str(plan.trust_policy.path) if plan.trust_policy else None,
        "notes": list(plan.notes),
    }


# ---------------------------------------------------------------- the launch itself


def run_spec(plan: LaunchPlan) -> runner.RunSpec:
    """The plan as plain data for runner.launch (and the warm-start cache). Once the app
    user exists (after materialise): its Unix permissions are checked for the notes said
    after a failed run (explain.failure_notes)."""
    from sandrun.launch.explain import failure_notes

    return runner.RunSpec(
        privileged=plan.privileged, uid=plan.user.uid, gid=plan.user.gid,
        user_name=plan.user.name, interpreter=plan.interpreter.path, argv=list(plan.argv),
        env=dict(plan.base_env), env_pass=list(plan.profile.env_pass),
        env_set=dict(plan.profile.env_set), cwd=plan.cwd, state_dir=str(plan.state_dir),
        rlimits=sorted(plan.rlimits.items()), mdwe=plan.mdwe,
        landlock=landlock.ruleset_spec(plan.landlock_policy),
        seccomp_bpf=plan.seccomp_bpf or seccomp.compile_filter(plan.seccomp_policy),
        writable=_writable(plan), hostname=f"sandrun-{plan.manifest.app_name}"[:64],
        tmp_size=plan.profile.limits.get("memory") or 0,
        limits=cgroup_limits(plan.profile) if plan.privileged else {},
        app_name=plan.manifest.app_name, failure_notes=failure_notes(plan))


def _writable(plan: LaunchPlan) -> list[str]:
    """What the app may write, to be mounted noexec,nosuid,nodev (devices are skipped by
    the runner; the private /tmp already is)."""
    paths = [str(plan.state_dir), *plan.profile.read_write]
    return [p for p in dict.fromkeys(paths) if p not in PRIVATE_TMP_DIRS]


def cgroup_limits(profile: Profile) -> dict[str, object]:
    """The profile's [limits] that a cgroup enforces, as cgroup.create takes them
    ({}: nothing to limit, no cgroup)."""
    names = {"memory": "memory", "tasks": "tasks", "cpu": "cpu_quota",
             "cpu_weight": "cpu_weight"}
    limits: dict[str, object] = {names[k]: v for k, v in profile.limits.items()
                                 if k in names and v is not None}
    required = [names[k] for k in profile.limits_required if k in names]
    if limits:
        limits["required"] = required
    return limits


def save_record(options: ExecOptions, plan: LaunchPlan, spec: runner.RunSpec) -> str | None:
    """Remember a launch this cold path fully checked, for warm_exec to reuse while every
    input it was derived from is unchanged. Best effort: a store that cannot take the
    record only means the next start is cold again. Returns the name of the native
    front's record written for this process's `exec` words, if one was."""
    from sandrun.launch.interpreter import candidates
    from sandrun.launch.safefile import UnsafePath

    args = warm_exec.ExecArgs.for_options(options)
    key = warm_exec.record_key(args, options.store or warm_exec.default_store_root())
    interp = plan.interpreter
    files = [*plan.profile.files, *warm_exec.USER_DATABASE, *plan.trust_inputs, interp.path,
             interp.real_path, *(os.path.abspath(f) for f in options.env_file)]
    if interp.elf_interpreter:
        files.append(interp.elf_interpreter)
    if options.python is None:  # a new, preferred candidate would change the choice
        files += candidates(plan.manifest.target.python)
    parent = os.path.dirname(interp.real_path)
    while parent not in ("/", ""):  # readability by the app user depends on every dir
        files.append(parent)
        parent = os.path.dirname(parent)
    # The bundle is opened O_NOFOLLOW, so its own identity counts, not a link target's.
    identity = warm_exec.identity
    inputs = [(options.bundle, False, identity(options.bundle, follow=False))]
    inputs += [(path, True, identity(path)) for path in dict.fromkeys(files)]
    not_after = None
    if plan.trust_policy is not None:
        from sandrun.supply.trust import trusted_until

        not_after = trusted_until(plan.trust_policy, plan.signature)
    plan.record_inputs = (key, inputs, not_after)
    with contextlib.suppress(SandrunError, UnsafePath, OSError):
        warm_exec.write_record(plan.store.dir_fd(), key, inputs, str(plan.tree), spec,
                               not_after)
    # The same for the native front (`sandrun` as a C program), keyed by this process's
    # `exec` words when the warm path would serve them with the record just written.
    from sandrun.launch import native_record

    with contextlib.suppress(SandrunError, UnsafePath, OSError):
        return native_record.save(plan.store.dir_fd(), key, inputs, str(plan.tree), spec,
                                  not_after)
    return None


def launch(plan: LaunchPlan) -> int:
    """Fork, sandbox the child, exec the app; return its exit code (128+N if killed)."""
    return runner.launch(run_spec(plan), plan.args)


def _bootstrap_flags(bundle: _Bundle) -> list[str]:
    """-S for a bootstrap that gives the app its site itself (BOOTSTRAP_API 2 in
    sandrun/build/bootstrap.py); an older one expects the system's site to have run."""
    entry = next((e for e in bundle.archive.entries if e.name == BOOTSTRAP_NAME), None)
    if entry is None or b"\nBOOTSTRAP_API = 2 " not in bundle.archive.read(entry):
        return []
    return ["-S"]


def compile_after_launch(plan: LaunchPlan, spec: runner.RunSpec) -> None:
    """Start adding the bytecode materialise(defer_bytecode=True) left out, in a process
    of its own that outlives this one (store.run_detached): a cold start runs the app
    first, compiling in memory only what it imports, as a shiv or pex first run does,
    instead of waiting for every module of every dependency to be compiled. Once the
    bytecode is in place the tree is snapshot again and the native record of this
    launch rewritten with that snapshot, from the inputs this launch checked (not a new
    look at them), so the next start is warm and finds its bytecode. Launches meanwhile
    run without it, or wait for it where they would check the tree.

    The tree's lock is taken here, before the fork, and held by the compile to its end:
    a pending tree always has a holder while it is worked on (else it is abandoned and
    the next start compiles it). The compile waits to publish until this process has
    become the app's supervisor (or 1 s): the native front re-checks the tree against
    the record just written, and must find it as it was checked; it publishes at normal
    priority (launches that find the tree changed wait for it).

    Where the launch may have to enable cgroup v2 controllers in this process's cgroup
    (a delegated unit), a process left in it would make that fail (no internal
    processes): the bytecode is then compiled here, before the launch, as before."""
    if not plan.bytecode_pending:
        return
    from sandrun.launch import native_record
    from sandrun.launch.safefile import UnsafePath
    from sandrun.launch.store import run_detached

    store = plan.store
    store_fd = store.dir_fd()

    def rewrite_record() -> None:  # under the tree's lock: before a waiting launch looks
        if plan.record_inputs is not None:
            key, inputs, not_after = plan.record_inputs
            with contextlib.suppress(SandrunError, UnsafePath, OSError):
                native_record.save(store_fd, key, inputs, str(plan.tree), spec, not_after)

    if _may_delegate_v2(spec):
        # Optional: a failure (say, ENOSPC) leaves the mark for the next start, and this
        # one runs from the sources it has checked.
        with contextlib.suppress(StoreError, OSError):
            store.compile_bytecode(plan.bundle_sha256, plan.manifest, plan.manifest_bytes,
                                   plan.interpreter.version, after_snapshot=rewrite_record)
            plan.bytecode_pending = False
        return
    lock = store.lock_tree_now(plan.bundle_sha256)
    if lock is None:
        return  # a compile of this tree runs already (or a removal): nothing to start
    launcher = os.getpid()
    launching = {os.readlink("/proc/self/exe"), os.path.realpath(native_record.front_path())}

    import time

    def launched() -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{launcher}/exe") not in launching:
                    break
            except OSError:
                break  # it is gone
            time.sleep(0.002)
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    def work() -> None:
        store.compile_bytecode(plan.bundle_sha256, plan.manifest, plan.manifest_bytes,
                               plan.interpreter.version, before_publishing=launched,
                               after_snapshot=rewrite_record, held_lock=lock)

    try:
        run_detached(work, b"sandrun-compile", keep=(store_fd, lock))
    except OSError:
        pass  # no process to spare (EAGAIN): the mark stays, the next start compiles
    finally:
        os.close(lock)  # the compile's copy keeps the lock held


def _may_delegate_v2(spec: runner.RunSpec) -> bool:
    """Whether launching `spec` may enable cgroup v2 controllers for this process's
    cgroup (cgroup.native_plan: a v2 node with controllers to delegate)."""
    if not spec.limits:
        return False
    from sandrun.sandbox import cgroup

    try:
        _, nodes = cgroup.native_plan(spec.limits)
    except (SandrunError, OSError):
        return True  # undecided: do as before
    return any(node["version"] == 2 and node["delegate"] for node in nodes)
