"""The operator's consent: what an embedded profile may grant, and who owns an app name.

A bundle's embedded profile is a request. `sandrun exec` applies it without asking only
when it grants nothing beyond the shipped `default` profile; every extra grant needs an
operator decision, one of:

- `-p PROFILE`: the operator's own profile replaces the request;
- `sandrun approve BUNDLE`: records the request as approved (root-owned, per app, in
  `<store>/approvals/<app>.toml`); a later bundle of the same app whose request stays
  within it runs without a new approval, one that asks for more is refused with the
  difference;
- `/etc/sandrun/apps/<app>.toml` (or `$SANDRUN_CONFIG_DIR/apps/`): a profile the operator
  wrote as the ceiling for that app, checked the same way.

Dangerous syscalls (seccomp.DANGEROUS) are approved only when named one by one
(`sandrun approve --allow-dangerous NAME`), never by a blanket approval.

App identity: the first install of an app name records who it belongs to
(`<store>/owners/<app>.json`): the signer's key fingerprint, or that it was unsigned and
its first bundle's digest. A bundle from another signer, or an unsigned one where a
signer was recorded, gets neither the app's user nor its state dir (refused) unless the
operator adopts it deliberately (`sandrun exec --adopt`).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandrun.config.profile import Profile, load_profile, load_profile_text, render_toml
from sandrun.errors import ConsentError, Problem, StoreError
from sandrun.launch import safefile
from sandrun.launch.store import Store

DEFAULT_CONFIG_DIR = "/etc/sandrun"
APPROVALS_DIR = "approvals"  # <store>/approvals/<app>.toml
OWNERS_DIR = "owners"  # <store>/owners/<app>.json
_MAX_RECORD_BYTES = 1 << 20

# Directories that are always the app's own: granting inside them grants nothing new.
_OWN_READ = ("{state}", "{store}", "{tmp}", "{home}")
_OWN_WRITE = ("{state}", "{tmp}", "{home}")
# Reading these is worth a second look even when approved.
_SENSITIVE = ("/", "/etc", "/root", "/home", "/proc", "/sys", "/dev", "/boot", "/var/lib",
              "/run", "/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/sudoers",
              "/etc/sandrun", "/var/lib/sandrun", "{cwd}", "{project}")


def config_dir() -> Path:
    return Path(os.environ.get("SANDRUN_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


@dataclass(frozen=True)
class Grant:
    """One thing a profile grants beyond another: `key` (dotted profile key) `value`."""

    key: str
    value: str
    danger: str = ""  # why it deserves a second look; "" when it does not

    def __str__(self) -> str:
        text = f"{self.key}: {self.value}"
        return f"{text}  [{self.danger}]" if self.danger else text


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _covered(path: str, allowed: Iterable[str]) -> bool:
    return any(_within(path, a) for a in allowed)


def _sensitive(path: str) -> str:
    for s in _SENSITIVE:
        if path == s or (s != "/" and _within(path, s)) or _within(s, path):
            return "reads system or other users' files"
    return ""


def extra_grants(requested: Profile, allowed: Sequence[Profile]) -> list[Grant]:
    """Every grant of `requested` that no profile in `allowed` gives (placeholders kept:
    both sides are compared unexpanded)."""
    from sandrun.sandbox import seccomp

    grants: list[Grant] = []
    readable = [*_OWN_READ, *(p for a in allowed for p in (*a.read, *a.optional_read,
                                                          *a.read_write))]
    writable = [*_OWN_WRITE, *(p for a in allowed for p in a.read_write)]
    runnable = [p for a in allowed for p in a.execute]
    for key, paths in (("filesystem.read", requested.read),
                       ("filesystem.optional_read", requested.optional_read)):
        grants += [Grant(key, p, _sensitive(p)) for p in paths if not _covered(p, readable)]
    grants += [Grant("filesystem.read_write", p, "writes outside {state}")
               for p in requested.read_write if not _covered(p, writable)]
    grants += [Grant("filesystem.execute", p, "runs programs")
               for p in requested.execute if not _covered(p, runnable)]
    for key, attr in (("network.bind_tcp", "bind_tcp"), ("network.connect_tcp", "connect_tcp")):
        have = {port for a in allowed for port in getattr(a, attr)}
        grants += [Grant(key, str(port)) for port in getattr(requested, attr)
                   if port not in have]
    flags = (("network.dns", "dns", True, "UDP to any host"),
             ("network.unix_sockets", "unix_sockets", True,
              "may connect to any pathname socket (D-Bus, databases)"),
             ("process.subprocess", "subprocess", True, "runs programs"),
             ("process.mdwe", "mdwe", False, "writable+executable memory allowed"))
    for key, attr, grant_value, danger in flags:
        if getattr(requested, attr) == grant_value and \
                all(getattr(a, attr) != grant_value for a in allowed):
            grants.append(Grant(key, str(grant_value).lower(), danger))
    passed = {n for a in allowed for n in a.env_pass}
    grants += [Grant("process.env.pass", n, "copies a variable from root's environment")
               for n in requested.env_pass if n not in passed]
    grants += _raised_limits("process.rlimits", requested.rlimits,
                             [a.rlimits for a in allowed])
    grants += _raised_limits("limits", requested.limits, [a.limits for a in allowed])
    base = seccomp.baseline()
    have_calls = set(base)
    for a in allowed:
        have_calls |= _expand(a.syscalls_allow)
    for name in requested.syscalls_allow:
        added = _expand([name]) - have_calls
        if name.startswith("@"):
            added -= seccomp.DANGEROUS.keys()  # a group never allows those
        if added:
            danger = seccomp.DANGEROUS.get(name, "")
            value = name if not name.startswith("@") else \
                f"{name} (adds {', '.join(sorted(added))})"
            grants.append(Grant("syscalls.allow", value, danger))
    floor = min(a.landlock_min_abi for a in allowed)
    if requested.landlock_min_abi < floor:
        grants.append(Grant("kernel.landlock_min_abi", str(requested.landlock_min_abi),
                            f"accepts kernels with Landlock ABI below {floor}"))
    return grants


def _expand(names: Iterable[str]) -> set[str]:
    from sandrun.sandbox import seccomp

    try:
        return set(seccomp.expand(list(names)))
    except ValueError:
        return set(names)  # validation already refused unknown names


def _raised_limits(key: str, requested: object, allowed: list[object]) -> list[Grant]:
    grants = []
    for name, value in requested.items():  # type: ignore[attr-defined]
        bounds = [a[name] for a in allowed if name in a]  # type: ignore[index,operator]
        if not bounds:
            continue  # never limited by the allowed profiles: setting it only narrows
        if any(b is None for b in bounds):
            continue
        ceiling = max(bounds)
        if value is None or value > ceiling:
            shown = "infinity" if value is None else str(value)
            grants.append(Grant(f"{key}.{name}", f"{shown} (allowed: {ceiling})",
                                "raises a resource limit"))
    return grants


def dangerous_syscalls(grants: Iterable[Grant]) -> list[str]:
    from sandrun.sandbox import seccomp

    return sorted(g.value for g in grants
                  if g.key == "syscalls.allow" and g.value in seccomp.DANGEROUS)


# ---------------------------------------------------------------- approval records


@dataclass(frozen=True)
class Ceiling:
    """A profile the operator approved for an app, and where it is recorded."""

    profile: Profile
    source: str  # file shown in messages


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what} {path} must be a regular file owned by root and not "
                         f"writable by others (it is mode {stat.S_IMODE(st.st_mode):04o}, "
                         f"uid {st.st_uid})",
                         f"remove it or fix it: chown root {path}; chmod 600 {path}")


def _record_dir(store: Store, directory: str, *, create: bool) -> int:
    """An O_RDONLY fd of <store>/<directory>/, a 0700 dir of root, reached through the
    store's checked fd (FileNotFoundError when absent and not created)."""
    try:
        path_fd = safefile.open_private_dir(directory, dir_fd=store.dir_fd(), create=create)
    except safefile.UnsafePath as exc:
        raise StoreError(f"{store.root / directory} {exc.why}",
                         f"fix it: chown root {store.root / directory}; chmod 700 "
                         f"{store.root / directory}") from None
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)
    finally:
        os.close(path_fd)


