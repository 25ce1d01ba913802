"""What stays resident next to a running app: the native supervisor and init.

A warm `sandrun exec` hands supervision to sandrun-supervise (built from
sandrun/launch/native/supervise.c at install time): the launcher execs it once the app
is on its way, and the namespace's init execs it once it forked the app. Each test
checks a behaviour the Python supervisor had, on the real kernel as root: exit codes,
signals forwarded, die-with-parent, the launch cgroup removed, a failed setup reported,
and the process title. Then the private /run and systemd socket activation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import free_port, need, run_sandrun, sandrun_argv, users_removed_after
from wheelcraft import make_wheel

from sandrun.launch import explain, runner, warm_exec
from sandrun.sandbox import cgroup

APP_NAME = "supervapp"
USER = f"sandrun-{APP_NAME}"
RSS_LIMIT_KB = 5 * 1024  # issue 17: at most 5 MB per sandbox beyond the app

APP = '''\
import os, socket, sys, time

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    mode, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    if mode == "sleep":
        print("sleeping", flush=True); time.sleep(float(arg)); return 0
    if mode == "exit":
        return int(arg)
    if mode == "kill":
        os.kill(os.getpid(), int(arg))
    if mode == "connect":
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(arg)
        except OSError as exc:
            print("error", exc.errno); return 3
        print("connected", s.recv(64).decode()); return 0
    if mode == "listen":
        print(os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID"), os.getpid(),
              os.environ.get("LISTEN_FDNAMES"), flush=True)
        if os.environ.get("LISTEN_FDS") != "1":
            return 4
        server = socket.socket(fileno=3)
        conn, _ = server.accept()
        conn.sendall(b"hi from the app"); conn.close(); return 0
    if mode == "spawn":
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print(pool.map(abs, [-1, -2]), sys.executable); return 0
    return 2
'''


@pytest.fixture(scope="module")
def world(require_root: None, require_landlock: int, require_seccomp: None
          ) -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandrun-super-", dir="/var/lib"))
    base.chmod(0o755)
    make_wheel(base / "wheels", APP_NAME, "1.0", {f"{APP_NAME}.py": APP})
    bundle = base / f"{APP_NAME}.pyz"
    with users_removed_after(USER):
        proc = run_sandrun("bundle", APP_NAME, "--no-index", "--find-links",
                           str(base / "wheels"), "-e", f"{APP_NAME}:main", "-o", str(bundle))
        assert proc.returncode == 0, proc.stderr
        profile = base / "unix.toml"
        profile.write_text('extends = "default"\n[network]\nunix_sockets = true\n')
        yield {"base": base, "bundle": bundle, "store": base / "store", "profile": profile}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def native(world: dict[str, Path]) -> str:
    available, detail = runner.supervisor_status()
    need(available, f"the native supervisor is not built ({detail}): pip install needs gcc")
    return runner.SUPERVISOR


def exec_args(world: dict[str, Path], *app_args: str, profile: bool = False) -> list[str]:
    options = ["--store", str(world["store"])]
    if profile:
        options += ["-p", str(world["profile"])]
    return ["exec", *options, str(world["bundle"]), *app_args]


def has_record(argv: list[str]) -> bool:
    args = warm_exec.parse_exec_args(argv[1:])
    assert args is not None
    return warm_exec.load_record(args) is not None


def warm_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A warm run of `sandrun ARGV`: first a cold one if there is no valid record
    (other test sessions adding users change /etc/passwd, which invalidates records:
    bounded retries)."""
    for _ in range(5):
        if has_record(argv):
            proc = run_sandrun(*argv)
            if has_record(argv):
                return proc  # the record held before and after: that run was warm
        else:
            run_sandrun(*argv)
    pytest.fail("no warm launch: the launch record keeps being invalidated")


def warm(world: dict[str, Path], *app_args: str, profile: bool = False
         ) -> subprocess.CompletedProcess[str]:
    return warm_run(exec_args(world, *app_args, profile=profile))


