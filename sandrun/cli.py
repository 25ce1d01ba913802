"""The command line: thin wrappers over the core modules.

One place (`main`) turns SandrunError into `sandrun: error: ...` and an exit
code. Heavy modules are imported inside the commands so that `sandrun exec`
pays only for what the launch path needs.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from sandrun import __version__
from sandrun.errors import EXIT_REFUSED, EXIT_USAGE, SandrunError
from sandrun.launch.options import EXEC_OPTIONS, VERBOSE, Option, exec_option_fields


def _fail(exc: SandrunError, verbose: bool) -> NoReturn:
    if verbose:
        traceback.print_exception(exc)
    text = exc.diagnostics()
    click.echo(f"sandrun: error: {text}", err=True)
    sys.exit(exc.exit_code)


def _progress_printer() -> Any:
    if sys.stderr.isatty():
        return lambda msg: click.echo(f"sandrun: {msg}...", err=True)
    return lambda msg: None


def _record_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-v/--verbose, wherever given: main() shows tracebacks (ctx.obj is main's state,
    shared by every nested context)."""
    if value:
        ctx.ensure_object(dict)["verbose"] = True


def _verbose_option() -> click.Option:
    return click.Option(list(VERBOSE.names), is_flag=True, expose_value=False,
                        callback=_record_verbose, help=VERBOSE.help)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-V/--version: sandrun's and everything enforcement depends on, on this machine."""
    if not value or ctx.resilient_parsing:
        return
    from sandrun.sandbox.report import versions

    click.echo(f"sandrun {__version__}")
    for name, text in versions():
        click.echo(f"{name + ':':<10} {text}")
    ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show sandrun's, Python's, the kernel's, "
              "Landlock's and seccomp's versions and exit.")
def cli() -> None:
    """Bundle Python apps reproducibly and run them under Landlock and seccomp."""


cli.params.append(_verbose_option())  # `sandrun -v CMD`; `CMD -v` too: _verbose_everywhere


@cli.command()
@click.argument("requirements", nargs=-1, metavar="[REQ]...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output bundle (.pyz), written atomically with mode 0444.")
@click.option("-e", "--entry-point", metavar="MOD:FUNC", help="Function to run.")
@click.option("-c", "--console-script", metavar="NAME", help="Console script to run.")
@click.option("-r", "--requirement", "requirement_files", multiple=True,
              type=click.Path(path_type=Path), metavar="FILE",
              help="Requirements file (repeatable); --hash pins are enforced.")
@click.option("--find-links", multiple=True, metavar="DIR", help="Extra wheel locations.")
@click.option("--no-index", is_flag=True, help="Do not use the package index.")
@click.option("--index-url", metavar="URL", help="Package index to use.")
@click.option("-p", "--profile", default="default", show_default=True, metavar="NAME|FILE",
              help="Profile to validate and embed.")
@click.option("--name", metavar="NAME", help="App name (default: from the script or entry).")
@click.option("--python-version", metavar="X.Y", help="Target Python version.")
@click.option("--platform", "platforms", multiple=True, metavar="TAG",
              help="Target platform tag (repeatable).")
@click.option("--lock", "lock", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PYLOCK", help="PEP 751 pylock.toml: take exactly its wheels for the "
              "target, every hash checked (instead of REQs and -r).")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="Sign the bundle with this Ed25519 key.")
