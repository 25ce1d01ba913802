"""The launch itself: private namespaces, the protections in DESIGN.md's fixed order,
then execve of the app — all from a `RunSpec` of plain data.

Both exec paths end here: the cold path (`launcher.prepare` builds the spec) and the
warm path (`warm_exec` loads a cached spec). So this module imports only what loads
in microseconds (os, _signal, errno, stat; resource in the child): every warm start pays
for it. The kernel numbers and calls (through _ctypes, not the ctypes package) come
from `sandbox/kernel.py`, which is as cheap;
`sandbox/landlock.py` and `sandbox/seccomp.py` build what they apply. Observe mode
(`sandrun learn`, never the warm path) also imports socket and `sandbox/notify.py`,
when it is asked for.

What stays resident while the app runs is the native supervisor (native/supervise.c,
built at install time): the namespace's init execs it once it forked the app, and
the launcher too when its caller has nothing left to do (`launch(handoff=True)`: the
warm path, and the cold one without --explain). It does what `_supervise`,
`_read_report` and `Cgroup.remove` do here, which remain the fallback when the binary
is missing (`supervisor_status`), and says how a failed run ended (explain.py's texts).
"""

from __future__ import annotations

import _signal
import errno
import os
import stat
import sys

from sandrun.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EnforcementError,
    SandrunError,
)
from sandrun.launch import safefile
from sandrun.sandbox.kernel import (
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    CLONE_NEWIPC,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_STRING,
    FSMOUNT_CLOEXEC,
    FSOPEN_CLOEXEC,
    MOVE_MOUNT_F_EMPTY_PATH,
    MOVE_MOUNT_T_EMPTY_PATH,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    NO_EXEC_SUID_DEV,
    OPEN_TREE_CLONE,
    PATH_FLAGS,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_MDWE_REFUSE_EXEC_GAIN,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_MDWE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    SYS_FSCONFIG,
    SYS_FSMOUNT,
    SYS_FSOPEN,
    SYS_MOUNT_SETATTR,
    SYS_MOVE_MOUNT,
    SYS_OPEN_TREE,
    MountAttr,
    addressof,
    build_ruleset,
    errno_text,
    last_errno,
    libc,
    load_seccomp_filter,
    open_trusted_path,
    prctl,
    restrict_self,
    sizeof,
    string_buffer,
    syscall,
)

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from typing import Any

# Replaced by a fresh tmpfs in every privileged launch (systemd's PrivateTmp).
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # POSIX shm and semaphores too
# Also private (an empty tmpfs of the app's): the host's sockets there (D-Bus,
# journald, databases) are out of reach even where a profile allows AF_UNIX; what a
# profile grants beneath it is mounted through, as beneath /tmp. No Landlock rule of
# its own: only what is granted there can be used.
PRIVATE_RUN = "/run"
PRIVATE_MOUNTS = (*PRIVATE_TMP_DIRS, PRIVATE_RUN)
DEFAULT_TMP_SIZE = "25%"  # of RAM, per tmpfs; pages are charged to the app's memory cgroup

# Signals an operator sends to a service; forwarded when sent by a process (not the tty,
# whose signals reach the app directly through the foreground process group).
FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT,
                     _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH, _signal.SIGALRM,
                     _signal.SIGCONT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU)

# ---------------------------------------------------------------- the spec


