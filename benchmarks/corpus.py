"""Issue 17's goals measured on real apps (the corpus of tests/corpus/*.app.toml), side by
side with a plain venv, shiv, pex, bwrap and firejail. Used by bench.py (sections
corpus-warm, corpus-cold, rss, build); standard library only.

Every app is bundled once from the corpus wheel cache (~/.cache/sandrun-tests/corpus-wheels,
or $SANDRUN_CORPUS_WHEELS: the cache tests/test_corpus.py fills), as `bench-<app>`, and
run with the arguments of ONE_SHOT in a working directory holding the spec's files:

  corpus-warm  a launch of an installed app: `sandrun exec` vs the same command in a venv
               (goal 1: median <= 1.10x, none above 1.25x), shiv and pex (extracted),
               the venv under bwrap and under firejail
  corpus-cold  the first launch from nothing: `sandrun exec` into an empty store vs
               `python -m venv` + `pip install` of the same wheels + the run (goal 3:
               <= 1.0x), shiv's first run (goal 3: <= 1.5x for small apps), pex's first
               run, uv; and where a cold `sandrun exec` spends its time, by phase
  rss          servers: memory of sandrun's own processes next to the app (goal 2: <= 5
               MB per sandbox), against bwrap's
  build        `sandrun bundle` vs `shiv` vs `pex` on the same wheelhouse, per app and for
               numpy + scipy + pandas (goal 4: <= 1.0x shiv), wall time and peak memory
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bench
from bench import BASE_ENV, SYSTEM_PYTHON, BenchError, Report, ms, run, table

CORPUS = bench.REPO / "tests" / "corpus"
CORPUS_WHEELS = Path(os.environ.get("SANDRUN_CORPUS_WHEELS",
                                    Path.home() / ".cache" / "sandrun-tests" / "corpus-wheels"))
# spec (tests/corpus/<spec>.app.toml) -> the arguments of a one-shot run in the working dir
ONE_SHOT: dict[str, list[str]] = {
    "black": ["--version"], "mypy": ["--version"], "httpie": ["--version"],
    "mkdocs": ["--version"], "pytest": ["--version"], "sqlite-utils": ["--version"],
    "datasette": ["--version"], "gunicorn-sync": ["--version"], "uvicorn": ["--version"],
    "ruff": ["--version"], "lxml": [], "pillow": [], "numpy": [], "scipy": [], "pandas": [],
}
QUICK_APPS = ("black", "httpie", "lxml", "numpy", "pandas")
SERVERS = ("gunicorn-sync", "uvicorn", "aiohttp")
QUICK_SERVERS = ("gunicorn-sync",)
BIG_SET = ("numpy==2.4.6", "scipy==1.17.1", "pandas==3.1.1")
USER_PREFIX = "benchrun-"
SMALL_APP_BYTES = 10_000_000  # "small apps" of goal 3: at most this much unpacked
RUN_TIMEOUT = 300
READY_TIMEOUT = 60
MAXRSS = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE).returncode
took = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(f"{took} {peak} {code}")
"""
PHASES = """\
import functools, json, os, sys, time
start = time.perf_counter()
out = os.environ.pop("BENCH_PHASES")
marks = []
at = {}
def timed(owner, name, label=None):
    real = getattr(owner, name)
    @functools.wraps(real)
    def wrapper(*args, **kw):
        t = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            marks.append([label or name, t - start, time.perf_counter() - t])
    setattr(owner, name, wrapper)
from sandrun import cli_exec
real_options = cli_exec.options_of
def options_of(*args, **kw):  # the cold path's imports happen here: then wrap the rest
    try:
        return real_options(*args, **kw)
    finally:
        at["imported"] = time.perf_counter() - start
        from sandrun.bundle import archive, verify
        from sandrun.launch import launcher, store
        from sandrun.sandbox import seccomp
        for owner, names in ((launcher, ["decide", "materialise"]),
                             (verify.PendingVerification, ["__init__"]),
                             (archive.BackgroundHashes, ["collect"]),
                             (seccomp, ["compile_filter"]),
                             (store.Store, ["install", "check_tree", "save_tree_snapshot"]),
                             (store, ["_run_jobs", "_sync_file_system"])):
            for name in names:
                timed(owner, name, "verify_manifest" if name == "__init__" else None)
cli_exec.options_of = options_of
def save():
    with open(out, "w") as f:
        json.dump({"imports": at.get("imported", 0.0), "marks": marks,
                   "at_launch": time.perf_counter() - start}, f)
real_hand = cli_exec.hand_to_front
def hand_to_front(*args, **kw):
    save()  # the cold path execs the native front, which launches
    return real_hand(*args, **kw)
cli_exec.hand_to_front = hand_to_front
from sandrun.launch import runner
real_launch = runner.launch
def launch(*args, **kw):
    save()  # the launch may exec: what came before is on record
    return real_launch(*args, **kw)
runner.launch = launch
from sandrun.__main__ import main
sys.argv = [os.environ.pop("BENCH_SANDRUN_PY"), *sys.argv[1:]]  # the front is next to it
sys.exit(main())
"""


