"""`sandrun test`: a project's pytest suite inside the sandbox the app runs in.

The test bundle is a development bundle (bundles.py) of the project's dependencies and
its test dependencies ([dependency-groups] test, else the `test` extra) whose entry
point is pytest's; the project tree is granted read-only and is pytest's working
directory. pytest is pinned to the project: `--rootdir` and `--confcutdir` are the
project and `-c` names its configuration file (pytest would otherwise look for one, and
for conftest.py files, in every directory above), `-p no:cacheprovider` writes no cache,
and -B no bytecode. The junit XML is written in the app's state dir and copied out by
sandrun (never following anything the app made) into the results directory, with
summary.json and, when the output is captured, output.txt. The results directory is
made fresh or must be root's (the invoking user's) alone, and every file in it is made
relative to its fd, never through a link (results.py). The project's profile is a
request embedded in the test bundle (consent applies); only `-p` is the operator's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandrun.dev import launching, project_files
from sandrun.dev.bundles import DevBundleSpec, check_stub, ensure_bundle
from sandrun.dev.project import (
    Entry,
    Project,
    app_name,
    check_project_names,
    choose_entry,
    find_project,
    load_project,
    requested_profile,
)
from sandrun.dev.results import ResultsDir, open_results_dir
from sandrun.errors import SandrunError, StoreError, UsageError

Report = Callable[[str], None]
PYTEST_ENTRY = Entry("pytest:console_main", "pytest")
# pytest's own order (_pytest/config/findpaths.py); the last three count only with a
# pytest section.
CONFIG_FILES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml",
                "tox.ini", "setup.cfg")
JUNIT_PREFIX = ".sandrun-junit-"
MAX_JUNIT_SIZE = 64 << 20
TEST_SUFFIX = "-test"
# What pytest itself touches in any sandbox and copes with: its capture opens /dev/null
# and asks whether it is a terminal; readline looks for its configuration. Not a cause.
PYTEST_PROBES = ("ioctl on the device /dev/null", "read /etc/inputrc", "/terminfo/")


def _quiet(_: str) -> None:
    pass


@dataclass
class TestRequest:
    """`sandrun test`'s command line."""

    __test__ = False  # not a pytest class

    target: str | None = None  # PROJECT dir or BUNDLE file (default: the current dir)
    project_dir: str | None = None  # with a BUNDLE: where the tests are
    pytest_args: tuple[str, ...] = ()
    exec_fields: dict[str, Any] = field(default_factory=dict)
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    index_url: str | None = None
    rebuild: bool = False
    results: str | None = None
    explain: bool = False
    capture: bool = False  # pytest's output to results/output.txt instead of ours


@dataclass
class TestResult:
    """What one run of the suite gave."""

    __test__ = False

    exit_code: int
    results_dir: str
    seconds: float = 0.0
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    junit: str | None = None  # path of the copied junit XML
    output: str | None = None  # path of the captured output
    bundle: str = ""
    app: str = ""
    explanation: list[str] = field(default_factory=list)
    error: str | None = None  # sandrun could not run the suite (exit 125 and why)

    def summary(self) -> str:
        if self.error:
            return f"not run: {self.error}"
        counts = (f"{self.passed} passed, {self.failed} failed, {self.errors} errors, "
                  f"{self.skipped} skipped" if self.junit else "no junit report")
        files = ", ".join(name for name in ("junit.xml", "summary.json", "output.txt")
                          if (Path(self.results_dir) / name).exists())
        return (f"{counts} in {self.seconds:.2f} s, pytest exit {self.exit_code}; results "
                f"in {self.results_dir} ({files})")

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "results_dir": self.results_dir,
                "seconds": round(self.seconds, 3), "tests": self.tests,
                "passed": self.passed, "failed": self.failed, "errors": self.errors,
                "skipped": self.skipped, "junit": self.junit, "output": self.output,
                "bundle": self.bundle, "app": self.app, "explanation": self.explanation,
                "error": self.error}


def test_app_name(project: Project, suffix: str = TEST_SUFFIX, name: str | None = None) -> str:
    """The app name of a test run: the app's with `suffix`, so the app's own user and
    state are left alone. Too long is refused, never truncated (two projects would
    share a user)."""
    from sandrun.bundle.manifest import MAX_APP_NAME, app_name_problem

    base = app_name(project, _entry_or_none(project), name)
    chosen = base + suffix
    if app_name_problem(chosen):
        raise UsageError(f"the tests' app name {chosen!r} is longer than {MAX_APP_NAME} "
                         "characters", f"give the app a name of at most "
                         f"{MAX_APP_NAME - len(suffix)} characters ([tool.sandrun] name)")
    return chosen


