"""One launch of a development bundle, exactly as `sandrun exec` launches a bundle.

The warm path first (warm_exec: the launch record the last cold launch left, checked
by stat), else the cold one (decide, materialise, save the record, launch), with the
denial explanation of launch/explain.py after a failed run. Nothing here weakens the
sandbox: the source tree is one more read grant, as `sandrun exec --read` gives it.
"""

from __future__ import annotations

import os
import pwd
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandrun.errors import ConsentError, EnforcementError
from sandrun.launch.explain import may_access

if TYPE_CHECKING:
    from sandrun.launch.launcher import ExecOptions, LaunchPlan

Notice = Callable[[str], None]
# Where the app cannot be given the source tree: searching the tree (read) must be
# possible for the app user through every directory above it.
MAX_CHECKED_FILES = 20_000
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox",
                          ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                          "node_modules", "build", "dist", ".sandrun"})


def _quiet(_: str) -> None:
    pass


def for_command(lines: list[str], command: str) -> list[str]:
    """The explanation's advice names `sandrun exec`; say the command that was run."""
    return [line.replace("`sandrun exec --explain`", f"`sandrun {command} --explain`")
            for line in lines]


@dataclass
class Outcome:
    """How one launch ended."""

    code: int
    warm: bool  # launched from the warm record
    seconds: float
    explanation: list[str] = field(default_factory=list)  # lines, without "sandrun: "
    plan: LaunchPlan | None = None  # the cold path's plan


def warm_possible(options: ExecOptions) -> bool:
    """Whether the warm path could serve these options (it declines the rest)."""
    return not (options.dry_run or options.verify_full or options.audit_db or options.adopt)


def launch(options: ExecOptions, *, explain: bool = False, notice: Notice = _quiet,
           try_warm: bool = True, command: str = "dev") -> Outcome:
    """Launch the bundle of `options`: warm when a valid record exists, else cold (which
    leaves the record for the next launch). Refusals raise (SandrunError); a refused
    profile's hint names `sandrun COMMAND -p` for the operator's own profile."""
    started = time.monotonic()
    if try_warm and not explain and warm_possible(options):
        from sandrun.launch.warm_exec import ExecArgs, try_warm_exec

        code = try_warm_exec(ExecArgs.for_options(options), explain_failure=False)
        if code is not None:
            return Outcome(code, True, time.monotonic() - started)
    from sandrun.launch import runner
    from sandrun.launch.launcher import decide, materialise, run_spec, save_record

    plan = decide(options)
    try:
        plan.raise_for_refusals()
    except ConsentError as exc:
        exc.hint = consent_hint(exc.hint, command)
        raise
    materialise(plan, options)
    for line in plan.notices:
        notice(line)
    spec = run_spec(plan)
    save_record(options, plan, spec)
    session = None
    if explain:
        from sandrun.launch.explain import ExplainSession

        session = ExplainSession()
        session.start()
    began = time.monotonic()
    try:
        code = runner.launch(spec, plan.args)
    finally:
        if session is not None:
            session.stop()
    outcome = Outcome(code, False, time.monotonic() - started, plan=plan)
    # 130/143: ended by the SIGINT/SIGTERM sandrun forwarded (stopped on purpose).
    if (code != 0 and code not in (130, 143)) or session is not None:
        from sandrun.launch.explain import explanation

        outcome.explanation = explanation(plan, code, session, began)
    return outcome


def consent_hint(hint: str, command: str) -> str:
    """The launcher's consent hint for a project: the profile is the project's request
    ([tool.sandrun] profile), the operator's own is `sandrun COMMAND -p PROFILE`."""
    import re

    hint = re.sub(r"`sandrun exec -p PROFILE[^`]*`", f"`sandrun {command} -p PROFILE`", hint)
    return ("the profile is the project's request ([tool.sandrun] profile), embedded in "
            f"its {command} bundle: {hint}")


# ---------------------------------------------------------------- the source tree


def app_user_ids(user: str | None, app: str) -> tuple[str, int | None, list[int]]:
    """The name, uid and groups of the user the app will run as when sandrun is root
    (uid None: not created yet, so only the "other" permission bits will apply)."""
    name = user or f"sandrun-{app}"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return name, None, []
    try:
        gids = os.getgrouplist(name, entry.pw_gid)
    except OSError:
        gids = [entry.pw_gid]
    return name, entry.pw_uid, gids


def check_tree_access(root: Path, dirs: list[Path], user: str | None, app: str) -> None:
    """Refuse (EnforcementError, before anything is created) a project the app user
    could not read: every directory above `root` must be searchable by it, `root` and
    `dirs` readable, and the Python files under them readable. Not root: the app runs
    as the invoking user, nothing to check."""
    if os.geteuid() != 0:
        return
    from sandrun.launch.explain import permission_problem

    name, uid, gids = app_user_ids(user, app)
    fix = ("move the project under a directory every user may enter (e.g. /srv or /tmp; "
           "/root and most home directories are 0700), or give others search access "
           "(chmod o+x on each directory above it), or run sandrun dev as the developer "
           "(not root: the app then runs as you, under Landlock and seccomp)")
    for path in (root, *dirs):
        problem = permission_problem(name, uid, gids, str(path), "read")
        if problem:
            raise EnforcementError(f"the app user cannot read the project: {problem}", fix)
    unreadable: list[str] = []
    checked = 0
    from sandrun.dev.project_files import open_beneath, project_dir

    # The developer's tree: walked from the project's fd, never through a link.
    with project_dir(root) as root_fd:
        for top in dict.fromkeys(dirs or [root]):
            top_fd = open_beneath(root_fd, os.path.relpath(top, root), str(top))
            if top_fd is None:
                continue
            try:
                for current, subdirs, files, dir_fd in os.fwalk(
                        ".", dir_fd=top_fd, follow_symlinks=False):
                    subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS
                                        and not d.endswith(".egg-info"))
                    here = Path(os.path.normpath(os.path.join(top, current)))
                    for entry in [*subdirs,
                                  *(f for f in sorted(files) if f.endswith(".py"))]:
                        checked += 1
                        if checked > MAX_CHECKED_FILES:
                            break
                        try:
                            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                        except OSError:
                            continue
                        need = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
                        if not stat.S_ISLNK(st.st_mode) and not may_access(st, uid, gids, need):
                            unreadable.append(str(here / entry))
            finally:
                os.close(top_fd)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more"
                                             if len(unreadable) > 5 else "")
        raise EnforcementError(f"the app user {name} cannot read {shown}",
                               f"let others read the source: chmod -R o+rX {root}")


def source_problem(root: Path) -> str | None:
    """Why `root` cannot be granted to the app at all, or None."""
    if str(root) == "/":
        return "the project is the root directory"
    return None