def _read_record(store: Store, directory: str, name: str, what: str) -> bytes | None:
    """The bytes of a private record in <store>/<directory>/, or None when absent.
    Everything goes through the store's checked fd: never through a link."""
    if not store.exists():
        return None
    try:
        fd = _record_dir(store, directory, create=False)
    except FileNotFoundError:
        return None
    try:
        return safefile.read_private(name, dir_fd=fd, max_size=_MAX_RECORD_BYTES)
    except safefile.UnsafePath as exc:
        path = store.root / directory / name
        raise StoreError(f"{what} {path} {exc.why}", f"remove it: rm {path}") from None
    finally:
        os.close(fd)


def _write_record(store: Store, directory: str, name: str, data: bytes) -> Path:
    """Atomically and durably, 0600 in a 0700 dir of the store, through its fd."""
    store.ensure_layout()
    fd = _record_dir(store, directory, create=True)
    try:
        safefile.write_private(name, data, dir_fd=fd, sync=True)
        os.fsync(fd)
    finally:
        os.close(fd)
    return store.root / directory / name


def forget(store: Store, app: str) -> list[Path]:
    """Remove the app's owner record and approval (through the store's fd); return what
    was removed."""
    removed = []
    for directory, name in ((OWNERS_DIR, f"{app}.json"), (APPROVALS_DIR, f"{app}.toml")):
        try:
            fd = _record_dir(store, directory, create=False)
        except FileNotFoundError:
            continue
        try:
            os.unlink(name, dir_fd=fd)
            removed.append(store.root / directory / name)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def approval_path(store_root: Path, app: str) -> Path:
    return store_root / APPROVALS_DIR / f"{app}.toml"


