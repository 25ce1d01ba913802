"""Per-app profiles: schema, loading with `extends`, validation and rendering.

A profile (TOML) says what an app may touch: files, TCP ports, syscalls,
process limits and environment. Every problem in a file, and in the files it
extends, is reported at once as `FILE:LINE: dotted.key`, what is wrong and how
to fix it. Placeholders such as `{state}` stay in the resolved Profile until
the launcher knows the real directories and calls `Profile.expand()`.

`profiles/default.toml` documents every key; keep the two in step.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
import resource
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sandrun.errors import Problem, ProfileError
from sandrun.sandbox.syscall_table import SYSTEMD_GROUPS, X86_64_SYSCALLS

__all__ = [
    "CALLER_PLACEHOLDERS",
    "DEFAULT_LANDLOCK_MIN_ABI",
    "DNS_FILES",
    "LANDLOCK_ABI_MAX",
    "PLACEHOLDERS",
    "PROJECT_MARKERS",
    "RLIMITS",
    "Profile",
    "check_files",
    "load_profile",
    "load_profile_text",
    "profile_to_json",
    "project_dir",
    "render_toml",
    "shipped_profile_path",
    "shipped_profiles",
]

# The newest Landlock ABI sandrun knows; a profile asking for more is an error
# because sandrun could not enforce what that ABI adds.
LANDLOCK_ABI_MAX = 7
# ABI 6 adds the abstract-unix-socket and signal scopes, without which the app
# can talk to or signal processes outside its sandbox.
DEFAULT_LANDLOCK_MIN_ABI = 6

# What the launcher substitutes. Directory placeholders are absolute paths, so
# they may only start a path; {app} is a name, usable inside one.
PLACEHOLDERS: Mapping[str, str] = MappingProxyType({
    "app": "the app's name, e.g. \"/var/log/{app}\"",
    "store": "the app's installed, read-only code tree (<store>/apps/<bundle sha256>)",
    "state": "the app's writable state directory (<store>/state/<app>)",
    "tmp": "the app's TMPDIR (inside {state})",
    "home": "the app's HOME (inside {state})",
    "cwd": "the working directory `sandrun exec` was started in (never /)",
    "project": "the project {cwd} belongs to: the nearest directory from {cwd} upwards that "
               "holds a project marker (pyproject.toml, setup.cfg, .git, ...), else {cwd} "
               "(never /)",
})
# Placeholders whose value depends on where `sandrun exec` is started: a service or a
# container has no such directory, so exporters refuse profiles that use them.
CALLER_PLACEHOLDERS = frozenset({"cwd", "project"})
_NAME_PLACEHOLDERS = frozenset({"app"})

RLIMITS: Mapping[str, int] = MappingProxyType({
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "cpu": resource.RLIMIT_CPU,
    "memlock": resource.RLIMIT_MEMLOCK,
    "stack": resource.RLIMIT_STACK,
    "data": resource.RLIMIT_DATA,
})

# What `[network] dns = true` makes readable (as optional paths: absent ones
# are skipped). Resolution also needs UDP sockets, which Landlock (ABI <= 7)
# does not restrict; the seccomp filter must allow them when dns is true.
DNS_FILES: tuple[str, ...] = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
)

# What marks the root of a project for the tools that look for their configuration from
# where they start upwards: black (.git, .hg, pyproject.toml), mypy (mypy.ini, .mypy.ini,
# pyproject.toml, setup.cfg; it stops at .git/.hg), ruff (pyproject.toml, ruff.toml,
# .ruff.toml), pytest (pytest.ini, .pytest.ini, pyproject.toml, tox.ini, setup.cfg),
# flake8, isort and pylint (theirs). {project} is the nearest directory holding one.
PROJECT_MARKERS: tuple[str, ...] = (
    ".git", ".hg", "pyproject.toml", "setup.cfg", "setup.py", "tox.ini", "mypy.ini",
    ".mypy.ini", "ruff.toml", ".ruff.toml", "pytest.ini", ".pytest.ini", ".flake8",
    ".isort.cfg", ".pylintrc", "pylintrc",
)


def project_dir(cwd: str) -> tuple[str, str, tuple[str, ...]]:
    """{project} for the working directory `cwd` (absolute): (the directory, the marker
    that made it the project or "" when it is `cwd` by default, the paths whose presence
    decided it).

    The nearest of `cwd` and its ancestors holding one of PROJECT_MARKERS, decided by
    lstat alone: root never opens, nor follows, anything a user wrote there. The search
    never reaches `/`, and stops below the first ancestor that anyone but root and the
    owner of `cwd` owns or can write (/tmp, a shared directory): a marker there would be
    another user's choice of what the app may read. Nothing marked: `cwd` itself (`/`
    included, which Profile.expand refuses as it refuses {cwd} = /).
    """
    cwd = _normalise(cwd)
    checked: list[str] = []
    try:
        owner = os.lstat(cwd).st_uid
    except OSError:
        return cwd, "", ()
    directory = cwd
    while directory != "/":
        if directory != cwd:
            try:
                st = os.lstat(directory)
            except OSError:
                break
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, owner) \
                    or st.st_mode & 0o022:
                break
        for marker in PROJECT_MARKERS:
            path = posixpath.join(directory, marker)
            checked.append(path)
            try:
                os.lstat(path)
            except OSError:  # absent (or, not root, unreadable): not a marker
                continue
            return directory, marker, tuple(checked)
        directory = posixpath.dirname(directory)
    return cwd, "", tuple(checked)


_MAX_PROFILE_BYTES = 1 << 20
_RLIM_MAX = (1 << 63) - 1
_SHIPPED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LEADING_PLACEHOLDER = re.compile(r"\{(store|state|tmp|home|cwd|project)\}(?=/|\Z)")
_ENV_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Profile:
    """A fully resolved profile (extends merged), immutable, placeholders not expanded.

    `source` (where it came from) is not part of equality, so a profile equals
    its own `render_toml` round trip wherever that text is loaded from.
    """

    name: str
    source: str = field(compare=False)
    description: str
    read: tuple[str, ...]
    optional_read: tuple[str, ...]
    read_write: tuple[str, ...]
    execute: tuple[str, ...]
    bind_tcp: tuple[int, ...]
    connect_tcp: tuple[int, ...]
    dns: bool
    unix_sockets: bool
    subprocess: bool
    fork: bool
    mdwe: bool
    env_pass: tuple[str, ...]
    env_set: Mapping[str, str] = field(hash=False)
    rlimits: Mapping[str, int | None] = field(hash=False)  # None = infinity
    syscalls_allow: tuple[str, ...]
    syscalls_deny: tuple[str, ...]
    landlock_min_abi: int
    # [limits]: name -> value (None = unlimited); absent names are not limited. Sizes in
    # bytes, cpu in percent of one CPU.
    limits: Mapping[str, int | None] = field(hash=False, default_factory=dict)
    limits_required: tuple[str, ...] = ()
    # The files it was read from (extends chain, shipped ones included): the warm exec
    # cache is valid only while none of them changed.
    files: tuple[str, ...] = field(default=(), compare=False)

    def placeholders_used(self) -> frozenset[str]:
        """The names of the placeholders the profile's paths and env values use."""
        texts = (*self.read, *self.optional_read, *self.read_write, *self.execute,
                 *self.env_set.values())
        return frozenset(m.group(1) for text in texts for m in _PLACEHOLDER.finditer(text)
                         if m.group(1) in PLACEHOLDERS)

    def expand(self, placeholders: Mapping[str, str]) -> Profile:
        """Substitute placeholders; paths become normalised and absolute.

        Only placeholders the profile uses need a value. Re-checks with the
        real directories what text alone cannot: nothing executable is
        writable, the app tree is not writable, `{cwd}` and `{project}` are not `/`.
        """
        problems: list[Problem] = []

        def where(key: str) -> str:
            return f"{self.source}: {key}"

        def expand_path(key: str, raw: str) -> str | None:
            match = _LEADING_PLACEHOLDER.match(raw)
            head, rest = "", raw
            if match:
                name = match.group(1)
                value = placeholders.get(name)
                if value is None:
                    problems.append(Problem(
                        where(key), f"placeholder {{{name}}} in {raw!r} has no value",
                        "the launcher must supply every placeholder the profile uses"))
                    return None
                if not value.startswith("/") or ".." in value.split("/"):
                    problems.append(Problem(
                        where(key), f"placeholder {{{name}}} has the value {value!r}, "
                        "which is not an absolute path without '..'",
                        "give placeholders absolute, normalised directories"))
                    return None
                if name in CALLER_PLACEHOLDERS and _normalise(value) == "/":
                    problems.append(Problem(
                        where(key), f"placeholder {{{name}}} is '/', which would grant the "
                        "whole file system",
                        "start sandrun exec in the directory the app should use"))
                    return None
                head, rest = value, raw[match.end():]
            # Check the profile's text, not the substituted values (a real
            # directory may contain braces).
            if any(m.group(0) != "{app}" for m in _PLACEHOLDER.finditer(rest)):
                problems.append(Problem(
                    where(key), f"path {raw!r} has a placeholder that is misplaced or unknown",
                    "see `sandrun profile check`"))
                return None
            if "{app}" in rest:
                app = placeholders.get("app")
                if not app or "/" in app or app in (".", "..") or "\0" in app:
                    problems.append(Problem(
                        where(key), f"placeholder {{app}} in {raw!r} has the value {app!r}, "
                        "which is not a file name", "the launcher must give the app's name"))
                    return None
                rest = rest.replace("{app}", app)
            path = head + rest
            if not path.startswith("/") or ".." in path.split("/"):
                problems.append(Problem(
                    where(key), f"path {path!r} is not absolute or contains '..'",
                    "use absolute paths or start them with a placeholder"))
                return None
            return _normalise(path)

        def expand_paths(key: str, raws: Iterable[str]) -> tuple[str, ...]:
            return _dedupe(p for raw in raws if (p := expand_path(key, raw)) is not None)

        read = expand_paths("filesystem.read", self.read)
        optional_read = expand_paths("filesystem.optional_read", self.optional_read)
        read_write = expand_paths("filesystem.read_write", self.read_write)
        execute = expand_paths("filesystem.execute", self.execute)

        env_set: dict[str, str] = {}
        for key, value in self.env_set.items():
            def substitute(match: re.Match[str], key: str = key) -> str:
                name = match.group(1)
                if name not in PLACEHOLDERS:
                    return match.group(0)  # validation already rejected unknown ones
                if name not in placeholders:
                    problems.append(Problem(
                        where(f"process.env.set.{key}"),
                        f"placeholder {{{name}}} has no value",
                        "the launcher must supply every placeholder the profile uses"))
                    return match.group(0)
                return placeholders[name]
            env_set[key] = _ENV_PLACEHOLDER.sub(substitute, value)

        for program in execute:
            for writable in read_write:
                if _is_within(program, writable):
                    problems.append(Problem(
                        where("filesystem.execute"),
                        f"{program} is inside the writable {writable}: the app could "
                        "replace the program and then run it",
                        "keep executables out of read_write directories"))
        app_dir = placeholders.get("store")
        if app_dir and app_dir.startswith("/"):
            app_dir = _normalise(app_dir)
            for writable in read_write:
                if _is_within(writable, app_dir) or _is_within(app_dir, writable):
                    problems.append(Problem(
                        where("filesystem.read_write"),
                        f"{writable} overlaps the app's code in {app_dir}: the app could "
                        "change its own code",
                        "grant write access to {state} or a directory outside the code"))
        if problems:
            raise ProfileError(
                f"profile {self.name!r} ({self.source}) cannot be applied", problems,
                "fix the profile or the directories given to it")
        return replace(
            self, read=read, optional_read=optional_read, read_write=read_write,
            execute=execute, env_set=MappingProxyType(env_set))


