"""Each shipped profile runs its kind of app under `sandrun exec` and denies the rest."""

from __future__ import annotations

import errno
import http.server
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_ports, run_sandrun, sandrun_argv, users_removed_after
from wheelcraft import make_wheel

from sandrun.config.profile import shipped_profile_path

WHEEL_CACHE = Path(os.environ.get("SANDRUN_TEST_WHEELS",
                                  Path.home() / ".cache" / "sandrun-tests" / "wheels"))

WEBAPP = '''\
import errno, json, os, socket

def app(environ, start_response):
    path = environ["PATH_INFO"]
    result = {"uid": os.getuid(), "pid": os.getpid()}
    if path.startswith("/connect/"):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", int(path.rsplit("/", 1)[1])))
            result["connect"] = "ok"
        except OSError as exc:
            result["connect"] = errno.errorcode[exc.errno]
        finally:
            s.close()
    if path == "/write-code":
        try:
            open(__file__, "a").close()
            result["write"] = "ok"
        except OSError as exc:
            result["write"] = errno.errorcode[exc.errno]
    body = json.dumps(result).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''

CLIENT = '''\
import errno, sys, urllib.request

def main():
    for url in sys.argv[1:]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                print(url, r.status, r.read().decode().strip())
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            print(url, "error", errno.errorcode.get(getattr(reason, "errno", 0), reason))
    return 0
'''

CLITOOL = '''\
import errno, os, sys

def main():
    text = open("input.txt").read()
    with open("output.txt", "w") as f:
        f.write(text.upper())
    for target in sys.argv[1:]:
        try:
            open(target, "w").close()
            print(target, "ok")
        except OSError as exc:
            print(target, errno.errorcode[exc.errno])
    return 0
