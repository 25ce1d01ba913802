#!/usr/bin/env python3
"""sandrun benchmarks (issues 5 and 17): same machine, one run, medians over repeated runs.

    .venv/bin/python benchmarks/bench.py              # as root: everything, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench.py --quick      # fewer apps and repetitions
    .venv/bin/python benchmarks/bench.py --only corpus-warm,rss --output /tmp/b.md

Sections (each can be picked with --only):
  warm     warm start of examples/hello: `sandrun exec` vs shiv, a venv, bwrap and firejail,
           and where sandrun's own time goes (interpreter, imports, app, the rest)
  httpbin  examples/httpbin under gunicorn: launch -> first HTTP 200, requests per second
  seccomp  cost per syscall of sandrun's seccomp filter (C loop of getppid / ioctl)
  cold     first launch into an empty store vs shiv's first run (fresh SHIV_ROOT)
  bundle   `sandrun bundle` vs `shiv` on the same wheelhouse; `sandrun verify` MB/s
  corpus-warm, corpus-cold, rss, build
           issue 17's goals on the real apps of tests/corpus (benchmarks/corpus.py):
           warm and cold launches against a venv, pip, shiv, pex, bwrap and firejail; what
           sandrun keeps resident next to a server; build time and peak memory

The sandrun measured is, by default, the working tree installed as README "Install" says
(a venv of Debian's python3 and a regular pip install, in the work dir): `--install dev`
measures the editable install next to this interpreter instead.

Standard library only; not a unit test. Runs as root (sandrun exec switches users).
Wheels come from PyPI once into ~/.cache/sandrun-tests/wheels (shared with the tests);
every bundle is then built with --no-index --find-links. Missing tools (bwrap, firejail,
wrk/ab, gcc) are reported with the apt-get command that installs them, and their rows are
skipped. Every wait is bounded (timeouts); servers of the corpus take free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import pwd
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SYSTEM_PYTHON = "/usr/bin/python3"
WHEELS = Path(os.environ.get("SANDRUN_TEST_WHEELS",
                             Path.home() / ".cache" / "sandrun-tests" / "wheels"))
REQUIREMENTS = ("httpbin==0.10.4", "gunicorn==27.0.1", "flask", "numpy", "setuptools>=61")
PORT = 8000  # examples/httpbin/httpbin.toml binds only this port
APT = {"bwrap": "bubblewrap", "firejail": "firejail", "wrk": "wrk", "ab": "apache2-utils",
       "gcc": "gcc"}
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
HELLO_MAIN = "import sys, hello; sys.exit(hello.main())"  # hello has no __main__.py
SECTIONS = ("warm", "httpbin", "seccomp", "cold", "bundle", "corpus-warm", "corpus-cold",
            "rss", "build")
# The issue-17 sections need the corpus (benchmarks/corpus.py).
CORPUS_SECTIONS = ("corpus-warm", "corpus-cold", "rss", "build")
LOAD_AT_START = os.getloadavg()  # other work on the machine skews every number

LOOP_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* loop N KIND: N raw syscalls (libc's syscall(2), so nothing is cached), ns per call */
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    const char *kind = argc > 2 ? argv[2] : "getppid";
    int nr = strcmp(kind, "ioctl") == 0 ? SYS_ioctl : SYS_getppid;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (nr == SYS_ioctl)
            syscall(SYS_ioctl, -1, FIONREAD, 0); /* EBADF; the filter checks the cmd arg */
        else
            syscall(SYS_getppid);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.2f\n", ns / n);
    return 0;
}
"""

LOOP_APP = '''\
import subprocess, sys

def main():
    loop, n, kind, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for _ in range(reps):
        out = subprocess.run([loop, n, kind], capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)
    return 0
'''


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ statistics, tables

def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    sections: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: list[list[str]] = field(default_factory=list)  # what, sandrun, reference, ratio

    def add(self, name: str, text: str) -> None:
        self.sections[name] = text
        print(f"\n{text}\n", flush=True)


# ------------------------------------------------------------------ running things

def which(tool: str) -> str | None:
    path = shutil.which(tool)
    if path is None:
        print(f"bench: {tool} is missing: install it with `apt-get install -y {APT[tool]}`",
              file=sys.stderr)
    return path


def sandrun_cmd() -> list[str]:
    script = Path(sys.executable).parent / "sandrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sandrun"]


def python_script(script: Path) -> list[str]:
    """What to put after `python [-X importtime | -m cProfile ...]` to run the Python side
    of `script`: itself, or when it is the native front (an ELF), the entry script it
    falls back to (sandrun-py next to it)."""
    with open(script, "rb") as f:
        native = f.read(4) == b"\x7fELF"
    return [str(script.parent / "sandrun-py")] if native else [str(script)]


SANDRUN = sandrun_cmd()
SANDRUN_PY = sys.executable  # the interpreter of the sandrun measured
# (not `-m sandrun`, which adds runpy's imports)
SANDRUN_SCRIPT = python_script(Path(SANDRUN[0])) if len(SANDRUN) == 1 else ["-m", "sandrun"]


def background_compiles() -> list[int]:
    """Pids of the bytecode compiles cold `sandrun exec` runs leave running after the
    launch (comm `sandrun-compile`)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                line = Path(f"/proc/{entry}/stat").read_text()
                if line[line.index("(") + 1:line.rindex(")")] == "sandrun-compile" and \
                        line.rpartition(")")[2].split()[0] != "Z":
                    found.append(int(entry))
    return found


def wait_for_compiles(timeout: float = 600) -> float:
    """Wait until no cold start's bytecode compile runs (none may overlap the next
    measured run, or have its store removed under it); the seconds waited."""
    start = time.perf_counter()
    while background_compiles() and time.perf_counter() - start < timeout:
        time.sleep(0.005)
    return time.perf_counter() - start


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        user: pwd.struct_passwd | None = None, timeout: float = 900,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    kw: dict = {}
    if user is not None:
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.run(list(cmd), env=env or BASE_ENV, cwd=cwd, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kw)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                         f"{(proc.stderr or '')[-3000:]}")
    return proc


def timed(cmd: Sequence[str], **kw: object) -> float:
    start = time.perf_counter()
    run(cmd, capture=False, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - start


@dataclass
class Variant:
    name: str
    cmd: list[str]
    env: dict[str, str] | None = None
    user: pwd.struct_passwd | None = None
    before: Callable[[], None] | None = None  # untimed, before each run
    times: list[float] = field(default_factory=list)


def measure(variants: list[Variant], runs: int, warmup: int = 2) -> None:
    """Interleaved: one run of each variant per round, so drift hits all alike."""
    for v in variants:
        for _ in range(warmup):
            if v.before:
                v.before()
            timed(v.cmd, env=v.env, user=v.user)
    for _ in range(runs):
        for v in variants:
            if v.before:
                v.before()
            v.times.append(timed(v.cmd, env=v.env, user=v.user))


def http_status(url: str, timeout: float = 2) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except OSError:
        return 0


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def server(cmd: Sequence[str], env: dict[str, str], timeout: float = 120
           ) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start a server, yield (process, seconds from launch to the first 200 on /get)."""
    deadline = time.monotonic() + 10
    while not port_free(PORT):
        if time.monotonic() > deadline:
            raise BenchError(f"port {PORT} stays busy: stop what listens there")
        time.sleep(0.05)
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            while http_status(f"http://127.0.0.1:{PORT}/get") != 200:
                if proc.poll() is not None:
                    log.seek(0)
                    raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                     f"{log.read().decode(errors='replace')[-3000:]}")
                if time.perf_counter() - start > timeout:
                    raise BenchError(f"no HTTP 200 within {timeout} s from {' '.join(cmd)}")
                time.sleep(0.003)
            yield proc, time.perf_counter() - start
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def sandrun_package_parent() -> str:
    """The directory the measured sandrun's package is imported from."""
    out = run([SANDRUN_PY, "-I", "-c", "import sandrun, os; "
               "print(os.path.dirname(os.path.dirname(os.path.realpath(sandrun.__file__))))"])
    return out.stdout.strip()