@dataclass
class App:
    key: str
    spec: dict[str, object]
    args: list[str]
    work: Path  # its working directory (the spec's files), its user's: sandrun, bwrap
    bundle: Path | None = None
    wheels: list[Path] = field(default_factory=list)
    unpacked: int = 0
    files: int = 0
    venv: Path | None = None
    pex: Path | None = None
    profile: str = "default"
    error: str = ""

    @property
    def name(self) -> str:
        return f"bench-{self.spec['app']}"

    @property
    def root_work(self) -> Path:
        """The same files in a dir of root's, for the rows that run as root (venv, shiv,
        pex, firejail: root without capabilities writes only its own dirs)."""
        return self.work.parent.parent / "run-root" / self.key

    @property
    def user(self) -> str:
        """The app user, made by the bench and passed with --user (other sessions' tests
        remove the sandrun-* users made while they ran)."""
        return f"{USER_PREFIX}{self.key}"[:32]

    def requirements(self) -> list[str]:
        return [str(r) for r in self.spec.get("requirements", [])]  # type: ignore[attr-defined]

    def entry(self) -> list[str]:
        script = self.spec.get("console_script")
        return ["-c", str(script)] if script else ["-e", str(self.spec["entry_point"])]

    def venv_cmd(self, args: Sequence[str] | None = None) -> list[str]:
        assert self.venv is not None
        args = self.args if args is None else list(args)
        script = self.spec.get("console_script")
        if script:
            return [str(self.venv / "bin" / str(script)), *args]
        module, _, function = str(self.spec["entry_point"]).partition(":")
        return [str(self.venv / "bin" / "python"), "-c",
                f"import sys; from {module} import {function}; sys.exit({function}())", *args]

    def flags(self) -> list[str]:
        return [str(f) for f in self.spec.get("flags", [])]  # type: ignore[attr-defined]


@dataclass
class Corpus:
    work: Path
    sandrun: list[str]
    apps: list[App]
    servers: list[App]
    store: Path
    pex_bin: Path | None = None

    def exec_cmd(self, app: App, store: Path | None = None, args: Sequence[str] | None = None,
                 flags: Sequence[str] = ()) -> list[str]:
        assert app.bundle is not None
        return [*self.sandrun, "exec", "--store", str(store or self.store), "--user", app.user,
                "-p", app.profile, *app.flags(), *flags, str(app.bundle), "--",
                *(app.args if args is None else args)]


# ------------------------------------------------------------------ preparing the corpus


def load_app(key: str, work: Path) -> App:
    spec = tomllib.loads((CORPUS / f"{key}.app.toml").read_text())
    app = App(key, spec, ONE_SHOT.get(key, []), work / "run" / key)
    return app


def _source_wheel(app: App, directory: Path) -> str | None:
    sources = [str(s) for s in app.spec.get("sources", [])]  # type: ignore[attr-defined]
    if not sources:
        return None
    sys.path.insert(0, str(bench.REPO / "tests"))
    try:
        from wheelcraft import make_wheel
    finally:
        sys.path.pop(0)
    files: dict[str, str | bytes] = {}
    for source in sources:
        path = CORPUS / "src" / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            files[str(file.relative_to(CORPUS / "src"))] = file.read_bytes()
    dist = f"corpus_{str(app.spec['app']).replace('-', '_')}_src"
    make_wheel(directory, dist, "1.0", files)
    return dist


def _download(requirements: Sequence[str]) -> None:
    CORPUS_WHEELS.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(CORPUS_WHEELS)]
    try:
        run([*base, "--no-index", "--find-links", str(CORPUS_WHEELS), *requirements])
    except BenchError:
        print(f"bench: downloading {' '.join(requirements)} into {CORPUS_WHEELS}", flush=True)
        run([*base, *requirements], env={**os.environ}, timeout=900)


def prepare_app(corpus: Corpus, app: App) -> None:
    """Bundle the app (as bench-<app>), find the exact wheels it holds, write its files."""
    src = corpus.work / "src-wheels" / app.key
    dist = _source_wheel(app, src)
    _download(app.requirements())
    bundle = corpus.work / "bundles" / f"{app.key}.pyz"
    bundle.parent.mkdir(exist_ok=True)
    run([*corpus.sandrun, "bundle", *app.requirements(), *([dist] if dist else []),
         "--no-index", "--find-links", str(CORPUS_WHEELS), "--find-links", str(src),
         *app.entry(), "-p", str(app.spec.get("profile", "default")), "--name", app.name,
         "-o", str(bundle)], timeout=600)
    app.bundle = bundle
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read(".sandrun/manifest.json"))
        app.unpacked = sum(i.file_size for i in zf.infolist())
        app.files = len(zf.infolist())
    for dep in manifest["dependencies"]:
        found = [d / dep["wheel"] for d in (CORPUS_WHEELS, src) if (d / dep["wheel"]).exists()]
        if not found:
            raise BenchError(f"{app.key}: wheel {dep['wheel']} of the bundle is not in "
                             f"{CORPUS_WHEELS} or {src}")
        app.wheels.append(found[0])
    lines = str(app.spec.get("profile_lines", ""))
    app.profile = str(app.spec.get("profile", "default"))
    if lines:  # the operator's own profile: the shipped one plus the spec's lines
        path = corpus.work / f"{app.key}-profile.toml"
        path.write_text(f'extends = "{app.profile}"\ndescription = "{app.key} (bench)"\n'
                        f"{lines}")
        app.profile = str(path)
    for work in (app.work, app.root_work):
        work.mkdir(parents=True, exist_ok=True)
        for name, content in dict(app.spec.get("files", {})).items():  # type: ignore[call-overload]
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


