"""The warm `sandrun exec`: relaunch from a cached launch record, checked by stat.

A cold exec (`launcher.prepare`) reads and hashes the bundle, parses its manifest and
profile, resolves user and interpreter and compiles the seccomp filter: ~100 ms, most
of it imports. None of that changes between two launches unless one of its inputs
does, so the cold path leaves a record in the store: the RunSpec it launched, the
identity (device, inode, size, mode, owner, mtime and ctime) of every file it read,
the kernel's boot id, and a snapshot of the installed tree. A warm exec re-checks all
of them — ctime cannot be set back without root, so a changed file cannot pass for the
old one — and launches. Any difference, any doubt: it returns None and the cold path
checks everything again and writes a new record.

The tree snapshot (<store>/launch/<bundle sha256>.tree) is taken only right after a
tree was installed or fully re-hashed, and includes every entry's inode and ctime: a
tree that differs from it in any way, even a same-size content edit, is re-hashed in
full by the cold path before it runs again.

The store is reached as the cold path reaches it (safefile.open_trusted_dir: its path
as given, component by component, no symlink another user controls) and everything in
it is then opened relative to the store's fd; records and snapshots are 0600 files of
the running uid in its 0700 launch/ dir, anything else is ignored.
Imports are limited to what loads in microseconds: this is every warm start's cost.
"""

from __future__ import annotations

import marshal
import os
import stat
from time import time

from sandrun import __version__
from sandrun.launch import options, runner, safefile

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from typing import Any

RECORD_FORMAT = 7
RECORD_DIR = "launch"  # <store>/launch/<key>: root-owned, 0700
SNAPSHOT_SUFFIX = ".tree"  # <store>/launch/<bundle sha256>.tree
# <store>/apps/.<sha>.bytecode: the tree's bytecode is being added after its first launch
# (store.compile_bytecode, under <store>/apps/.<sha>.lock), then it is snapshot again.
BYTECODE_PENDING_SUFFIX = ".bytecode"
TREE_TOP_MODE = 0o750  # <store>/apps/<sha>, root:<app group>
TREE_TOP_MODE_UNSHARED = 0o500  # the same in an unprivileged user's own store
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Files whose change can change what the cold path decides about users and groups.
USER_DATABASE = ("/etc/passwd", "/etc/group")
DEFAULT_STORE = "/var/lib/sandrun"
# The words after `exec` of the command line that started this process (set by
# sandrun.__main__.main), for the cold path's native record (native_record.py): its
# key names the words themselves. None: not started as `sandrun exec` (tests, dev).
INVOKED: list[str] | None = None
# Whether this process is the Python entry script the native front falls back to
# (bin/sandrun-py, set by sandrun.__main__.main): a warm start served here then means
# the front found no usable native record, so this one writes it (_renew_native_record).
FRONT_FELL_BACK = False

Identity = tuple[int, int, int, int, int, int, int, int] | None


def default_store_root() -> str:
    """--store, else $SANDRUN_STORE, else /var/lib/sandrun (root) or ~/.cache/sandrun."""
    env = os.environ.get("SANDRUN_STORE")
    if env:
        return env
    if os.geteuid() == 0:
        return DEFAULT_STORE
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "sandrun")


def identity(path: str, *, follow: bool = True) -> Identity:
    """What changes whenever the file does (ctime cannot be set back), or None."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns)


def _boot_id() -> str:
    try:
        with open(BOOT_ID, "rb") as f:
            return f.read().decode().strip()
    except OSError:
        return ""


def tree_top_mode(owner: int) -> int:
    """Mode of <store>/apps/<sha>: root and the app's group (root:<gid>) in a root
    store, only the user in a user's own store (store.py)."""
    return TREE_TOP_MODE if owner == 0 else TREE_TOP_MODE_UNSHARED