def use_sandrun(how: str, work: Path) -> str:
    """Point SANDRUN (and SANDRUN_PY, SANDRUN_SCRIPT) at the sandrun to measure; return
    how it was installed. `readme`: the working tree installed as README "Install" says
    (`python3 -m venv` of Debian's python3 + a regular `pip install`, root-owned), in the
    work dir; `dev`: the console script next to this interpreter (the editable install);
    else the path of a `sandrun` executable."""
    global SANDRUN, SANDRUN_PY, SANDRUN_SCRIPT
    if how == "dev":
        return f"the console script next to {sys.executable} (editable install)"
    if how == "readme":
        src = work / "sandrun-src"
        junk = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__",
                                      ".mypy_cache", ".pytest_cache", ".ruff_cache")

        def ignore(directory: str, names: list[str]) -> set[str]:
            top = Path(directory).resolve() == REPO  # build/ and dist/ of the checkout only
            return set(junk(directory, names)) | ({"build", "dist"} & set(names) if top
                                                  else set())

        shutil.copytree(REPO, src, ignore=ignore)
        venv = work / "sandrun-install"
        run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
        print("bench: installing the working tree as README says (python3 -m venv + pip "
              "install)", flush=True)
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             str(src)], env={**os.environ}, timeout=900)
        script = venv / "bin" / "sandrun"
        described = (f"the working tree, installed as README \"Install\" says: `python3 -m venv "
                     f"{venv}` + `pip install` (regular, not editable)")
    else:
        script = Path(how).resolve()
        described = f"{how}"
    if not script.exists():
        raise BenchError(f"no sandrun at {script}")
    SANDRUN, SANDRUN_SCRIPT = [str(script)], python_script(script)
    SANDRUN_PY = str(script.parent / "python")
    return described


# ------------------------------------------------------------------ inputs

def wheelhouse() -> Path:
    WHEELS.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "-d", str(WHEELS)]
    try:
        run([*base, "--no-index", "--find-links", str(WHEELS), *REQUIREMENTS])
    except BenchError:
        print(f"bench: downloading wheels into {WHEELS}", flush=True)
        run([*base, *REQUIREMENTS], env={**os.environ})  # the pip configuration (certs)
    return WHEELS


def copy_project(src: Path, dest: Path) -> Path:
    """`sandrun bundle DIR` builds in place and a stale build/ leaks into the wheel:
    always bundle a clean copy."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info",
                                                             "__pycache__"))
    return dest


def make_wheel(dest: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel (with a RECORD sandrun checks)."""
    import base64
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    info = f"{name}-1.0.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    entries[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                                "Tag: py3-none-any\n")
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in entries.items():
            zf.writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), text)
    return wheel


@dataclass
class Inputs:
    work: Path
    wheels: Path
    local: Path  # locally built wheels (hello, attack-free helpers)
    bundles: dict[str, Path] = field(default_factory=dict)

    def bundle(self, key: str, *args: str) -> Path:
        if key not in self.bundles:
            out = self.work / f"{key}.pyz"
            run([*SANDRUN, "bundle", *args, "--no-index", "--find-links", str(self.wheels),
                 "--find-links", str(self.local), "-o", str(out)])
            self.bundles[key] = out
        return self.bundles[key]

    def hello(self) -> Path:
        if "hello" not in self.bundles:
            src = copy_project(EXAMPLES / "hello", self.work / "hello-src")
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                 "--find-links", str(self.wheels), "-w", str(self.local), str(src)])
        return self.bundle("hello", "hello", "-c", "hello")

    def httpbin(self) -> Path:
        return self.bundle("httpbin", "httpbin", "gunicorn", "-c", "gunicorn", "--name",
                           "httpbin", "-p", str(EXAMPLES / "httpbin" / "httpbin.toml"))


BENCH_USER_PREFIX = "benchrun-"  # benchmarks/corpus.py's too; removed at the end


def app_user(name: str) -> pwd.struct_passwd:
    """The bench's user for app `name`, made if missing (a system account with its own
    group, no home, no shell, as sandrun makes them) and given with --user: the tests of
    other sessions remove the sandrun-* users made while they ran."""
    user = f"{BENCH_USER_PREFIX}{name}"[:32]
    try:
        return pwd.getpwnam(user)
    except KeyError:
        run(["/usr/sbin/useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user])
        return pwd.getpwnam(user)


def sandrun_exec(app: str, *rest: str) -> list[str]:
    """`sandrun exec --user <the bench's user for app> REST...`."""
    return [*SANDRUN, "exec", "--user", app_user(app).pw_name, *rest]


def shiv_env(root: Path, **extra: str) -> dict[str, str]:
    return {**BASE_ENV, "SHIV_ROOT": str(root), **extra}


def hello_venv(inp: Inputs) -> Path:
    venv = inp.work / "venv-hello"
    if not venv.exists():
        inp.hello()
        run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)])
        run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "-q", "--no-index", "--no-deps", *map(str, inp.local.glob("hello-*.whl"))])
    return venv


# ------------------------------------------------------------------ 1. warm start

def bwrap_cmd(bwrap: str, venv: Path, work: Path) -> list[str]:
    return [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/sbin", "/sbin", "--ro-bind", "/etc/ld.so.cache",
            "/etc/ld.so.cache", "--ro-bind", str(venv), str(venv), "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent",
            "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
            "--chdir", "/"]


