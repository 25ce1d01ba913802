"""A local project as `sandrun dev` and `sandrun test` see it: pyproject.toml, read statically.

Nothing of the project runs to learn what it needs: name, version, dependencies, extras,
dependency groups (PEP 735, with include-group), scripts and requires-python come from
the TOML itself, never from its build backend. What only a build could tell (dynamic
dependencies) is refused with the way out. `[tool.sandrun]` may name the app, its
profile, its entry point and its source directory:

    [tool.sandrun]
    name = "hello"                 # app name (user sandrun-<name>, state dir)
    profile = "sandrun.toml"       # requested: a shipped name or a file relative to here
    script = "hello"               # one of [project.scripts]; or:
    entry-point = "hello.cli:main"
    source = "src"                 # the directory put on sys.path (default: src/ or .)

The project's profile is a request, like the profile embedded in a bundle: it is
embedded in the development bundle and the launcher's consent rules apply to it (beyond
`default` it needs the operator's `-p`, `sandrun approve` or /etc/sandrun/apps/). Only
`-p` on the command line is the operator's.

Root reads the tree of another user: every file is read through the project
directory's fd, without following links, capped (project_files.py). Everything written
into generated metadata is checked strictly (no control character, no direct
reference): pip and uv act on what the stub wheel and the requirements say.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandrun.bundle.manifest import (
    app_name_problem,
    console_script_problem,
    entry_point_problem,
)
from sandrun.dev import project_files
from sandrun.errors import Problem, ProblemsError, UsageError

PYPROJECT = "pyproject.toml"
LOCK_NAME = "pylock.toml"  # a project's PEP 751 lock: dev bundles take exactly its wheels
TEST_GROUP = "test"
TOOL_KEYS = ("name", "profile", "script", "entry-point", "source")
MAX_PYPROJECT_SIZE = project_files.MAX_PYPROJECT_SIZE
# Control characters (C0, DEL, C1; and the line separators str.splitlines knows): a
# newline in a metadata field or a requirements file line would start another one.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
EXTRA_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*\Z")  # a normalised extra name (PEP 685)
DIRECT_HINT = ("give a name and version range; provide the wheel with --find-links DIR")
DYNAMIC_HINT = ("list them statically in [project] dependencies (sandrun never runs a "
                "project's build backend to learn them)")


class ProjectError(ProblemsError):
    """A project's pyproject.toml cannot be used; every problem is listed."""


@dataclass(frozen=True)
class Project:
    """What pyproject.toml says, checked; paths are absolute, never resolved through
    symlinks (the launch grants them as given)."""

    root: Path
    name: str  # as written
    version: str  # "0" when dynamic
    dependencies: tuple[str, ...]
    optional_dependencies: dict[str, tuple[str, ...]]
    groups: dict[str, tuple[str, ...]]  # PEP 735, include-group expanded, names normalised
    scripts: dict[str, str]
    requires_python: str | None
    dynamic: tuple[str, ...]
    tool: dict[str, str] = field(default_factory=dict)  # [tool.sandrun]
    source_rel: str = "."  # the source directory, relative (decided without links)
    lock_data: bytes | None = None  # pylock.toml as read (through the project's fd)
    profile_data: bytes | None = None  # [tool.sandrun] profile's file as read

    @property
    def pyproject(self) -> Path:
        return self.root / PYPROJECT

    @property
    def lock(self) -> Path | None:
        """The project's pylock.toml, if it had one when it was read (lock_data)."""
        return self.root / LOCK_NAME if self.lock_data is not None else None

    @property
    def source_dir(self) -> Path:
        """What the bootstrap puts first on sys.path: [tool.sandrun] source, else src/
        (the src layout) when it exists, else the project root (the flat layout)."""
        return self.root / self.source_rel

    def test_requirements(self) -> tuple[str, ...]:
        """The `test` dependency group (PEP 735), else the `test` extra: with the project's
        own dependencies, what a test bundle holds."""
        from packaging.utils import canonicalize_name

        group = self.groups.get(TEST_GROUP)
        if group is not None:
            return group
        extra: dict[str, tuple[str, ...]] = {
            canonicalize_name(k): v for k, v in self.optional_dependencies.items()}
        if TEST_GROUP in extra:
            return extra[TEST_GROUP]
        if "optional-dependencies" in self.dynamic:
            raise ProjectError(f"{self.pyproject}: the test extra may be dynamic", [Problem(
                "project.dynamic", "optional-dependencies are dynamic", DYNAMIC_HINT)])
        raise ProjectError(f"{self.pyproject} declares no test dependencies", [Problem(
            self.pyproject.name, "neither [dependency-groups] test nor a `test` extra",
            'add e.g. [dependency-groups] test = ["pytest>=8"]')])


