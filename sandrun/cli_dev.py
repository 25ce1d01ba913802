"""`sandrun dev`, `sandrun test`: the developer's loop under the production sandbox."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sandrun.cli_common import progress_printer, warn
from sandrun.launch.options import EXEC_OPTIONS, VERBOSE, Option, exec_option_fields

_F = TypeVar("_F", bound=Callable[..., Any])
DASHES_KEY = "sandrun.after_dashes"
WORDS_KEY = "sandrun.before_dashes"


class _SplitAtDashes(click.Command):
    """Options anywhere before `--` are sandrun's; every word after `--` is passed on
    untouched (click would drop the `--` and take what follows for positionals)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta[DASHES_KEY] = tuple(args[at + 1:])
            args = args[:at]
        else:
            ctx.meta[DASHES_KEY] = ()
        ctx.meta[WORDS_KEY] = tuple(args)
        return super().parse_args(ctx, args)


def _click_option(option: Option) -> click.Option:
    if option.flag:
        return click.Option([*option.names, option.dest], is_flag=True, help=option.help)
    if option.multiple:
        return click.Option([*option.names, option.dest], metavar=option.metavar,
                            help=option.help, multiple=True)
    return click.Option([*option.names, option.dest], metavar=option.metavar,
                        help=option.help, envvar=option.envvar, default=option.default,
                        show_default=option.default is not None,
                        type=click.Choice(option.choices) if option.choices else None)


# `dev` takes exec's options (the same table) but those that mean nothing there.
_DEV_SKIPPED: tuple[str, ...] = ()
_TEST_SKIPPED = ("as_json", "dry_run", "explain", "workdir", "quiet")  # test has its own -q


def _exec_options(skipped: tuple[str, ...]) -> Callable[[click.Command], click.Command]:
    def add(command: click.Command) -> click.Command:
        command.params[:0] = [_click_option(o) for o in EXEC_OPTIONS
                              if o is not VERBOSE and o.dest not in skipped]
        return command
    return add


def _index_options(function: _F) -> _F:
    for decorator in reversed((
            click.option("--find-links", multiple=True, metavar="DIR",
                         help="Extra wheel locations for the dependencies (repeatable)."),
            click.option("--no-index", is_flag=True, help="Do not use the package index."),
            click.option("--index-url", metavar="URL", help="Package index to use."),
            click.option("--rebuild", is_flag=True, help="Rebuild the dependencies bundle "
                         "even if its inputs did not change."))):
        function = decorator(function)
    return function


def _notice(message: str) -> None:
    click.echo(f"sandrun: {message}", err=True)