class RunSpec:
    """Everything the launch needs, as plain data (so it can be cached with marshal).

    `landlock` is a ruleset spec from `landlock.ruleset_spec` (or None when Landlock is
    absent and the profile accepted that); `seccomp_bpf` a filter from
    `seccomp.compile_filter`. `env` is the fixed part of the environment; the values of
    `env_pass` are taken from sandrun's own environment at each launch, then `env_set`
    applies. Privileged launches only: `writable` (absolute paths the app may write:
    the state dir and every read_write grant) are bind-mounted noexec,nosuid,nodev;
    /tmp and /var/tmp are fresh tmpfs of `tmp_size` bytes each (0: 25% of RAM);
    `hostname` is the UTS namespace's. `limits` go to `cgroup.create` ({}: no cgroup).

    `notify_bpf` (observe mode, `sandrun learn`; never in a warm record): the app loads
    this filter (`notify.observe_filter`) instead of `seccomp_bpf` and hands its
    notification listener to the launcher, whose `observer` answers every notification.
    `app_name` names the launch's resident processes (`sandrun: <app>`).
    `failure_notes`: the lines said after the exit line of a failed run
    (explain.failure_notes), by the native supervisor when the launch hands off.
    """

    __slots__ = ("app_name", "argv", "cwd", "env", "env_pass", "env_set", "failure_notes",
                 "gid", "hostname", "interpreter", "landlock", "limits", "mdwe",
                 "notify_bpf", "privileged", "rlimits", "seccomp_bpf", "state_dir",
                 "tmp_size", "uid", "user_name", "writable")

    def __init__(self, *, privileged: bool, uid: int, gid: int, user_name: str,
                 interpreter: str, argv: list[str], env: dict[str, str],
                 env_pass: list[str], env_set: dict[str, str], cwd: str, state_dir: str,
                 rlimits: list[tuple[str, int | None]], mdwe: bool,
                 landlock: dict[str, Any] | None, seccomp_bpf: bytes,
                 writable: list[str] | None = None, hostname: str = "sandrun",
                 tmp_size: int = 0, limits: dict[str, Any] | None = None,
                 notify_bpf: bytes = b"", app_name: str = "",
                 failure_notes: list[str] | None = None) -> None:
        self.privileged = privileged
        self.uid = uid
        self.gid = gid
        self.user_name = user_name
        self.interpreter = interpreter
        self.argv = argv
        self.env = env
        self.env_pass = env_pass
        self.env_set = env_set
        self.cwd = cwd
        self.state_dir = state_dir
        self.rlimits = rlimits
        self.mdwe = mdwe
        self.landlock = landlock
        self.seccomp_bpf = seccomp_bpf
        self.writable = [] if writable is None else writable
        self.hostname = hostname
        self.tmp_size = tmp_size
        self.limits = {} if limits is None else limits
        self.notify_bpf = notify_bpf
        self.app_name = app_name
        self.failure_notes = [] if failure_notes is None else failure_notes

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """The spec of `to_dict`; a field added since (with a default) may be missing."""
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})

    def environment(self, outer: dict[str, str] | os._Environ[str]) -> dict[str, str]:
        env = dict(self.env)
        for name in self.env_pass:
            if name in outer:
                env[name] = outer[name]
        env.update(self.env_set)
        return env


# ---------------------------------------------------------------- the launch


def launch(spec: RunSpec, args: tuple[str, ...] | list[str] = (), observer: Any = None,
           *, handoff: bool = False, explain_failure: bool = True) -> int:
    """Fork, sandbox the child, exec the app; return its exit code (128+N if killed).

    `handoff` (for a caller with nothing left to do after the app, as the warm path and
    the cold one without --explain): once the app is on its way, this process execs the
    native supervisor (`SUPERVISOR`), which waits, cleans up and exits with the app's
    code exactly as this function would return it, so no Python interpreter stays
    resident as root next to the app; then this never returns. With `explain_failure`,
    it also says how a failed run ended, as explain.explanation does without a capture
    (the exit line, the advice to rerun with --explain, `spec.failure_notes`). Without
    the binary: as without handoff (the caller explains, if it does).

    With `spec.notify_bpf` (observe mode), `observer` (a `notify.Supervisor`) answers
    the app's notifications: `observer.start(fd)` gets the socket on which the app will
    send its listener, `observer.stop()` comes once the app exited.

    Privileged, the child is PID 1 of new PID, mount, IPC and UTS namespaces
    (`_init_process`), which makes the mounts, builds the Landlock ruleset on what the
    app will see and forks the app. Either way the child dies with the launcher, even
    by SIGKILL: privileged, everything in its PID namespace dies with it; not root, only
    the app itself (what it forked is killed by the subreaper while the launcher
    lives). The child waits for the launcher's go before anything else: by then it is
    in its cgroup (`spec.limits`), which is removed after the app exited.
    """
    if spec.notify_bpf:
        if observer is None:
            raise EnforcementError("an observing launch needs an observer",
                                   "pass a notify.Supervisor (a sandrun bug)")
        return _observed_launch(spec, args, observer)
    return _launch(spec, args, [], handoff, explain_failure)


def _observed_launch(spec: RunSpec, args: tuple[str, ...] | list[str], observer: Any) -> int:
    """Observe mode. The observer's thread starts first: once the launcher unshared its
    PID namespace it can create no thread (CLONE_THREAD needs the namespace of its
    children to be its own). The thread receives the app's listener itself."""
    listener_r, listener_w = _listener_channel()
    try:
        observer.start(listener_r)  # owns listener_r from here on
    except BaseException:
        os.close(listener_r)
        os.close(listener_w)
        raise
    fds = [listener_w]  # _fork_and_wait closes it (and empties the list)
    try:
        return _launch(spec, args, fds)
    finally:
        for fd in fds:  # still here if the launch failed before forking
            os.close(fd)
        observer.stop()