@click.pass_context
def bundle(ctx: click.Context, requirements: tuple[str, ...], output: Path,
           entry_point: str | None, console_script: str | None,
           requirement_files: tuple[Path, ...], find_links: tuple[str, ...], no_index: bool,
           index_url: str | None, profile: str, name: str | None, python_version: str | None,
           platforms: tuple[str, ...], lock: Path | None, sign_key: Path | None) -> None:
    """Freeze REQs (wheels only) into a reproducible, verifiable zipapp."""
    from sandrun.build.builder import BundleRequest, build_bundle

    signing_key = None
    if sign_key is not None:  # a bad key fails before the build, not after
        from sandrun.supply.signing import load_private_key

        signing_key = load_private_key(sign_key)  # asks for a passphrase once, if any

    request = BundleRequest(
        output=output, requirements=requirements, requirement_files=requirement_files,
        entry_point=entry_point, console_script=console_script, find_links=find_links,
        no_index=no_index, index_url=index_url, profile=profile, name=name,
        python_version=python_version, platforms=platforms, lock=lock)
    result = build_bundle(request, progress=_progress_printer(),
                          warn=lambda msg: click.echo(f"sandrun: warning: {msg}", err=True))
    sha256 = result.sha256
    signed = ""
    if sign_key is not None:
        import hashlib

        from sandrun.supply.signing import sign_bundle

        assert signing_key is not None
        signed = sign_bundle(result.path, signing_key).describe()
        sha256 = hashlib.sha256(result.path.read_bytes()).hexdigest()
    m = result.manifest
    platform = next((p for p in m.target.platforms if p.startswith("manylinux")),
                    m.target.platforms[0])
    click.echo(f"{result.path}\n"
               f"  sha256       {sha256}\n"
               f"  app          {m.app_name} {m.app_version}\n"
               f"  entry point  {m.entry_point}"
               + (f" (console script {m.console_script})" if m.console_script else "") + "\n"
               f"  target       Python {m.target.python} ({m.target.abi}, "
               f"{platform})\n"
               f"  contents     {len(m.dependencies)} wheels, {len(m.entries)} files, "
               f"{m.total_size} bytes uncompressed, {result.path.stat().st_size} bytes on disk")
    if signed:
        click.echo(f"  signature    {signed}")


def _click_option(option: Option) -> click.Option:
    """The click option of an EXEC_OPTIONS entry."""
    if option is VERBOSE:
        return _verbose_option()
    if option.flag:
        return click.Option([*option.names, option.dest], is_flag=True, help=option.help)
    if option.multiple:
        return click.Option([*option.names, option.dest], metavar=option.metavar,
                            help=option.help, multiple=True)
    return click.Option([*option.names, option.dest], metavar=option.metavar,
                        help=option.help, envvar=option.envvar, default=option.default,
                        show_default=option.default is not None,
                        type=click.Choice(option.choices) if option.choices else None)


def _exec_options(command: click.Command) -> click.Command:
    """Give the exec command the options of the table (options.EXEC_OPTIONS), in its order,
    before its arguments."""
    command.params[:0] = [_click_option(option) for option in EXEC_OPTIONS]
    return command


# Options end at the first word that is not one (the bundle): everything after it is the
# app's, untouched. Before it, an unknown option is a usage error, not the bundle path.
@_exec_options
@cli.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def exec_(bundle_path: str, args: tuple[str, ...], **values: Any) -> int:
    """Verify, install and run BUNDLE as an unprivileged user in a sandbox."""
    import time

    from sandrun.launch import runner
    from sandrun.launch.launcher import (
        ExecOptions,
        decide,
        materialise,
        plan_to_json,
        render_plan,
        run_spec,
        save_record,
    )

    if args[:1] == ("--",):  # `sandrun exec BUNDLE -- ARGS`: the separator is not an arg
        args = args[1:]
    options = ExecOptions(bundle=bundle_path, args=args, **exec_option_fields(values))
    dry_run, as_json = options.dry_run, values["as_json"]
    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run (a launch prints what the app "
                               "prints)")
    plan = decide(options)
    if dry_run:
        if as_json:
            click.echo(json.dumps(plan_to_json(plan), indent=2, sort_keys=True))
        else:
            click.echo(render_plan(plan))
        return EXIT_REFUSED if plan.refusals else 0
    plan.raise_for_refusals()
    materialise(plan, options)
    for notice in plan.notices:
        click.echo(f"sandrun: {notice}", err=True)
    spec = run_spec(plan)
    save_record(options, plan, spec)
    session = None
    if values.get("explain", False):  # record the run's denials (cold path only)
        from sandrun.launch.explain import ExplainSession

        session = ExplainSession()
        session.start()
    started = time.monotonic()
    try:
        code = runner.launch(spec, plan.args)
    finally:
        if session is not None:
            session.stop()  # restores the audit setting, also when the launch failed
    # 130/143: the app ended by the SIGINT/SIGTERM sandrun forwarded to it (a service
    # being stopped), not by a failure worth explaining.
    if (code != 0 and code not in (130, 143)) or session is not None:
        from sandrun.launch.explain import explanation

        for line in explanation(plan, code, session, started):
            click.echo(f"sandrun: {line}", err=True)
    return code


