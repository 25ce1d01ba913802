"""Find the interpreter for the app and prove the app user can run it.

The check happens before privileges are dropped, with the user's uid and
groups against every path component, so a pyenv or conda Python under /root
is refused with the directory that blocks it instead of failing after the drop.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass

from sandrun.errors import BundleError, InterpreterNotExecutable, InterpreterNotFound

# The file name of an interpreter: exactly pythonX.Y (not python3.11-config, not
# python3.11d): what an automatic search accepts, and how it learns the version.
_VERSION_NAME = re.compile(r"python(\d)\.(\d{1,2})")
# A target version as the manifest gives it (validated there too): 3.N, nothing else.
_TARGET_VERSION = re.compile(r"3\.(?:0|[1-9][0-9]?)")


@dataclass(frozen=True)
class Interpreter:
    path: str  # as given or found
    real_path: str  # symlinks resolved: what Landlock grants
    version: str  # "3.11"
    stdlib: str  # <prefix>/lib/pythonX.Y
    elf_interpreter: str | None  # the dynamic loader the kernel opens for exec


def check_target_version(version: str) -> None:
    """Refuse a target version that is not exactly `3.N` (BundleError, exit 125).

    The manifest parser refuses such a version already; this guards every path built
    from it (a version of "3-config" would name /usr/bin/python3-config).
    """
    if not isinstance(version, str) or not _TARGET_VERSION.fullmatch(version):
        raise BundleError(f"target Python {version!r} is not a version of the form 3.N",
                          "rebuild the bundle with `sandrun bundle --python-version 3.N`")


def candidates(version: str) -> list[str]:
    """The paths an automatic search looks at, in order (fixed system paths)."""
    check_target_version(version)
    return [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", "/usr/bin/python3",
            "/usr/local/bin/python3"]


def name_version(path: str) -> str | None:
    """"X.Y" when the real file (symlinks resolved) is named exactly pythonX.Y, else None.

    Pure apart from resolving symlinks: never runs the file.
    """
    match = _VERSION_NAME.fullmatch(os.path.basename(os.path.realpath(path)))
    return f"{match.group(1)}.{match.group(2)}" if match else None


def find_interpreter(requested: str | None, version: str, uid: int, gids: list[int], *,
                     search: list[str] | None = None) -> Interpreter:
    """The interpreter to run: `requested` (the operator's --python), else the first of
    `search` (default: candidates(version)) whose real file is named exactly
    python<version>. Automatic candidates are never executed: their name is their
    version. `requested` may be any CPython; only it is asked for its version."""
    check_target_version(version)
    if requested:
        if not os.path.exists(requested):
            raise InterpreterNotFound(f"interpreter {requested} does not exist",
                                      f"install Python {version} or pass another --python")
        interp = describe_interpreter(requested)
        check_usable(interp, uid, gids)
        if interp.version != version:
            raise InterpreterNotExecutable(
                f"{requested} is Python {interp.version}, but the bundle was built for {version}",
                f"pass a Python {version} interpreter with --python, or rebuild the bundle "
                f"with --python-version {interp.version}")
        return interp
    paths = candidates(version) if search is None else list(search)
    seen = []
    for path in paths:
        if not os.path.exists(path):
            continue
        found = name_version(path)
        real = os.path.realpath(path)
        if found != version:
            shown = f"Python {found}" if found else f"{os.path.basename(real)}, not python{version}"
            seen.append(f"{path} ({shown})")
            continue
        interp = _describe(path, real, version)
        check_usable(interp, uid, gids)
        return interp
    raise InterpreterNotFound(
        f"no Python {version} interpreter found (looked at {', '.join(paths)}"
        + (f"; found {', '.join(seen)}" if seen else "") + ")",
        f"install one the app user can read (e.g. apt-get install python{version}) "
        "or pass --python PATH")


def describe_interpreter(path: str) -> Interpreter:
    """Describe an operator-chosen interpreter (--python): its version from its name, or
    by running it when the name does not say (a venv's `python`, say)."""
    real = os.path.realpath(path)
    return _describe(path, real, name_version(path) or _ask_version(real))


def _describe(path: str, real: str, version: str) -> Interpreter:
    prefix = os.path.dirname(os.path.dirname(real))
    return Interpreter(path, real, version, os.path.join(prefix, "lib", f"python{version}"),
                       elf_interpreter(real))


def _ask_version(path: str) -> str:
    import subprocess  # only for --python of an unversioned name

    try:
        out = subprocess.run([path, "-I", "-S", "-c",
                              "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10, check=True,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise InterpreterNotExecutable(f"{path} is not a working Python interpreter ({exc})",
                                       "pass a CPython interpreter with --python") from None
    return out


def elf_interpreter(path: str) -> str | None:
    """PT_INTERP of an ELF file: the loader the kernel opens with exec rights."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _flags, p_offset, _v, _p, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, i * phentsize)
                if p_type == 3:  # PT_INTERP
                    f.seek(p_offset)
                    return os.path.realpath(f.read(p_filesz).rstrip(b"\0").decode())
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def blocking_component(path: str, uid: int, gids: list[int], want: int) -> str | None:
    """First path component `uid` cannot traverse, or the target if it lacks `want`.

    `want` is a combination of os.R_OK / os.X_OK for the final component. ACLs
    are not consulted: a mode that denies is reported even if an ACL allows.
    """
    parts = os.path.abspath(path).split("/")[1:]
    current = "/"
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return current
        last = i == len(parts) - 1
        need = want if last else os.X_OK
        if stat.S_ISDIR(st.st_mode) and last and want & os.R_OK:
            need |= os.X_OK
        if not _allowed(st, uid, gids, need):
            return current
    return None


def _allowed(st: os.stat_result, uid: int, gids: list[int], need: int) -> bool:
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def check_usable(interp: Interpreter, uid: int, gids: list[int]) -> None:
    """Raise InterpreterNotExecutable naming what blocks the app user."""
    checks = [(interp.path, os.R_OK | os.X_OK), (interp.real_path, os.R_OK | os.X_OK),
              (os.path.join(interp.stdlib, "os.py"), os.R_OK),
              (os.path.join(interp.stdlib, "encodings", "__init__.py"), os.R_OK)]
    for path, want in checks:
        blocked = blocking_component(path, uid, gids, want)
        if blocked is None:
            continue
        if not os.path.exists(blocked):
            raise InterpreterNotExecutable(
                f"{interp.path}: {blocked} does not exist (is this a CPython installation?)",
                "pass a complete CPython with --python")
        st = os.stat(blocked)
        raise InterpreterNotExecutable(
            f"the app user (uid {uid}) cannot reach {path}: {blocked} is mode "
            f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} — interpreters under a "
            "private home (pyenv, conda under /root) are unreadable to other users",
            "install a system interpreter (apt-get install python3) and pass "
            "--python /usr/bin/python3, or install Python in a world-readable prefix such as "
            "/opt or /usr/local")


def check_wheel_tags(interp: Interpreter, wheels: list[str]) -> None:
    """Every bundled wheel must be loadable by `interp` on this machine (cold path only:
    packaging.tags costs a few milliseconds)."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    from sandrun.errors import BundleError

    major, minor = (int(x) for x in interp.version.split("."))
    platforms = list(tags.platform_tags())
    supported = {*tags.cpython_tags((major, minor), platforms=platforms),
                 *tags.compatible_tags((major, minor), platforms=platforms)}
    bad = [w for w in wheels if supported.isdisjoint(parse_wheel_filename(w)[3])]
    if bad:
        raise BundleError(
            f"{len(bad)} bundled wheel(s) cannot be loaded by {interp.path} "
            f"(Python {interp.version}) on this machine: {', '.join(bad)}",
            "rebuild the bundle for this target (sandrun bundle --python-version/--platform)")
