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
    from sandrun.cli_build import audit, bundle, lock, verify
    from sandrun.cli_dev import dev, test
    from sandrun.cli_export import export
    from sandrun.cli_store import gc, list_, rm
    from sandrun.cli_supply import inspect, keygen, sign, trust

    for command in (bundle, verify, lock, audit, keygen, sign, trust, inspect, export, list_,
                    gc, rm, dev, test):
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