def _entry_or_none(project: Project) -> Entry:
    try:
        return choose_entry(project)
    except SandrunError:
        return Entry("x:y", None)  # tests need no entry point of the app


def pytest_config(root: Path) -> str:
    """The configuration file pytest would find in `root` (and only there), else
    /dev/null: pytest then reads none. The files whose sections decide are read
    through the project directory's fd, never through a link, capped; the others
    count by their presence (pytest reads them, in the sandbox)."""
    with project_files.project_dir(root) as fd:
        return _pytest_config(root, fd)


def _pytest_config(root: Path, dir_fd: int) -> str:
    import configparser
    import tomllib

    for name in CONFIG_FILES:
        path = root / name
        if not project_files.exists_beneath(dir_fd, name):
            continue
        if name in ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini"):
            return str(path)
        data = project_files.read_beneath(dir_fd, name, project_files.MAX_CONFIG_SIZE,
                                          str(path))
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
            if name == "pyproject.toml":
                tool = tomllib.loads(text).get("tool", {})
                if isinstance(tool, dict) and "pytest" in tool:
                    return str(path)
                continue
            parser = configparser.ConfigParser(interpolation=None)
            parser.read_string(text, source=str(path))
            if parser.has_section("pytest" if name == "tox.ini" else "tool:pytest"):
                return str(path)
        except (ValueError, configparser.Error):
            return str(path)  # pytest will report what is wrong with it
    return os.devnull


def pytest_args(root: Path, junit: str, user_args: tuple[str, ...],
                config: str | None = None) -> tuple[str, ...]:
    config = config or pytest_config(root)
    return ("--rootdir", str(root), "-c", config, "--confcutdir", str(root),
            "-p", "no:cacheprovider", f"--junitxml={junit}", *user_args)


@dataclass
class _Prepared:
    options: Any  # launcher.ExecOptions
    app: str
    store_root: str
    junit_name: str


def prepare_bundle(request: TestRequest, project: Project, *, kind: str = "test",
                   app: str | None = None, lock: Path | None = None,
                   progress: Report = _quiet, warn: Report = _quiet) -> tuple[Path, str]:
    """The test bundle (cached; built when its inputs changed) and its app name."""
    from sandrun.launch.warm_exec import default_store_root

    app = app or test_app_name(project)
    store_root = request.exec_fields.get("store") or default_store_root()
    spec = DevBundleSpec(project=project, entry=PYTEST_ENTRY, app=app, kind=kind,
                         extra_requirements=() if lock else project.test_requirements(),
                         find_links=request.find_links, no_index=request.no_index,
                         index_url=request.index_url, lock=lock,
                         profile=requested_profile(project))
    bundle, _built = ensure_bundle(spec, store_root, rebuild=request.rebuild,
                                   progress=progress, warn=warn)
    return bundle, app


def _options(request: TestRequest, bundle: str, app: str, root: Path,
             config: str) -> _Prepared:
    from sandrun.launch.launcher import ExecOptions
    from sandrun.launch.warm_exec import default_store_root

    fields = dict(request.exec_fields)
    store_root = fields.get("store") or default_store_root()
    junit_name = f"{JUNIT_PREFIX}{secrets.token_hex(8)}.xml"
    state = Path(os.path.abspath(store_root)) / "state" / app
    fields["read"] = (str(root), *fields.get("read", ()))
    fields["workdir"] = str(root)
    args = pytest_args(root, str(state / junit_name), request.pytest_args, config)
    options = ExecOptions(bundle=bundle, args=args, **fields)
    return _Prepared(options, app, store_root, junit_name)


def run_tests(request: TestRequest, *, progress: Report = _quiet, warn: Report = _quiet,
              notice: Report = _quiet, results_dir: ResultsDir | None = None,
              kind: str = "test", app: str | None = None, lock: Path | None = None
              ) -> TestResult:
    """Run the suite once (PROJECT: build or reuse its test bundle; BUNDLE: as given).
    The results directory is decided (and refused) before anything is built."""
    target = request.target
    bundle_given = target is not None and os.path.isfile(target)
    if bundle_given:
        assert target is not None
        root = find_project(request.project_dir)
        bundle, app = target, _bundle_app(target)
        config = pytest_config(root)
        results = results_dir or make_results_dir(request.results, app)
    else:
        if request.project_dir:
            raise UsageError("--project goes with a BUNDLE", "give the project as PROJECT")
        root = find_project(target)
        project = load_project(root)
        check_project_names(project)
        app = app or test_app_name(project)
        launching.check_tree_access(root, [project.source_dir],
                                    request.exec_fields.get("user"), app)
        check_stub(project)  # what pip reads of the project, checked before anything is made
        requested_profile(project)  # a broken profile: refused before anything is made
        config = pytest_config(root)
        results = results_dir or make_results_dir(request.results, app)
        try:
            built, app = prepare_bundle(request, project, kind=kind, app=app, lock=lock,
                                        progress=progress, warn=warn)
        except BaseException:
            if results_dir is None:
                results.close()
            raise
        bundle = str(built)
    try:
        return _run(request, results, bundle, app, root, config, notice)
    finally:
        if results_dir is None:
            results.close()