def give_work_to_user(app: App) -> None:
    """The app's working dir belongs to its user (as an operator hands a project over)."""
    user = pwd.getpwnam(app.user)
    for path in (app.work, *app.work.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)


def make_venv(app: App, venv: Path, *, pip: str = "outer") -> list[list[str]]:
    """The commands that create a venv holding exactly the bundle's wheels: `outer` uses
    a venv without pip and the bench's pip (--python); `inner` is the literal `python -m
    venv` + its own pip; `uv` uses uv (a reference)."""
    wheels = [str(w) for w in app.wheels]
    quiet = ["-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
    if pip == "inner":
        return [[SYSTEM_PYTHON, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", *quiet, *wheels]]
    if pip == "uv":
        uv = str(Path(sys.executable).parent / "uv")
        return [[uv, "venv", "-q", "-p", SYSTEM_PYTHON, str(venv)],
                [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                 "--no-index", "--no-deps", "--no-cache", "--compile-bytecode", *wheels]]
    return [[SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)],
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
             "install", *quiet, *wheels]]


def pip_env() -> dict[str, str]:
    return {**BASE_ENV, "PIP_NO_INDEX": "1", "UV_NO_CONFIG": "1", "UV_OFFLINE": "1"}


def prepare(work: Path, sandrun: list[str], quick: bool, pex: bool,
            only: Sequence[str] = ()) -> Corpus:
    keys = [k for k in ONE_SHOT if k in only] if only else list(QUICK_APPS if quick
                                                                   else ONE_SHOT)
    servers = [k for k in SERVERS if k in only] if only else list(QUICK_SERVERS if quick
                                                                  else SERVERS)
    corpus = Corpus(work, sandrun, [load_app(k, work) for k in keys], [], work / "corpus-store")
    by_key = {a.key: a for a in corpus.apps}
    corpus.servers = [by_key.get(k) or load_app(k, work) for k in servers]
    for name in ("run", "run-root"):
        (work / name).mkdir(exist_ok=True)
        (work / name).chmod(0o755)
    if pex:
        corpus.pex_bin = install_pex(work)
    unique = {a.key: a for a in [*corpus.apps, *corpus.servers]}
    for app in unique.values():
        try:
            prepare_app(corpus, app)
            ensure_user(corpus, app)
            if app.key in ONE_SHOT:  # install (untimed), and see that it runs
                run(corpus.exec_cmd(app), cwd=app.work, timeout=RUN_TIMEOUT)
            app.venv = work / "venvs" / app.key
            for cmd in make_venv(app, app.venv):
                run(cmd, env=pip_env(), timeout=600)
            if corpus.pex_bin is not None:
                try:
                    app.pex = build_pex(corpus, app, work / "pex" / f"{app.key}.pex")[0]
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    print(f"bench: no pex of {app.key}: {failure(exc)}",
                          file=sys.stderr, flush=True)
        except (BenchError, subprocess.TimeoutExpired, OSError, KeyError) as exc:
            app.error = failure(exc)
            print(f"bench: {app.key} left out: {app.error}", file=sys.stderr, flush=True)
    corpus.apps = [a for a in corpus.apps if not a.error]
    corpus.servers = [a for a in corpus.servers if not a.error]
    return corpus


def ensure_user(corpus: Corpus, app: App) -> pwd.struct_passwd:
    """The app's user (a system account with its own group, no home, no shell: what
    sandrun makes), made if missing; its working dir is its own."""
    try:
        pwd.getpwnam(app.user)
    except KeyError:
        run(["/usr/sbin/useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", app.user])
    give_work_to_user(app)
    return pwd.getpwnam(app.user)


def reset_work(app: App) -> None:
    """Remove what earlier runs left in the app's working dir (outputs written by root
    would stop the app user's run): only the spec's files stay."""
    for work in (app.work, app.root_work):
        keep = {work / str(name) for name in dict(app.spec.get("files", {}))}  # type: ignore[call-overload]
        keep |= {parent for path in keep for parent in path.parents}
        for path in sorted(work.rglob("*"), reverse=True):
            if path in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def install_pex(work: Path) -> Path | None:
    """pex in a venv of its own, for the bench only (PyPI, or the pip configuration)."""
    venv = work / "pex-venv"
    try:
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             "pex"], env={**os.environ}, timeout=600)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench: pex could not be installed, its rows are left out: {exc}",
              file=sys.stderr)
        return None
    return venv / "bin" / "pex"


def pex_cmd(corpus: Corpus, requirements: Sequence[str], entry: Sequence[str], out: Path,
            find_links: Sequence[Path]) -> list[str]:
    assert corpus.pex_bin is not None
    kind, value = entry
    return [str(corpus.pex_bin), "--python", SYSTEM_PYTHON, "--no-pypi",
            *[x for d in find_links for x in ("-f", str(d))], *requirements,
            "--script" if kind == "-c" else "--entry-point", value, "-o", str(out)]


def build_pex(corpus: Corpus, app: App, out: Path) -> tuple[Path, list[str]]:
    out.parent.mkdir(exist_ok=True)
    src = corpus.work / "src-wheels" / app.key
    dist = [f"corpus_{str(app.spec['app']).replace('-', '_')}_src"] if src.exists() else []
    cmd = pex_cmd(corpus, [*app.requirements(), *dist], app.entry(), out,
                  [CORPUS_WHEELS, src])
    run(cmd, env={**BASE_ENV, "PEX_ROOT": str(corpus.work / "pex-root-build")}, timeout=900)
    return out, cmd


