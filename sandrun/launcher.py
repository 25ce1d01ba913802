"""`sandrun exec`: the privileged launch path.

`prepare()` does everything that needs privileges or may fail with a clear
message (open + verify the bundle, install or re-check the store tree, resolve
profile, user and interpreter, build the environment and the rules) and
returns a LaunchPlan. `launch()` then forks; the child applies the protections
in DESIGN.md's fixed order (`_enter_sandbox`) and execs the interpreter. This
module imports only the standard library and sandrun's enforcement modules.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandrun import bytecode, landlock, runner, seccomp, warm_exec
from sandrun.errors import (
    BundleError,
    EnforcementError,
    Problem,
    VerificationError,
    VulnerabilityError,
)
from sandrun.interpreter import Interpreter, check_wheel_tags, find_interpreter
from sandrun.manifest import BOOTSTRAP_NAME, MANIFEST_NAME, PROFILE_NAME, Manifest
from sandrun.store import Store, default_store_path
from sandrun.users import AppUser, invoking_user, resolve_user

if TYPE_CHECKING:
    from sandrun.profile import Profile
    from sandrun.signing import SignatureStatus
    from sandrun.trust import TrustPolicy

PR_GET_MDWE = 66

# Files almost every app needs to read; absent ones are skipped (marked so in --dry-run).
# DNS files come with the profile's `dns = true`, certificates with its read lists.
SYSTEM_READ = ("/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/etc/passwd",
               "/etc/group", "/etc/nsswitch.conf", "/usr/lib/locale", "/etc/mime.types",
               "/sys/devices/system/cpu", "/dev/urandom", "/dev/random")
SYSTEM_READ_WRITE = ("/dev/null", "/dev/zero", "/dev/full")
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


@dataclass
class Protection:
    name: str
    status: str  # "enforced" | "partial" | "not enforced"
    detail: str = ""


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
    protections: list[Protection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_bundle(path: str) -> tuple[bytes, str]:
    """Read the bundle once, without following a symlink, and hash it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist", "check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"bundle {path} is a symbolic link",
                              "pass the real file: sandrun never follows a link to a bundle"
                              ) from None
        raise BundleError(f"cannot open bundle {path}: {exc.strerror}",
                          "check the path and its permissions") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"bundle {path} is not a regular file", "pass a .pyz file")
        data = f.read()
    return data, hashlib.sha256(data).hexdigest()


