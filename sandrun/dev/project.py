"""A local project as `sandrun dev` and `sandrun test` see it: pyproject.toml, read statically.

Nothing of the project runs to learn what it needs: name, version, dependencies, extras,
dependency groups (PEP 735, with include-group), scripts and requires-python come from
the TOML itself, never from its build backend. What only a build could tell (dynamic
dependencies) is refused with the way out. `[tool.sandrun]` may name the app, its
profile, its entry point and its source directory:

    [tool.sandrun]
    name = "hello"                 # app name (user sandrun-<name>, state dir)
    profile = "sandrun.toml"       # a shipped profile name or a file relative to here
    script = "hello"               # one of [project.scripts]; or:
    entry-point = "hello.cli:main"
    source = "src"                 # the directory put on sys.path (default: src/ or .)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandrun.bundle.manifest import app_name_problem, entry_point_problem
from sandrun.errors import Problem, ProblemsError, UsageError

PYPROJECT = "pyproject.toml"
LOCK_NAME = "pylock.toml"  # a project's PEP 751 lock: dev bundles take exactly its wheels
TEST_GROUP = "test"
TOOL_KEYS = ("name", "profile", "script", "entry-point", "source")
MAX_PYPROJECT_SIZE = 1 << 20
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

    @property
    def pyproject(self) -> Path:
        return self.root / PYPROJECT

    @property
    def lock(self) -> Path | None:
        """The project's pylock.toml, if it has one."""
        path = self.root / LOCK_NAME
        return path if path.is_file() else None

    @property
    def source_dir(self) -> Path:
        """What the bootstrap puts first on sys.path: [tool.sandrun] source, else src/
        (the src layout) when it exists, else the project root (the flat layout)."""
        if "source" in self.tool:
            return self.root / self.tool["source"]
        src = self.root / "src"
        return src if src.is_dir() else self.root

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
    if not root.is_dir():
        raise UsageError(f"{path} is not a directory",
                         "give the project directory (the one with pyproject.toml); to pass "
                         "arguments to the app of the current directory's project, put them "
                         "after --")
    if not (root / PYPROJECT).is_file():
        raise UsageError(f"{root} has no {PYPROJECT}",
                         "give the project directory (the one with pyproject.toml); to pass "
                         "arguments to the app of the current directory's project, put them "
                         "after --")
    return root


def load_project(root: Path) -> Project:
    """Parse and check root/pyproject.toml; ProjectError lists every problem."""
    path = root / PYPROJECT
    label = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PYPROJECT_SIZE + 1)
    except OSError as exc:
        raise ProjectError(f"cannot read {label}", [Problem(label, exc.strerror or str(exc),
                                                            "check the path")]) from None
    if len(raw) > MAX_PYPROJECT_SIZE:
        raise ProjectError(f"{label} is larger than {MAX_PYPROJECT_SIZE} bytes", [])
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProjectError(f"{label} is not valid TOML", [Problem(label, str(exc))]) from None
    return parse_project(data, root, label)


def parse_project(data: dict[str, Any], root: Path, label: str = PYPROJECT) -> Project:
    """The Project of parsed pyproject.toml data (separate from reading, for tests)."""
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
    for extra, reqs in table.items():
        optional[extra] = _requirements(reqs, f"project.optional-dependencies.{extra}",
                                        problems)
    scripts: dict[str, str] = {}
    table = project.get("scripts", {})
    if not isinstance(table, dict):
        problems.append(Problem("project.scripts", "not a table"))
        table = {}
    for script, value in table.items():
        if not isinstance(value, str):
            problems.append(Problem(f"project.scripts.{script}", "not a string",
                                    'e.g. hello = "hello.cli:main"'))
            continue
        scripts[script] = object_reference(value)
    requires_python = project.get("requires-python")
    if requires_python is not None and not isinstance(requires_python, str):
        problems.append(Problem("project.requires-python", "not a string"))
        requires_python = None
    groups = _dependency_groups(data.get("dependency-groups", {}), problems)
    tool = _tool_table(data, root, scripts, problems)
    if problems:
        raise ProjectError(f"{label}: {len(problems)} problem(s)", problems)
    return Project(root=root, name=name, version=version, dependencies=deps,
                   optional_dependencies=optional, groups=groups, scripts=scripts,
                   requires_python=requires_python, dynamic=tuple(dynamic), tool=tool)