def cleanup(existing_users: set[str]) -> None:
    """Remove the app users (and groups) this run made."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(USER_PREFIX) and entry.pw_name not in existing_users:
            subprocess.run(["/usr/sbin/userdel", entry.pw_name], capture_output=True, check=False)
            subprocess.run(["/usr/sbin/groupdel", entry.pw_name], capture_output=True, check=False)


# ------------------------------------------------------------------ timing helpers


@dataclass
class Row:
    name: str
    cmds: list[list[str]]  # run in sequence, timed together
    env: dict[str, str] | None = None
    cwd: Path | None = None
    before: Callable[[], None] | None = None
    app: App | None = None  # its working dir is reset before each run
    user: pwd.struct_passwd | None = None
    times: list[float] = field(default_factory=list)

    def once(self) -> float:
        if self.before:
            self.before()
        if self.app is not None:
            reset_work(self.app)
        start = time.perf_counter()
        for cmd in self.cmds:
            run(cmd, env=self.env, cwd=self.cwd, capture=False, timeout=RUN_TIMEOUT,
                user=self.user)
        return time.perf_counter() - start


OPTIONAL_ROWS = ("pex", "bwrap", "firejail", "uv")  # their failure leaves only them out


def interleave(rows: list[Row], runs: int, warmup: int, notes: list[str] | None = None,
               label: str = "") -> None:
    """One run of each row per round; a failing optional row is dropped (with a note),
    any other failure is raised."""
    def attempt(row: Row) -> float | None:
        try:
            return row.once()
        except (BenchError, subprocess.TimeoutExpired) as exc:
            if row.name not in OPTIONAL_ROWS:
                raise
            rows.remove(row)
            if notes is not None:
                notes.append(f"{label}: {row.name} left out: {failure(exc)}")
            return None

    for row in list(rows):
        for _ in range(warmup):
            if attempt(row) is None:
                break
    for _ in range(runs):
        for row in list(rows):
            took = attempt(row)
            if took is not None:
                row.times.append(took)


def med(row: Row | None) -> float:
    return statistics.median(row.times) if row is not None and row.times else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b == b and a == a and b > 0 else ""


def fresh(path: Path) -> Callable[[], None]:
    def reset() -> None:
        bench.wait_for_compiles()  # a cold start's bytecode, compiled after its launch
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        path.chmod(0o755)
    return reset


# ------------------------------------------------------------------ goal 1: warm launches


def bwrapped(bwrap: str, app: App, cmd: list[str], *extra: str) -> list[str]:
    """cmd (of the app's venv) under bwrap, the working dir bound read-write."""
    base = bench.bwrap_cmd(bwrap, app.venv, app.work)  # type: ignore[arg-type]
    base = base[:base.index("--chdir")]  # one --chdir: the working dir
    return [*base, *extra, "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--bind", str(app.work), str(app.work), "--chdir", str(app.work), *cmd]


def failure(exc: BaseException) -> str:
    """The command that failed and the end of what it said, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return repr(exc)
    tail = [line for line in lines[1:] if not line.startswith("hint:")][-2:]
    return lines[0][:200] + (": " + " / ".join(tail) if tail else "")


def bench_corpus_warm(corpus: Corpus, runs: int, report: Report) -> None:
    bwrap, firejail = shutil.which("bwrap"), shutil.which("firejail")
    rows_out = []
    ratios: dict[str, float] = {}
    for app in corpus.apps:
        try:
            ensure_user(corpus, app)
        except KeyError as exc:
            report.notes.append(f"corpus-warm: {app.key} left out: no user {exc}")
            continue
        shiv_root = corpus.work / "shiv-warm" / app.key
        pex_root = corpus.work / "pex-warm" / app.key
        rows = [
            Row("sandrun", [corpus.exec_cmd(app)], cwd=app.work),
            Row("venv", [app.venv_cmd()], cwd=app.root_work),
            Row("shiv", [[SYSTEM_PYTHON, str(app.bundle), *app.args]],
                bench.shiv_env(shiv_root), cwd=app.root_work),
        ]
        if app.pex is not None:
            rows.append(Row("pex", [[SYSTEM_PYTHON, str(app.pex), *app.args]],
                            {**BASE_ENV, "PEX_ROOT": str(pex_root)}, cwd=app.root_work))
        if bwrap:  # as the app user: root in bwrap's user namespace cannot write its dir
            rows.append(Row("bwrap", [bwrapped(bwrap, app, app.venv_cmd())], cwd=app.work,
                            user=pwd.getpwnam(app.user)))
        if firejail:
            # as root (firejail refuses a program under /var for other users)
            rows.append(Row("firejail", [[firejail, *bench.FIREJAIL_ARGS,
                                          f"--read-write={app.root_work}", *app.venv_cmd()]],
                            cwd=app.root_work))
        for row in rows:
            row.app = app
        try:
            interleave(rows, runs, 2, report.notes, f"corpus-warm {app.key}")
        except (BenchError, subprocess.TimeoutExpired) as exc:
            report.notes.append(f"corpus-warm: {app.key} failed: {failure(exc)}")
            continue
        by = {r.name: r for r in rows}
        venv = med(by["venv"])
        ratios[app.key] = med(by["sandrun"]) / venv
        rows_out.append([app.key, " ".join(app.args) or "(its main)", ms(med(by["sandrun"])),
                         ms(venv), ratio(med(by["sandrun"]), venv), ms(med(by["shiv"])),
                         ms(med(by.get("pex"))) if "pex" in by else "",
                         ms(med(by.get("bwrap"))) if "bwrap" in by else "",
                         ms(med(by.get("firejail"))) if "firejail" in by else ""])
    if not ratios:
        report.add("corpus-warm", "## Warm launches of the corpus\n\nnothing measured")
        return
    values = list(ratios.values())
    worst = max(ratios, key=ratios.__getitem__)
    report.summary.append(["goal 1. warm launch / venv, corpus median (max)",
                           f"{statistics.median(values):.2f}x",
                           f"max {ratios[worst]:.2f}x ({worst}); {len(values)} apps",
                           "goal <= 1.10x (max 1.25x)"])
    report.add("corpus-warm", "\n".join([
        "## Goal 1. Warm launches of the corpus", "",
        f"{len(rows_out)} apps of tests/corpus, each with its installed tree (sandrun), its "
        "extracted SHIV_ROOT / PEX_ROOT, its venv (exactly the bundle's wheels, "
        "`python -m venv --without-pip` + `pip install --no-deps`). Median ms of "
        f"{runs} interleaved runs after 2 warm-ups, in the app's working directory (its "
        "spec's files). sandrun: `sandrun exec --user U -p PROFILE [spec flags] app.pyz -- "
        "ARGS` (U: a system account of the bench's, as sandrun makes them); venv: the "
        "console script (or `python -c` of the entry point); bwrap (as U) and firejail (as "
        "root) run the venv, options as in section 1 plus the working dir read-write; venv, "
        "shiv, pex and firejail run as root in a copy of the working dir.",
        "", table(["app", "args", "sandrun", "venv", "sandrun/venv", "shiv", "pex", "bwrap",
                   "firejail"], rows_out), "",
        f"Median sandrun/venv: **{statistics.median(values):.2f}x**, max {ratios[worst]:.2f}x "
        f"({worst})."]))


# ------------------------------------------------------------------ goal 3: cold launches


def bench_corpus_cold(corpus: Corpus, runs: int, report: Report) -> None:
    rows_out = []
    vs_pip: dict[str, float] = {}
    vs_strict: dict[str, float] = {}
    vs_shiv_small: dict[str, float] = {}
    scratch = corpus.work / "cold"
    uv = (Path(sys.executable).parent / "uv").exists()
    for app in corpus.apps:
        try:
            ensure_user(corpus, app)
        except KeyError as exc:
            report.notes.append(f"corpus-cold: {app.key} left out: no user {exc}")
            continue
        store, shiv, pex, venv = (scratch / n for n in ("store", "shiv", "pex", "venv"))
        rows = [
            Row("sandrun", [corpus.exec_cmd(app, store=store / "s")], cwd=app.work,
                before=fresh(store)),
            Row("shiv", [[SYSTEM_PYTHON, str(app.bundle), *app.args]],
                bench.shiv_env(shiv), cwd=app.root_work, before=fresh(shiv)),
            Row("venv+pip", [*make_venv(app, venv / "v", pip="inner"),
                             app_cmd(app, venv / "v")], pip_env(), cwd=app.root_work,
                before=fresh(venv)),
            Row("venv+pip (no ensurepip)", [*make_venv(app, venv / "v"),
                                            app_cmd(app, venv / "v")], pip_env(),
                cwd=app.root_work, before=fresh(venv)),
        ]
        if app.pex is not None:
            rows.append(Row("pex", [[SYSTEM_PYTHON, str(app.pex), *app.args]],
                            {**BASE_ENV, "PEX_ROOT": str(pex)}, cwd=app.root_work,
                            before=fresh(pex)))
        if uv:
            rows.append(Row("uv", [*make_venv(app, venv / "v", pip="uv"),
                                   app_cmd(app, venv / "v")], pip_env(), cwd=app.root_work,
                            before=fresh(venv)))
        for row in rows:
            row.app = app
        try:
            interleave(rows, runs, 0, report.notes, f"corpus-cold {app.key}")
        except (BenchError, subprocess.TimeoutExpired) as exc:
            report.notes.append(f"corpus-cold: {app.key} failed: {failure(exc)}")
            continue
        by = {r.name: r for r in rows}
        s = med(by["sandrun"])
        # Once more alone: until the bytecode compiled after the launch is in place too.
        fresh(store)()
        reset_work(app)
        started = time.perf_counter()
        try:
            run(corpus.exec_cmd(app, store=store / "s"), cwd=app.work, timeout=RUN_TIMEOUT)
            bytecode_done = time.perf_counter() - started + bench.wait_for_compiles()
        except (BenchError, subprocess.TimeoutExpired) as exc:
            report.notes.append(f"corpus-cold: {app.key}, until bytecode done: {failure(exc)}")
            bytecode_done = float("nan")
        vs_pip[app.key] = s / med(by["venv+pip"])
        vs_strict[app.key] = s / med(by["venv+pip (no ensurepip)"])
        if app.unpacked <= SMALL_APP_BYTES:
            vs_shiv_small[app.key] = s / med(by["shiv"])
        rows_out.append([app.key, f"{app.files}", f"{app.unpacked / 1e6:.1f}", ms(s),
                         ms(bytecode_done) if bytecode_done == bytecode_done else "",
                         ms(med(by["venv+pip"])), ratio(s, med(by["venv+pip"])),
                         ms(med(by["venv+pip (no ensurepip)"])),
                         ratio(s, med(by["venv+pip (no ensurepip)"])),
                         ms(med(by["shiv"])), ratio(s, med(by["shiv"])),
                         ms(med(by.get("pex"))) if "pex" in by else "",
                         ms(med(by.get("uv"))) if "uv" in by else ""])
    for scratch_dir in (scratch,):
        shutil.rmtree(scratch_dir, ignore_errors=True)
    phases = cold_phases(corpus)
    if vs_pip:
        report.summary.append(["goal 3. cold launch / (venv + pip install + run), corpus "
                               "median (max)", f"{statistics.median(vs_pip.values()):.2f}x",
                               f"max {max(vs_pip.values()):.2f}x; without ensurepip: median "
                               f"{statistics.median(vs_strict.values()):.2f}x, max "
                               f"{max(vs_strict.values()):.2f}x", "goal <= 1.0x"])
    if vs_shiv_small:
        report.summary.append(["goal 3. cold launch / shiv's first run, small apps median "
                               "(max)", f"{statistics.median(vs_shiv_small.values()):.2f}x",
                               f"max {max(vs_shiv_small.values()):.2f}x; "
                               f"{len(vs_shiv_small)} apps <= {SMALL_APP_BYTES / 1e6:.0f} MB",
                               "goal <= 1.5x"])
    report.add("corpus-cold", "\n".join([
        "## Goal 3. Cold first launches of the corpus", "",
        "From nothing to the app's output, median ms of "
        f"{runs} interleaved runs (everything emptied before each). sandrun: `sandrun exec` "
        "into an empty store (read, verify every entry, extract into a private temp dir, "
        "one syncfs, rename, launch; the app user exists already), to the app's output; "
        "its bytecode is compiled after the launch, by a detached process: `bytecode done` "
        "is one more run, until that process has finished too (not a goal: what a "
        "second launch right after the first may wait for). "
        "venv+pip: `python -m venv V` + `V/bin/pip install --no-index --no-deps WHEELS` "
        "(the bundle's exact wheels, from the local cache) + the run; without ensurepip: "
        "`python -m venv --without-pip` + the bench's pip with `--python V`. shiv: the "
        "same bundle's first run (empty SHIV_ROOT: extraction, no bytecode). pex: first run "
        "(empty PEX_ROOT). uv: `uv venv` + `uv pip install --compile-bytecode` + the run "
        "(a reference, not a goal).", "",
        table(["app", "files", "MB unpacked", "sandrun", "bytecode done", "venv+pip", "ratio",
               "venv+pip, no ensurepip", "ratio", "shiv 1st run", "ratio", "pex 1st run",
               "uv"], rows_out), "",
        *phases]))


def app_cmd(app: App, venv: Path) -> list[str]:
    saved, app.venv = app.venv, venv
    try:
        return app.venv_cmd()
    finally:
        app.venv = saved


def cold_phases(corpus: Corpus) -> list[str]:
    """Where one cold `sandrun exec` spends its time, by phase, for a few apps."""
    python = Path(corpus.sandrun[0]).parent / "python"
    if not python.exists() or not corpus.apps:
        return []
    script = corpus.work / "phases.py"
    script.write_text(PHASES)
    picks = sorted(corpus.apps, key=lambda a: a.unpacked)
    picks = list({a.key: a for a in (picks[0], picks[len(picks) // 2], picks[-1])}.values())
    rows = []
    for app in picks:
        store = corpus.work / "phase-store"
        fresh(store)()
        reset_work(app)
        out = corpus.work / "phases.json"
        cmd = [str(python), str(script), *corpus.exec_cmd(app, store=store / "s")[1:]]
        start = time.perf_counter()
        try:
            run(cmd, env={**BASE_ENV, "BENCH_PHASES": str(out),
                          "BENCH_SANDRUN_PY": str(Path(corpus.sandrun[0]).parent / "sandrun-py")},
                cwd=app.work, capture=False,
                timeout=RUN_TIMEOUT)
        except BenchError as exc:
            rows.append([app.key, f"failed: {failure(exc)}"] + [""] * 10)
            continue
        total = time.perf_counter() - start
        data = json.loads(out.read_text())
        marks: dict[str, float] = {}
        for name, _at, took in data["marks"]:
            marks[name] = marks.get(name, 0.0) + took
        at_launch = data["at_launch"]
        writing = marks.get("_run_jobs", 0.0)
        sync = marks.get("_sync_file_system", 0.0)
        install = marks.get("install", 0.0)
        rows.append([app.key, ms(total), ms(data["imports"]), ms(marks.get("decide", 0.0)),
                     ms(marks.get("verify_manifest", 0.0)), ms(marks.get("collect", 0.0)),
                     ms(marks.get("compile_filter", 0.0)),
                     ms(writing), ms(sync), ms(install - writing - sync),
                     ms(marks.get("check_tree", 0.0) + marks.get("save_tree_snapshot", 0.0)),
                     ms(total - at_launch)])
        shutil.rmtree(store, ignore_errors=True)
    return ["Where a cold `sandrun exec` spends its time (one run each, ms; the smallest, "
            "middle and largest app): the interpreter start, reading the bundle and forking "
            "the child that hashes its entries (on the other CPU, from here on), and "
            "sandrun's imports; decide() (the bundle's manifest and signature checked, the "
            "trust policy, profile, user, interpreter, the seccomp filter's compilation "
            "and self-check, then waiting for the child's hashes); writing the tree (its "
            "bytecode is compiled after the launch); the one syncfs; the rest of the "
            "install (mkdir, chmod, rename); the tree check and snapshot; and from the "
            "launch to the app's exit.", "",
            table(["app", "total", "start, read + imports", "decide", "of which manifest",
                   "of which waiting for hashes", "of which seccomp", "write", "syncfs",
                   "install, rest", "check + snapshot", "launch + app"], rows)]


# ------------------------------------------------------------------ goal 2: supervisor RSS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                parents[int(entry)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier]
        tree += children
        frontier = children
    return tree


def _memory(pid: int) -> tuple[int, int, int, str]:
    """(real uid, RSS kB, PSS kB, name) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    name = re.search(r"^Name:\s+(\S+)", status, re.M).group(1)  # type: ignore[union-attr]
    pss = rss
    with contextlib.suppress(OSError, AttributeError):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))  # type: ignore[union-attr]
    return uid, rss, pss, name