@cli.command()
@click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
              help="Root-owned store (default /var/lib/sandrun).")
@click.option("--yes", is_flag=True, help="Record the approval without asking.")
@click.option("--allow-dangerous", "allow_dangerous", multiple=True, metavar="SYSCALL",
              help="Approve this dangerous syscall by name (repeatable); a blanket approval "
              "never grants one.")
@click.argument("bundle_path", metavar="BUNDLE")
def approve(store: str | None, yes: bool, allow_dangerous: tuple[str, ...],
            bundle_path: str) -> int:
    """Show what BUNDLE's embedded profile asks for beyond `default`; record approval."""
    from sandrun.bundle.archive import parse_archive
    from sandrun.bundle.manifest import PROFILE_NAME
    from sandrun.bundle.verify import verify_archive
    from sandrun.config.profile import load_profile_text
    from sandrun.launch import consent
    from sandrun.launch.safefile import read_bundle
    from sandrun.launch.store import default_store_path

    data, sha256 = read_bundle(bundle_path)
    result = verify_archive(parse_archive(data, bundle_path))
    result.raise_for_problems(f"bundle {bundle_path}")
    assert result.manifest is not None
    app = result.manifest.app_name
    entry = next(e for e in result.archive.entries if e.name == PROFILE_NAME)
    requested = load_profile_text(result.archive.read(entry).decode("utf-8"),
                                  f"{bundle_path}:{entry.name}", None)
    from sandrun.launch.store import Store

    store_obj = Store(Path(store) if store else default_store_path(), os.geteuid())
    extra = consent.extra_grants(requested, [consent.default_profile()])
    ceilings = consent.load_ceilings(store_obj, app)
    new = consent.check_consent(requested, ceilings)
    click.echo(f"{bundle_path}: app {app} {result.manifest.app_version}, "
               f"{result.signature_status.describe()}")
    if not extra:
        click.echo("  the embedded profile grants nothing beyond `default`: no approval "
                   "needed")
        return 0
    click.echo(f"  asks for {len(extra)} grant(s) beyond `default`"
               + (f" ({len(new)} not yet approved)" if ceilings else "") + ":")
    for grant in extra:
        mark = "!" if grant.danger else " "
        state = "" if grant in new or not ceilings else "  (approved before)"
        click.echo(f"  {mark} {grant}{state}")
    if not new:
        click.echo("  everything is already approved")
        return 0
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("not a terminal: pass --yes to approve without asking")
        if not click.confirm(f"approve these grants for app {app!r}?", default=False):
            click.echo("not approved", err=True)
            return 1
    path = consent.record_approval(store_obj, app, requested, sha256, allow_dangerous)
    click.echo(f"approved: {path}")
    return 0


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--trust", metavar="FILE", help="Also check the bundle against this trust "
              "policy (exit 1 if it would be refused).")
