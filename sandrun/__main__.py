"""The `sandrun` command (setup.py's entry script and `python -m sandrun`).

The installed `sandrun` is the native front (native/front.c) when a C compiler was there
at install; it execs this through `sandrun-py` (the entry script) for everything it
does not serve itself, with its own argv. The program is `sandrun` either way (cli.main
names it so for click, whatever argv[0] is).

`sandrun exec` first tries the warm path (warm_exec), which imports neither click nor
the cold launch path; when it declines words it parsed, the cold launch runs without
click too (cli_exec). A plain `sandrun dev` first tries its quick path (dev.quick: the
warm launch its last run recorded). Everything else (an unknown option, --dry-run,
--explain, ... : the click command parses and reports them) goes to the click CLI.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from collections.abc import Callable

    from sandrun.launch.warm_exec import ExecArgs


def main(argv: list[str] | None = None, *, site_pending: bool = False) -> None:
    """Run the command `argv` (default: sys.argv[1:]).

    `site_pending`: the interpreter started without site (the entry script setup.py
    writes: `python -I -S`, with only site's path entries added). Everything but a warm
    launch then runs site.main() first (.pth import lines, sitecustomize: what the CLI's
    dependencies may rely on), and the install check again for what that added.
    """
    args = sys.argv[1:] if argv is None else argv
    _check_install(args)
    parsed = None
    if args[:1] == ["exec"]:
        from sandrun.launch import warm_exec

        warm_exec.INVOKED = args[1:]  # the native front's record names these words
        warm_exec.FRONT_FELL_BACK = argv is None and \
            sys.argv[0].rsplit("/", 1)[-1] == "sandrun-py"
        parsed = warm_exec.parse_exec_args(args[1:])
    elif args[:1] == ["dev"]:
        parsed = _quick_dev_args(args[1:])
    if parsed is not None:
        code = _warm_exec(parsed)
        if code is not None:
            sys.exit(code)
    if site_pending:
        import site

        site.main()
        _check_install(args)
    if parsed is not None and args[:1] == ["exec"]:
        sys.exit(_cold_exec(parsed))  # the exec words parsed: no need for click
    from sandrun.cli import main as cli_main

    cli_main(args)


def _quick_dev_args(argv: list[str]) -> ExecArgs | None:
    """The warm launch a plain `sandrun dev ARGV` recorded last time, if nothing it was
    decided from changed (dev.quick; the dev command itself checks the same first)."""
    from sandrun.dev.quick import load, split_words

    try:
        parsed: ExecArgs | None = load(argv)
    except Exception:  # a record it cannot use: the dev command loads it again, reports
        return None
    if parsed is not None:
        words = split_words(argv)[0]
        parsed.verbose = "-v" in words or "--verbose" in words
    return parsed


def _check_install(args: list[str]) -> None:
    """As root, refuse an installation others can change (sandrun.launch.selfcheck)."""
    from sandrun.errors import SandrunError
    from sandrun.launch.selfcheck import check_install

    try:
        check_install()
    except SandrunError as exc:
        if "-v" in args or "--verbose" in args:
            _print_traceback(exc)
        sys.stderr.write(f"sandrun: error: {exc.diagnostics()}\n")
        sys.exit(exc.exit_code)


def _warm_exec(parsed: ExecArgs) -> int | None:
    """The warm launch's exit code, None to take the cold path."""
    from sandrun.launch.warm_exec import try_warm_exec

    return _reporting_errors(parsed, lambda: try_warm_exec(parsed))


def _cold_exec(parsed: ExecArgs) -> int:
    """The cold launch of exec words the warm path parsed but could not serve
    (cli_exec.cold_exec, without click's ~50 ms)."""
    from sandrun.launch.prefetch import prefetch_bundle

    # Before the imports below (~80 ms): the bundle is hashed on another CPU meanwhile.
    prefetched = prefetch_bundle(parsed.bundle)
    try:
        from sandrun.cli_exec import cold_exec, options_of

        code = _reporting_errors(parsed, lambda: cold_exec(options_of(parsed),
                                                           prefetched=prefetched),
                                 as_click=True)
    finally:
        if prefetched is not None:
            prefetched.cancel()
    assert code is not None
    return code


def _reporting_errors(parsed: ExecArgs, launch: Callable[[], int | None], *,
                      as_click: bool = False) -> int | None:
    """launch(), its errors reported as the click CLI reports them (cli.main).
    `as_click`: also Ctrl-C, EOF and a closed stdout as the click command would see
    them (click: "Aborted", exit 130; EPIPE: exit 1)."""
    from sandrun.errors import EXIT_REFUSED, SandrunError

    try:
        return launch()
    except SandrunError as exc:
        if parsed.verbose:
            _print_traceback(exc)
        sys.stderr.write(f"sandrun: error: {exc.diagnostics()}\n")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, EOFError):
        if as_click:
            sys.stderr.write("\nsandrun: aborted\n")
        sys.exit(130)
    except Exception as exc:  # a sandrun bug, not a user mistake: still no raw traceback
        if as_click and isinstance(exc, BrokenPipeError):
            sys.exit(1)
        if parsed.verbose:
            _print_traceback(exc)
        sys.stderr.write(f"sandrun: internal error: {type(exc).__name__}: {exc}\n"
                         "  hint: run again with --verbose for the traceback and report it\n")
        sys.exit(EXIT_REFUSED)


def _print_traceback(exc: BaseException) -> None:
    import traceback  # only on an error: the warm path does not pay for it

    traceback.print_exception(exc)


if __name__ == "__main__":
    main()