# ---------------------------------------------------------------- schema

_SECTIONS: dict[str, dict[str, str]] = {
    "": {"extends": "string", "name": "name", "description": "string"},
    "filesystem": {
        "read": "paths", "optional_read": "paths", "read_write": "paths", "execute": "paths",
    },
    "network": {"bind_tcp": "ports", "connect_tcp": "ports", "dns": "bool",
                "unix_sockets": "bool"},
    "process": {
        "subprocess": "bool", "fork": "bool", "mdwe": "bool", "env": "env", "rlimits": "rlimits",
    },
    "syscalls": {"allow": "syscalls", "deny": "syscalls"},
    "kernel": {"landlock_min_abi": "abi"},
    "limits": {"memory": "size", "tasks": "count", "cpu": "cpu", "cpu_weight": "weight",
               "nofile": "count", "fsize": "size", "required": "limit_names"},
}
_ENV_KEYS = ("pass", "set")

# Dotted key -> (Profile field, default). Lists are unioned along `extends`,
# tables merged per key, scalars overridden by the child.
_RULES: dict[str, tuple[str, Any]] = {
    "filesystem.read": ("read", ()),
    "filesystem.optional_read": ("optional_read", ()),
    "filesystem.read_write": ("read_write", ()),
    "filesystem.execute": ("execute", ()),
    "network.bind_tcp": ("bind_tcp", ()),
    "network.connect_tcp": ("connect_tcp", ()),
    "network.dns": ("dns", False),
    "network.unix_sockets": ("unix_sockets", False),
    "process.subprocess": ("subprocess", False),
    "process.fork": ("fork", True),
    "process.mdwe": ("mdwe", True),
    "process.env.pass": ("env_pass", ()),
    "process.env.set": ("env_set", {}),
    "process.rlimits": ("rlimits", {}),
    "syscalls.allow": ("syscalls_allow", ()),
    "syscalls.deny": ("syscalls_deny", ()),
    "kernel.landlock_min_abi": ("landlock_min_abi", DEFAULT_LANDLOCK_MIN_ABI),
    "limits.required": ("limits_required", ()),
}
# [limits] keys other than `required`: merged per key along `extends` (child wins).
LIMITS: Mapping[str, str] = MappingProxyType({
    "memory": "memory the app's processes may use together (cgroup memory controller)",
    "tasks": "processes and threads (cgroup pids controller; RLIMIT_NPROC per app user)",
    "cpu": "CPU time as a percentage of one CPU, e.g. \"200%\" (cgroup cpu quota)",
    "cpu_weight": "relative CPU share 1-10000, 100 is the default (cgroup cpu weight)",
    "nofile": "open files per process (RLIMIT_NOFILE)",
    "fsize": "largest file the app may write (RLIMIT_FSIZE)",
})
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?\Z", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+)%\Z")