def verify(bundle_path: str, trust: str | None) -> int:
    """Check a bundle's integrity and signature; list every problem (exit 1 if any)."""
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(bundle_path)
    problems = list(result.problems)
    if trust and result.manifest is not None:
        from sandrun.supply.trust import check_trust, load_trust_policy

        problems += check_trust(load_trust_policy(Path(trust)), result.manifest,
                                result.signature_status, bundle_path)
    signature = f"signature: {result.signature_status.describe()}"
    if not problems:
        m = result.manifest
        assert m is not None
        click.echo(f"{bundle_path}: OK ({len(m.entries)} entries, manifest {m.digest()[:16]})")
        click.echo(f"  {signature}" + (f"; trusted by {trust}" if trust else ""))
        return 0
    click.echo(f"{bundle_path}: {len(problems)} problem(s)")
    for problem in problems:
        click.echo(f"  - {problem}")
    click.echo(f"  {signature}")
    return 1


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="KEY", help="Private key to write (0600); the public key goes to KEY.pub.")
@click.option("--identity", metavar="TEXT", help="Signer identity, stored as the comment in "
              "KEY.pub and in signatures (default user@hostname).")
def keygen(output: Path, identity: str | None) -> None:
    """Create an Ed25519 signing key (OpenSSH format); never overwrites."""
    from sandrun.bundle.signature import fingerprint, parse_public_key
    from sandrun.supply.signing import generate_key

    private, public = generate_key(output, identity)
    key = parse_public_key(public.read_text().strip(), str(public))
    click.echo(f"{private} (private, 0600)\n{public}\n  {fingerprint(key)}\n"
               f"  add to a trust policy: public_key = \"{key.openssh()}\"")


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", "--key", "key_path", required=True, metavar="KEY",
              type=click.Path(dir_okay=False, path_type=Path), help="Private key.")
def sign(bundle_path: Path, key_path: Path) -> None:
    """Sign BUNDLE's manifest digest (replaces an earlier signature)."""
    from sandrun.supply.signing import sign_bundle

    info = sign_bundle(bundle_path, key_path)
    click.echo(f"{bundle_path}: {info.describe()}")


@cli.group()
def trust() -> None:
    """Check trust policies (which keys may sign which apps)."""


@trust.command(name="check")
@click.argument("policy_file", metavar="[FILE]", required=False)
def trust_check(policy_file: str | None) -> None:
    """Validate a trust policy (default /etc/sandrun/trust.toml); list its signers."""
    from sandrun.supply.trust import DEFAULT_TRUST_PATH, load_trust_policy

    policy = load_trust_policy(Path(policy_file) if policy_file else DEFAULT_TRUST_PATH)
    click.echo(f"{policy.path}: OK ({len(policy.signers)} signer(s))")
    for signer in policy.signers:
        click.echo(f"  {signer.name}  {signer.fingerprint}  apps: {', '.join(signer.apps)}")
    for app, minimum in sorted(policy.min_versions.items()):
        click.echo(f"  {app} >= {minimum.text}")


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--sbom", is_flag=True, help="Print the embedded CycloneDX SBOM (JSON).")
def inspect(bundle_path: str, as_json: bool, sbom: bool) -> None:
    """Show a bundle's metadata, dependencies, signature, SBOM, profile and manifest."""
    from sandrun.inspect import describe_bundle, embedded_sbom, render_text

    if sbom:
        click.echo(embedded_sbom(bundle_path).decode("utf-8"), nl=False)
        return
    info = describe_bundle(bundle_path)
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else render_text(info))


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--osv", "osv_path", required=True, metavar="PATH",
              type=click.Path(path_type=Path),
              help="OSV advisories: a directory of JSON files or an ecosystem zip (all.zip).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def audit(bundle_path: str, osv_path: Path, as_json: bool) -> int:
    """Offline vulnerability audit of a bundle's dependencies (exit 1 if vulnerable)."""
    from sandrun.supply.audit import (
        audit_bundle,
        load_osv_database,
        render_text,
        report_to_json,
    )

    report = audit_bundle(bundle_path, load_osv_database(osv_path))
    if as_json:
        click.echo(json.dumps(report_to_json(report), indent=2, sort_keys=True))
    else:
        click.echo(render_text(report))
    return 1 if report.vulnerable else 0


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write here (default: stdout).")
def lock(bundle_path: str, output: Path | None) -> None:
    """Hash-pinned requirements (name==version --hash) of exactly what BUNDLE contains."""
    from sandrun.build.lockfile import requirements_from_manifest
    from sandrun.bundle.verify import verify_bundle

    result = verify_bundle(bundle_path)
    result.raise_for_problems(f"bundle {bundle_path}")
    assert result.manifest is not None
    text = requirements_from_manifest(result.manifest)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"{output}: {len(result.manifest.dependencies)} pinned requirement(s)", err=True)