def memory_of(pids: list[int]) -> list[tuple[int, int, int, int, str]]:
    """(pid, uid, RSS kB, PSS kB, name) of each process still there."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            found.append((pid, *_memory(pid)))
    return found


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str] | None, url: str, cwd: Path,
            user: pwd.struct_passwd | None = None) -> Iterator[subprocess.Popen[bytes]]:
    kw: dict[str, object] = {}
    if user is not None:
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.Popen(cmd, env=env or BASE_ENV, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise BenchError(f"{' '.join(cmd)} exited {proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise BenchError(f"no answer from {url} within {READY_TIMEOUT} s")
            time.sleep(0.05)
        time.sleep(0.5)  # workers settle
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def bench_rss(corpus: Corpus, report: Report) -> None:
    bwrap = shutil.which("bwrap")
    rows = []
    supervisors: list[float] = []
    for app in corpus.servers:
        server = dict(app.spec["server"])  # type: ignore[call-overload]
        port = free_port()
        args = [str(a).replace("{port}", str(port)) for a in server["args"]]
        flags = [str(f).replace("{port}", str(port)) for f in server.get("flags", [])]
        url = f"http://127.0.0.1:{port}{server.get('ready', '/')}"
        try:
            with serving(corpus.exec_cmd(app, args=args, flags=flags), None, url, app.work
                         ) as proc:
                procs = memory_of(_proc_tree(proc.pid))
            ours = [p for p in procs if p[1] == 0]
            theirs = [p for p in procs if p[1] != 0]
            port = free_port()
            args = [str(a).replace("{port}", str(port)) for a in server["args"]]
            url = f"http://127.0.0.1:{port}{server.get('ready', '/')}"
            with serving(app.venv_cmd(args), None, url, app.root_work) as proc:
                plain = [m[1:] for m in memory_of(_proc_tree(proc.pid))]
            wrapped: list[tuple[int, int, int, str]] = []
            if bwrap:
                port = free_port()
                args = [str(a).replace("{port}", str(port)) for a in server["args"]]
                url = f"http://127.0.0.1:{port}{server.get('ready', '/')}"
                cmd = bwrapped(bwrap, app, app.venv_cmd(args), "--share-net")
                with serving(cmd, None, url, app.work, pwd.getpwnam(app.user)) as proc:
                    wrapped = [m[1:] for m in memory_of(_proc_tree(proc.pid))]
        except (BenchError, OSError) as exc:
            report.notes.append(f"rss: {app.key} failed: {failure(exc)}")
            continue
        sup_rss = sum(p[2] for p in ours) / 1024
        supervisors.append(sup_rss)
        bw = [m for m in wrapped if m[3] == "bwrap"]
        rows.append([app.key, " ".join(server["args"][:3]) + " ...",
                     f"{len(ours)} ({', '.join(sorted({p[4] for p in ours}))})",
                     f"{sup_rss:.1f}", f"{sum(p[3] for p in ours) / 1024:.1f}",
                     f"{len(theirs)}", f"{sum(p[2] for p in theirs) / 1024:.1f}",
                     f"{sum(m[1] for m in plain) / 1024:.1f}",
                     f"{len(bw)}: {sum(m[1] for m in bw) / 1024:.1f}" if bw else ""])
    if supervisors:
        report.summary.append(["goal 2. sandrun's resident processes per sandbox (RSS MB, "
                               "median)", f"{statistics.median(supervisors):.1f}",
                               f"max {max(supervisors):.1f}; {len(supervisors)} servers",
                               "goal <= 5 MB"])
    report.add("rss", "\n".join([
        "## Goal 2. What sandrun keeps resident next to each app", "",
        "Servers of the corpus started with `sandrun exec`, measured once they answer: "
        "every process of the launch's tree by /proc (VmRSS, and PSS from smaps_rollup: "
        "shared pages split among their users). sandrun's own = the processes running as "
        "root (the launcher, the namespace's init); the app = those of the app user. The "
        "same server in its venv, and in its venv under `bwrap --unshare-all --share-net` "
        "(bwrap's own processes: what a minimal C supervisor keeps).", "",
        table(["app", "server", "sandrun's processes", "their RSS MB", "their PSS MB",
               "app processes", "app RSS MB", "venv RSS MB (all)", "bwrap's own: n, RSS MB"],
              rows)]))


# ------------------------------------------------------------------ goal 4: the build


def measured(work: Path, cmd: list[str], env: dict[str, str] | None = None,
             cwd: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS MB of the largest process: RUSAGE_CHILDREN's ru_maxrss) of cmd."""
    wrapper = work / "maxrss.py"
    if not wrapper.exists():
        wrapper.write_text(MAXRSS)
    out = work / "maxrss.out"
    run([SYSTEM_PYTHON, str(wrapper), str(out), *cmd], env=env, cwd=cwd, timeout=1800)
    took, peak, code = out.read_text().split()
    if code != "0":
        raise BenchError(f"{' '.join(cmd)} exited {code}")
    return float(took), int(peak) / 1024


