"""The app user: resolve, create (system user, no shell, no home) and vet it.

The default user of an app is `sandrun-<app>`. A bundle chooses the app name, so the
default account is reused only when it is the kind sandrun creates (a system account
with no login shell, no home, its own group and no privileged group); an account named
with --user is the operator's choice and only vetted for privilege. `check_user`
decides without creating anything, so a launch can refuse before its first side effect.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from sandrun.bundle.manifest import USER_PREFIX, app_name_problem
from sandrun.errors import UserError

# Groups whose members can read secrets, logs, raw devices or control the host.
PRIVILEGED_GROUPS = frozenset({
    "root", "sudo", "wheel", "adm", "admin", "shadow", "disk", "kmem", "tty", "docker",
    "lxd", "libvirt", "systemd-journal", "staff", "src", "sys", "video", "input",
})
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
# Shells that let nobody log in, as useradd --system accounts have them.
NO_LOGIN_SHELLS = frozenset({*NOLOGIN_SHELLS, "/usr/bin/nologin", "/usr/bin/false"})
NO_HOME = "/nonexistent"
MAX_USER_NAME = 32  # Linux (useradd, utmp) stops there
LOGIN_DEFS = "/etc/login.defs"


@dataclass(frozen=True)
class AppUser:
    name: str
    uid: int
    gid: int
    exists: bool  # False: would be created (dry run)
    invoking: bool = False  # True when sandrun is not root and runs the app as itself


def default_user_name(app_name: str) -> str:
    """`sandrun-<app>`; UserError when the app name is not usable as part of a user name
    (too long is refused, never truncated: two apps would share a user and state)."""
    problem = app_name_problem(app_name)
    if problem:
        raise UserError(f"app name {problem}",
                        "the bundle's manifest is invalid; rebuild it with a current "
                        "`sandrun bundle --name NAME`, or pass --user NAME to run it as an "
                        "existing user")
    name = f"{USER_PREFIX}{app_name}"
    if len(name) > MAX_USER_NAME:  # unreachable with a valid app name; never truncate
        raise UserError(f"user name {name!r} would be longer than {MAX_USER_NAME} characters",
                        "give the app a shorter name (sandrun bundle --name)")
    return name


def invoking_user() -> AppUser:
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return AppUser(name, uid, os.getgid(), True, invoking=True)


def check_user(requested: str | None, app_name: str) -> AppUser:
    """Resolve the app user without creating anything; raise every refusal that
    `resolve_user` would (UserError).

    `requested` (--user) must exist and is vetted for privilege only. The default
    `sandrun-<app>` is returned with exists=False (uid/gid -1) when missing, and when it
    exists it must be the kind of account sandrun creates (`default_user_problems`).
    """
    if requested:
        try:
            entry = pwd.getpwnam(requested)
        except KeyError:
            raise UserError(f"user {requested!r} does not exist",
                            "create it yourself (useradd --system ...) or drop --user to let "
                            "sandrun create its default sandrun-<app> user") from None
        user = AppUser(requested, entry.pw_uid, entry.pw_gid, True)
        vet_user(user)
        return user
    name = default_user_name(app_name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return AppUser(name, -1, -1, False)
    vet_default_user(entry)
    user = AppUser(name, entry.pw_uid, entry.pw_gid, True)
    vet_user(user)
    return user


def resolve_user(requested: str | None, app_name: str, *, create: bool) -> AppUser:
    """check_user, then create the default user when it is missing and `create` is set
    (a named user is never created)."""
    user = check_user(requested, app_name)
    if user.exists or not create:
        return user
    entry = _create_system_user(user.name)
    # useradd may have lost a race to another launch, or to someone else: check again.
    vet_default_user(entry)
    user = AppUser(user.name, entry.pw_uid, entry.pw_gid, True)
    vet_user(user)
    return user


def vet_user(user: AppUser) -> None:
    """Refuse uid 0 and members of groups that amount to privilege."""
    if user.uid == 0 or user.gid == 0:
        raise UserError(f"user {user.name!r} has uid or gid 0: the app would run as root",
                        "run the app as an unprivileged user (drop --user for the default)")
    bad = privileged_groups(user.name, user.gid)
    if bad:
        raise UserError(f"user {user.name!r} is in privileged group(s): {', '.join(bad)}",
                        f"remove it from them (gpasswd -d {user.name} GROUP) or use another user")


def privileged_groups(name: str, gid: int) -> list[str]:
    """The groups of user `name` (primary `gid` included) that amount to privilege."""
    bad = []
    for group_id in os.getgrouplist(name, gid):
        try:
            group_name = grp.getgrgid(group_id).gr_name
        except KeyError:
            continue
        if group_id == 0 or group_name in PRIVILEGED_GROUPS:
            bad.append(group_name)
    return sorted(set(bad))


def vet_default_user(entry: pwd.struct_passwd) -> None:
    """Refuse to reuse an existing default account that sandrun would not have created."""
    problems = default_user_problems(entry)
    if problems:
        name = entry.pw_name
        raise UserError(
            f"user {name!r} exists but is not the kind of account sandrun creates for an app, "
            f"so sandrun will not run the app as it: {'; '.join(problems)}",
            f"if this account is meant to run the app, pass --user {name} deliberately; "
            f"otherwise remove or rename it (userdel {name}) and sandrun creates a system "
            "user with no login shell and no home")


def default_user_problems(entry: pwd.struct_passwd) -> list[str]:
    """Why an existing account is not what `useradd --system --user-group --no-create-home
    --home-dir /nonexistent --shell nologin` makes (empty list: it is)."""
    problems = []
    low, high = system_uid_range()
    if not low <= entry.pw_uid <= high:
        problems.append(f"uid {entry.pw_uid} is not a system uid ({low}-{high}, from "
                        f"{LOGIN_DEFS})")
    else:
        sharing = sorted(p.pw_name for p in pwd.getpwall()
                         if p.pw_uid == entry.pw_uid and p.pw_name != entry.pw_name)
        if sharing:
            problems.append(f"uid {entry.pw_uid} is also the uid of {', '.join(sharing)}")
    if entry.pw_shell not in NO_LOGIN_SHELLS:
        problems.append(f"its shell {entry.pw_shell or '(empty: /bin/sh)'} allows a login "
                        f"(expected one of {', '.join(sorted(NO_LOGIN_SHELLS))})")
    if entry.pw_dir != NO_HOME and os.path.lexists(entry.pw_dir):
        problems.append(f"it has a home directory {entry.pw_dir} (expected {NO_HOME})")
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = None
    if group != entry.pw_name:
        problems.append(f"its primary group is {group or entry.pw_gid}, not its own group "
                        f"{entry.pw_name}")
    bad = privileged_groups(entry.pw_name, entry.pw_gid)
    if bad:
        problems.append(f"it is in privileged group(s) {', '.join(bad)}")
    return problems


def system_uid_range(login_defs: str = LOGIN_DEFS) -> tuple[int, int]:
    """SYS_UID_MIN..SYS_UID_MAX as useradd --system uses them (defaults 100 and
    UID_MIN - 1, i.e. 999)."""
    values: dict[str, int] = {}
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("SYS_UID_MIN", "SYS_UID_MAX", "UID_MIN"):
                    try:
                        values[parts[0]] = int(parts[1], 0)
                    except ValueError:
                        continue
    except OSError:
        pass
    low = values.get("SYS_UID_MIN", 100)
    high = values.get("SYS_UID_MAX", values.get("UID_MIN", 1000) - 1)
    return max(low, 1), high


def _create_system_user(name: str) -> pwd.struct_passwd:
    import shutil  # only to create a user: not on every cold launch
    import subprocess

    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next((s for s in NOLOGIN_SHELLS if os.path.exists(s)), "/bin/false")
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", NO_HOME,
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


def remove_default_user(name: str) -> bool:
    """userdel NAME (and its group) if it is an account of the kind sandrun creates;
    False when there is none; UserError for any other account (never removed)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    problems = default_user_problems(entry)
    if problems:
        raise UserError(f"user {name!r} is not an account sandrun created: "
                        + "; ".join(problems), f"remove it yourself if you mean to "
                        f"(userdel {name})")
    import shutil
    import subprocess

    userdel = shutil.which("userdel") or "/usr/sbin/userdel"
    proc = subprocess.run([userdel, name], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise UserError(f"userdel {name} failed: {proc.stderr.strip()}",
                        "is a process of that user still running?")
    groupdel = shutil.which("groupdel") or "/usr/sbin/groupdel"
    subprocess.run([groupdel, name], capture_output=True, check=False,
                   stdin=subprocess.DEVNULL)  # usually gone with the user already
    return True
