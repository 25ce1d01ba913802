"""The command line: thin wrappers over the core modules.

One place (`main`) turns SandrunError into `sandrun: error: ...` and an exit
code. Heavy modules are imported inside the commands so that `sandrun exec`
pays only for what the launch path needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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


QUIET_HELP = "Print nothing on stdout (errors still go to stderr; same exit code)."
JSON_HELP = "Print the report as one JSON document on stdout."


_Function = TypeVar("_Function", bound=Callable[..., Any])


def _report_options(function: _Function) -> _Function:
    """-q/--quiet and --json, as every command that reports has them."""
    function = click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(function)
    return click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)(function)


def _ignore(*_: object, **__: object) -> None:
    """What -q and --json print of a report meant for a human."""


def _one_output(quiet: bool, as_json: bool) -> None:
    if quiet and as_json:
        raise click.UsageError("-q prints nothing and --json prints JSON: choose one")


def _print_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@contextlib.contextmanager
def _app_stdout_to_stderr(redirect: bool) -> Iterator[None]:
    """While the app runs, its stdout goes to stderr (learn -q/--json: stdout is sandrun's
    report alone). The saved fd is close-on-exec, and the launch closes fds > 2 anyway."""
    if not redirect:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-V/--version: sandrun's and everything enforcement depends on, on this machine."""
    if not value or ctx.resilient_parsing:
        return
    from sandrun.sandbox.report import versions

    click.echo(f"sandrun {__version__}")
    from sandrun.launch.native_record import front_status
    from sandrun.launch.runner import supervisor_status

    for name, text in [*versions(), ("front", front_status()[1]),
                       ("supervisor", supervisor_status()[1])]:
        click.echo(f"{name + ':':<12} {text}")
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
_EXEC_QUIET_HELP = ("With --dry-run: print nothing on stdout (the exit code says run or "
                    "refuse; the reasons go to stderr).")


def _exec_quiet(command: click.Command) -> click.Command:
    """-q/--quiet of exec, until options.EXEC_OPTIONS has it (then it comes from there)."""
    if not any(option.dest == "quiet" for option in EXEC_OPTIONS):
        command.params.append(click.Option(["-q", "--quiet", "quiet"], is_flag=True,
                                           help=_EXEC_QUIET_HELP))
    return command


@_exec_options
@_exec_quiet
@cli.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def exec_(bundle_path: str, args: tuple[str, ...], **values: Any) -> int:
    """Verify, install and run BUNDLE as an unprivileged user in a sandbox."""
    from sandrun.cli_exec import cold_exec
    from sandrun.launch.launcher import ExecOptions, decide, plan_to_json, render_plan

    if args[:1] == ("--",):  # `sandrun exec BUNDLE -- ARGS`: the separator is not an arg
        args = args[1:]
    options = ExecOptions(bundle=bundle_path, args=args, **exec_option_fields(values))
    dry_run, as_json, quiet = options.dry_run, values["as_json"], values["quiet"]
    if (as_json or quiet) and not dry_run:
        raise click.UsageError(f"{'--json' if as_json else '-q'} goes with --dry-run (a "
                               "launch prints what the app prints)")
    _one_output(quiet, as_json)
    if not dry_run:
        return cold_exec(options, explain=values.get("explain", False))
    plan = decide(options)
    if as_json:
        _print_json(plan_to_json(plan))
    elif quiet:
        for refusal in plan.refusals:
            click.echo(f"sandrun: error: would refuse: {refusal.diagnostics()}", err=True)
    else:
        click.echo(render_plan(plan))
    return EXIT_REFUSED if plan.refusals else 0


@cli.command()
@click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
              help="Root-owned store (default /var/lib/sandrun).")
@click.option("--yes", is_flag=True, help="Record the approval without asking.")
@click.option("--allow-dangerous", "allow_dangerous", multiple=True, metavar="SYSCALL",
              help="Approve this dangerous syscall by name (repeatable); a blanket approval "
              "never grants one.")