def _run(request: TestRequest, results: ResultsDir, bundle: str, app: str, root: Path,
         config: str, notice: Report) -> TestResult:
    prepared = _options(request, bundle, app, root, config)
    output = results.file("output.txt") if request.capture else None
    result = TestResult(exit_code=125, results_dir=results.path, bundle=bundle, app=app,
                        output=output)
    started = time.monotonic()
    try:
        with redirected(results.append("output.txt") if request.capture else None):
            outcome = launching.launch(prepared.options, explain=request.explain,
                                       notice=notice, try_warm=False, command="test")
    finally:
        result.seconds = time.monotonic() - started
    result.exit_code = outcome.code
    if outcome.code != 0:  # a passing run needs no explanation
        result.explanation = explanation_lines(launching.for_command(outcome.explanation,
                                                                     "test"))
    data = take_junit(prepared.store_root, app, prepared.junit_name)
    if data is not None:
        result.junit = results.write("junit.xml", data)
        _count(result, data)
    write_summary(result, results)
    return result


def explanation_lines(lines: list[str]) -> list[str]:
    """The launch's explanation without the denials of pytest's own harmless probes."""
    kept = [line for line in lines if not any(probe in line for probe in PYTEST_PROBES)]
    if len(kept) < len(lines):
        kept.append("  (not listed: what pytest itself probes and copes with in any "
                    "sandbox: isatty on /dev/null, /etc/inputrc, terminfo)")
    return kept


def _bundle_app(bundle: str) -> str:
    from sandrun.bundle.verify import verify_bundle

    verified = verify_bundle(bundle)
    verified.raise_for_problems(f"bundle {bundle}")
    assert verified.manifest is not None
    return verified.manifest.app_name


def make_results_dir(path: str | None, app: str) -> ResultsDir:
    """--results DIR (made fresh, or an existing one of root's or the invoking user's
    that nobody else may write), else a new private directory in $TMPDIR."""
    return open_results_dir(path, f"sandrun-test-{app}-")


def write_summary(result: TestResult, results: ResultsDir) -> None:
    results.write("summary.json", (json.dumps(result.to_json(), indent=2, sort_keys=True)
                                   + "\n").encode())


@contextlib.contextmanager
def redirected(fd: int | None) -> Iterator[None]:
    """fds 1 and 2 (what the sandboxed run inherits) to the file open as `fd` (closed
    afterwards) while it runs; None: unchanged."""
    if fd is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (fd, *saved):
            os.close(descriptor)


def take_junit(store_root: str, app: str, name: str) -> bytes | None:
    """Read and remove the junit XML pytest wrote in the app's state dir, without
    following anything the app made there: the state dir and the file are opened with
    O_NOFOLLOW below the store's own checked state/ dir; only a regular file of the app
    user (not a link to someone else's file) of at most MAX_JUNIT_SIZE bytes counts."""
    from sandrun.launch import safefile

    try:
        states = safefile.open_trusted_dir(os.path.join(os.path.abspath(store_root), "state"),
                                           os.geteuid())
    except (safefile.UnsafePath, OSError) as exc:
        raise StoreError(f"cannot open the state dirs of {store_root}: {exc}",
                         "check the store") from None
    try:
        try:
            state = os.open(app, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=states)
        except OSError:
            return None
        try:
            owner = os.fstat(state).st_uid
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                             | os.O_CLOEXEC, dir_fd=state)
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_nlink != 1 \
                        or st.st_size > MAX_JUNIT_SIZE:
                    return None
                chunks = []
                left = MAX_JUNIT_SIZE + 1
                while left > 0:
                    chunk = os.read(fd, min(left, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                data = b"".join(chunks)
            finally:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=state)
            return data if len(data) <= MAX_JUNIT_SIZE else None
        finally:
            os.close(state)
    finally:
        os.close(states)


def _count(result: TestResult, data: bytes) -> None:
    """Totals from the junit XML (written by pytest inside the sandbox: parsed as
    untrusted input; the stdlib parser resolves no external entities)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")

    def number(suite: ET.Element, key: str) -> int:
        try:
            return max(0, int(suite.get(key, "0")))
        except ValueError:
            return 0

    for suite in suites:
        result.tests += number(suite, "tests")
        result.failed += number(suite, "failures")
        result.errors += number(suite, "errors")
        result.skipped += number(suite, "skipped")
    result.passed = max(0, result.tests - result.failed - result.errors - result.skipped)


