#!/usr/bin/env python3
"""Generate sandrun/sandbox/syscall_table.py from the installed libseccomp and systemd.

    .venv/bin/python tools/gen_syscall_table.py           # rewrite the table
    .venv/bin/python tools/gen_syscall_table.py --check   # exit 1 with a diff if it is stale

X86_64_SYSCALLS: every x86_64 syscall number that libseccomp (through pyseccomp) resolves
to a name, so every name in the table compiles into a filter. SYSTEMD_GROUPS: the groups
`systemd-analyze syscall-filter` prints, except @known (systemd's list of every syscall
name it knows: as an allowed group it would make the filter meaningless).

sandrun reads the generated table at run time, so `sandrun exec` needs neither systemd
nor this script; tests/test_syscall_table.py fails when the installed versions disagree
with the checked-in table. The script lives outside the package: it is a development
tool (it runs systemd-analyze) and is never imported on the privileged path.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))  # also when a test loads this file by its path

from generated_file import write_or_check  # noqa: E402

TABLE = REPO / "sandrun" / "sandbox" / "syscall_table.py"
REGENERATE = ".venv/bin/python tools/gen_syscall_table.py"

# x86_64 syscall numbers are below 512 (the kernel keeps 512..547 for x32's compat calls);
# scanning to 1024 leaves room, and a name near the end means the scan must grow.
NUMBER_LIMIT = 1024
EXCLUDED_GROUPS = frozenset({"@known"})

_NAME = re.compile(r"@?[a-z0-9_]+(-[a-z0-9_]+)*")
_GROUP_HEADER = re.compile(r"@[a-z0-9-]+")

Groups = Mapping[str, frozenset[str]]


# --- libseccomp ------------------------------------------------------------------------

def libseccomp_syscalls() -> frozenset[str]:
    """Every name libseccomp gives an x86_64 syscall number."""
    import pyseccomp

    names: dict[int, str] = {}
    for number in range(NUMBER_LIMIT):
        try:
            raw = pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, number)
        except ValueError:  # no syscall with this number
            continue
        names[number] = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
    if not names:
        raise RuntimeError("libseccomp resolved no x86_64 syscall number")
    if max(names) >= NUMBER_LIMIT - 64:
        raise RuntimeError(f"libseccomp knows x86_64 syscall {max(names)}: raise NUMBER_LIMIT")
    for name in names.values():
        _check_name(name, "libseccomp")
    return frozenset(names.values())


def libseccomp_version() -> str:
    """`2.5.4 (Debian libseccomp2 2.5.4-1+deb12u1)`: distributions patch the syscall table,
    so the package version says more than the library's."""
    path = ctypes.util.find_library("seccomp")  # the library pyseccomp loads
    if path is None:
        raise RuntimeError("libseccomp is not installed")

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                    ("micro", ctypes.c_uint)]

    library = ctypes.CDLL(path)
    library.seccomp_version.restype = ctypes.POINTER(Version)
    version = library.seccomp_version().contents
    text = f"{version.major}.{version.minor}.{version.micro}"
    package = _dpkg_version("libseccomp2")
    return f"{text} (Debian libseccomp2 {package})" if package else text


def _dpkg_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return ""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


# --- systemd ---------------------------------------------------------------------------

def systemd_analyze() -> str:
    """The path of systemd-analyze, or "" when it is not installed."""
    return shutil.which("systemd-analyze") or ""


