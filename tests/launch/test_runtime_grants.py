"""Operator grants on the command line (issue 13): -e/--env, --env-file, --read, --rw,
--bind-tcp, --connect-tcp, -w/--workdir. They need no approval (the operator gives them),
show in --dry-run, and are part of the warm record's key: a warm launch with other grants
is not served the old record.

Each grant is proven by the app attempting the access without it (EACCES) and with it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, remove_user, run_sandrun
from wheelcraft import make_wheel

APP = '''\
import errno, json, os, socket, sys

def attempt(action):
    try:
        return action() or "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def main():
    if os.getuid() == 0:
        print("refusing to run as root"); return 99
    what = {}
    for arg in sys.argv[1:]:
        kind, _, target = arg.partition(":")
        if kind == "read":
            what[arg] = attempt(lambda: open(target).read() and None)
        elif kind == "write":
            what[arg] = attempt(lambda: open(target, "w").close())
        elif kind == "connect":
            def connect():
                with socket.create_connection(("127.0.0.1", int(target)), timeout=5):
                    pass
            what[arg] = attempt(connect)
        elif kind == "env":
            what[arg] = os.environ.get(target, "<unset>")
        elif kind == "cwd":
            what[arg] = os.getcwd()
    print(json.dumps(what))
    return 0
'''

USER = "sandrun-grantsapp"


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int,
        require_seccomp: None) -> Iterator[dict[str, Path]]:
    # Not under /tmp: the sandbox's /tmp is private, so paths there would be absent.
    base = Path(tempfile.mkdtemp(prefix="sandrun-grants-", dir="/var/lib"))
    base.chmod(0o755)
    make_wheel(base / "wheels", "grantsapp", "1.0", {"grantsapp.py": APP})
    bundle = base / "grantsapp.pyz"
    proc = run_sandrun("bundle", "grantsapp", "--no-index", "--find-links",
                       str(base / "wheels"), "-e", "grantsapp:main", "-o", str(bundle))
    assert proc.returncode == 0, proc.stderr
    data = base / "data"
    data.mkdir()
    (data / "in.txt").write_text("input\n")
    out = base / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # Unix permissions allow it: only Landlock can deny
    remove_user(USER)
    yield {"base": base, "bundle": bundle, "store": base / "store", "data": data, "out": out}
    remove_user(USER)
    shutil.rmtree(base, ignore_errors=True)


def run(lab: dict[str, Path], *options: str, args: tuple[str, ...] = (),
        env: dict[str, str] | None = None) -> dict[str, str]:
    proc = run_sandrun("exec", "--store", str(lab["store"]), *options, str(lab["bundle"]),
                       *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_paths_need_the_operators_grant(lab: dict[str, Path]) -> None:
    read = f"read:{lab['data']}/in.txt"
    write = f"write:{lab['out']}/made.txt"
    assert run(lab, args=(read, write)) == {read: "EACCES", write: "EACCES"}
    assert not (lab["out"] / "made.txt").exists()
    granted = run(lab, "--read", str(lab["data"]), "--rw", str(lab["out"]), args=(read, write))
    assert granted == {read: "ok", write: "ok"}
    assert (lab["out"] / "made.txt").exists()
    # warm: the same grants again are served by the record, other grants are not
    assert run(lab, "--read", str(lab["data"]), "--rw", str(lab["out"]),
               args=(read, write)) == {read: "ok", write: "ok"}
    assert run(lab, "--read", str(lab["data"]), args=(read, write)) == {read: "ok",
                                                                       write: "EACCES"}


def test_connect_needs_the_port(lab: dict[str, Path]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        target = f"connect:{port}"
        assert run(lab, args=(target,)) == {target: "EPERM"}  # no inet sockets at all
        assert run(lab, "--connect-tcp", str(port), args=(target,)) == {target: "ok"}
        other = f"connect:{free_port()}"
        assert run(lab, "--connect-tcp", str(port), args=(other,)) == {other: "EACCES"}


def test_environment(lab: dict[str, Path], tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# settings\nFROM_FILE=1\nOVERRIDDEN=file\nPASSED_BY_FILE\n\n")
    env = {"PASSED": "from-sandrun", "PASSED_BY_FILE": "also", "NOT_PASSED": "secret"}
    asked = ("env:SET", "env:PASSED", "env:FROM_FILE", "env:OVERRIDDEN", "env:PASSED_BY_FILE",
             "env:NOT_PASSED")
    got = run(lab, "-e", "SET=x y", "-e", "PASSED", "--env-file", str(env_file),
              "-e", "OVERRIDDEN=cli", args=asked, env=env)
    assert got == {"env:SET": "x y", "env:PASSED": "from-sandrun", "env:FROM_FILE": "1",
                   "env:OVERRIDDEN": "cli", "env:PASSED_BY_FILE": "also",
                   "env:NOT_PASSED": "<unset>"}
    # warm, after the env file changed: its new content is used
    env_file.write_text("FROM_FILE=2\n")
    again = run(lab, "-e", "SET=x y", "-e", "PASSED", "--env-file", str(env_file),
                "-e", "OVERRIDDEN=cli", args=("env:FROM_FILE",), env=env)
    assert again == {"env:FROM_FILE": "2"}


def test_working_directory(lab: dict[str, Path]) -> None:
    state = lab["store"] / "state" / "grantsapp"
    assert run(lab, args=("cwd:",)) == {"cwd:": str(state)}
    assert run(lab, "-w", str(lab["data"]), "--read", str(lab["data"]),
               args=("cwd:", "read:in.txt")) == {"cwd:": str(lab["data"]), "read:in.txt": "ok"}


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--bind-tcp", "0", "not a TCP port"),
    ("--connect-tcp", "http", "not a TCP port"),
    ("-e", "1BAD=x", "not an environment variable name"),
    ("-e", "LD_PRELOAD=/x.so", "dynamic loader"),
    ("--env-file", "/nonexistent/app.env", "--env-file /nonexistent/app.env"),
])
def test_bad_grants_are_usage_errors(lab: dict[str, Path], option: str, value: str,
                                     words: str) -> None:
    store = lab["base"] / "store-usage"
    proc = run_sandrun("exec", "--store", str(store), option, value, str(lab["bundle"]))
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not store.exists()


def test_dry_run_shows_the_grants(lab: dict[str, Path]) -> None:
    proc = run_sandrun("exec", "--store", str(lab["store"]), "--dry-run", "--read",
                       str(lab["data"]), "--bind-tcp", "8443", "-e", "TOKEN=secret",
                       str(lab["bundle"]))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("operator"))
    assert f"--read {lab['data']}" in line and "--bind-tcp 8443" in line
    assert "-e TOKEN=..." in line and "secret" not in line
    assert os.path.exists(lab["store"])  # earlier tests made it; nothing new is asserted
