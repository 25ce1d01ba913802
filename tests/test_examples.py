"""The examples in examples/ work as their READMEs say (issue #5).

- hello: the smallest bundle -> exec round trip (the README quick start).
- httpbin: served by gunicorn under `sandrun exec` as a dedicated user; an attacker with
  code execution inside the app (examples/httpbin/attack_probe) can neither write the code
  nor read /etc/shadow, while the same attack against the classic deployment (a venv owned
  by the user that runs gunicorn) rewrites httpbin's code; SIGTERM stops master and
  workers with exit 0 and leaves no process of the app user. The example's profile binds
  port 8000 only; the runs use it as the operator's profile (`exec -p`, as the README
  offers) with that port replaced by a free one, so no test needs port 8000 itself.

Wheels come from PyPI once and are cached (like test_shipped_profiles); bundles are then
built with --no-index --find-links. Needs root, Landlock and seccomp (CI=true fails
instead of skipping), /usr/bin/python3 with venv (python3-venv) and the `nobody` user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, run_sandrun, sandrun_argv, users_removed_after

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WHEEL_CACHE = Path(os.environ.get("SANDRUN_TEST_WHEELS",
                                  Path.home() / ".cache" / "sandrun-tests" / "wheels"))
# Pinned so that CI does not change under us; setuptools is the examples' build backend.
REQUIREMENTS = ("httpbin==0.10.4", "gunicorn==27.0.1", "setuptools>=61")
HTTPBIN_PROFILE = EXAMPLES / "httpbin" / "httpbin.toml"
PROFILE_PORT = "bind_tcp = [8000]"  # the only port httpbin.toml lets the app bind
APP_USER = "sandrun-httpbin"
BUILD_TIMEOUT = 300  # pip resolving httpbin's dependencies from the cache
SYSTEM_PYTHON = "/usr/bin/python3"


# ------------------------------------------------------------------ helpers

def wheelhouse(*requirements: str) -> Path:
    """Wheels for `requirements` and their dependencies in WHEEL_CACHE, downloaded once."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(WHEEL_CACHE)]
    offline = subprocess.run([*base, "--no-index", "--find-links", str(WHEEL_CACHE),
                              *requirements], capture_output=True, text=True, check=False)
    if offline.returncode != 0:
        online = subprocess.run([*base, *requirements], capture_output=True, text=True,
                                check=False)
        assert online.returncode == 0, online.stderr
    return WHEEL_CACHE