def tree_snapshot(tree: str | int) -> list[tuple[str, int, int, int, int, int]]:
    """Every entry of an installed tree (a path, or an O_RDONLY fd of its top dir):
    name, mode, owner, size, inode and ctime; first the top dir itself as "" (mode,
    owner and inode: its group and ctime change when the tree is granted to another
    app group, which is checked against the launch instead)."""
    fd = tree if isinstance(tree, int) else os.open(tree, _DIR)
    opened = fd is not tree
    try:
        top = os.fstat(fd)
        snapshot = [(rel, st.st_mode, st.st_uid, st.st_size, st.st_ino, st.st_ctime_ns)
                    for rel, st in safefile.walk_dir(fd)]
    finally:
        if opened:
            os.close(fd)
    snapshot.append(("", top.st_mode, top.st_uid, 0, top.st_ino, 0))
    snapshot.sort()
    return snapshot


class ExecArgs:
    """The `sandrun exec` options the warm path serves (options.EXEC_OPTIONS with warm
    set: one slot per dest), the bundle and the app's arguments."""

    __slots__ = ("args", "audit_db", "audit_severity", "bind_tcp", "bundle", "connect_tcp",
                 "env", "env_file", "profile", "python", "read", "rw", "store", "trust", "user",
                 "verbose", "verify", "workdir")

    def __init__(self) -> None:
        self.profile: str | None = None
        self.user: str | None = None
        self.python: str | None = None
        self.store: str | None = None
        self.trust: str | None = None
        self.audit_db: str | None = None
        self.audit_severity = "high"
        self.verify = "cheap"
        self.verbose = False
        self.env: tuple[str, ...] = ()
        self.env_file: tuple[str, ...] = ()
        self.read: tuple[str, ...] = ()
        self.rw: tuple[str, ...] = ()
        self.bind_tcp: tuple[str, ...] = ()
        self.connect_tcp: tuple[str, ...] = ()
        self.workdir: str | None = None
        self.bundle = ""
        self.args: list[str] = []

    @classmethod
    def for_options(cls, exec_options: Any) -> ExecArgs:
        """The ExecArgs of a cold launch (a launcher.ExecOptions), for its record key:
        every warm-served option that fills an ExecOptions field, by the table."""
        args = cls()
        for option in options.EXEC_OPTIONS:
            if option.warm is True and option.field is not None:
                setattr(args, option.dest, getattr(exec_options, option.field))
        args.bundle = exec_options.bundle
        args.args = list(exec_options.args)
        return args


def parse_exec_args(argv: list[str]) -> ExecArgs | None:
    """Parse `exec` options as the click command does (same table, same spellings);
    None for anything the warm path leaves to it: help, an unknown option (click reports
    it), a cold-only option or value (dry run, full verification, audits, ...), an
    unusual spelling (-pNAME, -vp, -p=NAME), a missing value or bundle."""
    scanned = _scan_exec_args(argv)
    return None if scanned is None else scanned[0]