def start(world: dict[str, Path], *app_args: str) -> subprocess.Popen[str]:
    """A warm launch in the background (its launcher is the native supervisor), once
    the app said it is sleeping."""
    for _ in range(5):
        warm(world, "exit", "0")  # a record for these options (app args are not in it)
        proc = subprocess.Popen(sandrun_argv(*exec_args(world, *app_args)), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "sleeping\n", (line, proc.stderr.read() if proc.poll() else "")
        if os.readlink(f"/proc/{proc.pid}/exe") == runner.SUPERVISOR:
            return proc
        stop(proc)  # a record invalidated meanwhile: that launch was cold
    pytest.fail("no warm launch: the launch record keeps being invalidated")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def proc_info(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().decode()  # arguments each ended by NUL
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {"cmdline": cmdline, "comm": comm, "exe": os.readlink(f"/proc/{pid}/exe"),
            "rss_kb": status["VmRSS"].split()[0], "uid": status["Uid"].split()[0]}


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


# ------------------------------------------------------------------ supervision


def test_native_supervisor_is_built_and_trusted(native: str) -> None:
    st = os.stat(native)
    assert st.st_uid == 0 and not st.st_mode & 0o022 and st.st_mode & 0o100
    fd = runner.open_supervisor()
    assert fd >= 0
    os.close(fd)


def test_warm_launch_leaves_only_small_titled_processes(world: dict[str, Path],
                                                        native: str) -> None:
    proc = start(world, "sleep", "30")
    try:
        launcher = proc_info(proc.pid)
        (init_pid,) = children(proc.pid)
        init = proc_info(init_pid)
        (app_pid,) = children(init_pid)
        app = proc_info(app_pid)
        for info in (launcher, init):
            assert info["cmdline"] == f"sandrun: {APP_NAME}\0", info  # nothing after it
            assert info["comm"] == f"sandrun: {APP_NAME}"[:15], info
            assert info["exe"] == native, info
            assert info["uid"] == "0"
        assert sorted(os.listdir(f"/proc/{init_pid}/fd")) == ["0", "1", "2"]
        total = int(launcher["rss_kb"]) + int(init["rss_kb"])
        assert total <= RSS_LIMIT_KB, (launcher, init)
        # The app keeps its interpreter's command line (sys.executable comes from it;
        # `sandrun list` finds running trees by their bootstrap there).
        assert app["cmdline"].split("\0")[1:4] == ["-I", "-B", "-S"], app
        assert app["cmdline"].split("\0")[4].endswith("/.sandrun/bootstrap.py"), app
        assert app["uid"] != "0"
    finally:
        stop(proc)


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo and len(found) < 100:
        found.append(todo.pop(0))
        todo += children(found[-1])
    return found


def test_cold_launch_leaves_no_python_as_root(world: dict[str, Path], native: str) -> None:
    """Issue 17 goal 2: a cold launch (--verify full: never warm) hands off as well once
    the app is on its way; what runs as root next to the app is the two small
    supervisors, no Python interpreter. A failure is still explained (by the
    supervisor); a SIGTERM-stopped app is not."""
    proc = subprocess.Popen(sandrun_argv("exec", "--verify", "full", "--store",
                                         str(world["store"]), str(world["bundle"]), "sleep",
                                         "30"), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line == "sleeping\n", (line, proc.stderr.read() if proc.poll() else "")
        infos = [proc_info(pid) for pid in (proc.pid, *descendants(proc.pid))]
        as_root = [info for info in infos if info["uid"] == "0"]
        assert [(info["exe"], info["cmdline"]) for info in as_root] == [
            (native, f"sandrun: {APP_NAME}\0")] * 2, infos
        (app,) = [info for info in infos if info["uid"] != "0"]
        assert os.path.basename(app["exe"]).startswith("python"), app
        for pid in (proc.pid, *descendants(proc.pid)):
            status = Path(f"/proc/{pid}/status").read_text()
            uids = next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1:]
            exe = os.readlink(f"/proc/{pid}/exe")
            assert "0" not in uids or exe == native, (pid, exe, uids)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 128 + signal.SIGTERM
        assert "the app" not in proc.stderr.read()  # (notices of the first run only)
    finally:
        stop(proc)
    failed = run_sandrun("exec", "--verify", "full", "--store", str(world["store"]),
                         str(world["bundle"]), "exit", "3")
    assert failed.returncode == 3
    assert failed.stderr.splitlines()[-1] == (
        "sandrun: the app exited with status 3; to list what the sandbox denied during the "
        "run, run it again with `sandrun exec --explain`"), failed.stderr


def test_exit_codes_are_the_apps(world: dict[str, Path], native: str) -> None:
    assert warm(world, "exit", "3").returncode == 3
    assert warm(world, "exit", "0").returncode == 0
    killed = warm(world, "kill", str(int(signal.SIGTERM)))
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr
    assert killed.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signals_reach_the_app(world: dict[str, Path], native: str, sig: int) -> None:
    proc = start(world, "sleep", "30")
    try:
        proc.send_signal(sig)
        proc.wait(timeout=20)
        assert proc.returncode == 128 + sig
    finally:
        stop(proc)


def test_sigkill_of_the_supervisor_kills_the_app(world: dict[str, Path], native: str) -> None:
    proc = start(world, "sleep", "30")
    try:
        (init_pid,) = children(proc.pid)
        (app_pid,) = children(init_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}")
                                                  for pid in (init_pid, app_pid)):
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{app_pid}"), "the app outlived its supervisor"
        assert not os.path.exists(f"/proc/{init_pid}")
    finally:
        stop(proc)


def test_launch_cgroup_is_removed_by_the_native_supervisor(world: dict[str, Path],
                                                           native: str) -> None:
    layout = cgroup.discover()
    hierarchies = [h for h in (layout.v2, *layout.v1.values()) if h is not None]
    need(bool(hierarchies), "no cgroup hierarchy to watch")
    proc = start(world, "sleep", "30")
    name = f"{USER}-{proc.pid}"
    dirs = {f"{h.dir.rstrip('/')}/{cgroup.PARENT}/{name}" for h in hierarchies}
    try:
        present = {d for d in dirs if os.path.isdir(d)}
        assert present, f"no launch cgroup among {sorted(dirs)}"
        (init_pid,) = children(proc.pid)
        for d in present:
            assert str(init_pid) in Path(d, "cgroup.procs").read_text().split()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert not any(os.path.isdir(d) for d in present)
    finally:
        stop(proc)


def test_failed_setup_is_reported_by_the_native_supervisor(world: dict[str, Path],
                                                           native: str) -> None:
    """A required path removed after the record was written: the warm launch itself
    (the init, building the ruleset) refuses, and the supervisor reports it as the
    Python launcher did."""
    granted = Path(tempfile.mkdtemp(prefix="sandrun-super-grant-", dir="/var/lib"))
    args = ["exec", "--store", str(world["store"]), "--read", str(granted),
            str(world["bundle"]), "exit", "0"]
    try:
        assert warm_run(args).returncode == 0
        granted.rmdir()
        proc = run_sandrun(*args)
        assert proc.returncode == 125, proc.stderr
        assert proc.stderr.startswith("sandrun: error: the sandbox could not be set up ("), \
            proc.stderr
        assert f"required path {str(granted)!r}" in proc.stderr
        assert "\n  hint: " in proc.stderr
    finally:
        shutil.rmtree(granted, ignore_errors=True)


FALLBACK = """
import sys
from sandrun.__main__ import main
from sandrun.launch import runner
runner.SUPERVISOR = sys.argv[1]
main(sys.argv[2:])
"""


def test_python_fallback_without_the_binary(world: dict[str, Path], native: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the binary a warm launch is supervised by the Python launcher, with the
    same exit code and signal forwarding."""
    absent = str(world["base"] / "absent")
    monkeypatch.setattr(runner, "SUPERVISOR", absent)
    assert runner.open_supervisor() == -1
    available, detail = runner.supervisor_status()
    assert not available and "Python fallback" in detail and "missing" in detail
    warm(world, "exit", "0")
    proc = subprocess.Popen([sys.executable, "-P", "-c", FALLBACK, absent,
                             *exec_args(world, "sleep", "30")], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "sleeping\n"
        assert os.readlink(f"/proc/{proc.pid}/exe") != native
        (init_pid,) = children(proc.pid)
        assert os.readlink(f"/proc/{init_pid}/exe") != native
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        stop(proc)


def test_python_fallback_explains_a_failed_cold_run_once(world: dict[str, Path],
                                                         native: str) -> None:
    """Without the binary the cold path's handoff does not happen: the CLI explains the
    failed run itself (explain.py), once."""
    proc = subprocess.run([sys.executable, "-P", "-c", FALLBACK, str(world["base"] / "absent"),
                           "exec", "--verify", "full", "--store", str(world["store"]),
                           str(world["bundle"]), "exit", "3"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3, proc.stderr
    explained = [line for line in proc.stderr.splitlines() if "the app" in line]
    assert explained == ["sandrun: the app exited with status 3; to list what the sandbox "
                         "denied during the run, run it again with `sandrun exec "
                         "--explain`"], proc.stderr


SUPERVISE_FAILED_CHILD = """
import os, sys
helper, report, code = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
err_r, err_w = os.pipe()
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:
    os.write(err_w, report.replace(b"|", b"\\0"))
    os._exit(code)
os.close(err_w)
os.set_inheritable(err_r, True)
os.set_inheritable(go_w, True)
os.execv(helper, ["x", "launcher", "sandrun: t", str(child), str(err_r), str(go_w), "0",
                  "-"])
"""


@pytest.mark.parametrize(("report", "code", "expected", "stderr"), [
    ("", 3, 3, ""),
    ("SANDRUN-REPORT|sandbox|cannot execute /x: Permission denied|check it|126", 125, 126,
     "sandrun: error: the sandbox could not be set up (sandbox): cannot execute /x: "
     "Permission denied\n  hint: check it\n"),
    ("SANDRUN-REPORT|launch|no hint||125", 125, 125,
     "sandrun: error: the sandbox could not be set up (launch): no hint\n"),
    ("garbage", 125, 125, "sandrun: error: the sandbox could not be set up (launch): garbage\n"),
])
def test_native_supervisor_reports_a_failed_child(native: str, report: str, code: int,
                                                  expected: int, stderr: str) -> None:
    """The child's report (runner._report's format) printed as the Python launcher
    prints it, with its exit code; no report: the child's own code."""
    proc = subprocess.run([sys.executable, "-c", SUPERVISE_FAILED_CHILD, native, report,
                           str(code)], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (expected, stderr)


EXPLAIN_EVERY_CODE = """
import json, os, sys
helper, uid, notes = sys.argv[1], sys.argv[2], sys.argv[3:]
results = {}
for code in range(256):
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        err_r, err_w = os.pipe()
        go_r, go_w = os.pipe()
        child = os.fork()
        if child == 0:
            os._exit(code)
        os.close(err_w)
        os.dup2(out_w, 2)
        os.set_inheritable(err_r, True)
        os.set_inheritable(go_w, True)
        os.execv(helper, ["x", "launcher", "sandrun: t", str(child), str(err_r), str(go_w),
                          "0", "-", "--", uid, *notes])
    os.close(out_w)
    data = b""
    while chunk := os.read(out_r, 65536):
        data += chunk
    os.close(out_r)
    _, status = os.waitpid(pid, 0)
    results[code] = [os.waitstatus_to_exitcode(status), data.decode()]
print(json.dumps(results))
"""
NO_SUCH_UID = 4294967294  # (uid_t)-2: no process runs as it, so no OOM kill names it


@pytest.fixture(scope="module")
def supervisor_binary() -> str:
    available, detail = runner.supervisor_status()
    need(available, f"the native supervisor is not built ({detail}): pip install needs gcc")
    return runner.SUPERVISOR


def test_native_supervisor_explains_every_exit_code_as_explain_py(supervisor_binary: str
                                                                   ) -> None:
    """explain.py is the one source of the texts: for every exit code the supervisor
    prints exactly what explain.explanation() gives without a capture (signal table,
    --explain advice), then the notes it was given; nothing for 0, 130 and 143 (as
    cli.exec_). Its table cannot drift from explain.SIGNALS and explain._SENT."""
    notes = ["sandrun-x cannot write /srv/é b (root:root 0755) (Unix permissions: no "
             "sandbox record shows this)", "-- a second note"]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXPLAIN_EVERY_CODE, supervisor_binary,
                           str(NO_SUCH_UID), *notes], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    plan: Any = SimpleNamespace(privileged=False, user=SimpleNamespace(uid=NO_SUCH_UID))
    for code in range(256):
        returncode, stderr = results[str(code)]
        assert returncode == code
        if code in (0, 130, 143):
            assert stderr == "", code
            continue
        lines = [*explain.explanation(plan, code, None, started), *notes]
        assert stderr == "".join(f"sandrun: {line}\n" for line in lines), code
    assert "SIGSYS" in results[str(128 + 31)][1] and "SIGHUP" in results[str(129)][1]


@pytest.mark.parametrize("tail", [["--"], ["--", "x"], ["--", "-1"], ["--", "4294967295"],
                                  ["--", " 1"]])
def test_native_supervisor_refuses_a_bad_uid(supervisor_binary: str, tail: list[str]
                                             ) -> None:
    proc = subprocess.run([supervisor_binary, "launcher", "t", "1", "0", "1", "0", "-",
                           *tail], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 125
    assert "started wrongly" in proc.stderr


def test_report_format_round_trip() -> None:
    read, write = os.pipe()
    try:
        runner._report(write, "sandbox", runner.EnforcementError("bad\0thing", "fix it",
                                                                 exit_code=126))
    finally:
        os.close(write)
    report = runner._read_report(read)
    assert report == {"stage": "sandbox", "message": "bad\ufffdthing", "hint": "fix it",
                      "exit": 126}
    read, write = os.pipe()
    os.write(write, b"raw text")
    os.close(write)
    assert runner._read_report(read) == {"stage": "launch", "message": "raw text"}


def test_multiprocessing_spawn_still_finds_its_interpreter(world: dict[str, Path],
                                                           native: str) -> None:
    proc = warm(world, "spawn")
    assert proc.returncode == 0, proc.stderr
    result, executable = proc.stdout.split()[-3:-1], proc.stdout.split()[-1]
    assert result == ["[1,", "2]"] and executable.startswith("/"), proc.stdout


# ------------------------------------------------------------------ a private /run


@contextlib.contextmanager
def run_socket(name: str) -> Iterator[tuple[str, socket.socket]]:
    """A unix socket on the host's /run that anyone may connect to."""
    path = f"/run/sandrun-test-{os.getpid()}-{name}.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(1)
        server.settimeout(60)
        yield path, server
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_host_sockets_under_run_are_out_of_reach(world: dict[str, Path]) -> None:
    """The profile allows AF_UNIX (as the gunicorn preset does), yet the host's /run is
    replaced by an empty one: nothing there can be reached."""
    with run_socket("host") as (path, _server):
        proc = run_sandrun(*exec_args(world, "connect", path, profile=True))
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert proc.stdout.strip() == "error 2"  # ENOENT: the private /run is empty


def test_granted_socket_under_run_is_reachable(world: dict[str, Path]) -> None:
    with run_socket("granted") as (path, server):
        proc = subprocess.Popen(
            sandrun_argv("exec", "--store", str(world["store"]), "-p", str(world["profile"]),
                         "--read", path, str(world["bundle"]), "connect", path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True)
        try:
            conn, _ = server.accept()
            conn.sendall(b"hello-from-host")
            conn.close()
            out, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
    assert proc.returncode == 0, (out, err)
    assert out.strip() == "connected hello-from-host"


# ------------------------------------------------------------------ socket activation


def _activated(world: dict[str, Path], listen_pid: str | None, names: str | None = None
               ) -> tuple[subprocess.Popen[str], int]:
    """sandrun started as systemd starts a socket-activated service: a listening socket
    at fd 3, LISTEN_FDS=1 and LISTEN_PID=<sandrun's pid> ("self"), or another pid."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    fd = listener.fileno()
    env = dict(os.environ, LISTEN_FDS="1")
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    script = 'LISTEN_PID=$$ exec "$@"' if listen_pid == "self" else \
        f'LISTEN_PID={listen_pid} exec "$@"'
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script, "sh", *sandrun_argv(*exec_args(world, "listen"))],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3))
    listener.close()
    return proc, port


def test_socket_activation_passes_the_fds(world: dict[str, Path]) -> None:
    proc, port = _activated(world, "self", names="web")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:2] == ["1", line[2]] and line[3] == "web", line  # LISTEN_PID = the app
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.settimeout(30)
            assert conn.recv(64) == b"hi from the app"
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        stop(proc)


def test_socket_activation_for_another_process_passes_nothing(world: dict[str, Path]
                                                              ) -> None:
    proc, _port = _activated(world, "1")
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 4, (out, err)
        assert out.split()[:2] == ["None", "None"]
    finally:
        stop(proc)