'''


BUILD_TIMEOUT = 180  # pip, from the wheel cache


@pytest.fixture(scope="module", autouse=True)
def app_users() -> Iterator[None]:
    """The app users the launches below create go with the module."""
    with users_removed_after("sandrun-webtest", "sandrun-fetcher", "sandrun-clitool",
                             "sandrun-cext"):
        yield


@pytest.fixture(scope="module")
def base(require_root: None, require_landlock: int, require_seccomp: None) -> Iterator[Path]:
    # Not under /tmp: the sandbox's /tmp is private, so a path there would be absent
    # (ENOENT) inside rather than denied by Landlock, which is what these tests show.
    path = Path(tempfile.mkdtemp(prefix="sandrun-profiles-", dir="/var/lib"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cached_wheels(*names: str) -> Path:
    """Wheels from PyPI, cached between runs (CI reaches PyPI)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not list(WHEEL_CACHE.glob(f"{n}-*.whl"))]
    if missing:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                               "-d", str(WHEEL_CACHE), *missing], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    return WHEEL_CACHE


def bundle_app(base: Path, module: str, source: str, profile: str) -> Path:
    """Bundle a one-module app (`module:main`) with a shipped profile."""
    wheels = base / f"{module}-wheels"
    make_wheel(wheels, module, "1.0", {f"{module}.py": source})
    bundle = base / f"{module}.pyz"
    proc = run_sandrun("bundle", module, "--no-index", "--find-links", str(wheels),
                       "-e", f"{module}:main", "-p", profile, "-o", str(bundle),
                       timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return bundle


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def get_json(url: str) -> dict:
    import json

    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def web_profile_on(base: Path, port: int) -> Path:
    """The shipped `web` profile with its one port (8000) replaced by `port`, every other
    rule the same: the operator's profile for `exec -p`, so the test never needs port
    8000 itself, which another program may hold."""
    text = shipped_profile_path("web").read_text()
    assert text.count("bind_tcp = [8000]") == 1, "the shipped web profile no longer binds 8000"
    path = base / f"web-{port}.toml"
    path.write_text(text.replace("bind_tcp = [8000]", f"bind_tcp = [{port}]"))
    return path


@pytest.mark.network
def test_web_profile_serves_gunicorn(base: Path) -> None:
    wheels = base / "web-wheels"
    make_wheel(wheels, "webapp", "1.0", {"webapp.py": WEBAPP})
    bundle = base / "web.pyz"
    proc = run_sandrun("bundle", "gunicorn", "webapp", "--find-links", str(wheels),
                       "--find-links", str(cached_wheels("gunicorn")), "-c", "gunicorn",
                       "-p", "web", "--name", "webtest", "-o", str(bundle),
                       timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    port, other_bind = free_ports(2)
    profile = web_profile_on(base, port)  # -p: the operator's choice, no approval needed
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    other_port = listener.getsockname()[1]
    server = subprocess.Popen(
        sandrun_argv("exec", "--store", str(base / "store"), "-p", str(profile), str(bundle),
                     "--", "-b", f"127.0.0.1:{port}", "-w", "2", "webapp:app"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, server)
        info = get_json(f"{url}/")
        assert info["uid"] != 0
        assert get_json(f"{url}/connect/{other_port}")["connect"] == "EACCES"
        assert get_json(f"{url}/write-code")["write"] == "EACCES"
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=30)
        listener.close()
    assert server.returncode == 0, err
    # A second port is refused: the profile binds its one port only.
    refused = run_sandrun("exec", "--store", str(base / "store"), "-p", str(profile),
                          str(bundle), "--", "-b", f"127.0.0.1:{other_bind}", "webapp:app",
                          timeout=60)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr


def approve(base: Path, bundle: Path) -> None:
    """The shipped profiles other than `default` grant more: the operator approves them."""
    proc = run_sandrun("approve", "--store", str(base / "store"), "--yes", str(bundle))
    assert proc.returncode == 0, proc.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"served by the test\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve_on_a_client_port() -> http.server.HTTPServer:
    """A test server on 127.0.0.1:80, or :443 if 80 is taken: the ports the client profile
    grants (plain HTTP on either). Skips when another program holds both."""
    for port in (80, 443):
        try:
            return http.server.HTTPServer(("127.0.0.1", port), _Handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    pytest.skip("ports 80 and 443 on 127.0.0.1 are both held by other programs: the client "
                "profile grants connect to these two only, so the test must serve on one")


def test_client_profile_connects_to_its_ports_only(base: Path) -> None:
    bundle = bundle_app(base, "fetcher", CLIENT, "client")
    approve(base, bundle)
    servers = [_serve_on_a_client_port(), http.server.HTTPServer(("127.0.0.1", 0), _Handler)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    granted, other = (srv.server_address[1] for srv in servers)
    try:
        run = run_sandrun("exec", "--store", str(base / "store"), str(bundle),
                          f"http://127.0.0.1:{granted}/", f"http://127.0.0.1:{other}/")
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"http://127.0.0.1:{granted}/ 200 served by the test"
    assert lines[1] == f"http://127.0.0.1:{other}/ error EACCES"


def test_cli_profile_works_in_its_directory_only(base: Path) -> None:
    bundle = bundle_app(base, "clitool", CLITOOL, "cli")
    approve(base, bundle)
    work = base / "work"
    work.mkdir()
    (work / "input.txt").write_text("shout\n")
    # The first run creates the app user; it must own the work dir for plain permissions
    # to allow writing there. Outside stays denied by Landlock though world-writable.
    outside = base / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    first = run_sandrun("exec", "--store", str(base / "store"), str(bundle), cwd=work)
    user = pwd.getpwnam("sandrun-clitool")
    os.chown(work, user.pw_uid, user.pw_gid)
    run = run_sandrun("exec", "--store", str(base / "store"), str(bundle),
                      str(work / "extra.txt"), str(outside / "escape.txt"), cwd=work)
    assert run.returncode == 0, (first.stderr, run.stderr)
    assert (work / "output.txt").read_text() == "SHOUT\n"
    assert run.stdout.splitlines() == [f"{work}/extra.txt ok", f"{outside}/escape.txt EACCES"]


CEXT = """\
import ctypes, json, sys

def main():
    import greenlet, cffi
    out = {}
    main_g = greenlet.getcurrent()
    def child():
        out["greenlet"] = "switched"
        main_g.switch()
    greenlet.greenlet(child).switch()
    ffi = cffi.FFI()
    ffi.cdef("size_t strlen(const char *);")
    out["cffi_strlen"] = ffi.dlopen(None).strlen(b"hello")
    try:
        cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                               ctypes.POINTER(ctypes.c_int))(lambda a, b: a[0] - b[0])
        arr = (ctypes.c_int * 3)(9, 7, 8)
        ctypes.CDLL(None).qsort(arr, 3, ctypes.sizeof(ctypes.c_int), cmp)
        out["ctypes_callback"] = list(arr)
    except MemoryError:
        out["ctypes_callback"] = "MemoryError"
    print(json.dumps(out))
    return 0
"""


@pytest.mark.network
def test_c_extensions_run_under_default_profile(base: Path) -> None:
    """cffi and greenlet (C extensions from manylinux wheels) work under the default
    profile. ctypes/cffi *callbacks* need memory that is writable and executable (libffi
    3.4 tries an RWX mapping, then a memfd mapped twice): the default profile (MDWE, no
    memfd_create) refuses that, and `mdwe = false` allows it."""
    wheels = base / "cext-wheels"
    make_wheel(wheels, "cext", "1.0", {"cext.py": CEXT})
    bundle = base / "cext.pyz"
    proc = run_sandrun("bundle", "cext", "cffi", "greenlet", "--find-links", str(wheels),
                       "--find-links", str(cached_wheels("cffi", "greenlet", "pycparser")),
                       "-e", "cext:main", "-o", str(bundle), timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    import json

    run = run_sandrun("exec", "--store", str(base / "store"), str(bundle))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"greenlet": "switched", "cffi_strlen": 5,
                                      "ctypes_callback": "MemoryError"}
    jit = base / "jit.toml"
    jit.write_text('extends = "default"\ndescription = "callbacks"\n[process]\nmdwe = false\n')
    run = run_sandrun("exec", "--store", str(base / "store"), "-p", str(jit), str(bundle))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ctypes_callback"] == [7, 8, 9]
