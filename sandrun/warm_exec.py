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
Imports are limited to what loads in microseconds: this is every warm start's cost.
"""

from __future__ import annotations

import marshal
import os
import stat

from sandrun import __version__, runner

TYPE_CHECKING = False  # not typing's: importing typing costs ~2 ms per warm start
if TYPE_CHECKING:
    from typing import Any

    from sandrun.launcher import ExecOptions, LaunchPlan

RECORD_FORMAT = 1
RECORD_DIR = "launch"  # <store>/launch/<key>: root-owned, 0700
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Files whose change can change what the cold path decides about users and groups.
USER_DATABASE = ("/etc/passwd", "/etc/group")
DEFAULT_STORE = "/var/lib/sandrun"

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


def tree_snapshot(tree: str) -> list[tuple[str, int, int, int, int, int]]:
    """Every entry of an installed tree: name, mode, owner, size, inode and ctime."""
    snapshot = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(tree, rel_dir) if rel_dir else tree) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                snapshot.append((rel, st.st_mode, st.st_uid, st.st_size, st.st_ino,
                                 st.st_ctime_ns))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
    snapshot.sort()
    return snapshot


class ExecArgs:
    """The `sandrun exec` options the warm path understands."""

    __slots__ = ("args", "bundle", "profile", "python", "store", "trust", "user")

    def __init__(self) -> None:
        self.profile: str | None = None
        self.user: str | None = None
        self.python: str | None = None
        self.store: str | None = None
        self.trust: str | None = None
        self.bundle = ""
        self.args: list[str] = []

    @classmethod
    def from_options(cls, options: ExecOptions) -> ExecArgs:
        args = cls()
        args.profile, args.user, args.python = options.profile, options.user, options.python
        args.store, args.trust, args.bundle = options.store, options.trust, options.bundle
        return args


_VALUE_OPTIONS = {"-p": "profile", "--profile": "profile", "-u": "user", "--user": "user",
                  "--python": "python", "--store": "store", "--trust": "trust"}


def parse_exec_args(argv: list[str]) -> ExecArgs | None:
    """Parse `exec` options; None for anything the warm path leaves to the full CLI
    (help, dry run, full verification, audits, unusual spellings, errors)."""
    parsed = ExecArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name == "--verify":
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if value != "cheap":
                return None  # full verification (or a usage error) takes the cold path
        elif name in _VALUE_OPTIONS:
            if not eq:
                i += 1
                if i >= len(argv):
                    return None
                value = argv[i]
            setattr(parsed, _VALUE_OPTIONS[name], value)
        else:
            return None
        i += 1
    if i >= len(argv):
        return None
    parsed.bundle = argv[i]
    parsed.args = argv[i + 1:]
    if parsed.args[:1] == ["--"]:
        parsed.args = parsed.args[1:]
    return parsed


def _profile_key(profile: str | None) -> str | None:
    if profile is None or ("/" not in profile and not profile.endswith(".toml")):
        return profile  # embedded, or a shipped name (its file is among the inputs)
    return os.path.abspath(profile)


def record_key(args: ExecArgs, store_root: str) -> tuple[Any, ...]:
    return (RECORD_FORMAT, __version__, os.geteuid(), os.path.abspath(args.bundle),
            _profile_key(args.profile), args.user, args.python,
            os.path.abspath(args.trust) if args.trust else None,
            os.path.abspath(store_root), os.getcwd())


def _record_path(store_root: str, key: tuple[Any, ...]) -> str:
    try:
        from _sha256 import sha256  # builtin: hashlib would load OpenSSL (~2 ms)
    except ImportError:
        from hashlib import sha256
    name = sha256(marshal.dumps(key)).hexdigest()[:32]
    return os.path.join(store_root, RECORD_DIR, name)


def _safe_dir(path: str, owner: int) -> bool:
    """Owned by root or `owner`, and not writable by others (sticky dirs excepted)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    writable_by_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    return stat.S_ISDIR(st.st_mode) and st.st_uid in (0, owner) and not writable_by_others