_ALL_GROUP_MEMBERS = frozenset().union(*SYSTEMD_GROUPS.values())


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _closest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _dedupe(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


def _normalise(path: str) -> str:
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def _is_within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


# ---------------------------------------------------------------- line finder

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_KEY_LINE = re.compile(rf"\s*({_DOTTED})\s*=")
_HEADER_LINE = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEY_PARTS = re.compile(_KEY_PART)


def _key_parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in _KEY_PARTS.findall(dotted)]


def _scan_brackets(line: str, pos: int, depth: int, multiline: str | None
                   ) -> tuple[int, str | None]:
    """Track array/inline-table nesting across lines, skipping strings and comments."""
    i = pos
    while i < len(line):
        if multiline:
            end = line.find(multiline, i)
            if end < 0:
                return depth, multiline
            i, multiline = end + 3, None
            continue
        char = line[i]
        if char == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            multiline, i = line[i:i + 3], i + 3
            continue
        if char == '"':
            i += 1
            while i < len(line) and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
        elif char == "'":
            end = line.find("'", i + 1)
            i = len(line) if end < 0 else end
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, multiline


class TomlLocator:
    """Best-effort line numbers for dotted keys (tomllib gives no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.first: dict[str, int] = {}
        self.span: dict[str, tuple[int, int]] = {}
        table: list[str] = []
        depth, multiline = 0, None
        open_key: list[str] | None = None
        open_line = 0
        for number, line in enumerate(self.lines, 1):
            pos = 0
            if depth == 0 and multiline is None:
                header = _HEADER_LINE.match(line)
                if header:
                    table = _key_parts(header.group(1))
                    self._record(table, number, number)
                    continue
                key = _KEY_LINE.match(line)
                if key:
                    open_key, open_line = table + _key_parts(key.group(1)), number
                    pos = key.end()
            depth, multiline = _scan_brackets(line, pos, depth, multiline)
            if open_key is not None and depth == 0 and multiline is None:
                self._record(open_key, open_line, number)
                open_key = None

    def _record(self, parts: list[str], start: int, end: int) -> None:
        for n in range(1, len(parts) + 1):
            self.first.setdefault(".".join(parts[:n]), start)
        self.span.setdefault(".".join(parts), (start, end))

    def line_of(self, dotted: str, element: object = None) -> int | None:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key not in self.first:
                continue
            if element is not None and key in self.span:
                found = self._find_element(self.span[key], element)
                if found:
                    return found
            return self.first[key]
        return None

    def _find_element(self, span: tuple[int, int], element: object) -> int | None:
        if isinstance(element, str):
            needles = [f'"{element}"', f"'{element}'"]
            pattern = None
        else:
            needles = []
            pattern = re.compile(rf"(?<![\w.+-]){re.escape(str(element))}(?![\w.])")
        start, end = span
        for number in range(start, end + 1):
            line = self.lines[number - 1]
            if any(n in line for n in needles) or (pattern and pattern.search(line)):
                return number
        return None


# ---------------------------------------------------------------- one file

@dataclass
class _Layer:
    """What one profile file sets, validated, before merging."""

    label: str  # the file, as shown in `where`
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    description: str = ""
    extends: str | None = None
    extends_where: str = ""


class _Checker:
    """Validates one parsed file, appending every problem with its place."""

    def __init__(self, label: str, text: str, problems: list[Problem]) -> None:
        self.label = label
        self.locator = TomlLocator(text)
        self.problems = problems
        self.layer = _Layer(label)

    def where(self, dotted: str, element: object = None) -> str:
        line = self.locator.line_of(dotted, element)
        return f"{self.label}:{line}: {dotted}" if line else f"{self.label}: {dotted}"

    def problem(self, dotted: str, what: str, hint: str = "", element: object = None) -> None:
        self.problems.append(Problem(self.where(dotted, element), what, hint))

    def wrong_type(self, dotted: str, expected: str, value: object, element: object = None
                   ) -> None:
        self.problem(dotted, f"expected {expected}, got {_type_name(value)}",
                     "write it like the same key in profiles/default.toml", element)

    def set(self, dotted: str, value: Any) -> None:
        self.layer.values[dotted] = value
        self.layer.origins[dotted] = self.where(dotted)

    # -- top level

    def check(self, data: dict[str, Any]) -> _Layer:
        for key, value in data.items():
            if key in _SECTIONS[""]:
                self.check_top(key, value)
            elif key in _SECTIONS:
                if isinstance(value, dict):
                    for sub, sub_value in value.items():
                        self.check_key(key, sub, sub_value)
                else:
                    self.wrong_type(key, f"a table [{key}]", value)
            else:
                self.unknown_top(key, value)
        self.check_allow_deny()
        return self.layer

    def check_top(self, key: str, value: object) -> None:
        if not isinstance(value, str):
            self.wrong_type(key, "a string", value)
        elif key == "extends":
            if value.strip():
                self.layer.extends, self.layer.extends_where = value, self.where(key)
            else:
                self.problem(key, "extends is empty",
                             "name a shipped profile (e.g. \"default\") or a .toml file")
        elif key == "name":
            if value and value.isprintable() and len(value) <= 100:
                self.layer.name = value
            else:
                self.problem(key, f"name {value!r} is empty, too long or has control characters",
                             "use a short printable name such as \"web\"")
        elif value.isprintable():
            self.layer.description = value
        else:
            self.problem(key, "description has control characters (e.g. a newline)",
                         "keep the description on one line")

    def unknown_top(self, key: str, value: object) -> None:
        sections = [s for s in _SECTIONS if s]
        if isinstance(value, dict):
            close = _closest(key, sections)
            hint = f"did you mean [{close}]?" if close else f"sections are: {', '.join(sections)}"
            self.problem(key, f"unknown section [{key}]", hint)
            return
        home = [s for s in sections if key in _SECTIONS[s]]
        if home:
            hint = f"{key} belongs in [{home[0]}]: put it under that header"
        else:
            close = _closest(key, list(_SECTIONS[""]) + sections)
            hint = (f"did you mean {close!r}?" if close
                    else f"top-level keys are: {', '.join(_SECTIONS[''])}")
        self.problem(key, f"unknown key {key!r}", hint)

    def check_key(self, section: str, key: str, value: object) -> None:
        dotted = f"{section}.{key}"
        kind = _SECTIONS[section].get(key)
        if kind is None:
            close = _closest(key, _SECTIONS[section])
            home = [s for s in _SECTIONS if s and key in _SECTIONS[s]]
            if close:
                hint = f"did you mean {close!r}?"
            elif home:
                hint = f"{key} belongs in [{home[0]}], not [{section}]"
            else:
                hint = f"[{section}] keys are: {', '.join(_SECTIONS[section])}"
            self.problem(dotted, f"unknown key {key!r} in [{section}]", hint)
            return
        getattr(self, f"check_{kind}")(dotted, value)

    # -- kinds

    def check_bool(self, dotted: str, value: object) -> None:
        if isinstance(value, bool):
            self.set(dotted, value)
        else:
            self.wrong_type(dotted, "true or false", value)

    def check_abi(self, dotted: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(dotted, "an integer", value)
        elif not 1 <= value <= LANDLOCK_ABI_MAX:
            self.problem(
                dotted, f"Landlock ABI {value} is outside 1..{LANDLOCK_ABI_MAX}",
                f"sandrun knows Landlock ABIs 1 to {LANDLOCK_ABI_MAX}; the default is "
                f"{DEFAULT_LANDLOCK_MIN_ABI}")
        else:
            self.set(dotted, value)

    def list_of(self, dotted: str, value: object, expected: str) -> list[Any] | None:
        if isinstance(value, list):
            return value
        self.wrong_type(dotted, expected, value)
        return None

    def check_paths(self, dotted: str, value: object) -> None:
        items = self.list_of(dotted, value, "an array of strings (paths)")
        if items is not None:
            paths = [p for item in items if (p := self.check_path(dotted, item)) is not None]
            self.set(dotted, _dedupe(paths))

    def check_path(self, dotted: str, raw: object) -> str | None:
        if not isinstance(raw, str):
            self.wrong_type(dotted, "a path string", raw, element=raw)
            return None
        ok = True

        def bad(what: str, hint: str) -> None:
            nonlocal ok
            ok = False
            self.problem(dotted, what, hint, element=raw)

        if not raw:
            bad("empty path", "remove it or write an absolute path")
            return None
        if "\0" in raw or not raw.isprintable():
            bad(f"path {raw!r} contains control characters", "remove them")
        for match in _PLACEHOLDER.finditer(raw):
            name = match.group(1)
            if name not in PLACEHOLDERS:
                close = _closest(name, PLACEHOLDERS)
                known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                bad(f"unknown placeholder {{{name}}} in {raw!r}",
                    f"did you mean {{{close}}}?" if close else f"placeholders are: {known}")
            elif name in _NAME_PLACEHOLDERS:
                if match.start() == 0:
                    bad(f"path {raw!r} must be absolute: {{{name}}} is a name, not a directory",
                        f"write e.g. \"/var/log/{{{name}}}\" or \"{{state}}/{{{name}}}\"")
            elif match.start() != 0 or not _LEADING_PLACEHOLDER.match(raw):
                bad(f"placeholder {{{name}}} must start the path {raw!r} and be followed by "
                    "'/' or nothing", f"{{{name}}} stands for an absolute directory: "
                    f"write e.g. \"{{{name}}}/sub\"")
        if "{" in _PLACEHOLDER.sub("", raw) or "}" in _PLACEHOLDER.sub("", raw):
            bad(f"path {raw!r} has an unmatched brace", "placeholders look like {state}")
        if not raw.startswith(("/", "{")):
            bad(f"path {raw!r} must be absolute or start with a placeholder",
                "paths are not relative to the profile file: write \"/abs/path\" or "
                "\"{state}/sub\"")
        if ".." in raw.split("/"):
            bad(f"path {raw!r} contains '..'", "write the path without '..' components")
        if dotted == "filesystem.read_write" and _is_within(raw, "{store}"):
            bad(f"{raw} would make the app's code writable; the store is read-only to apps",
                "write to {state} instead")
        return _normalise(raw) if ok else None

    def check_ports(self, dotted: str, value: object) -> None:
        items = self.list_of(dotted, value, "an array of port numbers")
        if items is None:
            return
        ports = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                self.wrong_type(dotted, "an integer port", item, element=item)
            elif not 1 <= item <= 65535:
                self.problem(dotted, f"port {item} is outside 1-65535",
                             "TCP ports are 1 to 65535 (0, 'any port', is not allowed)",
                             element=item)
            else:
                ports.append(item)
        self.set(dotted, _dedupe(ports))

    def check_syscalls(self, dotted: str, value: object) -> None:
        items = self.list_of(dotted, value, "an array of syscall names or @groups")
        if items is None:
            return
        names = []
        for item in items:
            if not isinstance(item, str):
                self.wrong_type(dotted, "a syscall name or @group", item, element=item)
            elif item.startswith("@"):
                if item in SYSTEMD_GROUPS:
                    names.append(item)
                else:
                    close = _closest(item, SYSTEMD_GROUPS)
                    self.problem(dotted, f"unknown syscall group {item!r}",
                                 f"did you mean {close!r}?" if close else
                                 "`systemd-analyze syscall-filter` lists the groups",
                                 element=item)
            elif item in X86_64_SYSCALLS:
                names.append(item)
            elif item in _ALL_GROUP_MEMBERS:
                self.problem(dotted, f"{item!r} is not a syscall on x86_64",
                             "remove it: it exists only on other architectures", element=item)
            else:
                close = _closest(item, X86_64_SYSCALLS)
                self.problem(dotted, f"unknown syscall {item!r}",
                             f"did you mean {close!r}?" if close else
                             "use x86_64 syscall names (see `man 2 syscalls`)", element=item)
        self.set(dotted, _dedupe(names))

    def check_allow_deny(self) -> None:
        both = set(self.layer.values.get("syscalls.allow", ())) & set(
            self.layer.values.get("syscalls.deny", ()))
        for name in sorted(both):
            self.problem("syscalls.deny", f"{name!r} is both allowed and denied",
                         "keep it in one of syscalls.allow or syscalls.deny", element=name)

    def check_env(self, dotted: str, value: object) -> None:
        if not isinstance(value, dict):
            self.wrong_type(dotted, "a table like { pass = [...], set = {...} }", value)
            return
        for key, sub in value.items():
            sub_dotted = f"{dotted}.{key}"
            if key == "pass":
                items = self.list_of(sub_dotted, sub, "an array of variable names")
                if items is not None:
                    names = [n for n in items if self.check_env_name(sub_dotted, n)]
                    self.set(sub_dotted, _dedupe(names))
            elif key == "set":
                self.check_env_set(sub_dotted, sub)
            else:
                close = _closest(key, _ENV_KEYS)
                self.problem(sub_dotted, f"unknown key {key!r} in process.env",
                             f"did you mean {close!r}?" if close else "env has pass and set")

    def check_env_name(self, dotted: str, name: object) -> bool:
        if not isinstance(name, str):
            self.wrong_type(dotted, "a variable name string", name, element=name)
            return False
        if not _ENV_NAME.match(name):
            self.problem(dotted, f"{name!r} is not a valid environment variable name",
                         "use letters, digits and _, not starting with a digit", element=name)
            return False
        if name.startswith("LD_"):
            self.problem(dotted, f"{name} would make the dynamic loader load code the profile "
                         "does not show", "remove it; give libraries to the app in its bundle",
                         element=name)
            return False
        return True

    def check_env_set(self, dotted: str, value: object) -> None:
        if not isinstance(value, dict):
            self.wrong_type(dotted, "a table of NAME = \"value\"", value)
            return
        accepted = {}
        for name, text in value.items():
            if not self.check_env_name(dotted, name):
                continue
            if not isinstance(text, str):
                self.wrong_type(f"{dotted}.{name}", "a string value", text)
                continue
            if "\0" in text:
                self.problem(f"{dotted}.{name}", "value contains a NUL character", "remove it")
                continue
            unknown = [m.group(1) for m in _ENV_PLACEHOLDER.finditer(text)
                       if m.group(1) not in PLACEHOLDERS]
            for placeholder in unknown:
                close = _closest(placeholder, PLACEHOLDERS)
                self.problem(f"{dotted}.{name}", f"unknown placeholder {{{placeholder}}}",
                             f"did you mean {{{close}}}?" if close else
                             "placeholders are: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
            if not unknown:
                accepted[name] = text
        self.set(dotted, dict(sorted(accepted.items())))

    def _limit_value(self, dotted: str, value: object, example: str) -> tuple[bool, int | None]:
        """(ok, value): "infinity" is (True, None)."""
        if value == "infinity":
            return True, None
        if isinstance(value, bool):
            self.problem(dotted, f"expected {example} or \"infinity\", got a boolean",
                         f"e.g. {dotted.rpartition('.')[2]} = {example}")
            return False, None
        return True, value  # type: ignore[return-value]

    def check_size(self, dotted: str, value: object) -> None:
        ok, raw = self._limit_value(dotted, value, "\"512M\"")
        if not ok:
            return
        if raw is None:
            self.set(dotted, None)
            return
        number: int | None = None
        if isinstance(raw, int):
            number = raw
        elif isinstance(raw, str) and (match := _SIZE.match(raw.strip())):
            number = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
        if number is None or not 1 <= number <= _RLIM_MAX:
            self.problem(dotted, f"{raw!r} is not a size",
                         "write bytes as an integer, a number with K, M, G or T (powers of "
                         "1024), e.g. \"512M\", or \"infinity\"")
            return
        self.set(dotted, number)

    def check_count(self, dotted: str, value: object) -> None:
        ok, raw = self._limit_value(dotted, value, "512")
        if not ok:
            return
        if raw is not None and (not isinstance(raw, int) or not 1 <= raw <= _RLIM_MAX):
            self.problem(dotted, f"expected an integer >= 1 or \"infinity\", got {raw!r}",
                         f"e.g. {dotted.rpartition('.')[2]} = 512")
            return
        self.set(dotted, raw)

    def check_cpu(self, dotted: str, value: object) -> None:
        ok, raw = self._limit_value(dotted, value, "\"100%\"")
        if not ok:
            return
        match = _PERCENT.match(raw.strip()) if isinstance(raw, str) else None
        if raw is not None and (match is None or not 1 <= int(match.group(1)) <= 100_000):
            self.problem(dotted, f"expected a percentage of one CPU such as \"150%\", got "
                         f"{raw!r}", "100% is one full CPU; use \"infinity\" for no quota")
            return
        self.set(dotted, None if match is None else int(match.group(1)))

    def check_weight(self, dotted: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
            self.problem(dotted, f"expected an integer from 1 to 10000, got {value!r}",
                         "100 is the default share; 200 gets twice as much CPU under load")
            return
        self.set(dotted, value)

    def check_limit_names(self, dotted: str, value: object) -> None:
        items = self.list_of(dotted, value, "an array of limit names")
        if items is None:
            return
        names = []
        for item in items:
            if item in LIMITS:
                names.append(item)
            else:
                close = _closest(str(item), LIMITS)
                self.problem(dotted, f"unknown limit {item!r}",
                             f"did you mean {close!r}?" if close else
                             f"limits are: {', '.join(LIMITS)}", element=item)
        self.set(dotted, _dedupe(names))

    def check_rlimits(self, dotted: str, value: object) -> None:
        if not isinstance(value, dict):
            self.wrong_type(dotted, "a table like { nofile = 1024, core = 0 }", value)
            return
        limits: dict[str, int | None] = {}
        for name, limit in value.items():
            sub = f"{dotted}.{name}"
            if name not in RLIMITS:
                close = _closest(name, RLIMITS)
                self.problem(sub, f"unknown rlimit {name!r}",
                             f"did you mean {close!r}?" if close else
                             f"rlimits are: {', '.join(RLIMITS)}")
            elif limit == "infinity":
                limits[name] = None
            elif isinstance(limit, bool) or not isinstance(limit, int):
                self.problem(sub, f"expected an integer >= 0 or \"infinity\", got "
                             f"{_type_name(limit)} {limit!r}",
                             f"e.g. {name} = 1024 or {name} = \"infinity\"")
            elif not 0 <= limit <= _RLIM_MAX:
                self.problem(sub, f"rlimit {name} = {limit} is not >= 0 (or is too large)",
                             f"use 0 to {_RLIM_MAX} or \"infinity\"")
            else:
                limits[name] = limit
        self.set(dotted, dict(sorted(limits.items())))


# ---------------------------------------------------------------- loading

def _profiles_dir() -> Path | None:
    package = Path(__file__).resolve().parent.parent  # sandrun/
    for candidate in (package / "profiles", package.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return None


def _shipped_names() -> list[str]:
    directory = _profiles_dir()
    if directory is None:
        return []
    return sorted(p.stem for p in directory.glob("*.toml") if _SHIPPED_NAME.match(p.stem))


def _is_shipped_name(text: str) -> bool:
    return "/" not in text and not text.endswith(".toml")


def _missing_shipped(name: str, where: str) -> Problem:
    names = _shipped_names()
    close = _closest(name, names)
    hint = f"shipped profiles: {', '.join(names) or '(none found)'}"
    if close:
        hint = f"did you mean {close!r}? {hint}"
    return Problem(where, f"no shipped profile {name!r}",
                   hint + "; to use a file, give a path ending in .toml")


def shipped_profile_path(name: str) -> Path:
    """The file of the shipped profile NAME; ProfileError listing the names if none."""
    directory = _profiles_dir()
    if directory is not None and _SHIPPED_NAME.match(name):
        path = directory / f"{name}.toml"
        if path.is_file():
            return path
    raise ProfileError(f"no shipped profile {name!r}", [_missing_shipped(name, name)])


def shipped_profiles() -> list[tuple[str, str]]:
    """(name, description) of every shipped profile, sorted by name."""
    directory = _profiles_dir()
    result = []
    for name in _shipped_names():
        assert directory is not None
        try:
            data = tomllib.loads((directory / f"{name}.toml").read_text("utf-8"))
            description = data.get("description", "")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            description = f"(unreadable: {exc})"
        result.append((name, description if isinstance(description, str) else ""))
    return result


def _read_file(path: Path, where: str, problems: list[Problem]) -> str | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        problems.append(Problem(where, f"no such file: {path}", "check the path"))
        return None
    except OSError as exc:
        problems.append(Problem(where, f"cannot read {path}: {exc.strerror or exc}",
                                "give a readable profile file"))
        return None
    if len(data) > _MAX_PROFILE_BYTES:
        problems.append(Problem(where, f"{path} is larger than {_MAX_PROFILE_BYTES} bytes",
                                "a profile is a short TOML file"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(where, f"not UTF-8 ({exc.reason} at byte "
                                f"{exc.start})", "save the profile as UTF-8"))
        return None


def _parse(text: str, label: str, problems: list[Problem]) -> _Layer | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match:
            where = f"{label}:{match.group(1)}"
            message = f"{message[:match.start()]} (column {match.group(2)})"
        else:  # "at end of document": point at the last line
            where = f"{label}:{max(1, len(text.splitlines()))}"
        problems.append(Problem(where, f"invalid TOML: {message}",
                                "fix the syntax; profiles/default.toml shows the format"))
        return None
    return _Checker(label, text, problems).check(data)


@dataclass(frozen=True)
class _Origin:
    """One file in an extends chain."""

    text: str
    label: str
    identity: str  # resolved path or shipped:NAME, for cycle detection
    base_dir: Path | None
    path: Path | None = None  # the file read, None for text


def _open_parent(layer: _Layer, base_dir: Path | None, problems: list[Problem]
                 ) -> _Origin | None:
    target = layer.extends
    assert target is not None
    if _is_shipped_name(target):
        if not _SHIPPED_NAME.match(target):
            problems.append(_missing_shipped(target, layer.extends_where))
            return None
        try:
            path = shipped_profile_path(target)
        except ProfileError:
            problems.append(_missing_shipped(target, layer.extends_where))
            return None
        identity = f"shipped:{target}"
    elif base_dir is None:
        problems.append(Problem(
            layer.extends_where, f"extends a file ({target!r}) in a profile that is not a file",
            "only shipped profile names can be extended here; embed the flattened "
            "profile (`sandrun profile show FILE`)"))
        return None
    else:
        # Open the path as written (the kernel resolves '..' after symlinks); the
        # normalised form is only for messages.
        path = base_dir / target
        identity = str(path.resolve())
    text = _read_file(path, layer.extends_where, problems)
    if text is None:
        return None
    return _Origin(text, posixpath.normpath(path), identity, path.parent, path)


def _load_chain(origin: _Origin, seen: list[_Origin], problems: list[Problem],
                files: list[str]) -> list[_Layer]:
    """The layers from the root ancestor down to ORIGIN (problems collected, not raised;
    the files read appended to FILES)."""
    if origin.path is not None:
        files.append(os.path.abspath(origin.path))
    layer = _parse(origin.text, origin.label, problems)
    if layer is None or layer.extends is None:
        return [layer] if layer else []
    parent = _open_parent(layer, origin.base_dir, problems)
    if parent is None:
        return [layer]
    chain = [*seen, origin]
    if parent.identity in (o.identity for o in chain):
        cycle = [o.label for o in chain[[o.identity for o in chain].index(parent.identity):]]
        problems.append(Problem(
            layer.extends_where,
            f"extends forms a cycle: {' -> '.join([*cycle, parent.label])}",
            "remove one of the extends so the chain ends at a profile without extends"))
        return [layer]
    return [*_load_chain(parent, chain, problems, files), layer]


def _merge(layers: list[_Layer], name: str, source: str, problems: list[Problem]) -> Profile:
    values: dict[str, Any] = {key: default for key, (_, default) in _RULES.items()}
    origins: dict[str, str] = {}
    depth: dict[str, int] = {}  # index of the layer that last set each key
    for index, layer in enumerate(layers):
        for key, value in layer.values.items():
            depth[key] = index
            if isinstance(value, tuple):
                values[key] = _dedupe((*values[key], *value))
            elif isinstance(value, dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
            origins[key] = layer.origins[key]
    leaf = layers[-1]

    def where(key: str) -> str:
        return origins.get(key, f"{leaf.label}: {key}")

    def culprit(first: str, second: str) -> str:
        """Of two contradicting keys, the one set last along the chain (second on a tie)."""
        return first if depth.get(first, -1) > depth.get(second, -1) else second

    execute, read_write = values["filesystem.execute"], values["filesystem.read_write"]
    if execute and not values["process.subprocess"]:
        problems.append(Problem(
            where(culprit("filesystem.execute", "process.subprocess")),
            "contradiction: filesystem.execute lists programs but process.subprocess is "
            "false, so the app could never run them",
            "set [process] subprocess = true, or empty [filesystem] execute"))
    if values["process.subprocess"] and not values["process.fork"]:
        problems.append(Problem(
            where(culprit("process.subprocess", "process.fork")),
            "contradiction: process.subprocess = true needs a new process but "
            "process.fork = false forbids creating one",
            "set fork = true, or subprocess = false"))
    for program in execute:
        for writable in read_write:
            if _is_within(program, writable):
                problems.append(Problem(
                    where("filesystem.execute"), f"{program} is inside the writable {writable}: "
                    "the app could write and execute the same file",
                    "keep programs out of read_write directories"))
    limits = {name: values[f"limits.{name}"] for name in LIMITS if f"limits.{name}" in values}
    for name in values.get("limits.required", ()):
        if name not in limits or limits[name] is None:
            problems.append(Problem(
                where("limits.required"), f"limit {name!r} is required but not set",
                f"set [limits] {name}, or remove it from required"))
    fields = {field_name: values[key] for key, (field_name, _) in _RULES.items()}
    fields["limits"] = MappingProxyType(dict(sorted(limits.items())))
    fields["env_set"] = MappingProxyType(dict(sorted(values["process.env.set"].items())))
    fields["rlimits"] = MappingProxyType(dict(sorted(values["process.rlimits"].items())))
    return Profile(name=leaf.name or name, source=source, description=leaf.description,
                   **fields)


def _build(origin: _Origin, name: str, source: str, problems: list[Problem]) -> Profile:
    files: list[str] = []
    layers = _load_chain(origin, [], problems, files)
    profile = _merge(layers, name, source, problems) if layers and not problems else None
    if profile is not None:
        profile = replace(profile, files=tuple(files))
    if problems or profile is None:
        count = len(problems)
        raise ProfileError(
            f"profile {source} is invalid ({count} problem{'s' if count != 1 else ''})",
            problems, "fix every listed problem; `sandrun profile check FILE` checks again")
    return profile


def _name_from_source(source: str) -> str:
    if source.startswith("shipped:"):
        return source[len("shipped:"):]
    name = Path(source).name
    return (name[:-len(".toml")] if name.endswith(".toml") else name) or "profile"


def _load_file(path: Path, source: str, problems: list[Problem]) -> Profile:
    text = _read_file(path, str(path), problems)
    if text is None:
        raise ProfileError(f"profile {source} cannot be read", problems,
                           "give a shipped profile name or a readable .toml file")
    origin = _Origin(text, str(path), str(path.resolve()), path.parent, path)
    return _build(origin, _name_from_source(source), source, problems)


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped NAME (no '/', no .toml suffix) or a FILE; extends resolved, all checked."""
    if _is_shipped_name(name_or_path):
        path = shipped_profile_path(name_or_path)
        return _load_file(path, f"shipped:{name_or_path}", [])
    return _load_file(Path(name_or_path), name_or_path, [])