@_report_options
@click.argument("bundle_path", metavar="BUNDLE")
def approve(store: str | None, yes: bool, allow_dangerous: tuple[str, ...], quiet: bool,
            as_json: bool, bundle_path: str) -> int:
    """Show what BUNDLE's embedded profile asks for beyond `default`; record approval.

    -q and --json never ask: give --yes to approve (--json: what was asked for and what
    was recorded)."""
    from sandrun.bundle.archive import parse_archive
    from sandrun.bundle.manifest import PROFILE_NAME
    from sandrun.bundle.verify import verify_archive
    from sandrun.config.profile import load_profile_text
    from sandrun.launch import consent
    from sandrun.launch.safefile import read_bundle
    from sandrun.launch.store import default_store_path

    _one_output(quiet, as_json)
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
    report = {"bundle": bundle_path, "sha256": sha256, "app": app,
              "version": result.manifest.app_version,
              "signature": result.signature_status.describe(),
              "grants": [{"key": g.key, "value": g.value, "danger": g.danger,
                          "approved_before": bool(ceilings) and g not in new}
                         for g in extra],
              "approval_needed": bool(new), "approved": False, "record": None,
              "allow_dangerous": list(allow_dangerous)}
    say = click.echo if not (quiet or as_json) else _ignore
    say(f"{bundle_path}: app {app} {result.manifest.app_version}, "
        f"{result.signature_status.describe()}")
    if not extra:
        say("  the embedded profile grants nothing beyond `default`: no approval needed")
    else:
        say(f"  asks for {len(extra)} grant(s) beyond `default`"
            + (f" ({len(new)} not yet approved)" if ceilings else "") + ":")
        for grant in extra:
            mark = "!" if grant.danger else " "
            state = "" if grant in new or not ceilings else "  (approved before)"
            say(f"  {mark} {grant}{state}")
        if not new:
            say("  everything is already approved")
    if new and not yes:
        if quiet or as_json:
            raise click.UsageError(f"{'-q' if quiet else '--json'} does not ask: pass --yes "
                                   "to approve")
        if not sys.stdin.isatty():
            raise click.UsageError("not a terminal: pass --yes to approve without asking")
        if not click.confirm(f"approve these grants for app {app!r}?", default=False):
            click.echo("not approved", err=True)
            return 1
    if new:
        path = consent.record_approval(store_obj, app, requested, sha256, allow_dangerous)
        report.update(approved=True, record=str(path))
        say(f"approved: {path}")
    if as_json:
        _print_json(report)
    return 0


@cli.group()
def profile() -> None:
    """List, show and check profiles."""


@profile.command(name="list")
@_report_options
def profile_list(quiet: bool, as_json: bool) -> None:
    """Shipped profiles and what they are for."""
    from sandrun.config.profile import shipped_profiles

    _one_output(quiet, as_json)
    items = shipped_profiles()
    if as_json:
        _print_json([{"name": name, "description": text} for name, text in items])
        return
    width = max((len(n) for n, _ in items), default=0)
    for name, description in items:
        if not quiet:
            click.echo(f"{name:<{width}}  {description}")


@profile.command(name="show")
@_report_options
@click.argument("name_or_file", metavar="NAME|FILE")
def profile_show(quiet: bool, as_json: bool, name_or_file: str) -> None:
    """The fully resolved profile, and what this kernel enforces of it."""
    from sandrun.config.profile import load_profile, profile_to_json, render_toml
    from sandrun.sandbox.report import enforcement_summary

    _one_output(quiet, as_json)
    resolved = load_profile(name_or_file)
    if quiet:
        return  # it loaded: the exit code says it is valid
    summary = enforcement_summary(resolved)
    if as_json:
        _print_json({"source": resolved.source, "files": list(resolved.files),
                     "profile": profile_to_json(resolved), "enforcement": summary})
        return
    click.echo(render_toml(resolved).rstrip())
    click.echo("")
    for line in summary:
        click.echo(f"# {line}")