def _run_systemd_analyze(*args: str) -> str:
    program = systemd_analyze()
    if not program:
        raise RuntimeError("systemd-analyze is not installed (Debian: apt-get install systemd)")
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"}
    # stderr is left out: it only says whether the running kernel's list was readable.
    result = subprocess.run([program, "--no-pager", *args], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"systemd-analyze {' '.join(args)} failed "
                           f"(exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def systemd_groups() -> dict[str, frozenset[str]]:
    """systemd's syscall groups, as the installed systemd-analyze prints them."""
    return parse_syscall_filter(_run_systemd_analyze("syscall-filter"))


def systemd_version() -> str:
    """`252 (252.38-1~deb12u1)`, from the first line of `systemd-analyze --version`."""
    first = _run_systemd_analyze("--version").splitlines()[0]
    return first.removeprefix("systemd ").strip()


def parse_syscall_filter(text: str) -> dict[str, frozenset[str]]:
    """`systemd-analyze syscall-filter` output -> group -> members, minus EXCLUDED_GROUPS.

    A group is an `@name` line, then indented lines: `# description`, then members (syscall
    names or other @groups); a blank line ends it. Unindented `#` lines (the list of
    ungrouped syscalls) are comments. Anything else is an error, so a format change
    fails loudly instead of losing names.
    """
    groups: dict[str, set[str]] = {}
    current: set[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or line.startswith("#"):
            current = None
        elif _GROUP_HEADER.fullmatch(line):
            if line in groups:
                raise ValueError(f"line {number}: group {line} is listed twice")
            current = groups[line] = set()
        elif line[0].isspace() and current is not None:
            if not stripped.startswith("#"):
                current.add(_check_name(stripped, f"line {number}"))
        else:
            raise ValueError(f"line {number}: unexpected {line!r}")
    result = {name: frozenset(members) for name, members in groups.items()
              if name not in EXCLUDED_GROUPS}
    for name, members in result.items():
        if not members:
            raise ValueError(f"group {name} has no members")
        for member in sorted(members):
            if member.startswith("@") and member not in result:
                raise ValueError(f"group {name} includes {member}, which is not a group "
                                 "(or is excluded)")
    if not result:
        raise ValueError("no syscall group found")
    return result


def _check_name(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: {name!r} is not a syscall or group name")
    return name


# --- the generated module --------------------------------------------------------------

def render_body(syscalls: Iterable[str], groups: Groups) -> str:
    """The data part of syscall_table.py (everything after its docstring), sorted."""
    lines = ["# Every x86_64 syscall number libseccomp resolves, by name.",
             "X86_64_SYSCALLS: frozenset[str] = frozenset({"]
    lines += [f'    "{name}",' for name in sorted(syscalls)]
    lines += [
        "})",
        "",
        "# systemd's groups as `systemd-analyze syscall-filter` prints them, except @known;",
        "# members may be other @groups and names of other architectures (ignored where they",
        "# do not resolve).",
        "SYSTEMD_GROUPS: dict[str, frozenset[str]] = {",
    ]
    for group in sorted(groups):
        lines.append(f'    "{group}": frozenset({{')
        lines += [f'        "{member}",' for member in sorted(groups[group])]
        lines.append("    }),")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(syscalls: Iterable[str], groups: Groups, seccomp_version: str,
           systemd: str) -> str:
    header = (
        '"""x86_64 syscall names and systemd\'s syscall groups, for profile validation and\n'
        "the seccomp baseline (so neither needs systemd at run time).\n"
        "\n"
        "Generated by tools/gen_syscall_table.py: do not edit. Regenerate with\n"
        f"    {REGENERATE}\n"
        f"from libseccomp {seccomp_version}\n"
        f"and systemd {systemd}'s `systemd-analyze syscall-filter`.\n"
        '"""\n'
        "\n"
    )
    return header + render_body(syscalls, groups)


def generate() -> str:
    """The table as the installed libseccomp and systemd-analyze define it."""
    return render(libseccomp_syscalls(), systemd_groups(), libseccomp_version(),
                  systemd_version())


def drift(table_syscalls: Iterable[str], table_groups: Groups,
          installed_syscalls: Iterable[str] | None, installed_groups: Groups | None
          ) -> list[str]:
    """Human lines for every difference between the table and the installed sources
    (None: that source was not consulted)."""
    lines: list[str] = []
    if installed_syscalls is not None:
        lines += _set_drift("X86_64_SYSCALLS", frozenset(table_syscalls),
                            frozenset(installed_syscalls), "libseccomp")
    if installed_groups is not None:
        for group in sorted(table_groups.keys() | installed_groups.keys()):
            if group not in installed_groups:
                lines.append(f"SYSTEMD_GROUPS: {group} is not a group of the installed systemd")
            elif group not in table_groups:
                lines.append(f"SYSTEMD_GROUPS: {group} is missing (the installed systemd has "
                             "it)")
            else:
                lines += _set_drift(f"SYSTEMD_GROUPS[{group!r}]", table_groups[group],
                                    installed_groups[group], "systemd")
    return lines


def _set_drift(what: str, table: frozenset[str], installed: frozenset[str],
               source: str) -> list[str]:
    lines = []
    if installed - table:
        lines.append(f"{what}: the installed {source} adds " + ", ".join(sorted(installed - table)))
    if table - installed:
        lines.append(f"{what}: the installed {source} lacks "
                     + ", ".join(sorted(table - installed)))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="print a diff and exit 1 if the table is stale; write nothing")
    parser.add_argument("--output", type=Path, default=TABLE,
                        help=f"the module to write (default: {TABLE.relative_to(REPO)})")
    options = parser.parse_args(argv)
    try:
        text = generate()
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"gen_syscall_table: {exc}", file=sys.stderr)
        return 2
    return write_or_check(options.output, text, check=options.check,
                          regenerate=REGENERATE)


if __name__ == "__main__":
    sys.exit(main())
