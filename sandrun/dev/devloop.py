"""`sandrun dev`: run a project's source tree under the sandbox it will run in.

The dependencies come from a cached development bundle (bundles.py), the project's
code from its source directory, granted read-only (`--read`, as an operator grant) and
put first on sys.path by the bootstrap; the interpreter runs with -B, so nothing is
compiled into the tree. Everything else is `sandrun exec`: the dedicated user, Landlock,
seccomp, MDWE, namespaces and the app's profile. An edit changes no input of the launch
record, so every run after the first is a warm start; `--watch` re-runs on each change.

The project's `[tool.sandrun] profile` is a request: it is embedded in the bundle, and
the launcher applies its consent rules to it as to any bundle's profile. Only `-p` on
the command line is the operator's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandrun.dev import launching
from sandrun.dev.bundles import DevBundleSpec, check_project_lock, check_stub, ensure_bundle
from sandrun.dev.project import (
    Project,
    app_name,
    check_project_names,
    choose_entry,
    find_project,
    load_project,
    profile_is_file,
    requested_profile,
)
from sandrun.errors import SandrunError

Report = Callable[[str], None]
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a change restarts the app


def _quiet(_: str) -> None:
    pass


@dataclass
class DevRequest:
    """`sandrun dev`'s command line."""

    project: str | None = None
    args: tuple[str, ...] = ()
    exec_fields: dict[str, Any] = field(default_factory=dict)  # launcher.ExecOptions
    script: str | None = None
    entry_point: str | None = None
    name: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    index_url: str | None = None
    rebuild: bool = False
    explain: bool = False


@dataclass
class DevSession:
    """A prepared `sandrun dev`: the project, its bundle and the launch options."""

    project: Project
    app: str
    bundle: Path
    built: bool
    options: Any  # launcher.ExecOptions
    inputs: dict[str, tuple[int, int, int, int] | None]  # metadata files -> identity


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def input_names(project: Project | None) -> tuple[str, ...]:
    """The files (relative to the project) the development bundle is made from."""
    from sandrun.dev.project import LOCK_NAME, PYPROJECT

    names: tuple[str, ...] = (PYPROJECT, LOCK_NAME, "src")
    chosen = project.tool.get("profile") if project is not None else None
    if chosen is not None and profile_is_file(chosen):
        names += (chosen,)
    return names


def metadata_inputs(root: Path, project: Project | None = None
                    ) -> dict[str, tuple[int, int, int, int] | None]:
    """What the development bundle depends on, by identity: a change means the project
    must be read again (and the bundle perhaps rebuilt)."""
    return {name: _identity(root / name) for name in input_names(project)}


def prepare(request: DevRequest, *, progress: Report = _quiet, warn: Report = _quiet
            ) -> DevSession:
    """Read the project, check the app user can read it, build (or reuse) its
    development bundle, and decide the launch options. Nothing is created on the host
    before every check passed, except the bundle cache."""
    from sandrun.launch.launcher import ExecOptions
    from sandrun.launch.warm_exec import default_store_root

    root = find_project(request.project)
    before = metadata_inputs(root)  # taken before reading: a change while read shows
    project = load_project(root)
    inputs = {**metadata_inputs(root, project), **before}
    check_project_names(project)
    check_stub(project)
    if project.lock_data is not None:  # what root would read or fetch for it: checked now
        check_project_lock(project.lock_data, project.name,
                           tuple(os.path.abspath(f) for f in request.find_links),
                           str(project.lock))
    entry = choose_entry(project, request.script, request.entry_point)
    app = app_name(project, entry, request.name)
    fields = dict(request.exec_fields)
    launching.check_tree_access(root, [project.source_dir], fields.get("user"), app)
    store_root = fields.get("store") or default_store_root()
    # The project's profile is embedded in the bundle as a request (consent applies);
    # fields["profile"] stays the operator's -p.
    spec = DevBundleSpec(project=project, entry=entry, app=app, kind="dev",
                         find_links=request.find_links, no_index=request.no_index,
                         index_url=request.index_url, project_lock=project.lock_data,
                         profile=requested_profile(project))
    bundle, built = ensure_bundle(spec, store_root, rebuild=request.rebuild,
                                  progress=progress, warn=warn)
    fields["read"] = (str(root), *fields.get("read", ()))
    fields["workdir"] = fields.get("workdir") or str(root)
    options = ExecOptions(bundle=str(bundle), args=tuple(request.args), **fields)
    return DevSession(project, app, bundle, built, options, inputs)


