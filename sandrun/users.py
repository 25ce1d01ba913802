"""The app user: resolve, create (system user, no shell, no home) and vet it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

from sandrun.errors import UserError

# Groups whose members can read secrets, logs, raw devices or control the host.
PRIVILEGED_GROUPS = frozenset({
    "root", "sudo", "wheel", "adm", "admin", "shadow", "disk", "kmem", "tty", "docker",
    "lxd", "libvirt", "systemd-journal", "staff", "src", "sys", "video", "input",
})
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


@dataclass(frozen=True)
class AppUser:
    name: str
    uid: int
    gid: int
    exists: bool  # False: would be created (dry run)
    invoking: bool = False  # True when sandrun is not root and runs the app as itself


def default_user_name(app_name: str) -> str:
    return f"sandrun-{app_name}"[:32]


def invoking_user() -> AppUser:
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return AppUser(name, uid, os.getgid(), True, invoking=True)


def resolve_user(requested: str | None, app_name: str, *, create: bool) -> AppUser:
    """Find the app user; create the default one when missing (never a named one)."""
    name = requested or default_user_name(app_name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if requested:
            raise UserError(f"user {name!r} does not exist",
                            "create it yourself (useradd --system ...) or drop --user to let "
                            "sandrun create its default sandrun-<app> user") from None
        if not create:
            return AppUser(name, -1, -1, False)
        entry = _create_system_user(name)
    user = AppUser(name, entry.pw_uid, entry.pw_gid, True)
    vet_user(user)
    return user


def vet_user(user: AppUser) -> None:
    """Refuse uid 0 and members of groups that amount to privilege."""
    if user.uid == 0 or user.gid == 0:
        raise UserError(f"user {user.name!r} has uid or gid 0: the app would run as root",
                        "run the app as an unprivileged user (drop --user for the default)")
    groups = os.getgrouplist(user.name, user.gid)
    bad = []
    for gid in groups:
        try:
            gname = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
        if gid == 0 or gname in PRIVILEGED_GROUPS:
            bad.append(gname)
    if bad:
        raise UserError(f"user {user.name!r} is in privileged group(s): {', '.join(sorted(bad))}",
                        f"remove it from them (gpasswd -d {user.name} GROUP) or use another user")


def _create_system_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next((s for s in NOLOGIN_SHELLS if os.path.exists(s)), "/bin/false")
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", shell, "--comment", "sandrun app user", name],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode not in (0, 9):  # 9: created concurrently by another launch
        raise UserError(f"creating system user {name!r} failed: {proc.stderr.strip()}",
                        "create it yourself with useradd --system, or pass --user")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"system user {name!r} is still missing after useradd",
                        "check /etc/passwd and NSS configuration") from None
