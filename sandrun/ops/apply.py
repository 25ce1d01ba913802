"""sandrun's unprivileged applier: the in-process half of the sandbox, for OCI runtimes.

`sandrun export oci` writes this file into the bundle's rootfs (with copies of
sandrun/errors.py and sandrun/sandbox/kernel.py beside it) and makes it the container's
process: `python -I -B -S /sandrun/apply.py /sandrun/spec.marshal [--] ARGS`. The runtime
(runc) has already done the privileged half: the app user's uid and gid, no
capabilities, no_new_privs, a read-only root, private namespaces, rlimits, cgroup limits
and the outer seccomp filter. This process then, as the app user, in this order:

  1. refuses to go on if the runtime left it root, with a capability or a group 0, or
     as another user than the bundle was exported for (the privileged half is missing);
  2. closes every fd above 2, resets the signals Python ignores, sets no_new_privs
     (again: a no-op under a runtime that did it);
  3. memory-deny-write-execute (PR_SET_MDWE) when the profile asks for it;
  4. chdir, umask 077, Landlock: the ruleset of the plan, built here on the
     container's view of the file system, then restrict_self;
  5. the plan's seccomp filter (the compiled BPF, the authoritative one), last;
  6. execve(python -I -B -S <tree>/.sandrun/bootstrap.py ARGS) with the environment
     built from the spec (its fixed part, the names it passes, the values it sets).

Any failure exits 125 (126/127 when the interpreter cannot be run) with
`sandrun: error: ...` on stderr: the app never starts half-protected. Standard library
and those two copied modules only, and written for every Python 3 the app may target.
The spec is marshal data (format 4, readable by every Python 3 from 3.4): json would
import re, which costs a third of the applier's start-up.
"""

from __future__ import annotations

import marshal
import os
import sys

SPEC_FORMAT = 1
EXIT_REFUSED = 125  # as sandrun.errors (importable only once sys.path is set up)
# The lines of /proc/self/status that must all be zero once the runtime dropped privileges.
CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _use_copied_modules() -> None:
    """Inside the container sandrun is not installed: import the copies in ./lib."""
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
    if os.path.isdir(os.path.join(lib, "sandrun")) and lib not in sys.path:
        sys.path.insert(0, lib)


def load_spec(path: str) -> dict[str, object]:
    """The spec `sandrun export oci` wrote (marshal); refuses another format version."""
    from sandrun.errors import EnforcementError

    try:
        with open(path, "rb") as f:
            spec = marshal.load(f)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        raise EnforcementError(f"cannot read the sandbox spec {path}: {exc}",
                               "export the bundle again with `sandrun export oci`") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise EnforcementError(f"{path} is not a sandbox spec of format {SPEC_FORMAT}",
                               "export the bundle again with this sandrun")
    return spec


def capability_sets(status_text: str) -> dict[str, int]:
    """The capability masks of a /proc/<pid>/status text, by line name."""
    found = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name in CAPABILITY_SETS:
            found[name] = int(value.strip(), 16)
    return found


def check_unprivileged(spec: dict[str, object]) -> None:
    """The runtime's half must be done: refuse root, a capability, group 0, another uid."""
    from sandrun.errors import EnforcementError

    hint = ("run the bundle with the config.json sandrun wrote (process.user, empty "
            "process.capabilities); export it again if it was edited")
    ids = os.getresuid() + os.getresgid()
    if 0 in ids or 0 in os.getgroups():
        raise EnforcementError(f"the applier runs with uid/gid 0 (resuid+resgid {ids}, "
                               f"groups {os.getgroups()}): the runtime did not drop "
                               "privileges", hint)
    if (os.getuid(), os.getgid()) != (spec["uid"], spec["gid"]):
        raise EnforcementError(
            f"the applier runs as uid {os.getuid()} gid {os.getgid()}, but the bundle was "
            f"exported for uid {spec['uid']} gid {spec['gid']} (the owner of its state "
            "dir and the group of its code)", hint)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            caps = capability_sets(f.read())
    except OSError as exc:
        raise EnforcementError(f"cannot read /proc/self/status to check capabilities: "
                               f"{exc.strerror}", "mount /proc in the container") from None
    held = {name: f"{value:#x}" for name, value in caps.items() if value}
    if held or len(caps) != len(CAPABILITY_SETS):
        raise EnforcementError(f"the applier holds capabilities {held or caps}: the runtime "
                               "did not drop them", hint)


def environment(spec: dict[str, object], outer: dict[str, str]) -> dict[str, str]:
    """As runner.RunSpec.environment: the fixed part, the passed names, the set values."""
    fixed, passed, given = spec["env"], spec["env_pass"], spec["env_set"]
    assert isinstance(fixed, dict) and isinstance(passed, list) and isinstance(given, dict)
    env = {str(k): str(v) for k, v in fixed.items()}
    for name in passed:
        if name in outer:
            env[name] = outer[name]
    env.update((str(k), str(v)) for k, v in given.items())
    return env


def apply(spec: dict[str, object], args: list[str]) -> None:
    """Steps 1-6 of the module docstring; on success this never returns (execve)."""
    import _signal  # not signal: that imports enum, a fifth of the applier's start-up
    import errno

    from sandrun.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EnforcementError
    from sandrun.sandbox.kernel import (
        PR_MDWE_REFUSE_EXEC_GAIN,
        PR_SET_MDWE,
        PR_SET_NO_NEW_PRIVS,
        build_ruleset,
        load_seccomp_filter,
        prctl,
        restrict_self,
    )

    check_unprivileged(spec)
    os.closerange(3, 1 << 20)
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT):
        _signal.signal(sig, _signal.SIG_DFL)
    if prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise EnforcementError("cannot set no_new_privs", "check the kernel")
    if spec["mdwe"] and prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) != 0:
        raise EnforcementError("the profile asks for memory-deny-write-execute but "
                               "PR_SET_MDWE failed", "run on Linux >= 6.3, or set "
                               "[process] mdwe = false in the profile")
    os.chdir(str(spec["cwd"]))
    os.umask(0o077)
    landlock = spec["landlock"]
    if landlock:
        assert isinstance(landlock, dict)
        restrict_self(build_ruleset(landlock), int(landlock["restrict_flags"]))
    bpf = spec["seccomp_bpf"]
    if not isinstance(bpf, bytes):
        raise EnforcementError("the sandbox spec has no seccomp filter",
                               "export the bundle again with `sandrun export oci`")
    load_seccomp_filter(bpf)  # last: then execve
    interpreter = str(spec["interpreter"])
    argv = [str(a) for a in spec["argv"]] + args  # type: ignore[attr-defined]
    try:
        os.execve(interpreter, argv, environment(spec, dict(os.environ)))
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE
        raise EnforcementError(f"cannot execute {interpreter}: {exc.strerror}",
                               "check that the container mounts the interpreter",
                               exit_code=code) from None


def main(argv: list[str]) -> int:
    """`apply.py SPEC [--] ARGS`: returns only on failure, with the exit code."""
    _use_copied_modules()
    from sandrun.errors import SandrunError

    if len(argv) < 2:
        print("usage: apply.py SPEC [--] [ARGS]...", file=sys.stderr)
        return EXIT_REFUSED
    args = argv[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    try:
        apply(load_spec(argv[1]), args)
    except SandrunError as exc:
        print(f"sandrun: error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # chdir and the like: still no traceback, still refused
        print(f"sandrun: error: the sandbox could not be set up: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_REFUSED  # not reached: apply() execs or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv))