def find_project(path: str | None) -> Path:
    """The project directory: PROJECT as given (made absolute, not resolved), or the
    current directory."""
    root = Path(os.path.abspath(path or "."))
    try:
        with project_files.project_dir(root) as fd:
            found = project_files.exists_beneath(fd, PYPROJECT)
    except UsageError:
        raise UsageError(f"{path} is not a directory",
                         "give the project directory (the one with pyproject.toml); to pass "
                         "arguments to the app of the current directory's project, put them "
                         "after --") from None
    if not found:
        raise UsageError(f"{root} has no {PYPROJECT}",
                         "give the project directory (the one with pyproject.toml); to pass "
                         "arguments to the app of the current directory's project, put them "
                         "after --")
    return root


def load_project(root: Path) -> Project:
    """Parse and check root/pyproject.toml; ProjectError lists every problem.

    Everything is read through one fd of the project directory, never through a link,
    each file capped: pyproject.toml, pylock.toml (kept as lock_data) and the file of
    [tool.sandrun] profile (kept as profile_data)."""
    path = root / PYPROJECT
    label = str(path)
    with project_files.project_dir(root) as fd:
        raw = project_files.read_beneath(fd, PYPROJECT, MAX_PYPROJECT_SIZE, label)
        if raw is None:
            raise ProjectError(f"cannot read {label}", [Problem(
                label, "no such file", "give the project directory (with pyproject.toml)")])
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ProjectError(f"{label} is not valid TOML",
                               [Problem(label, str(exc))]) from None

        def is_dir(rel: str) -> bool:
            return project_files.is_dir_beneath(fd, rel, str(root / rel))

        project = parse_project(data, root, label, is_dir=is_dir)
        lock = project_files.read_beneath(fd, LOCK_NAME, project_files.MAX_LOCK_SIZE,
                                          str(root / LOCK_NAME))
        profile = None
        chosen = project.tool.get("profile")
        if chosen is not None and profile_is_file(chosen):
            profile = project_files.read_beneath(fd, chosen, project_files.MAX_CONFIG_SIZE,
                                                 f"[tool.sandrun] profile {root / chosen}")
            if profile is None:
                raise ProjectError(f"{label}: [tool.sandrun] profile names no file", [
                    Problem("tool.sandrun.profile", f"{root / chosen} does not exist",
                            "a profile file relative to the project, or a shipped name")])
    return replace(project, lock_data=lock, profile_data=profile)


def _is_dir_no_links(root: Path) -> Callable[[str], bool]:
    """is_dir for parse_project without an fd (tests): lstat, component by component."""
    import stat

    def is_dir(rel: str) -> bool:
        path = root
        for part in [p for p in rel.split("/") if p not in ("", ".")]:
            path = path / part
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return False
            except OSError:
                return False
        return True
    return is_dir


