"""The options of `sandrun exec`, in one table.

The click `exec` command is generated from EXEC_OPTIONS (cli.py) and the warm path
parses its argv with the same table (warm_exec.parse_exec_args), so both accept exactly
the same spellings. Anything the warm path does not serve — an unknown option above
all — goes to the click command, which reports it as a usage error (exit 2, with a
"did you mean" suggestion) instead of taking it for the bundle path.

Every warm start imports this module: the standard library only, and nothing costly
(no typing, dataclasses or re).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class Option:
    """One option of `sandrun exec`.

    names    every spelling, short first ("-p", "--profile")
    dest     the name of its parsed value: the click parameter, the ExecArgs slot
    field    the launcher.ExecOptions field it fills (None: the CLI itself uses it),
             through `convert` when the field's type differs from the value's
    flag     True: takes no value (its value is True when given)
    warm     whether the warm path serves it: True for any value, a tuple for those
             values only, False when only the cold path can (it then declines)
    multiple True: repeatable, the value is the tuple of every occurrence in order
    metavar, help, default, choices, envvar: as for click.option
    """

    __slots__ = ("choices", "convert", "default", "dest", "envvar", "field", "flag", "help",
                 "metavar", "multiple", "names", "warm")

    def __init__(self, *names: str, dest: str, field: str | None, help: str,
                 flag: bool = False, metavar: str | None = None, default: str | None = None,
                 choices: tuple[str, ...] | None = None, envvar: str | None = None,
                 warm: bool | tuple[str, ...] = False,
                 convert: Callable[[Any], Any] | None = None, multiple: bool = False) -> None:
        self.names = names
        self.dest = dest
        self.field = field
        self.help = help
        self.flag = flag
        self.metavar = metavar
        self.default = default
        self.choices = choices
        self.envvar = envvar
        self.warm = warm
        self.convert = convert
        self.multiple = multiple  # repeatable: its value is a tuple of every occurrence

    def __repr__(self) -> str:
        return f"Option({'/'.join(self.names)})"

    def serves_warm(self, value: object) -> bool:
        """Whether the warm path can launch with this option set to `value`."""
        return self.warm is True or (isinstance(self.warm, tuple) and value in self.warm)


def _is_full(verify: str) -> bool:
    return verify == "full"


# -v/--verbose is accepted by every subcommand (cli.py adds it to the others): it only
# chooses how an error is reported, so the warm path serves it too.
VERBOSE = Option("-v", "--verbose", dest="verbose", field=None, flag=True, warm=True,
                 help="Show tracebacks for errors.")

EXEC_OPTIONS = (
    Option("-p", "--profile", dest="profile", field="profile", metavar="NAME|FILE", warm=True,
           help="Operator profile (replaces the embedded one)."),
    Option("-u", "--user", dest="user", field="user", metavar="NAME", warm=True,
           help="Existing user to run as."),
    Option("--python", dest="python", field="python", metavar="PATH", warm=True,
           help="Interpreter for the app."),
    Option("--store", dest="store", field="store", metavar="DIR", envvar="SANDRUN_STORE",
           warm=True, help="Root-owned store (default /var/lib/sandrun)."),
    Option("--dry-run", dest="dry_run", field="dry_run", flag=True,
           help="Print the launch plan and exit."),
    # The warm path only ever launches a tree checked the cheap way (by its snapshot).
    Option("--verify", dest="verify", field="verify_full", convert=_is_full,
           choices=("cheap", "full"), default="cheap", warm=("cheap",),
           help="How to re-check the installed tree."),
    Option("--trust", dest="trust", field="trust", metavar="FILE", warm=True,
           help="Trust policy: which keys may sign which apps (default "
           "/etc/sandrun/trust.toml when it exists)."),
    # Warm: the record keeps the cold path's verdict while the database (its identity is
    # an input of the record) and the bundle are unchanged.
    Option("--audit-db", dest="audit_db", field="audit_db", metavar="PATH", warm=True,
           help="OSV advisories (an index from `sandrun audit --index`, a dir or PyPI "
           "all.zip): refuse to start with known vulnerabilities at or above "
           "--audit-severity."),
    Option("--audit-severity", dest="audit_severity", field="audit_severity", default="high",
           metavar="low|moderate|high|critical", warm=True,
           help="Lowest severity that refuses the start (unknown severity always does)."),
    Option("--adopt", dest="adopt", field="adopt", flag=True,
           help="Hand the app's name, user and state dir to this bundle although another "
           "signer (or unsigned bundles) owned it."),
    Option("--json", dest="as_json", field=None, flag=True,
           help="With --dry-run: the plan as JSON."),
    Option("-q", "--quiet", dest="quiet", field=None, flag=True,
           help="With --dry-run: print nothing on stdout (the exit code says it)."),
    # Operator grants on top of the profile (docker/systemd-run/bwrap style): no approval
    # needed, shown by --dry-run, part of the warm record's key.
    Option("-e", "--env", dest="env", field="env", metavar="NAME[=VALUE]", multiple=True,
           warm=True, help="Set NAME=VALUE in the app's environment, or pass NAME from "
           "sandrun's own (repeatable)."),
    Option("--env-file", dest="env_file", field="env_file", metavar="FILE", multiple=True,
           warm=True, help="Read NAME=VALUE lines (and bare NAMEs to pass) from FILE "
           "(repeatable; -e wins)."),
    Option("--read", dest="read", field="read", metavar="PATH", multiple=True, warm=True,
           help="Also let the app read PATH (file or directory; repeatable)."),
    Option("--rw", dest="rw", field="rw", metavar="PATH", multiple=True, warm=True,
           help="Also let the app read and write PATH, never execute it (repeatable)."),
    Option("--bind-tcp", dest="bind_tcp", field="bind_tcp", metavar="PORT", multiple=True,
           warm=True, help="Also let the app listen on TCP PORT (repeatable)."),
    Option("--connect-tcp", dest="connect_tcp", field="connect_tcp", metavar="PORT",
           multiple=True, warm=True, help="Also let the app connect to TCP PORT (repeatable)."),
    Option("-w", "--workdir", dest="workdir", field="workdir", metavar="DIR", warm=True,
           help="Working directory of the app (default: the current directory when the "
           "profile grants it, else the state dir)."),
    Option("--explain", dest="explain", field=None, flag=True,
           help="List every Landlock and seccomp denial of the run with the profile key "
           "that would allow it (a failed run without it says how it ended and suggests "
           "this)."),
    VERBOSE,
)

BY_NAME = {name: option for option in EXEC_OPTIONS for name in option.names}


def exec_option_fields(values: dict[str, Any]) -> dict[str, Any]:
    """launcher.ExecOptions keyword arguments (all but bundle and args) from parsed
    option values keyed by Option.dest; a missing value counts as the default."""
    fields: dict[str, Any] = {}
    for option in EXEC_OPTIONS:
        if option.field is None:
            continue
        empty = False if option.flag else (() if option.multiple else option.default)
        value = values.get(option.dest, empty)
        if option.multiple:
            value = tuple(value or ())
        fields[option.field] = option.convert(value) if option.convert else value
    return fields