def _launch(spec: RunSpec, args: tuple[str, ...] | list[str], fds: list[int],
            handoff: bool = False, explain_failure: bool = False) -> int:
    # First, before any fd or signal mask that a failure here would leave behind. Both
    # affect only the children forked below.
    if spec.privileged:
        if libc.unshare(CLONE_NEWPID) != 0:
            raise EnforcementError(f"unshare(CLONE_NEWPID) failed: "
                                   f"{os.strerror(last_errno())}",
                                   "sandrun needs root with CAP_SYS_ADMIN to isolate the app")
    else:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    group = None
    if spec.limits:
        from sandrun.sandbox import cgroup  # only launches with limits pay the import

        group = cgroup.create(_cgroup_name(spec.user_name), spec.limits)
    try:
        status = _fork_and_wait(spec, [*spec.argv, *args], spec.environment(os.environ), group,
                                fds, handoff, explain_failure)
    except BaseException:
        if group is not None:
            try:
                group.remove()
            except (OSError, SandrunError):
                pass  # the first error is the one to report
        raise
    if group is not None:
        group.remove()  # raises if something the app left cannot be killed: never hidden
    return status


def _cgroup_name(user_name: str) -> str:
    """<user>-<launcher pid>, in the characters cgroup names allow."""
    allowed = "abcdefghijklmnopqrstuvwxyz0123456789._-"
    user = "".join(c if c in allowed else "_" for c in user_name.lower())[:64]
    return f"{user}-{os.getpid()}" if user[:1].isalnum() else f"app-{os.getpid()}"


def _fork_and_wait(spec: RunSpec, argv: list[str], env: dict[str, str], group: Any,
                   fds: list[int], handoff: bool = False, explain_failure: bool = False
                   ) -> int:
    """`fds` are closed (and removed) on the way out, whatever happens; in observe mode it
    holds the socket where the app sends its listener (the child's only). The launch
    cgroup (`group`) is made before the fork: made after it, while the child sets up its
    namespaces, it cost more than it saved (the parent's Python work then copies the
    pages it shares with the child: +250 page faults, +1 ms CPU, +3 ms median here)."""
    notify_w = fds[0] if fds else -1
    try:
        ruleset_fd = -1
        if spec.landlock and not spec.privileged:  # privileged: the init builds it
            ruleset_fd = build_ruleset(spec.landlock)
            fds.append(ruleset_fd)
        # The native supervisor, opened (and checked) once: the init execs it too.
        helper_fd = open_supervisor()
        if helper_fd >= 0:
            fds.append(helper_fd)
        listen_fds = _listen_fds()
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            cap_last = int(f.read())
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += (err_r, err_w)
        # The launcher holds go_w open until the app has exited: the child reads its go
        # from go_r, and end of file there means the launcher is gone.
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        fds += (go_r, go_w)
        waited = {*FORWARDED_SIGNALS, _signal.SIGCHLD}
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, waited)
        try:
            child = _Child(spec, argv, env, ruleset_fd, err_w, cap_last, notify_w,
                           helper_fd, listen_fds)
            if handoff:  # the exec would lose what the caller printed and did not flush
                _flush_std()
            pid = os.fork()
            if pid == 0:
                code = EXIT_REFUSED
                try:
                    os.close(err_r)
                    _die_with_launcher(go_w)
                    if spec.privileged:
                        code = _init_process(child, go_r)
                    else:
                        _preload_for_the_app()
                        _await_go(go_r)
                        _enter_sandbox(child)
                except BaseException as exc:  # report, never return into the parent's code
                    _report(err_w, "launch", exc)
                os._exit(code)
            for fd in (err_w, go_r, ruleset_fd, notify_w):  # the child's now
                if fd >= 0:
                    fds.remove(fd)
                    os.close(fd)
            # Entering the cgroup (~0.1-0.4 ms of writes) overlaps the child's namespace
            # setup: it waits for the go only before it forks the app (privileged) or
            # before anything else (not root). No RCU grace period here, but the write
            # that makes the v2 cgroup populated wakes the kworker that sends its
            # cgroup.events notification, which can take this CPU for a few ms on a busy
            # machine (what looked like a 1-20 ms "enter").
            try:
                if group is not None:
                    group.enter(pid)  # before the go: the app is in it before it execs
            except BaseException:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
                fds.remove(err_r)
                early = _read_report(err_r)
                if early:  # the child failed first: that is the error to report
                    raise EnforcementError(
                        f"the sandbox could not be set up ({early['stage']}): "
                        f"{early['message']}", early.get("hint", ""),
                        exit_code=early.get("exit", EXIT_REFUSED)) from None
                raise
            try:
                os.write(go_w, b"g")
            except BrokenPipeError:
                pass  # the child failed before its go: its report says why
            if handoff and helper_fd >= 0:
                _exec_supervisor(helper_fd, spec, pid, err_r, go_w, group,
                                 explain_failure)  # or returns
            status = _supervise(pid, kill_leftovers=not spec.privileged)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        fds.remove(err_r)
        report = _read_report(err_r)
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        fds.clear()
    if report:
        raise EnforcementError(f"the sandbox could not be set up ({report['stage']}): "
                               f"{report['message']}", report.get("hint", ""),
                               exit_code=report.get("exit", EXIT_REFUSED))
    return status


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # closed: nothing to lose