def split_exec_words(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """(the words up to and including the bundle, the app's arguments) of `exec` words
    the warm path serves (parse_exec_args' rules), else None. The first part is what
    the native front's record key names (native/front.h); a leading "--" of the app's
    arguments is dropped, as the cold path drops it."""
    scanned = _scan_exec_args(argv)
    if scanned is None:
        return None
    parsed, bundle_at = scanned
    return argv[:bundle_at + 1], parsed.args


def _scan_exec_args(argv: list[str]) -> tuple[ExecArgs, int] | None:
    """parse_exec_args, and where the bundle word is in argv."""
    parsed = ExecArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # click: the next word is the bundle, whatever it looks like
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        option = options.BY_NAME.get(name)
        if option is None or option.warm is False:
            return None
        found: str | bool = value
        if option.flag:
            if eq:
                return None  # click: "option does not take a value"
            found = True
        elif not eq:
            i += 1
            if i >= len(argv):
                return None
            found = argv[i]
        if not option.serves_warm(found):
            return None
        if option.multiple:
            setattr(parsed, option.dest, (*getattr(parsed, option.dest), found))
        else:
            setattr(parsed, option.dest, found)
        i += 1
    if i >= len(argv):
        return None
    parsed.bundle = argv[i]
    parsed.args = argv[i + 1:]
    if parsed.args[:1] == ["--"]:  # `sandrun exec BUNDLE -- ARGS`: as the cold path
        parsed.args = parsed.args[1:]
    return parsed, i


def _profile_key(profile: str | None) -> str | None:
    if profile is None or ("/" not in profile and not profile.endswith(".toml")):
        return profile  # embedded, or a shipped name (its file is among the inputs)
    return os.path.abspath(profile)


def record_key(args: ExecArgs, store_root: str) -> tuple[Any, ...]:
    return (RECORD_FORMAT, __version__, os.geteuid(), os.path.abspath(args.bundle),
            _profile_key(args.profile), args.user, args.python,
            os.path.abspath(args.trust) if args.trust else None,
            os.path.abspath(args.audit_db) if args.audit_db else None, args.audit_severity,
            os.path.abspath(store_root), os.getcwd(),
            # operator grants (paths as given: the cwd is part of the key already)
            tuple(args.env), tuple(args.env_file), tuple(args.read), tuple(args.rw),
            tuple(str(p) for p in args.bind_tcp), tuple(str(p) for p in args.connect_tcp),
            args.workdir)


def _record_name(key: tuple[Any, ...]) -> str:
    try:
        from _sha256 import sha256  # builtin: hashlib would load OpenSSL (~2 ms)
    except ImportError:
        from hashlib import sha256
    # repr, not marshal: marshal's bytes depend on string interning, so equal keys could
    # get different names (and needless cold starts).
    digest: str = sha256(repr(key).encode()).hexdigest()
    return digest[:32]


def _record_path(store_root: str, key: tuple[Any, ...]) -> str:
    """Where the record of `key` is (for messages and tests: it is opened by fd)."""
    return os.path.join(os.path.abspath(store_root), RECORD_DIR, _record_name(key))


def open_store(store_root: str) -> int | None:
    """An O_PATH fd of the store root if its path as given is trusted component by
    component (safefile.open_trusted_dir: what Store.check_ancestry checks) and the
    root, apps/ and state/ are ours and writable only by us; else None."""
    owner = os.geteuid()
    try:
        fd = safefile.open_trusted_dir(store_root, owner)
    except (safefile.UnsafePath, OSError):
        return None
    try:
        for st in (os.fstat(fd), os.stat("apps", dir_fd=fd, follow_symlinks=False),
                   os.stat("state", dir_fd=fd, follow_symlinks=False)):
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or st.st_mode & 0o022:
                os.close(fd)
                return None
    except OSError:
        os.close(fd)
        return None
    return fd


def load_record(args: ExecArgs, found: list[Any] | None = None) -> runner.RunSpec | None:
    """The cached RunSpec for these options, if every input is unchanged; else None.
    `found` (a list) gets the record's dict appended when one is used."""
    store_root = args.store or default_store_root()
    key = record_key(args, store_root)
    store_fd = open_store(store_root)
    if store_fd is None:
        return None
    try:
        return _load_record(store_fd, os.path.abspath(store_root), key, found)
    except (safefile.UnsafePath, OSError):
        return None
    finally:
        os.close(store_fd)


def decode_record(data: bytes | None, key: tuple[Any, ...]) -> dict[str, Any] | None:
    """A record's dict if `data` is one (marshal) and was written for `key`; else None."""
    record = _unmarshal(data)
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    return record


def _unmarshal(data: bytes | None) -> Any:
    """What a launch file holds (marshal), or None when it reads as nothing."""
    if data is None:
        return None
    try:
        return marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None


def _load_record(store_fd: int, store_root: str, key: tuple[Any, ...],
                 found: list[Any] | None = None, waited: bool = False
                 ) -> runner.RunSpec | None:
    record = decode_record(read_launch_file(store_fd, _record_name(key)), key)
    if record is None:
        return None
    if record["boot_id"] != _boot_id():
        return None
    not_after = record.get("not_after")
    if not_after is not None and time() >= not_after:
        return None  # the signer's validity window ended: the cold path decides again
    for path, follow, expected in record["inputs"]:
        if identity(path, follow=follow) != expected:
            return None
    apps, sha = os.path.split(record["tree"])
    if apps != os.path.join(store_root, "apps"):
        return None
    if not _snapshot_matches(store_fd, sha):
        # The bytecode deferred at install may be being published: once it is, read the
        # record again (the compile rewrote the snapshot; inputs may have changed since).
        if waited or not _waited_for_bytecode(store_fd, sha):
            return None
        return _load_record(store_fd, store_root, key, found, waited=True)
    if _bytecode_abandoned(store_fd, sha):
        return None
    spec = runner.RunSpec.from_dict(record["spec"])
    owner = os.geteuid()
    top = os.stat(os.path.join("apps", sha), dir_fd=store_fd, follow_symlinks=False)
    if stat.S_IMODE(top.st_mode) != tree_top_mode(owner) or \
            (owner == 0 and top.st_gid != spec.gid):
        return None  # another app group was granted the tree since: the cold path
    states, app = os.path.split(spec.state_dir)
    if states != os.path.join(store_root, "state"):
        return None
    state = os.stat(os.path.join("state", app), dir_fd=store_fd, follow_symlinks=False)
    if not stat.S_ISDIR(state.st_mode) or state.st_uid != spec.uid or \
            stat.S_IMODE(state.st_mode) != 0o700:
        return None
    if found is not None:
        found.append(record)
    return spec


def write_record(store_fd: int, key: tuple[Any, ...], inputs: list[Any], tree: str,
                 spec: runner.RunSpec, not_after: int | None = None) -> None:
    """Store the record of a launch the cold path fully checked (see launcher.save_record).
    `not_after` (epoch seconds): when the decision expires by itself (a trust window)."""
    record = {"key": key, "boot_id": _boot_id(), "inputs": inputs, "tree": tree,
              "spec": spec.to_dict(), "not_after": not_after}
    write_launch_file(store_fd, _record_name(key), marshal.dumps(record))


def load_snapshot(store_fd: int, bundle_sha256: str) -> list[Any] | None:
    """The tree's snapshot taken when it was last fully verified (save_snapshot), or None
    when there is none that reads as one; raises OSError or UnsafePath."""
    snapshot = _unmarshal(read_launch_file(store_fd, bundle_sha256 + SNAPSHOT_SUFFIX))
    return snapshot if isinstance(snapshot, list) else None


def snapshot_matches(store_fd: int, bundle_sha256: str) -> bool:
    """Whether the tree is exactly (names, modes, owners, sizes, inodes, ctimes) as it
    was when last fully verified."""
    try:
        if _snapshot_matches(store_fd, bundle_sha256):
            return True
        # The bytecode deferred at install may be being added: once it is, the compile
        # saves a new snapshot (a wait of at most what the install would have taken).
        return _waited_for_bytecode(store_fd, bundle_sha256) and \
            _snapshot_matches(store_fd, bundle_sha256)
    except (safefile.UnsafePath, OSError):
        return False


def _snapshot_matches(store_fd: int, bundle_sha256: str) -> bool:
    snapshot = load_snapshot(store_fd, bundle_sha256)
    if snapshot is None:
        return False
    top = os.open(os.path.join("apps", bundle_sha256), _DIR, dir_fd=store_fd)
    try:
        return snapshot == tree_snapshot(top)
    finally:
        os.close(top)


def _bytecode_abandoned(store_fd: int, bundle_sha256: str) -> bool:
    """Whether the tree's bytecode is pending while no compile holds its lock (one was
    killed): the cold path, which starts another, serves the launch instead."""
    apps = os.path.join("apps", f".{bundle_sha256}")
    try:
        os.stat(apps + BYTECODE_PENDING_SUFFIX, dir_fd=store_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    import fcntl

    try:
        lock = os.open(apps + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=store_fd)
    except OSError:
        return True
    try:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a compile is adding it
    except OSError:
        return True
    finally:
        os.close(lock)
    return True


def _waited_for_bytecode(store_fd: int, bundle_sha256: str) -> bool:
    """If the tree's bytecode is pending: wait for the lock its compile holds, then True."""
    apps = os.path.join("apps", f".{bundle_sha256}")
    try:
        os.stat(apps + BYTECODE_PENDING_SUFFIX, dir_fd=store_fd, follow_symlinks=False)
        lock = os.open(apps + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=store_fd)
    except OSError:
        return False
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_SH)
    finally:
        os.close(lock)
    return True


def save_snapshot(store_fd: int, bundle_sha256: str) -> None:
    """Call only right after the tree was installed or fully re-hashed. Best effort: a
    snapshot that cannot be written only means the next check re-hashes in full."""
    try:
        top = os.open(os.path.join("apps", bundle_sha256), _DIR, dir_fd=store_fd)
        try:
            data = marshal.dumps(tree_snapshot(top))
        finally:
            os.close(top)
        write_launch_file(store_fd, bundle_sha256 + SNAPSHOT_SUFFIX, data)
    except (safefile.UnsafePath, OSError):
        pass


def tree_matches_snapshot(store_root: str, tree: str) -> bool:
    """snapshot_matches for a store named by its path (checked as open_store does)."""
    store_fd = open_store(store_root)
    if store_fd is None:
        return False
    try:
        return snapshot_matches(store_fd, os.path.basename(tree))
    finally:
        os.close(store_fd)


def save_tree_snapshot(store_root: str, tree: str) -> None:
    """save_snapshot for a store named by its path (checked as open_store does)."""
    store_fd = open_store(store_root)
    if store_fd is not None:
        try:
            save_snapshot(store_fd, os.path.basename(tree))
        finally:
            os.close(store_fd)


def read_launch_file(store_fd: int, name: str) -> bytes | None:
    """A record or snapshot in the launch/ dir if it is a private file of ours
    (safefile.read_private), else None; raises OSError or UnsafePath."""
    launch = safefile.open_private_dir(RECORD_DIR, dir_fd=store_fd)
    try:
        return safefile.read_private(name, dir_fd=launch)
    finally:
        os.close(launch)


def write_launch_file(store_fd: int, name: str, data: bytes) -> None:
    """0600 in the 0700 launch/ dir, atomically; raises OSError or UnsafePath."""
    launch = safefile.open_private_dir(RECORD_DIR, dir_fd=store_fd, create=True)
    try:
        safefile.write_private(name, data, dir_fd=launch)
    finally:
        os.close(launch)


def try_warm_exec(args: ExecArgs, *, explain_failure: bool = True) -> int | None:
    """Launch from a valid record (args from parse_exec_args) and return the app's exit
    code; None: take the cold path. SandrunError from the launch itself propagates (same
    as the cold path). `explain_failure`: the supervisor says how a failed run ended and
    how to see why (`sandrun exec --explain`), as the cold path does."""
    found: list[Any] = []
    spec = load_record(args, found)
    if spec is None:
        return None
    if FRONT_FELL_BACK and INVOKED is not None and os.geteuid() == 0 and spec.privileged:
        _renew_native_record(args, found[0], spec)
    # nothing to do after the app
    return runner.launch(spec, args.args, handoff=True, explain_failure=explain_failure)


def _renew_native_record(args: ExecArgs, record: dict[str, Any], spec: runner.RunSpec
                         ) -> None:
    """The native front took no record for these words (none yet: written by an older
    sandrun, or for another spelling; or its own checks differ, e.g. sandrun now runs in
    another cgroup), so this Python warm start happens: write the native record from the
    checked Python one, so the next start is the front's again. Best effort, and only on
    this fallback path: the native front itself never pays for it."""
    from sandrun.errors import SandrunError
    from sandrun.launch import native_record

    store_root = args.store or default_store_root()
    store_fd = open_store(store_root)
    if store_fd is None:
        return
    try:
        native_record.save(store_fd, record["key"], record["inputs"], record["tree"], spec,
                           record.get("not_after"))
    except (SandrunError, safefile.UnsafePath, OSError, ValueError, KeyError):
        pass
    finally:
        os.close(store_fd)