@cli.group()
def profile() -> None:
    """List, show and check profiles."""


@profile.command(name="list")
def profile_list() -> None:
    """Shipped profiles and what they are for."""
    from sandrun.config.profile import shipped_profiles

    items = shipped_profiles()
    width = max((len(n) for n, _ in items), default=0)
    for name, description in items:
        click.echo(f"{name:<{width}}  {description}")


@profile.command(name="show")
@click.argument("name_or_file", metavar="NAME|FILE")
def profile_show(name_or_file: str) -> None:
    """The fully resolved profile, and what this kernel enforces of it."""
    from sandrun.config.profile import load_profile, render_toml
    from sandrun.sandbox.report import enforcement_summary

    resolved = load_profile(name_or_file)
    click.echo(render_toml(resolved).rstrip())
    click.echo("")
    for line in enforcement_summary(resolved):
        click.echo(f"# {line}")


@profile.command(name="check")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def profile_check(files: tuple[str, ...]) -> int:
    """Validate profile files; report every problem (exit 1 if any)."""
    from sandrun.config.profile import check_files

    problems = check_files(list(files))
    for problem in problems:
        click.echo(f"{problem}", err=True)
    if problems:
        click.echo(f"sandrun: {len(problems)} problem(s) in {len(files)} file(s)", err=True)
        return 1
    click.echo(f"{len(files)} profile(s) OK")
    return 0


def _verbose_everywhere(group: click.Group) -> None:
    """-v/--verbose on every subcommand, not only before it (`sandrun -v CMD`)."""
    for command in group.commands.values():
        if not any(param.name == "verbose" for param in command.params):
            command.params.append(_verbose_option())
        if isinstance(command, click.Group):
            _verbose_everywhere(command)


def _register_more_commands() -> None:
    """Commands defined in their own modules (sandrun/cli_*.py)."""
    from sandrun.cli_export import export
    from sandrun.cli_store import gc, list_, rm

    for command in (export, list_, gc, rm):
        cli.add_command(command)

    def add_verbose(command: click.Command) -> None:  # exporters load lazily
        if not any(param.name == "verbose" for param in command.params):
            command.params.append(_verbose_option())

    export.prepare_command = add_verbose  # type: ignore[attr-defined]


_register_more_commands()
_verbose_everywhere(cli)


def main(argv: list[str] | None = None) -> NoReturn:
    state = {"verbose": False}  # ctx.obj of every context: set by -v/--verbose
    try:
        result = cli.main(args=argv, prog_name="sandrun", standalone_mode=False, obj=state)
    except SandrunError as exc:
        _fail(exc, state["verbose"])
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.Abort:
        click.echo("sandrun: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a sandrun bug, not a user mistake: still no raw traceback
        if state["verbose"]:
            traceback.print_exc()
        click.echo(f"sandrun: internal error: {type(exc).__name__}: {exc}\n"
                   "  hint: run again with --verbose for the traceback and report it",
                   err=True)
        sys.exit(EXIT_REFUSED)
    sys.exit(result if isinstance(result, int) else 0)


def _learn_options(command: click.Command) -> click.Command:
    """`learn` takes exec's options (same table) but --dry-run, --json and --explain."""
    command.params[:0] = [_click_option(option) for option in EXEC_OPTIONS
                          if option.dest not in ("dry_run", "as_json", "explain")]
    return command


@_learn_options
@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="PROFILE.toml",
              help="Write the complete learned profile here (for exec -p).")