def _positionals(ctx: click.Context, words: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """PROJECT (the first word before `--`, if any) and the arguments: the other words
    before `--`, then every word after it."""
    after: tuple[str, ...] = ctx.meta.get(DASHES_KEY, ())
    if not words:
        return None, after
    return words[0], (*words[1:], *after)


@_exec_options(_DEV_SKIPPED)
@click.command(cls=_SplitAtDashes)
@click.option("--watch", is_flag=True, help="Run again on every change of the project "
              "tree (inotify on your side, not in the sandbox); a running app is stopped "
              "first. Ctrl-C ends it.")
@click.option("--script", metavar="NAME", help="Which of [project.scripts] to run.")
@click.option("--entry-point", metavar="MOD:FUNC", help="Run this function instead of a "
              "script.")
@click.option("--name", metavar="NAME", help="App name (user sandrun-NAME, state dir; "
              "default: [tool.sandrun] name, the script's name or the project's).")
@_index_options
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[PROJECT] [ARGS]...")
@click.pass_context
def dev(ctx: click.Context, /, words: tuple[str, ...], watch: bool, script: str | None,
        entry_point: str | None, name: str | None, find_links: tuple[str, ...],
        no_index: bool, index_url: str | None, rebuild: bool, **values: Any) -> int:
    """Run a project's source tree under its production sandbox.

    PROJECT (default: the current directory) is read statically: pyproject.toml gives
    the name, dependencies and scripts; its dependencies come from a cached bundle
    (rebuilt when they change), its code from the source directory (src/ or the
    project), granted read-only to the app and put first on sys.path. Arguments for the
    app follow PROJECT or `--` (`sandrun dev -- ARGS` for the current directory)."""
    from sandrun.dev import quick  # cheap: the rest only when the quick path declines

    plain = not (watch or rebuild or values["dry_run"] or values["explain"]
                 or values.get("quiet") or values["as_json"])
    if plain:  # the launch decided last time, if nothing it was decided from changed
        code = quick.try_quick_dev([*ctx.meta[WORDS_KEY], "--", *ctx.meta[DASHES_KEY]])
        if code is not None:
            return code
    from sandrun.dev import devloop, launching

    project, args = _positionals(ctx, words)
    dry_run, as_json, explain = values.pop("dry_run"), values.pop("as_json"), \
        values.pop("explain")
    quiet = values.pop("quiet", False)
    if (as_json or quiet) and not dry_run:
        raise click.UsageError("--json and -q go with --dry-run (a run prints what the app "
                               "prints)")
    if as_json and quiet:
        raise click.UsageError("-q prints nothing and --json prints JSON: choose one")
    if watch and (dry_run or explain):
        raise click.UsageError("--watch runs the app: not with --dry-run or --explain")
    fields = exec_option_fields({**values, "dry_run": dry_run})
    request = devloop.DevRequest(
        project=project, args=args, exec_fields=fields, script=script,
        entry_point=entry_point, name=name, find_links=find_links, no_index=no_index,
        index_url=index_url, rebuild=rebuild, explain=explain)
    progress = progress_printer()
    if dry_run:
        from sandrun.launch.launcher import decide, plan_to_json, render_plan

        session = devloop.prepare(request, progress=progress, warn=warn)
        plan = decide(session.options)
        plan.notes.append(f"dev source   {session.project.source_dir} first on sys.path "
                          "(granted read-only with the project; -B: nothing compiled there)")
        if not quiet:
            click.echo(json.dumps(plan_to_json(plan), indent=2, sort_keys=True) if as_json
                       else render_plan(plan))
        return 125 if plan.refusals else 0
    if watch:
        return devloop.watch(request, progress=progress, warn=warn, notice=_notice,
                             status=lambda msg: _notice(f"dev: {msg}"))
    session = devloop.prepare(request, progress=progress, warn=warn)
    if plain:
        from sandrun.launch.warm_exec import ExecArgs, default_store_root

        quick.save(ctx.meta[WORDS_KEY], str(session.project.root),
                   ExecArgs.for_options(session.options), tuple(words[1:]),
                   session.options.store or default_store_root(),
                   devloop.input_names(session.project))
    outcome = launching.launch(session.options, explain=explain, notice=_notice)
    for line in launching.for_command(outcome.explanation, "dev"):
        _notice(line)
    return outcome.code


@_exec_options(_TEST_SKIPPED)
@click.command(cls=_SplitAtDashes)
@click.option("--project", "project_dir", metavar="DIR", help="With a BUNDLE: the directory "
              "of the tests and their configuration (default: the current directory).")
@click.option("--matrix", metavar="STRATEGY,...", help="Resolve the project's constraints "
              "with each strategy (highest, lowest-direct, lowest) and run the suite in "
              "each cell, in parallel.")
@click.option("--exclude-newer", metavar="DATE", help="With --matrix: only versions "
              "uploaded before DATE (RFC 3339 timestamp or YYYY-MM-DD).")
@click.option("--results", metavar="DIR", help="Where junit.xml, summary.json and the "
              "output go (default: a new directory under $TMPDIR, printed).")
@click.option("--explain/--no-explain", default=None, help="Record what the sandbox denies "
              "during the run and explain a failure with it (default: on as root; it "
              "enables kernel audit while the tests run).")
@_index_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stdout (pytest's "
              "output goes to the results directory; same exit code).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON "
              "document on stdout (pytest's output goes to the results directory).")
@click.argument("words", nargs=-1, type=click.UNPROCESSED,
                metavar="[PROJECT|BUNDLE] [PYTEST ARGS]...")
@click.pass_context
def test(ctx: click.Context, /, words: tuple[str, ...], project_dir: str | None,
         matrix: str | None, exclude_newer: str | None, results: str | None,
         explain: bool | None, find_links: tuple[str, ...], no_index: bool,
         index_url: str | None, rebuild: bool, quiet: bool, as_json: bool,
         **values: Any) -> int:
    """Run a project's pytest suite inside its production sandbox.

    The test dependencies are [dependency-groups] test (PEP 735) or the `test` extra;
    the tests and their configuration are granted read-only, pytest reads no
    configuration outside the project and writes no cache. The exit code is pytest's.
    With --matrix, each resolution strategy is one cell: resolved with uv into a
    pylock.toml, bundled wheels-only, run in parallel; a table compares them."""
    from sandrun.dev import testing

    if quiet and as_json:
        raise click.UsageError("-q prints nothing and --json prints JSON: choose one")
    target, pytest_args = _positionals(ctx, words)
    if exclude_newer and not matrix:
        raise click.UsageError("--exclude-newer applies to the --matrix resolutions")
    fields = exec_option_fields(values)
    request = testing.TestRequest(
        target=target, project_dir=project_dir, pytest_args=pytest_args,
        exec_fields=fields, find_links=find_links, no_index=no_index, index_url=index_url,
        rebuild=rebuild, results=results,
        explain=os.geteuid() == 0 if explain is None else explain,
        capture=quiet or as_json)
    progress = progress_printer()
    if matrix:
        from sandrun.dev import matrix as matrices

        strategies = matrices.parse_strategies(matrix)
        outcome = matrices.run_matrix(request, strategies, exclude_newer=exclude_newer,
                                      progress=progress, warn=warn, notice=_notice)
        if as_json:
            click.echo(json.dumps(outcome.to_json(), indent=2, sort_keys=True))
        elif not quiet:
            click.echo(matrices.render_table(outcome))
        _notice(f"test: matrix results in {outcome.results_dir}")
        return outcome.exit_code
    result = testing.run_tests(request, progress=progress, warn=warn, notice=_notice)
    for line in result.explanation:
        _notice(line)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    _notice(f"test: {result.summary()}")
    return result.exit_code