def _store_is_safe(store_root: str) -> bool:
    """The cold path's Store.check_ancestry, answered yes or no."""
    owner = os.geteuid()
    current = "/"
    for part in os.path.realpath(store_root).split("/")[1:]:
        current = os.path.join(current, part)
        if not _safe_dir(current, owner):
            return False
    return _safe_dir(os.path.join(store_root, RECORD_DIR), owner)


def load_record(args: ExecArgs) -> runner.RunSpec | None:
    """The cached RunSpec for these options, if every input is unchanged; else None."""
    store_root = args.store or default_store_root()
    key = record_key(args, store_root)
    if not _store_is_safe(store_root):
        return None
    data = _read_private(_record_path(store_root, key))
    if data is None:
        return None
    try:
        record = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if record["boot_id"] != _boot_id():
        return None
    for path, follow, expected in record["inputs"]:
        if identity(path, follow=follow) != expected:
            return None
    if not tree_matches_snapshot(store_root, record["tree"]):
        return None
    spec = runner.RunSpec.from_dict(record["spec"])
    state = identity(spec.state_dir, follow=False)
    if state is None or not stat.S_ISDIR(state[2]) or state[3] != spec.uid or \
            stat.S_IMODE(state[2]) != 0o700:
        return None
    return spec


def save_record(options: ExecOptions, plan: LaunchPlan, spec: runner.RunSpec) -> None:
    """Remember a launch the cold path fully checked. Best effort: a store that cannot
    take the record only means the next start is cold again."""
    from sandrun.interpreter import candidates

    store_root = options.store or default_store_root()
    key = record_key(ExecArgs.from_options(options), store_root)
    interp = plan.interpreter
    files = [*plan.profile.files, *USER_DATABASE, *plan.trust_inputs, interp.path,
             interp.real_path]
    if interp.elf_interpreter:
        files.append(interp.elf_interpreter)
    if options.python is None:  # a new, preferred candidate would change the choice
        files += candidates(plan.manifest.target.python)
    parent = os.path.dirname(interp.real_path)
    while parent not in ("/", ""):  # readability by the app user depends on every dir
        files.append(parent)
        parent = os.path.dirname(parent)
    # The bundle is opened O_NOFOLLOW, so its own identity counts, not a link target's.
    inputs = [(options.bundle, False, identity(options.bundle, follow=False))]
    inputs += [(path, True, identity(path)) for path in dict.fromkeys(files)]
    record = {"key": key, "boot_id": _boot_id(), "inputs": inputs, "tree": str(plan.tree),
              "spec": spec.to_dict()}
    _write_private(store_root, _record_path(store_root, key), marshal.dumps(record))


def _snapshot_path(store_root: str, tree: str) -> str:
    return os.path.join(store_root, RECORD_DIR, os.path.basename(tree) + ".tree")


def save_tree_snapshot(store_root: str, tree: str) -> None:
    """Call only right after the tree was installed or fully re-hashed."""
    _write_private(store_root, _snapshot_path(store_root, tree),
                   marshal.dumps(tree_snapshot(tree)))


def tree_matches_snapshot(store_root: str, tree: str) -> bool:
    """Whether the tree is exactly (names, modes, owners, sizes, inodes, ctimes) as it
    was when last fully verified."""
    data = _read_private(_snapshot_path(store_root, tree))
    if data is None:
        return False
    try:
        return marshal.loads(data) == tree_snapshot(tree)
    except (ValueError, EOFError, TypeError, OSError):
        return False


def _read_private(path: str) -> bytes | None:
    """The file's bytes if it is a regular file of ours that nobody else can write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _write_private(store_root: str, path: str, data: bytes) -> None:
    """Atomically, 0600 in a 0700 dir. Best effort: a store that cannot take it only
    means the next start is cold (or fully verified) again."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.join(store_root, RECORD_DIR), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def try_warm_exec(argv: list[str]) -> int | None:
    """Launch from a valid record and return the app's exit code; None: take the cold
    path. SandrunError from the launch itself propagates (same as the cold path)."""
    args = parse_exec_args(argv)
    if args is None:
        return None
    spec = load_record(args)
    if spec is None:
        return None
    return runner.launch(spec, args.args)