@click.option("--check", "check_profile", metavar="PROFILE",
              help="Instead of learning: replay under enforcement with PROFILE and fail "
              "if anything is still denied.")
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def learn(bundle_path: str, args: tuple[str, ...], output: str | None,
          check_profile: str | None, **values: Any) -> int:
    """Run BUNDLE observed and print the grants its profile lacks (-o: write the profile).

    Servers: learn while you exercise them, then stop with Ctrl-C or SIGTERM (forwarded
    to the app); the profile is written after the app exited.

    The learning run is watched, not confined: its own user, namespaces, MDWE, rlimits
    and cgroup apply, but every path its user can reach is open to it, and syscalls the
    profile denies run (except those that could leave the sandbox). Learn only with
    code and inputs you would run that way; the written profile is what confines it."""
    from sandrun.launch import learn as learning
    from sandrun.launch.launcher import ExecOptions

    if args[:1] == ("--",):
        args = args[1:]
    if check_profile and output:
        raise click.UsageError("--check replays a profile, -o writes one: use one of them")
    if check_profile and values.get("profile"):
        raise click.UsageError("--check PROFILE is the profile to replay: drop -p")
    fields = exec_option_fields(values)
    if check_profile:
        fields["profile"] = check_profile
    options = ExecOptions(bundle=bundle_path, args=args, **fields)

    def notice(message: str) -> None:
        click.echo(f"sandrun: {message}", err=True)

    if check_profile:
        result = learning.check(options, notice)
        for error in result.observation.errors:
            notice(f"warning: observer: {error}")
        code = result.observation.exit_code
        denied = learning.still_denied(result)
        notice(f"learn --check: {learning.summary(result)} under {check_profile}")
        for line in denied:
            notice(f"  denied: {line}")
        for line in result.learned.unresolved:
            notice(f"  denied: {line}")
        for line in result.learned.skipped:
            notice(f"  note: {line}")
        if denied:
            notice(f"learn --check: FAILED: {len(denied)} denial(s) a profile could lift "
                   f"(sandrun learn -p {check_profile} -o NEW.toml BUNDLE -- ARGS adds them)")
            return code or 1
        coped = result.learned.unresolved
        if code:
            notice(f"learn --check: FAILED: the app exited with {code}"
                   + (" (see the denials above)" if coped else
                      " (nothing a profile grants was denied)"))
            return code
        notice("learn --check: OK: the app succeeded and nothing was denied" if not coped else
               f"learn --check: OK: the app succeeded; it coped with {len(coped)} denial(s)")
        return 0

    result = learning.learn(options, output, notice)
    for error in result.observation.errors:
        notice(f"warning: observer: {error}")
    code = result.observation.exit_code
    click.echo(f"learned from: {learning.summary(result)}")
    added = result.learned.changes
    click.echo(f"changes to {result.source}:" if added else
               f"changes to {result.source}: none (it covers this run)")
    for change in added:
        click.echo(f"  {change}")
    skipped = result.learned.not_granted()
    if skipped:
        click.echo("not granted:")
        for line in skipped:
            click.echo(f"  - {line}")
    if output:
        click.echo(f"wrote {output}: the complete profile (sandrun exec -p {output} "
                   f"{bundle_path})")
    else:
        click.echo("no profile written (-o PROFILE.toml writes the complete profile)")
    # A server stopped with Ctrl-C or SIGTERM has done what it was meant to.
    if code not in (0, 130, 143):
        notice(f"warning: the app exited with {code}: the profile covers what it did "
               "until then")
        return code
    return 0