def load_profile_text(text: str, source: str = "<text>", base_dir: Path | None = None
                      ) -> Profile:
    """Load a profile given as text (e.g. embedded in a bundle).

    With base_dir None only shipped names may be extended: an embedded profile
    must be self-contained (render_toml output is).
    """
    identity = f"text:{source}"
    return _build(_Origin(text, source, identity, base_dir), _name_from_source(source),
                  source, [])


def check_files(paths: Sequence[str]) -> list[Problem]:
    """Every problem in every file (empty: all valid). For `sandrun profile check`."""
    problems: list[Problem] = []
    for path in paths:
        try:
            _load_file(Path(path), path, [])
        except ProfileError as exc:
            problems.extend(exc.problems)
    return problems


# ---------------------------------------------------------------- rendering

def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_array(items: Iterable[str | int]) -> str:
    return "[" + ", ".join(
        _toml_string(i) if isinstance(i, str) else str(i) for i in items) + "]"


def render_limit(name: str, value: int | None) -> str:
    """A [limits] value as TOML: sizes in bytes, cpu as a percentage."""
    if value is None:
        return _toml_string("infinity")
    return _toml_string(f"{value}%") if name == "cpu" else str(value)


def profile_to_json(profile: Profile) -> dict[str, Any]:
    """The profile as data, shaped like its TOML (`sandrun profile show --json`):
    "infinity" where TOML says it."""
    def limit(name: str, value: int | None) -> int | str:
        if value is None:
            return "infinity"
        return f"{value}%" if name == "cpu" else value

    return {
        "name": profile.name,
        "description": profile.description,
        "filesystem": {"read": list(profile.read), "optional_read": list(profile.optional_read),
                       "read_write": list(profile.read_write),
                       "execute": list(profile.execute)},
        "network": {"bind_tcp": list(profile.bind_tcp),
                    "connect_tcp": list(profile.connect_tcp), "dns": profile.dns,
                    "unix_sockets": profile.unix_sockets},
        "process": {"subprocess": profile.subprocess, "fork": profile.fork,
                    "mdwe": profile.mdwe,
                    "env": {"pass": list(profile.env_pass), "set": dict(profile.env_set)},
                    "rlimits": {k: "infinity" if v is None else v
                                for k, v in profile.rlimits.items()}},
        "syscalls": {"allow": list(profile.syscalls_allow),
                     "deny": list(profile.syscalls_deny)},
        "kernel": {"landlock_min_abi": profile.landlock_min_abi},
        "limits": {**{k: limit(k, v) for k, v in profile.limits.items()},
                   "required": list(profile.limits_required)},
    }