def parse_project(data: dict[str, Any], root: Path, label: str = PYPROJECT, *,
                  is_dir: Callable[[str], bool] | None = None) -> Project:
    """The Project of parsed pyproject.toml data (separate from reading, for tests).
    `is_dir(rel)`: whether a directory of the project exists (never through a link)."""
    is_dir = is_dir or _is_dir_no_links(root)
    problems: list[Problem] = []
    project = data.get("project")
    if not isinstance(project, dict):
        raise ProjectError(f"{label} has no [project] table", [Problem(
            label, "[project] is missing", "sandrun dev reads the project's metadata from "
            "[project] (PEP 621): name, dependencies, scripts")])
    dynamic = _string_list(project, "dynamic", "project.dynamic", problems)
    name = project.get("name")
    if not isinstance(name, str) or not name:
        problems.append(Problem("project.name", "missing or not a string", 'name = "myapp"'))
        name = "project"
    version = project.get("version", "0")
    if not isinstance(version, str):
        problems.append(Problem("project.version", "not a string", 'version = "1.0"'))
        version = "0"
    if "version" in dynamic:
        version = "0"
    if "dependencies" in dynamic:
        problems.append(Problem("project.dynamic", "dependencies are dynamic: only the build "
                                "backend could tell them", DYNAMIC_HINT))
    deps = _requirements(project.get("dependencies", []), "project.dependencies", problems)
    optional: dict[str, tuple[str, ...]] = {}
    table = project.get("optional-dependencies", {})
    if not isinstance(table, dict):
        problems.append(Problem("project.optional-dependencies", "not a table"))
        table = {}
    normalised: dict[str, str] = {}
    for extra, reqs in table.items():
        where = f"project.optional-dependencies.{shown_key(extra)}"
        problem = extra_name_problem(extra)
        if problem:
            problems.append(Problem(where, problem, 'e.g. "test" or "fast-io"'))
            continue
        key = normalise_extra(extra)
        if key in normalised:
            problems.append(Problem(where, f"the same extra as {normalised[key]!r} (names "
                                    "are compared normalised)"))
            continue
        normalised[key] = extra
        optional[extra] = _requirements(reqs, where, problems)
    scripts: dict[str, str] = {}
    table = project.get("scripts", {})
    if not isinstance(table, dict):
        problems.append(Problem("project.scripts", "not a table"))
        table = {}
    for script, value in table.items():
        where = f"project.scripts.{shown_key(script)}"
        if not isinstance(value, str):
            problems.append(Problem(where, "not a string", 'e.g. hello = "hello.cli:main"'))
            continue
        problem = console_script_problem(script)
        if problem:
            problems.append(Problem(where, f"script name {problem}"))
            continue
        reference = object_reference(value)
        problem = entry_point_problem(reference)
        if problem or CONTROL_RE.search(value):
            problems.append(Problem(where, problem or "contains a control character",
                                    "use MODULE:FUNCTION"))
            continue
        scripts[script] = reference
    requires_python = project.get("requires-python")
    if requires_python is not None:
        problem = requires_python_problem(requires_python)
        if problem:
            problems.append(Problem("project.requires-python", problem, 'e.g. ">=3.11"'))
            requires_python = None
    groups = _dependency_groups(data.get("dependency-groups", {}), problems)
    tool = _tool_table(data, root, scripts, problems, is_dir)
    if problems:
        raise ProjectError(f"{label}: {len(problems)} problem(s)", problems)
    source_rel = tool.get("source") or ("src" if is_dir("src") else ".")
    return Project(root=root, name=name, version=version, dependencies=deps,
                   optional_dependencies=optional, groups=groups, scripts=scripts,
                   requires_python=requires_python, dynamic=tuple(dynamic), tool=tool,
                   source_rel=source_rel)


def object_reference(value: str) -> str:
    """`module:attr` of an entry point value, without extras and spaces."""
    module, colon, attr = value.split("[")[0].partition(":")
    return f"{module.strip()}{colon}{attr.strip()}"