FIREJAIL_ARGS = ["--quiet", "--noprofile", "--caps.drop=all", "--nonewprivs", "--seccomp",
                 "--net=none", "--private-tmp"]


def _importtime(args: Sequence[str], env: dict[str, str]) -> dict[str, float]:
    """Top-level modules -> cumulative import seconds, from one `-X importtime` run."""
    proc = subprocess.run([SANDRUN_PY, "-X", "importtime", *args], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(proc.stderr[-2000:])
    found = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and (not m.group(3) or m.group(4).startswith("__editable__")):
            # top level (no indentation), and setuptools' editable-install finder wherever
            # it sits (under site): its cost is an artefact of `pip install -e .`
            found[m.group(4)] = int(m.group(2)) / 1e6
    return found


def importtime(cmd_tail: Sequence[str], runs: int
               ) -> tuple[float, float, list[tuple[str, float]]]:
    """Median import seconds of `sandrun CMD...`: (at interpreter start, i.e. what
    `python -c pass` imports too, such as site and .pth files; the launcher's own on top),
    and the top-level modules by median cumulative seconds."""
    at_start = set(_importtime(["-c", "pass"], BASE_ENV))
    startup, own = [], []
    per_module: dict[str, list[float]] = {}
    for _ in range(runs):
        found = _importtime([*SANDRUN_SCRIPT, *cmd_tail], BASE_ENV)
        top_level = {k: v for k, v in found.items() if not k.startswith("__editable__")}
        startup.append(sum(v for k, v in top_level.items() if k in at_start))
        own.append(sum(v for k, v in top_level.items() if k not in at_start))
        for name, value in found.items():
            per_module.setdefault(name, []).append(value)
    top = sorted(((name, statistics.median(v)) for name, v in per_module.items()),
                 key=lambda kv: -kv[1])
    return statistics.median(startup), statistics.median(own), top[:12]


def cprofile_top(cmd_tail: Sequence[str], work: Path, count: int = 14, *,
                 by_self: bool = False) -> list[str]:
    """One `python -m cProfile <sandrun> CMD...`: sandrun's functions by cumulative time,
    or (by_self) any function, C ones included, by its own time."""
    import pstats

    out = work / "sandrun.prof"
    out.unlink(missing_ok=True)
    run([SANDRUN_PY, "-m", "cProfile", "-o", str(out), *SANDRUN_SCRIPT, *cmd_tail],
        capture=False)
    if not out.exists():
        return ["(no profile: the process exec'd another program before cProfile could "
                "write one)"]
    stats = pstats.Stats(str(out))
    rows = []
    for (file, line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{Path(file).name}:{line} {func}" if line else func
        if by_self:
            rows.append((tt, ct, name))
        elif "/sandrun/" in file and func != "<module>":
            rows.append((ct, tt, name))
    rows.sort(reverse=True)
    if by_self:
        return [f"{ms(tt):>7} ms self {ms(ct):>7} ms cumulative  {name}"
                for tt, ct, name in rows[:count]]
    return [f"{ms(ct):>7} ms cumulative {ms(tt):>6} ms self  {name}"
            for ct, tt, name in rows[:count]]


def bench_warm(inp: Inputs, runs: int, report: Report) -> None:
    hello = inp.hello()
    store = inp.work / "store"
    run(sandrun_exec("hello", "--store", str(store), str(hello)))  # install (cold), untimed
    first = run(sandrun_exec("hello", "--store", str(store), str(hello))).stdout
    if "read-only" not in first:
        raise BenchError(f"sandrun exec of hello did not say its code is read-only: {first}")
    shiv_root = inp.work / "shiv-warm"
    run([SYSTEM_PYTHON, str(hello)], env=shiv_env(shiv_root))  # extract once
    venv = hello_venv(inp)
    vpy = [str(venv / "bin" / "python"), "-I", "-c", HELLO_MAIN]
    variants = [
        Variant("`sandrun exec hello.pyz`", [*sandrun_exec("hello"), "--store", str(store),
                                             str(hello)]),
        Variant("`python3 hello.pyz` (shiv, extracted)", [SYSTEM_PYTHON, str(hello)],
                shiv_env(shiv_root)),
        Variant("venv: `python3 -I -c 'import hello; hello.main()'`", vpy),
    ]
    bwrap = which("bwrap")
    if bwrap:
        variants.append(Variant("venv in `bwrap --unshare-all ...`",
                                [*bwrap_cmd(bwrap, venv, inp.work), *vpy]))
    firejail = which("firejail")
    if firejail:
        variants.append(Variant(f"venv in `firejail {' '.join(FIREJAIL_ARGS[:2])} ...`",
                                [firejail, *FIREJAIL_ARGS, *vpy]))
    measure(variants, runs)
    base = statistics.median(variants[1].times)
    report.summary.append(["1. warm start, hello (median ms)",
                           ms(statistics.median(variants[0].times)),
                           f"shiv {ms(base)}; venv {ms(statistics.median(variants[2].times))}",
                           f"{statistics.median(variants[0].times) / base:.2f}x shiv"])
    rows = [[v.name, ms(statistics.median(v.times)), ms(pct(v.times, 0.9)),
             ms(min(v.times)), f"{statistics.median(v.times) / base:.2f}x"] for v in variants]
    text = ["## 1. Warm start of a trivial app (examples/hello)", "",
            f"Wall time from fork to exit, {runs} interleaved runs each after 2 warm-ups. "
            f"The app runs on {SYSTEM_PYTHON} in every row. sandrun runs it as "
            "`benchrun-hello` (--user; store installed; the warm path re-checks the launch "
            "record and the tree); the "
            "other rows run as root. bwrap: `" + " ".join(
                bwrap_cmd("bwrap", Path("VENV"), Path("."))[1:]) + "`. firejail: `firejail "
            + " ".join(FIREJAIL_ARGS) + "`.", "",
            table(["command", "median ms", "p90 ms", "min ms", "vs shiv"], rows)]
    if not bwrap:
        text.append("\nbwrap not measured: `apt-get install -y bubblewrap`.")
    if not firejail:
        text.append("\nfirejail not measured: `apt-get install -y firejail`.")
    report.add("warm", "\n".join(text))
    report.sections["warm-breakdown"] = breakdown(inp, hello, store, runs, variants[0].times)
    print(report.sections["warm-breakdown"], flush=True)


def breakdown(inp: Inputs, hello: Path, store: Path, runs: int, exec_times: list[float]
              ) -> str:
    """Where `sandrun exec hello.pyz` spends its time."""
    user = app_user("hello")
    import hashlib

    digest = hashlib.sha256(hello.read_bytes()).hexdigest()
    bootstraps = sorted(store.glob(f"apps/{digest}/.sandrun/bootstrap.py"))
    if len(bootstraps) != 1:
        raise BenchError(f"no installed tree of {hello} ({digest}) in {store}/apps")
    state = next(p for p in (store / "state").iterdir() if p.name == "hello")
    app_env = {"PATH": BASE_ENV["PATH"], "HOME": str(state), "TMPDIR": str(state / "tmp"),
               "LANG": "C.UTF-8"}
    exec_args = ["exec", "--user", user.pw_name, "--store", str(store), str(hello)]
    variants = [
        Variant("interpreter start: `python -I -S -c pass` (sandrun's venv python)",
                [SANDRUN_PY, "-I", "-S", "-c", "pass"]),
        Variant("interpreter start with site: `python -c pass` (what the console script pays)",
                [SANDRUN_PY, "-c", "pass"]),
        Variant("`sandrun --version` (click CLI)", [*SANDRUN, "--version"]),
        Variant("`sandrun exec --dry-run hello.pyz`", [*sandrun_exec("hello"), "--dry-run",
                                                       "--store", str(store), str(hello)]),
        Variant("the app alone: `python3 -I -B -S <tree>/.sandrun/bootstrap.py` (the launch's "
                "command line) as benchrun-hello, no sandbox",
                [SYSTEM_PYTHON, "-I", "-B", "-S", str(bootstraps[0])], app_env, user),
    ]
    no_site = Variant("the same launch without site: `PYTHONPATH=<repo> python -S -m sandrun "
                      "exec hello.pyz`", [SANDRUN_PY, "-S", "-m", "sandrun", *exec_args],
                      {**BASE_ENV, "PYTHONPATH": sandrun_package_parent()})
    try:
        run(no_site.cmd, env=no_site.env)
        variants.append(no_site)
    except BenchError:
        pass  # the path taken needs site-packages (click): nothing to compare
    measure(variants, runs)
    med = {v.name: statistics.median(v.times) for v in variants}
    total = statistics.median(exec_times)
    startup_imports, imports, top = importtime(exec_args, max(5, runs // 3))
    interp = med[variants[1].name]
    app = med[variants[4].name]
    rest = total - interp - imports - app
    editable = next((v for k, v in top if k.startswith("__editable__")), 0.0)
    rows = [[v.name, ms(med[v.name]), ms(pct(v.times, 0.9))] for v in variants]
    native = SANDRUN_SCRIPT[0] != SANDRUN[0]  # `sandrun` is the native front (C)
    if native:
        front = total - app
        parts = [
            ["`sandrun exec hello.pyz` (total, from section 1; served by the native front)",
             ms(total), "100%"],
            ["the app itself (bootstrap run directly as the app user)", ms(app),
             f"{app / total:.0%}"],
            ["the native front: its start, the record and tree checks, the cgroup, fork, "
             "namespaces, mounts, Landlock, seccomp, exec, wait", ms(front),
             f"{front / total:.0%}"],
        ]
    else:
        parts = []
    parts = parts or [
        ["`sandrun exec hello.pyz` (total, from section 1)", ms(total), "100%"],
        ["interpreter start with site (`python -c pass`), of which imports at start "
         f"(site, .pth files): {ms(startup_imports)} ms"
         + (f", of which the editable install's finder (`pip install -e .`): {ms(editable)} ms"
            if editable else ""), ms(interp), f"{interp / total:.0%}"],
        ["the launcher's own imports (`-X importtime`, top level, minus those at start)",
         ms(imports), f"{imports / total:.0%}"],
        ["the app itself (bootstrap run directly as the app user)", ms(app),
         f"{app / total:.0%}"],
        ["the rest: record/tree checks, user, fork, namespaces, mounts, Landlock, seccomp, "
         "exec, wait", ms(rest), f"{rest / total:.0%}"],
    ]
    try:
        profile = cprofile_top(exec_args, inp.work)
    except BenchError as exc:
        profile = [f"(cProfile failed: {exc})"]
    return "\n".join([
        "### Where `sandrun exec` spends its warm start", "",
        table(["measured separately", "median ms", "p90 ms"], rows), "",
        table(["share of the warm start", "ms", "share"], parts), "",
        ("The native front runs no Python on a warm start; what follows is its Python "
         "fallback (`sandrun-py`: other commands, cold and changed launches). "
         if native else "")
        + "Top-level imports of the launcher process (median of "
        f"{max(5, runs // 3)} runs of `python -X importtime {SANDRUN_SCRIPT[-1]} exec ...`, "
        "cumulative):",
        "", "```", *[f"{v * 1000:7.2f} ms  {name}" for name, v in top], "```", "",
        "sandrun functions by cumulative time in one `python -m cProfile .venv/bin/sandrun "
        "exec hello.pyz` (profiling inflates them; the launcher's wait for the app is "
        "included where it waits):", "", "```", *profile, "```"])


# ------------------------------------------------------------------ 2. httpbin

def pinned(cpu: int, cmd: Sequence[str]) -> list[str]:
    """`taskset -c CPU CMD` (util-linux) when there are two CPUs or more, else CMD."""
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) >= 2:
        return [taskset, "-c", str(cpu), *cmd]
    return list(cmd)


def load(url: str, seconds: int, connections: int = 4) -> dict[str, float]:
    """HTTP load from CPU 0 (the server is pinned to CPU 1): requests/s, latency p50/p99 ms."""
    wrk = shutil.which("wrk")
    if wrk:
        proc = run(pinned(0, [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                              url]), timeout=seconds + 60)
        out = proc.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

        def lat(label: str) -> float:
            m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
            if not m:
                return float("nan")
            return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]

        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise BenchError(f"wrk saw {errors.group(1)} failed responses")
        return {"rps": rps, "p50": lat("50%"), "p99": lat("99%")}
    ab = shutil.which("ab")
    if ab:
        proc = run(pinned(0, [ab, "-q", "-t", str(seconds), "-n", "10000000", "-c",
                              str(connections), url]), timeout=seconds + 60)
        out = proc.stdout
        rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p50 = re.search(r"^\s+50%\s+(\d+)", out, re.MULTILINE)
        p99 = re.search(r"^\s+99%\s+(\d+)", out, re.MULTILINE)
        return {"rps": rps, "p50": float(p50.group(1)) if p50 else float("nan"),
                "p99": float(p99.group(1)) if p99 else float("nan")}
    raise BenchError("neither wrk nor ab is installed: apt-get install -y wrk apache2-utils")


def httpbin_variants(inp: Inputs, store: Path, shiv_root: Path, workers: int
                     ) -> list[tuple[str, list[str], dict[str, str]]]:
    bundle = inp.httpbin()
    gargs = ["-b", f"127.0.0.1:{PORT}", "-w", str(workers), "httpbin:app"]
    # The example's profile asks for port 8000: the operator gives it (-p), as approving
    # the embedded one would (an approval lives in the store, which the cold runs empty).
    return [
        ("`sandrun exec httpbin.pyz`", [*sandrun_exec("httpbin"), "--store", str(store),
                                        "-p", str(EXAMPLES / "httpbin" / "httpbin.toml"),
                                        str(bundle),
                                        "--", *gargs], BASE_ENV),
        # Same gunicorn options as the profile gives the sandboxed run.
        ("`python3 httpbin.pyz` (shiv, extracted)", [SYSTEM_PYTHON, str(bundle), *gargs],
         shiv_env(shiv_root, GUNICORN_CMD_ARGS="--no-control-socket")),
    ]


def bench_httpbin(inp: Inputs, runs: int, seconds: int, report: Report) -> None:
    workers = os.cpu_count() or 2
    store, shiv_root = inp.work / "store", inp.work / "shiv-warm"
    variants = httpbin_variants(inp, store, shiv_root, workers)
    for _name, cmd, env in variants:  # install / extract once
        with server(cmd, env):
            pass
    starts: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(runs):
        for name, cmd, env in variants:
            with server(cmd, env) as (_proc, seconds_to_200):
                starts[name].append(seconds_to_200)
    # Throughput: one worker pinned to CPU 1, the client on CPU 0, so that the two do not
    # fight over the 2 cores (unpinned runs on this VM swing by +-30% between starts).
    tool = "wrk -t1 -c4" if shutil.which("wrk") else "ab -c4"
    loads: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for _ in range(runs):
        for name, cmd, env in httpbin_variants(inp, store, shiv_root, 1):
            with server(pinned(1, cmd), env):
                load(f"http://127.0.0.1:{PORT}/get", 2)  # warm-up
                loads[name].append(load(f"http://127.0.0.1:{PORT}/get", seconds))
    base_start = statistics.median(starts[variants[1][0]])
    base_rps = statistics.median(r["rps"] for r in loads[variants[1][0]])
    base_best = max(r["rps"] for r in loads[variants[1][0]])
    s_start = statistics.median(starts[variants[0][0]])
    s_rps = statistics.median(r["rps"] for r in loads[variants[0][0]])
    report.summary += [
        ["2. httpbin launch -> first 200 (median ms)", ms(s_start), f"shiv {ms(base_start)}",
         f"{s_start / base_start:.2f}x"],
        ["2. httpbin requests/s, 1 worker (median)", f"{s_rps:.0f}", f"shiv {base_rps:.0f}",
         f"{s_rps / base_rps:.2f}x"]]
    rows = []
    for name, _, _ in variants:
        rps = [r["rps"] for r in loads[name]]
        rows.append([name, ms(statistics.median(starts[name])), ms(pct(starts[name], 0.9)),
                     f"{statistics.median(starts[name]) / base_start:.2f}x",
                     f"{statistics.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f})",
                     f"{statistics.median(rps) / base_rps:.2f}x",
                     f"{max(rps):.0f} ({max(rps) / base_best:.2f}x)",
                     f"{statistics.median(r['p50'] for r in loads[name]):.2f}",
                     f"{statistics.median(r['p99'] for r in loads[name]):.2f}"])
    report.add("httpbin", "\n".join([
        "## 2. httpbin under gunicorn (examples/httpbin)", "",
        "The same bundle (httpbin + gunicorn, examples/httpbin/httpbin.toml), sync workers. "
        f"Launch -> first 200: `gunicorn -b 127.0.0.1:{PORT} -w {workers} httpbin:app`, from "
        "starting the command to the first `200` on `/get` (polled every 3 ms), median and "
        f"p90 of {runs} starts, store/SHIV_ROOT warm. Throughput: `-w 1`, the server pinned "
        f"to CPU 1 and `{tool} -d{seconds}s` on `/get` pinned to CPU 0, after a 2 s warm-up; "
        f"median (min-max) of {runs} server starts.", "",
        table(["server", "launch -> 200 median ms", "p90 ms", "vs shiv",
               "requests/s median (min-max)", "vs shiv", "best requests/s (vs shiv)",
               "latency p50 ms", "p99 ms"], rows), "",
        "Throughput swings between server starts when other work shares the 2 cores (see "
        "the load average above); the best run is the least disturbed one. Per request, "
        "the sandbox adds only its per-syscall cost (section 3): a sync worker makes a few "
        "dozen syscalls per request, i.e. a few microseconds of ~400 us."]))


# ------------------------------------------------------------------ 3. seccomp

def bench_seccomp(inp: Inputs, iterations: int, reps: int, report: Report) -> None:
    gcc = which("gcc")
    if not gcc:
        report.add("seccomp", "## 3. seccomp cost per syscall\n\nnot measured: gcc is "
                   "missing (`apt-get install -y gcc`).")
        return
    bindir = inp.work / "seccomp-bin"
    bindir.mkdir(exist_ok=True)
    bindir.chmod(0o755)
    (bindir / "loop.c").write_text(LOOP_C)
    loop = bindir / "loop"
    run([gcc, "-O2", "-o", str(loop), str(bindir / "loop.c")])
    loop.chmod(0o755)
    kinds = ("getppid", "ioctl")

    def parse(out: str) -> list[float]:
        return [float(x) for x in out.split()]

    results: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    for kind in kinds:
        results[kind]["none"] = [parse(run([str(loop), str(iterations), kind]).stdout)[0]
                                 for _ in range(reps)]
    # Control: the smallest filter there is (one RET ALLOW): what any filter costs.
    libc = ctypes.CDLL(None, use_errno=True)
    allow_all = ctypes.create_string_buffer(struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000), 8)

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    fprog = SockFprog(1, ctypes.addressof(allow_all))

    def load_allow_all() -> None:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
            os._exit(99)

    for kind in kinds:
        results[kind]["allow-all"] = [
            parse(subprocess.run([str(loop), str(iterations), kind], preexec_fn=load_allow_all,
                                 capture_output=True, text=True, check=True,
                                 env=BASE_ENV).stdout)[0] for _ in range(reps)]
    # Filter only: sandrun's default filter loaded in a forked child before exec.
    note_filter = ""
    try:
        from sandrun.sandbox import seccomp as sc

        bpf = sc.compile_filter(sc.SeccompPolicy())

        def load_filter() -> None:
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            sc.load_filter(bpf)

        for kind in kinds:
            results[kind]["filter"] = []
            for _ in range(reps):
                out = subprocess.run([str(loop), str(iterations), kind], preexec_fn=load_filter,
                                     capture_output=True, text=True, check=True, env=BASE_ENV)
                results[kind]["filter"].append(parse(out.stdout)[0])
    except Exception as exc:  # the API is being reworked; the full sandbox row still runs
        note_filter = f"filter-only row skipped ({type(exc).__name__}: {exc})"
    # The full sandbox: a bundle whose profile may execute the loop binary.
    profile = inp.work / "seccomp-bench.toml"
    profile.write_text(textwrap.dedent(f"""\
        extends = "default"
        description = "bench: may run {loop}"
        [filesystem]
        execute = ["{loop}"]
        [process]
        subprocess = true
        """))
    make_wheel(inp.local, "syscallbench", {"syscallbench.py": LOOP_APP})
    bundle = inp.bundle("syscallbench", "syscallbench", "-e", "syscallbench:main", "-p",
                        str(profile))
    # Its profile asks for more than the default one: the operator approves it once.
    run([*SANDRUN, "approve", "--store", str(inp.work / "store"), "--yes", str(bundle)])
    for kind in kinds:
        out = run([*sandrun_exec("syscallbench"), "--store", str(inp.work / "store"),
                   str(bundle), "--",
                   str(loop), str(iterations), kind, str(reps)]).stdout
        results[kind]["sandrun"] = parse(out)
    rows = []
    labels = {"none": "no filter (plain process)",
              "allow-all": "control: a 1-instruction filter (RET ALLOW), what any filter costs",
              "filter": "sandrun's default filter only (loaded before exec, no other sandbox)",
              "sandrun": "inside `sandrun exec` (profile: default + subprocess, full sandbox)"}
    for kind in kinds:
        base = statistics.median(results[kind]["none"])
        for key in ("none", "allow-all", "filter", "sandrun"):
            if key not in results[kind]:
                continue
            med = statistics.median(results[kind][key])
            rows.append([f"`{kind}`", labels[key], f"{med:.1f}", f"{min(results[kind][key]):.1f}",
                         "" if key == "none" else f"{med - base:+.1f}"])
    text = ["## 3. seccomp cost per syscall", "",
            f"A C loop of {iterations:,} raw `syscall(2)` calls (glibc cannot cache them), "
            f"median of {reps} runs, ns per call. `getppid` is allowed for every argument "
            "(the kernel's per-syscall action cache can skip the BPF program); `ioctl(-1, "
            "FIONREAD)` fails with EBADF but its command argument is checked by the filter "
            "(TIOCSTI/TIOCLINUX), so it runs the program every time.", "",
            table(["syscall", "where", "median ns/call", "min ns/call", "vs none"], rows)]
    med = {(kind, key): statistics.median(v) for kind in kinds
           for key, v in results[kind].items()}
    for kind in kinds:
        report.summary.append([f"3. `{kind}` inside sandrun exec (ns/call)",
                               f"{med[kind, 'sandrun']:.0f}",
                               f"no filter {med[kind, 'none']:.0f}; any filter "
                               f"{med[kind, 'allow-all']:.0f}",
                               f"{med[kind, 'sandrun'] - med[kind, 'none']:+.0f} ns"])
    extra = [f"`{kind}` {med[kind, 'sandrun'] - med[kind, 'allow-all']:+.1f} ns"
             for kind in kinds]
    text += ["", "What sandrun's rules cost on top of having any filter at all (inside "
             "`sandrun exec` minus the 1-instruction control): " + ", ".join(extra) + "."]
    if note_filter:
        text += ["", note_filter]
    report.add("seccomp", "\n".join(text))


# ------------------------------------------------------------------ 4. cold start

def bench_cold(inp: Inputs, runs: int, report: Report) -> None:
    hello = inp.hello()
    numpy = inp.bundle("numpy", "numpy", "-e", "numpy:show_config", "--name", "numpybench")
    fresh = inp.work / "fresh"

    def reset() -> None:
        wait_for_compiles()
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        fresh.chmod(0o755)

    rows = []
    for label, bundle in (("hello (1 wheel, 14 files)", hello),
                          ("numpy (1 wheel, 57 MB unpacked)", numpy)):
        user = "hello" if bundle == hello else "numpybench"
        run(sandrun_exec(user, "--store", str(inp.work / "store"), str(bundle)))
        variants = [
            Variant("sandrun", sandrun_exec(user, "--store", str(fresh / "store"), str(bundle)),
                    before=reset),
            Variant("shiv", [SYSTEM_PYTHON, str(bundle)], shiv_env(fresh / "shiv"),
                    before=reset),
        ]
        measure(variants, runs, warmup=1)
        s, v = (statistics.median(x.times) for x in variants)
        report.summary.append([f"4. cold first launch, {label.split(' ')[0]} (median ms)",
                               ms(s), f"shiv {ms(v)}", f"{s / v:.2f}x"])
        rows.append([label, ms(s), ms(pct(variants[0].times, 0.9)), ms(v),
                     ms(pct(variants[1].times, 0.9)), f"{s / v:.2f}x"])
    # httpbin: fresh store / SHIV_ROOT, launch -> first 200.
    starts: dict[str, list[float]] = {"sandrun": [], "shiv": []}
    workers = os.cpu_count() or 2
    for _ in range(max(3, runs // 2)):
        for key, (_, cmd, env) in zip(("sandrun", "shiv"), httpbin_variants(
                inp, fresh / "store", fresh / "shiv", workers), strict=True):
            reset()
            with server(cmd, env) as (_proc, took):
                starts[key].append(took)
    s, v = statistics.median(starts["sandrun"]), statistics.median(starts["shiv"])
    report.summary.append(["4. cold first launch, httpbin -> first 200 (median ms)", ms(s),
                           f"shiv {ms(v)}", f"{s / v:.2f}x"])
    rows.append([f"httpbin + gunicorn (15 wheels), launch -> first 200, -w {workers}", ms(s),
                 ms(pct(starts["sandrun"], 0.9)), ms(v), ms(pct(starts["shiv"], 0.9)),
                 f"{s / v:.2f}x"])
    reset()
    try:
        profile = cprofile_top(sandrun_exec("numpybench", "--store", str(fresh / "store"),
                                            str(numpy))[len(SANDRUN):], inp.work)
    except BenchError as exc:
        profile = [f"(cProfile failed: {exc})"]
    reset()
    report.add("cold", "\n".join([
        "## 4. Cold first launch", "",
        "sandrun: `sandrun exec --store <empty dir>` (read, hash, verify every entry, extract "
        "into a private temp dir, re-check, rename into the store, then launch; the app user "
        "already exists; the bytecode is compiled after the launch by a detached process, "
        "which each next run waits for before emptying the store). shiv: first run with an "
        "empty `SHIV_ROOT` (extracts site-packages, "
        f"no verification). Median of {runs} (httpbin: {max(3, runs // 2)}), the directory "
        "emptied before each run.", "",
        table(["bundle", "sandrun median ms", "p90 ms", "shiv median ms", "p90 ms",
               "sandrun/shiv"], rows), "",
        "Where a cold launch of the numpy bundle goes: sandrun functions by cumulative time "
        "in one `python -m cProfile .venv/bin/sandrun exec --store <empty dir> numpy.pyz`:",
        "",
        "```", *profile, "```"]))


# ------------------------------------------------------------------ 5. bundle + verify

def bench_bundle(inp: Inputs, runs: int, report: Report) -> None:
    shiv = Path(sys.executable).parent / "shiv"
    rows = []
    for label, reqs, script in (("flask + deps", ["flask"], "flask"),
                                ("httpbin + gunicorn", ["httpbin", "gunicorn"], "gunicorn")):
        out_s, out_v = inp.work / "b-sandrun.pyz", inp.work / "b-shiv.pyz"
        t_s, t_v = [], []
        for _ in range(runs):
            for path in (out_s, out_v):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            t_s.append(timed([*SANDRUN, "bundle", *reqs, "-c", script, "--no-index",
                              "--find-links", str(inp.wheels), "-o", str(out_s)]))
            t_v.append(timed([str(shiv), "-c", script, "-o", str(out_v), "--reproducible",
                              "--compressed", *reqs,
                              "--no-index", "--find-links", str(inp.wheels),
                              "--only-binary=:all:"]))
        s, v = statistics.median(t_s), statistics.median(t_v)
        report.summary.append([f"5. bundle {label} (median s)", f"{s:.2f}", f"shiv {v:.2f}",
                               f"{s / v:.2f}x"])
        rows.append([label, f"{s:.2f}", f"{out_s.stat().st_size / 1e3:.0f}", f"{v:.2f}",
                     f"{out_v.stat().st_size / 1e3:.0f}", f"{s / v:.2f}x"])
    out_s.unlink()
    try:
        profile = cprofile_top(["bundle", "httpbin", "gunicorn", "-c", "gunicorn",
                                "--no-index", "--find-links", str(inp.wheels), "-o",
                                str(out_s)], inp.work, 10, by_self=True)
    except BenchError as exc:
        profile = [f"(cProfile failed: {exc})"]
    numpy = inp.bundle("numpy", "numpy", "-e", "numpy:show_config", "--name", "numpybench")
    with zipfile.ZipFile(numpy) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
        entries = len(zf.infolist())
    size = numpy.stat().st_size
    verify = Variant("verify", [*SANDRUN, "verify", str(numpy)])
    version = Variant("version", [*SANDRUN, "--version"])
    measure([verify, version], max(7, runs * 2), warmup=1)
    tv, t0 = statistics.median(verify.times), statistics.median(version.times)
    report.summary.append([f"5. verify numpy bundle, {size / 1e6:.0f} MB (median s)",
                           f"{tv:.3f}", "", f"{size / 1e6 / tv:.0f} MB/s "
                           f"({unpacked / 1e6 / tv:.0f} MB/s unpacked)"])
    report.add("bundle", "\n".join([
        "## 5. Building and verifying", "",
        f"Same local wheelhouse, `--no-index`, median of {runs} builds each. sandrun: "
        "`sandrun bundle REQ... -c SCRIPT --no-index --find-links W -o out.pyz` (wheels only, "
        "RECORD checks, manifest, reproducible). shiv: `shiv -c SCRIPT -o out.pyz "
        "--reproducible --compressed REQ... --no-index --find-links W --only-binary=:all:`.",
        "", table(["app", "sandrun s", "KB", "shiv s", "KB", "sandrun/shiv"], rows), "",
        "Where `sandrun bundle httpbin gunicorn` spends its time: functions by own time in "
        "one `python -m cProfile .venv/bin/sandrun bundle ...` (pip runs in a child process: "
        "its time shows as the wait in `poll`):", "", "```", *profile, "```", "",
        f"`sandrun verify` of a numpy bundle ({size / 1e6:.1f} MB on disk, {unpacked / 1e6:.1f} "
        f"MB unpacked, {entries} entries), median of {len(verify.times)}: "
        f"**{tv:.3f} s** = {size / 1e6 / tv:.0f} MB/s of bundle ({unpacked / 1e6 / tv:.0f} MB/s "
        f"unpacked). Without the CLI's start (`sandrun --version`: {ms(t0)} ms): "
        f"{size / 1e6 / (tv - t0):.0f} MB/s of bundle, {unpacked / 1e6 / (tv - t0):.0f} MB/s "
        "unpacked."]))


# ------------------------------------------------------------------ machine, output

def first_line(cmd: Sequence[str]) -> str:
    if not shutil.which(cmd[0]):
        return f"not installed (apt-get install -y {APT.get(cmd[0], cmd[0])})"
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                      re.MULTILINE)
        cpu = m.group(1) if m else "?"
    mem = "?"
    with contextlib.suppress(OSError, AttributeError):
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    abi = ctypes.CDLL(None).syscall(444, None, 0, 1)
    libseccomp = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libseccomp2"],
                                capture_output=True, text=True, check=False).stdout or "?"
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "sandrun"],
                           capture_output=True, text=True, check=False).stdout.strip()
    rows = [
        ["kernel", f"{platform.system()} {platform.release()} ({platform.machine()}), "
                   f"Landlock ABI {abi}"],
        ["CPU", f"{cpu}, {os.cpu_count()} cores"], ["memory", mem],
        ["distribution", first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"])],
        ["app python", first_line([SYSTEM_PYTHON, "--version"]) + f" ({SYSTEM_PYTHON})"],
        ["sandrun's python", first_line([SANDRUN_PY, "--version"]) + f" ({SANDRUN_PY})"],
        ["sandrun", first_line([*SANDRUN, "--version"]) + f", git {git}"
         + (" + uncommitted changes in sandrun/" if dirty else "")],
        ["shiv", first_line([str(Path(sys.executable).parent / "shiv"), "--version"])],
        ["libseccomp", libseccomp],
        ["bwrap", first_line(["bwrap", "--version"])],
        ["firejail", first_line(["firejail", "--version"])],
        ["wrk", first_line(["wrk", "-v"])],
        ["ab", first_line(["ab", "-V"])],
        ["gcc", first_line(["gcc", "--version"])],
        ["load average at start", " ".join(f"{x:.2f}" for x in LOAD_AT_START)],
    ]
    return table(["", ""], rows)


GOALS_HEADER = ["issue 17 goal", "sandrun", "detail", "target"]


def summary_tables(report: Report) -> list[str]:
    goals = [row for row in report.summary if row[0].startswith("goal")]
    others = sorted((row for row in report.summary if not row[0].startswith("goal")),
                    key=lambda row: row[0][0])
    out = []
    if goals:
        out += ["## Issue 17: the goals", table(GOALS_HEADER, sorted(goals))]
    if others:
        out += ["## Summary", table(["measurement", "sandrun", "reference", "ratio"], others)]
    return out


def write_markdown(path: Path, report: Report, args: argparse.Namespace, started: float
                   ) -> None:
    order = ["corpus-warm", "rss", "corpus-cold", "build", "warm", "warm-breakdown",
             "httpbin", "seccomp", "cold", "bundle"]
    body = [report.sections[k] for k in order if k in report.sections]
    cmdline = " ".join([".venv/bin/python", "benchmarks/bench.py", *sys.argv[1:]])
    text = "\n\n".join([
        "# sandrun benchmarks",
        "Generated by `benchmarks/bench.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
        f"{(time.monotonic() - started) / 60:.1f} min: one machine, one run of the script, "
        "medians over repeated runs. Ratios: sandrun against the reference named (a plain "
        "venv, shiv, pip). Lower is better except requests/s.",
        *summary_tables(report),
        "## Machine", machine(),
        "## Reproduce",
        "```sh\n"
        "apt-get install -y bubblewrap firejail apache2-utils wrk gcc   # as root, bench only\n"
        ".venv/bin/python benchmarks/bench.py            # as root; rewrites BENCHMARKS.md\n"
        ".venv/bin/python benchmarks/bench.py --quick    # fewer apps and runs, to try a "
        "change\n"
        ".venv/bin/python benchmarks/bench.py --only corpus-cold,build --output /tmp/b.md\n"
        ".venv/bin/python benchmarks/bench.py --install dev   # the editable install instead\n"
        "```\n\n"
        f"This file: `{cmdline}` (runs={args.runs}). The sandrun measured: {INSTALLED_AS}. "
        "Wheels are cached in `~/.cache/sandrun-tests/wheels` and (the corpus) "
        "`~/.cache/sandrun-tests/corpus-wheels`, shared with the tests; pex is installed "
        "from PyPI into the work dir (bench only). The work dir is a fresh "
        "`/var/cache/sandrun-bench-*` (removed afterwards unless `--keep`); the app users "
        "it makes (`benchrun-*`, given with --user) are removed at the end. Port 8000 must "
        "be free (httpbin); the corpus servers take free ports.",
        *body,
        *(["## Notes", "\n".join(f"- {n}" for n in report.notes)] if report.notes else []),
    ]) + "\n"
    path.write_text(text)
    print(f"bench: wrote {path}", flush=True)


INSTALLED_AS = "the console script next to the interpreter running the bench"


def main() -> int:
    global INSTALLED_AS
    # benchmarks/corpus.py imports this module as `bench`: the one running, with its
    # globals (SANDRUN...), not a second copy.
    sys.modules.setdefault("bench", sys.modules[__name__])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21, help="repetitions for start times")
    parser.add_argument("--quick", action="store_true",
                        help="fewer apps, runs and builds, shorter loads")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--duration", type=int, default=10, help="seconds of HTTP load per run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--workdir", default="/var/cache",
                        help="where the work dir is created (default /var/cache)")
    parser.add_argument("--install", default="readme",
                        help="the sandrun measured: readme (default: the working tree "
                             "installed as the README says, into the work dir), dev (the "
                             "editable install next to this python), or a `sandrun` path")
    parser.add_argument("--no-pex", action="store_true", help="leave pex out")
    parser.add_argument("--apps", default="",
                        help="comma-separated corpus apps (spec names) to measure, of the "
                             "ones the sections use")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (sandrun exec switches to the app user): "
              ".venv/bin/python benchmarks/bench.py", file=sys.stderr)
        return 2
    if args.quick:
        args.runs, args.duration = min(args.runs, 7), min(args.duration, 3)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    for tool in ("bwrap", "firejail", "gcc"):
        which(tool)
    if not (shutil.which("wrk") or shutil.which("ab")):
        print("bench: neither wrk nor ab: apt-get install -y wrk apache2-utils", file=sys.stderr)
    started = time.monotonic()
    # Not under /tmp (firejail --private-tmp hides it) nor /var/tmp (firejail refuses to
    # run programs from there).
    work = Path(tempfile.mkdtemp(prefix="sandrun-bench-", dir=args.workdir))
    work.chmod(0o755)
    print(f"bench: work dir {work}", flush=True)
    report = Report()
    users_before = {p.pw_name for p in pwd.getpwall()}
    try:
        INSTALLED_AS = use_sandrun(args.install, work)
        print(f"bench: measuring {SANDRUN[0]} ({INSTALLED_AS})", flush=True)
        legacy = [name for name in only if name not in CORPUS_SECTIONS]
        inp = Inputs(work, wheelhouse() if legacy else WHEELS, work / "local-wheels")
        inp.local.mkdir()
        corpus_runs = max(3, args.runs // 3)
        corpus_state: dict[str, object] = {}

        def corpus_step(section: str) -> None:
            import corpus

            if "corpus" not in corpus_state:
                print("bench: bundling the corpus apps...", flush=True)
                corpus_state["corpus"] = corpus.prepare(
                    work, SANDRUN, args.quick, not args.no_pex,
                    [a.strip() for a in args.apps.split(",") if a.strip()])
            state = corpus_state["corpus"]
            if section == "corpus-warm":
                corpus.bench_corpus_warm(state, corpus_runs, report)  # type: ignore[arg-type]
            elif section == "corpus-cold":
                corpus.bench_corpus_cold(state, 2 if args.quick else 3, report)  # type: ignore[arg-type]
            elif section == "rss":
                corpus.bench_rss(state, report)  # type: ignore[arg-type]
            elif section == "build":
                corpus.bench_build(state, 1 if args.quick else 2, report)  # type: ignore[arg-type]

        steps: dict[str, Callable[[], None]] = {
            "warm": lambda: bench_warm(inp, args.runs, report),
            "httpbin": lambda: bench_httpbin(inp, max(5, args.runs // 3), args.duration, report),
            "seccomp": lambda: bench_seccomp(inp, 2_000_000, 7 if args.quick else 11, report),
            "cold": lambda: bench_cold(inp, max(5, args.runs // 2), report),
            "bundle": lambda: bench_bundle(inp, 3, report),
            **{name: (lambda name=name: corpus_step(name)) for name in CORPUS_SECTIONS},
        }
        for name in only:
            print(f"bench: {name}...", flush=True)
            try:
                steps[name]()
            except Exception as exc:
                traceback.print_exc()
                report.notes.append(f"section {name} failed: {type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc) else ''}")
        if report.summary:
            print("\n" + "\n\n".join(summary_tables(report)) + "\n", flush=True)
        write_markdown(args.output, report, args, started)
    finally:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import corpus

        corpus.cleanup(users_before)
        if args.keep:
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