def app_policy_path(app: str) -> Path:
    return config_dir() / "apps" / f"{app}.toml"


def load_ceilings(store: Store, app: str) -> list[Ceiling]:
    """The operator's approvals for `app`: the recorded one and the per-app policy file."""
    ceilings = []
    path = approval_path(store.root, app)
    data = _read_record(store, APPROVALS_DIR, f"{app}.toml", "approval record")
    if data is not None:
        ceilings.append(Ceiling(load_profile_text(data.decode("utf-8", "replace"), str(path)),
                                str(path)))
    policy = app_policy_path(app)
    try:
        st = os.stat(policy)
    except FileNotFoundError:
        st = None
    if st is not None:
        _check_private(policy, st, "per-app policy")
        ceilings.append(Ceiling(load_profile(str(policy)), str(policy)))
    return ceilings


def consent_inputs(store_root: Path, app: str) -> tuple[str, ...]:
    """Files whose change changes the consent decision (for the warm launch record)."""
    return (str(approval_path(store_root, app)), str(app_policy_path(app)))


def default_profile() -> Profile:
    return load_profile("default")


def check_consent(requested: Profile, ceilings: Sequence[Ceiling]) -> list[Grant]:
    """The grants of `requested` that neither `default` nor an approval gives (empty: it
    may run as is). A dangerous syscall counts as approved only where a ceiling names it
    explicitly (an @group never allows one)."""
    return extra_grants(requested, [default_profile(), *(c.profile for c in ceilings)])


def refusal(requested: Profile, app: str, extra: Sequence[Grant], ceilings: Sequence[Ceiling],
            bundle: str, store_arg: str | None) -> ConsentError:
    store = f" --store {store_arg}" if store_arg else ""
    dangerous = dangerous_syscalls(extra)
    named = "".join(f" --allow-dangerous {n}" for n in dangerous)
    against = ("the default profile" if not ceilings else
               "what was approved (" + ", ".join(c.source for c in ceilings) + ")")
    return ConsentError(
        f"the profile embedded in {bundle} asks for {len(extra)} grant"
        f"{'s' if len(extra) != 1 else ''} beyond {against}; app {app!r} needs the "
        "operator's approval", [Problem(g.key, g.value + (f" ({g.danger})" if g.danger
                                                          else "")) for g in extra],
        f"review them (`sandrun approve{store} {bundle}` shows them), then approve with "
        f"`sandrun approve{store}{named} {bundle}`, or run it with your own profile: "
        f"`sandrun exec -p PROFILE{store} {bundle}`")