def object_reference(value: str) -> str:
    """`module:attr` of an entry point value, without extras and spaces."""
    module, colon, attr = value.split("[")[0].partition(":")
    return f"{module.strip()}{colon}{attr.strip()}"


def _string_list(table: dict[str, Any], key: str, where: str,
                 problems: list[Problem]) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(where, "not a list of strings"))
        return []
    return value


def _requirements(value: object, where: str, problems: list[Problem]) -> tuple[str, ...]:
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(value, list):
        problems.append(Problem(where, "not a list of requirement strings"))
        return ()
    found = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(Problem(f"{where}[{index}]", "not a string"))
            continue
        try:
            req = Requirement(item)
        except InvalidRequirement as exc:
            problems.append(Problem(f"{where}[{index}]", f"{item!r}: {exc}"))
            continue
        if req.url:
            problems.append(Problem(f"{where}[{index}]", f"{item!r} is a direct reference",
                                    "give a name and version range; provide the wheel with "
                                    "--find-links DIR"))
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
            problems.append(Problem(f"dependency-groups.{name}", "duplicate group name "
                                    "(names are compared normalised)"))
            continue
        if not isinstance(items, list):
            problems.append(Problem(f"dependency-groups.{name}", "not a list"))
            continue
        raw[key] = items
    expanded: dict[str, tuple[str, ...]] = {}

    def expand(group: str, trail: tuple[str, ...]) -> tuple[str, ...]:
        if group in expanded:
            return expanded[group]
        if group in trail:
            problems.append(Problem(f"dependency-groups.{group}", "include-group cycle: "
                                    + " -> ".join((*trail, group))))
            return ()
        found: list[str] = []
        for index, item in enumerate(raw[group]):
            where = f"dependency-groups.{group}[{index}]"
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
                problems: list[Problem]) -> dict[str, str]:
    tool = data.get("tool", {})
    table = tool.get("sandrun", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        problems.append(Problem("tool.sandrun", "not a table"))
        return {}
    found: dict[str, str] = {}
    for key, value in table.items():
        where = f"tool.sandrun.{key}"
        if key not in TOOL_KEYS:
            problems.append(Problem(where, "unknown key", f"known: {', '.join(TOOL_KEYS)}"))
            continue
        if not isinstance(value, str) or not value:
            problems.append(Problem(where, "not a non-empty string"))
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
        elif not (root / source).is_dir():
            problems.append(Problem("tool.sandrun.source", f"{root / source} is not a "
                                    "directory"))
        found["source"] = source
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
            f"project.scripts.{script}", problem, "use MODULE:FUNCTION")])
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


def profile_of(project: Project, profile: str | None) -> str | None:
    """-p, else [tool.sandrun] profile (a file relative to the project, or a shipped
    name), else None (the bundle's embedded `default`)."""
    if profile:
        return profile
    chosen = project.tool.get("profile")
    if chosen is None:
        return None
    if "/" in chosen or chosen.endswith(".toml"):
        return str(project.root / chosen)
    return chosen


def check_project_names(project: Project) -> None:
    """The distribution name must be a valid one (it names the stub wheel)."""
    from packaging.utils import InvalidName, canonicalize_name

    try:
        canonicalize_name(project.name, validate=True)
    except InvalidName:
        raise ProjectError(f"{project.pyproject}: invalid project name", [Problem(
            "project.name", f"{project.name!r} is not a valid distribution name")]) from None