def _die_with_launcher(go_w: int) -> None:
    """In the child: die with the launcher, even by SIGKILL (as bwrap --die-with-parent)."""
    os.close(go_w)
    _check_prctl(prctl(PR_SET_PDEATHSIG, _signal.SIGKILL), "set the parent-death signal")


def _preload_for_the_app() -> None:
    """Import what the app's side needs (_enter_sandbox) before waiting for the go: the
    launcher may still be moving the child into its cgroup, so the time is free now and
    would delay the app after the go."""
    import resource  # noqa: F401


def _await_go(go_r: int) -> None:
    """Wait for the launcher's go (it has put us in our cgroup by then). Exits quietly if
    the launcher is gone: died before the pdeathsig took effect, or gave up."""
    if os.read(go_r, 1) != b"g":
        os._exit(EXIT_REFUSED)
    # Did it die right after the go? getppid() cannot tell in a new PID namespace (the
    # parent is outside it: 0 either way); its end of the pipe can.
    os.set_blocking(go_r, False)
    try:
        if os.read(go_r, 1) == b"":
            os._exit(EXIT_REFUSED)
    except BlockingIOError:
        pass  # still there: its death now sends SIGKILL
    os.close(go_r)


# ---------------------------------------------------------------- the native supervisor

# Built at install time from native/supervise.c (setup.py); absent, launches are
# supervised by this module (the same behaviour, a resident Python interpreter).
SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native",
                          "sandrun-supervise")


def open_supervisor() -> int:
    """An O_RDONLY fd of the native supervisor, or -1 when it is missing or others could
    have changed it (reached from "/" through directories only root or we can change,
    owned by root or us, not writable by group or others)."""
    fd = safefile.open_trusted_program(SUPERVISOR, (0, os.geteuid()))
    return -1 if fd is None else fd


def supervisor_status() -> tuple[bool, str]:
    """For --dry-run and `sandrun -V`: whether launches leave the native supervisor
    resident (True), or a Python interpreter (False), and why."""
    fd = open_supervisor()
    if fd >= 0:
        os.close(fd)
        return True, f"native ({SUPERVISOR})"
    why = "missing" if not os.path.lexists(SUPERVISOR) else "not trusted (owner or mode)"
    return False, (f"Python fallback: {SUPERVISOR} is {why}; reinstall sandrun with a C "
                   "compiler (gcc) present")


def _title(spec: RunSpec) -> str:
    """The process title of the launch's resident processes."""
    return f"sandrun: {spec.app_name or spec.user_name}"


def _exec_supervisor(helper_fd: int, spec: RunSpec, child: int, err_r: int, go_w: int,
                     group: Any, explain_failure: bool = False) -> None:
    """Become the native supervisor (never returns), or return if the exec failed.
    `explain_failure`: it says how a failed run ended ("-- UID NOTE...")."""
    try:
        nodes = group.handoff() if group is not None else []
    except EnforcementError:
        return  # an emulated cgroup (tests): runner._supervise
    for fd in (err_r, go_w):
        os.set_inheritable(fd, True)
    title = _title(spec)
    argv = [title, "launcher", title, str(child), str(err_r), str(go_w),
            "0" if spec.privileged else "1", group.name if group is not None else "-",
            *nodes]
    if explain_failure:
        argv += ["--", str(spec.uid), *spec.failure_notes]
    try:
        os.execve(helper_fd, argv, {})
    except OSError:
        pass  # runner._supervise does the same