def shown_key(key: str) -> str:
    """A TOML key of the project as shown in messages: quoted when it holds anything
    but plain characters (a control character must not reach the operator's terminal)."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]+", key) else repr(key)


def normalise_extra(name: str) -> str:
    """PEP 685: an extra's name as written into metadata and markers."""
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_name_problem(name: str) -> str | None:
    """Why `name` is not a valid extra name (PEP 685 / core metadata), or None."""
    from packaging.utils import InvalidName, canonicalize_name

    try:
        canonicalize_name(name, validate=True)
    except InvalidName:
        return f"{name!r} is not a valid extra name (letters, digits, '-', '_', '.')"
    if not EXTRA_RE.match(normalise_extra(name)):
        return f"{name!r} does not normalise to a valid extra name"
    return None


def requires_python_problem(value: object) -> str | None:
    """Why `value` is not a requires-python specifier set, or None."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not isinstance(value, str):
        return "not a string"
    if CONTROL_RE.search(value):
        return "contains a control character"
    try:
        SpecifierSet(value)
    except InvalidSpecifier as exc:
        return f"{value!r} is not a version specifier set: {exc}"
    return None


def requirement_problem(text: str) -> str | None:
    """Why `text` cannot be one of the project's requirements, or None. Direct
    references (`name @ URL`) are refused: pip or uv would fetch and build what it
    names. So are control characters and backslashes (a requirements file line is
    written from it) and anything packaging cannot parse."""
    from packaging.requirements import InvalidRequirement, Requirement

    if CONTROL_RE.search(text) or "\\" in text:
        return f"{text!r} contains a control character or a backslash"
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        return f"{text!r}: {exc}"
    if req.url:
        return f"{text!r} is a direct reference"
    canonical = str(req)
    if CONTROL_RE.search(canonical) or any(token.startswith(("-", "#"))
                                           for token in canonical.split()):
        return f"{text!r} would read as a requirements file option or comment"
    return None


def _string_list(table: dict[str, Any], key: str, where: str,
                 problems: list[Problem]) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(where, "not a list of strings"))
        return []
    return value


def _requirements(value: object, where: str, problems: list[Problem]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(Problem(where, "not a list of requirement strings"))
        return ()
    found = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(Problem(f"{where}[{index}]", "not a string"))
            continue
        problem = requirement_problem(item)
        if problem:
            problems.append(Problem(f"{where}[{index}]", problem,
                                    DIRECT_HINT if "direct reference" in problem else ""))
            continue
        found.append(item)
    return tuple(found)


def _dependency_groups(table: object, problems: list[Problem]) -> dict[str, tuple[str, ...]]:
    """PEP 735: names normalised, every include-group expanded (cycles refused)."""
    from packaging.utils import canonicalize_name

    if not isinstance(table, dict):
        problems.append(Problem("dependency-groups", "not a table"))
        return {}
    raw: dict[str, list[Any]] = {}
    for name, items in table.items():
        key = canonicalize_name(name)
        if key in raw:
            problems.append(Problem(f"dependency-groups.{shown_key(name)}", "duplicate group name "
                                    "(names are compared normalised)"))
            continue
        if not isinstance(items, list):
            problems.append(Problem(f"dependency-groups.{shown_key(name)}", "not a list"))
            continue
        raw[key] = items
    expanded: dict[str, tuple[str, ...]] = {}

    def expand(group: str, trail: tuple[str, ...]) -> tuple[str, ...]:
        if group in expanded:
            return expanded[group]
        if group in trail:
            problems.append(Problem(f"dependency-groups.{shown_key(group)}", "include-group cycle: "
                                    + " -> ".join((*trail, group))))
            return ()
        found: list[str] = []
        for index, item in enumerate(raw[group]):
            where = f"dependency-groups.{shown_key(group)}[{index}]"
            if isinstance(item, str):
                found += _requirements([item], where, problems)
            elif isinstance(item, dict) and set(item) == {"include-group"} \
                    and isinstance(item["include-group"], str):
                included = canonicalize_name(item["include-group"])
                if included not in raw:
                    problems.append(Problem(where, f"includes the unknown group "
                                            f"{item['include-group']!r}"))
                    continue
                found += expand(included, (*trail, group))
            else:
                problems.append(Problem(where, "neither a requirement string nor "
                                        '{include-group = "NAME"}'))
        result = tuple(dict.fromkeys(found))
        expanded[group] = result
        return result

    for group in raw:
        expand(group, ())
    return expanded


def _tool_table(data: dict[str, Any], root: Path, scripts: dict[str, str],
                problems: list[Problem], is_dir: Callable[[str], bool]) -> dict[str, str]:
    tool = data.get("tool", {})
    table = tool.get("sandrun", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        problems.append(Problem("tool.sandrun", "not a table"))
        return {}
    found: dict[str, str] = {}
    for key, value in table.items():
        where = f"tool.sandrun.{shown_key(key)}"
        if key not in TOOL_KEYS:
            problems.append(Problem(where, "unknown key", f"known: {', '.join(TOOL_KEYS)}"))
            continue
        if not isinstance(value, str) or not value:
            problems.append(Problem(where, "not a non-empty string"))
            continue
        if CONTROL_RE.search(value):
            problems.append(Problem(where, "contains a control character"))
            continue
        found[key] = value
    if "script" in found and "entry-point" in found:
        problems.append(Problem("tool.sandrun", "both script and entry-point",
                                "give one of them"))
    if "script" in found and found["script"] not in scripts:
        problems.append(Problem("tool.sandrun.script", f"{found['script']!r} is not in "
                                "[project.scripts]", f"known: {', '.join(scripts) or 'none'}"))
    if "entry-point" in found:
        problem = entry_point_problem(found["entry-point"])
        if problem:
            problems.append(Problem("tool.sandrun.entry-point", problem))
    if "name" in found:
        problem = app_name_problem(found["name"])
        if problem:
            problems.append(Problem("tool.sandrun.name", problem))
    if "source" in found:
        source = os.path.normpath(found["source"])
        if os.path.isabs(source) or source == ".." or source.startswith("../"):
            problems.append(Problem("tool.sandrun.source", f"{found['source']!r} is not inside "
                                    "the project", 'a relative directory, e.g. "src"'))
        elif not is_dir(source):
            problems.append(Problem("tool.sandrun.source", f"{root / source} is not a "
                                    "directory (links are not followed)"))
        found["source"] = source
    if "profile" in found and profile_is_file(found["profile"]):
        chosen = os.path.normpath(found["profile"])
        if os.path.isabs(chosen) or chosen == ".." or chosen.startswith("../"):
            problems.append(Problem("tool.sandrun.profile", f"{found['profile']!r} is not "
                                    "inside the project", "a file relative to the project, "
                                    "or a shipped profile name"))
        found["profile"] = chosen
    return found


# ---------------------------------------------------------------- choices


@dataclass(frozen=True)
class Entry:
    """What the bundle runs: a console script of the project (its stub wheel declares it)
    or a MODULE:FUNCTION."""

    entry_point: str
    script: str | None


def choose_entry(project: Project, script: str | None = None,
                 entry_point: str | None = None) -> Entry:
    """--script / --entry-point, else [tool.sandrun], else the project's only script."""
    if script and entry_point:
        raise UsageError("give at most one of --script and --entry-point",
                         "e.g. --script hello, or --entry-point hello.cli:main")
    if entry_point:
        problem = entry_point_problem(entry_point)
        if problem:
            raise UsageError(f"--entry-point {problem}", "e.g. --entry-point hello.cli:main")
        return Entry(entry_point, None)
    script = script or project.tool.get("script")
    if script:
        if script not in project.scripts:
            raise UsageError(f"{script!r} is not a script of {project.name}",
                             f"its scripts: {', '.join(project.scripts) or 'none'}")
        return _script_entry(project, script)
    if "entry-point" in project.tool:
        return Entry(project.tool["entry-point"], None)
    if len(project.scripts) == 1:
        return _script_entry(project, next(iter(project.scripts)))
    if project.scripts:
        raise UsageError(f"{project.name} has {len(project.scripts)} scripts: "
                         f"{', '.join(project.scripts)}", "choose one with --script NAME (or "
                         "[tool.sandrun] script = \"NAME\")")
    raise UsageError(f"{project.name} declares no script to run",
                     "add [project.scripts], or pass --entry-point MODULE:FUNCTION (or "
                     "[tool.sandrun] entry-point)")


