"""httpbin with a backdoor: what an attacker with code execution inside the app tries.

`attack_probe:app` is httpbin's WSGI app plus one route, GET /_probe, which really
attempts, from inside the running worker:

- to append a harmless comment line to the code of attack_probe, httpbin, flask and
  gunicorn (persistence: the next start runs the attacker's code),
- to create a new module next to httpbin's code and a `.pth` file in site-packages
  (a `.pth` runs at every interpreter start),
- to read /etc/shadow and every path given as `?read=PATH`,
- and, as a control that must work everywhere, to write a file in its HOME.

It answers JSON: {"uid": ..., "code": {module: file}, "results": {attempt: "ok" or an
errno name}}. It never returns what it read, only whether it could.

These are real attacks, so the module refuses to load as root. It exists for
tests/test_examples.py and for the comparison in this directory's README; never deploy it.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

if os.getuid() == 0 or os.geteuid() == 0:
    raise SystemExit("attack_probe refuses to run as root: its attacks are real")

import httpbin  # after the root check on purpose

MARKER = b"\n# attack_probe was here\n"
TARGETS = ("attack_probe", "httpbin", "flask", "gunicorn")


def code_files() -> dict[str, str]:
    """The __init__.py (or module file) of each target package, as loaded."""
    return {name: os.path.abspath(importlib.import_module(name).__file__ or "")
            for name in TARGETS}


def _try(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def _append(path: str) -> None:
    with open(path, "ab") as f:
        f.write(MARKER)


def _create(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


def probe(extra_reads: Iterable[str] = ()) -> dict[str, object]:
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("attack_probe refuses to run as root")
    files = code_files()
    httpbin_dir = os.path.dirname(files["httpbin"])
    site_packages = os.path.dirname(httpbin_dir)
    results: dict[str, str] = {}
    for name, path in files.items():
        results[f"write {name}"] = _try(lambda p=path: _append(p))
    results["create module next to httpbin"] = _try(
        lambda: _create(os.path.join(httpbin_dir, "attack_probe_was_here.py"), MARKER))
    results["create .pth in site-packages"] = _try(
        lambda: _create(os.path.join(site_packages, "zz_attack_probe.pth"), MARKER))
    for path in ("/etc/shadow", *extra_reads):
        results[f"read {path}"] = _try(lambda p=path: _read(p))
    home = os.environ.get("HOME", "/nonexistent")
    results["write HOME (control)"] = _try(
        lambda: _create(os.path.join(home, "attack_probe.txt"), MARKER))
    return {"uid": os.getuid(), "pid": os.getpid(), "code": files, "results": results}


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """httpbin.app, plus GET /_probe[?read=PATH...]."""
    if environ.get("PATH_INFO") != "/_probe":
        return httpbin.app(environ, start_response)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    body = json.dumps(probe(query.get("read", [])), sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1:]), indent=2, sort_keys=True))