def _listen_fds() -> int:
    """systemd socket activation (sd_listen_fds): how many fds from 3 on were passed to
    this sandrun (LISTEN_PID is ours), to be passed on to the app; 0 for none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return 0
    raw = os.environ.get("LISTEN_FDS", "")
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 4096:
        raise EnforcementError(f"LISTEN_FDS={raw!r} is not a number of file descriptors",
                               "start sandrun from a systemd .socket unit, or unset "
                               "LISTEN_PID and LISTEN_FDS")
    count = int(raw)
    for fd in range(3, 3 + count):
        try:
            os.fstat(fd)
        except OSError:
            raise EnforcementError(f"LISTEN_FDS={count} but fd {fd} is not open",
                                   "start sandrun from a systemd .socket unit, or unset "
                                   "LISTEN_PID and LISTEN_FDS") from None
    return count


class _Child:
    """What the forked side needs besides the spec."""

    __slots__ = ("argv", "cap_last", "env", "err_fd", "helper_fd", "listen_fds", "notify_fd",
                 "ruleset_fd", "spec")

    def __init__(self, spec: RunSpec, argv: list[str], env: dict[str, str], ruleset_fd: int,
                 err_fd: int, cap_last: int, notify_fd: int = -1, helper_fd: int = -1,
                 listen_fds: int = 0) -> None:
        self.spec = spec
        self.argv = argv
        self.env = env
        self.ruleset_fd = ruleset_fd
        self.err_fd = err_fd
        self.cap_last = cap_last
        self.notify_fd = notify_fd  # observe mode: where the app sends its listener
        self.helper_fd = helper_fd  # the native supervisor (the init execs it), or -1
        self.listen_fds = listen_fds  # socket activation: fds 3.. passed to the app


def _listener_channel() -> tuple[int, int]:
    """A socket pair for the listener fd (observe mode). Imports what the app's side
    needs now: after the observing filter is loaded, no module may be opened until the
    observer has the listener."""
    import socket

    from sandrun.sandbox import notify  # noqa: F401  (imported for the child, see above)

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return parent.detach(), child.detach()


def _load_observing_filter(child: _Child) -> None:
    """Observe mode, instead of the enforcing filter: load the observing one and send
    its listener to the launcher. Between the two, only syscalls the enforcing filter
    allows (sendmsg without flags, close): a notified one would wait for an observer
    that does not have the listener yet."""
    import socket

    from sandrun.sandbox import notify

    sender = socket.socket(fileno=child.notify_fd)
    listener = notify.load_listener_filter(child.spec.notify_bpf)
    socket.send_fds(sender, [b"L"], [listener])
    os.close(listener)
    sender.close()


REPORT_MAGIC = b"SANDRUN-REPORT"  # the native supervisor reads the same format


def _report(fd: int, stage: str, exc: BaseException) -> None:
    """Tell the launcher why the child failed: REPORT_MAGIC, stage, message, hint and
    exit code, each ended by NUL but the last (NUL in a text becomes U+FFFD)."""
    exit_code = EXIT_REFUSED
    hint = ""
    if isinstance(exc, SandrunError):
        message, hint, exit_code = exc.message, exc.hint, exc.exit_code
    elif isinstance(exc, OSError):
        message = f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    fields = [stage, message, hint]
    payload = b"\0".join([REPORT_MAGIC,
                          *(f.replace("\0", "\ufffd").encode("utf-8", "replace")
                            for f in fields), str(exit_code).encode()])
    try:
        os.write(fd, payload)
    except OSError:
        pass


def _read_report(fd: int) -> dict[str, Any] | None:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        return None
    data = b"".join(chunks)
    fields = data.split(b"\0")
    if len(fields) != 5 or fields[0] != REPORT_MAGIC or not fields[4].isdigit():
        return {"stage": "launch", "message": data.decode(errors="replace")}
    stage, message, hint = (f.decode("utf-8", "replace") for f in fields[1:4])
    return {"stage": stage, "message": message, "hint": hint, "exit": int(fields[4])}


def _supervise(child: int, *, kill_leftovers: bool) -> int:
    """Wait for `child`, forwarding signals sent by processes; return its exit code."""
    waited = {*FORWARDED_SIGNALS, _signal.SIGCHLD}
    while True:
        info = _signal.sigwaitinfo(waited)
        if info.si_signo == _signal.SIGCHLD:
            code = _reap(child)
            if code is not None:
                if kill_leftovers:
                    _kill_orphans()
                return code
            continue
        # si_code <= 0 (SI_USER, SI_QUEUE, SI_TKILL): sent by a process; positive codes come
        # from the kernel (tty), which already delivered them to the whole foreground group.
        if info.si_code <= 0:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass


def _reap(child: int | None) -> int | None:
    """Reap every exited child; return `child`'s exit code if it was among them."""
    result = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return result
        if pid == 0:
            return result
        if pid == child:
            result = os.waitstatus_to_exitcode(status)
            result = 128 - result if result < 0 else result