def record_approval(store: Store, app: str, requested: Profile, bundle_sha256: str,
                    allow_dangerous: Iterable[str]) -> Path:
    """Record `requested` as approved for `app`. Dangerous syscalls it asks for must be
    named in `allow_dangerous`, else ConsentError."""
    extra = extra_grants(requested, [default_profile()])
    missing = sorted(set(dangerous_syscalls(extra)) - set(allow_dangerous))
    if missing:
        raise ConsentError(
            f"the profile asks for dangerous syscall{'s' if len(missing) != 1 else ''} "
            "that a blanket approval never grants",
            [Problem(f"syscalls.allow {n}", _danger(n)) for n in missing],
            "approve each by name: " + " ".join(f"--allow-dangerous {n}" for n in missing)
            + " (or run the app with your own profile, -p)")
    header = (f"# sandrun approval for app {app!r}: the grants below were approved by the "
              f"operator on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"
              f"# for bundle sha256 {bundle_sha256}. A bundle of this app whose embedded "
              "profile asks for no more runs without a new approval.\n")
    text = header + render_toml(requested)
    return _write_record(store, APPROVALS_DIR, f"{app}.toml", text.encode("utf-8"))


def _danger(name: str) -> str:
    from sandrun.sandbox import seccomp

    return seccomp.DANGEROUS.get(name, "")


# ---------------------------------------------------------------- app identity


@dataclass(frozen=True)
class Owner:
    """Who an app name belongs to: a signer's fingerprint, or None for unsigned."""

    signer: str | None
    first_bundle: str
    since: str

    def describe(self) -> str:
        who = f"signer {self.signer}" if self.signer else "unsigned bundles"
        return f"{who} (first bundle {self.first_bundle[:16]}..., since {self.since})"


def owner_path(store_root: Path, app: str) -> Path:
    return store_root / OWNERS_DIR / f"{app}.json"


def load_owner(store: Store, app: str) -> Owner | None:
    path = owner_path(store.root, app)
    data = _read_record(store, OWNERS_DIR, f"{app}.json", "app owner record")
    if data is None:
        return None
    try:
        obj = json.loads(data)
        signer = obj["signer"]
        if signer is not None and not isinstance(signer, str):
            raise TypeError("signer")
        return Owner(signer, str(obj["first_bundle"]), str(obj["since"]))
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"app owner record {path} is malformed",
                         f"remove it to let the next launch record the owner again: rm {path}"
                         ) from None


def check_owner(owner: Owner | None, signer: str | None, app: str, bundle: str,
                store_arg: str | None) -> str | None:
    """Refuse (ConsentError) a bundle that claims another owner's app name; return a
    notice for an accepted change of version, or None."""
    if owner is None:
        return None
    if owner.signer is None:
        if signer is None:
            return None
        return (f"app {app!r} was unsigned so far; this bundle is signed by {signer}: "
                "from now on only that signer's bundles get its user and state")
    if signer == owner.signer:
        return None
    store = f" --store {store_arg}" if store_arg else ""
    claimant = f"signed by {signer}" if signer else "unsigned"
    raise ConsentError(
        f"app name {app!r} belongs to {owner.describe()}; this bundle is {claimant} and "
        "gets neither that app's user nor its state dir",
        [], f"if this is a deliberate change of publisher, adopt it: "
        f"`sandrun exec --adopt{store} {bundle}` (the app's state is handed over)")


def record_owner(store: Store, app: str, signer: str | None, bundle_sha256: str) -> Path:
    data = json.dumps({"signer": signer, "first_bundle": bundle_sha256,
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                      sort_keys=True).encode() + b"\n"
    return _write_record(store, OWNERS_DIR, f"{app}.json", data)