# ---------------------------------------------------------------- --watch


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def watch(request: DevRequest, *, progress: Report = _quiet, warn: Report = _quiet,
          notice: Report = _quiet, status: Report = _quiet) -> int:
    """Run, then re-run on every change of the project tree, until SIGINT/SIGTERM
    (exit 130/143). A run still going when a change arrives is stopped (SIGTERM, then
    SIGKILL after STOP_GRACE s) and started again. A change of the dependency metadata
    (pyproject.toml, pylock.toml) re-reads the project and rebuilds the bundle if its
    inputs changed; a broken pyproject.toml is reported and waited out."""
    from sandrun.dev.watch import Watcher

    first = prepare(request, progress=progress, warn=warn)
    root = first.project.root
    session: DevSession | None = first
    watcher = Watcher(root)
    if watcher.note:
        warn(watcher.note)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)
        with contextlib.suppress(OSError):
            os.write(wake_w, b"x")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    child: _Run | None = None
    try:
        reason = "start"
        while True:
            if session is not None:
                child = _Run(session.options, request.explain, notice)
                child.start()
                status(f"run ({reason})")
            while True:
                if stop:
                    raise _Stop(stop[0])
                if child is not None and child.poll():
                    status(child.summary())
                    status(f"watching {root} for changes (Ctrl-C to stop)")
                    child = None
                # The child's pidfd wakes the wait when the run ends (else: poll).
                waits = (wake_r,) if child is None or child.pidfd < 0 else (wake_r, child.pidfd)
                timeout = None if child is None or child.pidfd >= 0 else 0.05
                changed = watcher.wait(timeout, waits)
                if changed:
                    break
                with contextlib.suppress(OSError):
                    os.read(wake_r, 64)
            if child is not None:
                child.stop()
                status(child.summary() + " (stopped: the tree changed)")
                child = None
            reason = _shown(changed, root)
            session = _refresh(session, replace(request, project=str(root)), progress, warn)
            if session is None:
                status(f"watching {root} for changes (Ctrl-C to stop)")
    except _Stop as exc:
        if child is not None:
            child.stop()
        return 128 + exc.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        watcher.close()
        os.close(wake_r)
        os.close(wake_w)


def _shown(changed: list[str], root: Path) -> str:
    names = [os.path.relpath(p, root) for p in changed]
    return "changed: " + ", ".join(names[:3]) + (f" and {len(names) - 3} more"
                                                 if len(names) > 3 else "")


def _refresh(session: DevSession | None, request: DevRequest, progress: Report,
             warn: Report) -> DevSession | None:
    """The session to run after a change: the same unless the project's metadata
    changed; None (wait for the next change) when it cannot be prepared now."""
    if session is not None and metadata_inputs(session.project.root,
                                               session.project) == session.inputs:
        return session
    try:
        return prepare(request, progress=progress, warn=warn)
    except SandrunError as exc:
        warn(f"{exc.diagnostics()}\n(waiting for the next change)")
        return None


class _Run:
    """One run in a child process, so that a change can stop it: the child launches
    (warm or cold) and exits with the app's code."""

    def __init__(self, options: Any, explain: bool, notice: Report) -> None:
        self.options = options
        self.explain = explain
        self.notice = notice
        self.pid = 0
        self.pidfd = -1
        self.code: int | None = None
        self.started = 0.0
        self.ended = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self.pid = pid
            with contextlib.suppress(OSError, AttributeError):
                self.pidfd = os.pidfd_open(pid)
            return
        code = 125
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            outcome = launching.launch(self.options, explain=self.explain,
                                       notice=self.notice)
            for line in launching.for_command(outcome.explanation, "dev"):
                sys.stderr.write(f"sandrun: {line}\n")
            code = outcome.code
        except SandrunError as exc:
            sys.stderr.write(f"sandrun: error: {exc.diagnostics()}\n")
            code = exc.exit_code
        except BaseException as exc:  # the parent goes on watching
            sys.stderr.write(f"sandrun: internal error: {type(exc).__name__}: {exc}\n")
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def poll(self) -> bool:
        if self.code is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._done(status)
        return True

    def _done(self, status: int) -> None:
        self.ended = time.monotonic()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        code = os.waitstatus_to_exitcode(status)
        self.code = 128 - code if code < 0 else code

    def stop(self) -> None:
        """SIGTERM (forwarded to the app by the launcher), SIGKILL after STOP_GRACE s
        (the sandbox dies with its launcher)."""
        if self.code is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if self.poll():
                return
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _pid, status = os.waitpid(self.pid, 0)
        self._done(status)

    def summary(self) -> str:
        ms = (self.ended - self.started) * 1000
        return f"exit {self.code} in {ms:.0f} ms"