def _kill_orphans() -> None:
    """Non-root fallback for the PID namespace: kill what got reparented to us."""
    me = str(os.getpid())
    for _ in range(10):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1].decode() == me:
                found = True
                try:
                    os.kill(int(entry), _signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap(None)
        if not found:
            return


def _init_process(child: _Child, go_r: int) -> int:
    """PID 1 of the app's PID namespace (root): private namespaces and mounts, the
    Landlock ruleset as the app will see the file system, then supervise the app."""
    spec = child.spec
    os.umask(0o022)  # what it creates (the private /tmp's skeleton) must be traversable
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS),
           "unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    hostname = spec.hostname.encode()
    _check(libc.sethostname(hostname, len(hostname)), f"set the host name {spec.hostname!r}")
    _mount_private_tmp(spec)
    _bind_writable_noexec(spec)
    _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"hidepid=invisible"), "mount a private /proc")
    if spec.landlock:
        child.ruleset_fd = build_ruleset(spec.landlock)
    _preload_for_the_app()
    _await_go(go_r)  # in the cgroup from here on: the app inherits it
    app = os.fork()
    if app == 0:
        try:
            _enter_sandbox(child)
        except BaseException as exc:
            _report(child.err_fd, "sandbox", exc)
        os._exit(EXIT_REFUSED)
    os.close(child.err_fd)
    if child.ruleset_fd >= 0:
        os.close(child.ruleset_fd)
    if child.notify_fd >= 0:
        os.close(child.notify_fd)  # the launcher sees end of file if the app dies first
    if child.helper_fd >= 0:
        # The native init: same job, ~1 MB instead of this copy of the launcher. Its
        # parent-death signal stays set across the exec (same credentials).
        try:
            os.execve(child.helper_fd, [_title(spec), "init", _title(spec), str(app)], {})
        except OSError:
            pass  # the Python init below does the same
    return _supervise(app, kill_leftovers=False)


def _mount_syscall(number: int, *args: int, what: str) -> int:
    result, err = syscall(number, *args)
    if result < 0:
        raise EnforcementError(f"{what} failed: {errno_text(err)}",
                               "sandrun needs root (CAP_SYS_ADMIN) and the mount API of "
                               "Linux >= 5.12 for its private mounts")
    return result


def _clone_tree(fd: int, what: str) -> int:
    """A detached copy of the mount at `fd` and everything mounted beneath it."""
    empty = string_buffer(b"")
    return _mount_syscall(SYS_OPEN_TREE, fd, addressof(empty),
                          OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH | os.O_CLOEXEC,
                          what=what)


def _move_mount(source: int, target: int, what: str) -> None:
    empty = string_buffer(b"")
    _mount_syscall(SYS_MOVE_MOUNT, source, addressof(empty), target,
                   addressof(empty), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
                   what=what)


def _new_tmpfs(options: tuple[tuple[str, str], ...]) -> int:
    """A detached noexec,nosuid,nodev tmpfs; returns the fd of its root."""
    name = string_buffer(b"tmpfs")
    fs_fd = _mount_syscall(SYS_FSOPEN, addressof(name), FSOPEN_CLOEXEC,
                           what="fsopen(tmpfs)")
    try:
        for key, value in options:
            key_buf = string_buffer(key.encode())
            value_buf = string_buffer(value.encode())
            _mount_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING,
                           addressof(key_buf), addressof(value_buf), 0,
                           what=f"tmpfs option {key}={value}")
        _mount_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, 0, 0, 0,
                       what="create a tmpfs")
        return _mount_syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, NO_EXEC_SUID_DEV,
                              what="fsmount(tmpfs)")
    finally:
        os.close(fs_fd)