def render_toml(profile: Profile) -> str:
    """The profile flattened (no extends), every key explicit, stable order, no comments.

    load_profile_text(render_toml(p)) == p.
    """
    env_set = ", ".join(f"{_toml_key(k)} = {_toml_string(v)}"
                        for k, v in sorted(profile.env_set.items()))
    rlimits = ", ".join(f"{k} = {_toml_string('infinity') if v is None else v}"
                        for k, v in sorted(profile.rlimits.items()))
    lines = [
        f"name = {_toml_string(profile.name)}",
        f"description = {_toml_string(profile.description)}",
        "",
        "[filesystem]",
        f"read = {_toml_array(profile.read)}",
        f"optional_read = {_toml_array(profile.optional_read)}",
        f"read_write = {_toml_array(profile.read_write)}",
        f"execute = {_toml_array(profile.execute)}",
        "",
        "[network]",
        f"bind_tcp = {_toml_array(profile.bind_tcp)}",
        f"connect_tcp = {_toml_array(profile.connect_tcp)}",
        f"dns = {str(profile.dns).lower()}",
        f"unix_sockets = {str(profile.unix_sockets).lower()}",
        "",
        "[process]",
        f"subprocess = {str(profile.subprocess).lower()}",
        f"fork = {str(profile.fork).lower()}",
        f"mdwe = {str(profile.mdwe).lower()}",
        f"env = {{ pass = {_toml_array(profile.env_pass)}, set = {{ {env_set} }} }}"
        if env_set else f"env = {{ pass = {_toml_array(profile.env_pass)}, set = {{}} }}",
        f"rlimits = {{ {rlimits} }}" if rlimits else "rlimits = {}",
        "",
        "[syscalls]",
        f"allow = {_toml_array(profile.syscalls_allow)}",
        f"deny = {_toml_array(profile.syscalls_deny)}",
        "",
        "[kernel]",
        f"landlock_min_abi = {profile.landlock_min_abi}",
        "",
        "[limits]",
        *(f"{name} = {render_limit(name, value)}" for name, value in profile.limits.items()),
        f"required = {_toml_array(profile.limits_required)}",
    ]
    return "\n".join(lines) + "\n"