def bench_build(corpus: Corpus, runs: int, report: Report) -> None:
    shiv = Path(sys.executable).parent / "shiv"
    out = corpus.work / "build-out"
    out.mkdir(exist_ok=True)
    cases: list[tuple[str, list[str], list[str], list[Path]]] = []
    for app in corpus.apps:
        src = corpus.work / "src-wheels" / app.key
        dist = [f"corpus_{str(app.spec['app']).replace('-', '_')}_src"] if src.exists() else []
        cases.append((app.key, [*app.requirements(), *dist], app.entry(), [CORPUS_WHEELS, src]))
    _download(BIG_SET)
    cases.append(("numpy + scipy + pandas", list(BIG_SET), ["-e", "pandas:show_versions"],
                  [CORPUS_WHEELS]))
    rows = []
    ratios: dict[str, tuple[float, float, float]] = {}
    for label, reqs, entry, links in cases:
        link_args = [x for d in links if d.exists() for x in ("--find-links", str(d))]
        variants: dict[str, list[str]] = {
            "sandrun": [*corpus.sandrun, "bundle", *reqs, "--no-index", *link_args, *entry,
                        "-o", str(out / "s.pyz")],
            "shiv": [str(shiv), *entry, "-o", str(out / "v.pyz"), "--reproducible",
                     "--compressed", *reqs, "--no-index", *link_args, "--only-binary=:all:"],
        }
        if corpus.pex_bin is not None:
            variants["pex"] = pex_cmd(corpus, reqs, entry, out / "p.pex",
                                      [d for d in links if d.exists()])
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        try:
            for _ in range(runs):
                for key, cmd in variants.items():
                    for f in out.iterdir():
                        f.unlink()
                    env = {**BASE_ENV, "PEX_ROOT": str(corpus.work / "pex-root-build")}
                    got[key].append(measured(corpus.work, cmd, env))
        except (BenchError, subprocess.TimeoutExpired) as exc:
            report.notes.append(f"build: {label} failed: {failure(exc)}")
            continue
        t = {k: statistics.median(x[0] for x in v) for k, v in got.items()}
        m = {k: max(x[1] for x in v) for k, v in got.items()}
        ratios[label] = (t["sandrun"] / t["shiv"], m["sandrun"], m["shiv"])
        rows.append([label, f"{t['sandrun']:.2f}", f"{m['sandrun']:.0f}", f"{t['shiv']:.2f}",
                     f"{m['shiv']:.0f}", ratio(t["sandrun"], t["shiv"]),
                     f"{t['pex']:.2f}" if "pex" in t else "",
                     f"{m['pex']:.0f}" if "pex" in m else ""])
    profile: list[str] = []
    try:
        profile = bench.cprofile_top(
            ["bundle", *BIG_SET, "--no-index", "--find-links", str(CORPUS_WHEELS),
             "-e", "pandas:show_versions", "-o", str(out / "prof.pyz")], corpus.work, 14,
            by_self=True)
    except BenchError as exc:
        profile = [f"(cProfile failed: {exc})"]
    big = ratios.get("numpy + scipy + pandas")
    if big:
        report.summary.append(["goal 4. `sandrun bundle` / `shiv`, numpy + scipy + pandas "
                               "(time; peak RSS MB)", f"{big[0]:.2f}x",
                               f"peak {big[1]:.0f} MB vs shiv {big[2]:.0f} MB", "goal <= 1.0x"])
    if ratios:
        values = [r[0] for r in ratios.values()]
        report.summary.append(["goal 4. `sandrun bundle` / `shiv`, corpus median (max)",
                               f"{statistics.median(values):.2f}x", f"max {max(values):.2f}x",
                               ""])
    report.add("build", "\n".join([
        "## Goal 4. Building: `sandrun bundle` vs `shiv` vs `pex`", "",
        f"Same local wheelhouse, offline, median seconds of {runs} builds each, and the peak "
        "RSS of the largest process of each build (RUSAGE_CHILDREN's ru_maxrss, max over the "
        "runs). sandrun: `sandrun bundle REQ... --no-index --find-links W (-c|-e) X -o out` "
        "(wheels only, RECORD checks, manifest, reproducible); shiv: `shiv (-c|-e) X -o out "
        "--reproducible --compressed REQ... --no-index --find-links W --only-binary=:all:`; "
        "pex: `pex --python /usr/bin/python3 --no-pypi -f W REQ... (--script|--entry-point) "
        "X -o out`.", "",
        table(["app", "sandrun s", "peak MB", "shiv s", "peak MB", "sandrun/shiv", "pex s",
               "peak MB"], rows), "",
        "Where `sandrun bundle numpy scipy pandas` spends its time (functions by own time in "
        "one `python -m cProfile sandrun bundle ...`; pip and shiv run in child processes: "
        "their time shows as the wait):", "", "```", *profile, "```"]))