def _paths_used(spec: RunSpec) -> list[str]:
    """Every host path the launch itself names: what must stay visible to the app; for
    a path that is a symbolic link, also where it leads (/etc/resolv.conf into /run)."""
    paths = [spec.state_dir, spec.cwd, spec.interpreter, *spec.writable,
             *(arg for arg in spec.argv if arg.startswith("/"))]
    if spec.landlock:
        paths += [rule[0] for rule in spec.landlock["paths"]]
    for path in paths[:]:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                # Only which host paths stay visible: the rules are still built with
                # open_trusted_path, which refuses a link another user controls.
                paths.append(os.path.realpath(path))
        except OSError:
            pass  # absent: an optional grant
    return paths


def _mount_private_tmp(spec: RunSpec) -> None:
    """A fresh tmpfs on /tmp, /var/tmp, /dev/shm and /run: nothing of the host's,
    nothing left after (SysV and POSIX shared memory of the app die with it).

    Mode 0700, owned by the app user: it is the only user in this mount namespace, so
    there is nobody to share with (01777 and its sticky-bit rules exist for users who
    share a directory), and the smallest grant is the one nothing can misuse. The
    paths the launch itself names beneath them (store, state dir, grants, cwd) are
    mounted through from the host at the same place; nothing else of the host's is.
    """
    size = str(spec.tmp_size) if spec.tmp_size else DEFAULT_TMP_SIZE
    options = (("size", size), ("mode", "0700"), ("uid", str(spec.uid)),
               ("gid", str(spec.gid)))
    used = _paths_used(spec)
    done: set[tuple[int, int]] = set()
    for tmp in PRIVATE_MOUNTS:
        try:
            target = open_trusted_path(tmp, directory=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        kept: list[tuple[str, list[str], int, bool]] = []
        try:
            st = os.fstat(target)
            if (st.st_dev, st.st_ino) in done:
                continue  # /var/tmp is a link to /tmp
            _keep_beneath(tmp, used, kept)
            root = _new_tmpfs(options)
            try:
                _move_mount(root, target, f"mount a private tmpfs on {tmp}")
                st = os.fstat(root)
                done.add((st.st_dev, st.st_ino))
                for path, parts, tree, is_dir in kept:
                    _graft(root, parts, tree, is_dir,
                           f"keep {path} visible beneath the private {tmp}")
            finally:
                os.close(root)
        finally:
            for _path, _parts, tree, _is_dir in kept:
                os.close(tree)
            os.close(target)


def _keep_beneath(tmp: str, used: list[str],
                  kept: list[tuple[str, list[str], int, bool]]) -> None:
    """Clone, before the tmpfs covers them, the used paths beneath `tmp` (outermost
    only: a clone holds what is beneath it)."""
    prefix = tmp + "/"
    wanted = {}
    for path in used:
        if path.startswith(prefix):
            parts = [part for part in path[len(prefix):].split("/") if part not in ("", ".")]
            if parts:
                wanted["/".join(parts)] = (path, parts)
    chosen: list[str] = []
    for key in sorted(wanted):  # an ancestor sorts before what is beneath it
        if any(key.startswith(outer + "/") for outer in chosen):
            continue
        path, parts = wanted[key]
        try:
            fd = open_trusted_path(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # an absent optional grant; a required one is refused with the ruleset
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            tree = _clone_tree(fd, f"clone {path} for the private {tmp}")
        finally:
            os.close(fd)
        kept.append((path, parts, tree, is_dir))
        chosen.append(key)


def _graft(root: int, parts: list[str], tree: int, is_dir: bool, what: str) -> None:
    """Mount `tree` at `parts` beneath the fresh tmpfs `root`, creating the way there.
    Only root has written to that tmpfs yet: nothing in it can be a trap."""
    opened = []
    current = root
    try:
        for i, name in enumerate(parts):
            try:
                if i == len(parts) - 1 and not is_dir:
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=current))
                else:
                    os.mkdir(name, 0o755, dir_fd=current)
            except FileExistsError:
                pass  # made for an earlier path
            current = os.open(name, PATH_FLAGS, dir_fd=current)
            opened.append(current)
        _move_mount(tree, current, what)
    finally:
        for fd in opened:
            os.close(fd)