def prepare(options: ExecOptions) -> LaunchPlan:
    from sandrun.archive import parse_archive
    from sandrun.profile import load_profile, load_profile_text
    from sandrun.signing import signature_status
    from sandrun.trust import (
        DEFAULT_TRUST_PATH,
        find_trust_policy,
        load_trust_policy,
        require_trust,
    )
    from sandrun.verify import verify_archive

    privileged = os.geteuid() == 0
    data, sha256 = read_bundle(options.bundle)
    archive = parse_archive(data, options.bundle)
    store = Store(Path(options.store) if options.store else default_store_path(), os.geteuid())
    tree = store.tree(sha256)
    installed = tree.is_dir()
    cold = not installed
    manifest_entry = next((e for e in archive.entries if e.name == MANIFEST_NAME), None)
    verified_status: SignatureStatus | None = None
    if installed and manifest_entry is not None and not archive.problems:
        # Same bytes as the bundle installed before (the dir is named by its sha256):
        # the cheap tree check is enough unless --verify=full.
        manifest_bytes = archive.read(manifest_entry)
        manifest = Manifest.from_bytes(manifest_bytes)
        store.check_ancestry()
        # Re-hash in full unless the tree is exactly as it was last fully verified (ctime
        # and inode of every entry): a same-size edit cannot pass the cheap check.
        full = options.verify_full or not warm_exec.tree_matches_snapshot(
            str(store.root), str(tree))
        store.check_tree(tree, manifest, manifest_bytes, full=full)
        if full and not options.dry_run:
            warm_exec.save_tree_snapshot(str(store.root), str(tree))
    else:
        result = verify_archive(archive)
        if not result.ok or result.manifest is None:
            raise VerificationError(f"bundle {options.bundle} failed verification",
                                    result.problems,
                                    "rebuild it with `sandrun bundle`; run `sandrun verify` "
                                    "for the full report")
        manifest = result.manifest
        manifest_bytes = archive.read(manifest_entry) if manifest_entry else b""
        verified_status = result.signature_status

    # Trust before anything else is decided: an untrusted bundle changes nothing.
    if verified_status is None:
        verified_status = signature_status(archive, manifest)
    policy = (load_trust_policy(Path(options.trust)) if options.trust
              else find_trust_policy(DEFAULT_TRUST_PATH))
    if policy is not None:
        require_trust(policy, manifest, verified_status, options.bundle)
    audit_note = None
    if options.audit_db:
        audit_note = _audit(options, manifest)

    if options.profile:
        profile = load_profile(options.profile)
    else:
        entry = next(e for e in archive.entries if e.name == PROFILE_NAME)
        profile = load_profile_text(archive.read(entry).decode("utf-8"),
                                    f"{options.bundle}:{PROFILE_NAME}", None)

    # Refuse before any side effect (user creation, installation) what cannot be enforced.
    require_kernel_support(profile)
    app = manifest.app_name
    if privileged:
        user = resolve_user(options.user, app, create=not options.dry_run)
    else:
        if options.user:
            raise EnforcementError("--user needs root: sandrun can switch users only when "
                                   "started as root", "run sandrun exec as root, or drop --user")
        user = invoking_user()
    gids = os.getgrouplist(user.name, user.gid) if user.exists else [user.gid]
    if user.exists:
        interp = find_interpreter(options.python, manifest.target.python, user.uid, gids)
    else:  # dry run, user not created yet: check as an unprivileged uid in no group
        interp = find_interpreter(options.python, manifest.target.python, 65534, [65534])

    if cold:
        # Install only once the bundle is known to fit this interpreter and machine.
        check_wheel_tags(interp, [d.wheel for d in manifest.dependencies])
        if not options.dry_run:
            store.ensure_layout()
            tree = store.install(sha256, archive, manifest, interp.version)
            store.check_tree(tree, manifest, manifest_bytes, full=False)
            warm_exec.save_tree_snapshot(str(store.root), str(tree))  # written from verified bytes
            installed = True
    state = store.state_dir(app, user.uid, user.gid, create=not options.dry_run and user.exists)
    placeholders = {"app": app, "state": str(state), "tmp": str(state / "tmp"),
                    "store": str(tree), "home": str(state), "cwd": os.getcwd()}
    profile = profile.expand(placeholders)
    uses_cwd = os.getcwd() in (*profile.read, *profile.read_write)
    cwd = os.getcwd() if uses_cwd else str(state)

    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(state),
                "TMPDIR": str(state / "tmp"), "LANG": "C.UTF-8"}
    env = dict(base_env)
    for name in profile.env_pass:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(profile.env_set)

    plan = LaunchPlan(
        bundle=options.bundle, bundle_sha256=sha256, manifest=manifest, store=store, tree=tree,
        installed=installed, profile=profile, user=user, privileged=privileged,
        interpreter=interp, state_dir=state,
        argv=[interp.path, "-I", "-B", str(tree / BOOTSTRAP_NAME)], args=options.args,
        base_env=base_env, env=env, cwd=cwd,
        landlock_policy=_landlock_policy(profile, interp, tree, state),
        seccomp_policy=_seccomp_policy(profile),
        rlimits=dict(profile.rlimits), mdwe=profile.mdwe, signature=verified_status,
        trust_policy=policy,
        trust_inputs=(options.trust or str(DEFAULT_TRUST_PATH),
                      *(policy.files if policy is not None else ())))
    if audit_note:
        plan.notes.append(audit_note)
    _assess(plan)
    return plan


def _audit(options: ExecOptions, manifest: Manifest) -> str:
    """Refuse (AuditError, 125) known vulnerabilities at or above the threshold."""
    from sandrun.audit import audit_manifest, check_severity_level, load_osv_database

    level = check_severity_level(options.audit_severity)
    report = audit_manifest(manifest, load_osv_database(Path(options.audit_db or "")),
                            options.bundle)
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
            + (f" ({others} below it; run `sandrun audit`)" if others else ""))


def _landlock_policy(profile: Profile, interp: Interpreter, tree: Path,
                     state: Path) -> landlock.LandlockPolicy:
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
    if profile.dns:
        from sandrun.profile import DNS_FILES

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
    return runner.prctl(PR_GET_MDWE) >= 0


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
    if sec.status != "enforced":
        raise EnforcementError(f"seccomp cannot be enforced: {sec.detail}",
                               "use a kernel with CONFIG_SECCOMP_FILTER")


