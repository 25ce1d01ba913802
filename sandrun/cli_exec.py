"""`sandrun exec`'s cold launch, without click.

Both the click command (cli.exec_) and the entry point's route for `exec` words the warm
path parses but could not serve (__main__) run it: click and the CLI's other modules
cost ~50 ms of every cold start, which is a third of a small app's first launch.
Messages and exit codes are the click command's.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandrun.launch.explain import ExplainSession
    from sandrun.launch.launcher import ExecOptions, LaunchPlan
    from sandrun.launch.prefetch import PrefetchedBundle
    from sandrun.launch.warm_exec import ExecArgs


def options_of(parsed: ExecArgs) -> ExecOptions:
    """The ExecOptions click would build from the same words (parse_exec_args parsed
    them by the same table): --store falls back to $SANDRUN_STORE as click's envvar
    does (an empty value counts as unset)."""
    from sandrun.launch.launcher import ExecOptions
    from sandrun.launch.options import EXEC_OPTIONS, exec_option_fields

    values = {option.dest: getattr(parsed, option.dest) for option in EXEC_OPTIONS
              if option.field is not None and option.warm is not False}
    if not values.get("store"):
        values["store"] = os.environ.get("SANDRUN_STORE") or None
    return ExecOptions(bundle=parsed.bundle, args=tuple(parsed.args),
                       **exec_option_fields(values))


def say(line: str) -> None:
    """One `sandrun: ...` line on stderr."""
    sys.stderr.write(f"sandrun: {line}\n")
    sys.stderr.flush()


def progress(line: str) -> None:
    """cli_common.progress_printer(ellipsis=False), without click."""
    say(line)


def cold_exec(options: ExecOptions, *, explain: bool = False,
              prefetched: PrefetchedBundle | None = None) -> int:
    """Decide, refuse or install, and launch; the app's exit code (the launch may
    replace this process: the native front or supervisor then exits with it).
    `prefetched`: the bundle as launch.prefetch read it (decide() adopts it)."""
    import time

    from sandrun.launch import runner
    from sandrun.launch.launcher import (
        compile_after_launch,
        decide,
        materialise,
        run_spec,
        save_record,
    )

    plan = decide(options, prefetched)
    plan.raise_for_refusals()
    materialise(plan, options, progress=progress if sys.stderr.isatty() else None,
                defer_bytecode=True)
    for notice in plan.notices:
        say(notice)
    spec = run_spec(plan)
    front_record = save_record(options, plan, spec)
    compile_after_launch(plan, spec)  # the bytecode the install left for after the launch
    if not explain and front_record is not None:
        hand_to_front(front_record)  # returns only when the front cannot take it
    session: ExplainSession | None = None
    if explain:  # record the run's denials (cold path only)
        from sandrun.launch.explain import ExplainSession

        session = ExplainSession()
        session.start()
    started = time.monotonic()
    try:
        # Without --explain nothing is left to do after the app: the native supervisor
        # replaces this process (no Python stays resident as root) and says how a
        # failed run ended. --explain keeps it: the capture must be stopped.
        code = runner.launch(spec, plan.args, handoff=session is None)
    finally:
        if session is not None:
            session.stop()  # restores the audit setting, also when the launch failed
    report_ending(plan, code, session, started)
    return code


def report_ending(plan: LaunchPlan, code: int, session: ExplainSession | None,
                  started: float) -> None:
    """Here without the native supervisor, or with --explain. 130/143: the app ended by
    the SIGINT/SIGTERM sandrun forwarded to it (a service being stopped), not by a
    failure worth explaining."""
    if (code != 0 and code not in (130, 143)) or session is not None:
        from sandrun.launch.explain import explanation

        for line in explanation(plan, code, session, started):
            say(line)


def hand_to_front(record: str) -> None:
    """Exec the native front on this very command line: it finds the record just written
    for these words and launches as it does every warm start (the same checks, order,
    messages and supervisor as runner.launch with the hand-off), without this
    interpreter's ~40 ms of launching. Not when the front fell back after such a hand-off
    (it left COLD_ENV set: it would again), not for `python -m sandrun` (the front next
    to the interpreter may be another installation's), nor when it is not the trusted
    C program. The front launches only from the record named in COLD_ENV."""
    from sandrun.launch import native_record, warm_exec

    if warm_exec.INVOKED is None or native_record.COLD_ENV in os.environ or \
            not native_record.started_as_entry_script():
        return
    front = native_record.trusted_front()
    if front is None:
        return
    argv = ["sandrun", "exec", *warm_exec.INVOKED]
    sys.stdout.flush()
    sys.stderr.flush()
    # What a shell gives the front: Python ignores SIGPIPE and SIGXFSZ (the launch resets
    # them for the app anyway, as it does every signal it forwards).
    import signal

    saved = [(sig, signal.signal(sig, signal.SIG_DFL))
             for sig in (signal.SIGPIPE, signal.SIGXFSZ)]
    env = dict(os.environ)
    env[native_record.COLD_ENV] = record  # the front says "cold start", not "warm"
    try:
        os.execve(front, argv, env)  # by fd: the very file just checked
    except OSError:
        for sig, handler in saved:
            signal.signal(sig, handler)
        os.close(front)