def _bind_writable_noexec(spec: RunSpec) -> None:
    """Bind every path the app may write onto itself noexec,nosuid,nodev (everything
    mounted beneath it too): nothing the app writes can be executed or mapped
    executable. Devices (/dev/null) are left to Landlock; the private /tmp and
    /var/tmp are mounted so already."""
    empty = string_buffer(b"")
    attr = MountAttr(attr_set=NO_EXEC_SUID_DEV)
    for path in dict.fromkeys([spec.state_dir, *spec.writable]):
        if path.rstrip("/") in PRIVATE_MOUNTS:
            continue
        try:
            fd = open_trusted_path(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise EnforcementError(f"writable path {path!r} does not exist",
                                   "create it, or remove it from the profile's read_write "
                                   "list") from exc
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                continue
            tree = _clone_tree(fd, f"bind {path}")
            try:
                _mount_syscall(SYS_MOUNT_SETATTR, tree, addressof(empty),
                               AT_EMPTY_PATH | AT_RECURSIVE, addressof(attr),
                               sizeof(attr), what=f"make {path} noexec,nosuid,nodev")
                _move_mount(tree, fd, f"mount {path} noexec,nosuid,nodev")
            finally:
                os.close(tree)
        finally:
            os.close(fd)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise EnforcementError(f"{what} failed: {os.strerror(last_errno())}",
                               "sandrun needs root (CAP_SYS_ADMIN) for its private namespaces")


def _check_prctl(result: int, what: str) -> None:
    if result != 0:
        raise EnforcementError(f"{what} failed: {os.strerror(last_errno())}",
                               "this kernel lacks a protection the profile requires")


def _enter_sandbox(child: _Child) -> None:
    """The fixed order of DESIGN.md; on success this never returns (execve)."""
    import resource

    spec = child.spec
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT, *FORWARDED_SIGNALS):
        _signal.signal(sig, _signal.SIG_DFL)
    keep = sorted({child.err_fd, *(fd for fd in (child.ruleset_fd, child.notify_fd)
                                   if fd >= 0)})
    low = 3 + child.listen_fds  # socket activation: fds 3.. go to the app (_listen_fds)
    if child.listen_fds:
        for fd in range(3, low):
            os.set_inheritable(fd, True)
        child.env["LISTEN_FDS"] = str(child.listen_fds)
        child.env["LISTEN_PID"] = str(os.getpid())  # the app's, as its PID namespace sees it
        names = os.environ.get("LISTEN_FDNAMES")
        if names is not None:
            child.env["LISTEN_FDNAMES"] = names
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)

    for name, value in spec.rlimits:
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        limit = resource.RLIM_INFINITY if value is None else value
        try:
            resource.setrlimit(which, (limit, limit))
        except ValueError:  # above the hard limit, and no CAP_SYS_RESOURCE to raise it
            hard = resource.getrlimit(which)[1]
            if value is not None and value > hard:
                raise EnforcementError(
                    f"rlimit {name} = {value} is above the hard limit {hard} sandrun "
                    "itself runs under", "lower it, or raise the hard limit of the "
                    "service that starts sandrun") from None
            resource.setrlimit(which, (hard, hard))  # "infinity": as high as allowed

    if spec.privileged:
        for cap in range(child.cap_last + 1):
            _check_prctl(prctl(PR_CAPBSET_DROP, cap), f"drop capability {cap}")
        os.setgroups([])
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise EnforcementError("setuid(0) still succeeds after dropping privileges",
                                   "refusing to run; report this as a sandrun bug")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _check_prctl(prctl(PR_SET_NO_NEW_PRIVS, 1), "set no_new_privs")
    if spec.mdwe:
        _check_prctl(prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN),
                     "set memory-deny-write-execute")
    os.chdir(spec.cwd)
    os.umask(0o077)
    restrict_self(child.ruleset_fd, spec.landlock["restrict_flags"] if spec.landlock else 0)
    if spec.notify_bpf:
        _load_observing_filter(child)  # last, as the enforcing one
    else:
        load_seccomp_filter(spec.seccomp_bpf)  # last: nothing after this but execve
    try:
        os.execve(spec.interpreter, child.argv, child.env)
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE
        hint = "check the interpreter and the profile's rules"
        if exc.errno == errno.EACCES and spec.privileged:
            hint += (" (every read_write path is mounted noexec: none may contain the "
                     "interpreter)")
        raise EnforcementError(f"cannot execute {spec.interpreter}: {exc.strerror}", hint,
                               exit_code=code) from None