def _assess(plan: LaunchPlan) -> None:
    """Fill in what this kernel enforces (require_kernel_support already refused what
    it cannot)."""
    P = Protection
    prot = plan.protections
    if plan.privileged:
        who = (f"{plan.user.name} (uid {plan.user.uid})" if plan.user.exists
               else f"{plan.user.name} (to be created)")
        prot.append(P("user switch", "enforced",
                      f"runs as {who}; setuid(0) is proven to fail before exec"))
        prot.append(P("capabilities", "enforced", "bounding, ambient and effective sets empty"))
        prot.append(P("code ownership", "enforced",
                      "store tree owned by root, dirs 0555, files 0444/0555"))
        prot.append(P("pid namespace", "enforced",
                      "nothing the app starts outlives it; other processes are invisible"))
        prot.append(P("noexec state dir", "enforced",
                      "the state dir is mounted noexec,nosuid,nodev in a private mount "
                      "namespace: files the app writes cannot be executed or mmap'd executable"))
    else:
        prot.append(P("user switch", "not enforced",
                      f"sandrun is not root: the app runs as the invoking user {plan.user.name}"))
        prot.append(P("code ownership", "partial",
                      "the store belongs to the invoking user: code is protected by Landlock "
                      "alone (no write rights), not by file ownership"))
        prot.append(P("pid namespace", "partial", "not root: a subreaper kills what the app "
                      "leaves behind instead"))
        prot.append(P("noexec state dir", "not enforced",
                      "not root: no private mount namespace; Landlock still denies execve "
                      "of written files, but not mmap(PROT_EXEC) of them"))
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
    sec = seccomp.status()
    prot.append(P("seccomp", sec.status, sec.detail))


def render_plan(plan: LaunchPlan) -> str:
    m = plan.manifest
    lines = [
        f"bundle       {plan.bundle}",
        f"  sha256     {plan.bundle_sha256}",
        f"  app        {m.app_name} {m.app_version}  entry {m.entry_point}",
        f"store tree   {plan.tree}" + ("" if plan.installed else "  (not installed yet: "
                                        "would be extracted and verified)"),
        f"state dir    {plan.state_dir}  (HOME, TMPDIR={plan.state_dir}/tmp)",
        f"user         {plan.user.name}" + (f" (uid {plan.user.uid}, gid {plan.user.gid})"
                                            if plan.user.exists else
                                            "  (missing: would be created as a system user)"),
        f"interpreter  {plan.interpreter.path} (Python {plan.interpreter.version}, "
        f"stdlib {plan.interpreter.stdlib})",
        "bytecode     " + ("precompiled into the store at install (read-only; re-compiled and "
                             "compared by a full check)"
                             if bytecode.compatible(plan.interpreter.version) else
                             f"not precompiled: sandrun runs Python {sys.version_info[0]}."
                             f"{sys.version_info[1]}, the app {plan.interpreter.version} "
                             "(every start compiles what it imports)"),
        f"command      {' '.join([*plan.argv, *plan.args])}",
        f"cwd          {plan.cwd}",
        f"profile      {plan.profile.source}",
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
    lines += [f"  {line}" for line in seccomp.describe(plan.seccomp_policy)]
    from sandrun.trust import DEFAULT_TRUST_PATH

    lines += ["", f"signature    {plan.signature.describe()}"]
    if plan.trust_policy is not None:
        lines.append(f"trust        policy {plan.trust_policy.path}: satisfied")
    else:
        lines.append("trust        NO POLICY IN FORCE: any bundle runs, signed or not "
                     f"(create {DEFAULT_TRUST_PATH} or pass --trust FILE to require "
                     "signatures)")
    lines += plan.notes
    return "\n".join(lines)


# ---------------------------------------------------------------- the launch itself


def run_spec(plan: LaunchPlan) -> runner.RunSpec:
    """The plan as plain data for runner.launch (and the warm-start cache)."""
    return runner.RunSpec(
        privileged=plan.privileged, uid=plan.user.uid, gid=plan.user.gid,
        user_name=plan.user.name, interpreter=plan.interpreter.path, argv=list(plan.argv),
        env=dict(plan.base_env), env_pass=list(plan.profile.env_pass),
        env_set=dict(plan.profile.env_set), cwd=plan.cwd, state_dir=str(plan.state_dir),
        rlimits=sorted(plan.rlimits.items()), mdwe=plan.mdwe,
        landlock=landlock.ruleset_spec(plan.landlock_policy),
        seccomp_bpf=seccomp.compile_filter(plan.seccomp_policy))


def launch(plan: LaunchPlan) -> int:
    """Fork, sandbox the child, exec the app; return its exit code (128+N if killed)."""
    return runner.launch(run_spec(plan), plan.args)