def copy_project(src: Path, dest: Path) -> Path:
    """A clean copy of a local project: `sandrun bundle DIR` builds in place (setuptools
    leaves build/ and *.egg-info there, and a stale build/lib ends up in the wheel)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__"))
    return dest


def fetch(url: str, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def wait_until_serving(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}\n{err}")
        with contextlib.suppress(OSError):
            if fetch(url)[0] == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running 30 s after signal {sig}:\n{err}") from None
    return proc.returncode, out, err


def processes_of(uid: int) -> dict[int, str]:
    """pid -> command line of every live process whose real uid is `uid` (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        match = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        state = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
        if match and int(match.group(1)) == uid and not (state and state.group(1) == "Z"):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app users the launches below create go with the module."""
    with users_removed_after("sandrun-hello", APP_USER):
        yield


@pytest.fixture(scope="module")
def work(require_root: None, require_landlock: int, require_seccomp: None) -> Iterator[Path]:
    # Not under /tmp: the sandbox has a private /tmp (absent there, not denied).
    path = Path(tempfile.mkdtemp(prefix="sandrun-examples-", dir="/var/lib"))
    path.chmod(0o755)  # the venv deployment's user must reach its venv inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheels(work: Path) -> Path:
    return wheelhouse(*REQUIREMENTS)


@pytest.fixture(scope="module")
def probe_wheels(work: Path, wheels: Path) -> Path:
    """attack_probe built once into a wheel: the very same wheel goes into the bundle and
    into the venv deployment."""
    dest = work / "probe-wheels"
    src = copy_project(EXAMPLES / "httpbin" / "attack_probe", work / "attack_probe-src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--disable-pip-version-check", "--no-index", "--find-links",
                           str(wheels), "-w", str(dest), str(src)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return dest


@pytest.fixture(scope="module")
def httpbin_bundle(work: Path, wheels: Path, probe_wheels: Path) -> Path:
    """The example's bundle (httpbin + gunicorn, its profile), plus attack_probe, approved
    by the operator as the README shows."""
    bundle = work / "httpbin.pyz"
    proc = run_sandrun("bundle", "httpbin", "gunicorn", "attack_probe", "--no-index",
                       "--find-links", str(wheels), "--find-links", str(probe_wheels),
                       "-c", "gunicorn", "-p", str(HTTPBIN_PROFILE),
                       "--name", "httpbin", "-o", str(bundle), timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    # The example's profile asks for port 8000 beyond `default`: the operator approves it.
    approved = run_sandrun("approve", "--store", str(work / "store"), "--yes", str(bundle))
    assert approved.returncode == 0, approved.stderr
    assert "network.bind_tcp: 8000" in approved.stdout
    return bundle


def profile_on_port(work: Path, port: int) -> Path:
    """httpbin.toml with its one port replaced by `port`, every other rule the same: the
    operator's profile (`exec -p`, the README's alternative to approving), so the tests
    never need port 8000 itself, which another program may hold."""
    text = HTTPBIN_PROFILE.read_text()
    assert text.count(PROFILE_PORT) == 1, f"{HTTPBIN_PROFILE} no longer says {PROFILE_PORT}"
    path = work / f"httpbin-{port}.toml"
    path.write_text(text.replace(PROFILE_PORT, f"bind_tcp = [{port}]"))
    return path


@contextlib.contextmanager
def sandrun_gunicorn(work: Path, bundle: Path, app: str, workers: int = 2
                     ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`sandrun exec -p PROFILE BUNDLE -- -b 127.0.0.1:PORT -w N APP` on a free PORT that
    the profile (the example's, on that port) grants; (process, base URL) once serving."""
    port = free_port()
    proc = subprocess.Popen(
        sandrun_argv("exec", "--store", str(work / "store"), "-p",
                     str(profile_on_port(work, port)), str(bundle),
                     "--", "-b", f"127.0.0.1:{port}", "-w", str(workers), app),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/get", proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            stop(proc)


# ------------------------------------------------------------------ hello

def test_hello_round_trip(work: Path, wheels: Path) -> None:
    """README quick start: bundle examples/hello, exec it as sandrun-hello."""
    src = copy_project(EXAMPLES / "hello", work / "hello-src")
    bundle = work / "hello.pyz"
    built = run_sandrun("bundle", str(src), "-c", "hello", "--no-index", "--find-links",
                        str(wheels), "-o", str(bundle), timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr
    assert run_sandrun("verify", str(bundle)).returncode == 0
    run = run_sandrun("exec", "--store", str(work / "store"), str(bundle), "sandrun")
    assert run.returncode == 0, run.stderr
    user = pwd.getpwnam("sandrun-hello")
    assert user.pw_uid != 0
    lines = run.stdout.splitlines()
    assert re.fullmatch(rf"hello, sandrun: uid={user.pw_uid} python=3\.\d+\.\d+ "
                        rf"home={re.escape(str(work / 'store'))}/state/hello", lines[0]), lines
    assert lines[1] == "my code is read-only (Permission denied)"


# ------------------------------------------------------------------ httpbin

def test_httpbin_serves_under_sandrun(work: Path, httpbin_bundle: Path) -> None:
    with sandrun_gunicorn(work, httpbin_bundle, "httpbin:app") as (server, url):
        status, _, body = fetch(f"{url}/get?x=1")
        assert status == 200
        assert json.loads(body)["args"] == {"x": "1"}

        sent = {"name": "sandrun", "numbers": [1, 2, 3]}
        status, _, body = fetch(f"{url}/post", json.dumps(sent).encode(),
                                {"Content-Type": "application/json"})
        assert status == 200
        assert json.loads(body)["json"] == sent

        # brotlicffi: a cffi C extension loaded from the read-only store under MDWE.
        status, headers, body = fetch(f"{url}/brotli")
        assert status == 200
        assert headers["content-encoding"] == "br"
        assert body
        import brotli  # the test extra: the body is really decoded, never skipped

        assert json.loads(brotli.decompress(body))["brotli"] is True
        assert server.poll() is None
    code, _, err = stop(server)
    assert code == 0, err


def test_attacker_in_the_app_cannot_touch_code_or_secrets(work: Path,
                                                          httpbin_bundle: Path) -> None:
    """attack_probe's /_probe runs inside a gunicorn worker: the code stays read-only,
    /etc/shadow and a world-readable file outside the grants stay unreadable."""
    secret = work / "world-readable-secret.txt"
    secret.write_text("not for the app\n")
    secret.chmod(0o644)
    with sandrun_gunicorn(work, httpbin_bundle, "attack_probe:app") as (server, url):
        _, _, body = fetch(f"{url}/_probe?read={secret}")
        code, _, err = stop(server)
    assert code == 0, err
    report = json.loads(body)
    results = report["results"]
    assert report["uid"] == pwd.getpwnam(APP_USER).pw_uid
    for module, path in report["code"].items():
        assert path.startswith(str(work / "store" / "apps")), path
        assert results[f"write {module}"] in ("EACCES", "EROFS"), results
        assert not Path(path).read_bytes().endswith(b"# attack_probe was here\n")
    assert results["create module next to httpbin"] in ("EACCES", "EROFS"), results
    assert results["create .pth in site-packages"] in ("EACCES", "EROFS"), results
    assert results["read /etc/shadow"] == "EACCES", results
    assert results[f"read {secret}"] == "EACCES", results  # Landlock: outside the grants
    assert results["write HOME (control)"] == "ok", results  # the probe itself works


def test_same_attack_rewrites_httpbin_in_a_venv(work: Path, wheels: Path,
                                                probe_wheels: Path) -> None:
    """The classic deployment: `pip install httpbin gunicorn` into a venv owned by the user
    that runs gunicorn (here `nobody`). The same probe rewrites httpbin's code there."""
    nobody = pwd.getpwnam("nobody")
    deploy = work / "venv-deployment"
    (deploy / "wheels").mkdir(parents=True)
    (deploy / "home").mkdir()
    for wheel in [*wheels.glob("*.whl"), *probe_wheels.glob("*.whl")]:
        shutil.copy(wheel, deploy / "wheels")  # the cache under /root is not readable
    for path in (deploy, *deploy.rglob("*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    as_nobody = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": [],
                 "cwd": str(deploy),
                 "env": {"HOME": str(deploy / "home"), "PATH": "/usr/bin:/bin",
                         "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}}
    venv = deploy / "venv"
    for cmd in ([SYSTEM_PYTHON, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                 str(deploy / "wheels"), "httpbin", "gunicorn", "attack_probe"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300,
                              **as_nobody)  # type: ignore[arg-type]
        assert proc.returncode == 0, proc.stderr
    port = free_port()
    secret = work / "world-readable-secret.txt"
    secret.write_text("not for the app\n")
    secret.chmod(0o644)
    server = subprocess.Popen([str(venv / "bin" / "gunicorn"), "-b", f"127.0.0.1:{port}",
                               "-w", "1", "attack_probe:app"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              **as_nobody)  # type: ignore[arg-type]
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/get", server)
        _, _, body = fetch(f"http://127.0.0.1:{port}/_probe?read={secret}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        stop(server)
        for pid, cmdline in processes_of(nobody.pw_uid).items():
            if str(venv) in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    report = json.loads(body)
    results = report["results"]
    assert report["uid"] == nobody.pw_uid
    httpbin_init = Path(report["code"]["httpbin"])
    assert httpbin_init.is_relative_to(venv)
    # What sandrun denies, the venv deployment allows: the attacker now owns the next start.
    for module in ("attack_probe", "httpbin", "flask", "gunicorn"):
        assert results[f"write {module}"] == "ok", results
    assert httpbin_init.read_bytes().endswith(b"# attack_probe was here\n")
    assert results["create module next to httpbin"] == "ok", results
    assert results["create .pth in site-packages"] == "ok", results
    assert results[f"read {secret}"] == "ok", results
    # File permissions alone still keep /etc/shadow from an unprivileged user.
    assert results["read /etc/shadow"] == "EACCES", results
    shutil.rmtree(venv)  # the rewritten venv is discarded, never reused


def test_sigterm_stops_master_and_workers(work: Path, httpbin_bundle: Path) -> None:
    """SIGTERM to `sandrun exec` reaches gunicorn's master, which stops its workers and
    exits 0 (gunicorn's graceful shutdown); sandrun returns that 0, not 128+15, and no
    process of the app user survives."""
    with sandrun_gunicorn(work, httpbin_bundle, "httpbin:app", workers=2) as (server, _url):
        uid = pwd.getpwnam(APP_USER).pw_uid
        deadline = time.monotonic() + 10
        while len(running := processes_of(uid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(running) == 3, running  # master + 2 workers, all as the app user
        assert all(".sandrun/bootstrap.py" in cmd for cmd in running.values()), running
        code, _, err = stop(server, signal.SIGTERM)
    assert code == 0, err
    assert "Handling signal: term" in err
    assert "Shutting down: Master" in err
    deadline = time.monotonic() + 5
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(uid) == {}