@profile.command(name="check")
@_report_options
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def profile_check(quiet: bool, as_json: bool, files: tuple[str, ...]) -> int:
    """Validate profile files; report every problem (exit 1 if any)."""
    from sandrun.config.profile import check_files

    _one_output(quiet, as_json)
    problems = check_files(list(files))
    if as_json:
        _print_json({"ok": not problems, "files": list(files),
                     "problems": [{"where": p.where, "what": p.what, "hint": p.hint}
                                  for p in problems]})
        return 1 if problems else 0
    for problem in problems:
        click.echo(f"{problem}", err=True)
    if problems:
        click.echo(f"sandrun: {len(problems)} problem(s) in {len(files)} file(s)", err=True)
        return 1
    if not quiet:
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
    """`learn` takes exec's options (same table) but --dry-run, --json, -q and --explain
    (it has -q and --json of its own)."""
    command.params[:0] = [_click_option(option) for option in EXEC_OPTIONS
                          if option.dest not in ("dry_run", "as_json", "quiet", "explain")]
    return command


@_learn_options
@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="PROFILE.toml",
              help="Write the complete learned profile here (for exec -p).")
@click.option("--check", "check_profile", metavar="PROFILE",
              help="Instead of learning: replay under enforcement with PROFILE and fail "
              "if anything is still denied.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stdout (the app's own "
              "stdout goes to stderr; errors and warnings still go to stderr; same exit "
              "code).")
@click.option("--json", "as_json", is_flag=True, help="Print the changes, what was not "
              "granted and the denials as one JSON document on stdout (the app's own stdout "
              "goes to stderr).")
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def learn(bundle_path: str, args: tuple[str, ...], output: str | None,
          check_profile: str | None, quiet: bool, as_json: bool, **values: Any) -> int:
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
    _one_output(quiet, as_json)
    report = click.echo if not (quiet or as_json) else _ignore
    fields = exec_option_fields(values)
    if check_profile:
        fields["profile"] = check_profile
    options = ExecOptions(bundle=bundle_path, args=args, **fields)

    def notice(message: str) -> None:
        click.echo(f"sandrun: {message}", err=True)

    def report_notice(message: str) -> None:  # --check's report (stderr): -q/--json drop it
        report(f"sandrun: {message}", err=True)

    if check_profile:
        with _app_stdout_to_stderr(quiet or as_json):
            result = learning.check(options, notice)
        for error in result.observation.errors:
            notice(f"warning: observer: {error}")
        code = result.observation.exit_code
        denied = learning.still_denied(result)
        if as_json:
            _print_json(learning.result_json(result, learning.CHECK))
        report_notice(f"learn --check: {learning.summary(result)} under {check_profile}")
        for line in denied:
            report_notice(f"  denied: {line}")
        for line in result.learned.unresolved:
            report_notice(f"  denied: {line}")
        for line in result.learned.skipped:
            report_notice(f"  note: {line}")
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
        report_notice("learn --check: OK: the app succeeded and nothing was denied"
                      if not coped else "learn --check: OK: the app succeeded; it coped "
                      f"with {len(coped)} denial(s)")
        return 0

    with _app_stdout_to_stderr(quiet or as_json):
        result = learning.learn(options, output, notice)
    for error in result.observation.errors:
        notice(f"warning: observer: {error}")
    code = result.observation.exit_code
    if as_json:
        _print_json(learning.result_json(result, learning.LEARN, output))
    report(f"learned from: {learning.summary(result)}")
    added = result.learned.changes
    report(f"changes to {result.source}:" if added else
           f"changes to {result.source}: none (it covers this run)")
    for change in added:
        report(f"  {change}")
    skipped = result.learned.not_granted()
    if skipped:
        report("not granted:")
        for line in skipped:
            report(f"  - {line}")
    if output:
        report(f"wrote {output}: the complete profile (sandrun exec -p {output} "
               f"{bundle_path})")
    else:
        report("no profile written (-o PROFILE.toml writes the complete profile)")
    # A server stopped with Ctrl-C or SIGTERM has done what it was meant to.
    if code not in (0, 130, 143):
        notice(f"warning: the app exited with {code}: the profile covers what it did "
               "until then")
        return code
    return 0