def _script_entry(project: Project, script: str) -> Entry:
    value = project.scripts[script]
    problem = entry_point_problem(value)
    if problem:
        raise ProjectError(f"{project.pyproject}: script {script!r} cannot be run", [Problem(
            f"project.scripts.{shown_key(script)}", problem, "use MODULE:FUNCTION")])
    return Entry(value, script)


def app_name(project: Project, entry: Entry, name: str | None = None) -> str:
    """--name, else [tool.sandrun] name, else the script's name, else the project's (as
    `sandrun bundle` names an app: lower case, '-' for '_')."""
    chosen = name or project.tool.get("name") or entry.script or project.name
    chosen = chosen.lower().replace("_", "-")
    problem = app_name_problem(chosen)
    if problem:
        raise UsageError(f"app name {problem}", "pass --name (or [tool.sandrun] name) with "
                         "1-24 characters of a-z, 0-9, '.', '_' or '-'")
    return chosen


def profile_is_file(chosen: str) -> bool:
    """[tool.sandrun] profile names a file (else a shipped profile), as `-p` does."""
    return "/" in chosen or chosen.endswith(".toml")


@dataclass(frozen=True)
class RequestedProfile:
    """The profile a project asks for: embedded in its development bundles, a request
    the launcher's consent rules decide on, never the operator's `-p`."""

    source: str  # shipped:NAME or the file, for messages
    shipped: str | None  # a shipped profile's name (the builder embeds it as given)
    text: str | None  # else the file's profile, rendered self-contained

    @property
    def name(self) -> str:
        """The file name it is embedded from (the profile's name in messages)."""
        if self.shipped:
            return self.shipped
        stem = os.path.basename(self.source).removesuffix(".toml")
        return stem if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", stem) else "project"


def requested_profile(project: Project) -> RequestedProfile | None:
    """[tool.sandrun] profile, checked (ProfileError), or None (the `default`).

    A file is parsed from the bytes read with the project (no link followed, capped);
    it may extend only shipped profiles (like a profile embedded in a bundle), so root
    reads no other file of the project for it."""
    from sandrun.config.profile import load_profile, load_profile_text, render_toml

    chosen = project.tool.get("profile")
    if chosen is None:
        return None
    if not profile_is_file(chosen):
        load_profile(chosen)  # a shipped name, checked now
        return RequestedProfile(f"shipped:{chosen}", chosen, None)
    source = str(project.root / chosen)
    data = project.profile_data
    if data is None:
        raise ProjectError(f"{project.pyproject}: the profile {source} was not read", [])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProjectError(f"{source} is not UTF-8", [Problem(
            "tool.sandrun.profile", f"{source} is not UTF-8 text")]) from None
    profile = load_profile_text(text, source, None)
    return RequestedProfile(source, None, render_toml(profile))


def check_project_names(project: Project) -> None:
    """The distribution name must be a valid one (it names the stub wheel)."""
    from packaging.utils import InvalidName, canonicalize_name

    try:
        canonicalize_name(project.name, validate=True)
    except InvalidName:
        raise ProjectError(f"{project.pyproject}: invalid project name", [Problem(
            "project.name", f"{project.name!r} is not a valid distribution name")]) from None


